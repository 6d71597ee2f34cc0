# SPDX-License-Identifier: GPL-2.0-only
"""The daemon's view of netfilter conntrack over ctnetlink (lookup, refresh, delete, dump, events).

pyroute2 defines and decodes the ctnetlink messages; the sockets are plain non-blocking
netlink sockets owned here, because pyroute2 0.9's sockets run an asyncio loop that reads
only while a call is in progress (so multicast events sit unread until then) and that turns
ENOBUFS into a permanent error of the socket. Owning the socket gives the daemon a real
fileno() for its selector, an ENOBUFS it can resync on, and true batching for refresh.

Everything acts on the network namespace the sockets were opened in.
"""
from __future__ import annotations

import enum
import errno
import ipaddress
import logging
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Literal

from pyroute2.netlink import nla
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from fw_ebpf.maps import Tuple

log = logging.getLogger(__name__)

# linux/netlink.h, linux/netfilter/nfnetlink*.h
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
NLMSG_DONE = 3
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_UPDATE = 2
NFNLGRP_CONNTRACK_DESTROY = 3

# linux/netfilter/nf_conntrack_common.h
IPS_EXPECTED = 1 << 0
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_CONFIRMED = 1 << 3
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5
IPS_SEQ_ADJUST = 1 << 6
IPS_DYING = 1 << 9
IPS_HELPER = 1 << 13
IPS_OFFLOAD = 1 << 14
IPS_HW_OFFLOAD = 1 << 15

# linux/netfilter/nf_conntrack_tcp.h
TCP_CONNTRACK_SYN_SENT = 1
TCP_CONNTRACK_SYN_RECV = 2
TCP_CONNTRACK_ESTABLISHED = 3
TCP_CONNTRACK_FIN_WAIT = 4
TCP_CONNTRACK_CLOSE_WAIT = 5
TCP_CONNTRACK_LAST_ACK = 6
TCP_CONNTRACK_TIME_WAIT = 7
TCP_CONNTRACK_CLOSE = 8

IPPROTO_TCP = socket.IPPROTO_TCP
IPPROTO_UDP = socket.IPPROTO_UDP
_L4 = (IPPROTO_TCP, IPPROTO_UDP)

_TIMEOUT_SYSCTL = {
    IPPROTO_TCP: "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established",
    IPPROTO_UDP: "/proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream",
}

# Requests per sendmsg in refresh(): the kernel handles a whole buffer in our send call and
# queues one error per vanished entry, so a batch's errors must fit the receive buffer.
REFRESH_BATCH = 512
_ERROR_TRUESIZE = 2048   # generous kernel memory charge of one queued error message
_REQ_RCVBUF = 4 << 20
_EVENTS_RCVBUF = 8 << 20
_RECV_SIZE = 1 << 17


IP_CT_TCP_FLAG_BE_LIBERAL = 0x08
IP_CT_TCP_FLAG_MAXACK_SET = 0x20
NLA_F_NESTED = 1 << 15


class ConntrackError(Exception):
    """A ctnetlink failure with a one-line message a user can act on."""

    def __init__(self, message: str, err: int = 0) -> None:
        super().__init__(message)
        self.errno = err


class EventsLost(ConntrackError):
    """The kernel dropped conntrack events (socket overrun): resync with Conntrack.dump()."""


class Direction(enum.Enum):
    ORIGINAL = 0
    REPLY = 1


def _reverse(t: Tuple) -> Tuple:
    return Tuple(t.l4proto, t.daddr, t.saddr, t.dport, t.sport)


@dataclass(frozen=True)
class CtEntry:
    """One conntrack entry; fields the kernel left out (DESTROY events) hold neutral values."""

    orig: Tuple
    reply: Tuple
    status: int = 0
    tcp_state: int | None = None
    timeout: int = 0
    mark: int = 0
    zone: int = 0
    id: int = 0
    helper: str | None = None
    seq_adjust: bool = False
    packets: tuple[int, int] = (0, 0)
    bytes: tuple[int, int] = (0, 0)

    @property
    def nat(self) -> bool:
        return self.orig != _reverse(self.reply)

    def ingress(self, direction: Direction) -> Tuple:
        """The tuple a packet of this direction carries when it reaches the router."""
        return self.orig if direction is Direction.ORIGINAL else self.reply

    def egress(self, direction: Direction) -> Tuple:
        """The tuple a packet of this direction carries when it leaves, after NAT."""
        return _reverse(self.reply if direction is Direction.ORIGINAL else self.orig)

    @property
    def closing(self) -> bool:
        """Past ESTABLISHED (FIN, RST seen) or on its way out: it never becomes eligible."""
        return bool(self.status & IPS_DYING) or (self.orig.l4proto == IPPROTO_TCP and
                                                   (self.tcp_state or 0) > TCP_CONNTRACK_ESTABLISHED)

    def ineligible_reason(self) -> str | None:
        """None when the fast path may carry this entry, else why not (DESIGN.md, control path)."""
        if self.status & IPS_DYING:
            return "dying"
        if not self.status & IPS_CONFIRMED:
            return "unconfirmed"
        if self.status & (IPS_OFFLOAD | IPS_HW_OFFLOAD):
            return "in nft flowtable"
        if self.helper:
            return f"helper {self.helper}"
        if self.status & IPS_HELPER:
            return "helper"
        if self.seq_adjust or self.status & IPS_SEQ_ADJUST:
            return "seq adjust"
        if self.orig.l4proto == IPPROTO_TCP:
            if self.tcp_state != TCP_CONNTRACK_ESTABLISHED:
                return "tcp not established"
            if not self.status & IPS_ASSURED:
                return "not assured"
        elif self.orig.l4proto != IPPROTO_UDP:
            return "not tcp/udp"
        return None


@dataclass(frozen=True)
class CtEvent:
    kind: Literal["new", "update", "destroy"]
    entry: CtEntry


class _ct_msg(nfct_msg):
    """nfct_msg with CTA_HELP decoded as the nested attribute the kernel sends."""

    nla_map = tuple(("CTA_HELP", "cta_help") if name == "CTA_HELP" else (name, kind)
                    for name, kind in nfct_msg.nla_map)

    class cta_help(nla):
        nla_map = (
            ("CTA_HELP_UNSPEC", "none"),
            ("CTA_HELP_NAME", "asciiz"),
            ("CTA_HELP_INFO", "hex"),
        )


def _family(t: Tuple) -> int:
    return socket.AF_INET if t.saddr.version == 4 else socket.AF_INET6


def _tuple_attrs(t: Tuple) -> dict[str, Any]:
    v = "CTA_IP_V4" if t.saddr.version == 4 else "CTA_IP_V6"
    return {"attrs": [
        ["CTA_TUPLE_IP", {"attrs": [[v + "_SRC", str(t.saddr)], [v + "_DST", str(t.daddr)]]}],
        ["CTA_TUPLE_PROTO", {"attrs": [["CTA_PROTO_NUM", t.l4proto],
                                       ["CTA_PROTO_SRC_PORT", t.sport],
                                       ["CTA_PROTO_DST_PORT", t.dport]]}],
    ]}


def encode_request(cmd: int, flags: int, seq: int, family: int,
                   attrs: list[list[Any]]) -> bytes:
    """One ctnetlink request, encoded by pyroute2."""
    msg = _ct_msg()
    msg["header"]["type"] = (NFNL_SUBSYS_CTNETLINK << 8) | cmd
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = seq
    msg["nfgen_family"] = family
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


def _nla(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + bytes(-len(payload) % 4)


def _orig_tuple_nla(t: Tuple) -> bytes:
    if t.saddr.version == 4:
        ip = _nla(1, t.saddr.packed) + _nla(2, t.daddr.packed)
    else:
        ip = _nla(3, t.saddr.packed) + _nla(4, t.daddr.packed)
    proto = (_nla(1, struct.pack("B", t.l4proto)) + _nla(2, struct.pack("!H", t.sport))
             + _nla(3, struct.pack("!H", t.dport)))
    return _nla(1, _nla(1, ip) + _nla(2, proto))          # CTA_TUPLE_ORIG


def _update(seq: int, flags: int, t: Tuple, attrs: bytes) -> bytes:
    body = struct.pack("=BBH", _family(t), 0, 0) + _orig_tuple_nla(t) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW,
                       flags, seq, 0) + body


def encode_refresh(seq: int, flags: int, t: Tuple, timeout: int) -> bytes:
    """CT_NEW(orig tuple, timeout) without NLM_F_CREATE: an update of an existing entry.

    Hand-packed because pyroute2 takes ~110 us per message, which is most of a 10k refresh;
    tests check it byte for byte against encode_request(), so the two cannot drift.
    """
    return _update(seq, flags, t, _nla(7, struct.pack("!I", timeout)))   # CTA_TIMEOUT


def encode_liberal(seq: int, flags: int, t: Tuple) -> bytes:
    """CT_NEW(orig tuple, TCP flags BE_LIBERAL in both directions), as nft flow offload does.

    Packets the fast path carries never reach conntrack, so its TCP window goes stale: the
    closing FIN would be out of window (INVALID, dropped by fw4's NAT-leak rule), and a RST
    would not match the last ACK conntrack saw and be taken for an injection attempt (the
    entry stays ESTABLISHED). Clearing MAXACK_SET makes conntrack accept the real one.
    """
    liberal = struct.pack("BBxx", IP_CT_TCP_FLAG_BE_LIBERAL,
                          IP_CT_TCP_FLAG_BE_LIBERAL | IP_CT_TCP_FLAG_MAXACK_SET)
    tcp = _nla(4, liberal[:2]) + _nla(5, liberal[:2])     # CTA_PROTOINFO_TCP_FLAGS_ORIG/REPLY
    return _update(seq, flags, t, _nla(4 | NLA_F_NESTED, _nla(1 | NLA_F_NESTED, tcp)))


def _attrs(node: Any) -> dict[str, Any]:
    """A decoded message's or nested attribute's attributes by name, in one pass.

    pyroute2's get_attr() scans the whole list on every call; this is ~2x faster per entry.
    """
    return {a[0]: a[1] for a in node["attrs"]} if node is not None else {}


def _decode_tuple(family: int, attr: Any) -> Tuple | None:
    t = _attrs(attr)
    ip, proto = _attrs(t.get("CTA_TUPLE_IP")), _attrs(t.get("CTA_TUPLE_PROTO"))
    l4proto = proto.get("CTA_PROTO_NUM")
    if l4proto not in _L4:
        return None
    v = "CTA_IP_V4" if family == socket.AF_INET else "CTA_IP_V6"
    saddr, daddr = ip.get(v + "_SRC"), ip.get(v + "_DST")
    sport, dport = proto.get("CTA_PROTO_SRC_PORT"), proto.get("CTA_PROTO_DST_PORT")
    if saddr is None or daddr is None or sport is None or dport is None:
        return None
    return Tuple(l4proto, ipaddress.ip_address(saddr), ipaddress.ip_address(daddr), sport, dport)


def _counters(attr: Any) -> tuple[int, int]:
    c = _attrs(attr)
    return (c.get("CTA_COUNTERS_PACKETS", c.get("CTA_COUNTERS32_PACKETS", 0)),
            c.get("CTA_COUNTERS_BYTES", c.get("CTA_COUNTERS32_BYTES", 0)))


def decode_entry(msg: nfct_msg) -> CtEntry | None:
    """A CtEntry from a decoded ctnetlink message; None for non-TCP/UDP or tuple-less messages."""
    family = msg["nfgen_family"]
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    a = _attrs(msg)
    orig = _decode_tuple(family, a.get("CTA_TUPLE_ORIG"))
    reply = _decode_tuple(family, a.get("CTA_TUPLE_REPLY"))
    if orig is None or reply is None:
        return None
    tcp = _attrs(_attrs(a.get("CTA_PROTOINFO")).get("CTA_PROTOINFO_TCP"))
    status = a.get("CTA_STATUS", 0)
    packets_orig, bytes_orig = _counters(a.get("CTA_COUNTERS_ORIG"))
    packets_reply, bytes_reply = _counters(a.get("CTA_COUNTERS_REPLY"))
    return CtEntry(
        orig=orig, reply=reply, status=status, tcp_state=tcp.get("CTA_PROTOINFO_TCP_STATE"),
        timeout=a.get("CTA_TIMEOUT", 0), mark=a.get("CTA_MARK", 0), zone=a.get("CTA_ZONE", 0),
        id=a.get("CTA_ID", 0), helper=_attrs(a.get("CTA_HELP")).get("CTA_HELP_NAME") or None,
        seq_adjust=bool(status & IPS_SEQ_ADJUST) or "CTA_SEQ_ADJ_ORIG" in a
        or "CTA_SEQ_ADJ_REPLY" in a,
        packets=(packets_orig, packets_reply), bytes=(bytes_orig, bytes_reply),
    )


@dataclass(frozen=True)
class _Message:
    """One netlink message out of a datagram: a ctnetlink payload, an error/ack, or DONE."""

    type: int
    flags: int
    seq: int
    error: int | None = None     # NLMSG_ERROR: 0 = ack, else a positive errno
    data: bytes = b""


def _split(buf: bytes) -> Iterator[_Message]:
    offset = 0
    while offset + 16 <= len(buf):
        length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", buf, offset)
        if length < 16 or offset + length > len(buf):
            break
        if mtype == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", buf, offset + 16)
            # with NETLINK_CAP_ACK the error carries the request's header: its seq tells which
            (req_seq,) = struct.unpack_from("=I", buf, offset + 28)
            yield _Message(mtype, flags, req_seq, -code)
        else:
            yield _Message(mtype, flags, seq, data=buf[offset:offset + length])
        offset += (length + 3) & ~3


def _ct_error(err: int, what: str) -> ConntrackError:
    if err == errno.EOPNOTSUPP:
        return ConntrackError("nf_conntrack_netlink is not loaded (modprobe nf_conntrack_netlink)",
                              err)
    if err == errno.EPERM:
        return ConntrackError("ctnetlink needs CAP_NET_ADMIN: run ebpfw as root", err)
    return ConntrackError(f"conntrack {what}: {os.strerror(err)}", err)


def _open(groups: int, rcvbuf: int, blocking: bool) -> socket.socket:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_NETFILTER)
    except OSError as e:
        raise ConntrackError(f"netfilter netlink is not available: {e.strerror}") from None
    try:
        try:   # root may exceed net.core.rmem_max, which is small on routers
            sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)   # SO_RCVBUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        sock.bind((0, groups))
        if blocking:
            sock.settimeout(10)
        else:
            sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise _ct_error(e.errno or 0, "socket") from None
    return sock


class Conntrack:
    """Requests to the conntrack table of the netns this object was created in."""

    def __init__(self) -> None:
        self._sock = _open(0, _REQ_RCVBUF, blocking=True)
        self._seq = 0
        rcvbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self._batch = max(16, min(REFRESH_BATCH, rcvbuf // _ERROR_TRUESIZE))

    def __enter__(self) -> Conntrack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def _next_seq(self, n: int = 1) -> int:
        first = (self._seq + 1) & 0x7FFFFFFF
        self._seq = (self._seq + n) & 0x7FFFFFFF
        return first

    def _send(self, data: bytes) -> None:
        try:
            self._sock.send(data)
        except OSError as e:
            raise _ct_error(e.errno or 0, "send") from None

    def _recv(self) -> Iterator[_Message]:
        try:
            buf = self._sock.recv(_RECV_SIZE)
        except TimeoutError:
            raise ConntrackError("conntrack: no answer from the kernel within 10s") from None
        except OSError as e:
            raise _ct_error(e.errno or 0, "receive") from None
        return _split(buf)

    def _request(self, cmd: int, flags: int, family: int, attrs: list[list[Any]],
                 what: str) -> Iterator[_Message]:
        """Send one request; yield its answers until the ack, DONE or an error (raised)."""
        seq = self._next_seq()
        self._send(encode_request(cmd, NLM_F_REQUEST | flags, seq, family, attrs))
        while True:
            for m in self._recv():
                if m.seq != seq:
                    continue   # left over from an abandoned request
                if m.type == NLMSG_DONE:
                    return
                if m.type == NLMSG_ERROR:
                    if m.error:
                        raise _ct_error(m.error, what)
                    return
                yield m
                if not m.flags & NLM_F_MULTI and not flags & NLM_F_ACK:
                    return

    def get(self, orig: Tuple) -> CtEntry | None:
        """The entry with this original tuple (the kernel also matches it as a reply tuple)."""
        try:
            answers = list(self._request(IPCTNL_MSG_CT_GET, NLM_F_ACK, _family(orig),
                                         [["CTA_TUPLE_ORIG", _tuple_attrs(orig)]], "get"))
        except ConntrackError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        for m in answers:
            msg = _ct_msg(m.data)
            msg.decode()
            return decode_entry(msg)
        return None

    def lookup(self, t: Tuple) -> tuple[CtEntry, Direction] | None:
        """The entry a packet with tuple t belongs to, and which direction t is.

        One GET is enough: the kernel looks the tuple up in its hash, which holds both the
        original and the reply tuple of every entry, so a reply tuple finds its entry too.
        """
        entry = self.get(t)
        if entry is None:
            return None
        if t == entry.orig:
            return entry, Direction.ORIGINAL
        if t == entry.reply:
            return entry, Direction.REPLY
        return None

    def delete(self, orig: Tuple) -> bool:
        """Remove the entry with this original tuple; False when there was none."""
        try:
            for _ in self._request(IPCTNL_MSG_CT_DELETE, NLM_F_ACK, _family(orig),
                                   [["CTA_TUPLE_ORIG", _tuple_attrs(orig)]], "delete"):
                pass
        except ConntrackError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def dump(self, family: int | None = None) -> Iterator[CtEntry]:
        """Every TCP/UDP entry (of one address family if given: socket.AF_INET/AF_INET6)."""
        answers = self._request(IPCTNL_MSG_CT_GET, NLM_F_DUMP, family or socket.AF_UNSPEC, [],
                                "dump")
        try:
            for m in answers:
                msg = _ct_msg(m.data)
                msg.decode()
                entry = decode_entry(msg)
                if entry is not None:
                    yield entry
        finally:
            for _ in answers:   # a caller that stops early must not leave the dump queued
                pass

    def refresh(self, entries: Iterable[Tuple], timeout: int | Callable[[Tuple], int]) -> int:
        """Set the timeout (seconds) of the entries with these original tuples.

        Requests go up to REFRESH_BATCH to a sendmsg; only the last of a batch asks for an ack, so
        the kernel answers just that one plus an error for each entry that vanished (skipped).
        Returns how many entries were refreshed. Every refresh also makes the kernel send an
        UPDATE event to conntrack listeners.
        """
        if callable(timeout):
            timeout_of = timeout
        else:
            fixed = timeout
            timeout_of = lambda _t: fixed   # noqa: E731
        batch: list[Tuple] = []
        done = 0
        for t in entries:
            batch.append(t)
            if len(batch) == self._batch:
                done += self._refresh_batch(batch, timeout_of)
                batch = []
        if batch:
            done += self._refresh_batch(batch, timeout_of)
        return done

    def _refresh_batch(self, batch: list[Tuple], timeout_of: Callable[[Tuple], int]) -> int:
        first = self._next_seq(len(batch))
        last = (first + len(batch) - 1) & 0x7FFFFFFF
        data = b"".join(
            encode_refresh((first + i) & 0x7FFFFFFF,
                           NLM_F_REQUEST | (NLM_F_ACK if i == len(batch) - 1 else 0),
                           t, timeout_of(t))
            for i, t in enumerate(batch))
        self._send(data)
        failed = 0
        while True:
            for m in self._recv():
                if m.type != NLMSG_ERROR or not _seq_in(m.seq, first, last):
                    continue
                if m.error:
                    failed += 1
                    if m.error not in (errno.ENOENT, errno.ETIME):   # ETIME: entry is dying
                        if m.error in (errno.EOPNOTSUPP, errno.EPERM):
                            raise _ct_error(m.error, "refresh")
                        log.warning("conntrack refresh: %s", os.strerror(m.error))
                if m.seq == last:
                    return len(batch) - failed

    def set_liberal(self, orig: Tuple) -> bool:
        """Stop TCP window checks on an entry the fast path is about to carry."""
        seq = self._next_seq()
        self._send(encode_liberal(seq, NLM_F_REQUEST | NLM_F_ACK, orig))
        while True:
            for m in self._recv():
                if m.type == NLMSG_ERROR and m.seq == seq:
                    if m.error and m.error not in (errno.ENOENT, errno.ETIME):
                        raise _ct_error(m.error, "set liberal")
                    return not m.error

    @staticmethod
    def established_timeout(l4proto: int) -> int:
        """The kernel's timeout for an established TCP / a UDP stream entry, in seconds."""
        path = _TIMEOUT_SYSCTL.get(l4proto)
        if path is None:
            raise ValueError(f"no established timeout for IP protocol {l4proto}")
        try:
            with open(path) as f:
                return int(f.read())
        except OSError as e:
            raise ConntrackError(f"{path}: {e.strerror} (is nf_conntrack loaded?)") from None


def _seq_in(seq: int, first: int, last: int) -> bool:
    return first <= seq <= last if first <= last else seq >= first or seq <= last


_KINDS = {"new": NFNLGRP_CONNTRACK_NEW, "update": NFNLGRP_CONNTRACK_UPDATE,
          "destroy": NFNLGRP_CONNTRACK_DESTROY}


class ConntrackEvents:
    """Conntrack NEW/UPDATE/DESTROY events of the netns this object was created in.

    Joining the groups happens in bind() with the group bitmask (group n is bit n-1); the
    socket is non-blocking, so fileno() can go into the daemon's selector and read() never
    waits. Only TCP/UDP entries are reported. A flush (conntrack -F) arrives as one DESTROY
    per entry.
    """

    def __init__(self, kinds: Iterable[str] = ("new", "update", "destroy"),
                 rcvbuf: int = _EVENTS_RCVBUF) -> None:
        groups = 0
        for kind in kinds:
            groups |= 1 << (_KINDS[kind] - 1)
        self._sock = _open(groups, rcvbuf, blocking=False)

    def __enter__(self) -> ConntrackEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def read(self, max_events: int = 4096) -> list[CtEvent]:
        """The events queued now (up to about max_events); raises EventsLost after an overrun.

        Some events are gone then: the caller must resync from a dump. What was still queued
        is dropped before raising, so later reads only bring events newer than that dump.
        """
        events: list[CtEvent] = []
        while len(events) < max_events:
            try:
                buf = self._sock.recv(_RECV_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self._drain()
                    raise EventsLost("conntrack events lost (socket overrun): resync needed") \
                        from None
                raise _ct_error(e.errno or 0, "events") from None
            for m in _split(buf):
                if m.type >> 8 != NFNL_SUBSYS_CTNETLINK:
                    continue
                cmd = m.type & 0xFF
                if cmd == IPCTNL_MSG_CT_DELETE:
                    kind: Literal["new", "update", "destroy"] = "destroy"
                elif cmd == IPCTNL_MSG_CT_NEW:
                    kind = "new" if m.flags & (NLM_F_CREATE | NLM_F_EXCL) else "update"
                else:
                    continue
                msg = _ct_msg(m.data)
                msg.decode()
                entry = decode_entry(msg)
                if entry is not None:
                    events.append(CtEvent(kind, entry))
        return events

    def _drain(self) -> None:
        for _ in range(100_000):   # bounded: a busy router may never leave it empty
            try:
                self._sock.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    return
