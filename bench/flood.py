# SPDX-License-Identifier: GPL-2.0-only
"""Flood: new random tuples from the WAN side while established flows run, XDP and TC mode.

The lab router (tests/lab.py, fw4 ruleset) runs the daemon; FLOWS echo flows (TCP and UDP,
IPv4 and IPv6, tests/traffic.py, ~100 messages a second each) are offloaded first. Then, for
FLOOD_S seconds, the server's veth sends RATE UDP datagrams a second to the router's WAN
addresses, each of a new random tuple (bench/bpf/flood.c run with BPF_F_TEST_XDP_LIVE_FRAMES,
paced in chunks from user space, on GEN_CPU; the router's eth1 NAPI thread on ROUTER_CPU). fw4
rejects them all; each is a miss in the fast path: a PENDING entry and, over the rate limit,
a shed event.

Every second, from outside (bench/observe.py): the established flows' entries in the pinned
flow table (present, FORWARD, packet counter risen since the last second), the fast path's
counters (misses = the rate that arrived, shed and lost events, heartbeat fail-opens), the
pending and decided tables' occupancy, the daemon's CPU time and RSS, and how long `status`
takes to answer. The echo clients count lost and corrupt messages over the whole window.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import statistics
import time
from typing import Any

import common
from common import GEN_CPU, ROUTER_CPU, in_netns, load, log, percpu_total, pin, \
    proc_cpu_seconds, run_live, runtime_ns, summary, threaded_napi
from forwarding import udp_frame
from fw_ebpf import control, maps
from lab import ROUTER_WAN4, ROUTER_WAN6, SERVER4, SERVER6, Lab
from observe import PinnedTables, proc_status

_STATE = maps.Flow.state.offset

MODES = ("xdp", "tc")
ROUNDS = int(os.environ.get("EBPFW_FLOOD_ROUNDS", "3"))
RATE = 100_000               # new tuples per second offered
FLOOD_S, PRE_S, POST_S = 30.0, 3.0, 5.0
# after a pause the generator catches up on at most SLACK_NS of frames at CATCH_UP x RATE
SLACK_NS, CATCH_UP = 50_000_000, 1.5
FLOWS = (("tcp", SERVER4), ("tcp", SERVER6), ("udp", SERVER4), ("udp", SERVER6)) * 2
INTERVAL = 0.01              # between a flow's messages
STALL_SPAN = 3               # seconds in which an established flow's counters must rise
# counted messages: more than the window takes at 1 / INTERVAL a second, so the flows outlive it
COUNT = int((PRE_S + FLOOD_S + POST_S) / INTERVAL * 1.2)
SPORT = 46000
NAPI_PRIORITY = 50           # SCHED_FIFO, see run()
DAEMON_ARGS = ("--log-level", "info", "--sweep-interval", "1", "--heartbeat-timeout", "5")
# random fields (source address low 16 bits, ports) zero: flood.c adds them
TEMPLATE_SRC4, TEMPLATE_SRC6 = "100.64.0.0", "2001:db8:f100::"


class Generator:
    """flood.c, its templates, and a child process pacing it at RATE frames a second."""

    def __init__(self, lab: Lab) -> None:
        self.obj = load("flood")
        self.prog = self.obj.program("flood")
        self.count, self.pace = self.obj.map("flood_count"), self.obj.map("flood_pace")
        src_mac = common.ns_sh(lab.server, "cat /sys/class/net/eth1/address").strip()
        dst_mac = common.ns_sh(lab.router, "cat /sys/class/net/eth1/address").strip()
        self.frames = [udp_frame(src_mac, dst_mac, TEMPLATE_SRC4, ROUTER_WAN4, 64, 0, 0),
                       udp_frame(src_mac, dst_mac, TEMPLATE_SRC6, ROUTER_WAN6, 64, 0, 0)]
        for i, frame in enumerate(self.frames):
            assert len(frame) == 64, f"flood template {i} is {len(frame)} bytes"
            self.obj.map("flood_tmpl").update(i.to_bytes(4, "little"), frame)
        self.ns, self.ifindex = lab.server, lab.ifindex(lab.server, "eth1")
        self.pid = 0

    def sent(self) -> int:
        return percpu_total(self.count)

    def start(self) -> None:
        """Floods until stop(): one long test run (flood.c paces itself)."""
        interval = 10**9 // RATE
        self.pace.update(bytes(4), struct.pack("=QQQQQ", interval, int(interval / CATCH_UP),
                                               SLACK_NS, 0, 0))
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.sched_setaffinity(0, {GEN_CPU})
                os.setpriority(os.PRIO_PROCESS, 0, -20)
                with in_netns(self.ns):
                    while True:
                        run_live(self.prog, self.frames[0], self.ifindex, 50_000_000, batch=64)
            finally:
                os._exit(0)

    def stop(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
            self.pid = 0

    def close(self) -> None:
        self.stop()
        self.obj.close()


def _offloaded(tables: PinnedTables, sports: set[int]) -> dict[bytes, str]:
    """The FORWARD entries of the connections with these client ports: key -> table."""
    out = {}
    for name in ("ebpfw_flows4", "ebpfw_flows6"):
        for key, value in tables.entries(name).items():
            t = maps.decode_key(key).tuple
            if value[_STATE] == maps.State.FORWARD and {t.sport, t.dport} & sports:
                out[key] = name
    return out


def _status_ms(lab: Lab) -> float | None:
    """How long `status` takes to answer (None: not within 2 s)."""
    t = time.monotonic()
    try:
        control.call(lab.control, "status", timeout=2)
    except control.ControlError:
        return None
    return (time.monotonic() - t) * 1000


def _sample(lab: Lab, pid: int, tables: PinnedTables, gen: Generator, t0: float,
            keys: dict[bytes, str]) -> dict[str, Any]:
    counts = tables.counts()
    st = proc_status(pid)
    flows: dict[str, tuple[str, int] | None] = {}
    for key, name in keys.items():
        value = tables.tables[name].lookup(key)
        flows[key.hex()] = None if value is None else \
            (maps.State(value[_STATE]).name.lower(), maps.FLOW_HEAD.unpack_from(value)[0])
    return {"t": time.monotonic() - t0, "sent": gen.sent(), "counters": tables.counters(),
            "pending": counts["ebpfw_pending4"] + counts["ebpfw_pending6"],
            "decided": counts["ebpfw_flows4"] + counts["ebpfw_flows6"],
            "cpu_s": proc_cpu_seconds(pid), "rss_kb": st["VmRSS"], "hwm_kb": st["VmHWM"],
            "status_ms": _status_ms(lab), "flows": flows}


def _survival(samples: list[dict[str, Any]], keys: dict[bytes, str]) -> dict[str, Any]:
    """Per established flow entry: FORWARD at every sample, its packet counter risen across
    every STALL_SPAN samples (a UDP echo client waits 2 s for an echo that was lost, so a
    single quiet second is loss, not a flow the fast path stopped carrying); and how many
    one-second intervals were quiet."""
    out: dict[str, Any] = {"entries": len(keys), "survived": 0, "gone": 0, "not_forward": 0,
                           "stalled": 0, "quiet_seconds": 0, "failures": []}
    for key in keys:
        seen = [s["flows"][key.hex()] for s in samples]
        packets = [v[1] for v in seen if v is not None]
        out["quiet_seconds"] += sum(b <= a for a, b in zip(packets, packets[1:]))
        if any(v is None for v in seen):
            why = "gone"
        elif any(v[0] != "forward" for v in seen):
            why = "not_forward"
        elif any(b <= a for a, b in zip(packets, packets[STALL_SPAN:])):
            why = "stalled"
        else:
            out["survived"] += 1
            continue
        out[why] += 1
        out["failures"].append({"key": key.hex(), "why": why,
                                "t": [round(s["t"], 1) for s in samples], "seen": seen})
    return out


def _veth_drops(lab: Lab) -> dict[str, int]:
    """Frames the router's WAN veth could not take (its ring of 256 full): the generator's
    refused transmits, and the server's own packets (the established flows' replies) dropped
    on their way in."""
    def stats(ns: str) -> dict[str, int]:
        out = {}
        for line in lab.sh(ns, "ethtool -S eth1").splitlines():
            name, _, value = line.strip().partition(": ")
            if value.isdigit():
                out[name] = int(value)
        return out

    refused = stats(lab.server).get("tx_queue_0_xdp_xmit_errors", 0)
    link = json.loads(lab.sh(lab.server, "ip -s -j link show dev eth1"))[0]["stats64"]
    # a veth's tx_dropped adds its refused XDP transmits to the skbs its peer had no room for
    return {"generator_refused": refused, "server_packets_dropped": link["tx"]["dropped"] - refused}


def _window(lab: Lab, gen: Generator, tables: PinnedTables, pid: int, flood: bool,
            first_sport: int) -> dict[str, Any]:
    """FLOWS offloaded, then PRE_S + FLOOD_S + POST_S seconds sampled once a second, the
    generator running for the FLOOD_S in the middle (or not: the control window)."""
    tag = f"{first_sport}"
    sports = {first_sport + i for i in range(len(FLOWS))}
    clients = [lab.traffic_bg(lab.client, proto, host, count=COUNT, interval=INTERVAL,
                              sport=first_sport + i, warmup_until=lab.gate(f"go{tag}"),
                              close_after=lab.gate(f"close{tag}"))
               for i, (proto, host) in enumerate(FLOWS)]
    try:
        keys = lab.wait_for(lambda: (k := _offloaded(tables, sports)) and
                            len(k) == 2 * len(FLOWS) and k,
                            what="every established flow offloaded", timeout=60)
        assert isinstance(keys, dict)
        lab.open_gate(f"go{tag}")
        drops = _veth_drops(lab)
        t0 = time.monotonic()
        samples = [_sample(lab, pid, tables, gen, t0, keys)]
        start = end = 0
        gen_cpu_s = 0.0
        while samples[-1]["t"] < PRE_S + FLOOD_S + POST_S:
            if not start and samples[-1]["t"] >= PRE_S:
                start = len(samples) - 1
                if flood:
                    gen.start()
            if start and not end and samples[-1]["t"] >= PRE_S + FLOOD_S:
                end = len(samples) - 1
                gen_cpu_s = runtime_ns([gen.pid]) / 1e9 if gen.pid else 0.0
                gen.stop()
            time.sleep(max(0.0, t0 + len(samples) - time.monotonic()))   # one a second
            samples.append(_sample(lab, pid, tables, gen, t0, keys))
        drops = {k: v - drops[k] for k, v in _veth_drops(lab).items()}
        for proc in clients:
            lab.wait_at_gate(f"close{tag}", proc)
        lab.open_gate(f"close{tag}")
        results = [json.loads(proc.communicate(timeout=60)[0]) for proc in clients]
    finally:
        gen.stop()
    out = _summarise_window(samples, start, end, keys, results)
    return {**out, "veth_drops": drops, "generator_cpu": gen_cpu_s / out["seconds"]}


def _delta(samples: list[dict[str, Any]], a: int, b: int, counter: str) -> int:
    return samples[b]["counters"][counter] - samples[a]["counters"][counter]


def _summarise_window(samples: list[dict[str, Any]], a: int, b: int, keys: dict[bytes, str],
                      results: list[dict]) -> dict[str, Any]:
    """Rates, counters and the daemon's cost over the flood's samples a..b; survival from a
    to the end (the flood and after it)."""
    wall = samples[b]["t"] - samples[a]["t"]
    per_s = [(y["counters"]["pass_miss"] - x["counters"]["pass_miss"]) / (y["t"] - x["t"])
             for x, y in zip(samples[a:b], samples[a + 1:b + 1])]
    during = samples[a:b + 1]
    statuses = [s["status_ms"] for s in during]
    return {
        "seconds": wall,
        "offered_per_s": (samples[b]["sent"] - samples[a]["sent"]) / wall,
        "arrived_per_s": _delta(samples, a, b, "pass_miss") / wall,
        "arrived_min_1s": min(per_s),
        "shed": _delta(samples, a, b, "event_shed"),
        "lost_events": _delta(samples, a, b, "event_lost"),
        "heartbeat_passes": _delta(samples, a, b, "pass_heartbeat"),
        "fast_path_forwarded": _delta(samples, a, b, "forward"),
        "daemon_cpu": (samples[b]["cpu_s"] - samples[a]["cpu_s"]) / wall,
        "rss_before_kb": samples[a]["rss_kb"],
        "rss_peak_kb": max(s["rss_kb"] for s in samples[a:]),
        "hwm_kb": samples[-1]["hwm_kb"],
        "pending_max": max(s["pending"] for s in during),
        "pending_mean": statistics.fmean(s["pending"] for s in during),
        "decided_at_start": samples[a]["decided"],
        "decided_max": max(s["decided"] for s in during),
        "status_unanswered": sum(v is None for v in statuses),
        "status_ms_max": max((v for v in statuses if v is not None), default=None),
        "survival": _survival(samples[a:], keys),
        "clients": {k: sum(r[k] for r in results) for k in ("sent", "received", "lost",
                                                            "corrupt")},
        "series": [{k: s[k] for k in ("t", "sent", "pending", "decided", "rss_kb", "cpu_s",
                                      "status_ms")} | {"miss": s["counters"]["pass_miss"],
                                                       "shed": s["counters"]["event_shed"]}
                   for s in samples],
    }


def _round(lab: Lab, gen: Generator, mode: str, first_sport: int) -> dict[str, Any]:
    """In one daemon run: a control window without the flood, then the flood window."""
    daemon = lab.start_daemon(*DAEMON_ARGS, interfaces=("eth0", "eth1"), mode=mode)
    try:
        with PinnedTables(lab.pin_dir) as tables:
            control_window = _window(lab, gen, tables, daemon.pid, False, first_sport)
            flood_window = _window(lab, gen, tables, daemon.pid, True,
                                   first_sport + len(FLOWS))
    finally:
        lab.stop_daemon()
    return {"mode": mode, "control": control_window, **flood_window}


def run() -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    with Lab() as lab:
        lab.start_echo_server(lab.server)
        # a router's softirq preempts its user space: so does this NAPI thread the CPU hogs
        # sharing this machine, or the veth ring overflows whenever they hold the CPU
        router_napi = threaded_napi(lab.router, "eth1")
        pin(router_napi, ROUTER_CPU)
        for pid in router_napi:
            os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(NAPI_PRIORITY))
        gen = Generator(lab)
        try:
            for n in range(ROUNDS):
                for m, mode in enumerate(MODES):
                    r = _round(lab, gen, mode, SPORT + (n * len(MODES) + m) * 2 * len(FLOWS))
                    rounds.append(r)
                    log(f"  flood {mode} {n + 1}/{ROUNDS}: {r['arrived_per_s']:,.0f} new tuples/s "
                        f"arrived ({r['offered_per_s']:,.0f} offered), survival "
                        f"{ {k: v for k, v in r['survival'].items() if k != 'failures'} }, shed {r['shed']:,}, lost {r['lost_events']:,}, daemon "
                        f"{r['daemon_cpu']:.0%} of a core, RSS peak {r['rss_peak_kb'] / 1024:.1f} MB, "
                        f"pending max {r['pending_max']:,}, clients {r['clients']} (without "
                        f"the flood: {r['control']['clients']})")
        finally:
            gen.close()
    by_mode: dict[str, Any] = {}
    for mode in MODES:
        rs = [r for r in rounds if r["mode"] == mode]
        by_mode[mode] = {
            m: summary([r[m] for r in rs]) for m in (
                "offered_per_s", "arrived_per_s", "arrived_min_1s", "generator_cpu", "shed",
                "lost_events",
                "heartbeat_passes", "daemon_cpu", "rss_peak_kb", "pending_max", "decided_max",
                "status_unanswered")}
        for window, pick in (("flood", lambda r: r), ("control", lambda r: r["control"])):
            by_mode[mode][window] = {
                "survived": sum(pick(r)["survival"]["survived"] for r in rs),
                "entries": sum(pick(r)["survival"]["entries"] for r in rs),
                "quiet_seconds": sum(pick(r)["survival"]["quiet_seconds"] for r in rs),
                "clients": {k: sum(pick(r)["clients"][k] for r in rs)
                            for k in ("sent", "received", "lost", "corrupt")}}
    return {"rate": RATE, "flood_s": FLOOD_S, "slack_ms": SLACK_NS / 1e6, "catch_up": CATCH_UP, "flows": len(FLOWS), "interval": INTERVAL,
            "rounds_n": ROUNDS, "by_mode": by_mode, "rounds": rounds,
            "placement": {"generator": GEN_CPU, "router eth1 NAPI thread": ROUTER_CPU,
                          "daemon": "unpinned"},
            "load": [round(x, 2) for x in os.getloadavg()]}
