# SPDX-License-Identifier: GPL-2.0-only
"""Netlink mechanics shared by the daemon's ctnetlink, rtnetlink and nftables modules.

Sockets, message framing, attributes (TLVs) and error handling, hand-written for the few
messages the daemon exchanges: a general-purpose library would cost the daemon ~24 MB of RSS
and ~200 us per decoded message. Every request is read up to the message that ends its answers
(the ack of a change, the one answer of a GET, which asks for no ack, NLMSG_DONE of a dump),
so no reply is ever left queued behind; answers are matched to requests by sequence number.
"""
from __future__ import annotations

import ctypes
import errno
import os
import select
import socket
import struct
import sys
from typing import Generator, Iterable, Iterator, Literal, Protocol, Self

# linux/netlink.h
NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12
NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_EXCL = 0x200      # NEW requests: the same bits as ROOT / MATCH
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100    # in an NLMSG_ERROR: only the request's header is echoed
NLM_F_ACK_TLVS = 0x200  # in an NLMSG_ERROR: extended ack attributes follow
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_HDRLEN = 16
NLMSGERR_ATTR_MSG = 1
NLA_F_NESTED = 1 << 15
NLA_F_NET_BYTEORDER = 1 << 14
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF
SO_RCVBUFFORCE = 33
SO_ATTACH_FILTER = 26

# classic BPF (linux/filter.h, bpf_common.h): the socket filter the kernel runs on each message
# before queueing it, so what a socket does not want never costs its receive buffer
BPF_LD, BPF_LDX, BPF_JMP, BPF_RET, BPF_MISC = 0x00, 0x01, 0x05, 0x06, 0x07
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_IND = 0x00, 0x20, 0x40
BPF_JEQ, BPF_K, BPF_TAX = 0x10, 0x00, 0x00
SKF_AD_OFF = -0x1000
SKF_AD_NLATTR = 12          # A = offset of attribute X among the attributes from offset A
SKF_AD_NLATTR_NEST = 16     # A = offset of attribute X nested in the attribute at offset A
_SOCK_FILTER = struct.Struct("=HBBI")

Mode = Literal["ack", "get", "dump"]
_MODE_FLAGS = {"ack": NLM_F_ACK, "get": 0, "dump": NLM_F_DUMP}
_HDR = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
RECV_SIZE = 1 << 17     # larger than any datagram the kernel builds for us (dumps: ~32 KiB)


class NetlinkError(Exception):
    """A netlink failure as one line; errno is the kernel's (positive) error number or 0."""

    def __init__(self, message: str, err: int = 0) -> None:
        super().__init__(message)
        self.errno = err


class EventsLost(NetlinkError):
    """The socket's receive buffer overran (ENOBUFS): the kernel dropped messages for it."""


class Message:
    """One netlink message: header fields and the payload after the 16-byte header.

    For NLMSG_ERROR, `error` is 0 for an acknowledgement or a positive errno, `seq` is the
    sequence number of the request it answers (the header echoed back) and `text` is the
    kernel's extended-ack message, if any.
    """

    __slots__ = ("type", "flags", "seq", "pid", "data", "error", "text")

    def __init__(self, type: int, flags: int, seq: int, pid: int, data: bytes,
                 error: int | None = None, text: str = "") -> None:
        self.type, self.flags, self.seq, self.pid, self.data = type, flags, seq, pid, data
        self.error, self.text = error, text

    def __repr__(self) -> str:
        return (f"Message(type={self.type}, flags={self.flags:#x}, seq={self.seq}, "
                f"error={self.error}, {len(self.data)} bytes)")


def parse(buf: bytes) -> list[Message]:
    """The messages of one datagram (a truncated tail is ignored)."""
    out: list[Message] = []
    offset, end = 0, len(buf)
    while offset + 16 <= end:
        length, mtype, flags, seq, pid = _HDR.unpack_from(buf, offset)
        if length < 16 or offset + length > end:
            break
        if mtype == NLMSG_ERROR and length >= 36:
            code = -struct.unpack_from("=i", buf, offset + 16)[0]
            req_len, _t, _f, req_seq, _p = _HDR.unpack_from(buf, offset + 20)
            text = ""
            if flags & NLM_F_ACK_TLVS:
                echoed = 16 if flags & NLM_F_CAPPED else req_len
                tlvs = attrs(buf[offset + 20 + ((echoed + 3) & ~3):offset + length])
                text = tlvs.get(NLMSGERR_ATTR_MSG, b"").rstrip(b"\0").decode(errors="replace")
            out.append(Message(mtype, flags, req_seq, pid, b"", code, text))
        else:
            out.append(Message(mtype, flags, seq, pid, buf[offset + 16:offset + length]))
        offset += (length + 3) & ~3
    return out


# ---------------------------------------------------------------------------- attributes

def attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """Attributes from offset on, by type (flags masked off); a repeated type keeps its last."""
    out: dict[int, bytes] = {}
    end = len(data)
    while offset + 4 <= end:
        length, kind = _NLA.unpack_from(data, offset)
        if length < 4 or offset + length > end:
            break
        out[kind & NLA_TYPE_MASK] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


def attr_list(data: bytes, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """Attributes in order, repeated types included."""
    end = len(data)
    while offset + 4 <= end:
        length, kind = _NLA.unpack_from(data, offset)
        if length < 4 or offset + length > end:
            return
        yield kind & NLA_TYPE_MASK, data[offset + 4:offset + length]
        offset += (length + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    return _NLA.pack(4 + len(payload), kind) + payload + bytes(-len(payload) % 4)


def nested(kind: int, *parts: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(parts))


def u8(v: int) -> bytes:
    return struct.pack("B", v)


def u32(v: int) -> bytes:
    return struct.pack("=I", v)


def be16(v: int) -> bytes:
    return struct.pack("!H", v)


def be32(v: int) -> bytes:
    return struct.pack("!I", v)


def asciiz(text: str) -> bytes:
    return text.encode() + b"\0"


def get_u8(data: bytes | None, default: int = 0) -> int:
    return data[0] if data else default


def get_u16(data: bytes | None, default: int = 0) -> int:
    return struct.unpack("=H", data[:2])[0] if data else default


def get_u32(data: bytes | None, default: int = 0) -> int:
    return struct.unpack("=I", data[:4])[0] if data else default


def get_be(data: bytes | None, default: int = 0) -> int:
    """A big-endian unsigned integer of the attribute's size (be16, be32, be64)."""
    return int.from_bytes(data, "big") if data else default


def get_str(data: bytes | None) -> str:
    return data.split(b"\0", 1)[0].decode(errors="replace") if data else ""


def message(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return _HDR.pack(16 + len(body), mtype, flags, seq, 0) + body


# ---------------------------------------------------------------------------- sockets

def strerror(err: int) -> str:
    return os.strerror(err) if err else "unknown error"


class _Closable(Protocol):
    def fileno(self) -> int: ...
    def close(self) -> None: ...


class Owner:
    """fileno() for a selector, close() and `with` for an object that owns one socket."""

    _sock: _Closable

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()


def bpf_insn(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> bytes:
    return _SOCK_FILTER.pack(code, jt, jf, k & 0xFFFFFFFF)


def bpf_view(value: int, size: int) -> int:
    """What a classic BPF load (big-endian) reads from a host-order field holding value."""
    return int.from_bytes(value.to_bytes(size, sys.byteorder), "big")


class Socket(Owner):
    """A netlink socket of one protocol in the caller's network namespace.

    groups: multicast group numbers to join (events); rcvbuf: receive buffer in bytes (root
    may exceed net.core.rmem_max, which is small on routers); blocking: requests wait up to
    `timeout` seconds for answers, event sockets never wait. `name` prefixes error messages.
    """

    _sock: socket.socket

    Error: type[NetlinkError] = NetlinkError   # what this socket's failures raise
    Lost: type[NetlinkError] = EventsLost      # ... and what a receive overrun raises

    def __init__(self, protocol: int, name: str, groups: Iterable[int] = (),
                 rcvbuf: int = 1 << 20, blocking: bool = True, timeout: float = 10) -> None:
        self.name = name
        self._seq = 0
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                       protocol)
        except OSError as e:
            raise self.Error(f"{name}: netlink socket: {e.strerror}", e.errno or 0) from None
        try:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except OSError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self._sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self._sock.bind((0, 0))
            for group in groups:
                self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
            if blocking:
                self._sock.settimeout(timeout)
            else:
                self._sock.setblocking(False)
        except OSError as e:
            self._sock.close()
            raise self.error(e.errno or 0, "socket") from None
        self.timeout = timeout

    @property
    def portid(self) -> int:
        """The port id the kernel gave this socket: the sender of events its requests cause."""
        return int(self._sock.getsockname()[0])

    def attach_filter(self, program: list[bytes]) -> None:
        """Lets the kernel drop messages before they are queued (bpf_insn instructions)."""
        code = ctypes.create_string_buffer(b"".join(program))
        fprog = struct.pack("@HP", len(program), ctypes.addressof(code))
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        except OSError as e:
            raise self.error(e.errno or 0, "socket filter") from None

    @property
    def rcvbuf(self) -> int:
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def error(self, err: int, what: str, text: str = "") -> NetlinkError:
        """The one-line error for errno err while doing `what`."""
        detail = f"{strerror(err)} ({text})" if text else strerror(err)
        if err == errno.EPERM:
            detail += ": needs CAP_NET_ADMIN (run ebpfw as root)"
        return self.Error(f"{self.name} {what}: {detail}", err)

    def next_seq(self, n: int = 1) -> int:
        """The first of n fresh sequence numbers (never 0: events carry 0)."""
        first = self._seq % 0x7FFFFFFF + 1
        self._seq = (self._seq + n - 1) % 0x7FFFFFFF + 1
        return first

    def send(self, data: bytes) -> None:
        try:
            self._sock.send(data)
        except OSError as e:
            raise self.error(e.errno or 0, "send") from None

    def recv(self) -> list[Message] | None:
        """The messages of the next datagram; None when nothing is queued (non-blocking)."""
        try:
            buf = self._sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except TimeoutError:
            raise self.Error(f"{self.name}: no answer from the kernel within "
                               f"{self.timeout:g}s", errno.ETIMEDOUT) from None
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                raise self.Lost(f"{self.name}: messages lost (receive buffer overrun)",
                                errno.ENOBUFS) from None
            raise self.error(e.errno or 0, "receive") from None
        return parse(buf)

    def drain(self, limit: int = 100_000) -> None:
        """Throw away what is queued now on a non-blocking socket (bounded: a busy router may
        never leave it empty)."""
        for _ in range(limit):
            try:
                if not self._sock.recv(RECV_SIZE, socket.MSG_DONTWAIT):
                    return
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    return

    def queued(self) -> int:
        """Messages in the next queued datagram, without reading it: 0 when nothing is queued."""
        if not select.select([self._sock], [], [], 0)[0]:
            return 0
        return len(parse(self._sock.recv(RECV_SIZE, socket.MSG_PEEK)))

    def request(self, mtype: int, body: bytes, what: str, mode: Mode = "ack",
                flags: int = 0) -> list[Message]:
        """Send one request; its answers up to the end the mode says. Errors raise NetlinkError.

        "ack": a change, answered by an acknowledgement (returns []); "get": a GET, answered by
        exactly one message (no ack is asked, so none is left to read); "dump": many messages
        up to NLMSG_DONE.
        """
        return list(self.request_iter(mtype, body, what, mode, flags))

    def request_iter(self, mtype: int, body: bytes, what: str, mode: Mode = "ack",
                     flags: int = 0) -> Generator[Message, None, None]:
        """request() as a generator; closing it early reads the rest of the answers (any left
        over after an exception are skipped later by sequence number)."""
        seq = self.next_seq()
        flags |= NLM_F_REQUEST | _MODE_FLAGS[mode]
        self.send(message(mtype, flags, seq, body))
        done = False
        try:
            while not done:
                for m in self.recv() or ():
                    if m.seq != seq or done:
                        continue   # an abandoned request's answers
                    # a GET's one answer may carry NLM_F_MULTI (ctnetlink sets it)
                    done = mode == "get" or m.type in (NLMSG_ERROR, NLMSG_DONE)
                    if m.type == NLMSG_ERROR:
                        if m.error:
                            raise self.error(m.error, what, m.text)
                    elif m.type != NLMSG_DONE:
                        yield m
        except GeneratorExit:
            if not done:
                self._finish(seq)
            raise

    def _finish(self, seq: int) -> None:
        """Read up to the end of request seq's answers (a dump abandoned half way)."""
        while True:
            for m in self.recv() or ():
                if m.seq == seq and m.type in (NLMSG_ERROR, NLMSG_DONE):
                    return

    def batch(self, requests: list[tuple[int, int, bytes]], what: str) -> list[Message]:
        """Send many (type, flags, body) requests in one sendmsg; return, in order, the one
        answer to each: a reply, or an NLMSG_ERROR (error 0: ack). So each request must be
        answered by one message: a GET without NLM_F_ACK, or a change with it.

        The kernel handles the whole buffer in our send call, so all answers must fit the
        receive buffer at once: callers bound len(requests) by rcvbuf.
        """
        n = len(requests)
        first = self.next_seq(n)
        self.send(b"".join(message(t, f | NLM_F_REQUEST, (first + i - 1) % 0x7FFFFFFF + 1, body)
                           for i, (t, f, body) in enumerate(requests)))
        answers: list[Message | None] = [None] * n
        left = n
        while left:
            for m in self.recv() or ():
                i = (m.seq - first) % 0x7FFFFFFF
                if i < n and answers[i] is None:
                    answers[i] = m
                    left -= 1
        return answers  # type: ignore[return-value]  # all set: left == 0
