# SPDX-License-Identifier: GPL-2.0-only
"""rtnetlink requests the daemon makes: links, route get, qdiscs, tc filters, XDP programs; and
the XDP features a driver has (generic netlink family "netdev").

Fixed headers and attribute numbers from linux/rtnetlink.h, if_link.h, neighbour.h and
pkt_sched.h; messages are decoded by hand (fw_ebpf.netlink) and only as far as the daemon reads
them. The parsers of link and event messages that build the daemon's own types live with those
types (nexthop.py).
"""
from __future__ import annotations

import contextlib
import errno
import socket
import struct
import sys
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Iterable

from fw_ebpf import netlink as nl

Address = IPv4Address | IPv6Address
AF_BRIDGE = 7

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
RTM_NEWQDISC, RTM_GETQDISC = 36, 38
RTM_NEWTFILTER, RTM_GETTFILTER = 44, 46

# multicast groups (enum rtnetlink_groups)
RTNLGRP_LINK, RTNLGRP_NEIGH = 1, 3
RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE = 5, 7, 8
RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_RULE = 9, 11, 19

# struct ifinfomsg, rtmsg, ndmsg, ifaddrmsg, tcmsg
IFINFOMSG = struct.Struct("=BxHiII")     # family, type, index, flags, change
RTMSG = struct.Struct("=BBBBBBBBI")      # family, dst_len, src_len, tos, table, protocol,
                                         # scope, type, flags
NDMSG = struct.Struct("=BxxxiHBB")       # family, ifindex, state, flags, type
IFADDRMSG = struct.Struct("=BBBBI")      # family, prefixlen, flags, scope, index
TCMSG = struct.Struct("=BxxxiIII")       # family, ifindex, handle, parent, info
FIB_RULE_HDR = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, res1,
                                            # res2, action, flags

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_AF_SPEC, IFLA_EXT_MASK, IFLA_XDP = 16, 18, 26, 29, 43
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
IFLA_XDP_DRV_PROG_ID, IFLA_XDP_SKB_PROG_ID = 5, 6
RTEXT_FILTER_BRVLAN, RTEXT_FILTER_SKIP_STATS = 1 << 1, 1 << 3
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")

RTA_DST, RTA_SRC, RTA_IIF, RTA_OIF, RTA_GATEWAY, RTA_METRICS = 1, 2, 3, 4, 5, 8
RTA_TABLE, RTA_MARK, RTA_VIA, RTA_IP_PROTO, RTA_SPORT, RTA_DPORT = 15, 16, 18, 27, 28, 29
RTAX_MTU = 2
RTN_UNICAST, RTN_LOCAL = 1, 2

NDA_DST, NDA_LLADDR, NDA_VLAN, NDA_MASTER = 1, 2, 5, 9
IFA_ADDRESS, IFA_LOCAL = 1, 2
TCA_KIND, TCA_OPTIONS = 1, 2
FRA_PRIORITY, FRA_FWMARK, FRA_FWMASK = 6, 10, 16


def address(data: bytes | None) -> Address | None:
    """An IPv4 or IPv6 address from its 4 or 16 raw bytes."""
    if data is None:
        return None
    if len(data) == 4:
        return IPv4Address(data)
    if len(data) == 16:
        return IPv6Address(data)
    return None


@dataclass(frozen=True, slots=True)
class Route:
    """What a route get answered (RTM_NEWROUTE)."""
    family: int
    type: int                # RTN_*
    table: int
    oif: int
    gateway: Address | None  # RTA_GATEWAY, or RTA_VIA (IPv4 route with an IPv6 next hop)
    mtu: int                 # RTAX_MTU of the route's metrics, 0 if none


def route_from_msg(m: nl.Message) -> Route:
    family, _dl, _sl, _tos, table, _proto, _scope, rtype, _flags = RTMSG.unpack_from(m.data)
    a = nl.attrs(m.data, RTMSG.size)
    gateway = address(a.get(RTA_GATEWAY))
    via = a.get(RTA_VIA)
    if gateway is None and via is not None:
        gateway = address(via[2:])           # struct rtvia: u16 family, then the address
    metrics = a.get(RTA_METRICS)
    mtu = nl.get_u32(nl.attrs(metrics).get(RTAX_MTU)) if metrics else 0
    return Route(family, rtype, nl.get_u32(a.get(RTA_TABLE), table), nl.get_u32(a.get(RTA_OIF)),
                 gateway, mtu)


@dataclass(frozen=True, slots=True)
class TcFilter:
    kind: str
    priority: int
    protocol: int            # ETH_P_* in host order
    handle: int
    options: bytes = b""     # TCA_OPTIONS: the classifier's own attributes (its actions)


@dataclass(frozen=True, slots=True)
class Rule:
    """A policy routing rule, as far as marks go."""
    family: int
    priority: int
    fwmark: int
    fwmask: int


class Rtnl(nl.Socket):
    """A request socket to rtnetlink of the caller's network namespace (joins no group)."""

    def __init__(self) -> None:
        super().__init__(nl.NETLINK_ROUTE, "rtnetlink")

    def links(self, family: int = socket.AF_UNSPEC,
              ext_mask: int = RTEXT_FILTER_SKIP_STATS) -> list[nl.Message]:
        """Every device (RTM_NEWLINK messages); AF_BRIDGE with RTEXT_FILTER_BRVLAN: bridge
        ports and their VLANs."""
        body = IFINFOMSG.pack(family, 0, 0, 0, 0) + nl.attr(IFLA_EXT_MASK, nl.u32(ext_mask))
        return self.request(RTM_GETLINK, body, "link dump", "dump")

    def link(self, ifindex: int) -> nl.Message:
        body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0) + nl.attr(
            IFLA_EXT_MASK, nl.u32(RTEXT_FILTER_SKIP_STATS))
        return self.request(RTM_GETLINK, body, f"link {ifindex}", "get")[0]

    def route_get(self, dst: Address, src: Address | None = None, iif: int = 0, mark: int = 0,
                  l4proto: int | None = None, sport: int | None = None,
                  dport: int | None = None) -> Route:
        """The route the kernel takes for a packet src -> dst arriving on iif (0: sent by the
        router itself). Protocol and ports matter to multipath hashing and to rules with
        ipproto/ports. Raises NetlinkError (e.g. ENETUNREACH) when there is none."""
        return route_from_msg(self.route_message(dst, src, iif, mark, l4proto, sport, dport))

    def route_message(self, dst: Address, src: Address | None = None, iif: int = 0,
                      mark: int = 0, l4proto: int | None = None, sport: int | None = None,
                      dport: int | None = None) -> nl.Message:
        """route_get()'s answer as the kernel sent it."""
        family = socket.AF_INET if dst.version == 4 else socket.AF_INET6
        attrs = [nl.attr(RTA_DST, dst.packed)]
        if src is not None:
            attrs.append(nl.attr(RTA_SRC, src.packed))
        if iif:
            attrs.append(nl.attr(RTA_IIF, nl.u32(iif)))
        if mark:
            attrs.append(nl.attr(RTA_MARK, nl.u32(mark)))
        if l4proto is not None:
            attrs.append(nl.attr(RTA_IP_PROTO, nl.u8(l4proto)))
            if sport is not None:
                attrs.append(nl.attr(RTA_SPORT, nl.be16(sport)))
            if dport is not None:
                attrs.append(nl.attr(RTA_DPORT, nl.be16(dport)))
        body = RTMSG.pack(family, dst.max_prefixlen, src.max_prefixlen if src else 0,
                          0, 0, 0, 0, 0, 0) + b"".join(attrs)
        answers = self.request(RTM_GETROUTE, body, "route get", "get")
        if not answers:
            raise self.error(errno.ENODATA, "route get")
        return answers[0]

    def neighbours(self, family: int = socket.AF_UNSPEC) -> list[tuple[int, bytes, bytes]]:
        """(ifindex, address or MAC, link-layer address or port) of every neighbour entry
        with a link-layer address; AF_BRIDGE: the bridges' FDB entries (MAC, port's ifindex
        in place of an address)."""
        out = []
        for m in self.request(RTM_GETNEIGH, NDMSG.pack(family, 0, 0, 0, 0), "neighbour dump",
                              "dump"):
            fam, index, _state, _flags, _type = NDMSG.unpack_from(m.data)
            a = nl.attrs(m.data, NDMSG.size)
            lladdr = a.get(NDA_LLADDR)
            if not lladdr:
                continue
            if fam == AF_BRIDGE:
                out.append((index, lladdr, struct.pack("=I", index)))
            elif NDA_DST in a:
                out.append((index, a[NDA_DST], lladdr))
        return out

    def qdiscs(self, ifindex: int) -> list[tuple[int, int, str]]:
        """(handle, parent, kind) of every qdisc of a device."""
        out = []
        for m in self.request(RTM_GETQDISC, TCMSG.pack(0, ifindex, 0, 0, 0), "qdisc dump",
                              "dump"):
            _f, index, handle, parent, _info = TCMSG.unpack_from(m.data)
            if index == ifindex:   # the kernel may dump every device's
                kind = nl.get_str(nl.attrs(m.data, TCMSG.size).get(TCA_KIND))
                out.append((handle, parent, kind))
        return out

    def filters(self, ifindex: int, parent: int) -> list[TcFilter]:
        """The tc filters under one parent (e.g. clsact ingress 0xFFFFFFF2) of a device; a
        missing parent raises NetlinkError."""
        out = []
        for m in self.request(RTM_GETTFILTER, TCMSG.pack(0, ifindex, 0, parent, 0),
                              "filter dump", "dump"):
            _f, _index, handle, _parent, info = TCMSG.unpack_from(m.data)
            if handle:   # without a handle: the header the kernel sends for each priority
                a = nl.attrs(m.data, TCMSG.size)
                out.append(TcFilter(nl.get_str(a.get(TCA_KIND)), info >> 16,
                                    socket.ntohs(info & 0xFFFF), handle, a.get(TCA_OPTIONS, b"")))
        return out

    def rules(self, family: int) -> list[Rule]:
        out = []
        for m in self.request(RTM_GETRULE, FIB_RULE_HDR.pack(family, 0, 0, 0, 0, 0, 0, 0, 0),
                              "rule dump", "dump"):
            a = nl.attrs(m.data, FIB_RULE_HDR.size)
            out.append(Rule(m.data[0], nl.get_u32(a.get(FRA_PRIORITY)),
                            nl.get_u32(a.get(FRA_FWMARK)), nl.get_u32(a.get(FRA_FWMASK))))
        return out


def xdp_prog_ids(ifindex: int) -> dict[str, int]:
    """XDP programs on a device as the kernel reports them: {"native"|"generic": prog id}.

    The kernel always adds the per-mode ids (rtnl_xdp_report_one), whatever
    IFLA_XDP_ATTACHED says, so those are read."""
    with Rtnl() as rt:
        m = rt.link(ifindex)
    xdp = nl.attrs(m.data, IFINFOMSG.size).get(IFLA_XDP)
    if xdp is None:
        return {}
    a = nl.attrs(xdp)
    ids = {"native": nl.get_u32(a.get(IFLA_XDP_DRV_PROG_ID)),
           "generic": nl.get_u32(a.get(IFLA_XDP_SKB_PROG_ID))}
    return {k: v for k, v in ids.items() if v}


def qdisc_kinds(ifindex: int) -> set[str]:
    with Rtnl() as rt:
        return {kind for _h, _p, kind in rt.qdiscs(ifindex)}


def tc_filters(ifindex: int, parents: Iterable[int]) -> list[TcFilter]:
    """Filters under these parents of a device; a parent the kernel cannot list has none."""
    out: list[TcFilter] = []
    with Rtnl() as rt:
        for parent in parents:
            with contextlib.suppress(nl.NetlinkError):
                out += rt.filters(ifindex, parent)
    return out


# generic netlink: the controller, and the "netdev" family (Documentation/netlink/specs/netdev.yaml)
GENL_ID_CTRL, CTRL_CMD_GETFAMILY = 0x10, 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 1, 2
GENLMSGHDR = struct.Struct("=BBxx")      # cmd, version
NETDEV_CMD_DEV_GET = 1
NETDEV_A_DEV_IFINDEX, NETDEV_A_DEV_XDP_FEATURES = 1, 3
NETDEV_XDP_ACT_NDO_XMIT = 1 << 2


def xdp_features(ifindex: int) -> int | None:
    """The device's NETDEV_XDP_ACT_* bits, as its driver says them now; None on a kernel
    without the netdev family (before 6.3)."""
    with nl.Socket(nl.NETLINK_GENERIC, "generic netlink") as gen:
        try:
            reply = gen.request(GENL_ID_CTRL, GENLMSGHDR.pack(CTRL_CMD_GETFAMILY, 1)
                                + nl.attr(CTRL_ATTR_FAMILY_NAME, nl.asciiz("netdev")),
                                "family netdev", "get")
        except nl.NetlinkError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        family = nl.get_u16(nl.attrs(reply[0].data, GENLMSGHDR.size).get(CTRL_ATTR_FAMILY_ID))
        reply = gen.request(family, GENLMSGHDR.pack(NETDEV_CMD_DEV_GET, 1)
                            + nl.attr(NETDEV_A_DEV_IFINDEX, nl.u32(ifindex)),
                            f"netdev dev-get {ifindex}", "get")
    a = nl.attrs(reply[0].data, GENLMSGHDR.size)
    value = a.get(NETDEV_A_DEV_XDP_FEATURES, b"")
    return int.from_bytes(value, sys.byteorder) if value else 0
