# SPDX-License-Identifier: GPL-2.0-only
"""Shared fixtures: the compiled BPF objects (built on demand), pin dirs, the e2e lab, root
checks."""
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

from fastpath import FastPath, load_fastpath
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


@pytest.fixture(scope="module")
def loaded(bpf_object: Path) -> Iterator[FastPath]:
    """The fast path loaded for BPF_PROG_TEST_RUN, once per test module."""
    fp = load_fastpath(bpf_object, heartbeat_timeout_s=600)
    yield fp
    fp.ring.close()
    fp.obj.close()


@pytest.fixture
def fp(loaded: FastPath) -> FastPath:
    """The module's fast path with empty maps."""
    loaded.reset()
    return loaded


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


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A router lab with an echo server; the daemon log is printed when the test failed."""
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
