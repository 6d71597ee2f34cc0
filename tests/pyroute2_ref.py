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

from fw_ebpf.conntrack import CtEntry, IPS_SEQ_ADJUST
from fw_ebpf.maps import Tuple


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
