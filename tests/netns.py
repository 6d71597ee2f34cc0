# SPDX-License-Identifier: GPL-2.0-only
"""Network namespace fixtures for tests: create, run code inside, always clean up.

Everything happens in namespaces the tests create; the host's interfaces are never touched.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import select
import signal
import subprocess
import time
import traceback
from typing import Any, Callable, Iterator, TypeVar, cast

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*args: str) -> str:
    """Run a command; fail loudly with its stderr."""
    res = subprocess.run(args, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def _pids(name: str) -> list[int]:
    res = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(p) for p in res.stdout.split()]


@contextlib.contextmanager
def netns(name: str) -> Iterator[str]:
    """A fresh network namespace; on exit its processes are killed and it is deleted."""
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        for pid in _pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for _ in range(50):
            if not _pids(name):
                break
            time.sleep(0.05)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def veth_pair(ns: str, a: str, b: str, *extra: str) -> None:
    """A veth pair inside ns, both ends up (native XDP on veth needs the peer up)."""
    sh("ip", "-n", ns, "link", "add", a, *extra, "type", "veth", "peer", "name", b)
    sh("ip", "-n", ns, "link", "set", a, "up")
    sh("ip", "-n", ns, "link", "set", b, "up")


def setns(name: str) -> None:
    """Move the calling thread into the named namespace (os.setns is Python 3.12+)."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _child(ns: str, wfd: int, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        setns(ns)
        payload = pickle.dumps(("ok", func(*args)))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        e.add_note("in netns child:\n" + traceback.format_exc())
        try:
            payload = pickle.dumps(("err", e))
        except Exception:
            payload = pickle.dumps(("err", RuntimeError(traceback.format_exc())))
    with os.fdopen(wfd, "wb") as w:
        w.write(payload)


def run_in_netns(ns: str, func: Callable[..., T], *args: Any, timeout: float = 60) -> T:
    """Run func(*args) in a forked child inside ns; return its result or raise its exception."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the test runner
        os.close(rfd)
        code = 0
        try:
            _child(ns, wfd, func, args)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(wfd)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        with os.fdopen(rfd, "rb") as r:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([r], [], [], left)[0]:
                    os.kill(pid, signal.SIGKILL)
                    raise TimeoutError(f"{getattr(func, '__name__', func)} in netns {ns} "
                                       f"took more than {timeout}s")
                chunk = os.read(r.fileno(), 65536)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.waitpid(pid, 0)
    if not chunks:
        raise RuntimeError(f"netns child for {getattr(func, '__name__', func)} died silently")
    status, value = pickle.loads(b"".join(chunks))
    if status == "err":
        raise value
    return cast(T, value)
