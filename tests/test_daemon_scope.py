# SPDX-License-Identifier: GPL-2.0-only
"""Which routing events make the daemon re-resolve which flows (the rest keep their entries)."""
from __future__ import annotations

import ipaddress

from fw_ebpf import maps
from fw_ebpf.daemon import Changes
from fw_ebpf.flows import FlowBook
from fw_ebpf.nexthop import NextHop, RtEvent

GW = ipaddress.ip_address("203.0.113.1")
MAC = bytes.fromhex("020000000102")
T = maps.Tuple(17, ipaddress.ip_address("192.168.1.10"), ipaddress.ip_address("198.51.100.20"),
               40000, 443)


def _affects(ev: RtEvent, rec) -> bool:
    changes = Changes()
    changes.add(ev)
    return changes.affect(rec)


def forwarded(in_ifindex: int = 2, oif: int = 3):
    rec = FlowBook().add(maps.encode_key(in_ifindex, T))
    rec.nexthop = NextHop(oif=oif, l3_oif=oif, gateway=GW, neigh=GW, dmac=MAC,
                          smac=bytes(6), vlans=(), vlan_tpid=0, mtu=1500, family=2)
    rec.egress = T
    return rec


def test_neighbour_state_change_with_the_same_mac_is_ignored():
    assert not _affects(RtEvent("neigh", "new", 3, GW, MAC), forwarded())


def test_neighbour_mac_change_or_removal_re_resolves():
    assert _affects(RtEvent("neigh", "new", 3, GW, bytes.fromhex("020000000199")), forwarded())
    assert _affects(RtEvent("neigh", "del", 3, GW, MAC), forwarded())


def test_other_neighbours_and_links_leave_the_flow_alone():
    other = ipaddress.ip_address("203.0.113.9")
    assert not _affects(RtEvent("neigh", "new", 3, other, bytes(6)), forwarded())
    assert not _affects(RtEvent("link", "new", 7, up=False), forwarded())


def test_links_the_flow_uses_re_resolve():
    assert _affects(RtEvent("link", "new", 3, up=False), forwarded(oif=3))
    assert _affects(RtEvent("link", "new", 2, up=False), forwarded(in_ifindex=2))


def test_a_flow_waiting_for_its_next_hop_retries_on_any_event():
    rec = forwarded()
    rec.nexthop = None
    assert _affects(RtEvent("neigh", "new", 3, GW, MAC), rec)
