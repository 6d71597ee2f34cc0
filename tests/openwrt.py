# SPDX-License-Identifier: GPL-2.0-only
"""OpenWrt's userland (ubusd, libubus, rpcd, uhttpd) for the tests that need the real thing.

Debian packages none of it; a build from the upstream sources (outside the repository) is used
when EBPFW_OPENWRT_PREFIX names its install prefix (with sbin/ubusd, bin/ubus, lib/libubus.so).
Without it those tests skip, as in CI.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

PREFIX_ENV = "EBPFW_OPENWRT_PREFIX"
SKIP_REASON = ("needs OpenWrt's ubusd/libubus, not packaged in Debian "
               f"(set {PREFIX_ENV} to an install prefix of a build from upstream)")


def prefix() -> Path | None:
    value = os.environ.get(PREFIX_ENV)
    if not value:
        return None
    path = Path(value)
    return path if (path / "sbin/ubusd").exists() and (path / "lib/libubus.so").exists() else None


requires_openwrt = pytest.mark.skipif(prefix() is None, reason=SKIP_REASON)


def tool(name: str) -> str:
    p = prefix()
    assert p is not None
    for sub in ("bin", "sbin"):
        if (p / sub / name).exists():
            return str(p / sub / name)
    raise FileNotFoundError(f"{name} is not in {p}")


def env() -> dict[str, str]:
    p = prefix()
    assert p is not None
    return dict(os.environ, LD_LIBRARY_PATH=str(p / "lib"))


def connectable(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def wait_for(cond, what: str, timeout: float = 15, interval: float = 0.02):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def ubusd(path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """ubusd on a socket of our own, stopped on exit."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    proc = subprocess.Popen([tool("ubusd"), "-s", str(path)], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: connectable(path), f"ubusd at {path}")
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def ubus(sock: Path | str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The `ubus` command line tool; `ubus call` exits with -status & 0xff on failure."""
    return subprocess.run([tool("ubus"), "-s", str(sock), *args], capture_output=True, text=True,
                          env=env(), timeout=timeout)


def status_of(result: subprocess.CompletedProcess[str]) -> int:
    """The ubus status a failed `ubus call` reported (its exit code is -status)."""
    return (256 - result.returncode) % 256
