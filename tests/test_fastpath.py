# SPDX-License-Identifier: GPL-2.0-only
"""The fast path on the real kernel through BPF_PROG_TEST_RUN, XDP and TC alike."""
from __future__ import annotations

import ctypes
import itertools
import random
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, IPOption_Router_Alert
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Ether

from fw_ebpf import maps
from fastpath import (HOOKS, L2_IN, L2_OUT, LO_IFINDEX, TC, XDP, FastPath, Hook,
                      checksums_verify, flow_tuple, forwarded_frame, frame, l3l4, load_fastpath,
                      nat_tuple)
from conftest import requires_root

pytestmark = requires_root
FAR_FUTURE_NS = 1 << 62


def key_for(l2_name: str, t: maps.Tuple) -> bytes:
    return maps.encode_key(LO_IFINDEX, t, **L2_IN[l2_name].key_fields())


def install_forward(fp: FastPath, l2_in: str, l2_out: str, t: maps.Tuple, post: maps.Tuple,
                    mtu: int = 1500, tc_only: bool = False) -> bytes:
    key = key_for(l2_in, t)
    fp.flows.update(key, maps.encode_forward(t, post, LO_IFINDEX, mtu, L2_OUT[l2_out].out(),
                                             tc_only=tc_only))
    return key


def assert_passed_unchanged(fp: FastPath, hook: Hook, data: bytes, reason: maps.Counter):
    before = fp.stats()
    res = fp.run(hook, data)
    after = fp.stats()
    assert res.retval == hook.passed
    assert res.data == data
    assert after[reason] == before[reason] + 1, f"expected pass reason {reason.name}"
    assert after[maps.Counter.PASS] == before[maps.Counter.PASS] + 1


FAMILIES = (4, 6)
L4S = ("tcp", "udp")


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
@pytest.mark.parametrize("family,l4", list(itertools.product(FAMILIES, L4S)))
@pytest.mark.parametrize("l2", L2_IN)
def test_miss_passes_and_notifies_once(fp: FastPath, hook: Hook, family: int, l4: str, l2: str):
    t = flow_tuple(family, l4)
    data = frame(L2_IN[l2], t)
    assert_passed_unchanged(fp, hook, data, maps.Counter.PASS_MISS)
    raw = fp.drain_raw_events()
    events = [maps.decode_event(e) for e in raw]
    assert len(events) == 1
    ev_type, info = events[0]
    assert ev_type == maps.EventType.NEW
    assert info.tuple == t and info.ifindex == LO_IFINDEX
    assert (info.vlan, info.pppoe_sid) == (L2_IN[l2].key_fields()["vlan"], L2_IN[l2].pppoe_sid or 0)
    entry = maps.decode_flow(fp.flows.lookup(key_for(l2, t)))
    assert entry.state == maps.State.PENDING
    # the daemon measures admission from it without looking the entry up
    assert maps.split_event(raw[0])[2] == entry.last_seen_ns > 0

    assert_passed_unchanged(fp, hook, data, maps.Counter.PASS_PENDING)
    assert fp.drain_events() == []


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
@pytest.mark.parametrize("family,l4", list(itertools.product(FAMILIES, L4S)))
@pytest.mark.parametrize("l2_in,l2_out", list(itertools.product(L2_IN, L2_OUT)))
def test_forward_rewrites_l2_and_nat(fp: FastPath, hook: Hook, family: int, l4: str,
                                     l2_in: str, l2_out: str):
    t = flow_tuple(family, l4)
    post = nat_tuple(t, "both")
    key = install_forward(fp, l2_in, l2_out, t, post)
    data = frame(L2_IN[l2_in], t)

    if hook is TC and l2_in == "pppoe" and l2_out != "pppoe":
        # documented TC limit: an skb whose protocol is PPPoE cannot shrink below L3
        assert_passed_unchanged(fp, hook, data, maps.Counter.PASS_L2_REWRITE)
        return
    res = fp.run(hook, data)
    assert res.retval == hook.forwarded
    assert res.data == forwarded_frame(L2_OUT[l2_out], post)
    assert checksums_verify(res.data)
    entry = maps.decode_flow(fp.flows.lookup(key))
    assert (entry.packets, entry.bytes) == (1, len(l3l4(t)))
    assert entry.last_seen_ns > 0


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
@pytest.mark.parametrize("family,l4", list(itertools.product(FAMILIES, L4S)))
@pytest.mark.parametrize("nat", ["none", "snat", "dnat", "both"])
def test_forward_nat_variants(fp: FastPath, hook: Hook, family: int, l4: str, nat: str):
    t = flow_tuple(family, l4)
    post = nat_tuple(t, nat)
    install_forward(fp, "untagged", "untagged", t, post)
    before = fp.stats()[maps.Counter.FORWARD]
    res = fp.run(hook, frame(L2_IN["untagged"], t))
    assert res.retval == hook.forwarded
    assert res.data == forwarded_frame(L2_OUT["untagged"], post)
    assert checksums_verify(res.data)
    assert fp.stats()[maps.Counter.FORWARD] == before + 1


def test_csum_diff_is_the_folded_word_sum_of_not_old_plus_new():
    """maps.csum_diff (whole numbers modulo 0xFFFF) against RFC 1624's word by word sum,
    its edges included: every old word 0xFFFF, every new word 0, sums that are multiples of
    0xFFFF, and random ports and addresses of both families."""
    def by_words(old: bytes, new: bytes) -> int:
        total = sum((~int.from_bytes(old[i:i + 2], "big") & 0xFFFF) +
                    int.from_bytes(new[i:i + 2], "big") for i in range(0, len(old), 2))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return total

    rng = random.Random(1624)
    cases = [(b"", b""), (b"\xff\xff", b"\0\0"), (b"\xff" * 16, bytes(16)), (bytes(4), bytes(4)),
             (b"\x12\x34", b"\x12\x34"), (bytes(2), b"\xff\xff"), (b"\xff\xff", b"\xff\xff"),
             (b"\0\x01\xff\xfe", bytes(4))]
    for n in (4, 8, 32) * 3000:
        cases.append((rng.randbytes(n), rng.randbytes(n)))
    for old, new in cases:
        assert maps.csum_diff(old, new) == by_words(old, new), (old.hex(), new.hex())
    with pytest.raises(ValueError):
        maps.csum_diff(b"\0\0", b"\0")


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
@pytest.mark.parametrize("nat", ["snat", "dnat", "both"])
def test_ipv4_udp_without_checksum_stays_without(fp: FastPath, hook: Hook, nat: str):
    t = flow_tuple(4, "udp")
    post = nat_tuple(t, nat)
    install_forward(fp, "vlan", "untagged", t, post)
    res = fp.run(hook, frame(L2_IN["vlan"], t, udp_csum=0))
    assert res.retval == hook.forwarded
    assert res.data == forwarded_frame(L2_OUT["untagged"], post, udp_csum=0)
    assert Ether(res.data)["UDP"].chksum == 0


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
def test_drop_entry_drops_until_it_expires(fp: FastPath, hook: Hook):
    t = flow_tuple(4, "tcp")
    key = key_for("untagged", t)
    data = frame(L2_IN["untagged"], t, tcp_flags="S")
    fp.flows.update(key, maps.encode_verdict(maps.State.DROP, expires_ns=FAR_FUTURE_NS))
    before = fp.stats()[maps.Counter.DROP]
    res = fp.run(hook, data)
    assert res.retval == hook.dropped
    assert fp.stats()[maps.Counter.DROP] == before + 1
    assert maps.decode_flow(fp.flows.lookup(key)).packets == 1

    # a second ago: the fast path's coarse clock may lag the fine one by a tick
    fp.flows.update(key, maps.encode_verdict(maps.State.DROP,
                                             expires_ns=time.monotonic_ns() - 10**9))
    assert_passed_unchanged(fp, hook, data, maps.Counter.PASS_DROP_EXPIRED)


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
def test_pass_verdict_passes(fp: FastPath, hook: Hook):
    t = flow_tuple(6, "udp")
    fp.flows.update(key_for("untagged", t), maps.encode_verdict(maps.State.PASS))
    assert_passed_unchanged(fp, hook, frame(L2_IN["untagged"], t), maps.Counter.PASS_VERDICT)


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
@pytest.mark.parametrize("flags", ["FA", "R", "RA"])
@pytest.mark.parametrize("family", FAMILIES)
def test_fin_rst_mark_closing_and_pass(fp: FastPath, hook: Hook, flags: str, family: int):
    t = flow_tuple(family, "tcp")
    key = install_forward(fp, "untagged", "untagged", t, nat_tuple(t, "snat"))
    assert_passed_unchanged(fp, hook, frame(L2_IN["untagged"], t, tcp_flags=flags),
                            maps.Counter.PASS_TCP_CLOSE)
    assert maps.decode_flow(fp.flows.lookup(key)).flags & maps.F_CLOSING
    assert [e for e, _ in fp.drain_events()] == [maps.EventType.CLOSING]
    # later packets of a closing flow stay with the stack, without more events
    assert_passed_unchanged(fp, hook, frame(L2_IN["untagged"], t), maps.Counter.PASS_CLOSING)
    assert fp.drain_events() == []


def _pass_cases() -> dict[str, tuple[maps.Tuple, bytes, maps.Counter]]:
    t4, t6 = flow_tuple(4, "tcp"), flow_tuple(6, "udp")
    plain = L2_IN["untagged"].layers("02:00:00:00:00:02", "02:00:00:00:00:01", 4)
    plain6 = L2_IN["untagged"].layers("02:00:00:00:00:02", "02:00:00:00:00:01", 6)
    with_options = plain / IP(src=str(t4.saddr), dst=str(t4.daddr),
                              options=[IPOption_Router_Alert()]) / l3l4(t4)[TCP]
    fragment = plain / l3l4(t4)
    fragment[IP].flags = "MF"
    later_fragment = plain / l3l4(t4)
    later_fragment[IP].frag = 8
    hop_by_hop = plain6 / IPv6(src=str(t6.saddr), dst=str(t6.daddr)) / IPv6ExtHdrHopByHop() / \
        l3l4(t6)["UDP"]
    return {
        "syn": (t4, frame(L2_IN["untagged"], t4, tcp_flags="S"), maps.Counter.PASS_TCP_SYN),
        "ttl1": (t4, frame(L2_IN["untagged"], t4, ttl=1), maps.Counter.PASS_TTL),
        "hoplimit1": (t6, frame(L2_IN["untagged"], t6, ttl=1), maps.Counter.PASS_TTL),
        "ip_options": (t4, bytes(with_options), maps.Counter.PASS_IP_OPTIONS),
        "fragment_mf": (t4, bytes(fragment), maps.Counter.PASS_FRAGMENT),
        "fragment_offset": (t4, bytes(later_fragment), maps.Counter.PASS_FRAGMENT),
        "ipv6_ext_header": (t6, bytes(hop_by_hop), maps.Counter.PASS_IPV6_EXT),
        "ipv6_udp_zero_csum": (t6, frame(L2_IN["untagged"], t6, udp_csum=0),
                               maps.Counter.PASS_UDP_ZERO_CSUM),
    }


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
@pytest.mark.parametrize("case", list(_pass_cases()))
def test_unusual_packets_of_forwarded_flow_pass_unchanged(fp: FastPath, hook: Hook, case: str):
    t, data, reason = _pass_cases()[case]
    install_forward(fp, "untagged", "untagged", t, nat_tuple(t, "both"))
    assert_passed_unchanged(fp, hook, data, reason)


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
@pytest.mark.parametrize("l2_out", L2_OUT)
def test_larger_than_egress_mtu_passes(fp: FastPath, hook: Hook, l2_out: str):
    t = flow_tuple(4, "udp")
    size = len(l3l4(t))
    install_forward(fp, "untagged", l2_out, t, nat_tuple(t, "snat"), mtu=size - 1)
    assert_passed_unchanged(fp, hook, frame(L2_IN["untagged"], t), maps.Counter.PASS_MTU)
    install_forward(fp, "untagged", l2_out, t, nat_tuple(t, "snat"), mtu=size)
    assert fp.run(hook, frame(L2_IN["untagged"], t)).retval == hook.forwarded


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
@pytest.mark.parametrize("family,l4", list(itertools.product(FAMILIES, L4S)))
@pytest.mark.parametrize("l2", L2_IN)
def test_truncated_frames_pass_unchanged(fp: FastPath, hook: Hook, family: int, l4: str, l2: str):
    t = flow_tuple(family, l4)
    install_forward(fp, l2, "untagged", t, nat_tuple(t, "both"))
    full = frame(L2_IN[l2], t)
    shortest = 14   # test runs refuse frames without an Ethernet header ...
    if hook is TC and l2 == "untagged":
        shortest += 20 if family == 4 else 40   # ... and skbs of type IP without an IP header
    for cut in range(shortest, len(full)):
        data = full[:cut]
        res = fp.run(hook, data)
        assert (res.retval, res.data) == (hook.passed, data), f"cut at {cut} bytes"
    assert maps.decode_flow(fp.flows.lookup(key_for(l2, t))).packets == 0


def test_xdp_leaves_tc_only_flows_to_tc(fp: FastPath):
    t = flow_tuple(4, "tcp")
    install_forward(fp, "untagged", "untagged", t, nat_tuple(t, "snat"), tc_only=True)
    assert_passed_unchanged(fp, XDP, frame(L2_IN["untagged"], t), maps.Counter.PASS_OTHER_HOOK)
    assert fp.run(TC, frame(L2_IN["untagged"], t)).retval == TC.forwarded


def test_xdp_passes_when_egress_not_in_devmap(fp: FastPath):
    t = flow_tuple(4, "udp")
    key = key_for("untagged", t)
    value = maps.encode_forward(t, nat_tuple(t, "snat"), 0x7FFF, 1500, L2_OUT["untagged"].out())
    fp.flows.update(key, value)
    assert_passed_unchanged(fp, XDP, frame(L2_IN["untagged"], t), maps.Counter.PASS_NO_TX)


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
def test_multicast_and_non_ip_pass(fp: FastPath, hook: Hook):
    t = flow_tuple(4, "udp")
    mcast = bytes(Ether(src="02:00:00:00:00:02", dst="01:00:5e:00:00:fb") / l3l4(t))
    assert_passed_unchanged(fp, hook, mcast, maps.Counter.PASS_MULTICAST)
    arp = bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01", type=0x0806) / (b"\0" * 28))
    assert_passed_unchanged(fp, hook, arp, maps.Counter.PASS_NOT_IP)
    assert fp.drain_events() == []


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
def test_stale_heartbeat_fails_open(bpf_object: Path, hook: Hook):
    fp = load_fastpath(bpf_object, heartbeat_timeout_s=0.05)
    try:
        t = flow_tuple(4, "tcp")
        install_forward(fp, "untagged", "untagged", t, nat_tuple(t, "snat"))
        fp.heartbeat()
        assert fp.run(hook, frame(L2_IN["untagged"], t)).retval == hook.forwarded
        time.sleep(0.2)
        assert_passed_unchanged(fp, hook, frame(L2_IN["untagged"], t), maps.Counter.PASS_HEARTBEAT)
        fp.heartbeat(0)   # never written
        assert_passed_unchanged(fp, hook, frame(L2_IN["untagged"], t), maps.Counter.PASS_HEARTBEAT)
        assert fp.drain_events() == []
    finally:
        fp.ring.close()
        fp.obj.close()


def _new_tuples(base: bytes, count: int) -> list[bytes]:
    """count frames of distinct new flows: base (untagged IPv4 UDP) with other source ports;
    nothing but the key matters to a miss."""
    sport = 14 + 20   # Ethernet + IPv4 header, then the UDP source port
    return [base[:sport] + (20000 + i).to_bytes(2, "big") + base[sport + 2:] for i in range(count)]


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
def test_flood_of_new_tuples_evicts_pending_entries_never_offloaded_flows(bpf_object: Path,
                                                                         hook: Hook):
    pending_max = 1024
    fp = load_fastpath(bpf_object, heartbeat_timeout_s=600, pending_max=pending_max)
    try:
        fp.heartbeat()
        offloaded = []
        for family, l4 in itertools.product(FAMILIES, L4S):
            for port in range(50):
                t = flow_tuple(family, l4)
                t = maps.Tuple(t.l4proto, t.saddr, t.daddr, 30000 + port, t.dport)
                install_forward(fp, "untagged", "untagged", t, nat_tuple(t, "snat"))
                offloaded.append(t)
        flood = _new_tuples(frame(L2_IN["untagged"], flow_tuple(4, "udp")),
                            4 * pending_max)
        for data in flood:
            assert fp.run(hook, data).retval == hook.passed
        pending = len(list(fp.obj.map(maps.TABLES[maps.L3_IPV4][1]).keys()))
        assert 0 < pending <= pending_max
        assert fp.stats()[maps.Counter.PASS_MISS] == len(flood)
        for t in offloaded:
            res = fp.run(hook, frame(L2_IN["untagged"], t))
            assert res.retval == hook.forwarded, t
            assert maps.decode_flow(fp.flows.lookup(key_for("untagged", t))).packets == 1
    finally:
        fp.ring.close()
        fp.obj.close()


def test_new_events_over_the_rate_are_shed_counted_and_still_pending(bpf_object: Path):
    burst, flows = 3, 10
    fp = load_fastpath(bpf_object, heartbeat_timeout_s=600, event_rate=1, event_burst=burst)
    try:
        fp.heartbeat()
        start = time.monotonic()
        frames = _new_tuples(frame(L2_IN["untagged"], flow_tuple(4, "udp")),
                             flows)
        for data in frames:
            assert fp.run(XDP, data).retval == XDP.passed
        elapsed = time.monotonic() - start
        sent = len(fp.drain_events())
        # one more event per second the loop took (a loaded machine may take that long)
        assert burst <= sent <= burst + int(elapsed) + 1
        assert fp.stats()[maps.Counter.EVENT_SHED] == flows - sent
        pending = [maps.decode_key(k) for k in fp.flows.keys()]
        assert len(pending) == flows   # the sweep finds the shed ones here
        assert all(maps.decode_flow(fp.flows.lookup(k)).state == maps.State.PENDING
                   for k in fp.flows.keys())
    finally:
        fp.ring.close()
        fp.obj.close()


def test_new_events_leave_half_the_ring_to_proofs_and_closes(bpf_object: Path):
    """A burst the daemon does not read yet: NEW events stop at half the ring (shed, counted:
    the pending table has them), none is lost, and the other half stays free."""
    fp = load_fastpath(bpf_object, heartbeat_timeout_s=600, event_rate=10**9,
                       event_burst=10**9)
    try:
        fp.heartbeat()
        record = 8 + (ctypes.sizeof(maps.Event) + 7) // 8 * 8    # ring header, padded event
        flows = maps.EVENTS_BYTES // record
        for data in _new_tuples(frame(L2_IN["untagged"], flow_tuple(4, "udp")), flows):
            assert fp.run(XDP, data).retval == XDP.passed
        stats = fp.stats()
        sent = len(fp.drain_events())
        assert stats[maps.Counter.EVENT_LOST] == 0
        assert maps.EVENTS_BYTES // 2 <= sent * record <= maps.EVENTS_BYTES // 2 + record
        assert stats[maps.Counter.EVENT_SHED] == flows - sent
    finally:
        fp.ring.close()
        fp.obj.close()


def test_flow_tables_keep_each_entry_in_one_table(fp: FastPath):
    t = flow_tuple(6, "tcp")
    key = key_for("untagged", t)
    decided, pending = (fp.obj.map(n) for n in maps.TABLES[maps.L3_IPV6])
    fp.flows.update(key, maps.encode_verdict(maps.State.PENDING))
    assert pending.lookup(key) is not None and decided.lookup(key) is None
    forward = maps.encode_forward(t, nat_tuple(t, "snat"), LO_IFINDEX, 1500,
                                  L2_OUT["untagged"].out())
    fp.flows.update(key, forward)
    assert decided.lookup(key) == forward and pending.lookup(key) is None
    # the fast path may write PENDING while the daemon decides: the decided entry wins
    pending.update(key, maps.encode_verdict(maps.State.PENDING))
    assert fp.flows.lookup_batch() == [(key, forward)]
    assert pending.lookup(key) is None
    assert fp.flows.delete(key) and list(fp.flows.keys()) == []


@pytest.mark.parametrize("family", FAMILIES)
def test_staged_entries_are_written_before_any_other_access(fp: FastPath, family: int):
    """FlowTables.stage() holds decided entries for one batch write; whatever touches the
    tables next sees them, and nothing staged outlives a delete. A DROP verdict takes the
    place of the flow's PENDING entry, in the pending table."""
    key = key_for("untagged", flow_tuple(family, "udp"))
    decided, pending = (fp.obj.map(name) for name in maps.TABLES[maps.key_family(key)])
    fp.flows.update(key, maps.encode_verdict(maps.State.PENDING))
    verdict = maps.encode_verdict(maps.State.PASS)
    fp.flows.stage(key, verdict)
    assert decided.lookup(key) is None and pending.lookup(key) is not None    # not yet
    assert fp.flows.lookup(key) == verdict
    assert pending.lookup(key) is None          # the pending entry went with it
    fp.flows.stage(key, maps.encode_verdict(maps.State.PASS), pending_too=False)
    assert fp.flows.delete(key)
    fp.flows.flush()
    assert decided.lookup(key) is None and pending.lookup(key) is None

    pending_value = maps.encode_verdict(maps.State.PENDING)
    fp.flows.update(key, pending_value)
    drop = maps.encode_verdict(maps.State.DROP, expires_ns=1)
    fp.flows.stage(key, drop)
    assert pending.lookup(key) == pending_value                                # not yet
    assert fp.flows.lookup(key) == drop
    assert pending.lookup(key) == drop and decided.lookup(key) is None
