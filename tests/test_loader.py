# SPDX-License-Identifier: GPL-2.0-only
"""fw_ebpf.loader with the real fast-path object on veth pairs in throwaway network namespaces.

The test bodies run in a forked child inside the namespace (run_in_netns); they observe the
kernel state with `ip` and `tc` (independent of the code under test) and return what they saw.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from fw_ebpf.libbpf import BpfError, open_pinned_map
from fw_ebpf.loader import FLOW_MAPS, PINNED_MAPS, TC_HANDLE, TC_PRIORITY, Loader, object_name
from netns import netns, run_in_netns, sh, veth_pair

OBJ = str(Path(__file__).resolve().parents[1] / "build" / object_name())
FLOWS_MAP4 = FLOW_MAPS[0]   # ebpfw_flows4

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for BPF and network namespaces"),
    pytest.mark.skipif(not os.path.exists(OBJ), reason=f"{OBJ} missing: run `make bpf` first"),
]


@pytest.fixture
def ns() -> Iterator[str]:
    """A namespace with veth0 <-> veth1 up."""
    with netns(f"ebpfw-t-{uuid.uuid4().hex[:6]}") as name:
        veth_pair(name, "veth0", "veth1")
        yield name


# ---- observations, made inside the namespace with the iproute2 tools ----

def xdp_state(ifname: str) -> tuple[str, int] | None:
    """("xdp" | "xdpgeneric", prog id) as `ip -d link` reports it, None without XDP."""
    link = json.loads(sh("ip", "-j", "-d", "link", "show", "dev", ifname))[0]
    xdp = link.get("xdp")
    if not xdp:
        return None
    return {1: "xdp", 2: "xdpgeneric"}.get(xdp["mode"], str(xdp["mode"])), xdp["prog"]["id"]


def tc_filters(ifname: str, where: str = "ingress") -> list[dict[str, Any]]:
    """Filters on clsact ingress or egress (only the entries that carry options: one each)."""
    out = sh("tc", "-j", "filter", "show", "dev", ifname, where).strip()
    return [f for f in json.loads(out or "[]") if f.get("options")]


def has_clsact(ifname: str) -> bool:
    qdiscs = json.loads(sh("tc", "-j", "qdisc", "show", "dev", ifname))
    return any(q["kind"] == "clsact" for q in qdiscs)


def observe(ifname: str) -> dict[str, Any]:
    return {"xdp": xdp_state(ifname), "tc": tc_filters(ifname), "egress": tc_filters(ifname, "egress"),
            "clsact": has_clsact(ifname)}


def ours(filters: list[dict[str, Any]], prog_id: int) -> bool:
    return any(f["kind"] == "bpf" and f["pref"] == TC_PRIORITY
               and int(f["options"]["handle"], 16) == TC_HANDLE
               and f["options"]["prog"]["id"] == prog_id for f in filters)


# ---- bodies run in the namespace ----

def attach_then_detach(pin_dir: str, ifname: str, mode: str) -> dict[str, Any]:
    loader = Loader(OBJ, pin_dir=pin_dir)
    try:
        loader.load()
        assert loader.obj is not None
        out: dict[str, Any] = {"used": loader.attach(ifname, mode)}
        out["ids"] = {"xdp": loader.obj.program("ebpfw_xdp").id,
                      "tc": loader.obj.program("ebpfw_tc").id,
                      "egress": loader.obj.program("ebpfw_egress").id}
        out["attachments"] = loader.attachments
        out["during"] = observe(ifname)
        out["link_pinned"] = os.path.exists(f"{pin_dir}/link-xdp-{ifname}")
        loader.detach(ifname)
        out["after"] = observe(ifname)
        out["attachments_after"] = loader.attachments
        loader.unpin()
        return out
    finally:
        loader.close()


def assert_clean(after: dict[str, Any], pin_dir: str) -> None:
    assert after == {"xdp": None, "tc": [], "egress": [], "clsact": False}
    assert not os.path.exists(pin_dir), os.listdir(pin_dir)


@pytest.mark.parametrize("mode,expect", [("xdp", "xdp"), ("xdp-generic", "xdpgeneric")])
def test_xdp_modes_attach_with_a_pinned_link_and_detach_cleanly(
        ns: str, pin_dir: str, mode: str, expect: str) -> None:
    out = run_in_netns(ns, attach_then_detach, pin_dir, "veth0", mode)
    assert out["used"] == mode and out["attachments"] == {"veth0": mode}
    assert out["during"]["xdp"] == (expect, out["ids"]["xdp"])
    assert out["during"]["tc"] == [] and out["link_pinned"]
    assert ours(out["during"]["egress"], out["ids"]["egress"])   # the proof, always
    assert out["attachments_after"] == {}
    assert_clean(out["after"], pin_dir)


def test_tc_mode_adds_our_filter_and_removes_the_clsact_it_created(ns: str, pin_dir: str) -> None:
    out = run_in_netns(ns, attach_then_detach, pin_dir, "veth0", "tc")
    assert out["used"] == "tc"
    assert out["during"]["xdp"] is None and out["during"]["clsact"]
    assert ours(out["during"]["tc"], out["ids"]["tc"]), out["during"]["tc"]
    assert ours(out["during"]["egress"], out["ids"]["egress"]), out["during"]["egress"]
    assert_clean(out["after"], pin_dir)


def test_auto_is_native_xdp_with_tc_beside_it_on_veth(ns: str, pin_dir: str) -> None:
    out = run_in_netns(ns, attach_then_detach, pin_dir, "veth0", "auto")
    assert out["used"] == "xdp+tc" and out["attachments"] == {"veth0": "xdp+tc"}
    assert out["during"]["xdp"] == ("xdp", out["ids"]["xdp"])
    assert ours(out["during"]["tc"], out["ids"]["tc"])
    assert ours(out["during"]["egress"], out["ids"]["egress"])
    assert_clean(out["after"], pin_dir)


def test_auto_falls_back_to_generic_xdp_without_driver_support(ns: str, pin_dir: str) -> None:
    sh("ip", "-n", ns, "link", "add", "br0", "type", "bridge")  # bridges have no native XDP
    sh("ip", "-n", ns, "link", "set", "br0", "up")
    out = run_in_netns(ns, attach_then_detach, pin_dir, "br0", "auto")
    assert out["used"] == "xdp-generic+tc"
    assert out["during"]["xdp"] == ("xdpgeneric", out["ids"]["xdp"])
    assert_clean(out["after"], pin_dir)


def native_on_bridge(pin_dir: str) -> tuple[str, dict[str, Any], dict[str, str], list[str]]:
    with Loader(OBJ, pin_dir=pin_dir) as loader:
        loader.load()
        with pytest.raises(BpfError) as e:
            loader.attach("br0", "xdp")
        state = (str(e.value), observe("br0"), loader.attachments, sorted(os.listdir(pin_dir)))
        loader.unpin()
        return state


def test_failed_native_xdp_names_the_interface_and_leaves_nothing(ns: str, pin_dir: str) -> None:
    sh("ip", "-n", ns, "link", "add", "br0", "type", "bridge")
    msg, seen, attachments, pins = run_in_netns(ns, native_on_bridge, pin_dir)
    assert msg == "br0: the driver has no native XDP support; use mode xdp-generic or tc"
    assert seen == {"xdp": None, "tc": [], "egress": [], "clsact": False}
    assert attachments == {} and not any(p.startswith("link-") for p in pins)


def detach_beside_foreign_filter(pin_dir: str) -> dict[str, Any]:
    with Loader(OBJ, pin_dir=pin_dir) as loader:
        loader.load()
        loader.attach("veth0", "tc")
        during = tc_filters("veth0")
        loader.detach("veth0")
        loader.unpin()
        return {"during": during, "after": observe("veth0")}


def test_foreign_clsact_and_filter_survive_our_detach(ns: str, pin_dir: str) -> None:
    sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "veth0", "clsact")
    sh("ip", "netns", "exec", ns, "tc", "filter", "add", "dev", "veth0", "ingress", "prio", "1",
       "u32", "match", "u32", "0", "0", "flowid", "1:1")
    out = run_in_netns(ns, detach_beside_foreign_filter, pin_dir)
    assert {f["kind"] for f in out["during"]} == {"u32", "bpf"}
    assert out["after"]["clsact"] and out["after"]["xdp"] is None
    assert {f["kind"] for f in out["after"]["tc"]} == {"u32"}  # theirs; ours is gone
    assert not os.path.exists(pin_dir)


def test_clsact_we_created_stays_while_someone_else_added_a_filter(ns: str, pin_dir: str) -> None:
    def body() -> dict[str, Any]:
        with Loader(OBJ, pin_dir=pin_dir) as loader:
            loader.load()
            loader.attach("veth0", "tc")
            sh("tc", "filter", "add", "dev", "veth0", "egress", "prio", "1",
               "u32", "match", "u32", "0", "0", "flowid", "1:1")
            loader.detach("veth0")
            loader.unpin()
            return observe("veth0")

    after = run_in_netns(ns, body)
    assert after["clsact"] and after["tc"] == []


def missing_interface(pin_dir: str) -> str:
    with Loader(OBJ, pin_dir=pin_dir) as loader:
        loader.load()
        try:
            for mode in ("xdp", "xdp-generic", "tc", "auto"):
                with pytest.raises((BpfError, ValueError)) as e:
                    loader.attach("nosuch0", mode)
                assert "nosuch0" in str(e.value) and "\n" not in str(e.value)
            return str(e.value)
        finally:
            loader.unpin()


def test_missing_interface_is_a_one_line_error_naming_it(ns: str, pin_dir: str) -> None:
    assert run_in_netns(ns, missing_interface, pin_dir) == "nosuch0: no such interface"


def test_unknown_mode_is_refused(pin_dir: str) -> None:
    with pytest.raises(ValueError, match="veth0: unknown attach mode 'xdp-native'"):
        Loader(OBJ, pin_dir=pin_dir).attach("veth0", "xdp-native")


def test_pinned_maps_are_reused_by_a_second_loader(pin_dir: str) -> None:
    first, second = Loader(OBJ, pin_dir=pin_dir), Loader(OBJ, pin_dir=pin_dir)
    try:
        first.load()
        flows = first.map(FLOWS_MAP4)
        key, value = bytes(range(flows.key_size)), bytes([7]) * flows.value_size
        flows.update(key, value)
        assert sorted(os.listdir(pin_dir)) == sorted(PINNED_MAPS)
        first.close()
        second.load()
        assert second.map(FLOWS_MAP4).lookup(key) == value
        with open_pinned_map(f"{pin_dir}/{FLOWS_MAP4}") as pinned:
            assert pinned.lookup(key) == value
    finally:
        first.close()
        second.unpin()
        second.close()
    assert not os.path.exists(pin_dir)


def test_pinned_flows_map_of_another_size_is_replaced(pin_dir: str) -> None:
    with Loader(OBJ, pin_dir=pin_dir, flows_max=1024) as small:
        small.load()
        flows = small.map(FLOWS_MAP4)
        flows.update(bytes(flows.key_size), bytes(flows.value_size))
    with Loader(OBJ, pin_dir=pin_dir, flows_max=2048) as big:
        big.load()
        assert big.map(FLOWS_MAP4).max_entries == 2048
        assert list(big.map(FLOWS_MAP4).keys()) == []
        big.unpin()


def readopt_after_crash(pin_dir: str) -> dict[str, Any]:
    crashed = Loader(OBJ, pin_dir=pin_dir)
    crashed.load()
    crashed.attach("veth0", "xdp")
    crashed.close()  # like a daemon that died: link pinned, program still attached
    out: dict[str, Any] = {"orphan": xdp_state("veth0")}
    with Loader(OBJ, pin_dir=pin_dir) as restarted:
        restarted.load()
        assert restarted.obj is not None
        out["used"] = restarted.attach("veth0", "xdp")
        out["new_id"] = restarted.obj.program("ebpfw_xdp").id
        out["adopted"] = xdp_state("veth0")
        restarted.detach("veth0")
        out["after"] = observe("veth0")
        restarted.unpin()
    return out


def test_restarted_loader_readopts_the_pinned_xdp_link(ns: str, pin_dir: str) -> None:
    out = run_in_netns(ns, readopt_after_crash, pin_dir)
    assert out["orphan"] is not None and out["orphan"][0] == "xdp"
    assert out["used"] == "xdp" and out["adopted"] == ("xdp", out["new_id"])
    assert out["new_id"] != out["orphan"][1]
    assert_clean(out["after"], pin_dir)


def test_interfaces_outside_the_namespace_are_not_touched() -> None:
    # the fixtures' promise: tests see only their own namespaces' devices
    with netns(f"ebpfw-t-{uuid.uuid4().hex[:6]}") as name:
        names = run_in_netns(name, lambda: [n for _, n in socket.if_nameindex()])
    assert names == ["lo"]
    assert subprocess.run(["ip", "netns", "pids", name], capture_output=True).returncode != 0
