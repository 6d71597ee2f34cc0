# SPDX-License-Identifier: GPL-2.0-only
"""fw_ebpf.links against the real kernel in throwaway namespaces (L3 input, egress
capabilities, route lookups for fw4's policy, events), plus the walk up to the L3 input on
synthetic link tables (this kernel has no 8021q or VLAN-filtering bridges).

Topology (router namespace R, per test):

    client C            router R                                server S
    lan0 ---- eth0 [br-lan 192.168.1.1]                          lo 203.0.113.10
                        eth1 10.0.1.1  --------------  wan0 10.0.1.2
                        eth2 10.0.2.1  --------------  wan1 10.0.2.2
    R: 203.0.113.0/24 via 10.0.1.2 (eth1); the same for IPv6.
"""
from __future__ import annotations

import itertools
import json
import os
import select
import socket
import time
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, Callable, Iterator

import pytest
from pyroute2.netlink.rtnl import RTM_NEWLINK, RTM_NEWNEIGH, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from fw_ebpf.links import (AF_BRIDGE, BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED,
                           ETH_P_8021AD, EventsLost, Link, Links, NoL3Input, RtEvent, RtEvents,
                           bridge_vlans_from_msg, event_from_msg, find_l3_input, link_from_msg)

from fw_ebpf.netlink import Message, parse
from netns import netns, run_in_netns, sh

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root to create network namespaces")

_seq = itertools.count()

# (family, client, router LAN address, server, WAN gateway eth1, WAN gateway eth2, router eth1)
V4 = ("4", "192.168.1.10", "192.168.1.1", "203.0.113.10", "10.0.1.2", "10.0.2.2", "10.0.1.1")
V6 = ("6", "fd00:1::10", "fd00:1::1", "2001:db8:cafe::10", "fd00:a::2", "fd00:b::2", "fd00:a::1")


@dataclass(frozen=True)
class Net:
    router: str
    client: str
    server: str

    def ifindex(self, name: str, ns: str | None = None) -> int:
        return int(self.link(name, ns)["ifindex"])

    def mac(self, name: str, ns: str | None = None) -> bytes:
        return bytes.fromhex(self.link(name, ns)["address"].replace(":", ""))

    def link(self, name: str, ns: str | None = None) -> dict[str, Any]:
        return json.loads(sh("ip", "-n", ns or self.router, "-j", "link", "show", name))[0]

    def r(self, *args: str) -> str:
        return sh("ip", "-n", self.router, *args)


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


@pytest.fixture
def net() -> Iterator[Net]:
    suffix = f"{os.getpid()}-{next(_seq)}"
    with netns(f"nh-r-{suffix}") as r, netns(f"nh-c-{suffix}") as c, \
            netns(f"nh-s-{suffix}") as s:
        n = Net(r, c, s)
        for args in (["eth0", "lan0", c], ["eth1", "wan0", s], ["eth2", "wan1", s]):
            n.r("link", "add", args[0], "type", "veth", "peer", "name", args[1], "netns", args[2])
        for ns, k, v in ((r, "net.ipv4.ip_forward", "1"),
                         (r, "net.ipv6.conf.all.forwarding", "1"),
                         (r, "net.ipv6.conf.default.accept_dad", "0"),
                         (c, "net.ipv6.conf.default.accept_dad", "0"),
                         (s, "net.ipv6.conf.default.accept_dad", "0")):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"{k}={v}")
        n.r("link", "add", "br-lan", "type", "bridge", "stp_state", "0")
        n.r("link", "set", "eth0", "master", "br-lan")
        for dev in ("br-lan", "eth0", "eth1", "eth2"):
            n.r("link", "set", dev, "up")
        for ns, dev, addrs in (
                (r, "br-lan", ["192.168.1.1/24", "fd00:1::1/64"]),
                (r, "eth1", ["10.0.1.1/24", "fd00:a::1/64"]),
                (r, "eth2", ["10.0.2.1/24", "fd00:b::1/64"]),
                (c, "lan0", ["192.168.1.10/24", "fd00:1::10/64"]),
                (s, "wan0", ["10.0.1.2/24", "fd00:a::2/64"]),
                (s, "wan1", ["10.0.2.2/24", "fd00:b::2/64"]),
                (s, "lo", ["203.0.113.10/32", "2001:db8:cafe::10/128"])):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            for a in addrs:
                sh("ip", "-n", ns, "addr", "add", a, "dev", dev, "nodad")
        n.r("route", "add", "203.0.113.0/24", "via", "10.0.1.2")
        n.r("-6", "route", "add", "2001:db8:cafe::/64", "via", "fd00:a::2")
        # Static neighbours and FDB: deterministic, independent of ARP/ND timing.
        for addr, dev, ns, peer in (
                ("10.0.1.2", "eth1", s, "wan0"), ("fd00:a::2", "eth1", s, "wan0"),
                ("10.0.2.2", "eth2", s, "wan1"), ("fd00:b::2", "eth2", s, "wan1"),
                ("192.168.1.10", "br-lan", c, "lan0"), ("fd00:1::10", "br-lan", c, "lan0")):
            n.r("neigh", "replace", addr, "lladdr", _mac(n.mac(peer, ns)), "dev", dev,
                "nud", "permanent")
        sh("bridge", "-n", r, "fdb", "replace", _mac(n.mac("lan0", c)), "dev", "eth0",
           "master", "static")
        yield n


@pytest.fixture(params=[V4, V6], ids=["ipv4", "ipv6"])
def fam(request: pytest.FixtureRequest) -> tuple[str, ...]:
    return request.param


# --------------------------------------------------------------------------- helpers run in R

def _l3_input(ifindex: int) -> int:
    with Links() as links:
        return links.l3_input(ifindex)


def _wait_events(ev: RtEvents, want: Callable[[RtEvent], bool],
                 timeout: float = 5.0) -> list[RtEvent]:
    seen: list[RtEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        select.select([ev], [], [], 0.2)
        seen += ev.read()
        if any(want(e) for e in seen):
            return seen
    raise AssertionError(f"no matching event in {seen}")


def _events_of(cmd: list[str], want: Callable[[RtEvent], bool]) -> list[RtEvent]:
    """Apply cmd in this namespace and collect its events (as the daemon would)."""
    with RtEvents() as ev:
        assert ev.read() == []  # non-blocking when idle
        sh(*cmd)
        return _wait_events(ev, want)


# --------------------------------------------------------------------------- real kernel

@needs_root
def test_bridge_port_input_is_routed_from_the_bridge(net: Net) -> None:
    assert run_in_netns(net.router, _l3_input, net.ifindex("eth0")) == net.ifindex("br-lan")
    assert run_in_netns(net.router, _l3_input, net.ifindex("eth1")) == net.ifindex("eth1")


def _fdb_event(mac: str) -> list[RtEvent]:
    with RtEvents() as ev:
        sh("bridge", "fdb", "add", mac, "dev", "eth0", "master", "static")
        return _wait_events(ev, lambda e: e.kind == "fdb")


@needs_root
def test_fdb_changes_are_reported(net: Net) -> None:
    events = run_in_netns(net.router, _fdb_event, "02:00:00:00:00:99")
    ev = next(e for e in events if e.kind == "fdb")
    assert ev.ifindex == net.ifindex("eth0") and ev.lladdr == bytes.fromhex("020000000099")


def _overflow() -> str:
    with RtEvents(rcvbuf=4096) as ev:
        for i in range(200):
            sh("ip", "route", "add", f"198.51.{i // 250}.{i % 250}/32", "dev", "eth2")
        try:
            for _ in range(100):
                ev.read()
        except EventsLost as e:
            return str(e)
    return "no overflow"


@needs_root
def test_receive_overrun_raises_events_lost(net: Net) -> None:
    assert "revalidating" in run_in_netns(net.router, _overflow)


# --------------------------------------------------------------------------- synthetic tables

ETH0, ETH1, BR, VLAN7, VLAN8, PORT2, BRV, PPP, GRE = 2, 3, 4, 5, 6, 7, 8, 9, 10
MAC = bytes.fromhex("020000000001")


def _table(*links: Link) -> dict[int, Link]:
    return {lk.index: lk for lk in links}


def _vlan_bridge() -> dict[int, Link]:
    # VLAN-aware br: PVID 1 untagged everywhere; VLAN 7 tagged on lan1 (ETH0), untagged on
    # lan2 (PORT2); br itself is member of 1 (untagged) and 7 (tagged, routed via br.7).
    untagged_pvid = BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED
    return _table(
        Link(BRV, "br", kind="bridge", vlan_filtering=True,
             bridge_vlans={1: untagged_pvid, 7: 0}),
        Link(ETH0, "lan1", master=BRV, bridge_vlans={1: untagged_pvid, 7: 0}),
        Link(PORT2, "lan2", master=BRV, bridge_vlans={7: untagged_pvid}),
        Link(VLAN7, "br.7", kind="vlan", parent=BRV, vlan_id=7))


def test_l3_input_follows_vlan_devices_and_bridges() -> None:
    t = _table(Link(ETH0, "eth0", master=BR), Link(BR, "br-lan", kind="bridge"),
               Link(ETH1, "eth1"),
               Link(VLAN7, "eth1.7", kind="vlan", parent=ETH1, vlan_id=7),
               Link(VLAN8, "eth1.7.8", kind="vlan", parent=VLAN7, vlan_id=8),
               Link(PORT2, "br-lan.9", kind="vlan", parent=BR, vlan_id=9))
    assert find_l3_input(t, ETH0) == BR
    assert find_l3_input(t, ETH1) == ETH1
    assert find_l3_input(t, ETH1, (7, 0)) == VLAN7
    assert find_l3_input(t, ETH1, (7, 8)) == VLAN8
    assert find_l3_input(t, ETH0, (9, 0)) == PORT2  # tag passes a plain bridge
    with pytest.raises(NoL3Input):
        find_l3_input(t, ETH1, (5, 0))


def test_l3_input_on_vlan_filtering_bridge() -> None:
    t = _vlan_bridge()
    assert find_l3_input(t, ETH0) == BRV            # untagged -> PVID 1, untagged on br
    assert find_l3_input(t, ETH0, (7, 0)) == VLAN7  # tagged 7 -> br.7
    assert find_l3_input(t, PORT2) == VLAN7         # PVID 7 on lan2 -> br.7
    with pytest.raises(NoL3Input):
        find_l3_input(t, ETH0, (5, 0))              # VLAN 5 not admitted


def _roundtrip(cls: Any, fields: dict[str, Any], attrs: list[Any], msg_type: int) -> Message:
    """A message encoded by pyroute2, as our parser sees it."""
    msg = cls()
    for k, v in fields.items():
        msg[k] = v
    msg["attrs"] = attrs
    msg["header"]["type"] = msg_type
    msg.encode()
    (out,) = parse(bytes(msg.data))
    return out


def test_link_parser_reads_vlan_bridge_and_port_vlans() -> None:
    vlan = _roundtrip(ifinfmsg, {"index": 9, "flags": 1, "ifi_type": 1}, [
        ("IFLA_IFNAME", "wan.7"), ("IFLA_ADDRESS", "02:00:00:00:00:07"), ("IFLA_MTU", 1496),
        ("IFLA_OPERSTATE", "UP"), ("IFLA_LINK", 3),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "vlan"), ("IFLA_INFO_DATA", {"attrs": [
            ("IFLA_VLAN_ID", 7), ("IFLA_VLAN_PROTOCOL", ETH_P_8021AD)]})]})], RTM_NEWLINK)
    lk = link_from_msg(vlan)
    assert (lk.kind, lk.parent, lk.vlan_id, lk.vlan_proto, lk.mtu, lk.up) == \
        ("vlan", 3, 7, ETH_P_8021AD, 1496, True)
    assert lk.mac == bytes.fromhex("020000000007")
    br = _roundtrip(ifinfmsg, {"index": 4, "flags": 1, "ifi_type": 1}, [
        ("IFLA_IFNAME", "br"), ("IFLA_OPERSTATE", "DOWN"),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge"), ("IFLA_INFO_DATA", {
            "attrs": [("IFLA_BR_VLAN_FILTERING", 1),
                      ("IFLA_BR_VLAN_PROTOCOL", ETH_P_8021AD)]})]})], RTM_NEWLINK)
    lk = link_from_msg(br)
    assert lk.vlan_filtering and lk.bridge_vlan_proto == ETH_P_8021AD and not lk.up
    port = _roundtrip(ifinfmsg, {"index": 5, "flags": 1, "ifi_type": 1, "family": AF_BRIDGE}, [
        ("IFLA_IFNAME", "lan1"), ("IFLA_MASTER", 4),
        ("IFLA_AF_SPEC", {"attrs": [("IFLA_BRIDGE_VLAN_INFO", {"flags": 6, "vid": 1}),
                                    ("IFLA_BRIDGE_VLAN_INFO", {"flags": 0, "vid": 7})]})],
        RTM_NEWLINK)
    assert bridge_vlans_from_msg(port) == {1: 6, 7: 0}


def test_event_parser_distinguishes_fdb_from_neighbours() -> None:
    fdb = _roundtrip(ndmsg, {"family": AF_BRIDGE, "ifindex": 5, "state": 0x80}, [
        ("NDA_LLADDR", "02:00:00:00:00:05"), ("NDA_MASTER", 4)], RTM_NEWNEIGH)
    assert event_from_msg(fdb) == RtEvent("fdb", "new", 5, None, bytes.fromhex("020000000005"))
    nb = _roundtrip(ndmsg, {"family": socket.AF_INET6, "ifindex": 3, "state": 0x20}, [
        ("NDA_DST", "fd00::1")], RTM_NEWNEIGH)
    assert event_from_msg(nb) == RtEvent("neigh", "new", 3, ip_address("fd00::1"), None)
    rt = _roundtrip(rtmsg, {"family": socket.AF_INET, "dst_len": 24}, [
        ("RTA_DST", "10.1.2.0"), ("RTA_OIF", 7)], RTM_NEWROUTE)
    assert event_from_msg(rt) == RtEvent("route", "new", 7, ip_address("10.1.2.0"))




# --------------------------------------------------------------------------- egress capabilities

def _capabilities(eth1: int, eth2: int, lo_route: str) -> dict[str, Any]:
    with Links() as links:
        out = {"mtu": links.mtu(eth1), "shaped": (links.shaped(eth1), links.shaped(eth2)),
               "xdp": (links.takes_xdp(eth1, False), links.takes_xdp(eth2, False)),
               "local": (links.is_local(ip_address("192.168.1.1")),
                         links.is_local(ip_address(lo_route))),
               "out": links.out_device(ip_address(lo_route))}
        for _ in range(100):   # every request kind, found and not found, many times
            links.l3_input(eth1)
            links.is_local(ip_address("100.64.0.1"))
            links.out_device(ip_address("100.64.0.1"))
            links.invalidate()
            links.shaped(eth1)
            links.takes_xdp(eth1, False)
        out["unread"] = links.pending_messages()
        return out


@needs_root
def test_egress_capabilities_are_read_from_the_kernel(net: Net) -> None:
    """MTU, a shaping qdisc (XDP would skip it), whether the driver takes XDP frames (a veth
    does when its peer runs NAPI: GRO on), and route lookups; nothing left unread."""
    net.r("link", "set", "eth1", "mtu", "1400")
    sh("tc", "-n", net.router, "qdisc", "add", "dev", "eth2", "root", "tbf", "rate", "10mbit",
       "burst", "32k", "latency", "50ms")
    sh("ip", "netns", "exec", net.server, "ethtool", "-K", "wan0", "gro", "on")
    sh("ip", "netns", "exec", net.server, "ethtool", "-K", "wan1", "gro", "off")
    out = run_in_netns(net.router, _capabilities, net.ifindex("eth1"), net.ifindex("eth2"),
                       "203.0.113.10")
    assert out["mtu"] == 1400
    assert out["shaped"] == (False, True)
    assert out["xdp"] == (True, False)
    assert out["local"] == (True, False) and out["out"] == "eth1"
    assert out["unread"] == 0


@needs_root
@pytest.mark.parametrize("what", ["route", "neighbour", "link down"])
def test_changes_are_reported_as_events(net: Net, what: str) -> None:
    cmd, want = {
        "route": (["ip", "route", "replace", "203.0.113.0/24", "via", "10.0.2.2", "dev", "eth2"],
                  lambda e: e.kind == "route" and e.ifindex == net.ifindex("eth2")),
        "neighbour": (["ip", "neigh", "replace", "10.0.1.2", "lladdr", "02:11:22:33:44:55",
                       "dev", "eth1", "nud", "permanent"],
                      lambda e: e.kind == "neigh" and e.address == ip_address("10.0.1.2")),
        "link down": (["ip", "link", "set", "eth1", "down"],
                      lambda e: e.kind == "link" and e.ifindex == net.ifindex("eth1")
                      and e.up is False),
    }[what]
    events = run_in_netns(net.router, _events_of, cmd, want)
    ev = next(e for e in events if want(e))
    if what == "neighbour":
        assert ev.lladdr == bytes.fromhex("021122334455")
    if what == "link down":
        assert ev.link is not None and ev.link.name == "eth1" and not ev.link.up
