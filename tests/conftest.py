# SPDX-License-Identifier: GPL-2.0-only
"""Shared fixtures: the compiled BPF objects (built on demand) and root checks."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

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


@pytest.fixture
def pin_dir() -> Iterator[str]:
    """A pin dir on a bpffs of the test's own, unmounted afterwards: tests never depend on (or
    mount) the host's /sys/fs/bpf, and whatever a failing test pinned goes with the mount."""
    mnt = tempfile.mkdtemp(prefix="ebpfw-bpffs-", dir="/run")
    subprocess.run(["mount", "-t", "bpf", "bpf", mnt], check=True)
    path = os.path.join(mnt, f"pins-{uuid.uuid4().hex[:8]}")
    os.mkdir(path, 0o700)
    try:
        yield path
    finally:
        subprocess.run(["umount", mnt], check=False)
        shutil.rmtree(mnt, ignore_errors=True)


requires_root = pytest.mark.skipif(os.geteuid() != 0,
                                   reason="needs root: loads BPF programs into the kernel")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Lets fixtures see whether their test failed (to show logs only then)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
