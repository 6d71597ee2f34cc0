# SPDX-License-Identifier: GPL-2.0-only
"""Faults a router meets, end to end: firewall reloads and daemon restarts mid-transfer, link
and route flaps, conntrack flushes, and a host that lacks what the fast path needs (bpffs,
libbpf, XDP on the device). Each ends in working connections, or in one clear line and nothing
attached; the firewall is never touched."""
from __future__ import annotations

import ipaddress
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import requires_root
from e2e import OFFLOAD_WAIT, attached, finish, flows_of, gated_flow, wait_offloaded
from fw_ebpf import maps
from fw_ebpf.daemon import ADMIT_CHUNK
from fw_ebpf.libbpf import open_pinned_map
from fw_ebpf.loader import pending_size
from lab import (ALT_GATEWAY6, CLIENT4, EBPFW, GATEWAY4, ROOT, ROUTER_WAN4, SERVER4, SERVER6,
                 Lab, ruleset_path, run)

pytestmark = [requires_root, pytest.mark.usefixtures("bpf_build")]


def ruleset(lab: Lab) -> str:
    return lab.sh(lab.router, "nft -s list ruleset")   # -s: without counters, which traffic moves


def carried_again(lab: Lab, port: int) -> None:
    """Both directions offloaded, and the fast path carrying packets of them again."""
    before = {f["src"]: f["packets"] for f in wait_offloaded(lab, port)}
    lab.wait_for(lambda: (now := flows_of(lab, port)) and len(now) == 2 and all(
        f["packets"] > before.get(f["src"], 0) for f in now),
        what=f"port {port} carried by the fast path again", timeout=OFFLOAD_WAIT)


@pytest.mark.parametrize("how", ["reload", "restart"])
def test_firewall_reload_mid_transfer_loses_no_connection(lab: Lab, how: str):
    """`fw4 restart` leaves the router without NAT hooks until the table is back: a NATed
    packet crossing that gap leaves un-NATed, or meets the router's own RST, and the kernel
    alone can lose the connection (seen with no daemon at all). Over IPv6, which fw4 does not
    NAT, the gap costs the kernel nothing, so a connection lost is the fast path's doing."""
    lab.start_daemon()
    proc = gated_flow(lab, "tcp", 45000, count=200,
                      host=SERVER6 if how == "restart" else SERVER4)
    wait_offloaded(lab, 45000)
    for _ in range(3):
        if how == "restart":   # `fw4 restart`: the table goes, then comes back
            lab.sh(lab.router, "nft delete table inet fw4")
        # `fw4 reload`: the whole table replaced in one transaction
        lab.sh(lab.router, f"nft -f {ruleset_path(lab.case)}")
        carried_again(lab, 45000)
    lab.open_gate("go")
    result = finish(proc)
    assert result["received"] == result["sent"] and result["corrupt"] == 0 and not result["lost"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_daemon_restart_mid_transfer_loses_no_connection(lab: Lab, sig: int):
    lab.start_daemon()
    proc = gated_flow(lab, "tcp", 45100, count=200)
    wait_offloaded(lab, 45100)
    lab.stop_daemon(sig)
    lab.start_daemon()
    carried_again(lab, 45100)
    lab.open_gate("go")
    result = finish(proc)
    assert result["received"] == result["sent"] and result["corrupt"] == 0 and not result["lost"]


def test_link_flap_hands_back_then_reoffloads(lab: Lab):
    lab.start_daemon()
    proc = gated_flow(lab, "udp", 45200, count=50)
    wait_offloaded(lab, 45200)
    eth1 = lab.ifindex(lab.router, "eth1")
    lab.sh(lab.router, "ip link set eth1 down")
    lab.wait_for(lambda: all(f["oif"] != eth1 for f in flows_of(lab, 45200)),
                 what="nothing forwarded to the link that went down", timeout=OFFLOAD_WAIT)
    lab.sh(lab.router, "ip link set eth1 up")
    # the default route went with the link: put it back as netifd's ifup would
    lab.sh(lab.router, f"ip route replace default via {GATEWAY4}")
    carried_again(lab, 45200)
    lab.open_gate("go")
    result = finish(proc)
    assert result["corrupt"] == 0


def test_route_flap_follows_each_change(lab: Lab):
    lab.start_daemon()
    eth1, eth2 = lab.ifindex(lab.router, "eth1"), lab.ifindex(lab.router, "eth2")
    proc = gated_flow(lab, "udp", 45300, host=SERVER6, count=50)
    wait_offloaded(lab, 45300)
    for _ in range(3):
        lab.sh(lab.router, f"ip -6 route add {SERVER6}/128 via {ALT_GATEWAY6} dev eth2")
        lab.wait_for(lambda: eth2 in {f["oif"] for f in flows_of(lab, 45300)},
                     what="flow moved to eth2", timeout=OFFLOAD_WAIT)
        lab.sh(lab.router, f"ip -6 route del {SERVER6}/128")
        lab.wait_for(lambda: eth2 not in {f["oif"] for f in flows_of(lab, 45300)}
                     and eth1 in {f["oif"] for f in flows_of(lab, 45300)},
                     what="flow back on eth1", timeout=OFFLOAD_WAIT)
    carried_again(lab, 45300)
    lab.open_gate("go")
    result = finish(proc)
    assert result["corrupt"] == 0 and result["received"] >= result["sent"] - 5


def test_conntrack_flush_evicts_everything_and_live_flows_come_back(lab: Lab):
    lab.start_daemon()
    procs = [gated_flow(lab, "udp", port, count=50) for port in (45400, 45401)]
    for port in (45400, 45401):
        wait_offloaded(lab, port)
    flushed = time.monotonic()
    lab.sh(lab.router, "conntrack -F")
    # new conntrack entries for the live flows, and flow entries made for them since
    lab.wait_for(lambda: all(len(f := flows_of(lab, port)) == 2 and
                             all(x["age_s"] < time.monotonic() - flushed for x in f)
                             for port in (45400, 45401)),
                 what="both flows re-offloaded from fresh entries", timeout=OFFLOAD_WAIT)
    lab.open_gate("go")
    for proc in procs:
        assert finish(proc)["corrupt"] == 0


@requires_root
def test_full_egress_index_leaves_new_flows_to_the_stack(lab: Lab):
    """The egress index is as large as the flow table, and a burst can fill it before the
    sweep catches up: a new flow then stays with the stack, with the reason; flows already
    offloaded stay offloaded and the daemon carries on."""
    lab.start_daemon("--flows-max", "1024")
    old = gated_flow(lab, "udp", 45500, count=50)
    wait_offloaded(lab, 45500)
    junk = 0
    with open_pinned_map(f"{lab.pin_dir}/{maps.EGRESS_TABLES[maps.L3_IPV4]}") as index:
        with pytest.raises(OSError):
            while junk <= index.max_entries:
                t = maps.Tuple(socket.IPPROTO_UDP, ipaddress.ip_address("198.18.0.1"),
                               ipaddress.ip_address(0xC6130000 + junk), 1, 1)
                index.update(maps.tuple_id(t), bytes(maps.KEY6_LEN))
                junk += 1
    assert 0 < junk <= 1024
    new = gated_flow(lab, "udp", 45501, count=50)
    passed = lab.wait_for(lambda: [f for f in flows_of(lab, 45501, state="pass")
                                   if "egress index full" in f["reason"]],
                          what="the new flow left to the stack", timeout=OFFLOAD_WAIT)
    assert passed and lab.ctl_ok()
    assert len(flows_of(lab, 45500)) == 2
    lab.open_gate("go")
    for proc in (old, new):
        result = finish(proc)
        assert result["received"] == result["sent"] > 50 and result["corrupt"] == 0


def rejected_flood(lab: Lab, count: int) -> int:
    """count new tuples from the server to the client's ports, which fw4 rejects (WAN -> LAN
    without a connection); how many of them the daemon heard of (NEW events not shed or lost)."""
    lab.sh(lab.server, f"ip route add 192.168.1.0/24 via {ROUTER_WAN4}")
    before = lab.stats()
    send = ("import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for i in range({count}):\n"
            f"    s.sendto(b'x', ('{CLIENT4}', 20000 + i % 40000))\n")
    run("ip", "netns", "exec", lab.server, sys.executable, "-c", send)
    after = lab.stats()
    return after["pass_miss"] - before["pass_miss"] - (after["event_shed"] - before["event_shed"]) \
        - (after["event_lost"] - before["event_lost"])


@requires_root
def test_undecided_flows_the_pending_table_dropped_are_forgotten(lab: Lab):
    """A flood of tuples fw4 rejects, four times what the PENDING table holds: the LRU takes
    most entries, before or after the daemon heard of them (a NEW event each). A sweep cycle
    that no longer finds an entry forgets its record; those it finds go when undecided too
    long. Nothing of the flood stays in the book."""
    lab.start_daemon("--flows-max", "1024", "--event-rate", "100000")
    told = rejected_flood(lab, 4 * pending_size(1024))
    # more than the table holds: the LRU took the entries of that many records or more
    assert told > pending_size(1024), f"the daemon heard of {told} flows: the test proves nothing"
    lab.wait_for(lambda: lab.status()["flows"]["pending"] == 0,
                 what=f"all {told} undecided flows forgotten", timeout=120, interval=0.5)
    assert lab.ctl_ok()


def test_rejected_flows_past_what_the_pending_tables_hold_are_forgotten_oldest_first(lab: Lab):
    """Twice as many tuples fw4 rejects as the pending tables hold, and no sweep meanwhile to
    forget any (its interval is longer than the test): as each new one is found to have no
    conntrack entry, the oldest are forgotten, so the daemon remembers no more of them than
    the tables can hold (a flood costs it bounded memory), and says how many it forgot."""
    lab.start_daemon("--flows-max", "1024", "--event-rate", "100000", "--sweep-interval", "60",
                     "--heartbeat-timeout", "600")
    held = len(maps.TABLES) * pending_size(1024)
    heard = rejected_flood(lab, 2 * held)
    assert heard > held, f"the daemon heard of {heard} flows: the test proves nothing"

    def settled() -> dict | None:
        status = lab.status()
        waiting = [f for f in lab.flows("pending") if f["reason"] != "no conntrack entry"]
        return None if waiting else status
    status = lab.wait_for(settled, what="every rejected flow looked up", timeout=120,
                          interval=0.5)
    assert status["flows"]["pending"] <= held
    forgotten = status["rejected_forgotten"]
    assert forgotten >= heard - held
    assert f"{forgotten} without a conntrack entry forgotten" in str(lab.ctl("status"))


def test_a_flood_of_rejected_flows_waits_for_the_retries_it_holds(lab: Lab):
    """Three times as many new tuples fw4 rejects at once as flows may wait for a retry of
    their lookup (each waits for all of RETRY_DELAYS; as many as a pending table holds): new
    flows wait in the daemon's backlog until the retries drain, so no more than that wait for
    one at a time; every tuple is looked up all the same, and the daemon answers throughout."""
    # no sweep to forget what waits too long (its interval is longer than the test)
    lab.start_daemon("--flows-max", "8192", "--event-rate", "1000000", "--sweep-interval", "60",
                     "--heartbeat-timeout", "600")
    retries_max = pending_size(8192)
    heard = rejected_flood(lab, 3 * retries_max)
    assert heard > 2 * retries_max, f"the daemon heard of {heard} flows: the test proves nothing"

    def drained() -> dict | None:
        status = lab.status()
        backlog = status["admission_backlog"]
        return status if backlog["new"] == backlog["retrying"] == 0 else None
    status = lab.wait_for(drained, what="every rejected flow looked up", timeout=120,
                          interval=0.5)
    assert retries_max <= status["admission_backlog"]["retrying_peak"] <= \
        retries_max + ADMIT_CHUNK, status["admission_backlog"]
    rejected = [f for f in lab.flows("pending") if f["reason"] == "no conntrack entry"]
    assert len(rejected) + status["rejected_forgotten"] >= heard


# -- a host that lacks what the fast path needs: one line, nothing attached, firewall as it was


def run_daemon(lab: Lab, *args: str, wrap: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`ebpfw run` in the router, in the foreground; wrap goes between `ip netns exec` and it."""
    cmd = ["ip", "netns", "exec", lab.router, *wrap, *EBPFW, "--control", lab.control, "run",
           "--pin-dir", lab.pin_dir, "--interface", "eth0", "--interface", "eth1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT / "src"),
                               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


def assert_refused(lab: Lab, res: subprocess.CompletedProcess, *words: str) -> None:
    """Exit status not 0, exactly one line that is not a log record, naming what is wrong;
    nothing attached, no control socket left."""
    lines = [x for x in res.stderr.splitlines() if x.strip() and not LOG_LINE.match(x)]
    assert res.returncode != 0, res
    assert len(lines) == 1 and lines[0].startswith("ebpfw: "), res.stderr
    assert all(w in lines[0] for w in words), lines
    assert attached(lab) == []
    assert not Path(lab.control).exists()


@pytest.fixture
def quiet_lab():
    with Lab() as the_lab:
        yield the_lab


def test_pin_dir_not_on_bpffs_is_one_line(quiet_lab: Lab):
    lab, firewall = quiet_lab, ruleset(quiet_lab)
    lab.pin_dir = str(lab.run_dir / "not-bpffs")
    assert_refused(lab, run_daemon(lab), lab.pin_dir)
    assert ruleset(lab) == firewall


def test_read_only_bpffs_is_one_line(quiet_lab: Lab):
    lab, firewall = quiet_lab, ruleset(quiet_lab)
    subprocess.run(["mount", "-o", "remount,ro", str(lab.bpffs)], check=True)
    assert_refused(lab, run_daemon(lab), lab.pin_dir)
    assert ruleset(lab) == firewall


def test_missing_libbpf_is_one_line(quiet_lab: Lab):
    """libbpf replaced by an empty file in a private mount namespace of the daemon's own."""
    lab, firewall = quiet_lab, ruleset(quiet_lab)
    import ctypes.util
    lib = ctypes.util.find_library("bpf")
    path = subprocess.run(["sh", "-c", f"ldconfig -p | awk '/{lib}/ {{print $NF; exit}}'"],
                          capture_output=True, text=True).stdout.strip()
    assert path, "libbpf not found by ldconfig"
    # after `ip netns exec`, which links libbpf itself
    wrap = ("unshare", "-m", "--propagation", "private", "sh", "-c",
            f'mount --bind /dev/null "{path}" && exec "$@"', "sh")
    assert_refused(lab, run_daemon(lab, wrap=wrap), "libbpf")
    assert ruleset(lab) == firewall


def test_native_xdp_on_a_device_without_it_is_one_line(quiet_lab: Lab):
    lab, firewall = quiet_lab, ruleset(quiet_lab)
    assert_refused(lab, run_daemon(lab, "--interface", "br-lan=xdp"), "br-lan")
    assert ruleset(lab) == firewall
