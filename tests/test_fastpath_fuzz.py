# SPDX-License-Identifier: GPL-2.0-only
"""Fuzzing the fast path over BPF_PROG_TEST_RUN, XDP and TC, against tests/fastpath_model.py.

Frames start valid (Ethernet, VLAN, QinQ, PPPoE; IPv4 with options or fragments, IPv6 with
extension headers; TCP, UDP), then get bad header fields (IHL, lengths, data offset), random
bytes and a cut; the flow table holds an entry for the unmutated frame's flow. Every frame is
also run cut at every offset. Each run must do exactly what the model says: pass the frame
unchanged, drop it, or forward it rewritten as its FORWARD entry says with the checksums still
as valid as they came; the counters, the flow entries and the events must agree too.

Deterministic: hypothesis derandomized, no example database. EBPFW_FUZZ_EXAMPLES sets the
budget per hook and flow kind (default 60: 480 frames, each also cut at every offset, in
about twenty seconds); EBPFW_FUZZ_SEED runs other, seeded examples (bench/run.py fuzz runs
a long budget that way).
"""
from __future__ import annotations

import errno
import ipaddress
import os

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert
from scapy.layers.inet6 import (IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.ppp import PPPoE
from scapy.packet import Packet, Raw

from conftest import native_object, requires_root
from fastpath import (CLIENT_MAC, HOOKS, L2, LO_IFINDEX, ROUTER_IN_MAC, TC, FastPath, Hook,
                      load_fastpath, nat_tuple)
from fastpath_model import Model, check_forwarded
from fw_ebpf import maps
from fw_ebpf.libbpf import BpfError

pytestmark = requires_root

EXAMPLES = int(os.environ.get("EBPFW_FUZZ_EXAMPLES", "60"))
SEED = os.environ.get("EBPFW_FUZZ_SEED")
FAR_FUTURE_NS = 1 << 62

ADDRS = {4: ("192.168.1.10", "198.51.100.20"), 6: ("fd12:3456:789a::10", "2001:db8::20")}


@pytest.fixture(scope="module")
def fuzzed() -> FastPath:
    # events unlimited: shedding has its own test; the model expects every NEW event
    fp = load_fastpath(native_object(), heartbeat_timeout_s=3600, event_rate=0)
    yield fp
    fp.ring.close()
    fp.obj.close()


# ---- frames -------------------------------------------------------------------------------------

l2_layers = st.one_of(
    st.just(L2("untagged")),
    st.builds(lambda v: L2("vlan", vlans=(v,)), st.integers(1, 4094)),
    st.builds(lambda o, i, tpid: L2("qinq", vlans=(o, i), tpid=tpid), st.integers(1, 4094),
              st.integers(1, 4094), st.sampled_from([0x88A8, 0x8100])),
    st.builds(lambda sid: L2("pppoe", pppoe_sid=sid), st.integers(1, 0xFFFE)),
    st.builds(lambda v, sid: L2("vlan+pppoe", vlans=(v,), pppoe_sid=sid), st.integers(1, 4094),
              st.integers(1, 0xFFFE)),
)
ports = st.integers(1, 65535)


@st.composite
def flows(draw: st.DrawFn, family: int, l4proto: int) -> maps.Tuple:
    src, dst = ADDRS[family]
    return maps.Tuple(l4proto, ipaddress.ip_address(src), ipaddress.ip_address(dst),
                      draw(ports), draw(ports))


def rarely(draw: st.DrawFn, n: int = 8) -> bool:
    """True about once in n: each kind of damage alone, so most frames stay forwardable
    (hypothesis prefers early choices, so the usual one comes first)."""
    return draw(st.sampled_from([False] * (n - 1) + [True]))


@st.composite
def packets(draw: st.DrawFn, t: maps.Tuple, l2: L2) -> bytes:
    """A frame of flow t, valid or with bad header fields, checksums computed by scapy."""
    v4 = t.saddr.version == 4
    ttl = draw(st.sampled_from([64, 0, 1, 2, 255])) if rarely(draw, 4) else 64
    if v4:
        ip: Packet = IP(src=str(t.saddr), dst=str(t.daddr), ttl=ttl, id=draw(ports))
        if rarely(draw):
            ip.options = draw(st.sampled_from([[IPOption_Router_Alert()], [IPOption_NOP()] * 4]))
        if rarely(draw):
            ip.flags, ip.frag = draw(st.sampled_from([("DF", 0), ("MF", 0), (0, 185)]))
        if rarely(draw, 12):
            ip.ihl = draw(st.integers(0, 15))
        if rarely(draw, 12):
            ip.len = draw(st.integers(0, 0xFFFF))
        ext = None
    else:
        ip = IPv6(src=str(t.saddr), dst=str(t.daddr), hlim=ttl, fl=draw(st.integers(0, 0xFFFFF)))
        if rarely(draw, 12):
            ip.plen = draw(st.sampled_from([0xFFFF, 0, 1, draw(st.integers(0, 0xFFFF))]))
        ext = draw(st.sampled_from([IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, IPv6ExtHdrDestOpt,
                                    IPv6ExtHdrFragment])) if rarely(draw) else None
    if t.l4proto == 6:
        flags = draw(st.sampled_from(["S", "SA", "F", "FA", "R", "RA", ""])) \
            if rarely(draw, 4) else draw(st.sampled_from(["A", "PA"]))
        l4: Packet = TCP(sport=t.sport, dport=t.dport, seq=draw(st.integers(0, 2**32 - 1)),
                         flags=flags)
        if rarely(draw, 12):
            l4.dataofs = draw(st.integers(0, 15))
    else:
        l4 = UDP(sport=t.sport, dport=t.dport)
        if rarely(draw, 5):
            l4.chksum = 0
        if rarely(draw, 12):
            l4.len = draw(st.integers(0, 0xFFFF))
    pkt = l2.layers(CLIENT_MAC, ROUTER_IN_MAC, t.saddr.version)
    if l2.pppoe_sid is not None and rarely(draw, 12):
        pkt[PPPoE].len = draw(st.integers(0, 0xFFFF))
    body = ip / (ext() / l4 if ext else l4) / Raw(draw(st.binary(max_size=64)))
    data = bytearray(bytes(pkt / body))
    if l2.pppoe_sid is None and rarely(draw, 5):
        data += bytes(draw(st.integers(1, 30)))   # Ethernet padding after the IP packet
    if rarely(draw, 3):                            # raw bytes, mostly in the headers
        for _ in range(draw(st.integers(1, 3))):
            data[draw(st.integers(0, min(len(data), 100) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


# ---- the entry for the flow ---------------------------------------------------------------------

egress = st.builds(lambda vlans, tpid, sid: maps.L2Out(
    dmac="02:00:00:00:01:02", smac="02:00:00:00:01:01", vlans=vlans, vlan_tpid=tpid,
    pppoe_sid=sid), st.sampled_from([(), (20,), (200, 20), (0xE014,)]),
    st.sampled_from([0x8100, 0x88A8]), st.one_of(st.none(), st.integers(1, 0xFFFE)))


@st.composite
def entries(draw: st.DrawFn, t: maps.Tuple) -> tuple[str, bytes | None]:
    # hypothesis prefers early choices: the richest first
    kind = draw(st.sampled_from(["forward", "drop", "none", "pending", "forward", "pass",
                                 "pending-decided", "proving"]))
    # an entry of an old generation must pass until it is proved again
    gen = 1 if rarely(draw, 8) else 0
    if kind == "forward":
        value = bytearray(maps.encode_forward(
            t, nat_tuple(t, draw(st.sampled_from(["both", "snat", "dnat", "none"]))),
            draw(st.sampled_from([LO_IFINDEX, LO_IFINDEX, LO_IFINDEX, 0x7FFF])),
            draw(st.sampled_from([1500, 1500, 60, 0, 9000])), draw(egress),
            tc_only=rarely(draw, 4), gen=gen))
        if rarely(draw, 6):
            value[maps.Flow.flags.offset] |= maps.F_CLOSING
        return kind, bytes(value)
    if kind == "proving":
        return kind, maps.encode_proving(t, nat_tuple(t, "snat"))
    if kind == "drop":
        return kind, maps.encode_verdict(maps.State.DROP, expires_ns=FAR_FUTURE_NS, gen=gen)
    if kind == "pass":
        return kind, maps.encode_verdict(maps.State.PASS)
    if kind in ("pending", "pending-decided"):
        return kind, maps.encode_verdict(maps.State.PENDING)
    return kind, None


# ---- running one frame ------------------------------------------------------------------------


def install(fp: FastPath, key: bytes, kind: str, value: bytes | None) -> Model:
    fp.reset()
    model = Model(tx={LO_IFINDEX})
    if value is None:
        return model
    if kind == "pending-decided":   # a daemon-written PENDING in the decided table
        fp.obj.map(maps.TABLES[maps.key_family(key)][0]).update(key, value)
        model.decided[key] = maps.decode_flow(value)
    elif kind == "pending":
        fp.flows.update(key, value)
        model.pending.add(key)
    else:
        fp.flows.update(key, value)
        model.decided[key] = maps.decode_flow(value)
    return model


def refused_by_test_run(hook: Hook, frame: bytes) -> bool:
    """BPF_PROG_TEST_RUN refuses skbs it cannot build (Ethernet type IP without an IP header);
    the program never sees them."""
    if hook is not TC or len(frame) < 14:
        return len(frame) < 14
    proto = int.from_bytes(frame[12:14], "big")
    return (proto == 0x0800 and len(frame) < 34) or (proto == 0x86DD and len(frame) < 54)


def run_one(fp: FastPath, model: Model, hook: Hook, frame: bytes) -> None:
    before = fp.stats()
    try:
        res = fp.run(hook, frame)
    except BpfError as e:
        assert e.errno == errno.EINVAL and refused_by_test_run(hook, frame), \
            f"test run failed: {e} ({frame.hex()})"
        return
    assert not refused_by_test_run(hook, frame), f"test run took {frame.hex()}"
    want = model.run(frame, LO_IFINDEX, xdp=hook is not TC)
    after = fp.stats()
    delta = {c: after[c] - before[c] for c in after if after[c] != before[c]}
    where = f"{hook.name}: {frame.hex()}"
    assert delta == want.counters, f"{where}: counted {delta}, expected {want.counters}"
    if want.verdict == "pass":
        assert (res.retval, res.data) == (hook.passed, frame), where
    elif want.verdict == "drop":
        assert res.retval == hook.dropped, where
    else:
        assert res.retval == hook.forwarded, where
        assert want.parsed is not None and want.flow is not None
        problems = check_forwarded(frame, res.data, want.parsed, want.flow)
        assert not problems, f"{where} -> {res.data.hex()}: {problems}"
    events = [(kind, bytes(info)) for kind, info in
              ((k, maps.encode_key(i.ifindex, i.tuple, i.vlan, i.pppoe_sid, i.dsa_port))
               for k, i in fp.drain_events())]
    assert events == want.events, where


def check_tables(fp: FastPath, model: Model) -> None:
    for key, flow in model.decided.items():
        got = maps.decode_flow(fp.flows.lookup(key))
        assert (got.packets, got.bytes, got.flags) == (flow.packets, flow.bytes, flow.flags)
    assert {k for k in fp.flows.keys() if k not in model.decided} == model.pending


def fuzz_settings(f):
    s = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=SEED is None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.function_scoped_fixture])
    return s(seed(int(SEED))(f)) if SEED is not None else s(f)


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
@pytest.mark.parametrize("family,l4proto", [(4, 6), (4, 17), (6, 6), (6, 17)],
                         ids=["ipv4-tcp", "ipv4-udp", "ipv6-tcp", "ipv6-udp"])
@fuzz_settings
@given(data=st.data())
def test_fuzzed_frames_do_only_what_the_flow_table_says(fuzzed: FastPath, hook: Hook,
                                                        family: int, l4proto: int,
                                                        data: st.DataObject):
    t = data.draw(flows(family, l4proto))
    l2 = data.draw(l2_layers)
    frame = data.draw(packets(t, l2))
    kind, value = data.draw(entries(t))
    key = maps.encode_key(LO_IFINDEX, t, **l2.key_fields())
    model = install(fuzzed, key, kind, value)
    run_one(fuzzed, model, hook, frame)
    check_tables(fuzzed, model)
    # the same frame cut at every offset (the model keeps the table as it goes)
    for cut in range(len(frame) - 1, 13, -1):
        run_one(fuzzed, model, hook, frame[:cut])
    check_tables(fuzzed, model)


def test_fuzz_budget_is_deterministic_by_default():
    """make test runs the same examples every time; a seed only when asked for."""
    assert SEED is not None or fuzz_settings(lambda: None)._hypothesis_internal_use_settings \
        .derandomize
