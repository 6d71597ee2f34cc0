# SPDX-License-Identifier: GPL-2.0-only
"""The proof (ebpfw_egress) on the real kernel through BPF_PROG_TEST_RUN: a frame the kernel
forwards, of a flow waiting for proof, is written into the flow and reported; a flow of an old
generation leaving as before is proved again in place; nothing else is touched, and the frame
never is. Then the ingress hooks: PROVING and old-generation entries pass."""
from __future__ import annotations


import pytest

from conftest import requires_root
from fastpath import (CLIENT_MAC, HOOKS, L2_IN, L2_OUT, LO_IFINDEX, TC_ACT_UNSPEC, FastPath, Hook, flow_tuple,
                      forwarded_frame, frame, nat_tuple, skb_ctx)
from fw_ebpf import maps
from fw_ebpf.maps import Counter, State

pytestmark = requires_root
LAN_IFINDEX = 7        # where the flow came in (any index: only "not the router itself" counts)


def key_for(t: maps.Tuple) -> bytes:
    return maps.encode_key(LAN_IFINDEX, t, **L2_IN["vlan"].key_fields())


def waiting(fp: FastPath, t: maps.Tuple, post: maps.Tuple, value: bytes) -> bytes:
    """A flow entry and its egress index entry, as the daemon writes them."""
    key = key_for(t)
    fp.flows.update(key, value)
    fp.egress[t.l3proto].update(maps.tuple_id(post), key.ljust(maps.KEY6_LEN, b"\0"))
    return key


def egress(fp: FastPath, data: bytes, ingress_ifindex: int = LAN_IFINDEX) -> None:
    res = fp.obj.program("ebpfw_egress").test_run(data, ctx=skb_ctx(ingress_ifindex))
    assert res.retval == TC_ACT_UNSPEC
    assert res.data == data            # the proof only looks


def flow(fp: FastPath, key: bytes) -> maps.Flow:
    raw = fp.flows.lookup(key)
    assert raw is not None
    return maps.decode_flow(raw)


CASES = [(fam, l4, l2) for fam in (4, 6) for l4 in ("tcp", "udp") for l2 in L2_OUT]


@pytest.mark.parametrize("family,l4,l2", CASES)
def test_a_forwarded_frame_proves_its_flow_with_the_l2_header_it_left_with(fp, family, l4, l2):
    t = flow_tuple(family, l4)
    post = nat_tuple(t, "snat")
    key = waiting(fp, t, post, maps.encode_proving(t, post))
    fp.set_runtime(gen=3, proving=True)
    egress(fp, forwarded_frame(L2_OUT[l2], post))
    f = flow(fp, key)
    assert f.state == State.PROVING and f.flags & maps.F_REPORTED
    assert f.proof_gen == 3 and maps.decode_proof(fp.flows.lookup(key)).gen == 3
    assert bytes(f.l2) == bytes(maps.encode_l2(L2_OUT[l2].out()))
    assert f.oif == LO_IFINDEX
    assert fp.drain_events() == [(maps.EventType.PROVED, maps.decode_key(key))]
    assert fp.stats()[Counter.PROVED] == 1
    egress(fp, forwarded_frame(L2_OUT[l2], post))      # reported once, until the daemon answers
    assert fp.drain_events() == [] and fp.stats()[Counter.PROVED] == 1


def test_nothing_proving_nothing_looked_at(fp):
    t = flow_tuple(4, "udp")
    post = nat_tuple(t, "snat")
    key = waiting(fp, t, post, maps.encode_proving(t, post))
    before = fp.flows.lookup(key)
    egress(fp, forwarded_frame(L2_OUT["untagged"], post))
    assert fp.flows.lookup(key) == before and fp.drain_events() == []


@pytest.mark.parametrize("why", ["sent by the router", "closing", "another tuple", "no flow",
                                 "not the router's source MAC"])
def test_frames_that_prove_nothing(fp, why):
    t = flow_tuple(4, "tcp")
    post = nat_tuple(t, "snat")
    key = waiting(fp, t, post, maps.encode_proving(t, post))
    fp.set_runtime(gen=0, proving=True)
    before = fp.flows.lookup(key)
    ingress = 0 if why == "sent by the router" else LAN_IFINDEX
    data = forwarded_frame(L2_OUT["untagged"], post, tcp_flags="FA" if why == "closing" else "A")
    if why == "another tuple":
        data = forwarded_frame(L2_OUT["untagged"], nat_tuple(t, "dnat"))
    if why == "no flow":
        fp.flows.delete(key)
    if why == "not the router's source MAC":    # bridged, or redirected before routing
        data = data[:6] + bytes.fromhex(CLIENT_MAC.replace(":", "")) + data[12:]
    egress(fp, data, ingress)
    assert fp.drain_events() == [] and fp.stats()[Counter.PROVED] == 0
    assert fp.stats()[Counter.NOT_OURS] == (why == "not the router's source MAC")
    if why != "no flow":
        assert fp.flows.lookup(key) == before


@pytest.mark.parametrize("family", [4, 6])
def test_an_old_generation_leaving_as_before_is_proved_again_in_place(fp, family):
    t = flow_tuple(family, "tcp")
    post = nat_tuple(t, "snat")
    key = waiting(fp, t, post, maps.encode_forward(t, post, LO_IFINDEX, 1500,
                                                   L2_OUT["qinq"].out(), gen=4))
    fp.set_runtime(gen=5, proving=True)
    egress(fp, forwarded_frame(L2_OUT["qinq"], post))
    f = flow(fp, key)
    assert (f.state, f.gen, f.flags & maps.F_REPORTED) == (State.FORWARD, 5, 0)
    assert fp.drain_events() == [] and fp.stats()[Counter.REPROVED] == 1


@pytest.mark.parametrize("change", ["next hop", "vlan", "pppoe session"])
def test_an_old_generation_leaving_otherwise_is_reported_and_stays_old(fp, change):
    t = flow_tuple(4, "udp")
    post = nat_tuple(t, "snat")
    old = L2_OUT["pppoe"] if change == "pppoe session" else L2_OUT["vlan"]
    key = waiting(fp, t, post, maps.encode_forward(t, post, LO_IFINDEX, 1500, old.out(), gen=1))
    fp.set_runtime(gen=2, proving=True)
    now = {"next hop": L2_OUT["vlan"], "vlan": L2_OUT["qinq"],
           "pppoe session": L2_OUT["pppoe"].__class__("pppoe", pppoe_sid=0x5555)}[change]
    data = forwarded_frame(now, post)
    if change == "next hop":
        data = b"\x02\x00\x5e\x00\x00\x09" + data[6:]
    egress(fp, data)
    f = flow(fp, key)
    assert f.state == State.FORWARD and f.gen == 1 and f.flags & maps.F_REPORTED
    assert f.proof_gen == 2
    assert bytes(f.l2)[:6] == data[:6]
    assert f.l2.pppoe_sid == (0x5555 if change == "pppoe session" else 0)
    assert fp.drain_events() == [(maps.EventType.PROVED, maps.decode_key(key))]
    # until the daemon answers (the new egress's MTU and hook), the same frame again holds
    # nothing in place: the flow stays old and passes
    egress(fp, data)
    f = flow(fp, key)
    assert (f.gen, f.flags & maps.F_REPORTED) == (1, maps.F_REPORTED)
    assert fp.drain_events() == [] and fp.stats()[Counter.REPROVED] == 0


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
def test_ingress_passes_proving_and_old_generations(fp, hook: Hook):
    t = flow_tuple(4, "tcp")
    post = nat_tuple(t, "snat")
    key = maps.encode_key(LO_IFINDEX, t)
    data = frame(L2_IN["untagged"], t)
    cases = [(maps.encode_proving(t, post), Counter.PASS_PROVING),
             (maps.encode_forward(t, post, LO_IFINDEX, 1500, L2_OUT["untagged"].out(), gen=1),
              Counter.PASS_STALE),
             (maps.encode_verdict(State.DROP, expires_ns=1 << 62, gen=1), Counter.PASS_STALE)]
    fp.set_runtime(gen=2, proving=True)
    for value, reason in cases:
        fp.flows.update(key, value)
        before = fp.stats()
        res = fp.run(hook, data)
        assert res.retval == hook.passed and res.data == data
        assert fp.stats()[reason] == before[reason] + 1, reason.name
    # in the current generation the same entry forwards
    fp.flows.update(key, maps.encode_forward(t, post, LO_IFINDEX, 1500, L2_OUT["untagged"].out(),
                                             gen=2))
    assert fp.run(hook, data).retval == hook.forwarded
