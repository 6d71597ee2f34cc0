# SPDX-License-Identifier: GPL-2.0-only
"""fw_ebpf.netlink, rtnl and nftevents against the real kernel in throwaway namespaces.

Every decoder is checked field by field against pyroute2's decoding of the same bytes the kernel
sent (pyroute2 is a test dependency only), and against the iproute2 / nft / iptables-nft tools.

Topology (namespace R, per test):  br0 [eth0] 192.168.1.1   eth1 10.0.1.1 -- peer in S 10.0.1.2
    R: 203.0.113.0/24 via 10.0.1.2 mtu 1400; static neighbours; the same for IPv6.
"""
from __future__ import annotations

import errno
import itertools
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from fw_ebpf import netlink as nl
from fw_ebpf import nftevents, rtnl
from fw_ebpf.loader import TC_PARENT_EGRESS, TC_PARENT_INGRESS, Loader, object_name
from fw_ebpf.links import GROUPS, RtEvent, event_from_msg, link_from_msg
from fw_ebpf.nftevents import NftEvents
from netns import netns, run_in_netns, sh
from pyroute2_ref import (bpf_name_ref, event_ref, link_ref, route_ref, rules_ref,
                          tc_kind_ref, xdp_ids_ref)

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root to create network namespaces")
OBJ = str(Path(__file__).resolve().parents[1] / "build" / object_name())
_seq = itertools.count()


def whole(m: nl.Message) -> bytes:
    """The message as the kernel sent it (header rebuilt around the payload)."""
    return nl.message(m.type, m.flags, m.seq, m.data)


# ------------------------------------------------------------------------ without a kernel

def test_attributes_round_trip_with_nesting_and_flags_masked() -> None:
    inner = nl.attr(1, nl.be16(0x88A8)) + nl.attr(2 | nl.NLA_F_NET_BYTEORDER, nl.be32(7))
    data = nl.nested(5, inner) + nl.attr(3, nl.asciiz("eth0")) + nl.attr(4, b"\x01")
    a = nl.attrs(data)
    assert set(a) == {5, 3, 4}
    assert nl.get_str(a[3]) == "eth0" and nl.get_u8(a[4]) == 1
    assert len(data) % 4 == 0 and len(a[3]) == 5          # padded on the wire, not in the value
    n = nl.attrs(a[5])
    assert nl.get_be(n[1]) == 0x88A8 and nl.get_be(n[2]) == 7
    assert list(nl.attr_list(nl.attr(2, b"ab") + nl.attr(2, b"cd"))) == [(2, b"ab"), (2, b"cd")]
    assert nl.attrs(data + b"\x10\x00") == a                # a truncated tail is ignored


def test_messages_split_and_error_carries_request_seq_and_text() -> None:
    ok = nl.message(100, nl.NLM_F_MULTI, 9, b"abcd")
    ext = nl.attr(nl.NLMSGERR_ATTR_MSG, nl.asciiz("Invalid input device"))
    err = nl.message(nl.NLMSG_ERROR, nl.NLM_F_CAPPED | nl.NLM_F_ACK_TLVS, 0,
                     b"\xed\xff\xff\xff" + nl.message(26, 5, 42, b"")[:16] + ext)
    msgs = nl.parse(ok + err + b"\x00" * 7)
    assert [(m.type, m.seq, m.data) for m in msgs[:1]] == [(100, 9, b"abcd")]
    assert (msgs[1].error, msgs[1].seq, msgs[1].text) == (19, 42, "Invalid input device")
    assert len(msgs) == 2


# ------------------------------------------------------------------------ topology

@dataclass(frozen=True)
class Net:
    router: str
    peer: str

    def r(self, *args: str) -> str:
        return sh("ip", "-n", self.router, *args)

    def ifindex(self, name: str) -> int:
        return int(json.loads(self.r("-j", "link", "show", name))[0]["ifindex"])


@pytest.fixture
def net() -> Iterator[Net]:
    suffix = f"{os.getpid()}-{next(_seq)}"
    with netns(f"nl-r-{suffix}") as r, netns(f"nl-s-{suffix}") as s:
        n = Net(r, s)
        n.r("link", "add", "eth1", "type", "veth", "peer", "name", "wan0", "netns", s)
        n.r("link", "add", "eth0", "type", "veth", "peer", "name", "lan0")
        n.r("link", "add", "br0", "type", "bridge", "stp_state", "0")
        n.r("link", "set", "eth0", "master", "br0")
        for dev in ("br0", "eth0", "lan0", "eth1"):
            n.r("link", "set", dev, "up")
        sh("ip", "-n", s, "link", "set", "wan0", "up")
        sh("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        for dev, addrs in (("br0", ["192.168.1.1/24", "fd00:1::1/64"]),
                           ("eth1", ["10.0.1.1/24", "fd00:a::1/64"])):
            for a in addrs:
                n.r("addr", "add", a, "dev", dev, "nodad")
        sh("ip", "-n", s, "addr", "add", "10.0.1.2/24", "dev", "wan0")
        for addr in ("10.0.1.2", "fd00:a::2"):
            n.r("neigh", "replace", addr, "lladdr", "02:00:00:00:01:02", "dev", "eth1",
                "nud", "permanent")
        n.r("route", "add", "203.0.113.0/24", "via", "10.0.1.2", "mtu", "1400")
        n.r("-6", "route", "add", "2001:db8::/64", "via", "fd00:a::2")
        yield n


# ------------------------------------------------------------------------ rtnetlink

def _links() -> list[tuple[Any, Any, str, int]]:
    with rtnl.Rtnl() as rt:
        return [(link_from_msg(m), link_ref(whole(m)), nl.get_str(
            nl.attrs(m.data, rtnl.IFINFOMSG.size).get(rtnl.IFLA_IFNAME)),
            rtnl.IFINFOMSG.unpack_from(m.data)[2]) for m in rt.links()]


@needs_root
def test_link_dump_decodes_as_pyroute2_and_ip_do(net: Net) -> None:
    links = run_in_netns(net.router, _links)
    shown = {lk["ifname"]: lk for lk in json.loads(net.r("-j", "-d", "link", "show"))}
    assert sorted(name for *_, name, _ in links) == sorted(shown)
    for ours, ref, name, index in links:
        assert ours == ref, name
        ip = shown[name]
        assert (ours.index, ours.name, ours.mtu, ours.operstate) == \
            (ip["ifindex"], name, ip["mtu"], ip["operstate"]), name
        if ip.get("address") and ip.get("link_type") == "ether":
            assert ours.mac == bytes.fromhex(ip["address"].replace(":", ""))
    by_name = {lk.name: lk for lk, *_ in links}
    assert by_name["br0"].kind == "bridge" and by_name["eth0"].master == by_name["br0"].index
    assert by_name["eth0"].port_state == 3 and by_name["eth1"].kind == "veth"


def _routes(queries: list[tuple[Any, ...]]) -> list[Any]:
    out: list[Any] = []
    with rtnl.Rtnl() as rt:
        for q in queries:
            try:
                m = rt.route_message(*q)
                out.append((rtnl.route_from_msg(m), route_ref(whole(m))))
            except nl.NetlinkError as e:
                out.append((e.errno, str(e)))
        out.append(rt.queued())
    return out


@needs_root
def test_route_get_decodes_as_pyroute2_and_matches_ip_route_get(net: Net) -> None:
    eth0, eth1, br0 = net.ifindex("eth0"), net.ifindex("eth1"), net.ifindex("br0")
    A = ip_address
    queries = [
        (A("203.0.113.9"), A("192.168.1.10"), br0, 0, socket.IPPROTO_TCP, 40000, 443),
        (A("2001:db8::9"), A("fd00:1::10"), br0, 0x10),
        (A("192.168.1.1"),),                                     # local
        (A("192.168.1.1"), A("10.0.1.2"), eth1),                 # local, forwarded in
        (A("198.51.100.1"), A("192.168.1.10"), br0),             # no route
        (A("203.0.113.9"), A("192.168.1.10"), 9999),             # no such input device
    ]
    res = run_in_netns(net.router, _routes, queries)
    assert res.pop() == 0   # every answer and ack read
    for ours, ref in res[:4]:
        assert ours == ref
    fwd4, fwd6, local, local_in = (ours for ours, _ in res[:4])
    assert (fwd4.type, fwd4.oif, fwd4.gateway, fwd4.mtu) == \
        (rtnl.RTN_UNICAST, eth1, A("10.0.1.2"), 1400)
    got = json.loads(net.r("-j", "route", "get", "203.0.113.9", "from", "192.168.1.10",
                           "iif", "br0"))[0]
    assert (got["dev"], got["gateway"]) == ("eth1", "10.0.1.2")
    assert (fwd6.type, fwd6.oif, fwd6.gateway, fwd6.mtu) == \
        (rtnl.RTN_UNICAST, eth1, A("fd00:a::2"), 0)
    assert local.type == local_in.type == rtnl.RTN_LOCAL
    assert res[4][0] == errno.ENETUNREACH and "\n" not in res[4][1]
    assert res[5][0] == errno.ENODEV and "\n" not in res[5][1]
    assert eth0 != eth1


def _many_requests(rounds: int, eth1: int, br0: int) -> tuple[int, list[Any]]:
    seen: list[Any] = []
    with rtnl.Rtnl() as rt:
        for _ in range(rounds):
            seen.append(len(rt.links()))
            seen.append(len(rt.qdiscs(eth1)))
            seen.append(rt.link(eth1).type)
            with pytest.raises(nl.NetlinkError):
                rt.route_get(ip_address("198.51.100.1"))
        dump = rt.request_iter(rtnl.RTM_GETLINK, rtnl.IFINFOMSG.pack(0, 0, 0, 0, 0),
                               "link dump", "dump")
        next(dump)
        dump.close()                     # abandoned after one answer: read to its end
        seen.append(rt.link(eth1).type)  # and the socket still answers in step
        return rt.queued(), seen


@needs_root
def test_requests_leave_no_unread_replies_behind(net: Net) -> None:
    queued, seen = run_in_netns(net.router, _many_requests, 50, net.ifindex("eth1"),
                                net.ifindex("br0"))
    assert queued == 0
    assert seen[0] > 3 and seen[-1] == rtnl.RTM_NEWLINK


def _tc_and_xdp(obj: str, pin_dir: str, eth1: int, lan0: int) -> dict[str, Any]:
    with Loader(obj, pin_dir=pin_dir) as loader:
        loader.load()
        try:
            loader.attach("eth1", "tc")
            loader.attach("lan0", "xdp-generic")
            out: dict[str, Any] = {}
            with rtnl.Rtnl() as rt:
                out["qdiscs"] = rt.qdiscs(eth1)
                raw = rt.request(rtnl.RTM_GETQDISC, rtnl.TCMSG.pack(0, eth1, 0, 0, 0), "q",
                                 "dump")
                out["qdiscs_ref"] = [tc_kind_ref(whole(m))[1:] for m in raw
                                     if tc_kind_ref(whole(m))[0] == eth1]
                out["filters"] = rt.filters(eth1, TC_PARENT_INGRESS)
                raw = rt.request(rtnl.RTM_GETTFILTER,
                                 rtnl.TCMSG.pack(0, eth1, 0, TC_PARENT_INGRESS, 0), "f",
                                 "dump")
                out["filters_ref"] = [tc_kind_ref(whole(m)) for m in raw]
                out["bpf_name_ref"] = [bpf_name_ref(whole(m)) for m in raw if
                                       tc_kind_ref(whole(m))[1]]
                out["xdp_ref"] = xdp_ids_ref(whole(rt.link(lan0)))
            out["xdp"] = rtnl.xdp_prog_ids(lan0)
            out["xdp_none"] = rtnl.xdp_prog_ids(eth1)
            out["kinds"] = rtnl.qdisc_kinds(eth1)
            out["tc_eth1"] = rtnl.tc_filters(eth1, (TC_PARENT_INGRESS, TC_PARENT_EGRESS))
            out["tc_lan0"] = rtnl.tc_filters(lan0, (TC_PARENT_INGRESS, TC_PARENT_EGRESS))
            out["ip"] = json.loads(sh("ip", "-j", "-d", "link", "show", "lan0"))[0]["xdp"]
            out["tc"] = json.loads(sh("tc", "-j", "filter", "show", "dev", "eth1", "ingress"))
            return out
        finally:
            loader.detach_all()
            loader.unpin()


@needs_root
@pytest.mark.skipif(not os.path.exists(OBJ), reason=f"{OBJ} missing: run `make bpf` first")
def test_qdiscs_tc_filters_and_xdp_ids_as_tc_ip_and_pyroute2_see_them(net: Net,
                                                                     pin_dir: str) -> None:
    sh("tc", "-n", net.router, "qdisc", "add", "dev", "eth1", "root", "handle", "1:", "htb")
    eth1, lan0 = net.ifindex("eth1"), net.ifindex("lan0")
    out = run_in_netns(net.router, _tc_and_xdp, OBJ, pin_dir, eth1, lan0)
    assert sorted(k for *_, k in out["qdiscs"]) == ["clsact", "htb"]
    assert out["qdiscs"] == out["qdiscs_ref"]
    assert out["kinds"] == {"clsact", "htb"}
    assert [(f.kind, f.handle) for f in out["filters"]] == [("bpf", 0xEB)]
    ref = [r for r in out["filters_ref"] if r[1]]
    assert [(r[0], r[1], r[3]) for r in ref] == [(eth1, 0xEB, "bpf")]
    assert out["filters"][0].priority == 0xEB00 and out["filters"][0].protocol == 0x0003
    name = nl.get_str(nl.attrs(out["filters"][0].options).get(7))     # TCA_BPF_NAME
    assert [name] == out["bpf_name_ref"] and name.startswith("ebpfw_tc")
    # both ingress and the egress proof on eth1, the egress proof only on lan0 (XDP ingress)
    assert len(out["tc_eth1"]) == 2
    assert [nl.get_str(nl.attrs(f.options).get(7)).split(":")[0] for f in out["tc_lan0"]] == \
        ["ebpfw_egress"]
    assert out["xdp"] == out["xdp_ref"] == {"generic": out["ip"]["prog"]["id"]}
    assert out["xdp_none"] == {}
    assert any(f.get("options", {}).get("handle") == "0xeb" for f in out["tc"])


def _rules() -> list[Any]:
    with rtnl.Rtnl() as rt:
        return [(rt.rules(f), rules_ref(rt, f)) for f in (socket.AF_INET, socket.AF_INET6)]


@needs_root
def test_rule_dump_decodes_as_pyroute2_and_ip_rule(net: Net) -> None:
    net.r("rule", "add", "fwmark", "0x10/0xff", "table", "100", "pref", "1000")
    net.r("-6", "rule", "add", "fwmark", "0x20", "table", "100", "pref", "1001")
    (v4, v4_ref), (v6, v6_ref) = run_in_netns(net.router, _rules)
    assert v4 == v4_ref and v6 == v6_ref
    assert [(r.priority, r.fwmark, r.fwmask) for r in v4 if r.fwmark] == [(1000, 0x10, 0xff)]
    assert [(r.priority, r.fwmark, r.fwmask) for r in v6 if r.fwmark] == \
        [(1001, 0x20, 0xFFFFFFFF)]
    shown = json.loads(net.r("-j", "rule", "show"))
    assert sorted(r.priority for r in v4) == sorted(r["priority"] for r in shown)


def _collect_events(changes: list[list[str]], want: Callable[[list[RtEvent]], bool]
                    ) -> list[tuple[Any, Any]]:
    with nl.Socket(nl.NETLINK_ROUTE, "test", GROUPS, blocking=False) as sock:
        for cmd in changes:
            sh(*cmd)
        pairs: list[tuple[Any, Any]] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not want([p[0] for p in pairs if p[0]]):
            select.select([sock], [], [], 0.2)
            for m in sock.recv() or ():
                pairs.append((event_from_msg(m), event_ref(m.type, whole(m))))
        return pairs


@needs_root
def test_every_event_kind_decodes_as_pyroute2_does(net: Net) -> None:
    changes = [
        ["ip", "link", "set", "eth1", "mtu", "1400"],
        ["ip", "addr", "add", "10.9.9.1/24", "dev", "eth1"],
        ["ip", "addr", "add", "fd00:9::1/64", "dev", "eth1", "nodad"],
        ["ip", "route", "add", "198.51.100.0/24", "via", "10.0.1.2"],
        ["ip", "-6", "route", "add", "2001:db8:1::/64", "via", "fd00:a::2"],
        ["ip", "neigh", "replace", "10.0.1.7", "lladdr", "02:00:00:00:00:07", "dev", "eth1"],
        ["ip", "-6", "neigh", "replace", "fd00:a::7", "lladdr", "02:00:00:00:00:08", "dev",
         "eth1"],
        ["bridge", "fdb", "add", "02:00:00:00:00:99", "dev", "eth0", "master", "static"],
        ["ip", "rule", "add", "fwmark", "7", "table", "7"],
        ["ip", "-6", "rule", "add", "fwmark", "7", "table", "7"],
        ["ip", "rule", "del", "fwmark", "7", "table", "7"],
        ["bridge", "fdb", "del", "02:00:00:00:00:99", "dev", "eth0", "master", "static"],
        ["ip", "neigh", "del", "10.0.1.7", "dev", "eth1"],
        ["ip", "route", "del", "198.51.100.0/24"],
        ["ip", "addr", "del", "10.9.9.1/24", "dev", "eth1"],
        ["ip", "link", "set", "eth1", "down"],
    ]
    kinds = {(k, a) for k in ("link", "addr", "route", "neigh", "fdb") for a in ("new", "del")}
    kinds.discard(("link", "del"))

    def complete(events: list[RtEvent]) -> bool:
        return kinds <= {(e.kind, e.action) for e in events} and any(
            e.kind == "link" and e.up is False for e in events)

    pairs = run_in_netns(net.router, _collect_events, changes, complete)
    events = [ours for ours, _ in pairs if ours]
    assert complete(events), {(e.kind, e.action) for e in events}
    for ours, ref in pairs:
        assert ours == ref
    eth1 = net.ifindex("eth1")
    A = ip_address
    assert RtEvent("neigh", "new", eth1, A("10.0.1.7"), bytes.fromhex("020000000007")) in events
    assert RtEvent("route", "new", eth1, A("198.51.100.0")) in events
    assert RtEvent("addr", "new", eth1, A("fd00:9::1")) in events
    assert RtEvent("route", "new", 0) in events                       # the rule
    assert any(e.kind == "fdb" and e.lladdr == bytes.fromhex("020000000099") for e in events)


# ------------------------------------------------------------------------ nftables events

needs_nft = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"),
                               reason="needs root (network namespaces) and the nft tool")
RULESET = """
table inet ebpfw_t {
    chain forward_t {
        type filter hook forward priority filter; policy accept;
        udp dport 6000 counter drop
    }
}
"""


def _wait_gen(ev: NftEvents, after: int) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        select.select([ev], [], [], 0.5)
        gen = ev.read()
        if gen is not None and gen > after:
            return gen
    raise AssertionError(f"no ruleset generation after {after}")


def _nft_changes(iptables: str | None) -> dict[str, Any]:
    def nft(*args: str, script: str | None = None) -> None:
        subprocess.run(["nft", *args], input=script, text=True, check=True,
                       capture_output=True)

    out: dict[str, Any] = {}
    with NftEvents() as ev:
        gen0 = nftevents.generation()
        assert ev.read() is None                       # nothing committed yet
        nft("list", "ruleset")
        out["list"] = ev.read()                        # reading the ruleset is no change
        nft("-f", "-", script=RULESET)                 # a batch: table, chain, rule
        out["batch"] = _wait_gen(ev, gen0) - gen0
        gen1 = nftevents.generation()
        nft("insert", "rule", "inet", "ebpfw_t", "forward_t", "tcp", "dport", "22", "accept")
        out["rule"] = _wait_gen(ev, gen1) - gen1
        gen2 = nftevents.generation()
        nft("flush", "ruleset")
        out["flush"] = _wait_gen(ev, gen2) - gen2
        if iptables:
            gen3 = nftevents.generation()
            subprocess.run([iptables, "-A", "FORWARD", "-p", "udp", "--dport", "6000",
                            "-j", "DROP"], check=True, capture_output=True)
            out["iptables"] = _wait_gen(ev, gen3) > gen3
            out["iptables_now"] = nftevents.generation() > gen3
        out["left"] = ev.read()
    return out


@needs_nft
def test_nft_changes_are_one_generation_per_transaction(net: Net) -> None:
    out = run_in_netns(net.router, _nft_changes, None)
    assert out["list"] is None
    assert out["batch"] == out["rule"] == out["flush"] == 1
    assert out["left"] is None


@needs_nft
@pytest.mark.skipif(not shutil.which("iptables-nft"), reason="iptables-nft is not installed "
                    "(Debian package iptables, in the Makefile's APT_PKGS)")
def test_iptables_nft_rule_is_a_ruleset_change(net: Net) -> None:
    out = run_in_netns(net.router, _nft_changes, shutil.which("iptables-nft"))
    assert out["iptables"] and out["iptables_now"] and out["left"] is None


def _overrun() -> tuple[int | None, int]:
    rules = "\n".join(f"add rule inet ebpfw_t forward_t udp dport {p} counter drop"
                      for p in range(1000, 1400))
    with NftEvents(rcvbuf=4096) as ev:
        subprocess.run(["nft", "-f", "-"], input=RULESET + rules, text=True, check=True,
                       capture_output=True)
        try:
            ev._sock.recv()   # the overrun is reported once, by the first receive
        except nl.EventsLost:
            return -1, nftevents.generation()
        return ev.read(), nftevents.generation()


def _overrun_read() -> tuple[int | None, int, int | None]:
    rules = "\n".join(f"add rule inet ebpfw_t forward_t udp dport {p} counter drop"
                      for p in range(1000, 1400))
    with NftEvents(rcvbuf=4096) as ev:
        subprocess.run(["nft", "-f", "-"], input=RULESET + rules, text=True, check=True,
                       capture_output=True)
        return ev.read(), nftevents.generation(), ev.read()


@needs_nft
def test_nft_event_overrun_is_still_a_change_with_the_current_generation(net: Net) -> None:
    seen, now, after = run_in_netns(net.router, _overrun_read)
    assert seen == now and after is None
    # and the overrun did happen: 400 rule notifications do not fit 4 KiB
    assert run_in_netns(net.router, _overrun)[0] == -1


def test_the_daemon_and_cli_never_import_pyroute2() -> None:
    code = ("import sys, fw_ebpf.cli, fw_ebpf.daemon, fw_ebpf.nftevents; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyroute2'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ, PYTHONPATH=str(Path(OBJ).parents[1]
                                                                        / "src")))
    assert out.stdout.strip() == "[]"
