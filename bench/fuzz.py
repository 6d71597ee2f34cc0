# SPDX-License-Identifier: GPL-2.0-only
"""The long fuzz budget: tests/test_fastpath_fuzz.py with many more examples and a fresh seed.

`make test` runs the same test derandomized on a small budget; this runs
EBPFW_FUZZ_EXAMPLES (default 2000) examples per hook and flow kind, seeded by the clock
unless EBPFW_FUZZ_SEED is set. The seed is recorded, so a failure found here is replayed with
    EBPFW_FUZZ_SEED=<seed> EBPFW_FUZZ_EXAMPLES=<n> .venv/bin/python -m pytest tests/test_fastpath_fuzz.py
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from common import ROOT, log

TEST = "tests/test_fastpath_fuzz.py"
INSTANCES = 8   # two hooks x four flow kinds


def run() -> dict[str, Any]:
    examples = int(os.environ.get("EBPFW_FUZZ_EXAMPLES", "2000"))
    seed = int(os.environ.get("EBPFW_FUZZ_SEED", str(int(time.time()))))
    env = dict(os.environ, EBPFW_FUZZ_EXAMPLES=str(examples), EBPFW_FUZZ_SEED=str(seed))
    log(f"fuzz: {examples} examples x {INSTANCES}, seed {seed}")
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    summary = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    log(f"fuzz: {summary} in {seconds:.0f} s")
    return {"examples_per_instance": examples, "instances": INSTANCES, "seed": seed,
            "frames": examples * INSTANCES, "fuzz_seconds": round(seconds, 1),
            "passed": res.returncode == 0, "summary": summary,
            "failure": "" if res.returncode == 0 else res.stdout[-4000:]}
