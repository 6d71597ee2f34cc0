# SPDX-License-Identifier: GPL-2.0-only
"""What the fast path must do with a frame, written again in Python from DESIGN.md and the ABI:
the reference the fuzz test holds the BPF programs to. It parses raw bytes (not scapy), keeps
its own copy of the flow tables, and says for each frame: passed (and why), dropped, or
forwarded, with the flow-table changes and events that go with it. The forwarded frame is not
computed here the way the BPF code computes it; check_forwarded() checks it field by field and
its checksums by summing them again."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from fw_ebpf import maps
from fw_ebpf.maps import Counter, State

ETH_HLEN, VLAN, QINQ, PPPOE_SES, IPV4, IPV6 = 14, 0x8100, 0x88A8, 0x8864, 0x0800, 0x86DD
TCP, UDP = 6, 17
FIN, SYN, RST = 0x01, 0x02, 0x04
IPV6_EXT = {0, 43, 44, 60, 51, 135, 139, 140}


def be16(b: bytes, off: int) -> int:
    return int.from_bytes(b[off:off + 2], "big")


@dataclass(frozen=True)
class Parsed:
    key: bytes
    family: int
    l4proto: int
    l2_len: int
    l3_len: int
    l4_off: int          # from the frame's start
    ttl: int
    tcp_flags: int
    pppoe: bool
    udp_check: int


def parse(frame: bytes, ifindex: int) -> Parsed | Counter:
    """The parsed packet, or the pass reason (parse.h's rules)."""
    n = len(frame)
    if n < ETH_HLEN:
        return Counter.PASS_TRUNCATED
    if frame[0] & 1:
        return Counter.PASS_MULTICAST
    proto, pos, vlan = be16(frame, 12), ETH_HLEN, [0, 0]
    vlans = 0
    for _ in range(2):
        if proto not in (VLAN, QINQ):
            break
        if vlans == 1 and proto != VLAN:
            return Counter.PASS_L2
        if pos + 4 > n:
            return Counter.PASS_TRUNCATED
        vlan[vlans] = be16(frame, pos) & 0x0FFF
        vlans += 1
        proto, pos = be16(frame, pos + 2), pos + 4
    if proto in (VLAN, QINQ):
        return Counter.PASS_L2
    pppoe, sid, pppoe_len = False, 0, 0
    if proto == PPPOE_SES:
        if pos + 8 > n:
            return Counter.PASS_TRUNCATED
        if frame[pos] != 0x11 or frame[pos + 1] != 0:
            return Counter.PASS_L2
        ppp = be16(frame, pos + 6)
        if ppp not in (0x21, 0x57):
            return Counter.PASS_NOT_IP
        proto = IPV4 if ppp == 0x21 else IPV6
        pppoe, sid, pppoe_len, pos = True, be16(frame, pos + 2), be16(frame, pos + 4), pos + 8
    l2_len = pos
    if proto == IPV4:
        if pos + 20 > n:
            return Counter.PASS_TRUNCATED
        if frame[pos] != 0x45:
            return Counter.PASS_NOT_IP if frame[pos] >> 4 != 4 else Counter.PASS_IP_OPTIONS
        if be16(frame, pos + 6) & 0x3FFF:
            return Counter.PASS_FRAGMENT
        l4proto = frame[pos + 9]
        if l4proto not in (TCP, UDP):
            return Counter.PASS_L4_PROTO
        l3_len = be16(frame, pos + 2)
        if l3_len < 20 or pos + l3_len > n:
            return Counter.PASS_TRUNCATED
        saddr, daddr, ttl, l4_off, family = (frame[pos + 12:pos + 16], frame[pos + 16:pos + 20],
                                             frame[pos + 8], pos + 20, 4)
    elif proto == IPV6:
        if pos + 40 > n:
            return Counter.PASS_TRUNCATED
        if frame[pos] >> 4 != 6:
            return Counter.PASS_NOT_IP
        l4proto = frame[pos + 6]
        if l4proto not in (TCP, UDP):
            return Counter.PASS_IPV6_EXT if l4proto in IPV6_EXT else Counter.PASS_L4_PROTO
        l3_len = 40 + be16(frame, pos + 4)
        if l3_len == 40 or pos + l3_len > n:
            return Counter.PASS_TRUNCATED
        saddr, daddr, ttl, l4_off, family = (frame[pos + 8:pos + 24], frame[pos + 24:pos + 40],
                                             frame[pos + 7], pos + 40, 6)
    else:
        return Counter.PASS_NOT_IP
    if pppoe and pppoe_len != l3_len + 2:
        return Counter.PASS_L2
    payload = l3_len - (l4_off - l2_len)
    flags, udp_check = 0, 0
    if l4proto == TCP:
        if l4_off + 20 > n:
            return Counter.PASS_TRUNCATED
        doff = frame[l4_off + 12] >> 4
        if doff < 5 or doff * 4 > payload:
            return Counter.PASS_TRUNCATED
        flags = frame[l4_off + 13]
    else:
        if l4_off + 8 > n:
            return Counter.PASS_TRUNCATED
        ulen = be16(frame, l4_off + 4)
        if ulen < 8 or ulen > payload:
            return Counter.PASS_TRUNCATED
        udp_check = be16(frame, l4_off + 6)
    head = struct.pack("=IHHHBB", ifindex, vlan[0], vlan[1], sid, maps.NO_DSA_PORT, l4proto)
    key = head + frame[l4_off:l4_off + 4] + saddr + daddr
    return Parsed(key, family, l4proto, l2_len, l3_len, l4_off, ttl, flags, pppoe, udp_check)


@dataclass
class Outcome:
    verdict: str                      # "pass", "drop", "forward"
    counters: dict[Counter, int]      # increments of ebpfw_stats
    events: list[tuple[maps.EventType, bytes]] = field(default_factory=list)
    parsed: Parsed | None = None
    flow: maps.Flow | None = None     # the FORWARD entry used


@dataclass
class Model:
    """The flow tables as the fast path will find them, and what it does to them."""

    tx: set[int]
    decided: dict[bytes, maps.Flow] = field(default_factory=dict)
    gen: int = 0                       # ebpfw_runtime's generation
    pending: set[bytes] = field(default_factory=set)

    def run(self, frame: bytes, ifindex: int, xdp: bool) -> Outcome:
        p = parse(frame, ifindex)
        if isinstance(p, Counter):
            return self._pass(p)
        f = self.decided.get(p.key)
        if f is None:
            if p.key in self.pending:
                return self._pass(Counter.PASS_PENDING, p)
            if p.tcp_flags & (FIN | RST):
                return self._pass(Counter.PASS_TCP_CLOSE, p)
            self.pending.add(p.key)
            out = self._pass(Counter.PASS_MISS, p)
            out.events.append((maps.EventType.NEW, p.key))
            return out
        if f.state == State.PENDING:
            return self._pass(Counter.PASS_PENDING, p)
        if f.state == State.PROVING:
            return self._pass(Counter.PASS_PROVING, p)
        if f.state in (State.DROP, State.FORWARD) and f.gen != self.gen:
            return self._pass(Counter.PASS_STALE, p)
        if f.state == State.DROP:   # the fuzz test's verdicts never expire
            f.packets, f.bytes = f.packets + 1, f.bytes + p.l3_len
            return Outcome("drop", {Counter.RX: 1, Counter.DROP: 1}, parsed=p)
        if f.state != State.FORWARD:
            return self._pass(Counter.PASS_VERDICT, p)
        if f.flags & maps.F_CLOSING:
            return self._pass(Counter.PASS_CLOSING, p)
        if p.tcp_flags & (FIN | RST):
            f.flags |= maps.F_CLOSING
            out = self._pass(Counter.PASS_TCP_CLOSE, p)
            out.events.append((maps.EventType.CLOSING, p.key))
            return out
        checks = [
            (p.tcp_flags & SYN, Counter.PASS_TCP_SYN),
            (xdp and f.flags & maps.F_TC_ONLY, Counter.PASS_OTHER_HOOK),
            (p.ttl <= 1, Counter.PASS_TTL),
            (p.family == 6 and p.l4proto == UDP and p.udp_check == 0,
             Counter.PASS_UDP_ZERO_CSUM),
            (p.l3_len > f.mtu, Counter.PASS_MTU),
            (xdp and f.oif not in self.tx, Counter.PASS_NO_TX),
            (not xdp and p.pppoe and not f.l2.pppoe_sid, Counter.PASS_L2_REWRITE),
        ]
        for failed, reason in checks:
            if failed:
                return self._pass(reason, p)
        f.packets, f.bytes = f.packets + 1, f.bytes + p.l3_len
        return Outcome("forward", {Counter.RX: 1, Counter.FORWARD: 1}, parsed=p, flow=f)

    @staticmethod
    def _pass(reason: Counter, p: Parsed | None = None) -> Outcome:
        return Outcome("pass", {Counter.RX: 1, Counter.PASS: 1, reason: 1}, parsed=p)


# ---- the forwarded frame ------------------------------------------------------------------------

def egress_l2(f: maps.Flow, l3_len: int, family: int) -> bytes:
    l2 = f.l2
    out = bytes(l2.dmac) + bytes(l2.smac)
    tpid = int.from_bytes(struct.pack("=H", l2.vlan_tpid), "big")   # stored network order
    if l2.vlans >= 1:
        out += struct.pack("!HH", tpid, l2.vlan_tci[0])
    if l2.vlans >= 2:
        out += struct.pack("!HH", VLAN, l2.vlan_tci[1])
    if l2.pppoe_sid:
        return out + struct.pack("!HHHHH", PPPOE_SES, 0x1100, l2.pppoe_sid, l3_len + 2,
                                 0x21 if family == 4 else 0x57)
    return out + struct.pack("!H", IPV4 if family == 4 else IPV6)


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))


def ip_csum_ok(l3: bytes) -> bool:
    return _fold(_sum16(l3[:20])) == 0xFFFF


def l4_csum_ok(l3: bytes, family: int, l4proto: int, l3_len: int) -> bool:
    """The L4 checksum over the pseudo header and the L4 bytes the IP header declares."""
    hlen = 20 if family == 4 else 40
    l4 = l3[hlen:l3_len]
    addrs = l3[12:20] if family == 4 else l3[8:40]
    pseudo = addrs + (struct.pack("!BBH", 0, l4proto, len(l4)) if family == 4
                      else struct.pack("!IxxxB", len(l4), l4proto))
    return _fold(_sum16(pseudo + l4)) == 0xFFFF


def _csum_field(p: Parsed) -> int:
    """Offset of the L4 checksum from the L3 header."""
    return (p.l4_off - p.l2_len) + (16 if p.l4proto == TCP else 6)


def check_forwarded(frame: bytes, out: bytes, p: Parsed, f: maps.Flow) -> list[str]:
    """Differences between the frame the fast path sent and the one it had to send."""
    problems = []
    l2 = egress_l2(f, p.l3_len, p.family)
    if out[:len(l2)] != l2:
        problems.append(f"L2 header {out[:len(l2)].hex()} instead of {l2.hex()}")
    l3_in, l3_out = frame[p.l2_len:], out[len(l2):]
    if len(l3_out) != len(l3_in):
        return problems + [f"{len(l3_out)} bytes after L2 instead of {len(l3_in)}"]
    want = bytearray(l3_in)
    nat = bool(f.flags & maps.F_NAT)
    if p.family == 4:
        want[8] -= 1
        if nat:
            want[12:16], want[16:20] = bytes(f.nat_saddr[:4]), bytes(f.nat_daddr[:4])
    else:
        want[7] -= 1
        if nat:
            want[8:24], want[24:40] = bytes(f.nat_saddr), bytes(f.nat_daddr)
    l4 = p.l4_off - p.l2_len
    if nat:
        want[l4:l4 + 2] = struct.pack("=H", f.nat_sport)
        want[l4 + 2:l4 + 4] = struct.pack("=H", f.nat_dport)
    csum = _csum_field(p)
    skip = {csum, csum + 1} | ({10, 11} if p.family == 4 else set())
    for i, (a, b) in enumerate(zip(l3_out, want)):
        if i not in skip and a != b:
            problems.append(f"L3 byte {i}: {a:#04x} instead of {b:#04x}")
            break
    if p.family == 4 and ip_csum_ok(l3_out) != ip_csum_ok(l3_in):
        problems.append("IPv4 header checksum changed validity")
    if p.l4proto == UDP and p.family == 4 and p.udp_check == 0:
        if be16(l3_out, csum) != 0:
            problems.append("IPv4 UDP without checksum got one")
    elif (l4_csum_ok(l3_out, p.family, p.l4proto, p.l3_len)
          != l4_csum_ok(l3_in, p.family, p.l4proto, p.l3_len)):
        problems.append("L4 checksum changed validity")
    return problems
