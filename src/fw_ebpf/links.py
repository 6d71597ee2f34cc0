# SPDX-License-Identifier: GPL-2.0-only
"""The router's devices as the daemon needs them: the link table, the L3 device a flow enters
by (fw4's zones), what an egress device can take (XDP frames, its MTU, shaping), route lookups
for fw4's policy, and the rtnetlink events that change any of it.

Where a flow's frames leave and with which L2 header is not worked out here: the kernel shows
it (admission by proof, bpf/ebpfw.c). The walk up from a port through bridges and VLAN devices
to the L3 input is a pure function over the link table, unit tested on synthetic data for what
this development kernel cannot build (VLAN devices, VLAN-filtering bridges).
"""
from __future__ import annotations

import errno
import logging
import socket
import struct
import time
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address
from typing import Literal, Mapping

from fw_ebpf import netlink as nl
from fw_ebpf import rtnl
from fw_ebpf.rtnl import (AF_BRIDGE, IFADDRMSG, IFINFOMSG, NDMSG, RTEXT_FILTER_BRVLAN, RTMSG,
                          RTN_LOCAL, RTN_UNICAST, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWNEIGH,
                          RTM_NEWROUTE, RTM_NEWRULE)

log = logging.getLogger(__name__)

Address = IPv4Address | IPv6Address

ARPHRD_ETHER = 1
IFF_UP = 0x1
BRIDGE_VLAN_INFO_PVID = 0x2
BRIDGE_VLAN_INFO_UNTAGGED = 0x4
BR_STATE_FORWARDING = 3
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
MAX_DEPTH = 8  # stacked devices followed before giving up (loops in a corrupt table)
# Qdiscs that shape or schedule: an XDP redirect would skip them, so flows to such a device
# are forwarded from TC, whose redirect goes through the egress qdisc
SHAPING_QDISCS = frozenset({"htb", "hfsc", "tbf", "cake", "cbq", "drr", "qfq", "ets", "fq_codel",
                            "fq", "sfq", "netem", "red", "pie", "fq_pie"})
CACHE_S = 1.0   # how long a device's qdiscs and XDP features are taken as known


class NoL3Input(Exception):
    """The L3 device a frame is routed from cannot be told (a VLAN nobody listens to, ...)."""


class EventsLost(nl.EventsLost):
    """The kernel dropped rtnetlink events (ENOBUFS): every cached decision must be revalidated."""


@dataclass(frozen=True)
class Link:
    """What the daemon needs to know about one device (parsed from RTM_NEWLINK)."""
    index: int
    name: str
    kind: str = ""           # IFLA_INFO_KIND; "" for plain NICs
    mac: bytes = b""
    mtu: int = 1500
    flags: int = IFF_UP
    operstate: str = "UP"
    arptype: int = ARPHRD_ETHER
    master: int = 0
    parent: int = 0          # IFLA_LINK of a VLAN device: its real device
    vlan_id: int = 0
    vlan_proto: int = ETH_P_8021Q
    vlan_filtering: bool = False       # bridges
    bridge_vlan_proto: int = ETH_P_8021Q
    port_state: int = BR_STATE_FORWARDING  # bridge ports (STP)
    # Bridge VLAN membership (vid -> BRIDGE_VLAN_INFO_* flags), for ports and the bridge itself.
    bridge_vlans: Mapping[int, int] = field(default_factory=dict, hash=False)

    @property
    def up(self) -> bool:
        return is_up(self.flags, self.operstate)

    @property
    def fast_path_view(self) -> tuple[object, ...]:
        """What a flow forwarded through this device depends on: a link event that changes
        none of it (statistics, our own XDP attach, ...) changes no flow."""
        return (self.name, self.mac, self.mtu, self.up, self.master, self.vlan_id, self.parent,
                self.vlan_filtering)

    def pvid(self) -> int:
        return next((v for v, f in self.bridge_vlans.items() if f & BRIDGE_VLAN_INFO_PVID), 0)


def is_up(flags: int, operstate: str | None) -> bool:
    # Admin up and carrier: operstate UP, or UNKNOWN for drivers that never report it.
    return bool(flags & IFF_UP) and operstate in ("UP", "UNKNOWN")


def mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def link_from_msg(m: nl.Message) -> Link:
    """Parse an RTM_NEWLINK message (family AF_UNSPEC)."""
    _family, arptype, index, flags, _change = IFINFOMSG.unpack_from(m.data)
    a = nl.attrs(m.data, IFINFOMSG.size)
    info = nl.attrs(a[rtnl.IFLA_LINKINFO]) if rtnl.IFLA_LINKINFO in a else {}
    kind = nl.get_str(info.get(rtnl.IFLA_INFO_KIND))
    data = nl.attrs(info[rtnl.IFLA_INFO_DATA]) if rtnl.IFLA_INFO_DATA in info else None
    extra: dict[str, int | bool] = {}
    if kind == "vlan" and data is not None:
        extra.update(parent=nl.get_u32(a.get(rtnl.IFLA_LINK)),
                     vlan_id=nl.get_u16(data.get(1)),                     # IFLA_VLAN_ID
                     vlan_proto=nl.get_be(data.get(5), ETH_P_8021Q))      # IFLA_VLAN_PROTOCOL
    if kind == "bridge" and data is not None:
        extra.update(vlan_filtering=bool(nl.get_u8(data.get(7))),       # IFLA_BR_VLAN_FILTERING
                     bridge_vlan_proto=nl.get_be(data.get(8), ETH_P_8021Q))  # _VLAN_PROTOCOL
    slave = info.get(rtnl.IFLA_INFO_SLAVE_DATA)
    if slave is not None and nl.get_str(info.get(rtnl.IFLA_INFO_SLAVE_KIND)) == "bridge":
        state = nl.attrs(slave).get(1)                                   # IFLA_BRPORT_STATE
        if state:
            extra["port_state"] = state[0]
    operstate = a.get(rtnl.IFLA_OPERSTATE)
    return Link(index=index, name=nl.get_str(a.get(rtnl.IFLA_IFNAME)) or f"if{index}",
                kind=kind, mac=a.get(rtnl.IFLA_ADDRESS, b""),
                mtu=nl.get_u32(a.get(rtnl.IFLA_MTU)), flags=flags,
                operstate=_operstate(operstate[0]) if operstate else "UNKNOWN",
                arptype=arptype, master=nl.get_u32(a.get(rtnl.IFLA_MASTER)),
                **extra)  # type: ignore[arg-type]


def _operstate(value: int) -> str:
    return rtnl.OPERSTATES[value] if value < len(rtnl.OPERSTATES) else "UNKNOWN"


def bridge_vlans_from_msg(m: nl.Message) -> dict[int, int]:
    """VLAN membership from an AF_BRIDGE RTM_NEWLINK dumped with RTEXT_FILTER_BRVLAN."""
    spec = nl.attrs(m.data, IFINFOMSG.size).get(rtnl.IFLA_AF_SPEC)
    if spec is None:
        return {}
    vlans = {}
    for kind, value in nl.attr_list(spec):
        if kind == 2 and len(value) >= 4:                                # IFLA_BRIDGE_VLAN_INFO
            flags, vid = struct.unpack_from("=HH", value)
            vlans[vid] = flags
    return vlans


# --------------------------------------------------------------------------- pure walks

def _get(links: Mapping[int, Link], index: int, what: str) -> Link:
    link = links.get(index)
    if link is None:
        raise NoL3Input(f"{what} (ifindex {index}) is not in this namespace")
    return link


def find_l3_input(links: Mapping[int, Link], ifindex: int,
                  vlan: tuple[int, int] = (0, 0)) -> int:
    """The L3 device a frame received on ifindex with VLAN ids (outer, inner) is routed from."""
    dev = _get(links, ifindex, "ingress device")
    tags = [v for v in vlan if v]
    for _ in range(MAX_DEPTH):
        # VLAN devices on a device see tagged frames before its bridge or bond does.
        if tags:
            child = next((lk for lk in links.values() if lk.kind == "vlan"
                          and lk.parent == dev.index and lk.vlan_id == tags[0]), None)
            if child is not None:
                dev, tags = child, tags[1:]
                continue
        master = links.get(dev.master) if dev.master else None
        if master is not None and master.kind == "bridge":
            if master.vlan_filtering:
                vid = tags.pop(0) if tags else dev.pvid()
                if not vid or vid not in dev.bridge_vlans:
                    raise NoL3Input(f"{dev.name} does not admit VLAN "
                                                    f"{vid or 'untagged'} into {master.name}")
                own = master.bridge_vlans.get(vid)
                if own is None:
                    raise NoL3Input(f"VLAN {vid} is bridged by {master.name}, "
                                                    "not routed")
                if not own & BRIDGE_VLAN_INFO_UNTAGGED:
                    tags.insert(0, vid)  # delivered tagged to the bridge: its VLAN device
            dev = master
            continue
        if master is not None and master.kind in ("bond", "team"):
            dev = master
            continue
        if tags:
            raise NoL3Input(f"no VLAN device for VLAN {tags[0]} on {dev.name}")
        return dev.index
    raise NoL3Input(f"more than {MAX_DEPTH} stacked devices above "
                                    f"ifindex {ifindex}")


# --------------------------------------------------------------------------- kernel queries

class Links:
    """The link table (cached; invalidate() on link events), the L3 input of a flow, egress
    capabilities, and route lookups for fw4's policy, in the current netns."""

    def __init__(self) -> None:
        self._rt = rtnl.Rtnl()  # requests only: no event backlog on this socket
        self._links: dict[int, Link] | None = None
        self._caps: dict[tuple[str, int], tuple[float, object]] = {}
        self._netdev_family: int | None = None

    def __enter__(self) -> Links:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._rt.close()

    def invalidate(self) -> None:
        self._links = None
        self._caps.clear()

    def links(self) -> Mapping[int, Link]:
        if self._links is None:
            self._links = self._load_links()
        return self._links

    def _load_links(self) -> dict[int, Link]:
        links = {lk.index: lk for lk in map(link_from_msg, self._rt.links())}
        # Only VLAN-aware bridges need the per-port VLAN table; most routers have none.
        if any(lk.kind == "bridge" and lk.vlan_filtering for lk in links.values()):
            for m in self._rt.links(AF_BRIDGE, RTEXT_FILTER_BRVLAN):
                lk = links.get(IFINFOMSG.unpack_from(m.data)[2])
                if lk is not None:
                    links[lk.index] = replace(lk, bridge_vlans=bridge_vlans_from_msg(m))
        return links

    def link(self, index: int) -> Link | None:
        lk = self.links().get(index)
        if lk is None:  # created since the last load, before its event was handled
            self.invalidate()
            lk = self.links().get(index)
        return lk

    def name(self, index: int) -> str:
        lk = self.link(index)
        return lk.name if lk else f"ifindex {index}"

    def l3_input(self, ifindex: int, vlan: tuple[int, int] = (0, 0)) -> int:
        if self.link(ifindex) is None:
            raise NoL3Input(f"ingress device (ifindex {ifindex}) is not in this namespace")
        return find_l3_input(self.links(), ifindex, vlan)

    # -- what an egress device can take --------------------------------------------------

    def _cached(self, what: str, index: int, get: object) -> object:
        now = time.monotonic()
        hit = self._caps.get((what, index))
        if hit is not None and now - hit[0] < CACHE_S:
            return hit[1]
        value = get()  # type: ignore[operator]
        self._caps[(what, index)] = (now, value)
        return value

    def mtu(self, index: int) -> int:
        lk = self.link(index)
        return lk.mtu if lk else 0

    def shaped(self, index: int) -> bool:
        """A qdisc that shapes or schedules sits on the device (XDP would skip it)."""
        return bool(self._cached("shaped",
                                 index, lambda: bool(rtnl.qdisc_kinds(index) & SHAPING_QDISCS)))

    def takes_xdp(self, index: int, native_xdp_here: bool) -> bool:
        """The driver transmits XDP frames redirected to it (ndo_xdp_xmit), as the kernel's
        xdp-features say; a kernel too old to say: only where our native XDP runs (a driver
        with native XDP has it, as far as routers go)."""
        def get() -> bool:
            features = rtnl.xdp_features(index)
            if features is None:
                return native_xdp_here
            return bool(features & rtnl.NETDEV_XDP_ACT_NDO_XMIT)
        return bool(self._cached("xdp", index, get))

    # -- route lookups for fw4's policy --------------------------------------------------

    def _lookup(self, daddr: Address) -> rtnl.Route | None:
        """The route the router itself would use to daddr (no input device), or None."""
        try:
            return self._rt.route_get(daddr)
        except nl.NetlinkError:
            return None

    def is_local(self, addr: Address) -> bool:
        """The router owns addr: fw4's input chain decides packets to it."""
        route = self._lookup(addr)
        return route is not None and route.type == RTN_LOCAL

    def out_device(self, addr: Address) -> str | None:
        """Name of the L3 device the route to addr leaves by (fw4's destination zone)."""
        route = self._lookup(addr)
        if route is None or route.type != RTN_UNICAST:
            return None
        link = self.links().get(route.oif)
        return link.name if link else None

    def neighbours(self, family: int = socket.AF_UNSPEC) -> list[tuple[int, bytes, bytes]]:
        return self._rt.neighbours(family)

    def pending_messages(self) -> int:
        """Replies received but never read: must stay 0 (a leak otherwise)."""
        return self._rt.queued()


# --------------------------------------------------------------------------- events

EventKind = Literal["link", "brport", "neigh", "fdb", "route", "addr"]


@dataclass(frozen=True)
class RtEvent:
    kind: EventKind          # "fdb": bridge FDB (AF_BRIDGE neighbour) changes
    action: Literal["new", "del"]
    ifindex: int             # 0 for rule changes and multipath routes
    address: Address | None = None   # neigh dst / route dst / ifaddr
    lladdr: bytes | None = None      # neigh and fdb
    up: bool | None = None           # link
    link: Link | None = field(default=None, compare=False)   # link "new": the device now
    port: bytes | None = field(default=None, compare=False)  # brport: its settings, as sent


# Policy routing (rule) changes move flows like route changes.
GROUPS = (rtnl.RTNLGRP_LINK, rtnl.RTNLGRP_NEIGH, rtnl.RTNLGRP_IPV4_IFADDR,
          rtnl.RTNLGRP_IPV4_ROUTE, rtnl.RTNLGRP_IPV4_RULE, rtnl.RTNLGRP_IPV6_IFADDR,
          rtnl.RTNLGRP_IPV6_ROUTE, rtnl.RTNLGRP_IPV6_RULE)


def event_from_msg(m: nl.Message) -> RtEvent | None:
    """RtEvent for one rtnetlink notification, None for what we do not follow."""
    kind = _EVENT_KINDS.get(m.type)
    if kind is None:
        return None
    action: Literal["new", "del"] = "del" if m.type & 1 else "new"
    data = m.data
    if kind == "link":
        family, _t, index, flags, _c = IFINFOMSG.unpack_from(data)
        if family == AF_BRIDGE:   # a bridge port's own settings: STP state, VLANs, flags
            return RtEvent("brport", action, index, port=data[IFINFOMSG.size:])
        state = nl.attrs(data, IFINFOMSG.size).get(rtnl.IFLA_OPERSTATE)
        up = action == "new" and is_up(flags, _operstate(state[0]) if state else None)
        return RtEvent("link", action, index, up=up,
                       link=link_from_msg(m) if action == "new" else None)
    if kind == "neigh":
        family, index, _state, _flags, _type = NDMSG.unpack_from(data)
        a = nl.attrs(data, NDMSG.size)
        lladdr = a.get(rtnl.NDA_LLADDR) or None
        if family == AF_BRIDGE:
            return RtEvent("fdb", action, index, lladdr=lladdr)
        return RtEvent("neigh", action, index, rtnl.address(a.get(rtnl.NDA_DST)), lladdr)
    if kind == "route":
        a = nl.attrs(data, RTMSG.size)
        return RtEvent("route", action, nl.get_u32(a.get(rtnl.RTA_OIF)),
                       rtnl.address(a.get(rtnl.RTA_DST)))
    if kind == "rule":
        return RtEvent("route", action, 0)
    index = IFADDRMSG.unpack_from(data)[4]
    a = nl.attrs(data, IFADDRMSG.size)
    return RtEvent("addr", action, index,
                   rtnl.address(a.get(rtnl.IFA_LOCAL) or a.get(rtnl.IFA_ADDRESS)))


# RTM_NEW* is even, RTM_DEL* the odd number after it.
_EVENT_KINDS = {t: k for base, k in ((RTM_NEWLINK, "link"), (RTM_NEWADDR, "addr"),
                                      (RTM_NEWROUTE, "route"), (RTM_NEWNEIGH, "neigh"),
                                      (RTM_NEWRULE, "rule")) for t in (base, base + 1)}


class _EventSocket(nl.Socket):
    Lost = EventsLost


class RtEvents(nl.Owner):
    """Non-blocking rtnetlink subscription: links, neighbours + FDB, routes, rules, addresses."""

    _sock: _EventSocket

    def __init__(self, rcvbuf: int = 4 << 20) -> None:
        self._sock = _EventSocket(nl.NETLINK_ROUTE, "rtnetlink events", GROUPS, rcvbuf,
                                  blocking=False)

    def read(self) -> list[RtEvent]:
        """Everything queued now; never blocks. Raises EventsLost after a receive overrun."""
        events: list[RtEvent] = []
        while True:
            try:
                msgs = self._sock.recv()
            except EventsLost:
                raise EventsLost("rtnetlink events were dropped (receive buffer full); "
                                 "revalidating everything", errno.ENOBUFS) from None
            if msgs is None:
                return events
            for m in msgs:
                ev = event_from_msg(m)
                if ev is not None:
                    events.append(ev)
