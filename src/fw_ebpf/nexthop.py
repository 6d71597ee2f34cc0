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
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, Callable, Literal, Mapping

from pyroute2 import IPRoute, IPRSocket
from pyroute2.netlink import NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (RTM_GETNEIGH, RTM_GETROUTE, RTM_NEWADDR, RTM_NEWLINK,
                                    RTM_NEWNEIGH, RTM_NEWROUTE, RTM_NEWRULE)
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

log = logging.getLogger(__name__)

Address = IPv4Address | IPv6Address
WaitFor = Literal["neigh", "fdb", "route", "unsupported"]

AF_BRIDGE = 7
ARPHRD_ETHER = 1
IFF_UP = 0x1
RTN_LOCAL = 2
RTN_UNICAST = 1
RTEXT_FILTER_BRVLAN = 2
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


class EventsLost(Exception):
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


def mac_bytes(text: str | None) -> bytes:
    return bytes.fromhex(text.replace(":", "")) if text else b""


def mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def _nested(msg: Any, *names: str) -> Any:
    for name in names:
        if msg is None:
            return None
        msg = msg.get_attr(name)
    return msg


def link_from_msg(msg: Any) -> Link:
    """Parse a pyroute2 ifinfmsg (RTM_NEWLINK, family AF_UNSPEC)."""
    info = msg.get_attr("IFLA_LINKINFO")
    kind = (_nested(info, "IFLA_INFO_KIND") or "") if info is not None else ""
    data = _nested(info, "IFLA_INFO_DATA")
    slave = _nested(info, "IFLA_INFO_SLAVE_DATA")
    extra: dict[str, Any] = {}
    if kind == "vlan" and data is not None:
        extra.update(parent=msg.get_attr("IFLA_LINK") or 0,
                     vlan_id=data.get_attr("IFLA_VLAN_ID") or 0,
                     vlan_proto=data.get_attr("IFLA_VLAN_PROTOCOL") or ETH_P_8021Q)
    if kind == "bridge" and data is not None:
        extra.update(vlan_filtering=bool(data.get_attr("IFLA_BR_VLAN_FILTERING")),
                     bridge_vlan_proto=data.get_attr("IFLA_BR_VLAN_PROTOCOL") or ETH_P_8021Q)
    if slave is not None and _nested(info, "IFLA_INFO_SLAVE_KIND") == "bridge":
        state = slave.get_attr("IFLA_BRPORT_STATE")
        if state is not None:
            extra["port_state"] = state
    return Link(index=msg["index"], name=msg.get_attr("IFLA_IFNAME") or f"if{msg['index']}",
                kind=kind, mac=mac_bytes(msg.get_attr("IFLA_ADDRESS")),
                mtu=msg.get_attr("IFLA_MTU") or 0, flags=msg["flags"],
                operstate=msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN",
                arptype=msg["ifi_type"], master=msg.get_attr("IFLA_MASTER") or 0, **extra)


def bridge_vlans_from_msg(msg: Any) -> dict[int, int]:
    """VLAN membership from an AF_BRIDGE RTM_NEWLINK dumped with RTEXT_FILTER_BRVLAN."""
    spec = msg.get_attr("IFLA_AF_SPEC")
    if spec is None:
        return {}
    return {v["vid"]: v["flags"] for v in spec.get_attrs("IFLA_BRIDGE_VLAN_INFO")}


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

class _RouteGet(rtmsg):
    """rtmsg with the attributes pyroute2's map stops short of: the L4 keys of `ip route get`."""
    nla_map = rtmsg.nla_map + (
        ("RTA_PAD", "hex"),
        ("RTA_UID", "uint32"),
        ("RTA_TTL_PROPAGATE", "uint8"),
        ("RTA_IP_PROTO", "uint8"),
        ("RTA_SPORT", "be16"),
        ("RTA_DPORT", "be16"),
    )


def _family(addr: Address) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


def _route_mtu(msg: Any) -> int:
    metrics = msg.get_attr("RTA_METRICS")
    return (metrics.get_attr("RTAX_MTU") or 0) if metrics is not None else 0


def _route_gateway(msg: Any) -> Address | None:
    gw = msg.get_attr("RTA_GATEWAY")
    if gw:
        return ip_address(gw)
    via = msg.get_attr("RTA_VIA")  # IPv4 route with an IPv6 next hop (RFC 5549)
    if via and isinstance(via, dict) and via.get("addr"):
        return ip_address(via["addr"])
    return None


class NextHopResolver:
    """Route + neighbour + lowest device for forwarded packets, in the current netns.

    The link table is cached; call invalidate() on every link event.
    """

    def __init__(self) -> None:
        self._ipr = IPRoute(groups=0)  # requests only: no event backlog on this socket
        # pyroute2 0.9's sync nlm_request() reads this key but never sets it (KeyError).
        self._ipr.status.setdefault("nlm_generator", False)
        self._links: dict[int, Link] | None = None

    def __enter__(self) -> NextHopResolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._ipr.close()

    def invalidate(self) -> None:
        self._links = None

    def links(self) -> Mapping[int, Link]:
        if self._links is None:
            self._links = self._load_links()
        return self._links

    def _load_links(self) -> dict[int, Link]:
        links = {m["index"]: link_from_msg(m) for m in self._ipr.get_links()}
        # Only VLAN-aware bridges need the per-port VLAN table; most routers have none.
        if any(lk.kind == "bridge" and lk.vlan_filtering for lk in links.values()):
            for m in self._ipr.link("dump", family=AF_BRIDGE, ext_mask=RTEXT_FILTER_BRVLAN):
                lk = links.get(m["index"])
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
        route = self._route_get(family, daddr, saddr, l3_in, mark, l4proto, sport, dport)
        l3_oif = route.get_attr("RTA_OIF") or 0
        out = self._link(l3_oif)
        if not out.up:
            raise Unresolved("route", f"{out.name} (route to {daddr}) is down")
        gateway = _route_gateway(route)
        neigh = gateway or daddr
        dmac = self._neigh_mac(neigh, out)
        oif, vlans, tpid = walk_down(self.links(), l3_oif, dmac, self._fdb_port)
        low = self._link(oif)
        if not low.up:
            raise Unresolved("route", f"{low.name} (below {out.name}) is down")
        mtus = [m for m in (_route_mtu(route), out.mtu) if m]
        return NextHop(oif=oif, l3_oif=l3_oif, gateway=gateway, neigh=neigh, dmac=dmac,
                       smac=out.mac, vlans=vlans, vlan_tpid=tpid, mtu=min(mtus, default=0),
                       family=family)

    def _route_get(self, family: int, daddr: Address, saddr: Address, iif: int, mark: int,
                   l4proto: int | None, sport: int | None, dport: int | None) -> Any:
        msg = _RouteGet()
        msg["family"] = family
        msg["dst_len"] = msg["src_len"] = daddr.max_prefixlen
        attrs: list[tuple[str, Any]] = [("RTA_DST", str(daddr)), ("RTA_SRC", str(saddr)),
                                        ("RTA_IIF", iif)]
        if mark:
            attrs.append(("RTA_MARK", mark))
        # Protocol and ports matter to multipath L4 hashing and to rules with ipproto/ports.
        if l4proto is not None:
            attrs.append(("RTA_IP_PROTO", l4proto))
            if sport is not None:
                attrs.append(("RTA_SPORT", sport))
            if dport is not None:
                attrs.append(("RTA_DPORT", dport))
        msg["attrs"] = attrs
        where = f"{saddr} -> {daddr} from {self._name(iif)}"
        try:
            reply = self._ipr.nlm_request(msg, RTM_GETROUTE, NLM_F_REQUEST)
        except NetlinkError as e:
            raise Unresolved("route", f"no route for {where}: {e.args[-1]}") from None
        if not reply:
            raise Unresolved("route", f"no route for {where}: empty reply")
        route = reply[0]
        if route["type"] != RTN_UNICAST:
            kind = RTN_NAMES.get(route["type"], str(route["type"]))
            raise Unresolved("route", f"{where} is {kind}, not forwarded")
        return route

    def _lookup(self, daddr: Address) -> Any | None:
        """The route the router itself would use to daddr (no input device), or None."""
        msg = _RouteGet()
        msg["family"] = _family(daddr)
        msg["dst_len"] = daddr.max_prefixlen
        msg["attrs"] = [("RTA_DST", str(daddr))]
        try:
            reply = self._ipr.nlm_request(msg, RTM_GETROUTE, NLM_F_REQUEST)
        except NetlinkError:
            return None
        return reply[0] if reply else None

    def is_local(self, addr: Address) -> bool:
        """The router owns addr: fw4's input chain decides packets to it."""
        route = self._lookup(addr)
        return route is not None and route["type"] == RTN_LOCAL

    def out_device(self, addr: Address) -> str | None:
        """Name of the L3 device the route to addr leaves by (fw4's destination zone)."""
        route = self._lookup(addr)
        if route is None or route["type"] != RTN_UNICAST:
            return None
        link = self.links().get(route.get_attr("RTA_OIF") or 0)
        return link.name if link else None

    def _name(self, index: int) -> str:
        lk = self.links().get(index)
        return lk.name if lk else f"ifindex {index}"

    def _neigh_get(self, family: int, ifindex: int, attrs: list[tuple[str, Any]]) -> Any:
        """One RTM_GETNEIGH without NLM_F_ACK: IPRoute.neigh("get") asks for an ACK that
        nothing reads, and each one stays queued in the socket object for good."""
        msg = ndmsg()
        msg["family"], msg["ifindex"], msg["attrs"] = family, ifindex, attrs
        return self._ipr.nlm_request(msg, RTM_GETNEIGH, NLM_F_REQUEST)

    def pending_messages(self) -> int:
        """Replies received but never read: must stay 0 (a leak otherwise)."""
        return sum(q.qsize() for q in self._ipr.asyncore.msg_queue.queues.values())

    def _neigh_mac(self, addr: Address, dev: Link) -> bytes:
        try:
            reply = self._neigh_get(_family(addr), dev.index, [("NDA_DST", str(addr))])
        except NetlinkError as e:
            if e.code != errno.ENOENT:
                raise
            raise Unresolved("neigh", f"no neighbour entry for {addr} on {dev.name}") from None
        msg = reply[0]
        mac = mac_bytes(msg.get_attr("NDA_LLADDR"))
        if not msg["state"] & NUD_USABLE or len(mac) != 6:
            raise Unresolved("neigh", f"neighbour {addr} on {dev.name} is not resolved "
                                      f"(state {msg['state']:#x})")
        return mac

    def _fdb_port(self, bridge: int, mac: bytes, vid: int) -> int | None:
        attrs: list[tuple[str, Any]] = [("NDA_LLADDR", mac_text(mac)), ("NDA_MASTER", bridge)]
        if vid:
            attrs.append(("NDA_VLAN", vid))
        try:
            reply = self._neigh_get(AF_BRIDGE, 0, attrs)
        except NetlinkError as e:
            if e.code != errno.ENOENT:
                raise
            return None
        return reply[0]["ifindex"] if reply else None


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


GROUPS = (0x1      # RTMGRP_LINK
          | 0x4    # RTMGRP_NEIGH
          | 0x10   # RTMGRP_IPV4_IFADDR
          | 0x40   # RTMGRP_IPV4_ROUTE
          | 0x80   # RTMGRP_IPV4_RULE: policy routing changes move flows like route changes
          | 0x100  # RTMGRP_IPV6_IFADDR
          | 0x400  # RTMGRP_IPV6_ROUTE
          | 0x40000)  # RTMGRP_IPV6_RULE


def _addr(text: str | None) -> Address | None:
    try:
        return ip_address(text) if text else None
    except ValueError:
        return None


def event_from_msg(msg: Any) -> RtEvent | None:
    """RtEvent for one pyroute2 rtnetlink notification, None for what we do not follow."""
    kind = _EVENT_KINDS.get(msg["header"]["type"])
    if kind is None:
        return None
    action: Literal["new", "del"] = "del" if msg["header"]["type"] & 1 else "new"
    if kind == "link":
        up = action == "new" and is_up(msg["flags"], msg.get_attr("IFLA_OPERSTATE"))
        return RtEvent("link", action, msg["index"], up=up)
    if kind == "neigh":
        lladdr = mac_bytes(msg.get_attr("NDA_LLADDR")) or None
        if msg["family"] == AF_BRIDGE:
            return RtEvent("fdb", action, msg["ifindex"], lladdr=lladdr)
        return RtEvent("neigh", action, msg["ifindex"], _addr(msg.get_attr("NDA_DST")), lladdr)
    if kind == "route":
        return RtEvent("route", action, msg.get_attr("RTA_OIF") or 0,
                       _addr(msg.get_attr("RTA_DST")))
    if kind == "rule":
        return RtEvent("route", action, 0)
    addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    return RtEvent("addr", action, msg["index"], _addr(addr))


# RTM_NEW* is even, RTM_DEL* the odd number after it.
_EVENT_KINDS = {t: k for base, k in ((RTM_NEWLINK, "link"), (RTM_NEWADDR, "addr"),
                                      (RTM_NEWROUTE, "route"), (RTM_NEWNEIGH, "neigh"),
                                      (RTM_NEWRULE, "rule")) for t in (base, base + 1)}


class RtEvents:
    """Non-blocking rtnetlink subscription: links, neighbours + FDB, routes, rules, addresses."""

    RECV_SIZE = 1 << 16

    def __init__(self, rcvbuf: int = 4 << 20) -> None:
        self._nl = IPRSocket(rcvbuf=rcvbuf)
        try:
            self._nl.bind(groups=GROUPS)
            self._sock = self._nl.socket
            self._sock.setblocking(False)
        except BaseException:
            self._nl.close()
            raise

    def __enter__(self) -> RtEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._nl.close()

    def read(self) -> list[RtEvent]:
        """Everything queued now; never blocks. Raises EventsLost after a receive overrun."""
        events: list[RtEvent] = []
        while True:
            try:
                data = self._sock.recv(self.RECV_SIZE, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return events
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    raise EventsLost("rtnetlink events were dropped (receive buffer full); "
                                     "revalidating everything") from None
                raise
            if not data:
                return events
            for msg in self._nl.marshal.parse(data):
                if msg["header"].get("error") is not None:
                    log.debug("rtnetlink: undecodable message: %s", msg["header"]["error"])
                    continue
                ev = event_from_msg(msg)
                if ev is not None:
                    events.append(ev)
