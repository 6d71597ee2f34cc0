# SPDX-License-Identifier: GPL-2.0-only
"""Soak: months of a router's life compressed into rounds, with nothing restarted.

Each round, on the lab router (tests/lab.py, fw4 ruleset, the daemon in XDP mode):
- bench/churn.py in the client opens and closes CONNECTIONS connections (TCP and UDP, IPv4
  and IPv6, 32 at a time; most short, one in ten long enough to be offloaded; TCP ends with a
  FIN or a RST) to the echo server;
- meanwhile, one after another until the churn ends: host routes for the server addresses
  added and removed (same gateway, so connections keep working), an unrelated route added and
  removed, the default route replaced by itself, the LAN neighbours deleted (re-resolved by
  the next packet), the gateway's neighbour entry set STALE, and fw4's ruleset loaded again
  with `nft -f` (what `fw4 reload` does);
- then it waits until every flow is gone: the four flow tables and the daemon's own book
  (`ebpfw status`) empty and conntrack empty (conntrack and idle timeouts are short in the
  router namespace);
- and records, from outside (bench/observe.py): RSS, open fds, threads, unread bytes and drops
  on the daemon's netlink sockets, the flow tables' entries, the fast path's event counters.

Per metric, the least-squares slope over the rounds after WARMUP_ROUNDS (the first round
grows caches and allocator arenas once), its 95 % confidence interval (Student t), per round
and per 1,000 connections. Verdict: "flat" when the interval includes 0 (or every value is
the same), "flat within bound" when its upper end is below the metric's bound, else "grows".

EBPFW_SOAK_ROUNDS and EBPFW_SOAK_CONNECTIONS set the size (`make bench`: 8 x 2,000;
`make soak`: more).
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

from common import BENCH, log, proc_cpu_seconds
from fw_ebpf import maps
from lab import CLIENT4, CLIENT6, GATEWAY4, GATEWAY6, SERVER4, SERVER6, Lab, ruleset_path
from observe import Netlink, PinnedTables, netlink, open_fds, proc_status

CHURN = BENCH / "churn.py"
ROUNDS = int(os.environ.get("EBPFW_SOAK_ROUNDS", "8"))
CONNECTIONS = int(os.environ.get("EBPFW_SOAK_CONNECTIONS", "2000"))
CONCURRENCY = 32
WARMUP_ROUNDS = 1
EVENT_GAP_S = 0.1        # between two routing / firewall events while the churn runs
IDLE_TIMEOUT_S = 180.0   # for every flow to be gone after a round
DAEMON_ARGS = ("--log-level", "info", "--sweep-interval", "1", "--heartbeat-timeout", "5",
               "--idle-timeout", "3")
# short conntrack timeouts in the router namespace, so a round's connections are gone soon
CT_TIMEOUTS = {"tcp_timeout_established": 30, "tcp_timeout_time_wait": 2,
               "tcp_timeout_close": 2, "tcp_timeout_close_wait": 2, "tcp_timeout_fin_wait": 2,
               "tcp_timeout_last_ack": 2, "tcp_timeout_syn_sent": 5, "tcp_timeout_syn_recv": 5,
               "udp_timeout": 3, "udp_timeout_stream": 5}
# conntrack's TCP states of a closed connection, and the timeout each has
CLOSED_STATES = {state: CT_TIMEOUTS[f"tcp_timeout_{state.lower()}"]
                 for state in ("FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE")}
NETLINK_SETTLE_S = 5.0
FD_LOOKS = 10
# what a metric may grow by per 1,000 connections and still be called flat (see the report)
BOUNDS_PER_1K = {"rss_kb": 4.0}
METRICS = ("rss_kb", "fds", "threads", "netlink_unread_bytes", "netlink_drops",
           "table_entries", "book_entries")


def _events(lab: Lab) -> list[tuple[str, Callable[[], None]]]:
    """The routing and firewall events of a round, in the order they repeat."""
    r = lab.router
    gw_mac = json.loads(lab.sh(lab.server, "ip -j link show dev eth1"))[0]["address"]
    return [
        ("route", lambda: lab.sh(r, f"ip route add {SERVER4}/32 via {GATEWAY4} dev eth1")),
        ("route", lambda: lab.sh(r, f"ip -6 route add {SERVER6}/128 via {GATEWAY6} dev eth1")),
        ("neigh", lambda: lab.sh(r, f"ip neigh del {CLIENT4} dev br-lan", check=False)),
        ("route", lambda: lab.sh(r, f"ip route del {SERVER4}/32")),
        ("route", lambda: lab.sh(r, f"ip -6 route del {SERVER6}/128")),
        ("reload", lambda: lab.sh(r, f"nft -f {ruleset_path(lab.case)}")),
        ("neigh", lambda: lab.sh(r, f"ip -6 neigh del {CLIENT6} dev br-lan", check=False)),
        ("route", lambda: lab.sh(r, f"ip route add 10.99.0.0/16 via {GATEWAY4}")),
        ("neigh", lambda: lab.sh(r, f"ip neigh replace {GATEWAY4} lladdr {gw_mac} dev eth1 "
                                    "nud stale")),
        ("route", lambda: lab.sh(r, "ip route del 10.99.0.0/16")),
        ("route", lambda: lab.sh(r, f"ip route replace default via {GATEWAY4}")),
    ]


def _conntrack(lab: Lab) -> list[list[str]]:
    """TCP and UDP entries, split in fields (the router's own IGMP reports and the lab's pings
    do not count)."""
    out = lab.sh(lab.router, "conntrack -L", check=False)
    return [f for line in out.splitlines() if (f := line.split()) and f[0] in ("tcp", "udp")]


def _lingering(entries: list[list[str]]) -> set[str]:
    """TCP entries of closed connections with more time left than their state allows: a
    timeout written after the close (the daemon's conntrack refresh racing the FIN or RST)."""
    out = set()
    for f in entries:
        if f[0] == "tcp" and f[3] in CLOSED_STATES and int(f[2]) > CLOSED_STATES[f[3]] + 1:
            out.add(" ".join(x for x in f[4:8]))
    return out


def _book_entries(lab: Lab) -> int:
    return sum(lab.status()["flows"].values())


def _wait_idle(lab: Lab, tables: PinnedTables) -> dict[str, Any]:
    """Until no flow is left anywhere: the flow tables, the daemon's book, conntrack."""
    t0 = time.monotonic()
    lingering: set[str] = set()
    while True:
        entries = _conntrack(lab)
        lingering |= _lingering(entries)
        idle = sum(tables.counts()[n] for n in tables.tables) == 0 \
            and _book_entries(lab) == 0 and not entries
        if idle or time.monotonic() - t0 > IDLE_TIMEOUT_S:
            return {"idle": idle, "idle_wait_s": round(time.monotonic() - t0, 1),
                    "ct_lingering": len(lingering)}
        time.sleep(0.5)


def _netlink_backlog(pid: int) -> Netlink:
    """The daemon's netlink sockets once what was in flight is read: the smallest backlog over
    NETLINK_SETTLE_S (a leak of unread messages never goes away; a burst of late events does)."""
    best = netlink(pid)
    deadline = time.monotonic() + NETLINK_SETTLE_S
    while best.unread_bytes and time.monotonic() < deadline:
        time.sleep(0.1)
        now = netlink(pid)
        if now.unread_bytes < best.unread_bytes:
            best = now
    return best


def _fds(pid: int) -> int:
    """Open fds, the fewest of a few looks: the sweep opens files and sockets for a moment."""
    fewest = open_fds(pid)
    for _ in range(FD_LOOKS - 1):
        time.sleep(0.1)
        fewest = min(fewest, open_fds(pid))
    return fewest


def _sample(lab: Lab, pid: int, tables: PinnedTables) -> dict[str, Any]:
    st = proc_status(pid)
    nl = _netlink_backlog(pid)
    counts = tables.counts()
    counters = tables.counters()
    return {"rss_kb": st["VmRSS"], "hwm_kb": st["VmHWM"], "fds": _fds(pid),
            "threads": st["Threads"], "netlink_sockets": nl.sockets,
            "netlink_unread_bytes": nl.unread_bytes, "netlink_drops": nl.drops,
            "table_entries": sum(counts[n] for n in tables.tables), "tables": counts,
            "book_entries": _book_entries(lab), "cpu_s": proc_cpu_seconds(pid),
            "counters": {k: counters[k] for k in ("rx", "forward", "pass", "event_lost",
                                                  "event_shed", "pass_miss")}}


def _round(lab: Lab, pid: int, tables: PinnedTables, n: int,
           events: list[tuple[str, Callable[[], None]]]) -> dict[str, Any]:
    t0 = time.monotonic()
    churn = lab.spawn(lab.client, sys.executable, str(CHURN), "--connections", str(CONNECTIONS),
                      "--concurrency", str(CONCURRENCY), "--seed", str(n),
                      "--hosts", f"{SERVER4},{SERVER6}", stdout=subprocess.PIPE, text=True)
    done: dict[str, int] = {}
    i = 0
    while churn.poll() is None:
        kind, event = events[i % len(events)]
        event()
        done[kind] = done.get(kind, 0) + 1
        i += 1
        time.sleep(EVENT_GAP_S)    # spreads the events over the round; nothing waits on it
    # leave the routes as the lab has them
    for cmd in (f"ip route del {SERVER4}/32", f"ip -6 route del {SERVER6}/128",
                "ip route del 10.99.0.0/16"):
        lab.sh(lab.router, cmd, check=False)
    out, _ = churn.communicate()
    lab.procs.remove(churn)
    churned = time.monotonic() - t0
    idle = _wait_idle(lab, tables)
    sample = _sample(lab, pid, tables)
    sample.update(round=n, churn=json.loads(out), events=done, churn_s=round(churned, 1), **idle)
    return sample


def t_quantile(p: float, dof: int) -> float:
    """The p quantile of Student's t distribution (bisection over its CDF, integrated with
    Simpson's rule: no scipy)."""
    c = math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)) / math.sqrt(dof * math.pi)

    def cdf(t: float) -> float:
        steps = 2000
        h = t / steps
        pdf = lambda x: c * (1 + x * x / dof) ** (-(dof + 1) / 2)   # noqa: E731
        s = pdf(0) + pdf(t) + sum((4 if k % 2 else 2) * pdf(k * h) for k in range(1, steps))
        return 0.5 + s * h / 3

    lo, hi = 0.0, 1000.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def trend(ys: list[float], per_round_connections: int, bound_per_1k: float = 0.0) \
        -> dict[str, Any]:
    """Least-squares slope of ys over the round index, its 95 % interval and the verdict."""
    n = len(ys)
    xs = list(range(n))
    out: dict[str, Any] = {"n": n, "first": ys[0] if ys else None, "last": ys[-1] if ys else None}
    if n < 3:
        return {**out, "verdict": "too few rounds"}
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    resid = [y - (my + slope * (x - mx)) for x, y in zip(xs, ys)]
    se = math.sqrt(sum(r * r for r in resid) / (n - 2) / sxx)
    half = t_quantile(0.975, n - 2) * se
    k = 1000 / per_round_connections
    lo, hi = slope - half, slope + half
    if max(ys) == min(ys):
        verdict = "constant"
    elif lo <= 0 <= hi:
        verdict = "flat within noise"
    elif hi * k < bound_per_1k:
        verdict = "flat within bound"
    else:
        verdict = "grows"
    return {**out, "slope_per_round": slope, "ci95_per_round": [lo, hi],
            "slope_per_1k": slope * k, "ci95_per_1k": [lo * k, hi * k],
            "bound_per_1k": bound_per_1k, "verdict": verdict}


def run() -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    start = time.monotonic()
    with Lab() as lab:
        lab.sh(lab.router, "sysctl -qw " + " ".join(f"net.netfilter.nf_conntrack_{k}={v}"
                                                     for k, v in CT_TIMEOUTS.items()))
        lab.start_echo_server(lab.server)
        daemon = lab.start_daemon(*DAEMON_ARGS, interfaces=("eth0", "eth1", "eth2"), mode="xdp")
        events = _events(lab)
        with PinnedTables(lab.pin_dir) as tables:
            idle = _wait_idle(lab, tables)["idle"]
            base = _sample(lab, daemon.pid, tables)
            log(f"soak: {ROUNDS} rounds x {CONNECTIONS} connections; idle daemon "
                f"{base['rss_kb'] / 1024:.1f} MB, {base['fds']} fds")
            for n in range(ROUNDS):
                rounds.append(_round(lab, daemon.pid, tables, n, events))
                r = rounds[-1]
                log(f"  round {n + 1}/{ROUNDS}: {r['churn_s']} s churn ({r['churn']['errors']}), "
                    f"idle after {r['idle_wait_s']} s: RSS {r['rss_kb']} kB, {r['fds']} fds, "
                    f"{r['threads']} threads, netlink {r['netlink_unread_bytes']} B unread, "
                    f"{r['table_entries']} entries")
                if lab.daemon is None or lab.daemon.poll() is not None:
                    raise RuntimeError("daemon exited during the soak:\n"
                                       + lab.daemon_log.read_text()[-3000:])
            capacity = tables.capacity()
        log_tail = [line for line in lab.daemon_log.read_text().splitlines()
                    if " ERROR " in line or "Traceback" in line][-20:]
    steady = rounds[WARMUP_ROUNDS:]
    trends = {m: trend([float(r[m]) for r in steady], CONNECTIONS, BOUNDS_PER_1K.get(m, 0.0))
              for m in METRICS}
    totals = {"connections": CONNECTIONS * ROUNDS,
              "events": {k: sum(r["events"].get(k, 0) for r in rounds)
                         for k in ("route", "neigh", "reload")},
              "churn_errors": sum(sum(r["churn"]["errors"].values()) for r in rounds),
              "not_idle_rounds": sum(not r["idle"] for r in rounds),
              "ct_lingering": sum(r["ct_lingering"] for r in rounds)}
    return {"rounds_n": ROUNDS, "connections_per_round": CONNECTIONS, "concurrency": CONCURRENCY,
            "warmup_rounds": WARMUP_ROUNDS, "baseline": base, "baseline_idle": idle,
            "rounds": rounds, "trends": trends, "totals": totals, "capacity": capacity,
            "daemon_errors": log_tail, "load": _load(), "wall_s": round(time.monotonic() - start),
            "ct_timeouts": CT_TIMEOUTS, "daemon_args": list(DAEMON_ARGS),
            "event_rate": maps.EVENT_RATE}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
