# SPDX-License-Identifier: GPL-2.0-only
"""`make bench`: every benchmark, its JSON in bench/results/, then plots and docs/BENCHMARKS.md.

    python bench/run.py                     # all but fuzz (about 35 minutes)
    python bench/run.py perpacket control   # some; the others' earlier JSON stays
    python bench/run.py fuzz                # the long fuzz budget (bench/fuzz.py), on demand
    EBPFW_SOAK_ROUNDS=40 python bench/run.py soak fuzz   # `make soak`: a longer soak
    python bench/run.py --report            # only regenerate plots and the Markdown
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import control  # noqa: E402
import forwarding  # noqa: E402
import netlink_cost  # noqa: E402
import flood  # noqa: E402
import fuzz  # noqa: E402
import perpacket  # noqa: E402
import report  # noqa: E402
import revocation  # noqa: E402
import soak  # noqa: E402
import throughput  # noqa: E402

BENCHMARKS: dict[str, Callable[[], dict[str, Any]]] = {
    "perpacket": perpacket.run,
    "forwarding": forwarding.run,
    "control": control.run,
    "throughput": throughput.run,
    "netlink": netlink_cost.run,
    "revocation": revocation.run,
    "soak": soak.run,
    "flood": flood.run,
    "fuzz": fuzz.run,
}


BENCHMARKS_FIRST = next(iter(BENCHMARKS))
ON_DEMAND = ("fuzz",)   # not part of a plain `make bench`
DEFAULT = [n for n in BENCHMARKS if n not in ON_DEMAND]


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("only", nargs="*", help=f"benchmarks to run: {', '.join(BENCHMARKS)}")
    p.add_argument("--report", action="store_true", help="only regenerate plots and Markdown")
    args = p.parse_args()
    unknown = [n for n in args.only if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark {', '.join(unknown)} (choose from {', '.join(BENCHMARKS)})")
    if os.geteuid() != 0 and not args.report:
        print("bench: needs root (BPF programs, network namespaces)", file=sys.stderr)
        return 1
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.report:
        if not common.EBPFW_OBJECT.exists():
            print(f"bench: {common.EBPFW_OBJECT} missing; run `make bpf`", file=sys.stderr)
            return 1
        common.build_programs()
        common.compile_daemon()
        start, failed = time.monotonic(), []
        for name in args.only or DEFAULT:
            common.log(f"== {name}")
            t0 = time.monotonic()
            try:
                result = BENCHMARKS[name]()
            except Exception as e:   # one broken benchmark must not cost the others' results
                traceback.print_exc()
                result = {"error": f"{type(e).__name__}: {e}"[:2000]}
                failed.append(name)
            result["seconds"] = round(time.monotonic() - t0, 1)
            (common.RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        meta_path = common.RESULTS / "meta.json"
        meta = json.loads(meta_path.read_text()) if args.only and meta_path.exists() else {}
        command = "make bench" if not args.only else f"bench/run.py {' '.join(args.only)}"
        meta.setdefault("runs", {})
        host = {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": _cpu_model()}
        for name in args.only or DEFAULT:
            meta["runs"][name] = {"command": command,
                                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                  **host}
        if not args.only:   # the header names the machine of the full run
            meta.update({"command": command, "date": meta["runs"][BENCHMARKS_FIRST]["date"],
                         "seconds": time.monotonic() - start, **host})
        meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    report.main()
    common.log(f"wrote {report.DOC.relative_to(common.ROOT)} and plots in "
               f"{common.RESULTS.relative_to(common.ROOT)}")
    if not args.report and failed:
        common.log(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
