# SPDX-License-Identifier: GPL-2.0-only
"""fw_ebpf.nexthop against the real kernel in throwaway namespaces, plus the VLAN/bridge walk on
synthetic link tables (this kernel has no 8021q, VLAN-filtering bridges or PPP).

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

from fw_ebpf.nexthop import (AF_BRIDGE, BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED,
                             ETH_P_8021AD, ETH_P_8021Q, EventsLost, Link, NextHop,
                             NextHopResolver, RtEvent, RtEvents, Unresolved,
                             bridge_vlans_from_msg, event_from_msg, find_l3_input,
                             link_from_msg, walk_down)

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

def _resolve(*args: Any, **kw: Any) -> NextHop | Unresolved:
    with NextHopResolver() as res:
        try:
            return res.resolve(*args, **kw)
        except Unresolved as e:
            return e


def _l3_input(ifindex: int) -> int:
    with NextHopResolver() as res:
        return res.l3_input(ifindex)


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


def _change_and_resolve(cmd: list[str], want: Callable[[RtEvent], bool],
                        args: tuple[Any, ...]) -> tuple[NextHop | Unresolved,
                                                        NextHop | Unresolved, list[RtEvent]]:
    """Resolve, apply cmd in this namespace, collect the event, resolve again (as the daemon)."""
    with NextHopResolver() as res, RtEvents() as ev:
        def once() -> NextHop | Unresolved:
            try:
                return res.resolve(*args)
            except Unresolved as e:
                return e
        before = once()
        assert ev.read() == []  # non-blocking when idle
        sh(*cmd)
        events = _wait_events(ev, want)
        if any(e.kind == "link" for e in events):
            res.invalidate()
        return before, once(), events


# --------------------------------------------------------------------------- real kernel

@needs_root
def test_bridge_port_input_is_routed_from_the_bridge(net: Net) -> None:
    assert run_in_netns(net.router, _l3_input, net.ifindex("eth0")) == net.ifindex("br-lan")
    assert run_in_netns(net.router, _l3_input, net.ifindex("eth1")) == net.ifindex("eth1")


@needs_root
def test_lan_to_wan_goes_to_gateway_on_wan_port(net: Net, fam: tuple[str, ...]) -> None:
    _, client, _, server, gw1, _, _ = fam
    nh = run_in_netns(net.router, _resolve, server, client, net.ifindex("eth0"))
    assert isinstance(nh, NextHop), nh
    assert nh.oif == nh.l3_oif == net.ifindex("eth1")
    assert nh.gateway == nh.neigh == ip_address(gw1)
    assert nh.dmac == net.mac("wan0", net.server)
    assert nh.smac == net.mac("eth1")
    assert nh.mtu == 1500 and nh.vlans == () and nh.vlan_tpid == 0
    assert nh.family == (socket.AF_INET if fam is V4 else socket.AF_INET6)


@needs_root
def test_l4_keys_and_mark_are_accepted_by_route_lookup(net: Net) -> None:
    nh = run_in_netns(net.router, _resolve, "203.0.113.10", "192.168.1.10",
                      net.ifindex("eth0"), 0x10, socket.IPPROTO_TCP, 40000, 443)
    assert isinstance(nh, NextHop) and nh.oif == net.ifindex("eth1"), nh


@needs_root
def test_wan_to_lan_goes_to_bridge_port_holding_client_mac(net: Net, fam: tuple[str, ...]) -> None:
    _, client, _, server, _, _, _ = fam
    nh = run_in_netns(net.router, _resolve, client, server, net.ifindex("eth1"))
    assert isinstance(nh, NextHop), nh
    assert nh.l3_oif == net.ifindex("br-lan")
    assert nh.oif == net.ifindex("eth0")
    assert nh.gateway is None and nh.neigh == ip_address(client)
    assert nh.dmac == net.mac("lan0", net.client)
    assert nh.smac == net.mac("br-lan")


@needs_root
def test_mtu_follows_device_and_route_metric(net: Net) -> None:
    eth1 = net.ifindex("eth1")
    before, after, events = run_in_netns(
        net.router, _change_and_resolve, ["ip", "link", "set", "eth1", "mtu", "1400"],
        lambda e: e.kind == "link" and e.ifindex == eth1,
        ("203.0.113.10", "192.168.1.10", net.ifindex("eth0")))
    assert isinstance(before, NextHop) and before.mtu == 1500
    assert isinstance(after, NextHop) and after.mtu == 1400
    net.r("route", "replace", "203.0.113.0/24", "via", "10.0.1.2", "mtu", "1280")
    nh = run_in_netns(net.router, _resolve, "203.0.113.10", "192.168.1.10", net.ifindex("eth0"))
    assert isinstance(nh, NextHop) and nh.mtu == 1280


@needs_root
def test_route_change_moves_flow_and_emits_route_event(net: Net, fam: tuple[str, ...]) -> None:
    v, client, _, server, _, gw2, _ = fam
    prefix = "203.0.113.0/24" if v == "4" else "2001:db8:cafe::/64"
    before, after, events = run_in_netns(
        net.router, _change_and_resolve,
        ["ip", f"-{v}", "route", "replace", prefix, "via", gw2, "dev", "eth2"],
        lambda e: e.kind == "route" and e.action == "new" and e.ifindex == net.ifindex("eth2"),
        (server, client, net.ifindex("eth0")))
    assert isinstance(before, NextHop) and before.oif == net.ifindex("eth1")
    assert isinstance(after, NextHop), after
    assert after.oif == after.l3_oif == net.ifindex("eth2")
    assert after.gateway == ip_address(gw2)
    assert after.dmac == net.mac("wan1", net.server) and after.smac == net.mac("eth2")
    ev = next(e for e in events if e.kind == "route" and e.ifindex == net.ifindex("eth2"))
    assert ev.address == ip_address(prefix.split("/")[0])


@needs_root
def test_neighbour_change_updates_dmac_and_emits_neigh_event(net: Net,
                                                            fam: tuple[str, ...]) -> None:
    _, client, _, server, gw1, _, _ = fam
    new = "02:11:22:33:44:55"
    before, after, events = run_in_netns(
        net.router, _change_and_resolve,
        ["ip", "neigh", "replace", gw1, "lladdr", new, "dev", "eth1", "nud", "permanent"],
        lambda e: e.kind == "neigh" and e.address == ip_address(gw1),
        (server, client, net.ifindex("eth0")))
    assert isinstance(before, NextHop) and before.dmac == net.mac("wan0", net.server)
    assert isinstance(after, NextHop) and after.dmac == bytes.fromhex(new.replace(":", ""))
    ev = next(e for e in events if e.kind == "neigh" and e.address == ip_address(gw1))
    assert ev.ifindex == net.ifindex("eth1") and ev.lladdr == after.dmac


@needs_root
def test_link_down_emits_link_event_and_unresolves(net: Net) -> None:
    eth1 = net.ifindex("eth1")
    before, after, events = run_in_netns(
        net.router, _change_and_resolve, ["ip", "link", "set", "eth1", "down"],
        lambda e: e.kind == "link" and e.ifindex == eth1 and e.up is False,
        ("203.0.113.10", "192.168.1.10", net.ifindex("eth0")))
    assert isinstance(before, NextHop)
    assert isinstance(after, Unresolved) and after.wait_for == "route", after


@needs_root
def test_carrier_loss_unresolves_although_route_stays(net: Net) -> None:
    # Peer down: eth1 keeps its routes (linkdown) but has no carrier.
    sh("ip", "-n", net.server, "link", "set", "wan0", "down")
    res = run_in_netns(net.router, _resolve, "203.0.113.10", "192.168.1.10", net.ifindex("eth0"))
    assert isinstance(res, Unresolved) and "eth1" in res.reason, res


@needs_root
def test_missing_neighbour_waits_for_neigh(net: Net, fam: tuple[str, ...]) -> None:
    _, client, _, server, gw1, _, _ = fam
    net.r("neigh", "del", gw1, "dev", "eth1")
    res = run_in_netns(net.router, _resolve, server, client, net.ifindex("eth0"))
    assert isinstance(res, Unresolved) and res.wait_for == "neigh", res
    net.r("neigh", "replace", gw1, "dev", "eth1", "nud", "incomplete")
    res = run_in_netns(net.router, _resolve, server, client, net.ifindex("eth0"))
    assert isinstance(res, Unresolved) and res.wait_for == "neigh", res


@needs_root
def test_missing_fdb_entry_waits_for_fdb(net: Net) -> None:
    net.r("neigh", "replace", "192.168.1.20", "lladdr", "02:00:00:00:00:20", "dev", "br-lan",
          "nud", "permanent")
    res = run_in_netns(net.router, _resolve, "192.168.1.20", "203.0.113.10", net.ifindex("eth1"))
    assert isinstance(res, Unresolved) and res.wait_for == "fdb", res


@needs_root
def test_router_own_address_is_not_forwarded(net: Net, fam: tuple[str, ...]) -> None:
    _, client, router, _, _, _, eth1_addr = fam
    for dst in (router, eth1_addr):
        res = run_in_netns(net.router, _resolve, dst, client, net.ifindex("eth0"))
        assert isinstance(res, Unresolved) and res.wait_for == "route", res
        assert "local" in res.reason


@needs_root
def test_blackhole_and_unreachable_routes_are_not_forwarded(net: Net) -> None:
    net.r("route", "add", "blackhole", "198.51.100.0/24")
    net.r("route", "add", "unreachable", "198.18.0.0/15")
    for dst in ("198.51.100.1", "198.18.0.1", "100.64.0.1"):  # the last has no route at all
        res = run_in_netns(net.router, _resolve, dst, "192.168.1.10", net.ifindex("eth0"))
        assert isinstance(res, Unresolved) and res.wait_for == "route", res


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


def _fdb(entries: dict[tuple[int, int], int]) -> Callable[[int, bytes, int], int | None]:
    return lambda br, mac, vid: entries.get((br, vid))


NO_FDB = _fdb({})


def test_walk_plain_device_is_its_own_lowest() -> None:
    t = _table(Link(ETH1, "eth1"))
    assert walk_down(t, ETH1, MAC, NO_FDB) == (ETH1, (), 0)


def test_walk_vlan_device_pushes_its_tag_on_the_parent() -> None:
    t = _table(Link(ETH1, "eth1"), Link(VLAN7, "eth1.7", kind="vlan", parent=ETH1, vlan_id=7))
    assert walk_down(t, VLAN7, MAC, NO_FDB) == (ETH1, (7,), ETH_P_8021Q)


def test_walk_qinq_lists_outer_tag_first_with_its_tpid() -> None:
    t = _table(Link(ETH1, "eth1"),
               Link(VLAN7, "eth1.7", kind="vlan", parent=ETH1, vlan_id=7,
                    vlan_proto=ETH_P_8021AD),
               Link(VLAN8, "eth1.7.8", kind="vlan", parent=VLAN7, vlan_id=8))
    assert walk_down(t, VLAN8, MAC, NO_FDB) == (ETH1, (7, 8), ETH_P_8021AD)


def test_walk_refuses_three_tags_and_inner_8021ad() -> None:
    t = _table(Link(ETH1, "eth1"),
               Link(VLAN7, "v7", kind="vlan", parent=ETH1, vlan_id=7),
               Link(VLAN8, "v8", kind="vlan", parent=VLAN7, vlan_id=8,
                    vlan_proto=ETH_P_8021AD),
               Link(PORT2, "v9", kind="vlan", parent=VLAN8, vlan_id=9))
    with pytest.raises(Unresolved) as e:
        walk_down(t, PORT2, MAC, NO_FDB)
    assert e.value.wait_for == "unsupported" and "3 VLAN tags" in e.value.reason
    with pytest.raises(Unresolved) as e:
        walk_down(t, VLAN8, MAC, NO_FDB)
    assert e.value.wait_for == "unsupported" and "802.1Q" in e.value.reason


def test_walk_refuses_ppp_and_tunnels() -> None:
    t = _table(Link(PPP, "pppoe-wan", kind="ppp", arptype=512),
               Link(GRE, "gre4-x", kind="gretap"))
    for dev in (PPP, GRE):
        with pytest.raises(Unresolved) as e:
            walk_down(t, dev, MAC, NO_FDB)
        assert e.value.wait_for == "unsupported"


def test_walk_bridge_uses_fdb_port_and_keeps_tags_of_plain_bridge() -> None:
    t = _table(Link(ETH0, "eth0", master=BR), Link(PORT2, "lan2", master=BR),
               Link(BR, "br-lan", kind="bridge"),
               Link(VLAN7, "br-lan.7", kind="vlan", parent=BR, vlan_id=7))
    fdb = _fdb({(BR, 0): PORT2})
    assert walk_down(t, BR, MAC, fdb) == (PORT2, (), 0)
    assert walk_down(t, VLAN7, MAC, fdb) == (PORT2, (7,), ETH_P_8021Q)
    with pytest.raises(Unresolved) as e:
        walk_down(t, BR, MAC, NO_FDB)
    assert e.value.wait_for == "fdb"


def test_walk_bridge_port_that_is_a_vlan_device_tags_the_frame() -> None:
    # swconfig-era OpenWrt: br-lan has eth0.1 as port.
    t = _table(Link(ETH0, "eth0"), Link(BR, "br-lan", kind="bridge"),
               Link(VLAN7, "eth0.1", kind="vlan", parent=ETH0, vlan_id=1, master=BR))
    assert walk_down(t, BR, MAC, _fdb({(BR, 0): VLAN7})) == (ETH0, (1,), ETH_P_8021Q)


def test_walk_blocking_bridge_port_is_not_used() -> None:
    t = _table(Link(ETH0, "eth0", master=BR, port_state=0), Link(BR, "br-lan", kind="bridge"))
    with pytest.raises(Unresolved):
        walk_down(t, BR, MAC, _fdb({(BR, 0): ETH0}))


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


def test_walk_vlan_filtering_bridge_tags_per_port_egress_policy() -> None:
    t = _vlan_bridge()
    assert walk_down(t, VLAN7, MAC, _fdb({(BRV, 7): ETH0})) == (ETH0, (7,), ETH_P_8021Q)
    assert walk_down(t, VLAN7, MAC, _fdb({(BRV, 7): PORT2})) == (PORT2, (), 0)
    assert walk_down(t, BRV, MAC, _fdb({(BRV, 1): ETH0})) == (ETH0, (), 0)
    with pytest.raises(Unresolved) as e:  # VLAN 1 is not on lan2: the bridge would drop
        walk_down(t, BRV, MAC, _fdb({(BRV, 1): PORT2}))
    assert e.value.wait_for == "unsupported"


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
    with pytest.raises(Unresolved):
        find_l3_input(t, ETH1, (5, 0))


def test_l3_input_on_vlan_filtering_bridge() -> None:
    t = _vlan_bridge()
    assert find_l3_input(t, ETH0) == BRV            # untagged -> PVID 1, untagged on br
    assert find_l3_input(t, ETH0, (7, 0)) == VLAN7  # tagged 7 -> br.7
    assert find_l3_input(t, PORT2) == VLAN7         # PVID 7 on lan2 -> br.7
    with pytest.raises(Unresolved):
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


def _resolve_many(rounds: int, eth0: int, eth1: int) -> tuple[int, list[str]]:
    """Every lookup kind, found and not found, many times on one resolver."""
    outcomes = []
    with NextHopResolver() as res:
        for _ in range(rounds):
            for args in (("203.0.113.10", "192.168.1.10", eth0),       # route + neighbour
                         ("192.168.1.10", "203.0.113.10", eth1),       # + bridge FDB
                         ("192.168.1.20", "203.0.113.10", eth1),       # FDB miss
                         ("10.0.1.99", "192.168.1.10", eth0),          # neighbour miss
                         ("192.168.1.1", "192.168.1.10", eth0)):       # local: not forwarded
                try:
                    outcomes.append(type(res.resolve(*args)).__name__)
                except Unresolved as e:
                    outcomes.append(e.wait_for)
            res.is_local(ip_address("192.168.1.1"))
            res.out_device(ip_address("203.0.113.10"))
        return res.pending_messages(), sorted(set(outcomes))


@needs_root
def test_lookups_leave_no_unread_replies_behind(net: Net) -> None:
    net.r("neigh", "replace", "192.168.1.20", "lladdr", "02:00:00:00:00:20", "dev", "br-lan",
          "nud", "permanent")
    pending, outcomes = run_in_netns(net.router, _resolve_many, 200, net.ifindex("eth0"),
                                     net.ifindex("eth1"))
    assert outcomes == ["NextHop", "fdb", "neigh", "route"]
    assert pending == 0
