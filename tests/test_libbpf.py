# SPDX-License-Identifier: GPL-2.0-only
"""fw_ebpf.libbpf against the real kernel, with a tiny BPF object compiled by the test."""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import struct
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from fw_ebpf import libbpf
from fw_ebpf.libbpf import BpfError, BpfObject

from netns import netns, run_in_netns, veth_pair

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to load BPF programs"),
    pytest.mark.skipif(shutil.which("clang") is None, reason="needs clang to build a test object"),
]

HEADER = r"""
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 1024);
         __type(key, __u32); __type(value, __u64); } hmap SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 4);
         __type(key, __u32); __type(value, __u64); } amap SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 1);
         __type(key, __u32); __type(value, __u32); } pcpu SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096); } events SEC(".maps");

struct config { __u32 magic; __u32 verdict; };
const volatile struct config config SEC(".rodata.config") = { .magic = 1, .verdict = XDP_PASS };
"""

GOOD = HEADER + r"""
SEC("xdp")
int prog_xdp(struct xdp_md *ctx)
{
    unsigned char *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    __u32 zero = 0, magic = config.magic;
    __u32 *hits = bpf_map_lookup_elem(&pcpu, &zero);

    if (hits)
        (*hits)++;
    bpf_ringbuf_output(&events, &magic, sizeof(magic), 0);
    if (data + 1 <= end)
        data[0] = 0xab;  /* proves data_out is what the program left */
    return config.verdict;
}

SEC("tc")
int prog_tc(struct __sk_buff *skb)
{
    return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
"""

# dereferences a map lookup without a NULL check: the verifier must refuse it
BAD = HEADER + r"""
SEC("xdp")
int prog_bad(struct xdp_md *ctx)
{
    __u32 zero = 0;
    __u64 *v = bpf_map_lookup_elem(&hmap, &zero);
    return *v;
}

char _license[] SEC("license") = "GPL";
"""

XDP_PASS, XDP_DROP = 2, 1


def compile_bpf(tmp: Path, name: str, source: str) -> str:
    src, obj = tmp / f"{name}.c", tmp / f"{name}.o"
    src.write_text(source)
    subprocess.run(["clang", "-O2", "-g", "-target", "bpfel", "-c", str(src), "-o", str(obj),
                    "-I/usr/include/x86_64-linux-gnu"], check=True, capture_output=True)
    return str(obj)


@pytest.fixture(scope="module")
def good_obj(tmp_path_factory: pytest.TempPathFactory) -> str:
    return compile_bpf(tmp_path_factory.mktemp("bpf"), "good", GOOD)


@pytest.fixture
def obj(good_obj: str) -> Iterator[BpfObject]:
    with BpfObject(good_obj) as o:
        o.load()
        yield o


def u32(n: int) -> bytes:
    return struct.pack("=I", n)


def u64(n: int) -> bytes:
    return struct.pack("=Q", n)


def test_version_is_1x() -> None:
    assert libbpf.libbpf_version().startswith("v1.")


def test_missing_object_file_is_named_in_error(tmp_path: Path) -> None:
    with pytest.raises(BpfError, match="nope.o: BPF object file not found"):
        BpfObject(str(tmp_path / "nope.o"))


def test_object_lists_maps_and_programs(obj: BpfObject) -> None:
    assert {"hmap", "amap", "pcpu", "events", ".rodata.config"} <= {m.name for m in obj.maps()}
    progs = {p.name: p for p in obj.programs()}
    assert progs["prog_xdp"].type == libbpf.BPF_PROG_TYPE_XDP
    assert progs["prog_tc"].type == libbpf.BPF_PROG_TYPE_SCHED_CLS
    assert progs["prog_xdp"].fd >= 0 and progs["prog_xdp"].id > 0
    m = obj.map("hmap")
    assert (m.type, m.key_size, m.value_size, m.max_entries) == \
        (libbpf.BPF_MAP_TYPE_HASH, 4, 8, 1024)


def test_hash_map_crud(obj: BpfObject) -> None:
    m = obj.map("hmap")
    assert m.lookup(u32(1)) is None
    m.update(u32(1), u64(10))
    assert m.lookup(u32(1)) == u64(10)
    with pytest.raises(BpfError) as e:
        m.update(u32(1), u64(11), libbpf.BPF_NOEXIST)
    assert e.value.errno == 17  # EEXIST
    m.update(u32(1), u64(12), libbpf.BPF_EXIST)
    assert m.lookup(u32(1)) == u64(12)
    assert m.delete(u32(1)) is True
    assert m.delete(u32(1)) is False
    with pytest.raises(ValueError, match="key is 2 bytes"):
        m.lookup(b"\0\0")


def test_iteration_and_batch_lookup_see_every_entry(obj: BpfObject) -> None:
    m = obj.map("hmap")
    want = {u32(i): u64(i * 3) for i in range(600)}
    for k, v in want.items():
        m.update(k, v)
    assert sorted(m.keys()) == sorted(want)
    assert dict(m.items()) == want
    got = m.lookup_batch(batch=64)
    assert len(got) == len(want) and dict(got) == want
    arr = obj.map("amap")
    arr.update(u32(2), u64(7))
    assert dict(arr.lookup_batch()) == {u32(i): u64(7 if i == 2 else 0) for i in range(4)}


def test_batch_update_and_delete(obj: BpfObject) -> None:
    m = obj.map("hmap")
    items = [(u32(i), u64(i + 1)) for i in range(300)]
    m.update_batch(items)
    assert dict(m.lookup_batch()) == dict(items)
    # keys that are not there are skipped, not an error; the count says what was there
    assert m.delete_batch([u32(i) for i in range(0, 400, 2)]) == 150
    assert dict(m.lookup_batch()) == {u32(i): u64(i + 1) for i in range(1, 300, 2)}
    # the 1024-entry map fills up: what came before the refused item is written
    with pytest.raises(BpfError) as e:
        m.update_batch([(u32(i), u64(0)) for i in range(1000, 2000)])
    assert e.value.errno == errno.E2BIG
    assert len(m.lookup_batch()) == 1024
    with pytest.raises(ValueError, match="batch item"):
        m.update_batch([(b"\0\0", u64(0))])


def test_a_paused_batch_scan_holds_only_the_chunk_it_gave(obj: BpfObject) -> None:
    """The sweep pauses a scan between two slices for a whole sweep_interval: the generator
    must not keep the batch's buffers (at 64k entries, MBs of RSS for nothing)."""
    m = obj.map("hmap")
    items = [(u32(i), u64(i)) for i in range(300)]
    m.update_batch(items)
    scan = m.batches(64)
    seen = dict(next(scan))
    assert seen
    assert scan.gi_frame is not None
    held = {name: len(value) for name, value in scan.gi_frame.f_locals.items()
            if isinstance(value, (bytes, ctypes.Array)) and len(value) > 64}
    assert held == {}, f"the paused scan holds {held}"
    for chunk in scan:
        seen.update(chunk)
    assert seen == dict(items)


def test_batch_lookup_falls_back_for_maps_without_batch_ops(obj: BpfObject) -> None:
    # a ring buffer has no keys at all: the fallback iterates and finds nothing or fails clean
    with pytest.raises(BpfError):
        obj.map("events").lookup_batch()


def test_rodata_set_before_load_reaches_program(good_obj: str) -> None:
    with BpfObject(good_obj) as o:
        o.set_rodata(".rodata.config", u32(0xC0FFEE) + u32(XDP_DROP))
        o.load()
        seen: list[bytes] = []
        with libbpf.RingBuffer(o.map("events"), seen.append) as rb:
            res = o.program("prog_xdp").test_run(bytes(64))
            assert rb.poll(1000) == 1
        assert seen == [u32(0xC0FFEE)]
        assert res.retval == XDP_DROP


def test_rodata_size_mismatch_is_refused(good_obj: str) -> None:
    with BpfObject(good_obj) as o, pytest.raises(BpfError, match="is 8 bytes, got 4"):
        o.set_rodata(".rodata.config", u32(1))


def test_test_run_returns_retval_and_rewritten_data(obj: BpfObject) -> None:
    res = obj.program("prog_xdp").test_run(bytes(range(64)), repeat=3)
    assert res.retval == XDP_PASS
    assert res.data == b"\xab" + bytes(range(1, 64))
    assert res.duration_ns >= 0


def test_percpu_lookup_has_one_value_per_possible_cpu(obj: BpfObject) -> None:
    m = obj.map("pcpu")
    obj.program("prog_xdp").test_run(bytes(64), repeat=5)
    values = m.lookup_percpu(u32(0))
    assert len(values) == libbpf.num_possible_cpus()
    assert all(len(v) == 4 for v in values)  # value_size, not the 8-byte slot
    assert sum(struct.unpack("=I", v)[0] for v in values) == 5
    m.update(u32(0), u32(9))  # one value means: the same on every CPU
    assert m.lookup_percpu(u32(0)) == [u32(9)] * libbpf.num_possible_cpus()


def test_ring_buffer_callback_errors_are_raised_from_poll(obj: BpfObject) -> None:
    def boom(_: bytes) -> None:
        raise RuntimeError("callback failed")

    with libbpf.RingBuffer(obj.map("events"), boom) as rb:
        assert rb.fileno() >= 0
        obj.program("prog_xdp").test_run(bytes(64))
        with pytest.raises(RuntimeError, match="callback failed"):
            rb.poll(1000)
        assert rb.consume() == 0  # the failed record was consumed, not redelivered


def test_load_error_contains_verifier_log(tmp_path: Path) -> None:
    with BpfObject(compile_bpf(tmp_path, "bad", BAD)) as o:
        with pytest.raises(BpfError) as e:
            o.load()
    assert e.value.errno == 13  # EACCES from the verifier
    assert "load failed" in str(e.value)
    assert "invalid mem access" in str(e.value)


def test_pin_open_pinned_and_unpin(obj: BpfObject, pin_dir: str) -> None:
    m = obj.map("hmap")
    m.update(u32(5), u64(50))
    path = f"{pin_dir}/hmap"
    m.pin(path)
    with libbpf.open_pinned_map(path) as pinned:
        assert (pinned.name, pinned.type, pinned.key_size, pinned.value_size,
                pinned.max_entries) == ("hmap", libbpf.BPF_MAP_TYPE_HASH, 4, 8, 1024)
        assert pinned.lookup(u32(5)) == u64(50)
        pinned.update(u32(6), u64(60))
    assert m.lookup(u32(6)) == u64(60)
    m.unpin(path)
    assert not os.path.exists(path)
    with pytest.raises(BpfError, match="cannot open pinned map"):
        libbpf.open_pinned_map(path)


def test_pin_path_reuses_existing_map_at_load(good_obj: str, pin_dir: str) -> None:
    with BpfObject(good_obj) as a:
        a.set_pin_path("hmap", f"{pin_dir}/hmap")
        a.load()
        a.map("hmap").update(u32(1), u64(111))
    with BpfObject(good_obj) as b:
        b.set_pin_path("hmap", f"{pin_dir}/hmap")
        b.load()
        assert b.map("hmap").lookup(u32(1)) == u64(111)


def _xdp_and_tc_in_netns(obj_path: str, pin_dir: str) -> dict[str, object]:
    ifindex = __import__("socket").if_nametoindex("veth0")
    out: dict[str, object] = {}
    with BpfObject(obj_path) as o:
        o.load()
        xdp, tc = o.program("prog_xdp"), o.program("prog_tc")
        link = libbpf.xdp_attach(xdp, ifindex, "generic")
        info = link.info()
        out["link"] = (info.prog_id == xdp.id, info.ifindex == ifindex)
        with pytest.raises(BpfError, match="veth0: another XDP program is attached"):
            libbpf.xdp_attach(xdp, ifindex, "native")
        link.pin(f"{pin_dir}/link")
        link.close()
        with libbpf.open_pinned_link(f"{pin_dir}/link") as again:
            again.update_program(xdp.fd)
            again.unpin(f"{pin_dir}/link")
        out["after_close"] = subprocess.run(["ip", "link", "show", "veth0"], capture_output=True,
                                            text=True).stdout
        assert libbpf.tc_hook_create(ifindex) is True
        assert libbpf.tc_hook_create(ifindex) is False
        assert libbpf.tc_query(ifindex, 0xeb, 0x1234) is None
        libbpf.tc_attach(ifindex, tc.fd, 0xeb, 0x1234)
        out["tc_query"] = libbpf.tc_query(ifindex, 0xeb, 0x1234) == tc.id
        with pytest.raises(BpfError, match="already exists"):
            libbpf.tc_attach(ifindex, tc.fd, 0xeb, 0x1234)
        libbpf.tc_attach(ifindex, tc.fd, 0xeb, 0x1234, replace=True)
        assert libbpf.tc_detach(ifindex, 0xeb, 0x1234) is True
        assert libbpf.tc_detach(ifindex, 0xeb, 0x1234) is False
        assert libbpf.tc_hook_destroy(ifindex) is True
        out["qdisc"] = subprocess.run(["tc", "qdisc", "show", "dev", "veth0"],
                                      capture_output=True, text=True).stdout
    return out


def test_xdp_link_and_tc_filter_lifecycle(good_obj: str, pin_dir: str) -> None:
    with netns(f"ebpfw-t-{uuid.uuid4().hex[:6]}") as ns:
        veth_pair(ns, "veth0", "veth1")
        out = run_in_netns(ns, _xdp_and_tc_in_netns, good_obj, pin_dir)
    assert out["link"] == (True, True)
    assert "xdp" not in str(out["after_close"])  # unpinned + closed link = detached
    assert out["tc_query"] is True
    assert "clsact" not in str(out["qdisc"])
