# SPDX-License-Identifier: GPL-2.0-only
"""Shared fixtures: the compiled BPF objects (built on demand), root checks, the router lab."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab import Lab

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"


def native_object() -> Path:
    return BUILD / ("ebpfw-le.o" if sys.byteorder == "little" else "ebpfw-be.o")


@pytest.fixture(scope="session")
def bpf_build() -> Path:
    """Runs `make bpf` once per session, so a plain pytest run is never stale."""
    subprocess.run(["make", "-s", "-C", str(ROOT), "bpf"], check=True)
    return BUILD


@pytest.fixture(scope="session")
def bpf_object(bpf_build: Path) -> Path:
    return native_object()


@pytest.fixture
def lab(request: pytest.FixtureRequest):
    """The router lab (tests/lab.py) with an echo server on the server; the daemon's log is
    printed when the test fails."""
    with Lab() as the_lab:
        the_lab.start_echo_server(the_lab.server)
        yield the_lab
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed and the_lab.daemon_log.exists():
            lines = [x for x in the_lab.daemon_log.read_text().splitlines()
                     if "fw_ebpf" in x and "libbpf:" not in x]
            print("--- daemon log (tail) ---\n" + "\n".join(lines[-60:]))


requires_root = pytest.mark.skipif(os.geteuid() != 0,
                                   reason="needs root: loads BPF programs into the kernel")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Lets fixtures see whether their test failed (to show logs only then)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
