# SPDX-License-Identifier: GPL-2.0-only
"""fw4kernel against the real kernel: fw4's table, mark setters, sets, nft generations.

Each test runs in a network namespace of its own, with fw4's real ruleset loaded where it
matters, and reads it through libnftables and rtnetlink as the daemon does.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from netns import netns, run_in_netns

from fw_ebpf import fw4kernel
from fw_ebpf.fw4 import load_model
from fw_ebpf.fw4live import Router, zones_disagree

CASES_DIR = Path(__file__).resolve().parents[2] / "shared" / "fw4-cases"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces")
needs_cases = pytest.mark.skipif(not CASES_DIR.is_dir(), reason=f"{CASES_DIR} is absent")


def sh(ns: str, cmd: str, stdin: str | None = None) -> str:
    res = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", cmd], input=stdin,
                         capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd}: {res.stderr.strip()}")
    return res.stdout


@pytest.fixture
def ns() -> Iterator[str]:
    with netns(f"f4k{uuid.uuid4().hex[:8]}") as name:
        yield name


def _router_devices(ns: str) -> None:
    sh(ns, "ip link add eth0 type veth peer name eth1 && ip link add br-lan type bridge && "
           "ip link set eth0 master br-lan")


def _setters() -> list[str]:
    with fw4kernel.Nft() as nft:
        return fw4kernel.mark_setters(nft)


def _table(tz: str | None = None) -> Any:
    if tz:
        os.environ["TZ"] = tz
        time.tzset()
    with fw4kernel.Nft() as nft:
        return fw4kernel.fw4_table(nft)


@needs_cases
def test_fw4_table_zones_match_the_model_fw4_printed_with_it(ns: str):
    _router_devices(ns)
    assert run_in_netns(ns, _table) is None           # no fw4 loaded yet
    sh(ns, f"nft -f {CASES_DIR / 'default' / 'ruleset.nft'}")
    table = run_in_netns(ns, _table)
    assert table.zone_devices == {"lan": {"br-lan"}, "wan": {"eth1"}}
    assert table.zone_jumps == {"lan": 1, "wan": 1}
    model = load_model(CASES_DIR / "default" / "model.json")
    assert zones_disagree(model, table) is None
    assert run_in_netns(ns, Router().check, model) is None
    # a model whose lan zone does not jump where the kernel's does
    lan = dataclasses.replace(model.zones[0], match_rules=())
    stale = dataclasses.replace(model, zones=(lan,) + model.zones[1:])
    why = zones_disagree(stale, table)
    assert why is not None and why.startswith("zone 'lan': the kernel's fw4 table matches "
                                              "br-lan in 1 rules, the model no device in 0")
    # the same model with the firewall gone
    sh(ns, "nft delete table inet fw4")
    assert "not loaded" in (run_in_netns(ns, Router().check, model) or "")


def test_no_mark_setter_in_a_plain_router(ns: str):
    _router_devices(ns)
    if CASES_DIR.is_dir():
        sh(ns, f"nft -f {CASES_DIR / 'portfwd_rules' / 'ruleset.nft'}")
    assert run_in_netns(ns, _setters) == []


@pytest.mark.parametrize("rules, found", [
    ("chain pre { type filter hook prerouting priority -150; meta mark set 0x10; }",
     "nft table inet mk chain pre sets a mark"),
    ("chain fw { type filter hook forward priority -150; ct mark set 0x1; }",
     "nft table inet mk chain fw sets a mark"),
    ("chain helper { meta mark set meta mark or 0x2; }",
     "nft table inet mk chain helper sets a mark"),
    ("chain post { type filter hook postrouting priority 0; meta mark set 0x10; }", None),
])
def test_nft_rules_that_set_marks_before_the_filter_hooks(ns: str, rules: str,
                                                          found: str | None):
    sh(ns, "nft -f -", stdin=f"table inet mk {{\n{rules}\n}}\n")
    assert run_in_netns(ns, _setters) == ([found] if found else [])


def test_ip_rule_fwmark_and_tc_classifiers_count(ns: str):
    _router_devices(ns)
    sh(ns, "ip rule add fwmark 0x10 table 100")
    assert run_in_netns(ns, _setters) == ["ip rule 32765 matches fwmark 0x10"]
    sh(ns, "ip rule del fwmark 0x10 table 100")
    # a BPF classifier on ingress that is not ebpfw's may write skb->mark
    sh(ns, "tc qdisc add dev eth1 clsact && tc filter add dev eth1 ingress bpf bytecode "
           "'1,6 0 0 4294967295,'")
    got = run_in_netns(ns, _setters)
    assert len(got) == 1 and got[0].startswith("tc filter on eth1: BPF program")
    # a u32 filter whose action cannot touch the mark does not count
    sh(ns, "tc filter del dev eth1 ingress && tc filter add dev eth1 ingress u32 match u32 0 0 "
           "action mirred egress mirror dev eth0")
    assert run_in_netns(ns, _setters) == []
    # ...and the action is really read: were mirred one that marks, it would count
    # (act_skbedit, act_connmark and act_ctinfo are not in this kernel to try them)
    assert run_in_netns(ns, _setters_if_mirred_marked) == ["tc filter on eth1: action mirred"]


def _setters_if_mirred_marked() -> list[str]:
    fw4kernel._MARKLESS_ACTIONS = fw4kernel._MARKLESS_ACTIONS - {"mirred"}
    return _setters()


def _tcx_setters(obj: str, own_prefix: str) -> list[str]:
    """Attaches ebpfw's TC program through a tcx link on eth1 (closed when the child exits)
    and lists the mark setters, counting ebpfw's own programs unless own_prefix is theirs."""
    import socket

    from fw_ebpf import libbpf
    fw4kernel.OWN_BPF_PREFIX = own_prefix
    bpf = libbpf.BpfObject(obj)
    bpf.load()
    opts = libbpf._LinkCreateOpts(sz=ctypes.sizeof(libbpf._LinkCreateOpts))
    fd = libbpf._lib.bpf_link_create(bpf.program("ebpfw_tc").fd, socket.if_nametoindex("eth1"),
                                     46, ctypes.byref(opts))   # BPF_TCX_INGRESS
    if fd < 0:
        raise OSError(-fd, "tcx attach")
    return _setters()


def test_bpf_programs_on_tcx_links_count(ns: str, bpf_object: Path):
    _router_devices(ns)
    # (other tests' programs elsewhere on the machine may show up too: only ours is looked at)
    got = run_in_netns(ns, _tcx_setters, str(bpf_object), "no-such-prefix")
    assert [g for g in got if "ebpfw_tc" in g] == [
        f"BPF program ebpfw_tc on a tcx link of ifindex {_ifindex(ns, 'eth1')} may set the mark"]
    # ebpfw's own program sets no mark
    got = run_in_netns(ns, _tcx_setters, str(bpf_object), "ebpfw")
    assert [g for g in got if "ebpfw_tc" in g] == []


def _ifindex(ns: str, dev: str) -> int:
    return int(sh(ns, f"cat /sys/class/net/{dev}/ifindex"))


def test_set_elements_and_generation(ns: str):
    sh(ns, "nft -f -", stdin="table inet fw4 {\n"
       " set s { type ipv4_addr . inet_service; elements = { 192.0.2.1 . 80, 192.0.2.2 . 22 } }\n"
       " set n { type ipv4_addr; flags interval; elements = { 10.0.0.0/8, 192.0.2.9 } }\n"
       "}\n")

    def read() -> tuple[Any, Any, int]:
        with fw4kernel.Nft() as nft:
            return (fw4kernel.set_elements(nft, "s", ("ipv4_addr", "inet_service")),
                    fw4kernel.set_elements(nft, "n", ("ipv4_addr",)),
                    fw4kernel.nft_generation())
    s, n, gen = run_in_netns(ns, read)
    assert {(str(a), p.first) for a, p in s} == {("192.0.2.1/32", 80), ("192.0.2.2/32", 22)}
    assert {str(a) for (a,) in n} == {"10.0.0.0/8", "192.0.2.9/32"}
    sh(ns, "nft add element inet fw4 n { 198.51.100.1 }")
    assert run_in_netns(ns, read)[2] > gen     # any change, even one element, moves it
    assert isinstance(fw4kernel.kernel_minuteswest(), int)


def test_hour_values_are_what_nft_stored(ns: str):
    """nft converts local times with TZ when it loads; the table reader undoes its own TZ."""
    sh(ns, "TZ=EBP-03:30 nft -f -", stdin="table inet fw4 {\n chain input_x {\n"
       '  meta hour "08:00:00"-"18:00:00" accept\n  meta hour "22:00:00"-"02:00:00" accept\n'
       " }\n}\n")
    for tz in ("UTC", "EBP-03:30", "XYZ+07"):    # whatever the reader's own TZ
        table = run_in_netns(ns, _table, tz)
        assert os.environ.get("TZ") != "UTC0"
        local = [8, 18, 22, 2]
        assert table.hour_values == {int((h - 3.5) * 3600) % 86400 for h in local}, tz


def test_fingerprint_follows_the_rules_not_their_counters(ns: str):
    sh(ns, "nft -f -", stdin="table inet fw4 {\n chain input {\n"
       "  type filter hook input priority filter; policy accept;\n  counter accept\n }\n}\n")
    first = run_in_netns(ns, _table).fingerprint
    sh(ns, "ping -c 2 -i 0.2 -W 1 127.0.0.1")
    assert "packets 0" not in sh(ns, "nft list chain inet fw4 input")
    assert run_in_netns(ns, _table).fingerprint == first
    sh(ns, "nft add rule inet fw4 input tcp dport 22 drop")
    assert run_in_netns(ns, _table).fingerprint != first
