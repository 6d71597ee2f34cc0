# SPDX-License-Identifier: GPL-2.0-only
"""Router packets/s (kernel + fw4 vs ebpfw) and early-drop cost (nftables vs ebpfw DROP).

Method (DESIGN.md, "Testing on a real kernel"): the lab router (tests/lab.py) with the fw4
ruleset; an in-kernel generator (bench/bpf/gen.c run with BPF_F_TEST_XDP_LIVE_FRAMES, XDP_TX
out of the sending veth) on CPU 0; the router's receiving veth with threaded NAPI pinned to
CPU 1, so the router's whole receive + forward path runs there; the server's veth with an XDP
sink (bench/bpf/sink.c) counting the UDP frames that arrive, its NAPI thread on CPU 0. The
generator offers more than any mode forwards; what the sink counts per second is the rate.
Every mode runs in every round and ratios come from one round.

Every figure also records the router's own cost: CPU time of its NAPI threads (schedstat) per
packet, which holds on a machine shared with other work where packets/s does not.

Early drop runs the generator on the router's CPU. Across CPUs the rig, not the router, was the
limit: a dropped frame goes back to the generator's page_pool through its ptr_ring, whose
producer lock the generator takes too for the frames the full veth ring refused, so at high
rates the router spun on that lock (on a NIC, XDP_DROP recycles into the driver's own pool on
its own CPU, without a lock). The cross-CPU placement is kept for comparison.
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, Callable

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

import common
from common import GEN_CPU, ROUTER_CPU, in_netns, load, log, ns_sh, percpu_total, pin, \
    cpu_times, run_live, runtime_ns, summary, threaded_napi
from fw_ebpf import libbpf, maps
from fw_ebpf.flowtable import FlowTables
from fw_ebpf.libbpf import BpfObject, Link
from lab import CLIENT4, CLIENT6, GATEWAY4, GATEWAY6, SERVER4, SERVER6, Lab

SPORT, DPORT = 40000, 9
SIZES = (64, 1400)                   # Ethernet frame without FCS
FAMILIES = ("ipv4-masq", "ipv6")
MODES = ("kernel", "xdp", "xdp-generic", "tc", "xdp-minimal")
# xdp-floor / tc-floor: the cheapest possible XDP / TC drop (bench/bpf/sink.c) on the router,
# the ceiling any drop at that hook can reach on this veth rig
DROP_MODES = ("nftables", "xdp", "xdp-generic", "tc", "xdp-floor", "tc-floor")
# generator on the router's CPU (same-cpu, the measurement) or on the other one (cross-cpu)
DROP_PLACEMENTS = ("same-cpu", "cross-cpu")
WARMUP_S, WINDOW_S = 0.7, 2.5
# The generator shares CPU 0 with the sink and runs as SCHED_IDLE, so the sink's NAPI thread
# always gets the CPU it needs; results record the offered rate next to each figure
DROP_DST = "198.51.100.77"           # routed back out of the WAN: fw4 drop_to_wan drops it
DAEMON_ARGS = ("--log-level", "info", "--sweep-interval", "1", "--heartbeat-timeout", "5")


def _mac(lab: Lab, ns: str, dev: str) -> str:
    return json.loads(lab.sh(ns, f"ip -j link show dev {dev}"))[0]["address"]


def udp_frame(src_mac: str, dst_mac: str, src: str, dst: str, size: int, sport: int = SPORT,
              dport: int = DPORT) -> bytes:
    ip = IPv6(src=src, dst=dst, hlim=64) if ":" in src else IP(src=src, dst=dst, ttl=64)
    pkt = Ether(src=src_mac, dst=dst_mac) / ip / UDP(sport=sport, dport=dport)
    pad = max(0, size - len(pkt))
    return bytes(pkt / Raw(bytes(range(256)) * (pad // 256) + bytes(range(pad % 256))))


@dataclass
class Rate:
    pps: float
    offered_pps: float
    router_cpu: float     # busy share of the router's CPU (1.0 = saturated), from /proc/stat
    router_steal: float   # share of it the hypervisor took
    gen_cpu: float        # busy share of the generator + sink CPU
    router_ns: float      # CPU time of the router's NAPI threads per counted packet


def _cpu_share(before: tuple[float, float, float], after: tuple[float, float, float]) \
        -> tuple[float, float]:
    total = max(after[2] - before[2], 1e-9)
    return (after[0] - before[0]) / total, (after[1] - before[1]) / total


class Rig:
    """Generator, sink and NAPI placement on a running lab."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        c, r, s = lab.client, lab.router, lab.server
        self.gen_obj, self.sink_obj = load("gen"), load("sink")
        self.gen = self.gen_obj.program("gen")
        self.gen_tmpl, self.gen_count = self.gen_obj.map("gen_tmpl"), self.gen_obj.map("gen_count")
        self.sink_count = self.sink_obj.map("sink_count")
        self.mac = {("c", "eth0"): _mac(lab, c, "eth0"), ("r", "br-lan"): _mac(lab, r, "br-lan"),
                    ("r", "eth1"): _mac(lab, r, "eth1"), ("s", "eth1"): _mac(lab, s, "eth1")}
        self.ifindex = {("c", "eth0"): lab.ifindex(c, "eth0"), ("r", "eth0"): lab.ifindex(r, "eth0"),
                        ("r", "eth1"): lab.ifindex(r, "eth1"), ("s", "eth1"): lab.ifindex(s, "eth1")}
        # the sink answers nothing, so neighbours must not need answers
        for addr in (GATEWAY4, GATEWAY6):
            lab.sh(r, f"ip neigh replace {addr} lladdr {self.mac[('s', 'eth1')]} dev eth1 "
                      "nud permanent")
        # a hairpin (WAN in, WAN out) would otherwise send ICMP redirects before the drop
        ns_sh(r, "sysctl -qw net.ipv4.conf.all.send_redirects=0 "
                 "net.ipv4.conf.eth1.send_redirects=0")
        with in_netns(s):
            self.sink_link: Link = libbpf.xdp_attach(self.sink_obj.program("sink"),
                                                     self.ifindex[("s", "eth1")], "native")
        self.router_napi = threaded_napi(r, "eth0") + threaded_napi(r, "eth1")
        self.other_napi = threaded_napi(s, "eth1")
        self.placement = {"generator": GEN_CPU, "router NAPI threads": ROUTER_CPU,
                          "sink NAPI thread": GEN_CPU, "daemon": GEN_CPU}

    def close(self) -> None:
        self.sink_link.close()
        self.gen_obj.close()
        self.sink_obj.close()

    def _pin(self) -> None:
        pin(self.router_napi, ROUTER_CPU)
        pin(self.other_napi, GEN_CPU)

    def generate(self, ns: str, ifindex: int, frame: bytes, cpu: int = GEN_CPU) -> int:
        """Forks a generator bound to cpu in ns; returns its pid (SIGKILL ends it). Beside the
        sink it runs as SCHED_IDLE; beside the router at normal priority, sharing its CPU."""
        self.gen_tmpl.update(bytes(4), frame[:64])
        pid = os.fork()
        if pid == 0:
            try:
                os.sched_setaffinity(0, {cpu})
                if cpu == GEN_CPU:
                    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
                with in_netns(ns):
                    while True:
                        run_live(self.gen, frame, ifindex, 50_000_000)
            finally:
                os._exit(0)
        return pid

    def measure(self, ns: str, ifindex: int, frame: bytes, count: Callable[[], int],
                seconds: float = WINDOW_S, gen_cpu: int = GEN_CPU) -> Rate:
        self._pin()
        pid = self.generate(ns, ifindex, frame, gen_cpu)
        try:
            time.sleep(WARMUP_S)
            c0, g0, t0 = count(), percpu_total(self.gen_count), time.monotonic()
            r0, s0, n0 = cpu_times(ROUTER_CPU), cpu_times(GEN_CPU), runtime_ns(self.router_napi)
            time.sleep(seconds)
            c1, g1, t1 = count(), percpu_total(self.gen_count), time.monotonic()
            r1, s1, n1 = cpu_times(ROUTER_CPU), cpu_times(GEN_CPU), runtime_ns(self.router_napi)
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        dt = t1 - t0
        router, steal = _cpu_share(r0, r1)
        return Rate((c1 - c0) / dt, (g1 - g0) / dt, router, steal, _cpu_share(s0, s1)[0],
                    (n1 - n0) / max(c1 - c0, 1))

    # -- forwarding ----------------------------------------------------------------------------

    def forward_frame(self, family: str, size: int) -> bytes:
        src, dst = (CLIENT4, SERVER4) if family == "ipv4-masq" else (CLIENT6, SERVER6)
        return udp_frame(self.mac[("c", "eth0")], self.mac[("r", "br-lan")], src, dst, size)

    def forward_rate(self, family: str, size: int) -> Rate:
        return self.measure(self.lab.client, self.ifindex[("c", "eth0")],
                            self.forward_frame(family, size), lambda: percpu_total(self.sink_count))

    def prime(self, family: str) -> None:
        """Sends a few frames of the flow and waits until the daemon forwards it."""
        src = f"{CLIENT4}:{SPORT}" if family == "ipv4-masq" else f"[{CLIENT6}]:{SPORT}"
        frame = self.forward_frame(family, 64)

        def offloaded() -> bool:
            return any(f["src"] == src for f in self.lab.flows("forward"))

        deadline = time.monotonic() + 15
        while not offloaded():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{family} flow not offloaded after 15 s:\n"
                                   + self.lab.daemon_log.read_text()[-2000:])
            self.gen_tmpl.update(bytes(4), frame[:64])
            with in_netns(self.lab.client):
                run_live(self.gen, frame, self.ifindex[("c", "eth0")], 4, batch=1)
            time.sleep(0.1)

    def minimal_forwarder(self) -> tuple[BpfObject, Link]:
        obj = load("fwd")
        obj.map("fwd_l2").update(bytes(4), bytes.fromhex(self.mac[("s", "eth1")].replace(":", ""))
                                 + bytes.fromhex(self.mac[("r", "eth1")].replace(":", "")))
        with in_netns(self.lab.router):
            obj.map("fwd_tx").update(bytes(4), struct.pack("=I", self.ifindex[("r", "eth1")]))
            link = libbpf.xdp_attach(obj.program("fwd"), self.ifindex[("r", "eth0")], "native")
        return obj, link

    # -- early drop ----------------------------------------------------------------------------

    def drop_frame(self) -> bytes:
        return udp_frame(self.mac[("s", "eth1")], self.mac[("r", "eth1")], SERVER4, DROP_DST, 64,
                         sport=SPORT + 1)

    def drop_rate(self, count: Callable[[], int], placement: str) -> Rate:
        return self.measure(self.lab.server, self.ifindex[("s", "eth1")], self.drop_frame(), count,
                            gen_cpu=ROUTER_CPU if placement == "same-cpu" else GEN_CPU)

    def nft_drop_count(self) -> int:
        out = json.loads(self.lab.sh(self.lab.router, "nft -j list chain inet fw4 drop_to_wan"))
        for item in out["nftables"]:
            rule = item.get("rule")
            if rule and any("drop" in e for e in rule["expr"]):
                return sum(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
        raise RuntimeError("fw4 chain drop_to_wan has no counted drop rule")


class EbpfwDrop:
    """The fast path loaded by the benchmark itself, with one DROP entry (the daemon has no
    policy module yet, and its sweep would re-admit an entry it did not write)."""

    def __init__(self, rig: Rig, mode: str) -> None:
        self.obj = BpfObject(str(common.EBPFW_OBJECT))
        self.obj.set_rodata(maps.CONFIG_SECTION, maps.encode_config(3600))
        self.obj.load()
        self.stats = self.obj.map("ebpfw_stats")
        self.obj.map("ebpfw_runtime").update(bytes(4), maps.encode_runtime(time.monotonic_ns()))
        ifindex = rig.ifindex[("r", "eth1")]
        t = maps.Tuple(socket.IPPROTO_UDP, ipaddress.ip_address(SERVER4),
                       ipaddress.ip_address(DROP_DST), SPORT + 1, DPORT)
        FlowTables(self.obj.map).update(maps.encode_key(ifindex, t),
                                        maps.encode_verdict(maps.State.DROP, 1 << 63))
        self.ifindex, self.mode, self.link = ifindex, mode, None
        with in_netns(rig.lab.router):
            if mode == "tc":
                self.created = libbpf.tc_hook_create(ifindex)
                libbpf.tc_attach(ifindex, self.obj.program("ebpfw_tc").fd, 0xEB, 0xEB00)
            else:
                self.link = libbpf.xdp_attach(self.obj.program("ebpfw_xdp"), ifindex,
                                              "native" if mode == "xdp" else "generic")
        self.rig = rig

    def count(self) -> int:
        return maps.sum_stats(self.stats.lookup_percpu(bytes(4)))[maps.Counter.DROP]

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
        else:
            with in_netns(self.rig.lab.router):
                libbpf.tc_detach(self.ifindex, 0xEB, 0xEB00)
                if self.created:
                    libbpf.tc_hook_destroy(self.ifindex)
        self.obj.close()


def _forward_round(lab: Lab, rig: Rig) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        obj = link = None
        if mode in ("xdp", "xdp-generic", "tc"):
            lab.start_daemon(*DAEMON_ARGS, interfaces=("eth0", "eth1"), mode=mode)
            assert lab.daemon is not None
            os.sched_setaffinity(lab.daemon.pid, {GEN_CPU})
        elif mode == "xdp-minimal":
            obj, link = rig.minimal_forwarder()
        try:
            for family in FAMILIES:
                if lab.daemon is not None:
                    rig.prime(family)
                for size in SIZES:
                    if mode == "xdp-minimal" and family == "ipv6":
                        continue   # no parsing: one figure per size is enough
                    rate = rig.forward_rate(family, size)
                    out[f"{family}/{size}/{mode}"] = vars(rate)
                    log(f"  {family:9} {size:4} B {mode:11} {rate.pps / 1e6:6.3f} Mpps "
                        f"(offered {rate.offered_pps / 1e6:.2f}, router CPU "
                        f"{rate.router_cpu:.0%}, steal {rate.router_steal:.0%})")
            if lab.daemon is not None:
                out[f"daemon/{mode}"] = {"stats": lab.stats()}
        finally:
            if lab.daemon is not None:
                lab.stop_daemon()
            if link is not None and obj is not None:
                link.close()
                obj.close()
    return out


def _drop_one(rig: Rig, mode: str, placement: str) -> Rate:
    if mode == "nftables":
        return rig.drop_rate(rig.nft_drop_count, placement)
    if mode == "xdp-floor":
        obj = load("sink")
        with in_netns(rig.lab.router):
            link = libbpf.xdp_attach(obj.program("sink"), rig.ifindex[("r", "eth1")], "native")
        try:
            return rig.drop_rate(lambda: percpu_total(obj.map("sink_count")), placement)
        finally:
            link.close()
            obj.close()
    if mode == "tc-floor":
        obj, ifindex = load("sink"), rig.ifindex[("r", "eth1")]
        with in_netns(rig.lab.router):
            created = libbpf.tc_hook_create(ifindex)
            libbpf.tc_attach(ifindex, obj.program("tc_sink").fd, 0xEB, 0xEB00)
        try:
            return rig.drop_rate(lambda: percpu_total(obj.map("sink_count")), placement)
        finally:
            with in_netns(rig.lab.router):
                libbpf.tc_detach(ifindex, 0xEB, 0xEB00)
                if created:
                    libbpf.tc_hook_destroy(ifindex)
            obj.close()
    fast = EbpfwDrop(rig, mode)
    try:
        return rig.drop_rate(fast.count, placement)
    finally:
        fast.close()


def _drop_round(rig: Rig) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for placement in DROP_PLACEMENTS:
        for mode in DROP_MODES:
            rate = _drop_one(rig, mode, placement)
            out[f"{placement}/{mode}"] = vars(rate)
            log(f"  drop {placement:9} {mode:11} {rate.pps / 1e6:6.3f} Mpps (offered "
                f"{rate.offered_pps / 1e6:.2f}), router {rate.router_ns:6.0f} ns a packet")
    return out


def run(rounds: int = 3) -> dict[str, Any]:
    os.sched_setaffinity(0, {GEN_CPU})
    fwd_rounds, drop_rounds = [], []
    with Lab() as lab:
        rig = Rig(lab)
        try:
            for r in range(rounds):
                log(f"forwarding round {r + 1}/{rounds}")
                fwd_rounds.append(_forward_round(lab, rig))
                log(f"early-drop round {r + 1}/{rounds}")
                drop_rounds.append(_drop_round(rig))
        finally:
            rig.close()
    return {"forwarding": _summarise_forwarding(fwd_rounds),
            "early_drop": _summarise_drop(drop_rounds),
            "placement": rig.placement, "window_s": WINDOW_S, "sizes": SIZES}


def _summarise_forwarding(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for family in FAMILIES:
        for size in SIZES:
            case: dict[str, Any] = {}
            for mode in MODES:
                key = f"{family}/{size}/{mode}"
                if key not in rounds[0]:
                    continue
                kernel = [r[f"{family}/{size}/kernel"]["pps"] for r in rounds]
                pps = [r[key]["pps"] for r in rounds]
                # packets per second of router CPU actually had: the same cost ratio when the
                # hypervisor or a neighbour takes part of the router's CPU during a window
                eff = [r[key]["pps"] / max(r[key]["router_cpu"], 1e-3) for r in rounds]
                eff_k = [r[f"{family}/{size}/kernel"]["pps"]
                         / max(r[f"{family}/{size}/kernel"]["router_cpu"], 1e-3) for r in rounds]
                case[mode] = {"pps": summary(pps),
                              "pps_per_cpu": summary(eff),
                              "x_kernel_per_cpu": summary([e / k for e, k in zip(eff, eff_k)]),
                              "offered_pps": summary([r[key]["offered_pps"] for r in rounds]),
                              "router_cpu": summary([r[key]["router_cpu"] for r in rounds]),
                              "router_steal": summary([r[key]["router_steal"] for r in rounds]),
                              "x_kernel": summary([p / k for p, k in zip(pps, kernel)]),
                              "router_ns": summary([r[key]["router_ns"] for r in rounds]),
                              "x_kernel_ns": summary(
                                  [r[f"{family}/{size}/kernel"]["router_ns"] / r[key]["router_ns"]
                                   for r in rounds])}
                minimal = f"ipv4-masq/{size}/xdp-minimal"
                if mode != "xdp-minimal" and minimal in rounds[0]:
                    case[mode]["x_minimal"] = summary(
                        [r[key]["pps"] / r[minimal]["pps"] for r in rounds])
            out[f"{family}/{size}"] = case
    out["daemon_stats"] = {k: v for k, v in rounds[-1].items() if k.startswith("daemon/")}
    return out


def _summarise_drop(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per placement and mode; x_nftables_cpu compares router CPU time per dropped packet."""
    out: dict[str, Any] = {}
    for placement in DROP_PLACEMENTS:
        case: dict[str, Any] = {}
        for mode in DROP_MODES:
            this = [r[f"{placement}/{mode}"] for r in rounds]
            nft = [r[f"{placement}/nftables"] for r in rounds]
            floor = [r[f"{placement}/xdp-floor"] for r in rounds]
            case[mode] = {
                "pps": summary([t["pps"] for t in this]),
                "router_ns": summary([t["router_ns"] for t in this]),
                "x_nftables_cpu": summary([n["router_ns"] / t["router_ns"]
                                           for t, n in zip(this, nft)]),
                "x_nftables": summary([t["pps"] / n["pps"] for t, n in zip(this, nft)]),
                "x_floor_cpu": summary([f["router_ns"] / t["router_ns"]
                                        for t, f in zip(this, floor)]),
                "offered_pps": summary([t["offered_pps"] for t in this]),
                "router_cpu": summary([t["router_cpu"] for t in this]),
                "router_steal": summary([t["router_steal"] for t in this])}
        out[placement] = case
    return out
