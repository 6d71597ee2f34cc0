# SPDX-License-Identifier: GPL-2.0-only
"""The offload service end to end: a router in namespaces, the fw4 ruleset, the real kernel,
real conntrack, real TCP/UDP traffic, and the daemon in the router namespace."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import requires_root
from fw_ebpf import maps
from fw_ebpf.libbpf import open_pinned_map
from lab import (ALT_GATEWAY6, CLIENT4, GATEWAY4, ROUTER_WAN4, SERVER4, SERVER6, SHARED_CASES,
                 Lab)

pytestmark = [requires_root, pytest.mark.usefixtures("bpf_build")]

# Functional deadlines are generous here (a loaded CI machine); `make bench` reports real latency
OFFLOAD_WAIT = 5.0


def flows_of(lab: Lab, port: int, state: str | None = "forward") -> list[dict]:
    """Flow-table entries (both directions) of the connection with this port on either side."""
    def has(f: dict) -> bool:
        return any(f.get(k, "").endswith(f":{port}") for k in ("src", "dst", "nat_src", "nat_dst"))
    return [f for f in lab.flows(state) if has(f)]


def wait_offloaded(lab: Lab, port: int, count: int = 2) -> list[dict]:
    return lab.wait_for(lambda: len(f := flows_of(lab, port)) >= count and f,
                        what=f"both directions of port {port} offloaded", timeout=OFFLOAD_WAIT)


def wait_gone(lab: Lab, port: int, timeout: float = OFFLOAD_WAIT) -> None:
    lab.wait_for(lambda: not flows_of(lab, port, state=None),
                 what=f"flow entries of port {port} removed", timeout=timeout)


def conntrack_entry(lab: Lab, proto: str, port: int, family: int = 4) -> str:
    fam = "ipv4" if family == 4 else "ipv6"
    return lab.sh(lab.router, f"conntrack -L -f {fam} -p {proto} --sport {port} -o id",
                  check=False).strip()


def ct_packets(entry: str) -> int:
    return sum(int(n) for n in re.findall(r"packets=(\d+)", entry))


def watch(lab: Lab, port: int, proc: subprocess.Popen) -> tuple[dict, int, str]:
    """Runs a client to its end; returns its result, the most fast-path packets its flow
    entries showed (they go when a TCP connection closes) and its last conntrack entry."""
    best, ct = 0, ""
    while proc.poll() is None:
        best = max(best, sum(f["packets"] for f in flows_of(lab, port, state=None)))
        ct = conntrack_entry(lab, "tcp", port) + conntrack_entry(lab, "udp", port) + \
            conntrack_entry(lab, "tcp", port, 6) + conntrack_entry(lab, "udp", port, 6) or ct
        time.sleep(0.05)
    return finish(proc), best, ct


def finish(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=120)
    return json.loads(out)


def long_flow(lab: Lab, proto: str, sport: int, count: int = 600, interval: float = 0.005,
              host: str = SERVER4, **kw: object) -> subprocess.Popen:
    return lab.traffic_bg(lab.client, proto, host, count=count, interval=interval, sport=sport,
                          **kw)


# -- the main job ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["xdp", "xdp-generic", "tc"])
@pytest.mark.parametrize("proto,family", [("tcp", 4), ("udp", 4), ("tcp", 6), ("udp", 6)])
def test_flow_is_offloaded_and_payload_intact(lab: Lab, mode: str, proto: str, family: int):
    lab.start_daemon(mode=mode)
    sport = 40000 + family * 10 + (proto == "udp")
    proc = long_flow(lab, proto, sport, count=400, host=SERVER4 if family == 4 else SERVER6,
                     hold=0.6)
    wait_offloaded(lab, sport)
    after = flows_of(lab, sport)
    result, bpf_packets, ct = watch(lab, sport, proc)
    assert result["received"] == result["sent"] == 400 and result["corrupt"] == 0

    oifs = {f["oif"] for f in after}
    assert oifs == {lab.ifindex(lab.router, "eth0"), lab.ifindex(lab.router, "eth1")}
    stack_packets = ct_packets(ct)
    # 800 messages crossed the router; the stack saw the first few and the handshake
    assert bpf_packets >= 0.8 * (bpf_packets + stack_packets), (bpf_packets, stack_packets)
    if family == 4:
        assert any(f.get("nat_src", "").startswith(ROUTER_WAN4) for f in after), after
    stats = lab.stats()
    assert stats["forward"] >= bpf_packets
    assert stats["rewrite_error"] == 0


def test_dnat_port_forward_from_wan_is_offloaded():
    with Lab("portfwd_rules") as lab:
        lab.start_echo_server(lab.client, port=80)
        lab.start_daemon()
        proc = lab.traffic_bg(lab.server, "tcp", ROUTER_WAN4, port=8080, count=400,
                              interval=0.005, sport=41000, hold=0.6)
        entries = wait_offloaded(lab, 41000)
        result, bpf_packets, ct = watch(lab, 41000, proc)
        assert result["received"] == result["sent"] == 400 and result["corrupt"] == 0
        inbound = [f for f in entries if f["dst"] == f"{ROUTER_WAN4}:8080"]
        assert inbound and inbound[0]["nat_dst"] == f"{CLIENT4}:80"
        stack = ct_packets(ct)
        assert bpf_packets >= 0.8 * (bpf_packets + stack), (bpf_packets, stack)


def test_dropped_flow_is_never_forwarded(lab: Lab):
    """WAN -> LAN without a connection: fw4 rejects it, so conntrack never confirms it."""
    lab.sh(lab.server, f"ip route add 192.168.1.0/24 via {ROUTER_WAN4}")
    lab.start_echo_server(lab.client, port=7000)
    lab.start_daemon()
    result = lab.traffic(lab.server, "udp", CLIENT4, port=7000, count=30, interval=0.02,
                         sport=42000)
    assert result["received"] == 0
    time.sleep(0.5)
    assert flows_of(lab, 42000) == []
    assert all(f["packets"] == 0 for f in flows_of(lab, 42000, state=None))
    assert conntrack_entry(lab, "udp", 42000) == ""


# -- keeping flows alive and letting them go ------------------------------------------------


def test_active_udp_flow_outlives_its_conntrack_timeout(lab: Lab):
    lab.sh(lab.router, "sysctl -qw net.netfilter.nf_conntrack_udp_timeout=2 "
                       "net.netfilter.nf_conntrack_udp_timeout_stream=2")
    lab.start_daemon()
    proc = long_flow(lab, "udp", 43000, count=600, interval=0.01)
    wait_offloaded(lab, 43000)
    first = conntrack_entry(lab, "udp", 43000)
    result = finish(proc)   # six seconds: three conntrack timeouts
    assert result["received"] == result["sent"]
    last = conntrack_entry(lab, "udp", 43000)
    ct_id = re.search(r"id=(\d+)", first)
    assert ct_id and f"id={ct_id.group(1)}" in last, (first, last)
    assert len(flows_of(lab, 43000)) == 2


def test_idle_flow_is_evicted(lab: Lab):
    lab.start_daemon("--idle-timeout", "1")
    proc = long_flow(lab, "udp", 43100, count=200, interval=0.005)
    wait_offloaded(lab, 43100)
    finish(proc)
    wait_gone(lab, 43100)


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_tcp_close_hands_flow_back(lab: Lab, how: str):
    lab.start_daemon()
    proc = long_flow(lab, "tcp", 43200, count=300, rst=int(how == "rst"), hold=1.0)
    wait_offloaded(lab, 43200)
    assert finish(proc)["received"] == 300
    wait_gone(lab, 43200)
    # the stack saw the close: the entry is closing, or at least on the 10 s close timeout
    # (a RST whose sequence conntrack cannot check only shortens the timeout)
    ct = conntrack_entry(lab, "tcp", 43200)
    assert ct == "" or "ESTABLISHED" not in ct or int(ct.split()[2]) <= 10, ct


def test_conntrack_delete_evicts_at_once(lab: Lab):
    lab.start_daemon()
    proc = long_flow(lab, "udp", 43300, count=600)
    wait_offloaded(lab, 43300)
    time.sleep(0.5)
    before = {f["src"]: f["packets"] for f in flows_of(lab, 43300)}
    lab.sh(lab.router, "conntrack -D -p udp --sport 43300")
    # the flow is still active: the stack makes a new conntrack entry and it is offloaded
    # again, but its flow entries start from zero
    lab.wait_for(lambda: any(f["packets"] < before.get(f["src"], 0)
                             for f in flows_of(lab, 43300, state=None))
                 or not flows_of(lab, 43300, state=None),
                 what="old flow entries evicted", timeout=3.0)   # generous for loaded CI
    result = finish(proc)
    assert result["corrupt"] == 0


# -- following routing ----------------------------------------------------------------------


def test_route_change_moves_offloaded_flow(lab: Lab):
    """IPv6, routed: a masqueraded IPv4 connection does not survive an output interface change
    (netfilter kills it, nf_nat_oif_changed), and ebpfw follows that through the destroy."""
    lab.start_daemon()
    eth1, eth2 = lab.ifindex(lab.router, "eth1"), lab.ifindex(lab.router, "eth2")
    proc = long_flow(lab, "udp", 43400, count=800, host=SERVER6)
    entries = wait_offloaded(lab, 43400)
    assert eth1 in {f["oif"] for f in entries}
    lab.sh(lab.router, f"ip -6 route add {SERVER6}/128 via {ALT_GATEWAY6} dev eth2")
    lab.wait_for(lambda: eth2 in {f["oif"] for f in flows_of(lab, 43400)},
                 what="flow moved to eth2", timeout=1.0 * 3)
    before = sum(f["packets"] for f in flows_of(lab, 43400))
    result = finish(proc)
    assert result["received"] == result["sent"] and result["corrupt"] == 0
    assert sum(f["packets"] for f in flows_of(lab, 43400)) > before


def test_changed_next_hop_mac_is_followed(lab: Lab):
    lab.start_daemon()
    proc = long_flow(lab, "udp", 43500, count=800)
    wait_offloaded(lab, 43500)
    new_mac = "02:00:5e:10:00:01"
    lab.sh(lab.server, f"ip link set eth1 address {new_mac}")
    lab.sh(lab.router, f"ip neigh replace {GATEWAY4} lladdr {new_mac} dev eth1 nud reachable")
    lab.wait_for(lambda: new_mac in {f.get("dmac") for f in flows_of(lab, 43500)},
                 what="next hop MAC updated", timeout=3.0)
    result = finish(proc)
    assert result["corrupt"] == 0 and result["received"] >= result["sent"] - 5


def test_egress_link_down_sends_flow_back_to_stack(lab: Lab):
    lab.start_daemon()
    proc = long_flow(lab, "udp", 43600, count=400)
    wait_offloaded(lab, 43600)
    lab.sh(lab.router, "ip link set eth1 down")
    lab.wait_for(lambda: all(f["oif"] != lab.ifindex(lab.router, "eth1")
                             for f in flows_of(lab, 43600)),
                 what="no flow forwarded to the downed link", timeout=3.0)
    proc.kill()


# -- the daemon's own life ------------------------------------------------------------------


def attached(lab: Lab) -> list[str]:
    """What of ours is left on the router's interfaces."""
    left = []
    for dev in ("eth0", "eth1", "eth2"):
        link = json.loads(lab.sh(lab.router, f"ip -d -j link show dev {dev}"))[0]
        if "xdp" in link:
            left.append(f"{dev}: xdp")
        if "clsact" in lab.sh(lab.router, f"tc qdisc show dev {dev}"):
            left.append(f"{dev}: clsact")
    return left


def test_sigkill_fails_open_and_restart_readopts(lab: Lab):
    lab.start_daemon()
    proc = long_flow(lab, "udp", 43700, count=1200)
    wait_offloaded(lab, 43700)
    stats_pin = f"{lab.pin_dir}/ebpfw_stats"
    lab.stop_daemon(signal.SIGKILL)

    def heartbeat_passes() -> int:
        with open_pinned_map(stats_pin) as m:
            return maps.sum_stats(m.lookup_percpu(bytes(4)))[maps.Counter.PASS_HEARTBEAT]
    lab.wait_for(lambda: heartbeat_passes() > 10, what="fast path failing open", timeout=5)

    lab.start_daemon()
    entries = wait_offloaded(lab, 43700)
    before = sum(f["packets"] for f in entries)
    lab.wait_for(lambda: sum(f["packets"] for f in flows_of(lab, 43700)) > before + 20,
                 what="re-adopted flow carried by the fast path again", timeout=OFFLOAD_WAIT)
    result = finish(proc)
    assert result["corrupt"] == 0 and result["received"] >= result["sent"] - 5

    assert lab.stop_daemon(signal.SIGTERM) == 0
    assert attached(lab) == []
    assert not Path(lab.pin_dir).exists(), list(Path(lab.pin_dir).rglob("*"))


@pytest.mark.parametrize("mode", ["xdp", "tc"])
def test_sigterm_leaves_nothing_behind(lab: Lab, mode: str):
    lab.start_daemon(mode=mode)
    assert len(attached(lab)) == (3 if mode == "tc" else 3)
    assert lab.stop_daemon(signal.SIGTERM) == 0
    assert attached(lab) == []
    assert not Path(lab.pin_dir).exists(), list(Path(lab.pin_dir).rglob("*"))


def test_sighup_reloads_configuration(lab: Lab):
    config = lab.run_dir / "ebpfw.conf"
    config.write_text("config ebpfw 'global'\n\tlist interface 'eth0'\n\tlist interface 'eth1'\n")
    lab.start_daemon("--config", str(config), interfaces=())
    assert set(lab.ctl("status", "--json")["interfaces"]) == {"eth0", "eth1"}
    config.write_text("config ebpfw 'global'\n\tlist interface 'eth0'\n\tlist interface 'eth2'\n"
                      "\toption idle_timeout '7'\n")
    lab.daemon.send_signal(signal.SIGHUP)
    lab.wait_for(lambda: set(lab.ctl("status", "--json")["interfaces"]) == {"eth0", "eth2"},
                 what="interfaces follow the reloaded configuration")
    assert lab.ctl("status", "--json")["settings"]["idle_timeout"] == 7
    assert attached(lab) == ["eth0: xdp", "eth2: xdp"]


def test_bad_configuration_is_one_line_and_attaches_nothing(lab: Lab):
    config = lab.run_dir / "ebpfw.conf"
    config.write_text("config ebpfw 'global'\n\toption idle_timeout 'soon'\n")
    with pytest.raises(RuntimeError):
        lab.start_daemon("--config", str(config))
    lines = [x for x in lab.daemon_log.read_text().splitlines() if x.strip()]
    assert lines == [f"ebpfw: {config}: section global: option 'idle_timeout' is 'soon', "
                     "expected a number"]
    assert attached(lab) == []


# -- early drop (fw4 verdicts) --------------------------------------------------------------

DROP_CASE = "three_zones_guest"   # its wan zone drops input: a WAN host probing the router


@pytest.mark.parametrize("early_drop", [True, False], ids=["on", "off"])
def test_early_drop_kills_dropped_flows_in_the_fast_path(early_drop: bool):
    model = SHARED_CASES / DROP_CASE / "model.json"
    if not model.exists():
        pytest.skip(f"needs the real fw4 output in {SHARED_CASES} (a user's own clone lacks it)")
    with Lab(DROP_CASE) as lab:
        lab.start_echo_server(lab.server)
        lab.start_daemon("--fw4-model", str(model),
                         "--early-drop" if early_drop else "--no-early-drop")
        accepted = long_flow(lab, "udp", 44000, count=800)
        # 2 s of probes; the first ~0.6 s go to the stack while conntrack gets its chance
        probe = lab.traffic(lab.server, "udp", ROUTER_WAN4, port=9999, count=400,
                            interval=0.005, sport=44100, oneway=1)
        assert probe["sent"] == 400
        dropped = flows_of(lab, 44100, state="drop")
        if early_drop:
            assert dropped, "no DROP entry for the probe"
            assert "fw4 drop" in dropped[0]["reason"], dropped
            assert lab.stats()["drop"] >= 200     # most of the probe died in the fast path
            assert dropped[0]["packets"] >= 200
            # fw4 reloaded: verdicts go, the established flow stays offloaded
            assert lab.ctl("resync")["verdicts_flushed"] >= 1
            assert flows_of(lab, 44100, state="drop") == []
        else:
            assert dropped == [] and lab.stats()["drop"] == 0
        assert len(flows_of(lab, 44000)) == 2
        result = finish(accepted)
        assert result["received"] == result["sent"] and result["corrupt"] == 0
        assert sum(f["packets"] for f in flows_of(lab, 44000, state=None)) > 0


def test_tcp_with_one_direction_offloaded_keeps_working(lab: Lab):
    """Only the WAN side attached: replies take the fast path, requests the stack. Conntrack
    then sees ACKs for data it never saw; without BE_LIBERAL they are INVALID and fw4 drops
    them ("Prevent NAT leakage") or resets the connection."""
    lab.start_daemon(mode="xdp-generic", interfaces=("eth1",))
    proc = long_flow(lab, "tcp", 44200, count=400, hold=0.6)
    lab.wait_for(lambda: flows_of(lab, 44200), what="reply direction offloaded",
                 timeout=OFFLOAD_WAIT)
    result, bpf_packets, _ = watch(lab, 44200, proc)
    assert result["received"] == result["sent"] == 400 and result["corrupt"] == 0
    assert bpf_packets > 200
