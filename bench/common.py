# SPDX-License-Identifier: GPL-2.0-only
"""What every benchmark shares: paths, building the helper programs, live-frame test runs,
entering namespaces, CPU pinning, NAPI threads and min / median / max summaries."""
from __future__ import annotations

import compileall
import contextlib
import ctypes
import os
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))   # lab.py, fastpath.py: the benchmarks reuse them

from fw_ebpf.libbpf import BpfMap, BpfObject, BpfProgram  # noqa: E402

BENCH = ROOT / "bench"
BUILD = ROOT / "build" / "bench"
RESULTS = BENCH / "results"
EBPFW_OBJECT = ROOT / "build" / ("ebpfw-le.o" if sys.byteorder == "little" else "ebpfw-be.o")
PROGRAMS = ("gen", "sink", "pass", "fwd", "harness", "flood", "reflect")
BPF_F_TEST_XDP_LIVE_FRAMES = 2
GEN_CPU, ROUTER_CPU = 0, 1     # generator and sinks on one CPU, the router's NAPI on the other

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- building ---------------------------------------------------------------------------------

def compile_daemon() -> None:
    """The daemon's package compiled to bytecode, as an OpenWrt package ships it: a daemon
    that compiles its modules as it starts holds about 1.7 MB more, which would count as idle
    RSS (and with PYTHONDONTWRITEBYTECODE set, every start would compile them again)."""
    if not compileall.compile_dir(str(ROOT / "src" / "fw_ebpf"), quiet=1):
        raise RuntimeError("compiling src/fw_ebpf failed")


def build_programs() -> dict[str, Path]:
    """Compiles bench/bpf/*.c into build/bench/ (when older than the source)."""
    BUILD.mkdir(parents=True, exist_ok=True)
    arch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True).stdout.strip()
    target = "bpfel" if sys.byteorder == "little" else "bpfeb"
    out = {}
    for name in PROGRAMS:
        src, obj = BENCH / "bpf" / f"{name}.c", BUILD / f"{name}.o"
        if not obj.exists() or obj.stat().st_mtime < src.stat().st_mtime:
            subprocess.run(["clang", "-O2", "-g", "-Wall", "-Werror", "-target", target,
                            f"-I/usr/include/{arch}", "-c", str(src), "-o", str(obj)], check=True)
        out[name] = obj
    return out


def load(name: str) -> BpfObject:
    obj = BpfObject(str(BUILD / f"{name}.o"))
    obj.load()
    return obj


# ---- summaries --------------------------------------------------------------------------------

def summary(values: Sequence[float]) -> dict[str, object]:
    """min / median / max of the runs, and the runs themselves."""
    vals = [float(v) for v in values]
    if not vals:
        return {"min": None, "median": None, "max": None, "runs": []}
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "runs": vals}


# ---- BPF helpers ------------------------------------------------------------------------------

class _TestRunOpts(ctypes.Structure):
    # struct bpf_test_run_opts (libbpf 1.x); live frames refuse data_out / ctx_out
    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p),
                ("data_out", ctypes.c_void_p), ("data_size_in", ctypes.c_uint32),
                ("data_size_out", ctypes.c_uint32), ("ctx_in", ctypes.c_void_p),
                ("ctx_out", ctypes.c_void_p), ("ctx_size_in", ctypes.c_uint32),
                ("ctx_size_out", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32)]


_libbpf.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.c_void_p]
_libbpf.bpf_prog_test_run_opts.restype = ctypes.c_int


def xdp_md(ingress_ifindex: int, size: int) -> bytes:
    """struct xdp_md for ctx_in: data, data_end (must be the frame size), data_meta,
    ingress_ifindex, rx_queue_index, egress_ifindex."""
    return struct.pack("=6I", 0, size, 0, ingress_ifindex, 0, 0)


def run_live(prog: BpfProgram, frame: bytes, ifindex: int, repeat: int, batch: int = 256) -> None:
    """Runs prog over `repeat` live frames as if received on ifindex (XDP_TX sends them out)."""
    data = ctypes.create_string_buffer(frame, len(frame))
    ctx = ctypes.create_string_buffer(xdp_md(ifindex, len(frame)), 24)
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), data_in=ctypes.cast(data, ctypes.c_void_p),
                        data_size_in=len(frame), ctx_in=ctypes.cast(ctx, ctypes.c_void_p),
                        ctx_size_in=24, repeat=repeat, flags=BPF_F_TEST_XDP_LIVE_FRAMES,
                        batch_size=batch)
    ret = _libbpf.bpf_prog_test_run_opts(prog.fd, ctypes.byref(opts))
    if ret < 0:
        raise OSError(-ret, f"live test run of {prog.name}: {os.strerror(-ret)}")


def percpu_total(m: BpfMap, key: bytes = bytes(4)) -> int:
    return sum(int.from_bytes(v[:8], sys.byteorder) for v in m.lookup_percpu(key))


# ---- namespaces, CPUs, NAPI -------------------------------------------------------------------

@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Moves this thread into a named namespace for the block (ifindex-taking BPF calls
    resolve devices in the caller's namespace), then back."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        yield
    finally:
        if _libc.setns(home, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back to the initial namespace")
        os.close(home)
        os.close(target)


def ns_sh(ns: str, cmd: str, check: bool = True) -> str:
    res = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", cmd], capture_output=True,
                         text=True, timeout=60)
    if check and res.returncode:
        raise RuntimeError(f"{ns}: {cmd}: {res.stderr.strip()}")
    return res.stdout


def _napi_threads(dev: str) -> dict[int, str]:
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith(f"napi/{dev}-"):
            out[int(pid)] = comm
    return out


def threaded_napi(ns: str, dev: str) -> list[int]:
    """Turns on threaded NAPI for dev (GRO on first, so veth keeps its NAPI whatever XDP
    program comes and goes) and returns the new kthreads. The names are not unique across
    namespaces, so the threads are the ones that appeared."""
    ns_sh(ns, f"ethtool -K {dev} gro on")
    before = _napi_threads(dev)
    ns_sh(ns, f"echo 1 > /sys/class/net/{dev}/threaded")
    for _ in range(50):
        new = [p for p in _napi_threads(dev) if p not in before]
        if new:
            return new
        time.sleep(0.02)
    raise RuntimeError(f"{ns}/{dev}: no NAPI kthread appeared after enabling threaded NAPI")


def pin(pids: Sequence[int], cpu: int) -> None:
    for pid in pids:
        os.sched_setaffinity(pid, {cpu})


def cpu_times(cpu: int) -> tuple[float, float, float]:
    """(busy, steal, total) jiffies of one CPU from /proc/stat (irq and softirq count as busy;
    a NAPI thread's softirq time does not show in its own utime/stime)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            v = [float(x) for x in line.split()[1:9]]
            user, nice, system, idle, iowait, irq, softirq, steal = v
            return user + nice + system + irq + softirq, steal, sum(v)
    raise RuntimeError(f"cpu{cpu} not in /proc/stat")


def runtime_ns(pids: Sequence[int]) -> int:
    """Time these threads spent on a CPU (sum_exec_runtime from /proc/<pid>/schedstat): their
    own cost, whatever else shares the CPU."""
    return sum(int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) for pid in pids)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
