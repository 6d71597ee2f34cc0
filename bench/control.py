# SPDX-License-Identifier: GPL-2.0-only
"""Control path: admission latency, sustained admission rate, daemon CPU / RSS / sweep time
at 1k, 10k and 100k offloaded connections.

Real flows, not synthetic entries: bench/flows.py in the client namespace sends one UDP
datagram per new flow through the lab router (fw4 ruleset, masquerade, conntrack); the daemon
(XDP mode) admits each from the fast path's event and writes both directions. Conntrack UDP
timeouts are raised in the router namespace and the daemon's idle timeout to an hour, so the
offloaded set stays put while it is measured.

- admission: 1000 flows paced at 200/s; the daemon's own figures (`status` "admission_ms":
  first packet seen by the fast path -> FORWARD written).
- admission rate: the next 9k and then 90k flows sent at once; offloaded connections per
  second while the daemon catches up (FORWARD entries / 2, sampled every 0.25 s).
- steady state at 1k / 10k / 100k: daemon CPU (utime+stime over 5 s, % of one core), RSS,
  `last_sweep_ms`.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any

from common import BENCH, log, proc_cpu_seconds, proc_rss_mb, summary
from lab import CLIENT4, CLIENT6, GATEWAY4, GATEWAY6, Lab

FLOWS = BENCH / "flows.py"
LEVELS = (1_000, 10_000, 100_000)
PACED_RATE = 200
STEADY_S = 5.0
CATCH_UP_TIMEOUT_S = 240.0
STALL_S = 5.0
DAEMON_ARGS = ("--log-level", "info", "--sweep-interval", "1", "--heartbeat-timeout", "5",
               "--idle-timeout", "3600", "--flows-max", "262144")


def _forward_count(lab: Lab) -> tuple[int, dict[str, Any]]:
    status = lab.ctl("status", "--json")
    assert isinstance(status, dict)
    return int(status["flows"].get("forward", 0)), status


def _send(lab: Lab, start: int, count: int, rate: float, sport: int) -> None:
    lab.sh(lab.client, f"{sys.executable} {FLOWS} --start {start} --count {count} "
                       f"--rate {rate} --sport {sport}", timeout=600)


def _wait_offloaded(lab: Lab, connections: int) -> list[tuple[float, int]]:
    """Waits until `connections` are offloaded (2 entries each), or nothing moved for
    STALL_S (a few flows can stay unpaired), or CATCH_UP_TIMEOUT_S; returns the samples
    (seconds, connections)."""
    t0, samples = time.monotonic(), []
    moved = t0
    while True:
        try:
            n = _forward_count(lab)[0] // 2
        except RuntimeError:            # a busy daemon answers `status` late (10 s limit)
            if time.monotonic() - t0 > CATCH_UP_TIMEOUT_S:
                return samples
            moved = time.monotonic()
            continue
        now = time.monotonic()
        if not samples or n != samples[-1][1]:
            moved = now
        samples.append((now - t0, n))
        if n >= connections or now - moved > STALL_S or now - t0 > CATCH_UP_TIMEOUT_S:
            return samples
        time.sleep(0.25)


def _steady(lab: Lab, pid: int, revalidate: bool) -> dict[str, float]:
    lab.wait_for(lambda: _answers(lab), what="daemon answering status", timeout=300, interval=1)
    time.sleep(1.5)                     # let the sweep after the last admission settle
    c0, t0 = proc_cpu_seconds(pid), time.monotonic()
    time.sleep(STEADY_S)
    c1, t1 = proc_cpu_seconds(pid), time.monotonic()
    lab.wait_for(lambda: _answers(lab), what="daemon answering status", timeout=300, interval=1)
    n, status = _forward_count(lab)
    out = {"cpu_pct": 100 * (c1 - c0) / (t1 - t0), "rss_mb": proc_rss_mb(pid),
           "sweep_ms": float(status["last_sweep_ms"]), "offloaded": n // 2}
    if not revalidate:
        return out
    # what one route / neighbour / link event costs: resync re-resolves every flow the same way
    t = time.monotonic()
    try:
        lab.ctl("resync")
        out["revalidate_s"] = time.monotonic() - t
    except RuntimeError:        # the CLI gives up after 10 s
        out["revalidate_s"] = float("nan")
        lab.wait_for(lambda: _answers(lab), what="daemon back after resync", timeout=600,
                     interval=1)
    return out


def _answers(lab: Lab) -> bool:
    try:
        _forward_count(lab)
        return True
    except RuntimeError:
        return False


def _one_run(lab: Lab, run: int) -> dict[str, Any]:
    lab.sh(lab.router, "conntrack -F", check=False)
    daemon = lab.start_daemon(*DAEMON_ARGS, interfaces=("eth0", "eth1"), mode="xdp")
    sport = 30000 + run
    out: dict[str, Any] = {"steady": {}, "rate": {}}
    try:
        _send(lab, 0, LEVELS[0], PACED_RATE, sport)
        _wait_offloaded(lab, LEVELS[0])
        _, status = _forward_count(lab)
        out["admission_ms"] = status["admission_ms"]
        log(f"  control run {run + 1}: admission {out['admission_ms']}")
        out["steady"][LEVELS[0]] = _steady(lab, daemon.pid, revalidate=True)
        sent = LEVELS[0]
        # admission runs at a few hundred connections/s: the largest level only in the first run
        for level in LEVELS[1:] if run == 0 else LEVELS[1:-1]:
            t_send = time.monotonic()
            _send(lab, sent, level - sent, 0, sport)
            samples = _wait_offloaded(lab, level)
            if samples:
                # the rate while the daemon caught up: up to the last sample that still moved
                last = next(i for i, s in enumerate(samples) if s[1] == samples[-1][1])
                took = time.monotonic() - t_send - (samples[-1][0] - samples[last][0])
                done = samples[-1][1] - sent
                out["rate"][level] = {"new": level - sent, "offloaded": done, "seconds": took,
                                      "per_s": done / max(took, 1e-9)}
            else:   # the daemon did not answer `status` once while it caught up
                took = time.monotonic() - t_send
                out["rate"][level] = {"new": level - sent, "offloaded": None, "seconds": took,
                                      "per_s": None, "note": f"no status answer for {took:.0f} s"}
            log(f"  control run {run + 1}: {level - sent} new flows: {out['rate'][level]}")
            sent = level
            out["steady"][level] = _steady(lab, daemon.pid, revalidate=False)
            log(f"  control run {run + 1}: steady at {level}: {out['steady'][level]}")
        lab.wait_for(lambda: _answers(lab), what="daemon answering", timeout=300, interval=1)
        out["stats"] = lab.stats()
    finally:
        lab.stop_daemon()
    return out


def _static_neighbours(lab: Lab) -> None:
    """Every rtnetlink event (a neighbour going REACHABLE -> STALE included) makes the daemon
    re-resolve every flow; with dynamic neighbours the lab never reaches a steady state (the
    cost of one such pass is measured separately, as `revalidate_s`)."""
    for ns, dev, router_dev, addrs in ((lab.client, "eth0", "br-lan", (CLIENT4, CLIENT6)),
                                       (lab.server, "eth1", "eth1", (GATEWAY4, GATEWAY6))):
        mac = json.loads(lab.sh(ns, f"ip -j link show dev {dev}"))[0]["address"]
        for addr in addrs:
            lab.sh(lab.router, f"ip neigh replace {addr} lladdr {mac} dev {router_dev} "
                               "nud permanent")


def run(runs: int = 3) -> dict[str, Any]:
    results = []
    with Lab() as lab:
        lab.sh(lab.router, "sysctl -qw net.netfilter.nf_conntrack_udp_timeout=3600 "
                           "net.netfilter.nf_conntrack_udp_timeout_stream=3600")
        _static_neighbours(lab)
        for r in range(runs):
            log(f"control path run {r + 1}/{runs}")
            results.append(_one_run(lab, r))
            log(f"  admission {results[-1]['admission_ms']}, steady 1k "
                f"{results[-1]['steady'][LEVELS[0]]}")
    out: dict[str, Any] = {
        "admission_ms": {q: summary([r["admission_ms"].get(q, 0) for r in results])
                         for q in ("p50", "p99", "max")},
        "admission_count": [r["admission_ms"].get("count", 0) for r in results],
        "admission_rate_per_s": {str(level): summary([r["rate"][level]["per_s"] for r in results
                                                      if r["rate"].get(level, {}).get("per_s")])
                                 for level in LEVELS[1:]},
        "steady": {str(level): {m: summary([r["steady"][level][m] for r in results
                                            if m in r["steady"].get(level, {})])
                                for m in ("cpu_pct", "rss_mb", "sweep_ms", "offloaded",
                                          "revalidate_s")}
                   for level in LEVELS},
        "paced_rate": PACED_RATE,
        "runs": results,
    }
    return out
