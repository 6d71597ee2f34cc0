# SPDX-License-Identifier: GPL-2.0-only
"""fw_ebpf.conntrack against the real kernel: client -> router (masquerade) -> server namespaces.

The router's Conntrack / ConntrackEvents are opened from a thread that entered the router
namespace (setns is per thread), so the test process itself talks to the router's conntrack.
"""
from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import pytest

from fw_ebpf import conntrack as ctmod
from fw_ebpf import netlink as nl
from fw_ebpf.conntrack import (Conntrack, ConntrackEvents, CtEntry, CtEvent, Direction,
                               EventsLost)
from fw_ebpf.maps import Tuple
from netns import netns, run_in_netns, setns, sh, veth_pair
from pyroute2_ref import ct_decode, ct_encode, ct_msg, ct_tuple_attrs

T = TypeVar("T")
TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP
A = ipaddress.ip_address

ADDR = {
    4: dict(client="10.0.1.2", lan="10.0.1.1", wan="10.0.2.1", server="10.0.2.2", plen="24"),
    6: dict(client="fd01::2", lan="fd01::1", wan="fd02::1", server="fd02::2", plen="64"),
}
ECHO_PORT, FTP_PORT, DROPPED_PORT = 5000, 21, 5999
DROPPED_UDP_RANGE = (20000, 39999)

ROUTER_NFT = """
table inet ebpfw_test {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade
    }
}
"""
ROUTER_FTP_HELPER_NFT = f"""
table inet ebpfw_helper {{
    ct helper ftp_std {{
        type "ftp" protocol tcp
    }}
    chain prerouting {{
        type filter hook prerouting priority filter; policy accept;
        tcp dport {FTP_PORT} ct helper set "ftp_std"
    }}
}}
"""
# the server silently drops these, so the router sees half-open TCP and one-way UDP
SERVER_NFT = f"""
table inet ebpfw_test {{
    chain input {{
        type filter hook input priority filter; policy accept;
        tcp dport {DROPPED_PORT} drop
        udp dport {{ {DROPPED_PORT}, {DROPPED_UDP_RANGE[0]}-{DROPPED_UDP_RANGE[1]} }} drop
    }}
}}
"""

# echo server on [::] (v4-mapped too); prints the peer of every connection/datagram
SERVER = r"""
import socket, sys, threading
proto, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
def peer(a):
    print("peer", a[0].removeprefix("::ffff:"), a[1], flush=True)
def echo(c):
    with c:
        while data := c.recv(4096):
            c.sendall(data)
def serve(port):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    if kind == socket.SOCK_STREAM:
        s.listen(16)
        while True:
            c, a = s.accept()
            peer(a)
            threading.Thread(target=echo, args=(c,), daemon=True).start()
    while True:
        data, a = s.recvfrom(4096)
        peer(a)
        s.sendto(data, a)
for p in ports:
    threading.Thread(target=serve, args=(p,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

# TCP client: one echo round trip, prints its local address, closes when stdin closes
CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.sendall(b"hello")
assert c.recv(16) == b"hello"
a = c.getsockname()
print("local", a[0], a[1], flush=True)
sys.stdin.read()
c.close()
"""

needs_kernel = pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("nft") and shutil.which("conntrack")),
    reason="needs root (network namespaces, ctnetlink) and the nft and conntrack tools")
_counter = itertools.count()


@dataclass(frozen=True)
class Topo:
    client: str
    router: str
    server: str


@contextlib.contextmanager
def topology(helper: bool = False) -> Iterator[Topo]:
    """client --lan-- router (forwarding, masquerade out of wan) --wan-- server."""
    suffix = f"{os.getpid()}-{next(_counter)}"
    with netns(f"ctc-{suffix}") as cl, netns(f"ctr-{suffix}") as rt, netns(f"cts-{suffix}") as sv:
        veth_pair(rt, "lan", "c0")
        veth_pair(rt, "wan", "s0")
        for ns, dev in ((cl, "c0"), (sv, "s0")):
            sh("ip", "-n", rt, "link", "set", dev, "netns", ns)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        for fam, a in ADDR.items():
            extra = ["nodad"] if fam == 6 else []
            sh("ip", "-n", cl, "addr", "add", f"{a['client']}/{a['plen']}", "dev", "c0", *extra)
            sh("ip", "-n", rt, "addr", "add", f"{a['lan']}/{a['plen']}", "dev", "lan", *extra)
            sh("ip", "-n", rt, "addr", "add", f"{a['wan']}/{a['plen']}", "dev", "wan", *extra)
            sh("ip", "-n", sv, "addr", "add", f"{a['server']}/{a['plen']}", "dev", "s0", *extra)
            sh("ip", f"-{fam}", "-n", cl, "route", "add", "default", "via", a["lan"])
        # no route back to the client: replies only arrive through the masquerade
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                    "net.netfilter.nf_conntrack_acct=1"):
            sh("ip", "netns", "exec", rt, "sysctl", "-qw", key)
        nft(rt, ROUTER_NFT + (ROUTER_FTP_HELPER_NFT if helper else ""))
        nft(sv, SERVER_NFT)
        yield Topo(cl, rt, sv)


def nft(ns: str, ruleset: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=ruleset, text=True,
                   check=True, capture_output=True)


@contextlib.contextmanager
def process(ns: str, script: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """A python script in ns; killed on exit, whatever happened."""
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-u", "-c", script, *args],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    try:
        yield p
    finally:
        p.kill()
        p.wait()


def readline(p: subprocess.Popen[bytes], timeout: float = 10) -> list[str]:
    """The next line of p's stdout, split in words (unbuffered: select sees every byte)."""
    assert p.stdout is not None
    line, deadline = b"", time.monotonic() + timeout
    while not line.endswith(b"\n"):
        if not select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
            raise TimeoutError(f"no output from {p.args}: got {line!r}")
        byte = p.stdout.read(1)
        if not byte:
            raise RuntimeError(f"{p.args} exited with {p.wait()}")
        line += byte
    return line.decode().split()


@contextlib.contextmanager
def echo_server(topo: Topo, proto: str, *ports: int) -> Iterator[subprocess.Popen[bytes]]:
    with process(topo.server, SERVER, proto, *map(str, ports or (ECHO_PORT,))) as p:
        assert readline(p) == ["ready"]
        yield p


@dataclass(frozen=True)
class TcpFlow:
    orig: Tuple        # as the router receives it from the client
    observed: Tuple    # as the server receives it, after masquerade


@contextlib.contextmanager
def tcp_connection(topo: Topo, server: subprocess.Popen[bytes], family: int,
                   port: int = ECHO_PORT) -> Iterator[tuple[TcpFlow, subprocess.Popen[bytes]]]:
    a = ADDR[family]
    with process(topo.client, CLIENT, a["server"], str(port)) as client:
        _, caddr, cport = readline(client)
        _, paddr, pport = readline(server)
        orig = Tuple(TCP, A(caddr), A(a["server"]), int(cport), port)
        observed = Tuple(TCP, A(paddr), A(a["server"]), int(pport), port)
        yield TcpFlow(orig, observed), client


def in_netns(ns: str, factory: Callable[[], T]) -> T:
    """factory() called in a thread that entered ns: its sockets belong to ns for good."""
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            setns(ns)
            result.append(factory())
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return result[0]


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 5) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def udp_send(family: int, daddr: str, dport: int, expect_reply: bool) -> int:
    """One datagram from a fresh socket (in the client netns); returns its source port."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    with socket.socket(af, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(b"ping", (daddr, dport))
        if expect_reply:
            assert s.recv(16) == b"ping"
        return s.getsockname()[1]


def udp_spray(daddr: str, ports: range) -> int:
    """One datagram to each port from one socket: one conntrack entry per port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for port in ports:
            s.sendto(b"x", (daddr, port))
        return s.getsockname()[1]


def collect(events: ConntrackEvents, until: Callable[[list[CtEvent]], bool],
            timeout: float = 5) -> list[CtEvent]:
    got: list[CtEvent] = []
    deadline = time.monotonic() + timeout
    while not until(got):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"events incomplete: {[(e.kind, e.entry.orig) for e in got]}")
        select.select([events], [], [], left)
        got += events.read()
    return got


def reverse(t: Tuple) -> Tuple:
    return Tuple(t.l4proto, t.daddr, t.saddr, t.dport, t.sport)


# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", [4, 6])
def test_refresh_encoder_matches_pyroute2(family: int) -> None:
    a = ADDR[family]
    t = Tuple(UDP, A(a["client"]), A(a["server"]), 40000, 53)
    attrs = [["CTA_TUPLE_ORIG", ct_tuple_attrs(t)], ["CTA_TIMEOUT", 3600]]
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    for flags in (nl.NLM_F_REQUEST, nl.NLM_F_REQUEST | nl.NLM_F_ACK):
        ours = ctmod.encode_refresh(77, flags, t, 3600)
        assert ours == ct_encode(ctmod.IPCTNL_MSG_CT_NEW, flags, 77, af, attrs)


def test_liberal_encoder_decodes_as_both_directions_be_liberal() -> None:
    t = Tuple(TCP, A("10.0.1.2"), A("10.0.2.2"), 40000, 80)
    msg = ct_msg(ctmod.encode_liberal(5, nl.NLM_F_REQUEST, t))
    msg.decode()
    assert msg["header"]["type"] == 1 << 8 | ctmod.IPCTNL_MSG_CT_NEW
    tcp = msg.get_attr("CTA_PROTOINFO").get_attr("CTA_PROTOINFO_TCP")
    liberal = ctmod.IP_CT_TCP_FLAG_BE_LIBERAL
    for name in ("CTA_PROTOINFO_TCP_FLAGS_ORIGINAL", "CTA_PROTOINFO_TCP_FLAGS_REPLY"):
        assert tcp.get_attr(name) == (liberal, liberal | ctmod.IP_CT_TCP_FLAG_MAXACK_SET)
    orig = msg.get_attr("CTA_TUPLE_ORIG")
    assert orig.get_attr("CTA_TUPLE_PROTO").get_attr("CTA_PROTO_SRC_PORT") == 40000
    assert orig.get_attr("CTA_TUPLE_IP").get_attr("CTA_IP_V4_DST") == "10.0.2.2"


@pytest.mark.parametrize("family", [4, 6])
def test_tuples_in_another_layout_decode_as_pyroute2_does(family: int) -> None:
    """Attributes in another order, a zone inside the tuple: the attribute walk, not the
    fixed layout, and the same result as pyroute2's."""
    a = ADDR[family]
    v = "CTA_IP_V4" if family == 4 else "CTA_IP_V6"
    af = socket.AF_INET if family == 4 else socket.AF_INET6

    def tup(src: str, dst: str, sport: int, dport: int) -> dict[str, Any]:
        return {"attrs": [
            ["CTA_TUPLE_PROTO", {"attrs": [["CTA_PROTO_DST_PORT", dport],
                                           ["CTA_PROTO_NUM", TCP],
                                           ["CTA_PROTO_SRC_PORT", sport]]}],
            ["CTA_TUPLE_IP", {"attrs": [[v + "_DST", dst], [v + "_SRC", src]]}],
            ["CTA_TUPLE_ZONE", 3]]}

    raw = ct_encode(ctmod.IPCTNL_MSG_CT_NEW, 0, 0, af, [
        ["CTA_TUPLE_ORIG", tup(a["client"], a["server"], 40000, 80)],
        ["CTA_TUPLE_REPLY", tup(a["server"], a["wan"], 80, 61000)],
        ["CTA_STATUS", ctmod.IPS_CONFIRMED], ["CTA_ZONE", 3], ["CTA_MARK", 0x42],
        ["CTA_TIMEOUT", 120], ["CTA_ID", 99]])
    (m,) = nl.parse(raw)
    assert ctmod._LAYOUT[af].unpack(nl.attrs(m.data, 4)[ctmod.CTA_TUPLE_ORIG]) is None
    ours = ctmod.decode_entry(m.data)
    assert ours is not None and ours == ct_decode(raw)
    assert ctmod.decode_tuples(m.data) == CtEntry(ours.orig_id, ours.reply_id)
    assert ours.orig == Tuple(TCP, A(a["client"]), A(a["server"]), 40000, 80)
    assert (ours.zone, ours.mark, ours.timeout, ours.id) == (3, 0x42, 120, 99)


def test_entry_directions_and_nat_without_kernel() -> None:
    orig = Tuple(TCP, A("10.0.1.2"), A("10.0.2.2"), 40000, 80)
    reply = Tuple(TCP, A("10.0.2.2"), A("10.0.2.1"), 80, 61000)
    e = CtEntry(orig, reply, status=ctmod.IPS_CONFIRMED | ctmod.IPS_ASSURED,
                tcp_state=ctmod.TCP_CONNTRACK_ESTABLISHED)
    assert e.nat and e.ineligible_reason() is None
    assert e.ingress(Direction.ORIGINAL) == orig and e.ingress(Direction.REPLY) == reply
    assert e.egress(Direction.ORIGINAL) == Tuple(TCP, A("10.0.2.1"), A("10.0.2.2"), 61000, 80)
    assert e.egress(Direction.REPLY) == reverse(orig)
    assert not CtEntry(orig, reverse(orig)).nat
    cases = {
        "dying": ctmod.IPS_DYING, "in nft flowtable": ctmod.IPS_OFFLOAD,
        "seq adjust": ctmod.IPS_SEQ_ADJUST, "not assured": -ctmod.IPS_ASSURED,
    }
    for reason, bit in cases.items():
        status = e.status & ~-bit if bit < 0 else e.status | bit
        assert CtEntry(orig, reply, status=status, tcp_state=e.tcp_state).ineligible_reason() \
            == reason
    assert CtEntry(orig, reply, status=ctmod.IPS_ASSURED, tcp_state=3).ineligible_reason() \
        == "unconfirmed"


def test_closing_means_it_can_never_become_eligible() -> None:
    orig = Tuple(TCP, A("10.0.1.2"), A("10.0.2.2"), 40000, 80)
    ok = ctmod.IPS_CONFIRMED | ctmod.IPS_ASSURED
    for state in range(ctmod.TCP_CONNTRACK_SYN_SENT, ctmod.TCP_CONNTRACK_CLOSE + 1):
        e = CtEntry(orig, reverse(orig), status=ok, tcp_state=state)
        assert e.closing == (state > ctmod.TCP_CONNTRACK_ESTABLISHED)
    udp = Tuple(socket.IPPROTO_UDP, A("10.0.1.2"), A("10.0.2.2"), 4000, 53)
    assert not CtEntry(udp, reverse(udp), status=ok).closing
    assert CtEntry(udp, reverse(udp), status=ok | ctmod.IPS_DYING).closing


@needs_kernel
@pytest.mark.parametrize("family", [4, 6])
def test_established_tcp_is_one_entry_from_both_directions_with_masquerade_nat(
        family: int) -> None:
    with topology() as topo, echo_server(topo, "tcp") as server, \
            tcp_connection(topo, server, family) as (flow, _client), \
            in_netns(topo.router, Conntrack) as ct:
        wan = A(ADDR[family]["wan"])
        assert flow.observed.saddr == wan   # the masquerade really happened

        def established() -> tuple[CtEntry, Direction] | None:
            found = ct.lookup(flow.orig)
            return found if found and found[0].ineligible_reason() is None else None

        entry, direction = wait_for("established, assured entry", established)
        assert direction is Direction.ORIGINAL
        assert entry.orig == flow.orig and entry.nat
        assert entry.egress(Direction.ORIGINAL) == flow.observed
        assert entry.egress(Direction.REPLY) == reverse(flow.orig)
        assert entry.reply == reverse(flow.observed)
        assert entry.tcp_state == ctmod.TCP_CONNTRACK_ESTABLISHED
        assert entry.status & ctmod.IPS_SRC_NAT
        assert entry.packets[0] >= 2 and entry.packets[1] >= 2, entry.packets
        assert entry.bytes[0] > 0 and entry.bytes[1] > 0

        back = ct.lookup(entry.reply)
        assert back is not None
        assert back[1] is Direction.REPLY and back[0].id == entry.id
        assert back[0].ingress(Direction.REPLY) == entry.reply
        assert ct.get(entry.orig) is not None and ct.get(entry.orig).id == entry.id
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        assert entry.id in {e.id for e in ct.dump(af)}
        assert entry.id not in {e.id for e in ct.dump(socket.AF_INET6 if family == 4
                                                    else socket.AF_INET)}
        missing = Tuple(TCP, flow.orig.saddr, flow.orig.daddr, 1, 1)
        assert ct.lookup(missing) is None and ct.get(missing) is None


@needs_kernel
@pytest.mark.parametrize("family", [4, 6])
def test_half_open_tcp_is_not_eligible(family: int) -> None:
    with topology() as topo, in_netns(topo.router, Conntrack) as ct:
        a = ADDR[family]
        with process(topo.client, CLIENT, a["server"], str(DROPPED_PORT)):
            def syn_sent() -> CtEntry | None:
                return next((e for e in ct.dump() if e.orig.dport == DROPPED_PORT), None)

            entry = wait_for("SYN_SENT entry", syn_sent)
            assert entry.tcp_state == ctmod.TCP_CONNTRACK_SYN_SENT
            assert entry.status & ctmod.IPS_CONFIRMED
            assert entry.ineligible_reason() == "tcp not established"
            found = ct.lookup(entry.orig)
            assert found is not None and found[1] is Direction.ORIGINAL


@needs_kernel
@pytest.mark.parametrize("family", [4, 6])
def test_udp_is_eligible_after_one_packet_and_nat_matches_server_view(family: int) -> None:
    a = ADDR[family]
    with topology() as topo, in_netns(topo.router, Conntrack) as ct:
        sport = run_in_netns(topo.client, udp_send, family, a["server"], DROPPED_PORT, False)
        one_way = ct.lookup(Tuple(UDP, A(a["client"]), A(a["server"]), sport, DROPPED_PORT))
        assert one_way is not None
        entry, direction = one_way
        assert direction is Direction.ORIGINAL
        assert not entry.status & ctmod.IPS_SEEN_REPLY
        assert entry.ineligible_reason() is None

        with echo_server(topo, "udp") as server:
            sport = run_in_netns(topo.client, udp_send, family, a["server"], ECHO_PORT, True)
            _, paddr, pport = readline(server)
        orig = Tuple(UDP, A(a["client"]), A(a["server"]), sport, ECHO_PORT)
        found = ct.lookup(orig)
        assert found is not None
        entry = found[0]
        assert entry.status & ctmod.IPS_SEEN_REPLY and entry.ineligible_reason() is None
        assert entry.egress(Direction.ORIGINAL) == Tuple(UDP, A(paddr), A(a["server"]),
                                                         int(pport), ECHO_PORT)
        assert A(paddr) == A(a["wan"])
        reply = ct.lookup(entry.reply)
        assert reply is not None and reply[1] is Direction.REPLY and reply[0].id == entry.id


@needs_kernel
def test_connection_with_helper_is_not_eligible() -> None:
    with topology(helper=True) as topo, echo_server(topo, "tcp", FTP_PORT) as server, \
            tcp_connection(topo, server, 4, FTP_PORT) as (flow, _client), \
            in_netns(topo.router, Conntrack) as ct:
        entry = wait_for("entry", lambda: ct.get(flow.orig))
        assert entry.helper == "ftp"
        assert entry.ineligible_reason() == "helper ftp"


@needs_kernel
def test_refresh_raises_timeout_and_skips_vanished_entries() -> None:
    a = ADDR[4]
    with topology() as topo, in_netns(topo.router, Conntrack) as ct:
        ports = [run_in_netns(topo.client, udp_send, 4, a["server"], DROPPED_PORT, False)
                 for _ in range(2)]
        tuples = [Tuple(UDP, A(a["client"]), A(a["server"]), p, DROPPED_PORT) for p in ports]
        before = [ct.get(t) for t in tuples]
        assert all(e is not None and e.timeout <= 30 for e in before), before
        gone = Tuple(UDP, A(a["client"]), A(a["server"]), 1, 1)

        assert ct.refresh([tuples[0], gone], 3600) == 1
        first = ct.get(tuples[0])
        assert first is not None and 3590 <= first.timeout <= 3600
        second = ct.get(tuples[1])
        assert second is not None and second.timeout <= 30

        per_tuple = {tuples[0]: 1800, tuples[1]: 2400}
        assert ct.refresh(iter(tuples), per_tuple.__getitem__) == 2
        for t, want in per_tuple.items():
            entry = ct.get(t)
            assert entry is not None and want - 10 <= entry.timeout <= want
        assert ct.refresh([], 60) == 0
        vanished = [Tuple(UDP, A(a["client"]), A(a["server"]), p, 9) for p in range(1, 2001)]
        assert ct.refresh(vanished + tuples, 60) == 2   # every error read, none mistaken


@needs_kernel
def test_delete_removes_entry() -> None:
    a = ADDR[6]
    with topology() as topo, in_netns(topo.router, Conntrack) as ct:
        sport = run_in_netns(topo.client, udp_send, 6, a["server"], DROPPED_PORT, False)
        orig = Tuple(UDP, A(a["client"]), A(a["server"]), sport, DROPPED_PORT)
        assert ct.get(orig) is not None
        assert ct.delete(orig) is True
        assert ct.get(orig) is None and ct.lookup(orig) is None
        assert ct.delete(orig) is False


@needs_kernel
def test_established_timeout_reads_the_namespace_sysctl() -> None:
    with topology() as topo:
        sh("ip", "netns", "exec", topo.router, "sysctl", "-qw",
           "net.netfilter.nf_conntrack_tcp_timeout_established=7200")
        sh("ip", "netns", "exec", topo.router, "sysctl", "-qw",
           "net.netfilter.nf_conntrack_udp_timeout_stream=150")
        assert run_in_netns(topo.router, Conntrack.established_timeout, TCP) == 7200
        assert run_in_netns(topo.router, Conntrack.established_timeout, UDP) == 150
        with pytest.raises(ValueError):
            Conntrack.established_timeout(socket.IPPROTO_ICMP)


@needs_kernel
def test_restore_closing_undoes_a_refresh_that_landed_after_the_close() -> None:
    """The sweep's refresh writes the established timeout; one that lands after conntrack saw
    the FIN gives a closed connection hours. restore_closing puts its state's timeout back
    and leaves an established connection alone."""
    with topology() as topo, in_netns(topo.router, Conntrack) as ct, \
            echo_server(topo, "tcp") as server:
        sh("ip", "netns", "exec", topo.router, "sysctl", "-qw",
           "net.netfilter.nf_conntrack_tcp_timeout_time_wait=40")
        with tcp_connection(topo, server, 4) as (flow, client):
            established = wait_for("the connection established", lambda: (
                e := ct.get(flow.orig)) and e.tcp_state == ctmod.TCP_CONNTRACK_ESTABLISHED and e)
            assert run_in_netns(topo.router, ct.restore_closing, [flow.orig]) == 0
            assert ct.get(flow.orig).timeout >= established.timeout - 5   # type: ignore[union-attr]
            assert client.stdin is not None
            client.stdin.close()   # FIN both ways: TIME_WAIT
            wait_for("TIME_WAIT", lambda: (e := ct.get(flow.orig)) and
                     e.tcp_state == ctmod.TCP_CONNTRACK_TIME_WAIT)
            assert ct.refresh([flow.orig], 3600) == 1     # the late refresh
            assert ct.get(flow.orig).timeout > 3000       # type: ignore[union-attr]
            # the timeouts are the namespace's sysctls: read from a thread in it, as the daemon does
            gone = Tuple(TCP, A("10.0.1.2"), A("10.0.2.2"), 1, 1)
            assert run_in_netns(topo.router, ct.restore_closing, [gone, flow.orig]) == 1
            after = ct.get(flow.orig)
            assert after is not None and after.tcp_state == ctmod.TCP_CONNTRACK_TIME_WAIT
            assert after.timeout <= 40


@needs_kernel
@pytest.mark.parametrize("family", [4, 6])
def test_events_follow_a_connection_until_conntrack_delete(family: int) -> None:
    with topology() as topo, in_netns(topo.router, ConntrackEvents) as events, \
            echo_server(topo, "tcp") as server:
        assert events.read() == []   # non-blocking when nothing is queued
        with tcp_connection(topo, server, family) as (flow, client):
            def mine(got: list[CtEvent]) -> list[CtEvent]:
                return [e for e in got if e.entry.orig == flow.orig]

            got = collect(events, lambda g: any(e.entry.ineligible_reason() is None
                                                for e in mine(g)))
            kinds = [e.kind for e in mine(got)]
            assert kinds[0] == "new" and "update" in kinds and "destroy" not in kinds
            assert mine(got)[0].entry.egress(Direction.ORIGINAL) == flow.observed

            assert client.stdin is not None
            client.stdin.close()   # graceful close: FIN both ways, entry goes to TIME_WAIT
            got = collect(events, lambda g: any(
                e.entry.tcp_state == ctmod.TCP_CONNTRACK_TIME_WAIT for e in mine(g)))
            assert all(e.kind == "update" for e in mine(got))

        sh("ip", "netns", "exec", topo.router, "conntrack", "-D", "-f",
           "ipv4" if family == 4 else "ipv6", "-p", "tcp", "--sport", str(flow.orig.sport))
        got = collect(events, lambda g: bool(mine(g)))
        assert [e.kind for e in mine(got)] == ["destroy"]
        assert mine(got)[0].entry.reply == reverse(flow.observed)


@needs_kernel
def test_the_daemons_event_filter_drops_udp_updates_and_our_own_refreshes() -> None:
    """The events socket as the daemon opens it, beside one that takes every event: the kernel
    drops UDP entries' updates and updates our own refreshes cause; TCP state changes, other
    requesters' refreshes and destroys come through. (Both sockets get each event at once, so
    what the unfiltered one has read, the filtered one had its chance at.)"""
    a = ADDR[4]
    with topology() as topo, in_netns(topo.router, Conntrack) as ours, \
            in_netns(topo.router, Conntrack) as theirs, \
            in_netns(topo.router, lambda: ConntrackEvents(
                ("update", "destroy"), udp_updates=False, not_from=ours.portid)) as filtered, \
            in_netns(topo.router, lambda: ConntrackEvents(("update", "destroy"))) as every, \
            echo_server(topo, "udp") as _:
        kept: list[CtEvent] = []

        def seen(match: Callable[[CtEvent], bool]) -> None:
            collect(every, lambda g: any(map(match, g)))
            kept.extend(filtered.read(max_events=100_000))

        sport = run_in_netns(topo.client, udp_send, 4, a["server"], ECHO_PORT, True)
        seen(lambda e: e.entry.orig.sport == sport and e.kind == "update")   # the reply
        with echo_server(topo, "tcp", ECHO_PORT + 1) as server, \
                tcp_connection(topo, server, 4, ECHO_PORT + 1) as (flow, _client):
            seen(lambda e: e.entry.orig == flow.orig and e.entry.ineligible_reason() is None)
            assert ours.refresh([flow.orig], 1000) == 1
            seen(lambda e: e.entry.orig == flow.orig and e.entry.timeout <= 1000)
            assert theirs.refresh([flow.orig], 2000) == 1
            seen(lambda e: e.entry.orig == flow.orig and 1000 < e.entry.timeout <= 2000)
            sh("ip", "netns", "exec", topo.router, "conntrack", "-D", "-p", "udp",
               "--orig-port-src", str(sport))
            seen(lambda e: e.entry.orig.sport == sport and e.kind == "destroy")

        udp = [e.kind for e in kept if e.entry.orig.sport == sport]
        tcp = [e for e in kept if e.entry.orig == flow.orig
               and e.entry.ineligible_reason() is None]     # from ESTABLISHED on
        assert udp == ["destroy"]
        assert tcp
        assert not any(e.entry.timeout <= 1000 for e in tcp)              # our refresh
        assert any(1000 < e.entry.timeout <= 2000 for e in tcp)           # theirs


@needs_kernel
def test_flush_sends_one_destroy_event_per_entry() -> None:
    a = ADDR[4]
    with topology() as topo, in_netns(topo.router, ConntrackEvents) as events:
        sport = run_in_netns(topo.client, udp_spray, a["server"], range(20000, 20050))
        got = collect(events, lambda g: sum(e.kind == "new" for e in g) >= 50)
        flows = {e.entry.orig for e in got if e.kind == "new" and e.entry.orig.sport == sport}
        assert len(flows) == 50

        sh("ip", "netns", "exec", topo.router, "conntrack", "-F")
        got = collect(events, lambda g: flows <= {e.entry.orig for e in g if e.kind == "destroy"})
        assert {e.kind for e in got} == {"destroy"}


@needs_kernel
def test_event_overrun_raises_events_lost_then_recovers() -> None:
    a = ADDR[4]
    with topology() as topo, in_netns(topo.router, lambda: ConntrackEvents(rcvbuf=4096)) as events:
        run_in_netns(topo.client, udp_spray, a["server"], range(20000, 20500))
        with pytest.raises(EventsLost):
            for _ in range(100):
                events.read()
        assert events.read() == []   # what was queued went with the overrun: resync from here
        run_in_netns(topo.client, udp_send, 4, a["server"], DROPPED_PORT, False)
        got = collect(events, lambda g: any(e.entry.orig.dport == DROPPED_PORT for e in g))
        assert any(e.kind == "new" for e in got)


@needs_kernel
def test_refresh_of_10k_entries_is_batched() -> None:
    """Correctness at scale; run with -s to see the rate (a measurement, not a timed test)."""
    a = ADDR[4]
    n = 10_000
    with topology() as topo, in_netns(topo.router, Conntrack) as ct, \
            in_netns(topo.router, lambda: ConntrackEvents(kinds=("update",))) as events:
        lo = DROPPED_UDP_RANGE[0]
        sport = run_in_netns(topo.client, udp_spray, a["server"], range(lo, lo + n))
        tuples = [e.orig for e in ct.dump(socket.AF_INET) if e.orig.sport == sport]
        assert len(tuples) == n
        events.read(max_events=10 * n)   # discard anything from before

        start = time.perf_counter()
        assert ct.refresh(tuples, 3600) == n
        batched = time.perf_counter() - start

        start = time.perf_counter()
        updates = 0
        while updates < n:
            if not select.select([events], [], [], 5)[0]:
                break
            updates += sum(e.kind == "update" for e in events.read(max_events=10 * n))
        reading = time.perf_counter() - start

        start = time.perf_counter()
        for t in tuples[:1000]:
            assert ct.refresh([t], 3600) == 1
        one_by_one = (time.perf_counter() - start) * n / 1000

        timeouts = [e.timeout for e in ct.dump(socket.AF_INET) if e.orig.sport == sport]
        assert len(timeouts) == n and min(timeouts) >= 3500
        assert updates == n   # every refresh is echoed to listeners as an UPDATE event
        print(f"\nrefresh {n} entries: batched {batched:.3f}s ({n / batched:.0f}/s), "
              f"one request per entry ~{one_by_one:.3f}s; "
              f"reading the {updates} UPDATE events it causes: {reading:.3f}s")


def _whole(m: nl.Message) -> bytes:
    return nl.message(m.type, m.flags, m.seq, m.data)


def _raw_dump(sock: nl.Socket) -> list[nl.Message]:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)
    return sock.request(1 << 8 | ctmod.IPCTNL_MSG_CT_GET, body, "dump", "dump")


@needs_kernel
def test_decoder_agrees_with_pyroute2_on_every_entry_and_event() -> None:
    """TCP with masquerade and with the ftp helper, UDP one-way and answered, v4 and v6,
    counters on: our decoding of the kernel's own bytes equals pyroute2's, field by field."""
    with topology(helper=True) as topo, \
            in_netns(topo.router, lambda: nl.Socket(nl.NETLINK_NETFILTER, "test")) as req, \
            in_netns(topo.router, lambda: nl.Socket(nl.NETLINK_NETFILTER, "test", (1, 2, 3),
                                                    blocking=False)) as ev, \
            echo_server(topo, "tcp", ECHO_PORT, FTP_PORT) as server:
        with tcp_connection(topo, server, 4) as (_f4, c4), \
                tcp_connection(topo, server, 6) as (_f6, c6), \
                tcp_connection(topo, server, 4, FTP_PORT):
            for fam in (4, 6):
                run_in_netns(topo.client, udp_send, fam, ADDR[fam]["server"], DROPPED_PORT, False)
            for c in (c4, c6):
                assert c.stdin is not None
                c.stdin.close()
            sh("ip", "netns", "exec", topo.router, "conntrack", "-D", "-p", "udp")
            dumped = wait_for("entries", lambda: [m for m in _raw_dump(req)
                                                  if ctmod.decode_entry(m.data)])
        events: list[nl.Message] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
                m.type & 0xFF == ctmod.IPCTNL_MSG_CT_DELETE for m in events):
            select.select([ev], [], [], 0.2)
            events += ev.recv() or []
        seen = {"helper": False, "nat": False, "v6": False, "counters": False, "destroy": False}
        for m in dumped + events:
            ours, ref = ctmod.decode_entry(m.data), ct_decode(_whole(m))
            assert ours == ref, (m, ours, ref)
            tuples = ctmod.decode_tuples(m.data)    # what the daemon reads of an event
            assert (tuples is None) == (ours is None)
            if ours is None:
                continue
            assert tuples is not None
            assert (tuples.orig_id, tuples.reply_id) == (ours.orig_id, ours.reply_id)
            a = nl.attrs(m.data, 4)   # the kernel's tuples take the fixed-layout path
            layout = ctmod._LAYOUT[m.data[0]]
            assert layout.unpack(a[ctmod.CTA_TUPLE_ORIG]) == ours.orig_id
            assert layout.unpack(a[ctmod.CTA_TUPLE_REPLY]) == ours.reply_id
            seen["helper"] |= ours.helper == "ftp"
            seen["nat"] |= ours.nat
            seen["v6"] |= ours.orig.saddr.version == 6
            seen["counters"] |= ours.packets[0] > 0 and ours.bytes[1] > 0
            seen["destroy"] |= m.type & 0xFF == ctmod.IPCTNL_MSG_CT_DELETE
        assert all(seen.values()), seen


@needs_kernel
def test_lookup_many_equals_one_lookup_per_tuple_across_batches() -> None:
    a = ADDR[4]
    n = 2500
    with topology() as topo, in_netns(topo.router, Conntrack) as ct:
        lo = DROPPED_UDP_RANGE[0]
        sport = run_in_netns(topo.client, udp_spray, a["server"], range(lo, lo + n))
        entries = [e for e in ct.dump(socket.AF_INET) if e.orig.sport == sport]
        assert len(entries) == n
        missing = [Tuple(UDP, A(a["client"]), A(a["server"]), 1, p) for p in range(1, 301)]
        asked = ([e.orig for e in entries] + [e.reply for e in entries[:500]] + missing
                 + [entries[0].orig])   # a repeated tuple is answered again
        assert ct._lookup_batch < n       # several batches
        found = list(ct.lookup_many(asked))
        assert len(found) == len(asked)
        for e, hit in zip(entries, found):
            assert hit is not None and hit[1] is Direction.ORIGINAL and hit[0].id == e.id
        for e, hit in zip(entries[:500], found[n:]):
            assert hit is not None and hit[1] is Direction.REPLY and hit[0].id == e.id
        assert found[n + 500:-1] == [None] * len(missing)
        assert found[-1] is not None and found[-1][0].id == entries[0].id
        for t, hit in list(zip(asked, found))[::97]:
            one = ct.lookup(t)
            assert (one is None) == (hit is None)
            assert one is None or hit is None or (one[0].id, one[1]) == (hit[0].id, hit[1])
        assert list(ct.lookup_many([])) == []
        # an answer no longer wanted is read but not decoded: the rest stay in order
        odd = list(ct.lookup_many(asked, wanted=lambda i: i % 2 == 0))
        assert odd[1::2] == [None] * (len(asked) // 2)
        assert [hit and (hit[0].id, hit[1]) for hit in odd[::2]] == \
            [hit and (hit[0].id, hit[1]) for hit in found[::2]]
        assert ct._sock.queued() == 0   # every answer and ack read


@needs_kernel
def test_set_liberal_sets_be_liberal_in_both_directions() -> None:
    with topology() as topo, echo_server(topo, "tcp") as server, \
            tcp_connection(topo, server, 4) as (flow, _client), \
            in_netns(topo.router, Conntrack) as ct, \
            in_netns(topo.router, lambda: nl.Socket(nl.NETLINK_NETFILTER, "test")) as req:
        wait_for("entry", lambda: ct.get(flow.orig))

        def tcp_flags() -> tuple[Any, Any]:
            m = next(m for m in _raw_dump(req)
                     if (e := ctmod.decode_entry(m.data)) and e.orig == flow.orig)
            msg = ct_msg(_whole(m))
            msg.decode()
            tcp = msg.get_attr("CTA_PROTOINFO").get_attr("CTA_PROTOINFO_TCP")
            return (tcp.get_attr("CTA_PROTOINFO_TCP_FLAGS_ORIGINAL"),
                    tcp.get_attr("CTA_PROTOINFO_TCP_FLAGS_REPLY"))

        liberal = ctmod.IP_CT_TCP_FLAG_BE_LIBERAL
        assert not any(f[0] & liberal for f in tcp_flags())
        assert ct.set_liberal(flow.orig) is True
        assert all(f[0] & liberal for f in tcp_flags())
        assert ct.set_liberal(Tuple(TCP, flow.orig.saddr, flow.orig.daddr, 1, 1)) is False
        assert ct._sock.queued() == 0
