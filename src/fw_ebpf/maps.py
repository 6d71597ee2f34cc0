# SPDX-License-Identifier: GPL-2.0-only
"""ctypes mirror of bpf/include/ebpfw/abi.h, with typed encode/decode.

tests/test_abi.py checks every struct here against the BTF of the compiled
object and every constant against the header, so the two cannot drift.
Fields declared __be16/__be32 in C hold network-order bytes; the helpers
below convert, callers never see raw network-order integers.
"""
from __future__ import annotations

import ctypes
import enum
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import NamedTuple

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

FLOWS_DEFAULT = 65536
PENDING_DEFAULT = 8192
EGRESS_DEFAULT = 65536
EVENTS_BYTES = 1024 * 1024
TX_MAX = 256
MACS_MAX = 1024
L3_IPV4 = 4
L3_IPV6 = 6
NO_DSA_PORT = 0xFF
DSA_CONDUITS = 4

F_NAT = 1 << 0
F_CLOSING = 1 << 1
F_TC_ONLY = 1 << 2
F_REPORTED = 1 << 3


class State(enum.IntEnum):
    PENDING = 0
    PASS = 1
    DROP = 2
    FORWARD = 3
    PROVING = 4


class EventType(enum.IntEnum):
    NEW = 1
    CLOSING = 2
    PROVED = 3


# The members hot paths compare, under plain names: in Python 3.11, State.X is a lookup
# through the enum class (about 0.2 us), done several times per flow and per swept entry
PENDING, PASS, DROP, FORWARD, PROVING = \
    State.PENDING, State.PASS, State.DROP, State.FORWARD, State.PROVING
EV_NEW, EV_CLOSING, EV_PROVED = EventType.NEW, EventType.CLOSING, EventType.PROVED


class Counter(enum.IntEnum):
    """enum ebpfw_counter: EBPFW_CNT_<name> for totals, EBPFW_PASS_<name> for reasons."""

    RX = 0
    FORWARD = enum.auto()
    DROP = enum.auto()
    PASS = enum.auto()
    EVENT_LOST = enum.auto()
    EVENT_SHED = enum.auto()
    PROVED = enum.auto()
    REPROVED = enum.auto()
    NOT_OURS = enum.auto()
    REWRITE_ERROR = enum.auto()
    PASS_HEARTBEAT = enum.auto()
    PASS_MULTICAST = enum.auto()
    PASS_NOT_IP = enum.auto()
    PASS_L2 = enum.auto()
    PASS_TRUNCATED = enum.auto()
    PASS_IP_OPTIONS = enum.auto()
    PASS_FRAGMENT = enum.auto()
    PASS_IPV6_EXT = enum.auto()
    PASS_L4_PROTO = enum.auto()
    PASS_TCP_SYN = enum.auto()
    PASS_TCP_CLOSE = enum.auto()
    PASS_MISS = enum.auto()
    PASS_PENDING = enum.auto()
    PASS_VERDICT = enum.auto()
    PASS_CLOSING = enum.auto()
    PASS_DROP_EXPIRED = enum.auto()
    PASS_TTL = enum.auto()
    PASS_MTU = enum.auto()
    PASS_OTHER_HOOK = enum.auto()
    PASS_NO_TX = enum.auto()
    PASS_UDP_ZERO_CSUM = enum.auto()
    PASS_L2_REWRITE = enum.auto()
    PASS_PROVING = enum.auto()
    PASS_STALE = enum.auto()
    PASS_DSA_TAG = enum.auto()
    PASS_DSA_UNTAGGED = enum.auto()
    MAX = enum.auto()

    @property
    def c_name(self) -> str:
        if self.name.startswith("PASS_"):
            return "EBPFW_" + self.name
        return "EBPFW_CNT_" + self.name

    @property
    def is_pass_reason(self) -> bool:
        return self.name.startswith("PASS_")


def _be16(value: int) -> int:
    return socket.htons(value)


_KEY_HEAD = [
    ("ifindex", ctypes.c_uint32),
    ("vlan", ctypes.c_uint16 * 2),
    ("pppoe_sid", ctypes.c_uint16),
    ("dsa_port", ctypes.c_uint8),
    ("l4proto", ctypes.c_uint8),
    ("sport", ctypes.c_uint16),
    ("dport", ctypes.c_uint16),
]


class Key4(ctypes.Structure):
    _c_name_ = "ebpfw_key4"
    _fields_ = _KEY_HEAD + [("saddr", ctypes.c_uint8 * 4), ("daddr", ctypes.c_uint8 * 4)]


class Key6(ctypes.Structure):
    _c_name_ = "ebpfw_key6"
    _fields_ = _KEY_HEAD + [("saddr", ctypes.c_uint8 * 16), ("daddr", ctypes.c_uint8 * 16)]


class Key(ctypes.Union):
    _c_name_ = "ebpfw_key"
    _fields_ = [("v4", Key4), ("v6", Key6)]


KEY4_LEN, KEY6_LEN = ctypes.sizeof(Key4), ctypes.sizeof(Key6)
# The tables of each family: (decided, pending)
TABLES = {L3_IPV4: ("ebpfw_flows4", "ebpfw_pending4"), L3_IPV6: ("ebpfw_flows6", "ebpfw_pending6")}
# The egress index of each family: the tuple a flow leaves with -> its key
EGRESS_TABLES = {L3_IPV4: "ebpfw_egress4", L3_IPV6: "ebpfw_egress6"}
# The router's own MAC addresses: only a frame from one of them proves a flow
MACS_MAP = "ebpfw_macs"


class Mac(ctypes.Structure):
    _c_name_ = "ebpfw_mac"
    _fields_ = [("addr", ctypes.c_uint8 * 6)]


class L2(ctypes.Structure):
    _c_name_ = "ebpfw_l2"
    _fields_ = [
        ("dmac", ctypes.c_uint8 * 6),
        ("smac", ctypes.c_uint8 * 6),
        ("vlan_tpid", ctypes.c_uint16),
        ("vlan_tci", ctypes.c_uint16 * 2),
        ("pppoe_sid", ctypes.c_uint16),
        ("vlans", ctypes.c_uint8),
        ("dsa_port", ctypes.c_uint8),
    ]


class Flow(ctypes.Structure):
    _c_name_ = "ebpfw_flow"
    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("last_seen_ns", ctypes.c_uint64),
        ("expires_ns", ctypes.c_uint64),
        ("state", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("mtu", ctypes.c_uint16),
        ("oif", ctypes.c_uint32),
        ("nat_saddr", ctypes.c_uint8 * 16),
        ("nat_daddr", ctypes.c_uint8 * 16),
        ("nat_sport", ctypes.c_uint16),
        ("nat_dport", ctypes.c_uint16),
        ("csum_addr", ctypes.c_uint16),
        ("csum_port", ctypes.c_uint16),
        ("l2", L2),
        ("pad", ctypes.c_uint16),
        ("gen", ctypes.c_uint32),
        ("proof_gen", ctypes.c_uint32),
    ]


# The head of a Flow value, for the sweep's fast unpacking of many values:
# packets, bytes, last_seen_ns, expires_ns, state, flags (checked against Flow by the tests)
FLOW_HEAD = struct.Struct("=QQQQBB")


class Event(ctypes.Structure):
    _c_name_ = "ebpfw_event"
    _fields_ = [("type", ctypes.c_uint32), ("l3proto", ctypes.c_uint8),
                ("pad", ctypes.c_uint8 * 3), ("key", Key), ("first_ns", ctypes.c_uint64)]


class Runtime(ctypes.Structure):
    _c_name_ = "ebpfw_runtime"
    _fields_ = [("heartbeat_ns", ctypes.c_uint64), ("gen", ctypes.c_uint32),
                ("proving", ctypes.c_uint32)]


class Config(ctypes.Structure):
    _c_name_ = "ebpfw_config"
    _fields_ = [("heartbeat_timeout_ns", ctypes.c_uint64), ("event_interval_ns", ctypes.c_uint64),
                ("event_burst_ns", ctypes.c_uint64),
                ("dsa_conduits", ctypes.c_uint32 * DSA_CONDUITS)]


class Stats(ctypes.Structure):
    _c_name_ = "ebpfw_stats"
    _fields_ = [("counters", ctypes.c_uint64 * Counter.MAX), ("tick", ctypes.c_uint64),
                ("now_ns", ctypes.c_uint64), ("fresh", ctypes.c_uint64),
                ("gen", ctypes.c_uint64), ("proving", ctypes.c_uint64),
                ("ev_credit_ns", ctypes.c_uint64), ("ev_clock_ns", ctypes.c_uint64)]


ABI_STRUCTS: tuple[type[ctypes.Structure | ctypes.Union], ...] = (
    Key4, Key6, Key, Mac, L2, Flow, Event, Runtime, Config, Stats)
# NEW events per second per CPU the fast path sends, and how many at once (ebpfw_config).
# 5,000 new connections a second are 10,000 NEW events (both directions), all on one CPU
# behind a single-queue NIC; a shed one waits for catch_up. A flood past it is bounded by the
# ring (NEW events keep out of its second half) and the daemon's backlog.
EVENT_RATE = 16384
EVENT_BURST = EVENT_RATE
CONFIG_SECTION = ".rodata.config"


@dataclass(frozen=True, slots=True)
class Tuple:
    """One direction of a connection as Python values."""

    l4proto: int
    saddr: IPAddress
    daddr: IPAddress
    sport: int
    dport: int

    @property
    def l3proto(self) -> int:
        return L3_IPV4 if self.saddr.version == 4 else L3_IPV6


# Key4 / Key6 as struct formats (the daemon packs and unpacks keys on every event; ctypes
# structures cost several times more); tests/test_abi.py checks them against the structures
_KEY_STRUCT = {4: struct.Struct("=IHHHBB2s2s4s4s"), 16: struct.Struct("=IHHHBB2s2s16s16s")}


def encode_key(ifindex: int, t: Tuple, vlan: tuple[int, int] = (0, 0), pppoe_sid: int = 0,
               dsa_port: int = NO_DSA_PORT) -> bytes:
    """The key of the family's tables: 24 bytes for IPv4, 48 for IPv6."""
    saddr, daddr = t.saddr.packed, t.daddr.packed
    if len(saddr) != len(daddr):
        raise ValueError(f"mixed address families in {t}")
    return _KEY_STRUCT[len(saddr)].pack(ifindex, vlan[0], vlan[1], pppoe_sid, dsa_port,
                                        t.l4proto, t.sport.to_bytes(2, "big"),
                                        t.dport.to_bytes(2, "big"), saddr, daddr)


def key_ifindex(raw: bytes) -> int:
    """The ingress device of a flow key (its first field)."""
    return _IFINDEX.unpack_from(raw)[0]


_IFINDEX = struct.Struct("=I")


def key_family(raw: bytes) -> int:
    """L3_IPV4 or L3_IPV6 from a key's length."""
    if len(raw) == KEY4_LEN:
        return L3_IPV4
    if len(raw) == KEY6_LEN:
        return L3_IPV6
    raise ValueError(f"a flow key has {KEY4_LEN} or {KEY6_LEN} bytes, not {len(raw)}")


@dataclass(frozen=True, slots=True)
class KeyInfo:
    ifindex: int
    tuple: Tuple
    vlan: tuple[int, int]
    pppoe_sid: int
    dsa_port: int


def decode_key(raw: bytes) -> KeyInfo:
    address = ipaddress.IPv4Address if key_family(raw) == L3_IPV4 else ipaddress.IPv6Address
    ifindex, vlan0, vlan1, pppoe_sid, dsa_port, l4proto, sport, dport, saddr, daddr = \
        _KEY_STRUCT[4 if address is ipaddress.IPv4Address else 16].unpack(raw)
    t = Tuple(l4proto, address(saddr), address(daddr), int.from_bytes(sport, "big"),
              int.from_bytes(dport, "big"))
    return KeyInfo(ifindex, t, (vlan0, vlan1), pppoe_sid, dsa_port)


def csum_diff(old: bytes, new: bytes) -> int:
    """Folded ones' complement sum of ~old + new over 16-bit big-endian words.

    2**16 is 1 modulo 0xFFFF, so a sum of words is, modulo 0xFFFF, the number the bytes spell:
    no word by word. The fold of a positive sum is never 0 (0xFFFF stands for it); the sum is
    0 only if every old word is 0xFFFF and every new one 0."""
    if len(old) != len(new) or len(old) % 2:
        raise ValueError("csum_diff needs two byte strings of the same even length")
    total = (int.from_bytes(new, "big") - int.from_bytes(old, "big")) % 0xFFFF
    if total:
        return total
    return 0 if old.count(0xFF) == len(old) and not any(new) else 0xFFFF


@dataclass(frozen=True)
class L2Out:
    """What the egress needs in front of the IP header."""

    dmac: bytes
    smac: bytes
    vlans: tuple[int, ...] = ()      # TCIs, outer first, at most two
    vlan_tpid: int = 0x8100          # protocol of the outer tag
    pppoe_sid: int | None = None
    dsa_port: int = NO_DSA_PORT      # egress is a DSA conduit: the tag for this port


def _mac(value: bytes | str) -> bytes:
    if isinstance(value, str):
        value = bytes.fromhex(value.replace(":", ""))
    if len(value) != 6:
        raise ValueError(f"bad MAC address {value!r}")
    return value


_FLAGS = Flow.flags.offset
_NAT_SADDR, _NAT_DADDR = Flow.nat_saddr.offset, Flow.nat_daddr.offset
_NAT_PORTS, _CSUM_ADDR, _CSUM_PORT = Flow.nat_sport.offset, Flow.csum_addr.offset, \
    Flow.csum_port.offset


def _nat(value: bytearray, orig: bytes, post: bytes) -> None:
    """Writes the NAT from tuple_id orig to tuple_id post into a Flow value."""
    if len(orig) != len(post) or orig[_DEVICE_FIELDS] != post[_DEVICE_FIELDS]:
        raise ValueError("NAT cannot change the protocol or the address family")
    if post == orig:
        return
    value[_FLAGS] |= F_NAT
    alen = (len(post) - _ID_ADDRS) // 2
    value[_NAT_SADDR:_NAT_SADDR + alen] = post[_ID_ADDRS:_ID_ADDRS + alen]
    value[_NAT_DADDR:_NAT_DADDR + alen] = post[_ID_ADDRS + alen:]
    value[_NAT_PORTS:_NAT_PORTS + 4] = post[_ID_PORTS:_ID_ADDRS]     # network order as in C
    value[_CSUM_ADDR:_CSUM_ADDR + 2] = \
        csum_diff(orig[_ID_ADDRS:], post[_ID_ADDRS:]).to_bytes(2, "big")
    value[_CSUM_PORT:_CSUM_PORT + 2] = \
        csum_diff(orig[_ID_PORTS:_ID_ADDRS], post[_ID_PORTS:_ID_ADDRS]).to_bytes(2, "big")


def encode_l2(l2: L2Out) -> L2:
    if len(l2.vlans) > 2:
        raise ValueError("at most two VLAN tags")
    if not 0 <= l2.dsa_port <= NO_DSA_PORT:
        raise ValueError(f"DSA port {l2.dsa_port} is not a byte")
    out = L2(vlans=len(l2.vlans), vlan_tpid=_be16(l2.vlan_tpid) if l2.vlans else 0,
             pppoe_sid=l2.pppoe_sid or 0, dsa_port=l2.dsa_port)
    for i, tci in enumerate(l2.vlans):
        out.vlan_tci[i] = tci
    out.dmac[:] = _mac(l2.dmac)
    out.smac[:] = _mac(l2.smac)
    return out


def encode_forward(orig: Tuple, post: Tuple, oif: int, mtu: int, l2: L2Out,
                   tc_only: bool = False, last_seen_ns: int = 0, gen: int = 0) -> bytes:
    """A FORWARD value for packets matching orig, leaving as post (after NAT), in
    generation gen."""
    if not 0 <= l2.dsa_port <= NO_DSA_PORT:
        raise ValueError(f"DSA port {l2.dsa_port} is not a byte")
    f = Flow(state=State.FORWARD, oif=oif, mtu=mtu, l2=encode_l2(l2),
             last_seen_ns=last_seen_ns, gen=gen)
    if tc_only:
        f.flags |= F_TC_ONLY
    value = bytearray(bytes(f))
    _nat(value, tuple_id(orig), tuple_id(post))
    return bytes(value)


def _proving_template() -> bytes:
    f = Flow(state=State.PROVING)
    f.l2.dsa_port = NO_DSA_PORT
    return bytes(f)


_PROVING = _proving_template()
_LAST_SEEN = struct.Struct("=Q")


def encode_proving(orig: Tuple | bytes, post: Tuple | bytes, last_seen_ns: int = 0) -> bytes:
    """A PROVING value: the NAT is known (conntrack), the egress not yet. The tuples as Tuple
    or as tuple_id (the admission path keeps them packed)."""
    value = bytearray(_PROVING)
    _LAST_SEEN.pack_into(value, Flow.last_seen_ns.offset, last_seen_ns)
    _nat(value, as_id(orig), as_id(post))
    return bytes(value)


class Proof(NamedTuple):
    """What the egress program wrote into a flow's value when the kernel forwarded it."""
    state: int
    flags: int
    oif: int
    vlan_tci: tuple[int, ...]   # outer first, as many as the frame leaves with
    pppoe_sid: int
    dsa_port: int
    gen: int                    # the generation the kernel was seen forwarding it in


_ROUTE = struct.Struct("=BBHI")     # state, flags, mtu, oif: contiguous in Flow
_ROUTE_AT = Flow.state.offset
_L2_TAGS = struct.Struct("=HHHBB")  # vlan_tci[2], pppoe_sid, vlans, dsa_port: the end of L2
_L2_TAGS_AT = Flow.l2.offset + L2.vlan_tci.offset
_GEN = struct.Struct("=I")
_PROOF_GEN_AT = Flow.proof_gen.offset


def decode_proof(raw: bytes) -> Proof:
    """decode_flow() of the fields admission reads from a proved value, without ctypes."""
    state, flags, _, oif = _ROUTE.unpack_from(raw, _ROUTE_AT)
    tci0, tci1, pppoe_sid, vlans, dsa_port = _L2_TAGS.unpack_from(raw, _L2_TAGS_AT)
    return Proof(state, flags, oif, (tci0, tci1)[:vlans], pppoe_sid, dsa_port,
                 _GEN.unpack_from(raw, _PROOF_GEN_AT)[0])


def encode_forwarding(raw: bytes, flags: int, mtu: int, gen: int, last_seen_ns: int = 0) \
        -> bytes:
    """A proved value made FORWARD: everything else as the fast path left it (counters
    too); last_seen_ns 0 keeps it."""
    value = bytearray(raw)
    oif = _ROUTE.unpack_from(raw, _ROUTE_AT)[3]
    _ROUTE.pack_into(value, _ROUTE_AT, State.FORWARD, flags, mtu, oif)
    _GEN.pack_into(value, Flow.gen.offset, gen)
    if last_seen_ns:
        _LAST_SEEN.pack_into(value, Flow.last_seen_ns.offset, last_seen_ns)
    return bytes(value)


def tuple_id(t: Tuple) -> bytes:
    """A tuple as the bytes of a key whose device fields are zero: the key of the egress
    index, and how the daemon stores tuples (they hash fast)."""
    return encode_key(0, t, dsa_port=0)


_DEVICE_FIELDS = Key4.l4proto.offset    # ifindex, vlan, pppoe_sid, dsa_port come first
_ID_PORTS, _ID_ADDRS = Key4.sport.offset, Key4.saddr.offset
_ID_HEAD = bytes(_DEVICE_FIELDS)
_DEVICE_STRUCT = struct.Struct("=IHHHB")


def as_id(t: Tuple | bytes) -> bytes:
    """A tuple_id, from a Tuple or as it is."""
    return t if isinstance(t, bytes) else tuple_id(t)


def id_tuple(tid: bytes) -> Tuple:
    """The Tuple of a tuple_id (to show it, or for what needs Python values)."""
    return decode_key(tid).tuple


def id_l4proto(tid: bytes) -> int:
    return tid[_DEVICE_FIELDS]


def reverse_id(tid: bytes) -> bytes:
    """tuple_id of the reverse tuple: addresses and ports swapped."""
    alen = (len(tid) - _ID_ADDRS) // 2
    return (tid[:_ID_PORTS] + tid[_ID_PORTS + 2:_ID_ADDRS] + tid[_ID_PORTS:_ID_PORTS + 2]
            + tid[_ID_ADDRS + alen:] + tid[_ID_ADDRS:_ID_ADDRS + alen])


def id_key(ifindex: int, tid: bytes, vlan: tuple[int, int] = (0, 0), pppoe_sid: int = 0,
           dsa_port: int = NO_DSA_PORT) -> bytes:
    """encode_key() of a tuple_id."""
    return _DEVICE_STRUCT.pack(ifindex, vlan[0], vlan[1], pppoe_sid, dsa_port) + \
        tid[_DEVICE_FIELDS:]


def key_tuple_id(key: bytes) -> bytes:
    """tuple_id() of the tuple in a flow key."""
    return _ID_HEAD + key[_DEVICE_FIELDS:]


def encode_verdict(state: State, expires_ns: int = 0, gen: int = 0) -> bytes:
    f = Flow(state=state, expires_ns=expires_ns, gen=gen)
    f.l2.dsa_port = NO_DSA_PORT
    return bytes(f)


def decode_flow(raw: bytes) -> Flow:
    return Flow.from_buffer_copy(raw)


def decode_event(raw: bytes) -> tuple[EventType, KeyInfo]:
    kind, key, _ = split_event(raw)
    return EventType(kind), decode_key(key)


_EVENT_HEAD = struct.Struct("=IB")
_EVENT_KEY = Event.key.offset
_EVENT_FIRST = struct.Struct("=Q")
_EVENT_FIRST_AT = Event.first_ns.offset


def split_event(raw: bytes) -> tuple[int, bytes, int]:
    """(event type, raw flow key of its family's tables, first_ns) of a ring buffer record."""
    kind, l3proto = _EVENT_HEAD.unpack_from(raw)
    end = _EVENT_KEY + (KEY4_LEN if l3proto == L3_IPV4 else KEY6_LEN)
    return kind, raw[_EVENT_KEY:end], _EVENT_FIRST.unpack_from(raw, _EVENT_FIRST_AT)[0]


def encode_config(heartbeat_timeout_s: float, event_rate: int = EVENT_RATE,
                  event_burst: int = EVENT_BURST, dsa_conduits: tuple[int, ...] = ()) -> bytes:
    """.rodata.config; event_rate 0 sends every NEW event; dsa_conduits: the ifindexes whose
    frames carry the object's DSA tag."""
    if len(dsa_conduits) > DSA_CONDUITS:
        raise ValueError(f"at most {DSA_CONDUITS} DSA conduits per object, not "
                         f"{len(dsa_conduits)}")
    interval = 10**9 // event_rate if event_rate else 0
    cfg = Config(heartbeat_timeout_ns=int(heartbeat_timeout_s * 1e9),
                 event_interval_ns=interval, event_burst_ns=interval * event_burst)
    cfg.dsa_conduits[:len(dsa_conduits)] = dsa_conduits
    return bytes(cfg)


def encode_runtime(heartbeat_ns: int, gen: int = 0, proving: bool = False) -> bytes:
    return bytes(Runtime(heartbeat_ns=heartbeat_ns, gen=gen, proving=int(proving)))


def sum_stats(per_cpu: list[bytes]) -> dict[Counter, int]:
    """Adds up the per-CPU values of ebpfw_stats."""
    totals = dict.fromkeys(list(Counter)[:-1], 0)
    for raw in per_cpu:
        s = Stats.from_buffer_copy(raw[:ctypes.sizeof(Stats)])
        for c in totals:
            totals[c] += s.counters[c]
    return totals
