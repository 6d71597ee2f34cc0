# SPDX-License-Identifier: GPL-2.0-only
"""Registers api.py's handlers as the ubus object `ebpfw` (python-ubus), when it is there.

python-ubus drives its own uloop and gives no file descriptor to poll, so it runs in a thread
of its own; every call is handed to the daemon's loop (CallQueue) and answered from there, so
handlers never run concurrently with the daemon.
"""
from __future__ import annotations

import concurrent.futures
import logging
import queue
import socket
import threading
from typing import Any, Callable


log = logging.getLogger("fw_ebpf.ubus")
Handler = Callable[[dict[str, Any]], Any]

OBJECT = "ebpfw"
CALL_TIMEOUT = 10.0


def available() -> bool:
    try:
        import ubus  # noqa: F401  (python-ubus needs libubus: OpenWrt only)
    except ImportError:
        return False
    return True


class CallQueue:
    """Calls from other threads, run by the daemon's loop when its wake-up fd is readable."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future]] = \
            queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)

    def fileno(self) -> int:
        return self._wake_r.fileno()

    def submit(self, call: Callable[[], Any]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((call, future))
        self._wake_w.send(b"\0")
        return future

    def run_ready(self) -> None:
        """In the daemon's loop: runs every queued call."""
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                call, future = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(call())
            except Exception as e:
                future.set_exception(e)

    def close(self) -> None:
        self._wake_r.close()
        self._wake_w.close()


class UbusServer:
    def __init__(self, handlers: dict[str, Handler], calls: CallQueue,
                 socket_path: str | None = None) -> None:
        import ubus

        self._ubus = ubus
        self._stop = threading.Event()
        if socket_path:
            ubus.connect(socket_path=socket_path)
        else:
            ubus.connect()
        methods = {name: {"method": self._method(name, handler, calls), "signature": {}}
                   for name, handler in handlers.items()}
        ubus.add(OBJECT, methods)
        self._thread = threading.Thread(target=self._run, name="ubus", daemon=True)
        self._thread.start()
        log.info("ubus object '%s' registered", OBJECT)

    @staticmethod
    def _method(name: str, handler: Handler, calls: CallQueue) -> Callable[[Any, Any], None]:
        def on_call(request: Any, data: Any) -> None:
            args = data if isinstance(data, dict) else {}
            try:
                result = calls.submit(lambda: handler(args)).result(CALL_TIMEOUT)
            except Exception as e:   # the caller gets an error object, the daemon goes on
                log.warning("ubus %s: %s", name, e)
                request.reply({"error": str(e)})
                return
            # ubus replies are tables: lists go under a key
            request.reply(result if isinstance(result, dict) else {name: result})
        return on_call

    def _run(self) -> None:
        while not self._stop.is_set():
            self._ubus.loop(200)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1.0)
        self._ubus.disconnect()
