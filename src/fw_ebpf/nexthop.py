# SPDX-License-Identifier: GPL-2.0-only
"""Where a flow's packets go after NAT: route, neighbour, and the device a frame really leaves on.

The kernel is asked (rtnetlink) exactly what it would do with a forwarded packet; the walk from
the routed device down through VLAN devices and bridges to the transmitting port is a pure
function over a link table, so it is unit tested on synthetic data for the cases (VLAN, QinQ,
VLAN-filtering bridges) this development kernel cannot build.
"""
from __future__ import annotations

import errno
import logging
import socket
import struct
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Callable, Literal, Mapping

from fw_ebpf import netlink as nl
from fw_ebpf import rtnl
from fw_ebpf.rtnl import (AF_BRIDGE, IFADDRMSG, IFINFOMSG, NDMSG, RTEXT_FILTER_BRVLAN, RTMSG,
                          RTN_LOCAL, RTN_UNICAST, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWNEIGH,
                          RTM_NEWROUTE, RTM_NEWRULE)

log = logging.getLogger(__name__)

Address = IPv4Address | IPv6Address
WaitFor = Literal["neigh", "fdb", "route", "unsupported"]

ARPHRD_ETHER = 1
IFF_UP = 0x1
BRIDGE_VLAN_INFO_PVID = 0x2
BRIDGE_VLAN_INFO_UNTAGGED = 0x4
BR_STATE_FORWARDING = 3
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
MAX_VLANS = 2
MAX_DEPTH = 8  # stacked devices followed before giving up (loops in a corrupt table)

# NUD states that carry a usable link-layer address.
NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # REACHABLE STALE DELAY PROBE NOARP PERMANENT

# Devices a frame can be handed to directly (XDP redirect / TC redirect). Physical NICs and Wi-Fi
# have no rtnl kind. Everything else (tunnels, macvlan, ppp, wireguard, vxlan ...) stays with
# the stack: on doubt, pass.
LOWEST_KINDS = frozenset({"", "veth", "dsa", "bond", "team", "tun"})
RTN_NAMES = {2: "local", 3: "broadcast", 4: "anycast", 5: "multicast", 6: "blackhole",
             7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat", 11: "xresolve"}


class Unresolved(Exception):
    """No next hop yet; wait_for says which netlink event may change that."""

    def __init__(self, wait_for: WaitFor, reason: str) -> None:
        super().__init__(reason)
        self.wait_for: WaitFor = wait_for
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (Unresolved, (self.wait_for, self.reason))


class EventsLost(nl.EventsLost):
    """The kernel dropped rtnetlink events (ENOBUFS): every cached decision must be revalidated."""


@dataclass(frozen=True, slots=True)
class NextHop:
    oif: int                 # lowest device: the one the frame is transmitted on
    l3_oif: int              # the device the route points at
    gateway: Address | None
    neigh: Address           # whose neighbour entry gave dmac: gateway or destination
    dmac: bytes
    smac: bytes              # MAC of l3_oif
    vlans: tuple[int, ...]   # VLAN ids to push on oif, outer first
    vlan_tpid: int           # TPID of the outer tag; 0 when vlans is empty
    mtu: int                 # L3 MTU
    family: int              # socket.AF_INET or socket.AF_INET6


@dataclass(frozen=True)
class Link:
    """What the walk needs to know about one device (parsed from RTM_NEWLINK)."""
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

FdbLookup = Callable[[int, bytes, int], "int | None"]  # (bridge, mac, vid) -> port ifindex


def _get(links: Mapping[int, Link], index: int, what: str) -> Link:
    link = links.get(index)
    if link is None:
        raise Unresolved("unsupported", f"{what} (ifindex {index}) is not in this namespace")
    return link


def walk_down(links: Mapping[int, Link], l3_oif: int, dmac: bytes,
              fdb: FdbLookup) -> tuple[int, tuple[int, ...], int]:
    """From the routed device to the transmitting one: (oif, vlans outer first, outer TPID)."""
    dev = _get(links, l3_oif, "egress device")
    tags: list[tuple[int, int]] = []  # (vid, tpid) in the order met; the last one is outermost
    for _ in range(MAX_DEPTH):
        if dev.arptype != ARPHRD_ETHER:
            raise Unresolved("unsupported", f"{dev.name} is not an Ethernet device "
                                            f"(type {dev.arptype}: PPP or a tunnel)")
        if dev.kind == "vlan":
            tags.append((dev.vlan_id, dev.vlan_proto))
            dev = _get(links, dev.parent, f"real device of {dev.name}")
        elif dev.kind == "bridge":
            dev, tags = _bridge_egress(links, dev, dmac, tags, fdb)
        elif dev.kind in LOWEST_KINDS:
            break
        else:
            raise Unresolved("unsupported", f"egress through {dev.name} ({dev.kind}) "
                                            "is left to the stack")
    else:
        raise Unresolved("unsupported", f"more than {MAX_DEPTH} stacked devices below "
                                        f"ifindex {l3_oif}")
    if len(tags) > MAX_VLANS:
        raise Unresolved("unsupported", f"{len(tags)} VLAN tags towards {dev.name}; "
                                        f"at most {MAX_VLANS} are offloaded")
    if len(tags) == 2 and tags[0][1] != ETH_P_8021Q:
        raise Unresolved("unsupported", f"inner VLAN {tags[0][0]} towards {dev.name} is not "
                                        "802.1Q")
    vlans = tuple(vid for vid, _ in reversed(tags))
    return dev.index, vlans, (tags[-1][1] if tags else 0)


def _bridge_egress(links: Mapping[int, Link], br: Link, dmac: bytes,
                   tags: list[tuple[int, int]], fdb: FdbLookup
                   ) -> tuple[Link, list[tuple[int, int]]]:
    tags = list(tags)
    vid = 0
    if br.vlan_filtering:
        # A VLAN-aware bridge consumes the outermost tag as its VLAN; untagged frames
        # from the bridge device itself travel in the bridge's PVID.
        if tags:
            vid, proto = tags.pop()
            if proto != br.bridge_vlan_proto:
                raise Unresolved("unsupported", f"tag {proto:#06x} on VLAN-aware {br.name} "
                                                f"which uses {br.bridge_vlan_proto:#06x}")
        else:
            vid = br.pvid()
            if not vid:
                raise Unresolved("unsupported", f"{br.name} filters VLANs and has no PVID")
    port_index = fdb(br.index, dmac, vid)
    if port_index is None:
        raise Unresolved("fdb", f"{br.name} has no FDB entry for {mac_text(dmac)}"
                                + (f" in VLAN {vid}" if vid else ""))
    port = _get(links, port_index, f"port of {br.name}")
    if port.master != br.index:
        raise Unresolved("unsupported", f"FDB of {br.name} points {mac_text(dmac)} at "
                                        f"{port.name}, which is not one of its ports")
    if port.port_state != BR_STATE_FORWARDING:
        raise Unresolved("fdb", f"bridge port {port.name} is not forwarding (STP)")
    if br.vlan_filtering:
        flags = port.bridge_vlans.get(vid)
        if flags is None:
            raise Unresolved("unsupported", f"VLAN {vid} is not allowed on {port.name}")
        if not flags & BRIDGE_VLAN_INFO_UNTAGGED:
            tags.append((vid, br.bridge_vlan_proto))
    return port, tags


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
                    raise Unresolved("unsupported", f"{dev.name} does not admit VLAN "
                                                    f"{vid or 'untagged'} into {master.name}")
                own = master.bridge_vlans.get(vid)
                if own is None:
                    raise Unresolved("unsupported", f"VLAN {vid} is bridged by {master.name}, "
                                                    "not routed")
                if not own & BRIDGE_VLAN_INFO_UNTAGGED:
                    tags.insert(0, vid)  # delivered tagged to the bridge: its VLAN device
            dev = master
            continue
        if master is not None and master.kind in ("bond", "team"):
            dev = master
            continue
        if tags:
            raise Unresolved("unsupported", f"no VLAN device for VLAN {tags[0]} on {dev.name}")
        return dev.index
    raise Unresolved("unsupported", f"more than {MAX_DEPTH} stacked devices above "
                                    f"ifindex {ifindex}")


# --------------------------------------------------------------------------- kernel queries

def _family(addr: Address) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


class NextHopResolver:
    """Route + neighbour + lowest device for forwarded packets, in the current netns.

    The link table is cached; call invalidate() on every link event.
    """

    def __init__(self) -> None:
        self._rt = rtnl.Rtnl()  # requests only: no event backlog on this socket
        self._links: dict[int, Link] | None = None

    def __enter__(self) -> NextHopResolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._rt.close()

    def invalidate(self) -> None:
        self._links = None

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

    def _link(self, index: int) -> Link:
        lk = self.links().get(index)
        if lk is None:  # created since the last load, before its event was handled
            self.invalidate()
            lk = _get(self.links(), index, "device")
        return lk

    def l3_input(self, ifindex: int, vlan: tuple[int, int] = (0, 0)) -> int:
        self._link(ifindex)
        return find_l3_input(self.links(), ifindex, vlan)

    def resolve(self, daddr: Address | str, saddr: Address | str, iif: int, mark: int = 0,
                l4proto: int | None = None, sport: int | None = None,
                dport: int | None = None) -> NextHop:
        """Next hop of a forwarded packet saddr -> daddr (post-NAT) arriving on iif.

        iif is the L3 input device from l3_input(), or an ingress port of untagged traffic.
        """
        daddr, saddr = ip_address(daddr), ip_address(saddr)
        if daddr.version != saddr.version:
            raise ValueError(f"{saddr} and {daddr} are of different IP versions")
        family = _family(daddr)
        l3_in = self.l3_input(iif)
        where = f"{saddr} -> {daddr} from {self._name(l3_in)}"
        try:
            route = self._rt.route_get(daddr, saddr, l3_in, mark, l4proto, sport, dport)
        except nl.NetlinkError as e:
            raise Unresolved("route", f"no route for {where}: {nl.strerror(e.errno)}") from None
        if route.type != RTN_UNICAST:
            kind = RTN_NAMES.get(route.type, str(route.type))
            raise Unresolved("route", f"{where} is {kind}, not forwarded")
        l3_oif = route.oif
        out = self._link(l3_oif)
        if not out.up:
            raise Unresolved("route", f"{out.name} (route to {daddr}) is down")
        neigh = route.gateway or daddr
        dmac = self._neigh_mac(neigh, out)
        oif, vlans, tpid = walk_down(self.links(), l3_oif, dmac, self._fdb_port)
        low = self._link(oif)
        if not low.up:
            raise Unresolved("route", f"{low.name} (below {out.name}) is down")
        mtus = [m for m in (route.mtu, out.mtu) if m]
        return NextHop(oif=oif, l3_oif=l3_oif, gateway=route.gateway, neigh=neigh, dmac=dmac,
                       smac=out.mac, vlans=vlans, vlan_tpid=tpid, mtu=min(mtus, default=0),
                       family=family)

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

    def _name(self, index: int) -> str:
        lk = self.links().get(index)
        return lk.name if lk else f"ifindex {index}"

    def pending_messages(self) -> int:
        """Replies received but never read: must stay 0 (a leak otherwise)."""
        return self._rt.queued()

    def _neigh_mac(self, addr: Address, dev: Link) -> bytes:
        n = self._rt.neigh_get(addr, dev.index)
        if n is None:
            raise Unresolved("neigh", f"no neighbour entry for {addr} on {dev.name}")
        if not n.state & NUD_USABLE or len(n.lladdr) != 6:
            raise Unresolved("neigh", f"neighbour {addr} on {dev.name} is not resolved "
                                      f"(state {n.state:#x})")
        return n.lladdr

    def _fdb_port(self, bridge: int, mac: bytes, vid: int) -> int | None:
        n = self._rt.fdb_get(bridge, mac, vid)
        return n.ifindex if n is not None else None


# --------------------------------------------------------------------------- events

EventKind = Literal["link", "neigh", "fdb", "route", "addr"]


@dataclass(frozen=True)
class RtEvent:
    kind: EventKind          # "fdb": bridge FDB (AF_BRIDGE neighbour) changes
    action: Literal["new", "del"]
    ifindex: int             # 0 for rule changes and multipath routes
    address: Address | None = None   # neigh dst / route dst / ifaddr
    lladdr: bytes | None = None      # neigh and fdb
    up: bool | None = None           # link


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
        _f, _t, index, flags, _c = IFINFOMSG.unpack_from(data)
        state = nl.attrs(data, IFINFOMSG.size).get(rtnl.IFLA_OPERSTATE)
        up = action == "new" and is_up(flags, _operstate(state[0]) if state else None)
        return RtEvent("link", action, index, up=up)
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
