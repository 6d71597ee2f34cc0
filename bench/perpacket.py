# SPDX-License-Identifier: GPL-2.0-only
"""Per-packet cost of the XDP fast path with BPF_PROG_TEST_RUN (repeat, duration_ns).

Every case runs in every round, so ratios come from one round. Programs that leave the frame
as it was (XDP_PASS floor, minimal redirect, PENDING, DROP) are timed directly. A FORWARD hit
rewrites the frame, and test runs with repeat reuse one buffer: from the second run on the
program would meet its own output (NAT undone or missed, TTL one lower each time). So hits run
behind bench/bpf/harness.c, which restores the frame and tail-calls ebpfw_xdp; the harness'
own cost (measured by tail-calling the XDP_PASS program) is subtracted:

    hit = harness(ebpfw) - harness(pass) + direct(pass)

The ebpfw counters prove the path: every run of a hit case must count one FORWARD. Each case
is measured right after a fresh floor (harness(pass) and pass), and its ratio to that floor is
the figure to compare across machines and runs.

DSA (#12), in the same rounds: the object of the mtk tag (a head tag, after the source MAC)
on a conduit and on another device, against the untagged object's hit. Tail tags (trailer)
are not parsed, their frames pass: no hit to time.

Also here: instructions of each program per object (in the ELF for the little- and the
big-endian object; translated, JIT-compiled and verified as the kernel reports them for the
one this machine loads), and what a hit would cost on an 880 MHz core (see estimate_880mhz).
"""
from __future__ import annotations

import ctypes
import os
import statistics
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
from common import EBPFW_OBJECT, ROOT, ROUTER_CPU, load, log, summary
from fastpath import L2_IN, L2_OUT, L2, XDP_DROP, XDP_PASS, XDP_REDIRECT, flow_tuple, frame, \
    load_fastpath, nat_tuple
from fw_ebpf import maps
from fw_ebpf.libbpf import BpfProgram

LO = 1                      # test runs without a ctx see the loopback device
REPEAT = 1_000_000
PROGRAMS = ("ebpfw_xdp", "ebpfw_tc")
TARGET_MHZ = 880            # MT7621
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
    Case("pending", "miss (PENDING entry), IPv4", 4, L2_OUT["untagged"], "pending"),
    Case("drop", "DROP entry", 4, L2_OUT["untagged"], "drop"),
)
EXPECT = {"forward": XDP_REDIRECT, "pending": XDP_PASS, "drop": XDP_DROP}
DSA_TAG = "mtk"
MTK_OBJECT = ROOT / "build" / f"ebpfw-{DSA_TAG}-{EBPFW_OBJECT.stem.split('-')[-1]}.o"


@dataclass(frozen=True)
class DsaCase:
    name: str
    label: str
    conduit: bool       # the object runs on a conduit (RX tag parsed)
    in_port: int        # source port, NO_DSA_PORT: an untagged frame
    out_port: int       # destination port, NO_DSA_PORT: a device without tag


NONE = maps.NO_DSA_PORT
DSA_CASES = (
    DsaCase("mtk_plain", "mtk object, no tag either way, IPv4 TCP, SNAT", False, NONE, NONE),
    DsaCase("mtk_retag", "mtk: tag from port 1, re-tag to port 0, IPv4 TCP, SNAT", True, 1, 0),
    DsaCase("mtk_strip", "mtk: tag from port 1, out untagged, IPv4 TCP, SNAT", True, 1, NONE),
    DsaCase("mtk_push", "mtk: in untagged, push the tag of port 0, IPv4 TCP, SNAT", False,
            NONE, 0),
)


def _dsa_key_and_value(case: DsaCase) -> tuple[bytes, bytes, bytes]:
    t = flow_tuple(4, "tcp")
    data = frame(L2_IN["untagged"], t, payload=PAYLOAD)
    if case.in_port != NONE:   # the switch's RX tag, after the source MAC
        data = data[:12] + bytes([0, case.in_port, 0, 0]) + data[12:]
    key = maps.encode_key(LO, t, dsa_port=case.in_port)
    out = maps.L2Out(**{**L2_OUT["untagged"].out().__dict__, "dsa_port": case.out_port})
    return data, key, maps.encode_forward(t, nat_tuple(t, "snat"), LO, 1500, out)
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


def static_insns(obj: Path) -> dict[str, int]:
    """Instruction slots of each program in the ELF (a 64-bit immediate load takes two, as in
    the kernel's counts); works for either byte order."""
    out = subprocess.run(["llvm-nm", "--print-size", "--defined-only", str(obj)],
                         check=True, capture_output=True, text=True).stdout
    sizes = {f[3]: int(f[1], 16) for f in (line.split() for line in out.splitlines())
             if len(f) == 4}
    return {p: sizes[p] // 8 for p in PROGRAMS}


def loaded_insns(obj: Any) -> dict[str, dict[str, int]]:
    """xlated instructions, JIT bytes and the verifier's processed instructions of each
    loaded program (struct bpf_prog_info: jited_prog_len @16, xlated_prog_len @20,
    verified_insns @216, Linux 5.16 on)."""
    out = {}
    for name in PROGRAMS:
        buf, size = ctypes.create_string_buffer(232), ctypes.c_uint32(232)
        if common._libbpf.bpf_obj_get_info_by_fd(obj.program(name).fd, buf, ctypes.byref(size)):
            raise OSError(ctypes.get_errno(), f"bpf_prog_info of {name}")
        jited, xlated = struct.unpack_from("=II", buf.raw, 16)
        out[name] = {"xlated": xlated // 8, "jited_bytes": jited,
                     "verified": struct.unpack_from("=I", buf.raw, 216)[0]}
    return out


def host_mhz() -> float:
    """This CPU's clock as the kernel reports it (no cycle counter in this VM)."""
    mhz = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
           if line.startswith("cpu MHz")]
    return statistics.median(mhz)


def estimate_880mhz(figures: dict[str, Any], mhz: float) -> dict[str, dict[str, float]]:
    """Packets/s one 880 MHz core could run the program at: the program's own time here (case
    minus the XDP_PASS floor, which is the test-run loop) in cycles of this CPU, taken as the
    same number of cycles there. An upper bound: an in-order MIPS core does fewer instructions
    per cycle, its 32-bit JIT needs about two instructions per 64-bit BPF operation, and the
    driver's own receive and transmit come on top."""
    out = {}
    for name in ("hit_v4_nat", "hit_v6_nat", "pending", "drop"):
        own_ns = max(figures[name]["median"] - figures["pass"]["median"], 1.0)
        cycles = own_ns * mhz / 1000
        out[name] = {"own_ns": own_ns, "cycles": cycles, "pps": TARGET_MHZ * 1e6 / cycles}
    return out


def run(rounds: int = 9) -> dict[str, Any]:
    os.sched_setaffinity(0, {ROUTER_CPU})
    fp = load_fastpath(EBPFW_OBJECT, HEARTBEAT_TIMEOUT_S)
    ebpfw = fp.obj.program("ebpfw_xdp")
    loaded = loaded_insns(fp.obj)
    pass_obj, fwd_obj = load("pass"), load("fwd")
    xdp_pass, fwd = pass_obj.program("xdp_pass"), fwd_obj.program("fwd")
    fwd_obj.map("fwd_tx").update(bytes(4), struct.pack("=I", LO))
    fwd_obj.map("fwd_l2").update(bytes(4), bytes.fromhex("020000000102020000000101"))
    harness = Harness()
    base = frame(L2_IN["untagged"], flow_tuple(4, "tcp"), payload=PAYLOAD)
    dsa_fps = {c: load_fastpath(MTK_OBJECT, HEARTBEAT_TIMEOUT_S,
                                dsa_conduits=(LO,) if c else ()) for c in (True, False)}

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
                # the floor again, next to the case: on a shared machine it drifts
                floor_h, _ = harness.run(xdp_pass, base, REPEAT)
                floor = xdp_pass.test_run(base, repeat=REPEAT).duration_ns
                before = fp.stats()[counter]
                h_ns, h_ret = harness.run(ebpfw, data, REPEAT)
                counted = fp.stats()[counter] - before
                problems = []
                if h_ret != EXPECT[case.state]:
                    problems.append(f"harness returned {h_ret}")
                if counted != REPEAT:
                    problems.append(f"counted {counted} of {REPEAT} on {counter.name}")
                row[f"{case.name}_harness"] = h_ns
                row[case.name] = h_ns - floor_h + floor
                row[f"{case.name}_x_pass"] = row[case.name] / max(floor, 1)
                row[f"{case.name}_x_redirect"] = row[case.name] / max(row["redirect"], 1)
                if case.state != "forward":   # the frame stays as it was: time it directly too
                    res = ebpfw.test_run(data, repeat=REPEAT)
                    row[f"{case.name}_direct"] = res.duration_ns
                    if res.retval != EXPECT[case.state]:
                        problems.append(f"direct run returned {res.retval}")
                checks.setdefault(case.name, []).extend(f"round {r}: {p}" for p in problems)
            for dcase in DSA_CASES:
                dfp = dsa_fps[dcase.conduit]
                data, key, value = _dsa_key_and_value(dcase)
                dfp.reset()
                dfp.flows.update(key, value)
                floor_h, _ = harness.run(xdp_pass, base, REPEAT)
                floor = xdp_pass.test_run(base, repeat=REPEAT).duration_ns
                before = dfp.stats()[maps.Counter.FORWARD]
                h_ns, h_ret = harness.run(dfp.obj.program("ebpfw_xdp"), data, REPEAT)
                counted = dfp.stats()[maps.Counter.FORWARD] - before
                problems = []
                if h_ret != XDP_REDIRECT:
                    problems.append(f"harness returned {h_ret}")
                if counted != REPEAT:
                    problems.append(f"counted {counted} of {REPEAT} FORWARD")
                row[dcase.name] = h_ns - floor_h + floor
                row[f"{dcase.name}_x_pass"] = row[dcase.name] / max(floor, 1)
                checks.setdefault(dcase.name, []).extend(f"round {r}: {p}" for p in problems)
            per_round.append(row)
            log(f"per-packet round {r + 1}/{rounds}: pass {row['pass']:.0f} ns, redirect "
                f"{row['redirect']:.0f} ns, hit v4 NAT {row['hit_v4_nat']:.0f} ns")
        pair = _pair_trick(fp, ebpfw)
    finally:
        fp.ring.close()
        for dfp in dsa_fps.values():
            dfp.ring.close()
        for obj in (fp.obj, pass_obj, fwd_obj, harness.obj, *(d.obj for d in dsa_fps.values())):
            obj.close()

    metrics = sorted({k for row in per_round for k in row})
    figures = {m: summary([row[m] for row in per_round]) for m in metrics}
    mhz = host_mhz()
    return {
        "repeat": REPEAT,
        "rounds": rounds,
        "cases": {c.name: c.label for c in (*CASES, *DSA_CASES)},
        "figures": figures,
        "path_checks": {k: v for k, v in checks.items() if v},
        "pair_trick": pair,
        "instructions": {"static": {e: static_insns(ROOT / "build" / f"ebpfw-{e}.o")
                                    for e in ("le", "be")},
                         "loaded": loaded,
                         "loaded_object": EBPFW_OBJECT.name},
        "host_mhz": mhz,
        "estimate_880mhz": estimate_880mhz(figures, mhz),
    }
