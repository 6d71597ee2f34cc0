# SPDX-License-Identifier: GPL-2.0-only
"""Control path: what the daemon costs and how fast it admits, against the number of offloaded
connections (issue 13: 0, 1k, 10k and 64k).

Real flows through the lab router (fw4 ruleset, masquerade, conntrack, the daemon in XDP
mode): bench/flows.py in the client namespace opens UDP flows to the server, whose veth sends
every datagram back (bench/bpf/reflect.c). ebpfw admits by proof, so a flow needs packets after
the daemon made it PROVING: each flow sends at 0, 10, 30, 70, 150, 310, 630, 1270, 2550 and
5110 ms, then every 2.5 s up to 20.11 s, then every 10 s (steady traffic, both directions;
bench/flows.py SCHEDULE, KEEPALIVE). Conntrack UDP timeouts are raised in the router and the
daemon's idle timeout set to an hour, so the offloaded set stays put while measured.

- idle: RSS of the daemon with no flow, after its first sweeps.
- 0 -> 1k and 1k -> 10k: new flows offered at PACED_RATE a second (sustained admission).
  `admission_ms` is the daemon's figure, first packet seen by the fast path -> FORWARD written
  (it includes waiting for the flow's next packet after PROVING: at most the schedule's gap);
  `proving_ms`, first packet -> PROVING written, is the daemon's own share.
- 10k -> top: the rest at once (a burst of >= 50k at 64k): seconds until every connection is
  offloaded (both directions FORWARD), or what is left when nothing moved for STALL_S; and
  until every one was PROVING or offloaded (`decided_s`, the daemon's part).
- at each level, with the steady traffic: daemon CPU (utime+stime over STEADY_S, % of one core),
  RSS, the last sweep slice's wall and CPU time (`last_sweep_ms`, `last_sweep_cpu_ms`); at the
  top, `resync` (every flow proved again) from the CLI.
- throughout: fast-path packets passed because the heartbeat was stale, and ring events lost.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import flows
from common import BENCH, in_netns, load, log, proc_cpu_seconds, proc_rss_mb, summary
from fw_ebpf import libbpf, maps
from lab import CLIENT4, CLIENT6, GATEWAY4, GATEWAY6, Lab
from observe import PinnedTables

FLOWS = BENCH / "flows.py"
LEVELS = tuple(int(x) for x in os.environ.get("EBPFW_CONTROL_LEVELS",
                                              "1000,10000,64000").split(","))
RUNS = int(os.environ.get("EBPFW_CONTROL_RUNS", "3"))
PACED_RATE = 6000
STEADY_S = 5.0
CATCH_UP_TIMEOUT_S = 300.0
STALL_S = 30.0
HELPER_PORT = 10080     # fw4's ruleset: ct helper set "amanda"
DECIDED = tuple(names[0] for names in maps.TABLES.values())
_STATE = maps.Flow.state.offset
DAEMON_ARGS = ("--log-level", "info", "--sweep-interval", "1", "--heartbeat-timeout", "5",
               "--idle-timeout", "3600", "--flows-max", "262144")


def _status(lab: Lab) -> dict[str, Any]:
    status = lab.ctl("status", "--json")
    assert isinstance(status, dict)
    return status


def _offloaded(status: dict[str, Any]) -> int:
    return int(status["flows"].get("forward", 0)) // 2


def _decided_entries(tables: PinnedTables) -> tuple[int, int]:
    """FORWARD entries in the pinned decided tables, and PROVING or FORWARD ones: read from
    outside, so a daemon busy with a burst (answering `status` late) does not hold the count
    back."""
    states = [value[_STATE] for name in DECIDED
              for _, value in tables.tables[name].lookup_batch(4096)]
    forward = states.count(maps.State.FORWARD)
    return forward, forward + states.count(maps.State.PROVING)


def _wait_offloaded(tables: PinnedTables, connections: int, t0: float) \
        -> tuple[float | None, float, int, float | None]:
    """Waits until `connections` are offloaded (both directions FORWARD), or nothing moved for
    STALL_S, or CATCH_UP_TIMEOUT_S. Returns the seconds from t0 until all were (None if they
    never were), until the last one that was, how many were, and the seconds until all were
    PROVING or offloaded (the daemon's part: the rest waits for the flows' next datagram)."""
    moved, last, last_at, decided_at = time.monotonic(), -1, 0.0, None
    while True:
        forward, decided = _decided_entries(tables)
        n = forward // 2
        now = time.monotonic()
        if decided_at is None and decided // 2 >= connections:
            decided_at = now - t0
        if n != last:
            moved, last, last_at = now, n, now - t0
        if n >= connections:
            return now - t0, last_at, n, decided_at
        if now - moved > STALL_S or now - t0 > CATCH_UP_TIMEOUT_S:
            return None, last_at, n, decided_at
        time.sleep(0.1)


def _answers(lab: Lab) -> bool:
    try:
        _status(lab)
        return True
    except RuntimeError:
        return False


def _steady(lab: Lab, pid: int) -> dict[str, float]:
    lab.wait_for(lambda: _answers(lab), what="daemon answering status", timeout=300, interval=1)
    time.sleep(1.5)                     # let the sweep after the last admission settle
    c0, t0 = proc_cpu_seconds(pid), time.monotonic()
    time.sleep(STEADY_S)
    c1, t1 = proc_cpu_seconds(pid), time.monotonic()
    status = _status(lab)
    return {"cpu_pct": 100 * (c1 - c0) / (t1 - t0), "rss_mb": proc_rss_mb(pid),
            "sweep_ms": float(status["last_sweep_ms"]),
            "sweep_cpu_ms": float(status.get("last_sweep_cpu_ms", "nan")),
            "offloaded": _offloaded(status)}


class Sender:
    """bench/flows.py in the client namespace, told what to open over its stdin."""

    def __init__(self, lab: Lab, sport: int) -> None:
        self.proc = lab.spawn(lab.client, sys.executable, str(FLOWS), "--sport", str(sport),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def open(self, count: int, rate: float) -> float:
        """Opens count flows at rate a second (0: at once); the seconds it took to send them."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"open {count} {rate}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().split()
        if len(line) != 3 or line[0] != "opened":
            raise RuntimeError(f"flows.py: {' '.join(line) or 'exited'}")
        return float(line[2])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _one_run(lab: Lab, run: int) -> dict[str, Any]:
    lab.sh(lab.router, "conntrack -F", check=False)
    daemon = lab.start_daemon(*DAEMON_ARGS, interfaces=("eth0", "eth1"), mode="xdp")
    out: dict[str, Any] = {"steady": {}, "rate": {}}
    sender = Sender(lab, 20000 + 10 * run)
    tables = PinnedTables(lab.pin_dir)
    try:
        lab.wait_for(lambda: _status(lab)["last_sweep_ms"] > 0, what="a first sweep")
        time.sleep(2.0)
        out["idle_rss_mb"] = proc_rss_mb(daemon.pid)
        sent = 0
        for level in LEVELS:
            new = level - sent
            burst = level == LEVELS[-1] and len(LEVELS) > 2
            rate = 0 if burst else PACED_RATE
            t0 = time.monotonic()
            send_s = sender.open(new, rate)
            took, last_at, done, decided_at = _wait_offloaded(tables,
                                                              level - left_to_stack(level), t0)
            lab.wait_for(lambda: _answers(lab), what="daemon answering status", timeout=300,
                         interval=1)
            status = _status(lab)
            out["rate"][level] = {"new": new, "offered_per_s": new / max(send_s, 1e-9),
                                  "send_s": send_s, "seconds": took, "last_at": last_at,
                                  "decided_s": decided_at,
                                  "offloaded": done, "not_offloaded": level - done,
                                  "per_s": (done - sent) / max(last_at, 1e-9), "burst": burst,
                                  "admission_ms": status["admission_ms"],
                                  "proving_ms": status.get("proving_ms")}
            log(f"  control run {run + 1}: {new} new flows "
                f"({'at once' if burst else f'at {rate}/s'}): {out['rate'][level]}")
            sent = level
            out["steady"][level] = _steady(lab, daemon.pid)
            log(f"  control run {run + 1}: steady at {level}: {out['steady'][level]}")
        t = time.monotonic()
        try:
            lab.ctl("resync")
            out["resync_s"] = time.monotonic() - t
        except RuntimeError:        # the CLI gives up after 10 s
            out["resync_s"] = None
        lab.wait_for(lambda: _answers(lab), what="daemon answering", timeout=300, interval=1)
        out["stats"] = lab.stats()
        status = _status(lab)
        out["heartbeat"] = status["heartbeat"]
        out["sweep_recovered"] = status.get("sweep_recovered")
    finally:
        tables.close()
        sender.close()
        lab.stop_daemon()
    return out


def _static_neighbours(lab: Lab) -> None:
    """A neighbour going REACHABLE -> STALE starts a generation; with static neighbours the
    lab reaches a steady state."""
    for ns, dev, router_dev, addrs in ((lab.client, "eth0", "br-lan", (CLIENT4, CLIENT6)),
                                       (lab.server, "eth1", "eth1", (GATEWAY4, GATEWAY6))):
        mac = json.loads(lab.sh(ns, f"ip -j link show dev {dev}"))[0]["address"]
        for addr in addrs:
            lab.sh(lab.router, f"ip neigh replace {addr} lladdr {mac} dev {router_dev} "
                               "nud permanent")


def _q(r: dict[str, Any], level: int, what: str, q: str) -> float | None:
    figures = r["rate"].get(level, {}).get(what) or {}
    return figures.get(q)


def run(runs: int = RUNS) -> dict[str, Any]:
    results = []
    with Lab() as lab:
        lab.sh(lab.router, "sysctl -qw net.netfilter.nf_conntrack_udp_timeout=3600 "
                           "net.netfilter.nf_conntrack_udp_timeout_stream=3600")
        _static_neighbours(lab)
        reflector = load("reflect")
        with in_netns(lab.server):
            link = libbpf.xdp_attach(reflector.program("reflect"), lab.ifindex(lab.server, "eth1"),
                                     "native")
        try:
            for r in range(runs):
                log(f"control path run {r + 1}/{runs}")
                results.append(_one_run(lab, r))
        finally:
            link.detach()
            reflector.close()
    return summarize(results, LEVELS)


def left_to_stack(level: int) -> int:
    """Of flows 0 .. level - 1, those fw4 gives a conntrack helper (UDP 10080: amanda), which
    ebpfw leaves to the stack by design."""
    return sum(1 for i in range(level) if flows.PORT_MIN + i % flows.PER_PORT == HELPER_PORT)


def summarize(results: list[dict[str, Any]], levels: tuple[int, ...]) -> dict[str, Any]:
    """The figures of the runs (also from a control.json's "runs": its keys are strings)."""
    for r in results:
        r["rate"] = {int(k): v for k, v in r["rate"].items()}
        r["steady"] = {int(k): v for k, v in r["steady"].items()}
        for lv, rate in r["rate"].items():
            # every connection offloaded but those left to the stack: when the last one was
            rate["seconds"] = rate["last_at"] if rate["not_offloaded"] <= left_to_stack(lv) \
                else None
    paced = [lv for lv in levels if not (lv == levels[-1] and len(levels) > 2)]
    top = levels[-1]
    out: dict[str, Any] = {
        "levels": list(levels),
        "left_to_stack": {str(lv): left_to_stack(lv) for lv in levels},
        "paced_rate": PACED_RATE,
        "idle_rss_mb": summary([r["idle_rss_mb"] for r in results]),
        # the sustained admission figures: the paced level that ends at 10k (or the last one)
        "admission_ms": {q: summary([v for r in results
                                     if (v := _q(r, paced[-1], "admission_ms", q)) is not None])
                         for q in ("p50", "p99", "max")},
        "proving_ms": {q: summary([v for r in results
                                   if (v := _q(r, paced[-1], "proving_ms", q)) is not None])
                       for q in ("p50", "p99", "max")},
        "rate": {str(lv): {m: summary([r["rate"][lv][m] for r in results
                                       if r["rate"][lv].get(m) is not None])
                           for m in ("offered_per_s", "per_s", "seconds", "last_at",
                                     "not_offloaded", "decided_s")}
                 for lv in levels},
        "burst": {"level": top, "new": top - (levels[-2] if len(levels) > 1 else 0),
                  "admitted_in_s": summary([r["rate"][top]["seconds"] for r in results
                                            if r["rate"][top]["seconds"] is not None]),
                  "decided_in_s": summary([r["rate"][top]["decided_s"] for r in results
                                           if r["rate"][top].get("decided_s") is not None]),
                  "not_admitted": [r["rate"][top]["not_offloaded"] for r in results]},
        "steady": {str(lv): {m: summary([r["steady"][lv][m] for r in results])
                             for m in ("cpu_pct", "rss_mb", "sweep_ms", "sweep_cpu_ms",
                                       "offloaded")}
                   for lv in levels},
        "resync_s": summary([r["resync_s"] for r in results if r["resync_s"] is not None]),
        "kb_per_connection": {str(lv): summary([
            (r["steady"][lv]["rss_mb"] - r["idle_rss_mb"]) * 1024 / r["steady"][lv]["offloaded"]
            for r in results if r["steady"][lv]["offloaded"]]) for lv in levels},
        "sustained_per_s": summary([r["rate"][paced[-1]]["per_s"] for r in results]),
        "heartbeat_passes": summary([r["stats"].get("pass_heartbeat", 0) for r in results]),
        "sweep_recovered": [r.get("sweep_recovered") for r in results],
        "events_lost": [r["stats"].get("event_lost", 0) for r in results],
        "events_shed": [r["stats"].get("event_shed", 0) for r in results],
        "runs": results,
    }
    return out
