# SPDX-License-Identifier: GPL-2.0-only
"""bench/results/*.json -> bench/results/*.png and docs/BENCHMARKS.md (generated; edit this
file, not the Markdown)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common import RESULTS, ROOT  # noqa: E402

DOC = ROOT / "docs" / "BENCHMARKS.md"
Results = dict[str, Any]


@dataclass(frozen=True)
class Target:
    text: str
    get: Callable[[Results], dict[str, Any] | None]
    op: str          # ">=", "<=", "<"
    bound: float
    unit: str = "x"


def _dig(*path: str) -> Callable[[Results], dict[str, Any] | None]:
    def get(res: Results) -> dict[str, Any] | None:
        node: Any = res
        for p in path:
            if not isinstance(node, dict) or p not in node:
                return None
            node = node[p]
        return node
    return get


TARGETS = (
    Target("XDP native >= 2.8x kernel packets/s (64 B, IPv4 + masquerade)",
           _dig("forwarding", "forwarding", "ipv4-masq/64", "xdp", "x_kernel"), ">=", 2.8),
    Target("XDP native >= 0.85x minimal XDP forwarder (64 B, same run)",
           _dig("forwarding", "forwarding", "ipv4-masq/64", "xdp", "x_minimal"), ">=", 0.85),
    Target("... the same per second of router CPU (the minimal forwarder leaves the router CPU "
           "partly idle here)", lambda res: _x_minimal_per_cpu(res), ">=", 0.85),
    Target("TC >= 1.7x kernel packets/s (64 B, IPv4 + masquerade)",
           _dig("forwarding", "forwarding", "ipv4-masq/64", "tc", "x_kernel"), ">=", 1.7),
    Target("XDP generic >= 1.5x kernel packets/s (64 B, IPv4 + masquerade)",
           _dig("forwarding", "forwarding", "ipv4-masq/64", "xdp-generic", "x_kernel"), ">=", 1.5),
    Target("FORWARD hit (IPv4 NAT) <= 6x the XDP_PASS floor",
           _dig("perpacket", "figures", "hit_v4_nat_x_pass"), "<=", 6),
    Target("early drop, XDP >= 5x the nftables drop rate",
           _dig("forwarding", "early_drop", "xdp", "x_nftables"), ">=", 5),
    Target("early drop, TC >= 5x the nftables drop rate",
           _dig("forwarding", "early_drop", "tc", "x_nftables"), ">=", 5),
    Target("admission latency p99 < 50 ms", _dig("control", "admission_ms", "p99"), "<", 50, " ms"),
    Target("daemon CPU < 5 % of one core at 10k flows",
           _dig("control", "steady", "10000", "cpu_pct"), "<", 5, " %"),
    Target("daemon RSS < 30 MB at 10k flows", _dig("control", "steady", "10000", "rss_mb"), "<", 30,
           " MB"),
)


def _met(value: float, op: str, bound: float) -> bool:
    return {">=": value >= bound, "<=": value <= bound, "<": value < bound}[op]


def _fmt(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _mmm(s: dict[str, Any] | None, scale: float = 1.0, digits: int = 2) -> str:
    """'median (min - max)' of a summary."""
    if not s or s.get("median") is None:
        return "n/a"
    return (f"{_fmt(s['median'] * scale, digits)} ({_fmt(s['min'] * scale, digits)} - "
            f"{_fmt(s['max'] * scale, digits)})")


def load() -> Results:
    res: Results = {"errors": {}}
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        if "error" in data:
            res["errors"][path.stem] = data["error"]
        else:
            res[path.stem] = data
    return res


# ---- plots ------------------------------------------------------------------------------------

def _bars(ax: Any, labels: list[str], series: dict[str, list[dict[str, Any] | None]],
          scale: float = 1.0) -> None:
    n = max(len(series), 1)
    width = 0.8 / n
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(labels))]
        values = [v if v and v.get("median") is not None else None for v in values]
        med = [(v["median"] * scale) if v else 0 for v in values]
        lo = [((v["median"] - v["min"]) * scale) if v else 0 for v in values]
        hi = [((v["max"] - v["median"]) * scale) if v else 0 for v in values]
        ax.bar(xs, med, width, yerr=[lo, hi], capsize=3, label=name)
    ax.set_xticks(range(len(labels)), labels)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_all(res: Results) -> list[str]:
    made = []
    fw = res.get("forwarding", {}).get("forwarding")
    if fw:
        cases = [k for k in fw if "/" in k]
        modes = ["kernel", "xdp", "xdp-generic", "tc", "xdp-minimal"]
        fig, ax = plt.subplots(figsize=(9, 4))
        _bars(ax, cases, {m: [fw[c].get(m, {}).get("pps") for c in cases] for m in modes}, 1e-6)
        ax.set_ylabel("Mpps (median, min-max)")
        ax.set_title("Router forwarding rate, one router CPU")
        made.append(_save(fig, "forwarding.png"))
    drop = res.get("forwarding", {}).get("early_drop")
    if drop:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        _bars(ax, list(drop), {"drop rate": [drop[m]["pps"] for m in drop]}, 1e-6)
        ax.set_ylabel("Mpps")
        ax.set_title("Early drop of a flow fw4 drops")
        made.append(_save(fig, "early_drop.png"))
    pp = res.get("perpacket", {}).get("figures")
    if pp:
        cases = ["pass", "redirect"] + list(res["perpacket"]["cases"])
        fig, ax = plt.subplots(figsize=(9, 3.5))
        _bars(ax, [c.replace("_", "\n") for c in cases], {"ns per packet": [pp.get(c) for c in cases]})
        ax.set_ylabel("ns (BPF_PROG_TEST_RUN)")
        ax.set_title("Per-packet cost, XDP")
        made.append(_save(fig, "perpacket.png"))
    ctl = res.get("control")
    if ctl:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
        _bars(a1, ["p50", "p99", "max"], {"admission ms": [ctl["admission_ms"][q] for q in
                                                            ("p50", "p99", "max")]})
        a1.set_title("Admission latency (first packet -> FORWARD)")
        a1.set_yscale("log")
        levels = list(ctl["steady"])
        _bars(a2, levels, {"CPU %": [ctl["steady"][lv]["cpu_pct"] or None for lv in levels],
                           "RSS MB": [ctl["steady"][lv]["rss_mb"] for lv in levels]})
        a2.set_title("Daemon at N offloaded connections")
        made.append(_save(fig, "control.png"))
    tp = res.get("throughput")
    if tp:
        modes = ["kernel", "xdp", "xdp-generic", "tc"]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        _bars(ax, modes, {f"{s} stream(s)": [tp.get(f"{m}/{s}", {}).get("gbps") for m in modes]
                          for s in (1, 4)})
        ax.set_ylabel("Gbit/s")
        ax.set_title("TCP throughput through the router (iperf3)")
        made.append(_save(fig, "throughput.png"))
    return made


def _save(fig: Any, name: str) -> str:
    fig.tight_layout()
    fig.savefig(RESULTS / name, dpi=110)
    plt.close(fig)
    return name


# ---- markdown ---------------------------------------------------------------------------------

def _img(name: str) -> str:
    return f"![{name}](../bench/results/{name})"


def render(res: Results) -> str:
    meta = res.get("meta", {})
    out = ["<!-- SPDX-License-Identifier: GPL-2.0-only -->",
           "<!-- Generated by bench/report.py from bench/results/*.json; do not edit. -->",
           "# ebpfw benchmarks", "",
           f"Run: `{meta.get('command', 'make bench')}` on {meta.get('date', '?')}, kernel "
           f"{meta.get('kernel', '?')}, {meta.get('cpus', '?')} CPUs ({meta.get('cpu_model', '?')}), "
           f"{meta.get('seconds', 0):.0f} s in all{_reruns(meta)}. Every figure is median (min - max) over the "
           "rounds; every ratio is computed within one round, then summarised. Absolute numbers "
           "vary between runs on a shared machine; the ratios are the result.", "",
           "## Targets", "",
           "| target | measured (median, min - max) | |", "|---|---|---|"]
    for t in TARGETS:
        s = t.get(res)
        if not s or s.get("median") is None:
            out.append(f"| {t.text} | not measured | - |")
            continue
        ok = _met(s["median"], t.op, t.bound)
        out.append(f"| {t.text} | {_mmm(s)}{t.unit} | {'met' if ok else '**missed**'} |")
    for name, err in res.get("errors", {}).items():
        out += ["", f"**{name} failed in this run:** `{err.splitlines()[0][:300]}`"]
    out += ["", "Reference (GSoC predecessor bpfw, same method and kind of machine): XDP native "
            "2.64x and TC 1.58x kernel forwarding at 60 B; admission 0.4 s median / 1 s max at a "
            "1 s poll; 2.8 MB RSS (C).", ""]
    out += _perpacket(res.get("perpacket"))
    out += _forwarding(res.get("forwarding"))
    out += _drop(res.get("forwarding"))
    out += _control(res.get("control"))
    out += _throughput(res.get("throughput"))
    out += _netlink(res.get("netlink"))
    return "\n".join(out) + "\n"


def _reruns(meta: Results) -> str:
    later = [f"{name} re-run with `{r['command']}` on {r['date']}" + (
                 f" ({r['cpus']} CPUs, {r['cpu_model']}, kernel {r['kernel']})"
                 if "cpu_model" in r and (r["cpu_model"], r["kernel"]) !=
                 (meta.get("cpu_model"), meta.get("kernel")) else "")
             for name, r in meta.get("runs", {}).items() if r["command"] != meta.get("command")]
    return f" ({'; '.join(later)})" if later else ""


def _x_minimal_per_cpu(res: Results) -> dict[str, Any] | None:
    """XDP native / minimal forwarder per second of router CPU, ratio per round."""
    case = _dig("forwarding", "forwarding", "ipv4-masq/64")(res)
    if not case or "xdp-minimal" not in case:
        return None
    ratios = [a / b for a, b in zip(case["xdp"]["pps_per_cpu"]["runs"],
                                    case["xdp-minimal"]["pps_per_cpu"]["runs"])]
    return {"min": min(ratios), "median": sorted(ratios)[len(ratios) // 2], "max": max(ratios),
            "runs": ratios}


def _perpacket(pp: Results | None) -> list[str]:
    if not pp:
        return []
    f = pp["figures"]
    out = ["## Per-packet cost (BPF_PROG_TEST_RUN)", "",
           f"`ebpfw_xdp` run {pp['repeat']:,} times per figure, {pp['rounds']} rounds, pinned to "
           "one CPU. FORWARD hits run behind `bench/bpf/harness.c` (restores the frame, tail-calls "
           "the program; its own cost, measured with XDP_PASS behind it, is subtracted), because "
           "a repeated run meets its own output. PENDING and DROP leave the frame alone and are "
           "also timed directly, which checks the harness arithmetic. The ebpfw counters prove "
           "every run took the intended path"
           + (": no deviation." if not pp.get("path_checks") else f": {pp['path_checks']}."), "",
           "| case | ns per packet | x XDP_PASS | x minimal redirect | direct |",
           "|---|---|---|---|---|",
           f"| XDP_PASS program (floor) | {_mmm(f['pass'], digits=1)} | 1 | | |",
           f"| minimal redirect program | {_mmm(f['redirect'], digits=1)} | | 1 | |"]
    for name, label in pp["cases"].items():
        direct = _mmm(f.get(f"{name}_direct"), digits=1) if f.get(f"{name}_direct") else ""
        out.append(f"| {label} | {_mmm(f[name], digits=1)} | {_mmm(f[name + '_x_pass'], digits=1)} | "
                   f"{_mmm(f[name + '_x_redirect'], digits=1)} | {direct} |")
    pt = pp.get("pair_trick")
    if pt:
        out += ["", f"Why the harness: with an A->B / B->A pair of NAT entries and a plain repeated "
                f"run ({pt['repeat']:,} runs), {pt['forwarded']} runs were forwarded and "
                f"{pt['passed_ttl']} passed for TTL <= 1: every hit decrements the TTL of the one "
                "buffer, so the pair trick measures the TTL check, not the hit."]
    return out + ["", _img("perpacket.png"), ""]


def _forwarding(fw: Results | None) -> list[str]:
    if not fw:
        return []
    f = fw["forwarding"]
    pl = ", ".join(f"{k} on CPU {v}" for k, v in fw.get("placement", {}).items())
    out = ["## Router forwarding rate", "",
           "One UDP flow from the client through the lab router (fw4 ruleset; IPv4 masqueraded) "
           "to an XDP sink on the server. Generator: `bench/bpf/gen.c` with "
           "BPF_F_TEST_XDP_LIVE_FRAMES (XDP_TX out of the client's veth, headers rewritten every "
           f"frame, SCHED_IDLE). Placement: {pl}. Each figure is {fw.get('window_s')} s of "
           "sink counts after a warm-up; `offered` is what the generator sent, `router CPU` the "
           "busy share of the router's CPU from /proc/stat (irq and softirq included) and, in "
           "brackets, the share the hypervisor stole. `x kernel per CPU` divides each rate by the "
           "router CPU share it had first (a check on the raw ratio when the share moved between "
           "windows).", "",
           "| case | mode | Mpps | x kernel | x kernel per CPU | x minimal XDP | offered Mpps | "
           "router CPU (steal) |",
           "|---|---|---|---|---|---|---|---|"]
    for case, modes in f.items():
        if "/" not in case:
            continue
        for mode, v in modes.items():
            out.append(f"| {case} B | {mode} | {_mmm(v['pps'], 1e-6, 3)} | {_mmm(v['x_kernel'])} | "
                       f"{_mmm(v.get('x_kernel_per_cpu'))} | "
                       f"{_mmm(v.get('x_minimal')) if v.get('x_minimal') else ''} | "
                       f"{_mmm(v['offered_pps'], 1e-6)} | {_cpu(v)} |")
    return out + ["", _img("forwarding.png"), ""]


def _cpu(v: dict[str, Any]) -> str:
    busy, steal = v.get("router_cpu"), v.get("router_steal")
    if not busy:
        return ""
    return f"{busy['median'] * 100:.0f} %" + (f" ({steal['median'] * 100:.0f} %)" if steal else "")


def _drop(fw: Results | None) -> list[str]:
    if not fw or "early_drop" not in fw:
        return []
    d = fw["early_drop"]
    out = ["## Early drop", "",
           "A UDP flow from the WAN side that fw4 drops (WAN in, WAN out: `drop_to_wan`), "
           "generated on the server's veth into the router. nftables: the fw4 drop rule's "
           "counter. ebpfw: a DROP entry for the flow in the flow table of a fast path the "
           "benchmark loads itself (the daemon does not keep entries it did not write), its DROP "
           "counter. ",
           "`xdp-floor` is the cheapest XDP drop there is (count and XDP_DROP) on the same "
           "device: the ceiling of any XDP drop on this veth rig.", "",
           "| mode | Mpps dropped | x nftables | x nftables per CPU | x XDP floor | offered Mpps | "
           "router CPU (steal) |", "|---|---|---|---|---|---|---|"]
    for mode, v in d.items():
        out.append(f"| {mode} | {_mmm(v['pps'], 1e-6, 3)} | {_mmm(v['x_nftables'])} | "
                   f"{_mmm(v.get('x_nftables_per_cpu'))} | {_mmm(v.get('x_floor'))} | "
                   f"{_mmm(v['offered_pps'], 1e-6)} | {_cpu(v)} |")
    return out + ["", _img("early_drop.png"), ""]


def _control(c: Results | None) -> list[str]:
    if not c:
        return []
    a = c["admission_ms"]
    out = ["## Control path", "",
           "Real UDP flows through the router (`bench/flows.py`), the daemon in XDP mode, one "
           "datagram per new flow. Admission: the daemon's own measurement (`ebpfw status`, "
           "first packet seen by the fast path -> FORWARD written) over "
           f"{c['admission_count']} flows sent at {c['paced_rate']}/s. Rate: the next flows sent "
           "at once, offloaded connections per second until all are in. Steady state: daemon "
           "utime+stime over a quiet window, VmRSS, and `last_sweep_ms`.", "",
           "| admission | ms |", "|---|---|"]
    for q in ("p50", "p99", "max"):
        out.append(f"| {q} | {_mmm(a[q])} |")
    out += ["", "| burst up to | connections offloaded per s |", "|---|---|"]
    for level, s in c["admission_rate_per_s"].items():
        out.append(f"| {int(level):,} | {_mmm(s, digits=0)} |")
    out += ["", "| offloaded connections | runs | daemon CPU % of one core | RSS MB | sweep ms | "
            "re-resolving every flow (s) |", "|---|---|---|---|---|---|"]
    for level, s in c["steady"].items():
        out.append(f"| {int(level):,} | {len(s['cpu_pct']['runs'])} | {_mmm(s['cpu_pct'])} | "
                   f"{_mmm(s['rss_mb'], digits=1)} | {_mmm(s['sweep_ms'], digits=1)} | "
                   f"{_mmm(s.get('revalidate_s'))} |")
    out += ["", "Re-resolving every flow (`ebpfw resync`, timed at the smallest size) is what the "
            "daemon does after a route or address change; link, neighbour and FDB events only "
            "re-resolve the flows they touch, and a neighbour state change that keeps its MAC "
            "(REACHABLE -> STALE) touches none. The steady-state windows run with permanent "
            "neighbours on the router all the same, to measure the daemon alone."]
    return out + ["", _img("control.png"), ""]


def _throughput(t: Results | None) -> list[str]:
    if not t:
        return []
    out = ["## TCP throughput", "",
           f"iperf3 client -> server through the router, IPv4 with masquerade, {t['seconds']} s "
           f"after {t['omit']} s omitted; no pinning (both endpoints, router and daemon share the "
           "CPUs).", "", "| mode | streams | Gbit/s | x kernel | fast-path packets |",
           "|---|---|---|---|---|"]
    for key, v in t.items():
        if "/" not in key:
            continue
        mode, streams = key.split("/")
        out.append(f"| {mode} | {streams} | {_mmm(v['gbps'])} | {_mmm(v['x_kernel'])} | "
                   f"{_mmm(v['fast_path_packets'], digits=0)} |")
    return out + ["", _img("throughput.png"), ""]


def _netlink(n: Results | None) -> list[str]:
    if not n or "rss_mb" not in n:
        return []
    out = ["## Netlink layer", "",
           "`bench/netlink_cost.py`: the daemon's own netlink codec (`fw_ebpf.netlink`, "
           "`conntrack`, `rtnl`) against pyroute2, its previous one, in one run. RSS: a fresh "
           "interpreter after the imports named.", "", "| imports | RSS MB |", "|---|---|"]
    for what, s in n["rss_mb"].items():
        out.append(f"| {what} | {_mmm(s, digits=1)} |")
    out += ["", "| per message the kernel sent | ours (us) | pyroute2 (us) |", "|---|---|---|",
            f"| conntrack UPDATE event | {_mmm(n['ct_event_decode_us_ours'], digits=1)} | "
            f"{_mmm(n['ct_event_decode_us_pyroute2'], digits=0)} |",
            f"| route get reply | {_mmm(n['route_decode_us_ours'], digits=1)} | "
            f"{_mmm(n['route_decode_us_pyroute2'], digits=0)} |",
            "", f"| conntrack lookups, {n['entries']:,} entries | per s |", "|---|---|",
            f"| one request per tuple, pyroute2 codec | "
            f"{_mmm(n['lookup_per_s_single_pyroute2'], digits=0)} |",
            f"| one request per tuple (`lookup`) | {_mmm(n['lookup_per_s_single'], digits=0)} |",
            f"| batched (`lookup_many`) | {_mmm(n['lookup_per_s_batched'], digits=0)} |", ""]
    return out


def main() -> None:
    res = load()
    plot_all(res)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(render(res))


if __name__ == "__main__":
    main()
