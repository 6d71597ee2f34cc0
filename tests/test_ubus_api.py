# SPDX-License-Identifier: GPL-2.0-only
"""The ubus side without libubus: the blobmsg codec, the policies declared from api.METHODS, and
the server's loop integration (deferred answers, status mapping, reconnecting) against a
stand-in connection with real fds. tests/test_ubus_real.py runs the same code on real ubusd."""
from __future__ import annotations

import collections
import logging
import os
import random
import select
import socket
import struct
import subprocess
import sys
import time
from typing import Any

import pytest

from fw_ebpf import api, libubus, ubus_api
from fw_ebpf.libubus import BlobError, BlobmsgType, Status
from fw_ebpf.ubus_api import UbusServer


# -- the blobmsg codec ----------------------------------------------------------------------------

def blobmsg(kind: int, name: str, payload: bytes) -> bytes:
    """One blobmsg attribute written out from blob.h / blobmsg.h by hand (not with encode)."""
    raw_name = name.encode()
    head_len = (2 + len(raw_name) + 1 + 3) & ~3
    head = struct.pack(">H", len(raw_name)) + raw_name + bytes(head_len - 2 - len(raw_name))
    raw_len = 4 + head_len + len(payload)
    return struct.pack(">I", 0x80000000 | kind << 24 | raw_len) + head + payload + \
        bytes(-raw_len % 4)


def container(*attrs: bytes) -> bytes:
    body = b"".join(attrs)
    return struct.pack(">I", 4 + len(body)) + body


# what `ubus call ebpfw flows '{"state":"forward","limit":5,"verbose":true}'` sends as data:
# libubox's JSON conversion makes a JSON integer an int32 and a boolean an int8
CLI_FLOWS = container(blobmsg(3, "state", b"forward\0"), blobmsg(5, "limit", struct.pack(">i", 5)),
                      blobmsg(7, "verbose", b"\x01"))


def test_decode_reads_what_libubox_writes() -> None:
    assert libubus.decode(CLI_FLOWS) == {"state": "forward", "limit": 5, "verbose": True}
    assert libubus.encode({"state": "forward", "limit": 5, "verbose": True}) == CLI_FLOWS


def test_every_type_round_trips_with_libubox_type_choices() -> None:
    value = {"s": "ünïcode", "i32": -(1 << 31), "i64": 1 << 50, "neg64": -(1 << 40), "t": True,
             "f": False, "d": 1.5, "none": None, "empty": {}, "list": [1, "a", [True, None], {}],
             "nested": {"a": {"b": [1 << 33]}}, "": "unnamed"}
    raw = libubus.encode(value)
    assert libubus.decode(raw) == value
    assert len(raw) % 4 == 0
    # the wire types, read back by hand: int32 when it fits, else int64; bool is int8
    kinds = {}
    off = 4
    while off < len(raw):
        id_len, namelen = struct.unpack_from(">IH", raw, off)
        name = raw[off + 6:off + 6 + namelen].decode()
        kinds[name] = (id_len >> 24) & 0x7F
        off += ((id_len & 0xFFFFFF) + 3) & ~3
    assert kinds["i32"] == BlobmsgType.INT32 and kinds["i64"] == BlobmsgType.INT64
    assert kinds["t"] == BlobmsgType.INT8 and kinds["d"] == BlobmsgType.DOUBLE
    assert kinds["none"] == BlobmsgType.UNSPEC and kinds["list"] == BlobmsgType.ARRAY


def test_int16_and_values_blobmsg_cannot_carry() -> None:
    assert libubus.decode(container(blobmsg(6, "x", struct.pack(">h", -2) + b"\0\0"))) == {"x": -2}
    with pytest.raises(BlobError, match="64 bits"):
        libubus.encode({"x": 1 << 64})
    with pytest.raises(BlobError, match="cannot carry a bytes"):
        libubus.encode({"x": b"raw"})


@pytest.mark.parametrize("raw, message", [
    (b"\0\0", "shorter than a blob header"),
    (struct.pack(">I", 64) + bytes(8), "outside the"),
    (container(blobmsg(3, "s", b"abc")), "terminating NUL"),
    (container(blobmsg(5, "i", b"\0\0")), "shorter than 4 bytes"),
    (container(blobmsg(42, "x", b"")), "unknown blobmsg type 42"),
    (container(struct.pack(">I", 3 << 24 | 8) + b"ab\0\0"), "without a blobmsg name"),
    (container(struct.pack(">I", 0x80000000 | 3 << 24 | 10) + b"\0\x09abcdef"),
     "malformed blobmsg name"),
    (container(struct.pack(">I", 0x80000000 | 3 << 24 | 400)), "outside its container"),
])
def test_malformed_messages_are_blob_errors(raw: bytes, message: str) -> None:
    with pytest.raises(BlobError, match=message):
        libubus.decode(raw)


def test_any_damage_to_a_message_is_a_blob_error_or_a_value_never_a_crash() -> None:
    rnd = random.Random(8)
    good = libubus.encode({"state": "forward", "limit": 5, "list": [1, "x", {"a": None}],
                           "nested": {"b": 1.25}})
    for cut in range(len(good)):
        try:
            libubus.decode(good[:cut] + bytes(len(good) - cut))
        except BlobError:
            pass
    for _ in range(5000):
        damaged = bytearray(good)
        for _ in range(rnd.randint(1, 4)):
            damaged[rnd.randrange(len(damaged))] = rnd.randrange(256)
        try:
            assert isinstance(libubus.decode(bytes(damaged)), dict)
        except BlobError:
            pass


def test_a_page_of_1000_widest_flows_fits_a_ubus_message() -> None:
    """The largest flows reply api.py allows, as blobmsg (bigger than its JSON)."""
    from test_api import _api, _book   # the widest flow records api's own tests build

    reply = _api(_book(3000)).call("flows", {"limit": api.FLOWS_LIMIT_MAX})
    assert len(reply["flows"]) == api.FLOWS_LIMIT_MAX
    assert len(libubus.encode(reply)) < libubus.MAX_REPLY_DATA


# -- what is declared on ubus ---------------------------------------------------------------------

def test_policies_declare_every_argument_of_api_methods_with_its_blobmsg_type() -> None:
    policies = ubus_api.policies(api.METHODS)
    assert set(policies) == set(api.METHODS)
    assert policies["flows"] == {"state": BlobmsgType.STRING, "proto": BlobmsgType.STRING,
                                 "family": BlobmsgType.INT32, "limit": BlobmsgType.INT32,
                                 "offset": BlobmsgType.INT32, "sort": BlobmsgType.STRING}
    assert policies["status"] == policies["flush"] == {}
    methods = {"m": api.Method(lambda d, a: {}, {"on": api.Arg(api.ArgType.BOOL)})}
    assert ubus_api.policies(methods) == {"m": {"on": BlobmsgType.INT8}}


def test_int_arguments_are_int32_as_declared() -> None:
    """JSON integers beyond int32 arrive as int64; the declared type is int32."""
    with pytest.raises(api.InvalidArgument, match="'offset' must be of type int32"):
        api.validate(api.METHODS["flows"], {"offset": 1 << 40})
    biggest = {"offset": (1 << 31) - 1}
    assert api.validate(api.METHODS["flows"], biggest) == biggest


def test_importing_the_binding_loads_no_library() -> None:
    code = ("import fw_ebpf.libubus as l, fw_ebpf.ubus_api, fw_ebpf.daemon;"
            "print(l._lib.cache_info().currsize)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def test_without_libubus_using_it_says_why() -> None:
    """In a process of its own: test_libubus.py loads a libubus into this one."""
    code = ("import sys\nfrom fw_ebpf import libubus\nif libubus.available(): sys.exit(3)\n"
            "try:\n    libubus.Connection('/tmp/none.sock')\n"
            "except libubus.UbusError as e:\n    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if res.returncode == 3:
        pytest.skip("libubus is installed on this host")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ubus needs OpenWrt's libubus, which is not installed here (")


# -- the server, with a stand-in connection -------------------------------------------------------

class FakeConnection:
    """libubus.Connection's contract on a socketpair: ubusd is the other end. handle() reads
    one byte per queued call (b"c") or notices EOF; reconnect() works while `up` is set."""

    def __init__(self) -> None:
        self.requests: collections.deque[Any] = collections.deque()
        self.on_request = None
        self.up = True
        self.replies: list[tuple[str, dict[str, Any] | None, int]] = []
        self.objects: dict[str, dict[str, dict[str, BlobmsgType]]] = {}
        self.reconnects = 0
        self.where = "fake"
        self.calls_raw: list[tuple[str, bytes]] = []
        self._open()

    def _open(self) -> None:
        self.sock, self.ubusd = socket.socketpair()
        self.sock.setblocking(False)
        self._eof = False

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def connected(self) -> bool:
        return not self._eof

    def handle(self) -> None:
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        if not data:
            self._eof = True
            return
        for _ in data:
            self.queue(*self.calls_raw.pop(0))

    def queue(self, method: str, raw: bytes) -> None:
        request = libubus.Request("ebpfw", method, raw, None, 0)   # type: ignore[arg-type]
        self.requests.append(request)
        if self.on_request is not None:
            self.on_request()

    def ask(self, method: str, args: dict[str, Any] | bytes) -> None:
        """A client's call as ubusd forwards it."""
        self.calls_raw.append((method, args if isinstance(args, bytes) else libubus.encode(args)))
        self.ubusd.send(b"c")

    def reconnect(self) -> None:
        if not self.up:
            raise libubus.UbusError("cannot connect to ubus at fake", Status.CONNECTION_FAILED)
        self.sock.close()
        self._open()
        self.reconnects += 1

    def add_object(self, name: str, methods: dict[str, dict[str, BlobmsgType]]) -> None:
        self.objects[name] = methods

    def reply(self, request: Any, data: dict[str, Any] | None, status: int = 0) -> None:
        if data is not None and len(libubus.encode(data)) > libubus.MAX_REPLY_DATA:
            raise BlobError("reply too large")
        self.replies.append((request.method, data, status))

    def close(self) -> None:
        self.sock.close()
        self.ubusd.close()


def readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def serve_until(server: UbusServer, cond: Any, what: str, timeout: float = 10) -> None:
    """The daemon's loop, reduced to the server's fd."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if readable(server.fileno(), 0.05):
            server.service()


@pytest.fixture
def fake() -> Any:
    conn = FakeConnection()
    yield conn
    conn.close()


def test_calls_are_answered_in_service_with_ubus_statuses(fake: FakeConnection,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    def call(method: str, args: dict[str, Any]) -> dict[str, Any]:
        if method == "boom":
            raise KeyError("bug")
        if method == "huge":
            return {"x": "y" * libubus.MAX_MSGLEN}
        return {"method": method, "args": args}

    def bad(method: str, args: dict[str, Any]) -> dict[str, Any]:
        return api.Api(None, api.METHODS).call(method, args)   # type: ignore[arg-type]

    server = UbusServer(fake, lambda m, a: bad(m, a) if m in ("flows", "nope") else call(m, a))
    try:
        assert fake.objects == {"ebpfw": ubus_api.policies(api.METHODS)}
        fake.ask("status", {"ubus_rpc_session": "abc"})
        fake.ask("flows", {"limit": "5"})             # wrong type: refused before any handler
        fake.ask("nope", {})
        fake.ask("boom", {})
        fake.ask("huge", {})
        fake.ask("status", b"\0")                     # not blobmsg at all
        fake.ask("status", {})
        with caplog.at_level(logging.INFO, logger="fw_ebpf.ubus"):
            serve_until(server, lambda: len(fake.replies) == 7, "7 replies")
        assert fake.replies == [
            ("status", {"method": "status", "args": {"ubus_rpc_session": "abc"}}, Status.OK),
            ("flows", None, Status.INVALID_ARGUMENT),
            ("nope", None, Status.METHOD_NOT_FOUND),
            ("boom", None, Status.UNKNOWN_ERROR),
            ("huge", None, Status.UNKNOWN_ERROR),
            ("status", None, Status.INVALID_ARGUMENT),
            ("status", {"method": "status", "args": {}}, Status.OK)]
        assert "ubus boom failed" in caplog.text and "reply too large" in caplog.text
        assert "'limit' must be of type int32" in caplog.text
    finally:
        server.close()


def test_a_call_arriving_during_a_handler_is_answered_after_it_not_inside_it(
        fake: FakeConnection) -> None:
    """What libubus does during our synchronous `uci get` (a resync's reload): a call that
    arrives is queued (Connection's deferral), and must run after the running one returns."""
    depth, order = [0], []

    def call(method: str, args: dict[str, Any]) -> dict[str, Any]:
        depth[0] += 1
        order.append((method, depth[0]))
        if method == "resync":
            fake.queue("status", libubus.encode({}))   # arrives while we wait for rpcd
        depth[0] -= 1
        return {}

    server = UbusServer(fake, call)
    try:
        fake.ask("resync", {})
        serve_until(server, lambda: len(fake.replies) == 2, "both replies")
        assert order == [("resync", 1), ("status", 1)]
        # and when it is queued outside service() (a SIGHUP's reload), the server's fd says so
        fake.queue("stats", libubus.encode({}))
        assert readable(server.fileno(), 5)
        server.service()
        assert fake.replies[-1][0] == "stats"
        assert not readable(server.fileno(), 0)
    finally:
        server.close()


def test_a_burst_is_answered_in_batches_without_a_lost_wakeup(fake: FakeConnection) -> None:
    server = UbusServer(fake, lambda m, a: {})
    try:
        for _ in range(ubus_api.BATCH * 3 + 5):
            fake.queue("status", libubus.encode({}))
        server.service()
        assert len(fake.replies) == ubus_api.BATCH     # the loop's other fds get their turn
        serve_until(server, lambda: len(fake.replies) == ubus_api.BATCH * 3 + 5, "all replies")
    finally:
        server.close()


def test_reconnects_after_ubusd_goes_away_with_a_stable_fd(
        fake: FakeConnection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ubus_api, "RETRY_S", 0.05)
    server = UbusServer(fake, lambda m, a: {"ok": True})
    fd = server.fileno()
    try:
        fake.ask("status", {})
        serve_until(server, lambda: len(fake.replies) == 1, "a reply")
        # ubusd dies with a call of ours still queued: it goes with the connection
        fake.queue("stats", libubus.encode({}))
        fake.up = False
        fake.ubusd.close()
        old_sock = fake.sock
        serve_until(server, lambda: not fake.connected, "the loss to be noticed")
        assert not fake.requests and len(fake.replies) == 1
        # nothing but the retry timer wakes the loop now; it keeps trying while ubusd is down
        for _ in range(3):
            assert readable(fd, 5), "the retry timer did not fire"
            server.service()
        assert fake.reconnects == 0
        fake.up = True
        serve_until(server, lambda: fake.reconnects == 1, "the reconnect")
        assert server.fileno() == fd and fake.sock is not old_sock
        assert not readable(fd, 0.2)        # the timer is off once connected
        fake.ask("status", {})              # on the new socket
        serve_until(server, lambda: len(fake.replies) == 2, "a reply on the new connection")
        assert [r[0] for r in fake.replies] == ["status", "status"]
    finally:
        server.close()
