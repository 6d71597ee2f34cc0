# SPDX-License-Identifier: GPL-2.0-only
"""Shared fixtures: the compiled BPF objects (built on demand) and root checks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


requires_root = pytest.mark.skipif(os.geteuid() != 0,
                                   reason="needs root: loads BPF programs into the kernel")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Lets fixtures see whether their test failed (to show logs only then)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
