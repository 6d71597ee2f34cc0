# SPDX-License-Identifier: GPL-2.0-only
"""The ubus object `ebpfw`: api.py's methods served from the daemon's own loop (libubus.py).

The daemon's selector watches one fd: an epoll set holding the ubus socket, an eventfd that
says calls are queued, and a timer for reconnecting. So the ubus socket can change (ubusd
restarted) without the daemon's selector knowing. Calls are answered in service(), in the loop
like every other event; a call that arrives while the daemon itself talks to ubus (a `uci get`
on reload) is only queued and answered on the next pass. When ubusd goes away the connection
is retried every RETRY_S and the object registered again.
"""
from __future__ import annotations

import ctypes
import logging
import os
import select
from typing import Any, Callable, Protocol

from fw_ebpf import api
from fw_ebpf.libubus import BlobError, BlobmsgType, Request, Status, UbusError

log = logging.getLogger("fw_ebpf.ubus")

OBJECT = "ebpfw"
RETRY_S = 1.0
# calls answered per service(); the rest wait for the next pass so other events get their turn
BATCH = 64

ARG_TYPES = {api.ArgType.STRING: BlobmsgType.STRING, api.ArgType.INT: BlobmsgType.INT32,
             api.ArgType.BOOL: BlobmsgType.INT8}
Call = Callable[[str, dict[str, Any]], dict[str, Any]]     # api.Api.call


class Connection(Protocol):
    """What the server needs of libubus.Connection (the tests give it a stand-in)."""

    requests: Any
    on_request: Callable[[], None] | None

    def fileno(self) -> int: ...
    @property
    def connected(self) -> bool: ...
    @property
    def where(self) -> str: ...
    def handle(self) -> None: ...
    def reconnect(self) -> None: ...
    def add_object(self, name: str, methods: dict[str, dict[str, BlobmsgType]]) -> None: ...
    def reply(self, request: Request, data: dict[str, Any] | None, status: int = 0) -> None: ...
    def close(self) -> None: ...


def policies(methods: dict[str, api.Method]) -> dict[str, dict[str, BlobmsgType]]:
    """Each method's arguments as the blobmsg policy a C service would declare."""
    return {name: {arg: ARG_TYPES[spec.type] for arg, spec in m.args.items()}
            for name, m in methods.items()}


class UbusServer:
    def __init__(self, conn: Connection, call: Call,
                 methods: dict[str, api.Method] = api.METHODS) -> None:
        self.conn = conn
        self.call = call
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._timer = _Timer()
        self._epoll.register(self._wake, select.EPOLLIN)
        self._epoll.register(self._timer.fileno(), select.EPOLLIN)
        self._sock = -1
        try:
            conn.add_object(OBJECT, policies(methods))
        except BaseException:
            self._close_fds()
            raise
        conn.on_request = lambda: os.eventfd_write(self._wake, 1)
        self._watch()
        log.info("ubus: object '%s' registered at %s", OBJECT, conn.where)

    def fileno(self) -> int:
        """Stable for the server's lifetime, whatever happens to the ubus socket."""
        return self._epoll.fileno()

    def service(self) -> None:
        """In the loop, when fileno() is readable: ubus traffic, queued calls, reconnecting."""
        events = dict(self._epoll.poll(0))
        if self._wake in events:
            try:
                os.eventfd_read(self._wake)
            except BlockingIOError:
                pass
        if self._timer.fileno() in events:
            self._timer.consume()
            self._reconnect()
        if self._sock >= 0 and self._sock in events:
            self.conn.handle()
            if not self.conn.connected:
                self._lost()
        self._answer()

    def _answer(self) -> None:
        for _ in range(min(BATCH, len(self.conn.requests))):
            request = self.conn.requests.popleft()
            status, data = self._run(request)
            try:
                self.conn.reply(request, data, status)
            except BlobError as e:     # never send what ubusd would disconnect us for
                log.error("ubus %s: %s", request.method, e)
                self.conn.reply(request, None, Status.UNKNOWN_ERROR)
        if self.conn.requests:
            os.eventfd_write(self._wake, 1)

    def _run(self, request: Request) -> tuple[int, dict[str, Any] | None]:
        try:
            args = request.args()
        except BlobError as e:
            log.info("ubus %s: %s", request.method, e)
            return Status.INVALID_ARGUMENT, None
        try:
            return Status.OK, self.call(request.method, args)
        except api.InvalidArgument as e:
            log.info("ubus %s: %s", request.method, e)
            return Status.INVALID_ARGUMENT, None
        except api.UnknownMethod:
            return Status.METHOD_NOT_FOUND, None
        except Exception:   # a handler bug: the caller gets an error, the object stays
            log.exception("ubus %s failed", request.method)
            return Status.UNKNOWN_ERROR, None

    # -- the connection's life --------------------------------------------------------------

    def _watch(self) -> None:
        self._sock = self.conn.fileno()
        self._epoll.register(self._sock, select.EPOLLIN)

    def _unwatch(self) -> None:
        if self._sock >= 0:
            try:
                self._epoll.unregister(self._sock)
            except OSError:
                pass
            self._sock = -1

    def _lost(self) -> None:
        log.warning("ubus: connection to %s lost; reconnecting", self.conn.where)
        self._unwatch()        # before libubus closes the socket
        self.conn.requests.clear()
        self._reconnect()

    def _reconnect(self) -> None:
        try:
            self.conn.reconnect()
        except UbusError as e:
            log.debug("ubus: %s; retrying in %gs", e, RETRY_S)
            self._timer.arm(RETRY_S)
            return
        self._watch()
        log.info("ubus: reconnected to %s, object '%s' registered again", self.conn.where, OBJECT)

    def _close_fds(self) -> None:
        self._epoll.close()
        os.close(self._wake)
        self._timer.close()

    def close(self) -> None:
        self._unwatch()
        self.conn.on_request = None
        self._close_fds()


class _Timespec(ctypes.Structure):
    # the plain-named libc symbols take `long` seconds, also on 32-bit musl (its time32 ABI)
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _Timer:
    """A one-shot timerfd (Python 3.11 has no os.timerfd_create)."""

    CLOCK_MONOTONIC = 1

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._check(self._libc.timerfd_create(
            self.CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC), "timerfd_create")

    def _check(self, ret: int, what: str) -> int:
        if ret < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")
        return ret

    def fileno(self) -> int:
        return self._fd

    def arm(self, seconds: float) -> None:
        ns = max(1, int(seconds * 1e9))     # all zero would disarm it
        value = _Itimerspec(_Timespec(0, 0), _Timespec(ns // 10**9, ns % 10**9))
        self._check(self._libc.timerfd_settime(self._fd, 0, ctypes.byref(value), None),
                    "timerfd_settime")

    def consume(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self._fd)
