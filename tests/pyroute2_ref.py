# SPDX-License-Identifier: GPL-2.0-only
"""pyroute2 as the reference codec for the daemon's hand-written netlink messages (tests only).

The daemon never imports pyroute2; tests encode and decode the same bytes with it and compare
field by field, so a hand-written decoder cannot silently disagree with a maintained one.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Any

from pyroute2.netlink import nla
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg
from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from fw_ebpf.conntrack import CtEntry, IPS_SEQ_ADJUST
from fw_ebpf.maps import Tuple
from fw_ebpf.links import AF_BRIDGE, ETH_P_8021Q, Link, RtEvent, is_up
from fw_ebpf import netlink as nl
from fw_ebpf.rtnl import Route, Rule


class ct_msg(nfct_msg):
    """nfct_msg with CTA_HELP decoded as the nested attribute the kernel sends."""

    nla_map = tuple(("CTA_HELP", "cta_help") if name == "CTA_HELP" else (name, kind)
                    for name, kind in nfct_msg.nla_map)

    class cta_help(nla):
        nla_map = (
            ("CTA_HELP_UNSPEC", "none"),
            ("CTA_HELP_NAME", "asciiz"),
            ("CTA_HELP_INFO", "hex"),
        )


def ct_tuple_attrs(t: Tuple) -> dict[str, Any]:
    v = "CTA_IP_V4" if t.saddr.version == 4 else "CTA_IP_V6"
    return {"attrs": [
        ["CTA_TUPLE_IP", {"attrs": [[v + "_SRC", str(t.saddr)], [v + "_DST", str(t.daddr)]]}],
        ["CTA_TUPLE_PROTO", {"attrs": [["CTA_PROTO_NUM", t.l4proto],
                                       ["CTA_PROTO_SRC_PORT", t.sport],
                                       ["CTA_PROTO_DST_PORT", t.dport]]}],
    ]}


def ct_encode(cmd: int, flags: int, seq: int, family: int, attrs: list[list[Any]]) -> bytes:
    """One ctnetlink message, encoded by pyroute2."""
    msg = ct_msg()
    msg["header"]["type"] = (1 << 8) | cmd     # NFNL_SUBSYS_CTNETLINK
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = seq
    msg["nfgen_family"] = family
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


def _attrs(node: Any) -> dict[str, Any]:
    return {a[0]: a[1] for a in node["attrs"]} if node is not None else {}


def _tuple(family: int, attr: Any) -> Tuple | None:
    t = _attrs(attr)
    ip, proto = _attrs(t.get("CTA_TUPLE_IP")), _attrs(t.get("CTA_TUPLE_PROTO"))
    if proto.get("CTA_PROTO_NUM") not in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
        return None
    v = "CTA_IP_V4" if family == socket.AF_INET else "CTA_IP_V6"
    return Tuple(proto["CTA_PROTO_NUM"], ipaddress.ip_address(ip[v + "_SRC"]),
                 ipaddress.ip_address(ip[v + "_DST"]), proto["CTA_PROTO_SRC_PORT"],
                 proto["CTA_PROTO_DST_PORT"])


def _counters(attr: Any) -> tuple[int, int]:
    c = _attrs(attr)
    return (c.get("CTA_COUNTERS_PACKETS", c.get("CTA_COUNTERS32_PACKETS", 0)),
            c.get("CTA_COUNTERS_BYTES", c.get("CTA_COUNTERS32_BYTES", 0)))


def ct_decode(message: bytes) -> CtEntry | None:
    """A CtEntry from one whole ctnetlink message (header included), decoded by pyroute2."""
    msg = ct_msg(message)
    msg.decode()
    family = msg["nfgen_family"]
    a = _attrs(msg)
    orig = _tuple(family, a.get("CTA_TUPLE_ORIG"))
    reply = _tuple(family, a.get("CTA_TUPLE_REPLY"))
    if orig is None or reply is None:
        return None
    tcp = _attrs(_attrs(a.get("CTA_PROTOINFO")).get("CTA_PROTOINFO_TCP"))
    status = a.get("CTA_STATUS", 0)
    po, bo = _counters(a.get("CTA_COUNTERS_ORIG"))
    pr, br = _counters(a.get("CTA_COUNTERS_REPLY"))
    return CtEntry(
        orig=orig, reply=reply, status=status, tcp_state=tcp.get("CTA_PROTOINFO_TCP_STATE"),
        timeout=a.get("CTA_TIMEOUT", 0), mark=a.get("CTA_MARK", 0), zone=a.get("CTA_ZONE", 0),
        id=a.get("CTA_ID", 0), helper=_attrs(a.get("CTA_HELP")).get("CTA_HELP_NAME") or None,
        seq_adjust=bool(status & IPS_SEQ_ADJUST) or "CTA_SEQ_ADJ_ORIG" in a
        or "CTA_SEQ_ADJ_REPLY" in a,
        packets=(po, pr), bytes=(bo, br))


# ---------------------------------------------------------------------------- rtnetlink

def _rt_decode(cls: type, message: bytes) -> Any:
    msg = cls(message)
    msg.decode()
    return msg


def _mac(text: str | None) -> bytes:
    return bytes.fromhex(text.replace(":", "")) if text else b""


def _nested(msg: Any, *names: str) -> Any:
    for name in names:
        if msg is None:
            return None
        msg = msg.get_attr(name)
    return msg


def link_ref(message: bytes) -> Link:
    """links.Link from one whole RTM_NEWLINK message, decoded by pyroute2."""
    msg = _rt_decode(ifinfmsg, message)
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
                kind=kind, mac=_mac(msg.get_attr("IFLA_ADDRESS")),
                mtu=msg.get_attr("IFLA_MTU") or 0, flags=msg["flags"],
                operstate=msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN",
                arptype=msg["ifi_type"], master=msg.get_attr("IFLA_MASTER") or 0, **extra)


def xdp_ids_ref(message: bytes) -> dict[str, int]:
    xdp = _rt_decode(ifinfmsg, message).get_attr("IFLA_XDP")
    if xdp is None:
        return {}
    ids = {"native": xdp.get_attr("IFLA_XDP_DRV_PROG_ID"),
           "generic": xdp.get_attr("IFLA_XDP_SKB_PROG_ID")}
    return {k: v for k, v in ids.items() if v}


def route_ref(message: bytes) -> Route:
    """rtnl.Route from one whole RTM_NEWROUTE message, decoded by pyroute2."""
    msg = _rt_decode(rtmsg, message)
    gw = msg.get_attr("RTA_GATEWAY")
    via = msg.get_attr("RTA_VIA")
    if not gw and via and isinstance(via, dict) and via.get("addr"):
        gw = via["addr"]
    metrics = msg.get_attr("RTA_METRICS")
    return Route(msg["family"], msg["type"], msg.get_attr("RTA_TABLE") or msg["table"],
                 msg.get_attr("RTA_OIF") or 0, ipaddress.ip_address(gw) if gw else None,
                 (metrics.get_attr("RTAX_MTU") or 0) if metrics is not None else 0)


def bpf_name_ref(message: bytes) -> str:
    """TCA_OPTIONS / TCA_BPF_NAME of a cls_bpf filter message."""
    return _rt_decode(tcmsg, message).get_attr("TCA_OPTIONS").get_attr("TCA_BPF_NAME")


def rules_ref(rt: Any, family: int) -> list[Rule]:
    """The rules of one family from the same kind of dump, decoded by pyroute2."""
    msgs = rt.request(34, bytes([family]) + bytes(11), "rule dump", "dump")   # RTM_GETRULE
    out = []
    for m in msgs:
        msg = _rt_decode(fibmsg, nl.message(m.type, m.flags, m.seq, m.data))
        out.append(Rule(msg["family"], msg.get_attr("FRA_PRIORITY") or 0,
                        msg.get_attr("FRA_FWMARK") or 0, msg.get_attr("FRA_FWMASK") or 0))
    return out


def tc_kind_ref(message: bytes) -> tuple[int, int, int, str]:
    """(ifindex, handle, parent, kind) of one whole RTM_NEWQDISC / RTM_NEWTFILTER message."""
    msg = _rt_decode(tcmsg, message)
    return msg["index"], msg["handle"], msg["parent"], msg.get_attr("TCA_KIND")


_EVENT_CLASSES = {16: ("link", ifinfmsg), 17: ("link", ifinfmsg), 20: ("addr", ifaddrmsg),
                  21: ("addr", ifaddrmsg), 24: ("route", rtmsg), 25: ("route", rtmsg),
                  28: ("neigh", ndmsg), 29: ("neigh", ndmsg), 32: ("rule", fibmsg),
                  33: ("rule", fibmsg)}


def _addr(text: str | None) -> Any:
    return ipaddress.ip_address(text) if text else None


def event_ref(mtype: int, message: bytes) -> RtEvent | None:
    """links.RtEvent from one whole rtnetlink notification, decoded by pyroute2."""
    if mtype not in _EVENT_CLASSES:
        return None
    kind, cls = _EVENT_CLASSES[mtype]
    msg = _rt_decode(cls, message)
    action = "del" if mtype & 1 else "new"
    if kind == "link":
        up = action == "new" and is_up(msg["flags"], msg.get_attr("IFLA_OPERSTATE"))
        return RtEvent("link", action, msg["index"], up=up)
    if kind == "neigh":
        lladdr = _mac(msg.get_attr("NDA_LLADDR")) or None
        if msg["family"] == AF_BRIDGE:
            return RtEvent("fdb", action, msg["ifindex"], lladdr=lladdr)
        return RtEvent("neigh", action, msg["ifindex"], _addr(msg.get_attr("NDA_DST")), lladdr)
    if kind == "route":
        return RtEvent("route", action, msg.get_attr("RTA_OIF") or 0,
                       _addr(msg.get_attr("RTA_DST")))
    if kind == "rule":
        return RtEvent("route", action, 0)
    return RtEvent("addr", action, msg["index"],
                   _addr(msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")))
