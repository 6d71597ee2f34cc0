# SPDX-License-Identifier: GPL-2.0-only
"""The daemon's view of netfilter conntrack over ctnetlink (lookup, refresh, delete, dump, events).

Messages are encoded and decoded here by hand (fw_ebpf.netlink does the framing): only the
attributes the daemon reads are decoded, at a few microseconds per entry. Sockets are
non-blocking where the daemon selects on them; an event overrun raises EventsLost so the daemon
can resync from a dump.

Everything acts on the network namespace the sockets were opened in.
"""
from __future__ import annotations

import enum
import errno
import logging
import socket
import struct
from typing import Callable, Iterable, Iterator, Literal, NamedTuple, Sequence

from fw_ebpf import maps
from fw_ebpf import netlink as nl
from fw_ebpf.maps import Tuple, as_id, id_tuple, reverse_id
from fw_ebpf.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_ERROR

log = logging.getLogger(__name__)

# linux/netfilter/nfnetlink*.h
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_UPDATE = 2
NFNLGRP_CONNTRACK_DESTROY = 3
_CT_NEW = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW
_CT_GET = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
_CT_DELETE = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE

# linux/netfilter/nfnetlink_conntrack.h: enum ctattr_type and its nested enums
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO, CTA_HELP = 1, 2, 3, 4, 5
CTA_TIMEOUT, CTA_MARK, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY = 7, 8, 9, 10
CTA_ID, CTA_SEQ_ADJ_ORIG, CTA_SEQ_ADJ_REPLY, CTA_ZONE = 12, 15, 16, 18
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE, CTA_PROTOINFO_TCP_FLAGS_ORIG, CTA_PROTOINFO_TCP_FLAGS_REPLY = 1, 4, 5
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES, CTA_COUNTERS32_PACKETS, CTA_COUNTERS32_BYTES = 1, 2, 3, 4
CTA_HELP_NAME = 1

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
IP_CT_TCP_FLAG_BE_LIBERAL = 0x08
IP_CT_TCP_FLAG_MAXACK_SET = 0x20

IPPROTO_TCP = socket.IPPROTO_TCP
IPPROTO_UDP = socket.IPPROTO_UDP
_L4 = (IPPROTO_TCP, IPPROTO_UDP)

_SYSCTL_DIR = "/proc/sys/net/netfilter"
_TIMEOUT_SYSCTL = {
    IPPROTO_TCP: f"{_SYSCTL_DIR}/nf_conntrack_tcp_timeout_established",
    IPPROTO_UDP: f"{_SYSCTL_DIR}/nf_conntrack_udp_timeout_stream",
}
_CLOSING_STATES = {TCP_CONNTRACK_FIN_WAIT: "fin_wait", TCP_CONNTRACK_CLOSE_WAIT: "close_wait",
                   TCP_CONNTRACK_LAST_ACK: "last_ack", TCP_CONNTRACK_TIME_WAIT: "time_wait",
                   TCP_CONNTRACK_CLOSE: "close"}

# Requests per sendmsg: the kernel handles a whole buffer in our send call and queues every
# answer at once, so a batch's answers must fit the receive buffer. Kernel memory charged per
# queued message, generously: an error (refresh of a vanished entry) / an entry plus its ack.
REFRESH_BATCH = 512
LOOKUP_BATCH = 256
_ERROR_TRUESIZE = 2048
_ANSWER_TRUESIZE = 4096
_REQ_RCVBUF = 4 << 20
_EVENTS_RCVBUF = 8 << 20


class ConntrackError(nl.NetlinkError):
    """A ctnetlink failure with a one-line message a user can act on."""


class EventsLost(ConntrackError, nl.EventsLost):
    """The kernel dropped conntrack events (socket overrun): resync with Conntrack.dump()."""


class Direction(enum.Enum):
    ORIGINAL = 0
    REPLY = 1


TupleLike = Tuple | bytes    # a Tuple, or packed as a maps.tuple_id (what the daemon keeps)


class CtEntry:
    """One conntrack entry; fields the kernel left out (DESTROY events) hold neutral values.

    Its tuples are kept packed (orig_id, reply_id: maps.tuple_id), as the daemon uses them;
    orig and reply build Tuples of them when asked (to show them)."""

    __slots__ = ("orig_id", "reply_id", "status", "tcp_state", "timeout", "mark", "zone", "id",
                 "helper", "seq_adjust", "packets", "bytes")

    def __init__(self, orig: TupleLike, reply: TupleLike, status: int = 0,
                 tcp_state: int | None = None, timeout: int = 0, mark: int = 0, zone: int = 0,
                 id: int = 0, helper: str | None = None, seq_adjust: bool = False,
                 packets: tuple[int, int] = (0, 0), bytes: tuple[int, int] = (0, 0)) -> None:
        self.orig_id, self.reply_id = as_id(orig), as_id(reply)
        self.status, self.tcp_state, self.timeout = status, tcp_state, timeout
        self.mark, self.zone, self.id, self.helper = mark, zone, id, helper
        self.seq_adjust, self.packets, self.bytes = seq_adjust, packets, bytes

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CtEntry) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"CtEntry(orig={self.orig}, reply={self.reply}, status={self.status:#x}, "
                f"tcp_state={self.tcp_state}, timeout={self.timeout}, helper={self.helper})")

    @property
    def orig(self) -> Tuple:
        return id_tuple(self.orig_id)

    @property
    def reply(self) -> Tuple:
        return id_tuple(self.reply_id)

    @property
    def l4proto(self) -> int:
        return maps.id_l4proto(self.orig_id)

    @property
    def nat(self) -> bool:
        return self.orig_id != reverse_id(self.reply_id)

    def ingress_id(self, direction: Direction) -> bytes:
        """The tuple a packet of this direction carries when it reaches the router."""
        return self.orig_id if direction is Direction.ORIGINAL else self.reply_id

    def egress_id(self, direction: Direction) -> bytes:
        """The tuple a packet of this direction carries when it leaves, after NAT."""
        return reverse_id(self.reply_id if direction is Direction.ORIGINAL else self.orig_id)

    def ingress(self, direction: Direction) -> Tuple:
        return id_tuple(self.ingress_id(direction))

    def egress(self, direction: Direction) -> Tuple:
        return id_tuple(self.egress_id(direction))

    @property
    def closing(self) -> bool:
        """Past ESTABLISHED (FIN, RST seen) or on its way out: it never becomes eligible."""
        return bool(self.status & IPS_DYING) or (self.l4proto == IPPROTO_TCP and
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
        l4proto = self.l4proto
        if l4proto == IPPROTO_TCP:
            if self.tcp_state != TCP_CONNTRACK_ESTABLISHED:
                return "tcp not established"
            if not self.status & IPS_ASSURED:
                return "not assured"
        elif l4proto != IPPROTO_UDP:
            return "not tcp/udp"
        return None


class CtEvent(NamedTuple):
    kind: Literal["new", "update", "destroy"]
    entry: CtEntry


def _family(tid: bytes) -> int:
    return socket.AF_INET if len(tid) == maps.KEY4_LEN else socket.AF_INET6


# ---------------------------------------------------------------------------- tuples

class _TupleLayout:
    """A CTA_TUPLE_* payload of one address family in the order the kernel writes it
    (ctnetlink_dump_tuples): the IP nest with source then destination, the proto nest with
    number, source port, destination port. Packed and unpacked whole, straight from and to a
    maps.tuple_id, that is ~3x faster than walking the attributes; a tuple laid out otherwise
    (e.g. with a zone) takes the walk."""

    def __init__(self, alen: int, src: int, dst: int) -> None:
        ip_len = 4 + 2 * (4 + alen)
        self.size = ip_len + 28
        self.alen, self.src, self.dst = alen, src, dst
        proto = "HHB3xHH2s2xHH2s2x"
        self.full = struct.Struct(f"=HHHH{alen}sHH{alen}sHH{proto}")
        self.values = struct.Struct(f"=8x{alen}s4x{alen}s8xB7x2s6x2s2x")
        self.headers = struct.Struct(f"=HHHH{alen}xHH{alen}xHHHH4xHH4xHH4x")
        # a tuple_id: device fields (zero), l4proto, sport, dport, saddr, daddr
        self.ids = struct.Struct(f"=11xB2s2s{alen}s{alen}s")
        # the headers as the kernel writes them, nests with or without NLA_F_NESTED
        self.expect = {(ip_len, CTA_TUPLE_IP | flag, 4 + alen, src, 4 + alen, dst,
                        28, CTA_TUPLE_PROTO | flag, 5, CTA_PROTO_NUM, 6, CTA_PROTO_SRC_PORT,
                        6, CTA_PROTO_DST_PORT) for flag in (0, nl.NLA_F_NESTED)}
        self.head_args = (ip_len, CTA_TUPLE_IP, 4 + alen, src)
        self.dst_args = (4 + alen, dst, 28, CTA_TUPLE_PROTO, 5, CTA_PROTO_NUM)

    def pack(self, tid: bytes) -> bytes:
        num, sport, dport, saddr, daddr = self.ids.unpack(tid)
        return self.full.pack(*self.head_args, saddr, *self.dst_args[:2], daddr,
                              *self.dst_args[2:], num, 6, CTA_PROTO_SRC_PORT, sport, 6,
                              CTA_PROTO_DST_PORT, dport)

    def unpack(self, data: bytes) -> bytes | None:
        """The tuple_id if data is laid out as expected, else None (take the attribute walk)."""
        if len(data) != self.size or self.headers.unpack_from(data) not in self.expect:
            return None
        saddr, daddr, num, sport, dport = self.values.unpack_from(data)
        if num not in _L4:
            return None
        return self.ids.pack(num, sport, dport, saddr, daddr)


_LAYOUT: dict[int, _TupleLayout] = {socket.AF_INET: _TupleLayout(4, CTA_IP_V4_SRC, CTA_IP_V4_DST),
           socket.AF_INET6: _TupleLayout(16, CTA_IP_V6_SRC, CTA_IP_V6_DST)}


def tuple_nla(t: TupleLike, kind: int = CTA_TUPLE_ORIG) -> bytes:
    """A CTA_TUPLE_ORIG / _REPLY attribute for t."""
    tid = as_id(t)
    payload = _LAYOUT[_family(tid)].pack(tid)
    return struct.pack("=HH", 4 + len(payload), kind) + payload


def _decode_tuple(family: int, data: bytes | None) -> bytes | None:
    """The tuple_id of a CTA_TUPLE_* payload; None if it is not a TCP/UDP tuple."""
    if data is None:
        return None
    layout = _LAYOUT[family]
    fast = layout.unpack(data)
    if fast is not None:
        return fast
    t = nl.attrs(data)
    ip, proto = t.get(CTA_TUPLE_IP), t.get(CTA_TUPLE_PROTO)
    if ip is None or proto is None:
        return None
    p = nl.attrs(proto)
    num, sport, dport = p.get(CTA_PROTO_NUM), p.get(CTA_PROTO_SRC_PORT), p.get(CTA_PROTO_DST_PORT)
    if not num or num[0] not in _L4 or sport is None or dport is None:
        return None
    a = nl.attrs(ip)
    saddr, daddr = a.get(layout.src), a.get(layout.dst)
    if saddr is None or daddr is None or len(saddr) != layout.alen or \
            len(daddr) != layout.alen or len(sport) != 2 or len(dport) != 2:
        return None
    return layout.ids.pack(num[0], sport, dport, saddr, daddr)


# ---------------------------------------------------------------------------- encoding

_NFGENMSG = {family: struct.pack("=BBH", family, 0, 0) for family in _LAYOUT}


def _body(t: TupleLike, attrs: bytes = b"") -> bytes:
    """nfgenmsg (family, version 0, res_id 0) + the original tuple + attrs."""
    tid = as_id(t)
    return _NFGENMSG[_family(tid)] + tuple_nla(tid) + attrs


def encode_refresh(seq: int, flags: int, t: TupleLike, timeout: int) -> bytes:
    """CT_NEW(orig tuple, timeout) without NLM_F_CREATE: an update of an existing entry."""
    return nl.message(_CT_NEW, flags, seq, _body(t, nl.attr(CTA_TIMEOUT, nl.be32(timeout))))


def _liberal_attrs() -> bytes:
    flags = struct.pack("BB", IP_CT_TCP_FLAG_BE_LIBERAL,
                        IP_CT_TCP_FLAG_BE_LIBERAL | IP_CT_TCP_FLAG_MAXACK_SET)
    return nl.nested(CTA_PROTOINFO, nl.nested(
        CTA_PROTOINFO_TCP, nl.attr(CTA_PROTOINFO_TCP_FLAGS_ORIG, flags),
        nl.attr(CTA_PROTOINFO_TCP_FLAGS_REPLY, flags)))


_LIBERAL = _liberal_attrs()


def encode_liberal(seq: int, flags: int, t: TupleLike) -> bytes:
    """CT_NEW(orig tuple, TCP flags BE_LIBERAL in both directions), as nft flow offload does.

    Packets the fast path carries never reach conntrack, so its TCP window goes stale: the
    closing FIN would be out of window (INVALID, dropped by fw4's NAT-leak rule), and a RST
    would not match the last ACK conntrack saw and be taken for an injection attempt (the
    entry stays ESTABLISHED). Clearing MAXACK_SET makes conntrack accept the real one.
    """
    return nl.message(_CT_NEW, flags, seq, _body(t, _LIBERAL))


# ---------------------------------------------------------------------------- entries

_COUNTERS64 = struct.Struct("=HH8sHH8s")
_COUNTERS64_HEADERS = (12, CTA_COUNTERS_PACKETS, 12, CTA_COUNTERS_BYTES)


def _counters(data: bytes | None) -> tuple[int, int]:
    if data is None:
        return 0, 0
    if len(data) == _COUNTERS64.size:   # as the kernel writes them: be64 packets, be64 bytes
        lp, tp, packets, lb, tb, octets = _COUNTERS64.unpack(data)
        if (lp, tp & nl.NLA_TYPE_MASK, lb, tb & nl.NLA_TYPE_MASK) == _COUNTERS64_HEADERS:
            return int.from_bytes(packets, "big"), int.from_bytes(octets, "big")
    c = nl.attrs(data)
    packets = c.get(CTA_COUNTERS_PACKETS, c.get(CTA_COUNTERS32_PACKETS))
    octets = c.get(CTA_COUNTERS_BYTES, c.get(CTA_COUNTERS32_BYTES))
    return nl.get_be(packets), nl.get_be(octets)


def decode_entry(data: bytes) -> CtEntry | None:
    """A CtEntry from a ctnetlink message's payload (nfgenmsg + attributes); None for
    non-TCP/UDP entries and messages without both tuples."""
    family = data[0] if data else 0
    if family not in _LAYOUT:
        return None
    a = nl.attrs(data, 4)
    orig = _decode_tuple(family, a.get(CTA_TUPLE_ORIG))
    reply = _decode_tuple(family, a.get(CTA_TUPLE_REPLY))
    if orig is None or reply is None:
        return None
    tcp_state = None
    info = a.get(CTA_PROTOINFO)
    if info is not None:
        tcp = nl.attrs(info).get(CTA_PROTOINFO_TCP)
        if tcp is not None:
            state = nl.attrs(tcp).get(CTA_PROTOINFO_TCP_STATE)
            tcp_state = state[0] if state else None
    helper = a.get(CTA_HELP)
    status = nl.get_be(a.get(CTA_STATUS))
    packets_orig, bytes_orig = _counters(a.get(CTA_COUNTERS_ORIG))
    packets_reply, bytes_reply = _counters(a.get(CTA_COUNTERS_REPLY))
    return CtEntry(
        orig, reply, status, tcp_state, nl.get_be(a.get(CTA_TIMEOUT)),
        nl.get_be(a.get(CTA_MARK)), nl.get_be(a.get(CTA_ZONE)), nl.get_be(a.get(CTA_ID)),
        (nl.get_str(nl.attrs(helper).get(CTA_HELP_NAME)) or None) if helper else None,
        bool(status & IPS_SEQ_ADJUST) or CTA_SEQ_ADJ_ORIG in a or CTA_SEQ_ADJ_REPLY in a,
        (packets_orig, packets_reply), (bytes_orig, bytes_reply))


_NLA = struct.Struct("=HH")


def decode_tuples(data: bytes) -> CtEntry | None:
    """decode_entry() of the tuples alone (every other field neutral), for events whose
    reader only needs to know which connection changed: the attributes are read only up to
    the two tuples, which the kernel writes first."""
    family = data[0] if data else 0
    if family not in _LAYOUT:
        return None
    orig = reply = None
    offset, end = 4, len(data)
    while offset + 4 <= end and (orig is None or reply is None):
        length, kind = _NLA.unpack_from(data, offset)
        if length < 4 or offset + length > end:
            break
        kind &= nl.NLA_TYPE_MASK
        if kind == CTA_TUPLE_ORIG:
            orig = _decode_tuple(family, data[offset + 4:offset + length])
        elif kind == CTA_TUPLE_REPLY:
            reply = _decode_tuple(family, data[offset + 4:offset + length])
        offset += (length + 3) & ~3
    if orig is None or reply is None:
        return None
    return CtEntry(orig, reply)


def _direction(entry: CtEntry | None, tid: bytes) -> tuple[CtEntry, Direction] | None:
    if entry is None:
        return None
    if tid == entry.orig_id:
        return entry, Direction.ORIGINAL
    if tid == entry.reply_id:
        return entry, Direction.REPLY
    return None


# ---------------------------------------------------------------------------- sockets

class _Socket(nl.Socket):
    Error = ConntrackError
    Lost = EventsLost

    def __init__(self, groups: Iterable[int] = (), rcvbuf: int = _REQ_RCVBUF,
                 blocking: bool = True) -> None:
        super().__init__(nl.NETLINK_NETFILTER, "conntrack", groups, rcvbuf, blocking)

    def error(self, err: int, what: str, text: str = "") -> nl.NetlinkError:
        if err == errno.EOPNOTSUPP:
            return ConntrackError("nf_conntrack_netlink is not loaded "
                                  "(modprobe nf_conntrack_netlink)", err)
        return super().error(err, what, text)


class Conntrack(nl.Owner):
    """Requests to the conntrack table of the netns this object was created in."""

    _sock: _Socket

    def __init__(self) -> None:
        self._sock = _Socket()
        self.portid = self._sock.portid
        rcvbuf = self._sock.rcvbuf
        self._refresh_batch = max(16, min(REFRESH_BATCH, rcvbuf // _ERROR_TRUESIZE))
        self._lookup_batch = max(16, min(LOOKUP_BATCH, rcvbuf // _ANSWER_TRUESIZE))

    def get(self, orig: TupleLike) -> CtEntry | None:
        """The entry with this original tuple (the kernel also matches it as a reply tuple)."""
        try:
            answers = self._sock.request(_CT_GET, _body(orig), "get", "get")
        except ConntrackError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return decode_entry(answers[0].data) if answers else None

    def lookup(self, t: TupleLike) -> tuple[CtEntry, Direction] | None:
        """The entry a packet with tuple t belongs to, and which direction t is.

        One GET is enough: the kernel looks the tuple up in its hash, which holds both the
        original and the reply tuple of every entry, so a reply tuple finds its entry too.
        """
        tid = as_id(t)
        return _direction(self.get(tid), tid)

    def lookup_many(self, tuples: Sequence[TupleLike],
                    wanted: Callable[[int], bool] | None = None) \
            -> Iterator[tuple[CtEntry, Direction] | None]:
        """lookup() of each tuple, in order: the GETs go out in batches, all answers of a
        batch are read, and each is decoded when its turn comes. wanted(i) False: the caller
        no longer needs the answer about tuples[i] (decided meanwhile); it yields None,
        undecoded."""
        for i in range(0, len(tuples), self._lookup_batch):
            chunk = [as_id(t) for t in tuples[i:i + self._lookup_batch]]
            answers = self._sock.batch([(_CT_GET, 0, _body(t)) for t in chunk], "lookup")
            for j, (t, m) in enumerate(zip(chunk, answers), i):
                if m.type != NLMSG_ERROR:
                    yield _direction(decode_entry(m.data), t) \
                        if wanted is None or wanted(j) else None
                elif m.error == errno.ENOENT:
                    yield None
                else:
                    raise self._sock.error(m.error or errno.EPROTO, "lookup", m.text)

    def delete(self, orig: TupleLike) -> bool:
        """Remove the entry with this original tuple; False when there was none."""
        try:
            self._sock.request(_CT_DELETE, _body(orig), "delete")
        except ConntrackError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def dump(self, family: int | None = None) -> Iterator[CtEntry]:
        """Every TCP/UDP entry (of one address family if given: socket.AF_INET/AF_INET6)."""
        body = struct.pack("=BBH", family or socket.AF_UNSPEC, 0, 0)
        answers = self._sock.request_iter(_CT_GET, body, "dump", "dump")
        try:
            for m in answers:
                entry = decode_entry(m.data)
                if entry is not None:
                    yield entry
        finally:
            answers.close()   # a caller that stops early must not leave the dump queued

    def refresh(self, entries: Iterable[TupleLike],
                timeout: int | Callable[[TupleLike], int]) -> int:
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
        batch: list[TupleLike] = []
        done = 0
        for t in entries:
            batch.append(t)
            if len(batch) == self._refresh_batch:
                done += self._refresh(batch, timeout_of)
                batch = []
        if batch:
            done += self._refresh(batch, timeout_of)
        return done

    def _refresh(self, batch: list[TupleLike], timeout_of: Callable[[TupleLike], int]) -> int:
        n = len(batch)
        first = self._sock.next_seq(n)
        self._sock.send(b"".join(
            encode_refresh((first + i - 1) % 0x7FFFFFFF + 1,
                           NLM_F_REQUEST | (NLM_F_ACK if i == n - 1 else 0), t, timeout_of(t))
            for i, t in enumerate(batch)))
        failed = 0
        while True:
            for m in self._sock.recv() or ():
                i = (m.seq - first) % 0x7FFFFFFF
                if m.type != NLMSG_ERROR or i >= n:
                    continue
                if m.error:
                    failed += 1
                    if m.error not in (errno.ENOENT, errno.ETIME):   # ETIME: entry is dying
                        if m.error in (errno.EOPNOTSUPP, errno.EPERM):
                            raise self._sock.error(m.error, "refresh", m.text)
                        log.warning("%s", self._sock.error(m.error, "refresh", m.text))
                if i == n - 1:
                    return n - failed

    def set_liberal(self, orig: TupleLike) -> bool:
        """Stop TCP window checks on an entry the fast path is about to carry."""
        try:
            self._sock.request(_CT_NEW, _body(orig, _LIBERAL), "set liberal")
        except ConntrackError as e:
            if e.errno in (errno.ENOENT, errno.ETIME):
                return False
            raise
        return True

    def restore_closing(self, origs: Sequence[TupleLike]) -> int:
        """After a refresh: each of these TCP entries that is closing gets its state's timeout
        back. A refresh that lands after conntrack saw the FIN or RST wrote the established
        timeout on a closed connection (hours on OpenWrt); one that lands before it is
        overwritten by conntrack itself. Returns how many entries were set back."""
        due: dict[int, list[TupleLike]] = {}
        for t, found in zip(origs, self.lookup_many(origs)):
            name = _CLOSING_STATES.get(found[0].tcp_state or 0) if found else None
            if name is not None:
                due.setdefault(_sysctl(f"{_SYSCTL_DIR}/nf_conntrack_tcp_timeout_{name}"),
                               []).append(t)
        return sum(self.refresh(ts, timeout) for timeout, ts in due.items())

    @staticmethod
    def established_timeout(l4proto: int) -> int:
        """The kernel's timeout for an established TCP / a UDP stream entry, in seconds."""
        path = _TIMEOUT_SYSCTL.get(l4proto)
        if path is None:
            raise ValueError(f"no established timeout for IP protocol {l4proto}")
        return _sysctl(path)


def _sysctl(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read())
    except OSError as e:
        raise ConntrackError(f"{path}: {e.strerror} (is nf_conntrack loaded?)") from None


_KINDS = {"new": NFNLGRP_CONNTRACK_NEW, "update": NFNLGRP_CONNTRACK_UPDATE,
          "destroy": NFNLGRP_CONNTRACK_DESTROY}


def _events_filter(udp_updates: bool, not_from: int) -> list[bytes]:
    """A socket filter that passes every DESTROY and NEW event, and drops the UPDATE events of
    UDP entries (udp_updates False) and those a request of port not_from caused (not 0)."""
    i = nl.bpf_insn
    ld_nla = nl.BPF_LD | nl.BPF_W | nl.BPF_ABS
    # jump offsets count from the next instruction; the last two are "keep" and "drop"
    prog = [i(nl.BPF_LD | nl.BPF_H | nl.BPF_ABS, 4),                       # nlmsg_type
            i(nl.BPF_JMP | nl.BPF_JEQ | nl.BPF_K, nl.bpf_view(_CT_DELETE, 2), jt=0xFF),
            i(nl.BPF_LD | nl.BPF_H | nl.BPF_ABS, 6),                       # nlmsg_flags
            i(nl.BPF_JMP | nl.BPF_JEQ | nl.BPF_K, 0, jf=0xFF)]             # NEW: CREATE set
    if not_from:
        prog += [i(nl.BPF_LD | nl.BPF_W | nl.BPF_ABS, 12),                 # nlmsg_pid
                 i(nl.BPF_JMP | nl.BPF_JEQ | nl.BPF_K, nl.bpf_view(not_from, 4), jt=0xFE)]
    if not udp_updates:
        # CTA_TUPLE_ORIG > CTA_TUPLE_PROTO > CTA_PROTO_NUM; offset 0: not found, keep it
        prog += [i(nl.BPF_LD | nl.BPF_IMM, nl.NLMSG_HDRLEN + 4),           # after nfgenmsg
                 i(nl.BPF_LDX | nl.BPF_IMM, CTA_TUPLE_ORIG),
                 i(ld_nla, nl.SKF_AD_OFF + nl.SKF_AD_NLATTR),
                 i(nl.BPF_JMP | nl.BPF_JEQ | nl.BPF_K, 0, jt=0xFF),
                 i(nl.BPF_LDX | nl.BPF_IMM, CTA_TUPLE_PROTO),
                 i(ld_nla, nl.SKF_AD_OFF + nl.SKF_AD_NLATTR_NEST),
                 i(nl.BPF_JMP | nl.BPF_JEQ | nl.BPF_K, 0, jt=0xFF),
                 i(nl.BPF_LDX | nl.BPF_IMM, CTA_PROTO_NUM),
                 i(ld_nla, nl.SKF_AD_OFF + nl.SKF_AD_NLATTR_NEST),
                 i(nl.BPF_JMP | nl.BPF_JEQ | nl.BPF_K, 0, jt=0xFF),
                 i(nl.BPF_MISC | nl.BPF_TAX),
                 i(nl.BPF_LD | nl.BPF_B | nl.BPF_IND, 4),                  # past the nla header
                 i(nl.BPF_JMP | nl.BPF_JEQ | nl.BPF_K, IPPROTO_UDP, jt=0xFE)]
    prog += [i(nl.BPF_RET | nl.BPF_K, 0xFFFFFFFF), i(nl.BPF_RET | nl.BPF_K, 0)]
    keep, drop = len(prog) - 2, len(prog) - 1
    out = []
    for n, insn in enumerate(prog):     # 0xFF: to keep, 0xFE: to drop
        code, jt, jf, k = struct.unpack("=HBBI", insn)
        jt, jf = ({0xFF: keep - n - 1, 0xFE: drop - n - 1}.get(j, j) for j in (jt, jf))
        out.append(nl.bpf_insn(code, k, jt, jf))
    return out


class ConntrackEvents(nl.Owner):
    """Conntrack NEW/UPDATE/DESTROY events of the netns this object was created in.

    The socket is non-blocking, so fileno() can go into the daemon's selector and read() never
    waits. Only TCP/UDP entries are reported. A flush (conntrack -F) arrives as one DESTROY
    per entry. The kernel drops, before they are queued, UDP entries' UPDATE events when
    udp_updates is False (they tell of replies and timeouts, no change of eligibility), and
    UPDATE events caused by requests of netlink port not_from (Conntrack.portid: our own
    refreshes, echoed).
    """

    _sock: _Socket

    def __init__(self, kinds: Iterable[str] = ("new", "update", "destroy"),
                 rcvbuf: int = _EVENTS_RCVBUF, udp_updates: bool = True,
                 not_from: int = 0) -> None:
        self._sock = _Socket([_KINDS[kind] for kind in kinds], rcvbuf, blocking=False)
        if not udp_updates or not_from:
            try:
                self._sock.attach_filter(_events_filter(udp_updates, not_from))
            except BaseException:
                self._sock.close()
                raise

    def read(self, max_events: int = 4096, tuples_only: bool = False) -> list[CtEvent]:
        """The events queued now (up to about max_events); raises EventsLost after an overrun.
        tuples_only: their entries hold the tuples alone (decode_tuples), which is cheaper.

        Some events are gone then: the caller must resync from a dump. What was still queued
        is dropped before raising, so later reads only bring events newer than that dump.
        """
        events: list[CtEvent] = []
        decode = decode_tuples if tuples_only else decode_entry
        while len(events) < max_events:
            try:
                msgs = self._sock.recv()
            except EventsLost:
                self._sock.drain()
                raise EventsLost("conntrack events lost (socket overrun): resync needed") \
                    from None
            if msgs is None:
                break
            for m in msgs:
                if m.type == _CT_DELETE:
                    kind: Literal["new", "update", "destroy"] = "destroy"
                elif m.type == _CT_NEW:
                    kind = "new" if m.flags & (NLM_F_CREATE | NLM_F_EXCL) else "update"
                else:
                    continue
                entry = decode(m.data)
                if entry is not None:
                    events.append(CtEvent(kind, entry))
        return events
