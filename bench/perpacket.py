# SPDX-License-Identifier: GPL-2.0-only
"""Per-packet cost of the XDP fast path with BPF_PROG_TEST_RUN (repeat, duration_ns).

Every case runs in every round, so ratios come from one round. Programs that leave the frame
as it was (XDP_PASS floor, minimal redirect, PENDING, DROP) are timed directly. A FORWARD hit
rewrites the frame, and test runs with repeat reuse one buffer: from the second run on the
program would meet its own output (NAT undone or missed, TTL one lower each time). So hits run
behind bench/bpf/harness.c, which restores the frame and tail-calls ebpfw_xdp; the harness'
own cost (measured by tail-calling the XDP_PASS program) is subtracted:

    hit = harness(ebpfw) - harness(pass) + direct(pass)

The ebpfw counters prove the path: every run of a hit case must count one FORWARD.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any

from common import EBPFW_OBJECT, ROUTER_CPU, load, log, summary
from fastpath import L2_IN, L2_OUT, L2, XDP_DROP, XDP_PASS, XDP_REDIRECT, flow_tuple, frame, \
    load_fastpath, nat_tuple
from fw_ebpf import maps
from fw_ebpf.libbpf import BpfProgram

LO = 1                      # test runs without a ctx see the loopback device
REPEAT = 2_000_000
PAYLOAD = b"x" * 64         # frames >= 96 bytes: the harness restores the first 96
HEARTBEAT_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class Case:
    name: str
    label: str
    family: int
    l2_out: L2
    state: str          # forward / pending / drop


CASES = (
    Case("hit_v4_nat", "FORWARD hit, IPv4 TCP, SNAT", 4, L2_OUT["untagged"], "forward"),
    Case("hit_v6_nat", "FORWARD hit, IPv6 TCP, SNAT", 6, L2_OUT["untagged"], "forward"),
    Case("hit_v4_nat_vlan", "FORWARD hit, IPv4 TCP, SNAT + VLAN push", 4, L2_OUT["vlan"],
         "forward"),
    Case("pending", "miss (PENDING entry)", 4, L2_OUT["untagged"], "pending"),
    Case("drop", "DROP entry", 4, L2_OUT["untagged"], "drop"),
)
EXPECT = {"forward": XDP_REDIRECT, "pending": XDP_PASS, "drop": XDP_DROP}
COUNTER = {"forward": maps.Counter.FORWARD, "pending": maps.Counter.PASS_PENDING,
           "drop": maps.Counter.DROP}


class Harness:
    def __init__(self) -> None:
        self.obj = load("harness")
        self.prog = self.obj.program("harness")
        self.tmpl = self.obj.map("harness_tmpl")
        self.target = self.obj.map("harness_target")

    def run(self, target: BpfProgram, data: bytes, repeat: int) -> tuple[int, int]:
        """(ns per run, return value) of target behind the harness."""
        self.tmpl.update(bytes(4), struct.pack("=I", len(data)) + data[:96])
        self.target.update(bytes(4), struct.pack("=I", target.fd))
        res = self.prog.test_run(data, repeat=repeat)
        return res.duration_ns, res.retval


def _key_and_value(case: Case) -> tuple[bytes, bytes, bytes]:
    """(frame, flow key, flow value) of a case, on the loopback device."""
    t = flow_tuple(case.family, "tcp")
    data = frame(L2_IN["untagged"], t, payload=PAYLOAD)
    key = maps.encode_key(LO, t)
    if case.state == "forward":
        value = maps.encode_forward(t, nat_tuple(t, "snat"), LO, 1500, case.l2_out.out())
    elif case.state == "drop":
        value = maps.encode_verdict(maps.State.DROP, expires_ns=(1 << 63))
    else:
        value = maps.encode_verdict(maps.State.PENDING)
    return data, key, value


def _pair_trick(fp: Any, prog: BpfProgram) -> dict[str, Any]:
    """The A->B / B->A pair with direct repeat: shows why hits need the harness (TTL)."""
    fp.reset()
    t = flow_tuple(4, "tcp")
    post = nat_tuple(t, "snat")
    fp.flows.update(maps.encode_key(LO, t), maps.encode_forward(t, post, LO, 1500,
                                                                  L2_OUT["untagged"].out()))
    fp.flows.update(maps.encode_key(LO, post), maps.encode_forward(post, t, LO, 1500,
                                                                     L2_OUT["untagged"].out()))
    repeat = 100_000
    before = fp.stats()
    res = prog.test_run(frame(L2_IN["untagged"], t, payload=PAYLOAD), repeat=repeat)
    after = fp.stats()
    fwd = after[maps.Counter.FORWARD] - before[maps.Counter.FORWARD]
    ttl = after[maps.Counter.PASS_TTL] - before[maps.Counter.PASS_TTL]
    return {"repeat": repeat, "forwarded": fwd, "passed_ttl": ttl, "ns": res.duration_ns}


def run(rounds: int = 5) -> dict[str, Any]:
    os.sched_setaffinity(0, {ROUTER_CPU})
    fp = load_fastpath(EBPFW_OBJECT, HEARTBEAT_TIMEOUT_S)
    ebpfw = fp.obj.program("ebpfw_xdp")
    pass_obj, fwd_obj = load("pass"), load("fwd")
    xdp_pass, fwd = pass_obj.program("xdp_pass"), fwd_obj.program("fwd")
    fwd_obj.map("fwd_tx").update(bytes(4), struct.pack("=I", LO))
    fwd_obj.map("fwd_l2").update(bytes(4), bytes.fromhex("020000000102020000000101"))
    harness = Harness()
    base = frame(L2_IN["untagged"], flow_tuple(4, "tcp"), payload=PAYLOAD)

    per_round: list[dict[str, float]] = []
    checks: dict[str, list[str]] = {}
    try:
        for r in range(rounds):
            row: dict[str, float] = {}
            fp.heartbeat()
            row["pass"] = xdp_pass.test_run(base, repeat=REPEAT).duration_ns
            row["redirect"] = fwd.test_run(base, repeat=REPEAT).duration_ns
            row["harness_pass"], _ = harness.run(xdp_pass, base, REPEAT)
            row["harness_redirect"], _ = harness.run(fwd, base, REPEAT)
            for case in CASES:
                data, key, value = _key_and_value(case)
                fp.reset()
                fp.flows.update(key, value)
                counter = COUNTER[case.state]
                before = fp.stats()[counter]
                h_ns, h_ret = harness.run(ebpfw, data, REPEAT)
                counted = fp.stats()[counter] - before
                problems = []
                if h_ret != EXPECT[case.state]:
                    problems.append(f"harness returned {h_ret}")
                if counted != REPEAT:
                    problems.append(f"counted {counted} of {REPEAT} on {counter.name}")
                row[f"{case.name}_harness"] = h_ns
                row[case.name] = h_ns - row["harness_pass"] + row["pass"]
                if case.state != "forward":   # the frame stays as it was: time it directly too
                    res = ebpfw.test_run(data, repeat=REPEAT)
                    row[f"{case.name}_direct"] = res.duration_ns
                    if res.retval != EXPECT[case.state]:
                        problems.append(f"direct run returned {res.retval}")
                checks.setdefault(case.name, []).extend(f"round {r}: {p}" for p in problems)
            for case in CASES:
                row[f"{case.name}_x_pass"] = row[case.name] / max(row["pass"], 1)
                row[f"{case.name}_x_redirect"] = row[case.name] / max(row["redirect"], 1)
            per_round.append(row)
            log(f"per-packet round {r + 1}/{rounds}: pass {row['pass']:.0f} ns, redirect "
                f"{row['redirect']:.0f} ns, hit v4 NAT {row['hit_v4_nat']:.0f} ns")
        pair = _pair_trick(fp, ebpfw)
    finally:
        fp.ring.close()
        for obj in (fp.obj, pass_obj, fwd_obj, harness.obj):
            obj.close()

    metrics = sorted({k for row in per_round for k in row})
    return {
        "repeat": REPEAT,
        "rounds": rounds,
        "cases": {c.name: c.label for c in CASES},
        "figures": {m: summary([row[m] for row in per_round]) for m in metrics},
        "path_checks": {k: v for k, v in checks.items() if v},
        "pair_trick": pair,
    }
