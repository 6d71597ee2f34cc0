# SPDX-License-Identifier: GPL-2.0-only
"""The ebpfw methods as ubus and the control socket serve them: typed optional arguments,
validation before any handler runs, paging of a large flow table, bounded replies."""
from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import subprocess
import tempfile
import threading
from types import SimpleNamespace

import pytest

from fw_ebpf import api, control, maps
from fw_ebpf.api import Api, Arg, ArgType, InvalidArgument, Method, UnknownMethod
from fw_ebpf.flows import FlowBook
from fw_ebpf.maps import State, Tuple


def _book(n: int, seed: int = 1) -> FlowBook:
    """n flow records of every family, protocol and state, with the widest texts a flow has."""
    rnd = random.Random(seed)
    book = FlowBook()
    for i in range(n):
        v6 = i % 2 == 1
        if v6:
            src = ipaddress.IPv6Address(f"fd12:3456:789a:1234:5678:9abc:{i >> 16:x}:{i & 0xffff:x}")
            dst = ipaddress.IPv6Address("2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff")
        else:
            src = ipaddress.IPv4Address(0xC0A80000 + i)
            dst = ipaddress.IPv4Address("203.0.113.200")
        t = Tuple(6 if i % 3 else 17, src, dst, 40000 + i % 20000, 65535)
        rec = book.add(maps.encode_key(1000 + i % 7, t, vlan=(4094, 4094)))
        rec.state = list(State)[i % len(State)]
        rec.reason = "no conntrack entry; fw4 drop: rule 'Block-some-long-named-thing'"
        book.bind(rec, maps.tuple_id(t), 0, maps.tuple_id(Tuple(
            t.l4proto, dst if v6 else ipaddress.IPv4Address("198.51.100.250"), src, 65535,
            40000 + i % 20000)))
        rec.packets = rnd.randrange(1 << 40)
        rec.bytes = rnd.randrange(1 << 50)
        rec.last_seen_ns = 1
    return book


def _api(book: FlowBook) -> Api:
    # flows reads the daemon's book, and the kernel's entries of FORWARD flows (none here)
    return Api(SimpleNamespace(book=book, tables=SimpleNamespace(lookup=lambda key: None)))


def test_flows_pages_cover_20k_flows_once_sorted_and_every_reply_is_bounded():
    book = _book(20000)
    a = _api(book)
    seen, offset, last_bytes = [], 0, None
    while True:
        reply = a.call("flows", {"limit": api.FLOWS_LIMIT_MAX, "offset": offset})
        assert reply["total"] == 20000
        assert len(json.dumps(reply)) < api.REPLY_MAX_BYTES
        if not reply["flows"]:
            break
        for f in reply["flows"]:
            assert last_bytes is None or f["bytes"] <= last_bytes
            last_bytes = f["bytes"]
            seen.append((f["ifindex"], f["src"], f["dst"], f["proto"]))
        offset += len(reply["flows"])
    assert len(seen) == len(set(seen)) == 20000


def test_flows_filters_count_what_matches():
    book = _book(600)
    a = _api(book)
    recs = list(book.records.values())
    for args, want in [
        ({"state": "forward"}, [r for r in recs if r.state == State.FORWARD]),
        ({"proto": "udp"}, [r for r in recs if r.info.tuple.l4proto == 17]),
        ({"family": 6, "proto": "tcp"}, [r for r in recs if r.info.tuple.saddr.version == 6
                                         and r.info.tuple.l4proto == 6]),
    ]:
        reply = a.call("flows", {**args, "limit": 1000})
        assert reply["total"] == len(want) == len(reply["flows"]) > 0
        if "family" in args:
            assert {f["family"] for f in reply["flows"]} == {6}


def test_flows_sort_by_packets_and_default_page():
    a = _api(_book(300))
    reply = a.call("flows", {"sort": "packets"})
    packets = [f["packets"] for f in reply["flows"]]
    assert packets == sorted(packets, reverse=True)
    assert len(reply["flows"]) == api.FLOWS_LIMIT_DEFAULT == reply["limit"]


def test_undeclared_keys_such_as_the_rpc_session_are_ignored():
    a = _api(_book(10))
    reply = a.call("flows", {"ubus_rpc_session": "0123456789abcdef", "state": "pass"})
    assert reply["total"] == sum(r.state == State.PASS for r in a.daemon.book.records.values())


@pytest.mark.parametrize("args, message", [
    ({"family": "6"}, "'family' must be of type int32"),
    ({"family": 5}, "'family' must be 4 or 6"),
    ({"limit": 0}, "'limit' must be at least 1"),
    ({"limit": api.FLOWS_LIMIT_MAX + 1}, "'limit' must be at most"),
    ({"limit": True}, "'limit' must be of type int32"),
    ({"offset": -1}, "'offset' must be at least 0"),
    ({"state": "bogus"}, "'state' is 'bogus', expected one of"),
    ({"sort": 3}, "'sort' must be of type string"),
    ([1, 2], "arguments must be an object"),
])
def test_wrong_arguments_are_refused_before_the_handler_runs(args, message):
    ran = []
    methods = {"flows": Method(lambda d, a: ran.append(a) or {}, api.METHODS["flows"].args,
                               writes=True)}
    with pytest.raises(InvalidArgument, match=message):
        Api(SimpleNamespace(), methods).call("flows", args)
    assert ran == []


def test_unknown_method_and_oversized_reply():
    big = {"dump": Method(lambda d, a: {"x": "y" * api.REPLY_MAX_BYTES})}
    with pytest.raises(UnknownMethod):
        Api(SimpleNamespace(), big).call("nope", {})
    with pytest.raises(RuntimeError, match="exceeds"):
        Api(SimpleNamespace(), big).call("dump", {})


def test_every_method_declares_typed_arguments_and_writers_are_marked():
    assert {n for n, m in api.METHODS.items() if m.writes} == {"flush", "resync"}
    for m in api.METHODS.values():
        assert all(isinstance(a, Arg) and isinstance(a.type, ArgType) for a in m.args.values())


def test_control_socket_carries_errors_and_pages(tmp_path):
    path = str(tmp_path / "ctl.sock")
    server = control.ControlServer(path, _api(_book(50)).call)
    assert os.stat(path).st_mode & 0o777 == 0o600
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            server.serve_ready()
            stop.wait(0.01)

    t = threading.Thread(target=serve)
    t.start()
    try:
        page = control.call(path, "flows", {"limit": 20, "offset": 40})
        assert page["total"] == 50 and len(page["flows"]) == 10
        with pytest.raises(control.ControlError, match="flows: argument 'family'"):
            control.call(path, "flows", {"family": "x"})
        with pytest.raises(control.ControlError, match="unknown method 'bogus'"):
            control.call(path, "bogus")
    finally:
        stop.set()
        t.join()
        server.close()
    with pytest.raises(control.ControlError, match="not running"):
        control.call(path, "status")
    assert not os.path.exists(path)


# the system's interpreter: the venv's may sit where another user cannot enter
PYTHON = shutil.which("python3", path="/usr/bin:/bin")
CONNECT_AS_NOBODY = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("refused")
else:
    print("connected")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: runs a client as another user")
@pytest.mark.skipif(PYTHON is None, reason="no python3 in /usr/bin or /bin for the other user")
def test_control_socket_is_root_only_whatever_the_umask(monkeypatch: pytest.MonkeyPatch):
    """Mode 0600 and owned by root from the moment the path exists: a user who is not root
    cannot connect, even with umask 0 and a directory anyone can enter."""
    run_dir = tempfile.mkdtemp(dir="/run", prefix="ebpfw-ctl-")
    os.chmod(run_dir, 0o755)
    path = os.path.join(run_dir, "ebpfw.sock")
    chmod = os.chmod

    def watched_chmod(target: str, mode: int) -> None:
        # whatever is at the path clients use is never wider than 0600, not even for a moment
        if os.path.exists(path):
            assert os.stat(path).st_mode & 0o777 == 0o600
        chmod(target, mode)

    monkeypatch.setattr(control.os, "chmod", watched_chmod)
    umask = os.umask(0)
    try:
        server = control.ControlServer(path, _api(_book(3)).call)
        server.close()
        server = control.ControlServer(path, _api(_book(3)).call)   # over a leftover path
    finally:
        os.umask(umask)
    try:
        st = os.stat(path)
        assert st.st_mode & 0o777 == 0o600 and st.st_uid == 0
        assert os.listdir(run_dir) == ["ebpfw.sock"]
        nobody = subprocess.run([PYTHON, "-c", CONNECT_AS_NOBODY, path], user=65534,
                                group=65534, capture_output=True, text=True, timeout=30)
        assert nobody.stdout.strip() == "refused", nobody
        root = subprocess.run([PYTHON, "-c", CONNECT_AS_NOBODY, path],
                              capture_output=True, text=True, timeout=30)
        assert root.stdout.strip() == "connected", root
    finally:
        server.close()
        shutil.rmtree(run_dir, ignore_errors=True)
