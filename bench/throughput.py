# SPDX-License-Identifier: GPL-2.0-only
"""TCP throughput through the lab router (iperf3, 1 and 4 streams, IPv4 with masquerade):
kernel forwarding with the fw4 ruleset vs each ebpfw mode, every mode in every round.

The endpoints run with tx checksum offload off (lab.py: XDP cannot see partial checksums), so
they send MTU-sized segments, as hosts behind a real router do. No CPU pinning: this is the
user-facing figure, everything (both endpoints, the router, the daemon) shares the 2 CPUs.
"""
from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from common import log, summary
from lab import SERVER4, Lab

MODES = ("kernel", "xdp", "xdp-generic", "tc")
STREAMS = (1, 4)
SECONDS, OMIT = 4, 1
DAEMON_ARGS = ("--log-level", "info", "--sweep-interval", "1", "--heartbeat-timeout", "5")


def _iperf(lab: Lab, streams: int) -> tuple[float, int]:
    out = lab.sh(lab.client, f"iperf3 -c {SERVER4} -t {SECONDS} -O {OMIT} -P {streams} -J",
                 timeout=SECONDS + OMIT + 30)
    end = json.loads(out)["end"]
    return end["sum_received"]["bits_per_second"], int(end["sum_sent"].get("retransmits", 0))


def _round(lab: Lab) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for mode in MODES:
        if mode != "kernel":
            lab.start_daemon(*DAEMON_ARGS, interfaces=("eth0", "eth1"), mode=mode)
        try:
            for streams in STREAMS:
                before = lab.stats()["forward"] if lab.daemon is not None else 0
                bps, retr = _iperf(lab, streams)
                fwd = (lab.stats()["forward"] - before) if lab.daemon is not None else 0
                out[f"{mode}/{streams}"] = {"gbps": bps / 1e9, "retransmits": retr,
                                            "fast_path_packets": fwd}
                log(f"  iperf3 {mode:11} {streams} stream(s): {bps / 1e9:6.2f} Gbit/s, "
                    f"{retr} retransmits, {fwd} packets by the fast path")
        finally:
            if lab.daemon is not None:
                lab.stop_daemon()
    return out


def run(rounds: int = 3) -> dict[str, Any]:
    results = []
    with Lab() as lab:
        lab.spawn(lab.server, "iperf3", "-s", stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        for r in range(rounds):
            log(f"throughput round {r + 1}/{rounds}")
            results.append(_round(lab))
    out: dict[str, Any] = {"seconds": SECONDS, "omit": OMIT}
    for streams in STREAMS:
        for mode in MODES:
            key = f"{mode}/{streams}"
            gbps = [r[key]["gbps"] for r in results]
            kernel = [r[f"kernel/{streams}"]["gbps"] for r in results]
            out[key] = {"gbps": summary(gbps),
                        "x_kernel": summary([g / k for g, k in zip(gbps, kernel)]),
                        "retransmits": summary([r[key]["retransmits"] for r in results]),
                        "fast_path_packets": summary([r[key]["fast_path_packets"] for r in results])}
    return out
