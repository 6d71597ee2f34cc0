# SPDX-License-Identifier: GPL-2.0-only
"""The fast path on a router in namespaces against crafted packets: whatever a packet claims,
the fast path forwards only what conntrack accepted from where it came."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from conftest import requires_root
from fw_ebpf import maps, upkeep
from fw_ebpf.libbpf import open_pinned_map
from e2e import finish, gated_flow, send, wait_offloaded
from lab import CLIENT4, ROOT, ROUTER_WAN4, SERVER4, Lab

pytestmark = [requires_root, pytest.mark.usefixtures("bpf_build")]

DEADLINE = 10.0   # generous: a loaded CI machine

def mac(lab: Lab, ns: str, dev: str) -> str:
    return json.loads(lab.sh(ns, f"ip -j link show dev {dev}"))[0]["address"]


def entry(lab: Lab, ifindex: int, src: str, dst: str) -> dict | None:
    """The daemon's record of the flow entering on ifindex as src -> dst, if any."""
    for f in lab.flows():
        if (f["ifindex"], f["src"], f["dst"]) == (ifindex, src, dst):
            return f
    return None


def decided(lab: Lab, ifindex: int, src: str, dst: str) -> dict:
    return lab.wait_for(lambda: (e := entry(lab, ifindex, src, dst)) and e["state"] != "pending"
                        and e, what=f"the daemon's verdict on {src} -> {dst} arriving on "
                        f"ifindex {ifindex}", timeout=DEADLINE)


@pytest.mark.parametrize("side", ["client tuple from the wan", "server reply from the lan"])
def test_spoofed_tuple_of_an_offloaded_flow_from_the_wrong_interface_is_not_forwarded(
        lab: Lab, side: str):
    """A tuple of an offloaded connection sent in from the other side: conntrack knows the
    tuple, but not from there, so the fast path must leave those packets to the stack."""
    lab.start_daemon()
    sport = 44000
    proc = lab.traffic_bg(lab.client, "udp", SERVER4, count=1500, interval=0.005, sport=sport)
    lab.wait_for(lambda: len([f for f in lab.flows("forward")
                              if f["src"].endswith(f":{sport}") or f["dst"].endswith(f":{sport}")])
                 >= 2, what="both directions offloaded", timeout=DEADLINE)
    if side == "client tuple from the wan":
        ns, dev, router_dev = lab.server, "eth1", "eth1"
        src, dst = (CLIENT4, sport), (SERVER4, 5201)
    else:
        natted = [f for f in lab.flows("forward") if f["src"] == f"{CLIENT4}:{sport}"][0]
        ns, dev, router_dev = lab.client, "eth0", "eth0"
        src, dst = (SERVER4, 5201), (ROUTER_WAN4, int(natted["nat_src"].rsplit(":", 1)[1]))
    ingress = lab.ifindex(lab.router, router_dev)
    router_mac = mac(lab, lab.router, "br-lan" if router_dev == "eth0" else router_dev)
    spoof = bytes(Ether(src=mac(lab, ns, dev), dst=router_mac)
                  / IP(src=src[0], dst=dst[0], ttl=64) / UDP(sport=src[1], dport=dst[1])
                  / Raw(b"spoofed!" * 8))
    key = (f"{src[0]}:{src[1]}", f"{dst[0]}:{dst[1]}")
    send(lab, ns, dev, [spoof] * 20)
    verdict = decided(lab, ingress, *key)
    send(lab, ns, dev, [spoof] * 200)
    later = entry(lab, ingress, *key)
    proc.kill()
    assert verdict["state"] == "pass", verdict
    assert later is not None and later["state"] == "pass" and later["packets"] == 0, later
    # the real flow is still offloaded, entering where it does
    real = [f for f in lab.flows("forward") if (f["src"], f["dst"]) == key]
    assert real and real[0]["ifindex"] != ingress, real


def nat_port(lab: Lab, dport: int) -> int:
    out = lab.sh(lab.router, f"conntrack -L -p tcp --dport {dport}", check=False)
    ports = re.findall(rf"dst={ROUTER_WAN4} sport={dport} dport=(\d+)", out)
    return int(ports[0]) if ports else 0


def test_packets_of_a_connection_conntrack_has_not_accepted_stay_pending(lab: Lab):
    """A handshake the server never answers, and crafted replies for it from the WAN: the
    entries stay PENDING and the fast path forwards nothing at all. (The client drops what
    comes back, or its stack would reset the connection on the crafted SYN-ACK.)"""
    port, sport = 7100, 44100
    for ns, match in ((lab.server, f"tcp dport {port}"), (lab.client, f"tcp sport {port}")):
        lab.sh(ns, "nft add table inet blackhole")
        lab.sh(ns, "nft add chain inet blackhole in { type filter hook input priority 0 ; }")
        lab.sh(ns, f"nft add rule inet blackhole in {match} drop")
    lab.start_daemon()
    proc = lab.traffic_bg(lab.client, "tcp", SERVER4, port=port, count=1, sport=sport)
    natted = lab.wait_for(lambda: nat_port(lab, port), what="the SYN's conntrack entry",
                          timeout=DEADLINE)
    wan = lab.ifindex(lab.router, "eth1")
    crafted = [bytes(Ether(src=mac(lab, lab.server, "eth1"), dst=mac(lab, lab.router, "eth1"))
                     / IP(src=SERVER4, dst=ROUTER_WAN4) / TCP(sport=port, dport=natted, flags=fl,
                                                              seq=1, ack=1) / Raw(b"x" * 32))
               for fl in ("SA", "A", "PA", "A")]
    send(lab, lab.server, "eth1", crafted * 20)
    src, dst = f"{SERVER4}:{port}", f"{ROUTER_WAN4}:{natted}"
    lab.wait_for(lambda: (e := entry(lab, wan, src, dst)) and e["reason"] != "new" and e,
                 what="the daemon looking at the crafted reply", timeout=DEADLINE)
    send(lab, lab.server, "eth1", crafted * 50)
    proc.kill()
    assert entry(lab, wan, src, dst)["state"] == "pending"
    assert all(f["state"] == "pending" for f in lab.flows() if f"{port}" in f["src"] + f["dst"])
    assert lab.stats()["forward"] == 0


def pinned_stats(lab: Lab) -> dict[maps.Counter, int]:
    with open_pinned_map(f"{lab.pin_dir}/ebpfw_stats") as m:
        return maps.sum_stats(m.lookup_percpu(bytes(4)))


def decided_from(lab: Lab, src: str, states: set[maps.State], table: int = 0) -> int:
    """Entries in these states in the kernel's IPv4 table (0: decided, 1: pending) for flows
    from src (ip:port)."""
    with open_pinned_map(f"{lab.pin_dir}/{maps.TABLES[maps.L3_IPV4][table]}") as m:
        n = 0
        for key, value in m.lookup_batch(4096):
            t = maps.decode_key(key).tuple
            if f"{t.saddr}:{t.sport}" == src and maps.decode_flow(value).state in states:
                n += 1
        return n


def test_new_flows_over_the_event_rate_are_adopted_by_the_sweep(lab: Lab):
    """More new flows at once than the fast path may announce (event_rate per CPU): the
    rest are shed, counted, and the daemon's sweep finds their PENDING entries all the same.
    Each is then admitted (PROVING) and offloaded by the proof of its next datagram. Watched
    in the kernel's maps: the daemon is busy admitting and answers late."""
    flows = 800   # more than two CPUs' bursts, whichever CPUs they arrive on
    # one datagram each first: neither conntrack nor the idle sweep may end them while the
    # daemon admits them one by one
    lab.sh(lab.router, "sysctl -qw net.netfilter.nf_conntrack_udp_timeout=600")
    lab.start_daemon("--idle-timeout", "600", "--event-rate", "256")
    script = ROOT / "bench" / "flows.py"
    # ports 3024 on: none a conntrack helper claims (H.323 takes 1719), which no one offloads
    send = f"{sys.executable} {script} --count {flows} --start 2000 --sport 45000"
    lab.sh(lab.client, send)
    lab.wait_for(lambda: pinned_stats(lab)[maps.Counter.PASS_MISS] >= flows,
                 what="every flow seen", timeout=DEADLINE)
    assert pinned_stats(lab)[maps.Counter.EVENT_SHED] > 0, "nothing shed: the test proves nothing"
    waiting = {maps.State.PROVING, maps.State.FORWARD}
    lab.wait_for(lambda: decided_from(lab, f"{CLIENT4}:45000", waiting) == flows,
                 what=f"all {flows} flows admitted", timeout=240, interval=0.5)
    lab.sh(lab.client, send)    # the next datagram of each: the kernel forwards it, the proof
    lab.wait_for(lambda: decided_from(lab, f"{CLIENT4}:45000", {maps.State.FORWARD}) == flows,
                 what=f"all {flows} flows offloaded", timeout=240, interval=0.5)


def test_a_burst_of_real_connections_is_taken_up_past_the_adoption_allowance(lab: Lab):
    """Shed NEW events leave their flows in the pending tables, and the daemon takes them up
    within an allowance (upkeep.ADOPT_PER_SWEEP) that bounds the lookups a flood of rejected
    tuples costs. A lookup that finds a connection gives its share back: a burst of real
    connections, more than one allowance, is admitted at once, not one allowance a sweep
    interval: here a minute, and the wait ends before the second slice could begin (a few
    seconds' work given ten times that on a loaded machine)."""
    flows = upkeep.ADOPT_PER_SWEEP + 2000
    lab.sh(lab.router, "sysctl -qw net.netfilter.nf_conntrack_udp_timeout=600")
    lab.start_daemon("--idle-timeout", "1200", "--event-rate", "16",
                     "--sweep-interval", "60", "--heartbeat-timeout", "120")
    script = ROOT / "bench" / "flows.py"
    # ports 10124-16219: none a conntrack helper claims (SIP's 5060 would be PASS)
    lab.sh(lab.client, f"{sys.executable} {script} --count {flows} --start 9100 --sport 45100")
    assert pinned_stats(lab)[maps.Counter.EVENT_SHED] > upkeep.ADOPT_PER_SWEEP, \
        "too few events shed: the allowance alone could take them up"
    lab.wait_for(lambda: decided_from(lab, f"{CLIENT4}:45100", {maps.State.PROVING}) == flows,
                 what=f"all {flows} flows admitted", timeout=45, interval=0.5)


def test_new_flows_are_admitted_between_the_steps_of_a_sweep_slice(lab: Lab):
    """A sweep slice reads its entries a step (one map batch) at a time, and the daemon
    admits what came meanwhile between two steps: a new flow waits for one step, not for a
    whole slice (about 50 ms at 64k flows, which is what admission's p99 was made of).
    Seen in the daemon's log: a flow made FORWARD between two steps of one slice."""
    lab.sh(lab.router, "sysctl -qw net.netfilter.nf_conntrack_udp_timeout=600")
    lab.start_daemon("--idle-timeout", "600")
    base, trickle = upkeep.SWEEP_STEP, 300
    script = str(ROOT / "bench" / "flows.py")
    senders = []
    try:
        for sport, count, rate in ((46000, base, 0), (46100, trickle, 100)):
            proc = lab.spawn(lab.client, sys.executable, script, "--sport", str(sport),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            senders.append(proc)
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(f"open {count} {rate}\n")
            proc.stdin.flush()
            assert proc.stdout.readline().startswith(f"opened {count} "), "flows.py failed"
            # both directions of each: a slice of more than one step
            lab.wait_for(lambda: decided_from(lab, f"{CLIENT4}:{sport}", {maps.State.FORWARD})
                         >= count * 99 // 100, what=f"{count} flows offloaded", timeout=240,
                         interval=0.5)
    finally:
        for proc in senders:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(30)
    between, open_slice = 0, False
    for line in lab.daemon_log.read_text().splitlines():
        if "sweep step:" in line:
            open_slice = line.endswith("slice goes on")
        elif open_slice and " forward " in line:
            between += 1
    assert between, "no flow was offloaded between two steps of a sweep slice"


def test_a_burst_of_new_flows_never_fails_the_fast_path_open(lab: Lab):
    """20,000 new flows at once, each talking on, while an offloaded flow keeps talking: the
    daemon works through them in slices and writes its heartbeat between them, so no packet of
    the offloaded flow (or any other) passes for a stale heartbeat, and the daemon stays up.
    The heartbeat timeout is the shipped 5 s: a daemon that does the whole burst in one go
    misses it by far. The burst outruns the PENDING table (an LRU smaller than the burst, so a
    flood cannot grow it): flows it pushed out ask again with their next datagram, as real
    flows do, and the test waits for nearly all of them to be offloaded (a port a conntrack
    helper claims stays with the stack)."""
    flows = 20_000
    lab.sh(lab.router, "sysctl -qw net.netfilter.nf_conntrack_udp_timeout=600")
    lab.start_daemon("--idle-timeout", "600", "--sweep-interval", "1", "--heartbeat-timeout", "5")
    talking = gated_flow(lab, "udp", 47000)     # warm-up messages until the "go" gate opens
    wait_offloaded(lab, 47000)
    before = pinned_stats(lab)
    burst = lab.spawn(lab.client, sys.executable, str(ROOT / "bench" / "flows.py"),
                      "--sport", "45500", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                      text=True)
    assert burst.stdin is not None and burst.stdout is not None
    burst.stdin.write(f"open {flows} 0\n")
    burst.stdin.flush()
    assert burst.stdout.readline().startswith(f"opened {flows} "), "bench/flows.py failed"
    lab.wait_for(lambda: decided_from(lab, f"{CLIENT4}:45500", {maps.State.FORWARD})
                 >= flows * 99 // 100, what=f"nearly all of the {flows} flows offloaded",
                 timeout=300, interval=2)
    after = pinned_stats(lab)
    burst.stdin.close()
    assert lab.daemon is not None and lab.daemon.poll() is None, "the daemon died"
    assert after[maps.Counter.FORWARD] > before[maps.Counter.FORWARD], \
        "the offloaded flow was not forwarded by the fast path meanwhile: the test proves nothing"
    assert after[maps.Counter.PASS_HEARTBEAT] == before[maps.Counter.PASS_HEARTBEAT], \
        "packets passed for a stale heartbeat while the daemon worked through the burst"
    lab.open_gate("go")
    finish(talking)     # the burst overruns veth rings now and then: loss there is the rig's
