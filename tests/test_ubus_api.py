# SPDX-License-Identifier: GPL-2.0-only
"""ubus glue: calls from the ubus thread run on the daemon's loop thread."""
from __future__ import annotations

import selectors
import threading

import pytest

from fw_ebpf import ubus_api
from fw_ebpf.ubus_api import CallQueue


def test_calls_from_another_thread_run_on_the_loop_thread():
    calls = CallQueue()
    ran_on: list[str] = []
    results: list[object] = []

    def caller() -> None:
        future = calls.submit(lambda: ran_on.append(threading.current_thread().name) or 42)
        results.append(future.result(5))

    worker = threading.Thread(target=caller, name="ubus")
    worker.start()
    with selectors.DefaultSelector() as sel:
        sel.register(calls.fileno(), selectors.EVENT_READ)
        assert sel.select(5), "the loop was not woken"
    calls.run_ready()
    worker.join(5)
    calls.close()
    assert results == [42]
    assert ran_on == [threading.main_thread().name]


def test_errors_reach_the_caller():
    calls = CallQueue()
    future = calls.submit(lambda: 1 / 0)
    calls.run_ready()
    with pytest.raises(ZeroDivisionError):
        future.result(1)
    calls.close()


@pytest.mark.skipif(not ubus_api.available(),
                    reason="python-ubus needs libubus and ubusd, which Debian does not have "
                           "(OpenWrt only); the same handlers are tested over the control socket")
def test_ubus_object_answers_status():
    import ubus

    calls = CallQueue()
    server = ubus_api.UbusServer({"status": lambda args: {"ok": True}}, calls)
    try:
        thread = threading.Thread(target=lambda: [calls.run_ready() for _ in range(50)])
        thread.start()
        assert ubus.call("ebpfw", "status", {}) == [{"ok": True}]
        thread.join()
    finally:
        server.close()
        calls.close()
