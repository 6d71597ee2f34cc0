# SPDX-License-Identifier: GPL-2.0-only
"""What `status` adds for the LuCI page: attached hooks with their interface indexes, the
heartbeat's age (the fast path fails open past its timeout), early drop in force, and what the
fast path carried in total."""
from __future__ import annotations

import ipaddress
import json
import os
import signal

import pytest

from conftest import requires_root
from fw_ebpf import maps
from fw_ebpf.admission import Samples
from fw_ebpf.flows import FlowBook
from fw_ebpf.libbpf import open_pinned_map
from fw_ebpf.maps import Tuple
from lab import SERVER4, Lab


def test_carried_keeps_the_counters_of_removed_entries():
    book = FlowBook()
    keys = []
    for i in range(3):
        t = Tuple(17, ipaddress.IPv4Address(f"192.168.1.{10 + i}"),
                  ipaddress.IPv4Address("198.51.100.20"), 40000 + i, 5201)
        rec = book.add(maps.encode_key(2, t))
        rec.packets, rec.bytes = 10 * (i + 1), 1000 * (i + 1)
        keys.append(rec.key)
    assert book.carried() == (60, 6000)
    book.remove(keys[1])
    book.remove(keys[1])          # twice: counted once
    assert book.carried() == (60, 6000)
    book.records[keys[0]].packets += 5
    assert book.carried() == (65, 6000)


def test_a_connection_keeps_its_conntrack_expiry_while_a_direction_is_bound():
    book = FlowBook()
    t = Tuple(17, ipaddress.IPv4Address("192.168.1.10"), ipaddress.IPv4Address("198.51.100.20"),
              40000, 5201)
    back = Tuple(17, t.daddr, ipaddress.IPv4Address("203.0.113.2"), t.dport, 61000)
    conn = maps.tuple_id(t)
    there, home = book.add(maps.encode_key(2, t)), book.add(maps.encode_key(3, back))
    book.set_ct_expiry(conn, 99.0)     # no record bound: nothing to keep it with
    assert book.ct_expiry(conn) == 0.0
    book.bind(there, conn, 0, maps.tuple_id(back))
    book.bind(home, conn, 1, maps.tuple_id(t))
    book.set_ct_expiry(conn, 99.0)
    book.remove(there.key)
    assert book.ct_expiry(conn) == 99.0
    book.remove(home.key)              # the last direction: the row goes, and its expiry
    assert book.ct_expiry(conn) == 0.0
    again = book.add(maps.encode_key(2, t))
    book.bind(again, conn, 0, maps.tuple_id(back))     # a reused row starts unknown
    assert book.ct_expiry(conn) == 0.0


@pytest.fixture
def lab(bpf_build):
    with Lab() as the_lab:
        the_lab.start_echo_server(the_lab.server)
        yield the_lab


def _status(lab: Lab) -> dict:
    return lab.ctl("status", "--json")  # type: ignore[return-value]


@requires_root
def test_status_names_hooks_by_index_and_counts_what_was_carried(lab: Lab):
    lab.start_daemon(interfaces=("eth0=xdp", "eth1=xdp", "eth2=tc"))
    idle = _status(lab)
    assert idle["hooks"] == [
        {"name": dev, "ifindex": lab.ifindex(lab.router, dev), "mode": mode, "flows": 0}
        for dev, mode in (("eth0", "xdp"), ("eth1", "xdp"), ("eth2", "tc"))]
    assert idle["offloaded"] == {"packets": 0, "bytes": 0}
    beat = idle["heartbeat"]
    assert 0 <= beat["age_ms"] < beat["timeout_ms"] == 1000
    assert idle["early_drop"] is False     # no fw4 model in the lab

    proc = lab.traffic_bg(lab.client, "udp", SERVER4, count=300, interval=0.005, sport=43000)
    lab.wait_for(lambda: _status(lab)["offloaded"]["packets"] >= 200,
                 what="fast-path packets counted", timeout=30)
    busy = _status(lab)
    by_name = {h["name"]: h["flows"] for h in busy["hooks"]}
    assert by_name["eth0"] >= 1 and by_name["eth1"] >= 1 and by_name["eth2"] == 0
    assert busy["offloaded"]["bytes"] >= 200 * 1000
    out, _ = proc.communicate(timeout=120)
    assert json.loads(out)["received"] == 300
    # the flow's entries leave the table (flush); everything they carried stays in the total,
    # including packets since the last sweep: it is every packet the fast path forwarded
    before = _status(lab)["offloaded"]
    lab.ctl("flush")
    after = _status(lab)
    assert after["flows"]["forward"] == 0
    assert after["offloaded"]["packets"] == after["counters"]["forward"] >= before["packets"]
    assert after["offloaded"]["bytes"] >= before["bytes"]


@requires_root
def test_status_counts_packets_that_passed_while_the_daemon_stalled(lab: Lab):
    """A stalled daemon (SIGSTOP) stops beating: the fast path fails open and counts it; once
    the daemon runs again, status shows a fresh heartbeat and how many packets failed open."""
    daemon = lab.start_daemon()
    assert "heartbeat" not in _status(lab)["pass_reasons"]
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        lab.wait_for(lambda: lab.traffic(lab.client, "udp", SERVER4, count=5, interval=0.05,
                                         sport=43100) and _pass_heartbeat(lab) > 0,
                     what="packets passed for a stale heartbeat", timeout=30, interval=0.2)
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    seen = _pass_heartbeat(lab)
    status = _status(lab)
    assert status["pass_reasons"]["heartbeat"] >= seen > 0
    assert 0 <= status["heartbeat"]["age_ms"] < status["heartbeat"]["timeout_ms"]


def _pass_heartbeat(lab: Lab) -> int:
    """The fast-path counter, read from the pinned map (the daemon cannot answer now)."""
    with open_pinned_map(os.path.join(lab.pin_dir, "ebpfw_stats")) as stats:
        return maps.sum_stats(stats.lookup_percpu(bytes(4)))[maps.Counter.PASS_HEARTBEAT]


def test_latency_samples_keep_the_last_ones():
    s = Samples(size=4)
    for v in range(1, 11):
        s.append(v / 2)
    assert sorted(s) == [3.5, 4.0, 4.5, 5.0] and len(s) == 4
