# SPDX-License-Identifier: GPL-2.0-only
"""A loaded fast-path object for BPF_PROG_TEST_RUN, and scapy frames to feed it."""
from __future__ import annotations

import ipaddress
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.packet import Packet, Raw

from fw_ebpf import maps
from fw_ebpf.flowtable import FlowTables
from fw_ebpf.libbpf import BpfObject, RingBuffer

XDP_DROP, XDP_PASS, XDP_REDIRECT = 1, 2, 4
TC_ACT_UNSPEC, TC_ACT_SHOT, TC_ACT_REDIRECT = 0xFFFFFFFF, 2, 7
LO_IFINDEX = 1   # test runs without a context use the loopback device

ROUTER_IN_MAC = "02:00:00:00:00:01"
CLIENT_MAC = "02:00:00:00:00:02"
ROUTER_OUT_MAC = "02:00:00:00:01:01"
NEXT_HOP_MAC = "02:00:00:00:01:02"


@dataclass(frozen=True)
class Hook:
    name: str
    program: str
    passed: int
    dropped: int
    forwarded: int


XDP = Hook("xdp", "ebpfw_xdp", XDP_PASS, XDP_DROP, XDP_REDIRECT)
TC = Hook("tc", "ebpfw_tc", TC_ACT_UNSPEC, TC_ACT_SHOT, TC_ACT_REDIRECT)
HOOKS = (XDP, TC)


@dataclass(frozen=True)
class L2:
    """One L2 encapsulation, both as scapy layers and as the ABI describes it."""

    name: str
    vlans: tuple[int, ...] = ()
    tpid: int = 0x8100
    pppoe_sid: int | None = None

    def layers(self, src: str, dst: str, l3proto: int) -> Packet:
        pkt: Packet = Ether(src=src, dst=dst)
        if len(self.vlans) == 2:
            outer = Dot1AD if self.tpid == 0x88A8 else Dot1Q
            pkt = pkt / outer(vlan=self.vlans[0]) / Dot1Q(vlan=self.vlans[1])
        elif self.vlans:
            pkt = pkt / Dot1Q(vlan=self.vlans[0])
        if self.pppoe_sid is not None:
            pkt = pkt / PPPoE(sessionid=self.pppoe_sid) / PPP(proto=0x21 if l3proto == 4 else 0x57)
        return pkt

    def key_fields(self) -> dict:
        vlan = (tuple(self.vlans) + (0, 0))[:2]
        return {"vlan": vlan, "pppoe_sid": self.pppoe_sid or 0}

    def out(self) -> maps.L2Out:
        return maps.L2Out(dmac=NEXT_HOP_MAC, smac=ROUTER_OUT_MAC, vlans=self.vlans,
                          vlan_tpid=self.tpid, pppoe_sid=self.pppoe_sid)


# ingress and egress variants use different ids, so a copied id cannot pass for a written one
L2_IN = {
    "untagged": L2("untagged"),
    "vlan": L2("vlan", vlans=(10,)),
    "qinq": L2("qinq", vlans=(100, 10), tpid=0x88A8),
    "pppoe": L2("pppoe", pppoe_sid=0x1234),
}
L2_OUT = {
    "untagged": L2("untagged"),
    "vlan": L2("vlan", vlans=(20,)),
    "qinq": L2("qinq", vlans=(200, 20), tpid=0x88A8),
    "pppoe": L2("pppoe", pppoe_sid=0x4321),
}

ADDRS = {
    4: dict(client="192.168.1.10", server="198.51.100.20", wan="203.0.113.2", lan="192.168.1.20"),
    6: dict(client="fd12:3456:789a::10", server="2001:db8::20", wan="2001:db8:ffff::2",
            lan="fd12:3456:789a::20"),
}


def flow_tuple(family: int, l4: str) -> maps.Tuple:
    a = ADDRS[family]
    return maps.Tuple(6 if l4 == "tcp" else 17, ipaddress.ip_address(a["client"]),
                      ipaddress.ip_address(a["server"]), 40000, 443)


def nat_tuple(t: maps.Tuple, nat: str) -> maps.Tuple:
    a = ADDRS[t.saddr.version]
    saddr, sport, daddr, dport = t.saddr, t.sport, t.daddr, t.dport
    if nat in ("snat", "both"):
        saddr, sport = ipaddress.ip_address(a["wan"]), 61000
    if nat in ("dnat", "both"):
        daddr, dport = ipaddress.ip_address(a["lan"]), 8443
    return maps.Tuple(t.l4proto, saddr, daddr, sport, dport)


def l3l4(t: maps.Tuple, ttl: int = 64, tcp_flags: str = "A", udp_csum: int | None = None,
         payload: bytes = b"ebpfw" * 8) -> Packet:
    if t.saddr.version == 4:
        ip: Packet = IP(src=str(t.saddr), dst=str(t.daddr), ttl=ttl, id=0x4242)
    else:
        ip = IPv6(src=str(t.saddr), dst=str(t.daddr), hlim=ttl, fl=0x12345)
    if t.l4proto == 6:
        l4: Packet = TCP(sport=t.sport, dport=t.dport, flags=tcp_flags, seq=1000, ack=2000)
    else:
        l4 = UDP(sport=t.sport, dport=t.dport, chksum=udp_csum)
    return ip / l4 / Raw(payload)


def frame(l2: L2, t: maps.Tuple, **kw) -> bytes:
    return bytes(l2.layers(CLIENT_MAC, ROUTER_IN_MAC, t.saddr.version) / l3l4(t, **kw))


def forwarded_frame(l2_out: L2, post: maps.Tuple, ttl: int = 64, **kw) -> bytes:
    """What the router must send: egress L2, post-NAT tuple, TTL - 1, fresh checksums."""
    return bytes(l2_out.layers(ROUTER_OUT_MAC, NEXT_HOP_MAC, post.saddr.version)
                 / l3l4(post, ttl=ttl - 1, **kw))


SKB_SIZE = 192                       # struct __sk_buff
SKB_INGRESS_IFINDEX, SKB_IFINDEX = 36, 40


def skb_ctx(ingress_ifindex: int, ifindex: int = LO_IFINDEX) -> bytes:
    """A __sk_buff for a TC test run: the device it is on, the one it was received on."""
    ctx = bytearray(SKB_SIZE)
    struct.pack_into("=II", ctx, SKB_INGRESS_IFINDEX, ingress_ifindex, ifindex)
    return bytes(ctx)


def checksums_verify(data: bytes) -> bool:
    """Every IP / TCP / UDP checksum in the frame equals what scapy computes."""
    pkt = Ether(data)
    for layer in (IP, TCP, UDP):
        if layer not in pkt:
            continue
        got = pkt[layer].chksum
        if layer is UDP and got == 0 and IP in pkt:
            continue   # IPv4 UDP without checksum
        clone = pkt.copy()
        del clone[layer].chksum
        if Ether(bytes(clone))[layer].chksum != got:
            return False
    return True


@dataclass
class FastPath:
    """The fast-path object loaded (not attached) with maps at hand."""

    obj: BpfObject
    events: list[bytes] = field(default_factory=list)
    gen: int = 0
    proving: bool = False

    def __post_init__(self) -> None:
        self.flows = FlowTables(self.obj.map)
        self.stats_map = self.obj.map("ebpfw_stats")
        self.tx = self.obj.map("ebpfw_tx")
        self.macs = self.obj.map(maps.MACS_MAP)
        self.runtime = self.obj.map("ebpfw_runtime")
        self.egress = {fam: self.obj.map(name) for fam, name in maps.EGRESS_TABLES.items()}
        self.ring = RingBuffer(self.obj.map("ebpfw_events"), self.events.append)

    def heartbeat(self, ns: int | None = None) -> None:
        self.runtime.update(bytes(4), maps.encode_runtime(
            time.monotonic_ns() if ns is None else ns, self.gen, self.proving))

    def set_runtime(self, gen: int, proving: bool) -> None:
        """A new generation / proving state, in force at the next packet: each CPU keeps what
        it read until the tick changes, so that is forgotten here (the tests cannot wait for
        a tick deterministically; the daemon does not need to)."""
        self.gen, self.proving = gen, proving
        self.heartbeat()
        tick = maps.Stats.tick.offset
        slots = [bytearray(v) for v in self.stats_map.lookup_percpu(bytes(4))]
        for slot in slots:
            slot[tick:tick + 8] = bytes(8)
        stride = self.stats_map.percpu_stride
        self.stats_map.update(bytes(4), b"".join(bytes(s).ljust(stride, b"\0") for s in slots))

    def reset(self) -> None:
        for key in list(self.flows.keys()):
            self.flows.delete(key)
        for table in self.egress.values():
            for key in list(table.keys()):
                table.delete(key)
        self.ring.consume()
        self.events.clear()
        self.stats_map.update(bytes(4), bytes(self.stats_map.value_size))   # every CPU: zero
        self.set_runtime(0, False)

    def stats(self) -> dict[maps.Counter, int]:
        return maps.sum_stats(self.stats_map.lookup_percpu(bytes(4)))

    def run(self, hook: Hook, data: bytes):
        return self.obj.program(hook.program).test_run(data)

    def drain_raw_events(self) -> list[bytes]:
        self.ring.consume()
        got = list(self.events)
        self.events.clear()
        return got

    def drain_events(self) -> list[tuple[maps.EventType, maps.KeyInfo]]:
        return [maps.decode_event(e) for e in self.drain_raw_events()]


def load_fastpath(path: Path, heartbeat_timeout_s: float, event_rate: int = maps.EVENT_RATE,
                  event_burst: int = maps.EVENT_BURST, pending_max: int | None = None,
                  dsa_conduits: tuple[int, ...] = ()) -> FastPath:
    obj = BpfObject(str(path))
    obj.set_rodata(maps.CONFIG_SECTION,
                   maps.encode_config(heartbeat_timeout_s, event_rate, event_burst, dsa_conduits))
    if pending_max is not None:
        for _, pending in maps.TABLES.values():
            obj.set_max_entries(pending, pending_max)
    obj.load()
    fp = FastPath(obj)
    fp.tx.update(struct.pack("=I", LO_IFINDEX), struct.pack("=I", LO_IFINDEX))
    for mac in (ROUTER_IN_MAC, ROUTER_OUT_MAC):     # the router's own, as the daemon writes them
        fp.macs.update(bytes.fromhex(mac.replace(":", "")), struct.pack("=I", LO_IFINDEX))
    return fp
