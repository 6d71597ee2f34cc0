# SPDX-License-Identifier: GPL-2.0-only
"""A router whose LAN and WAN ports sit on a DSA switch, on a kernel without DSA.

Simulated on the wire (tests/bpf/dsa_wire.c, MediaTek tag): the router's conduit eth0 is a
veth to a switch namespace; the user ports lan1 and wan are veths whose egress tags the
stack's frames and sends them out of eth0, and eth0's ingress (after ebpfw's filter) takes
the tag off and hands the frame to its port. In the switch namespace the same programs tag
the frames of the client (port 1) and the server (port 0) towards the CPU and untag the CPU's.
What the daemon is told about the switch comes from a sysfs stand-in (--sysfs): eth0 speaks
mtk, lan1 is p1, wan p0. Everything else is real: routing, conntrack, the fast path."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

import wire
from fw_ebpf import control
from conftest import requires_root
from lab import EBPFW, ROOT
from netns import netns, run_in_netns, sh

pytestmark = requires_root
CLIENT, LAN1, WAN, SERVER = "192.168.1.10", "192.168.1.1", "203.0.113.1", "203.0.113.2"


class DsaLab:
    """client - [port 1] switch [port 0] - server; switch [cpu] - eth0 router (lan1, wan)."""

    def __init__(self, root: Path) -> None:
        tag = uuid.uuid4().hex[:6]
        self.c, self.r, self.s, self.w = (f"ed{x}{tag}" for x in "crsw")
        self.root = root
        self.bpffs = root / "bpffs"
        self.sysfs = root / "sys"
        self.daemon: subprocess.Popen | None = None
        self.log = root / "daemon.log"

    def build(self, stack: contextlib.ExitStack) -> None:
        for ns in (self.c, self.r, self.s, self.w):
            stack.enter_context(netns(ns))
        c, r, s, w = self.c, self.r, self.s, self.w
        self.bpffs.mkdir()
        sh("mount", "-t", "bpf", "bpf", str(self.bpffs))
        stack.callback(subprocess.run, ["umount", str(self.bpffs)], check=False)
        sh("ip", "link", "add", "eth0", "netns", r, "type", "veth", "peer", "sw0", "netns", w)
        sh("ip", "link", "add", "c0", "netns", c, "type", "veth", "peer", "swp1", "netns", w)
        sh("ip", "link", "add", "s0", "netns", s, "type", "veth", "peer", "swp0", "netns", w)
        for port in ("lan1", "wan"):
            sh("ip", "-n", r, "link", "add", port, "type", "veth", "peer", f"{port}-door")
            # a DSA user port segments before the tagger, as here
            sh("ip", "netns", "exec", r, "ethtool", "-K", port, "tso", "off", "gso", "off",
               "sg", "off", "tx", "off")
        for ns, devs in ((r, ("eth0", "lan1", "lan1-door", "wan", "wan-door")),
                         (w, ("sw0", "swp0", "swp1")), (c, ("c0",)), (s, ("s0",))):
            for dev in devs:
                sh("ip", "-n", ns, "link", "set", dev, "up")
        for ns, dev in ((c, "c0"), (s, "s0"), (w, "sw0")):
            sh("ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off", "gro", "on")
        sh("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # a firewall that tracks connections (conntrack runs only where a ruleset uses it)
        subprocess.run(["ip", "netns", "exec", r, "nft", "-f", "-"], check=True, text=True,
                       input="table inet filter {\n chain forward {\n"
                             "  type filter hook forward priority filter\n"
                             "  ct state established,related accept\n"
                             "  iifname \"lan1\" accept\n }\n}\n")
        sh("ip", "-n", r, "addr", "add", f"{LAN1}/24", "dev", "lan1")
        sh("ip", "-n", r, "addr", "add", f"{WAN}/24", "dev", "wan")
        sh("ip", "-n", c, "addr", "add", f"{CLIENT}/24", "dev", "c0")
        sh("ip", "-n", c, "route", "add", "default", "via", LAN1)
        sh("ip", "-n", s, "addr", "add", f"{SERVER}/24", "dev", "s0")
        sh("ip", "-n", s, "route", "add", "192.168.1.0/24", "via", WAN)
        wire.dsa_end(r, "eth0", {1: ("lan1", "lan1-door"), 0: ("wan", "wan-door")}, True,
                     str(self.bpffs / "router-side"))
        wire.dsa_end(w, "sw0", {1: ("swp1", "swp1"), 0: ("swp0", "swp0")}, False,
                     str(self.bpffs / "switch-side"))
        self._sysfs()

    def _sysfs(self) -> None:
        """What /sys/class/net says on a router with this switch, with this namespace's ifindexes."""
        index = {lk["ifname"]: lk["ifindex"]
                 for lk in json.loads(sh("ip", "-n", self.r, "-j", "link", "show"))}
        for name, ifindex in index.items():
            d = self.sysfs / "class" / "net" / name
            d.mkdir(parents=True)
            (d / "ifindex").write_text(f"{ifindex}\n")
            (d / "iflink").write_text(f"{index['eth0'] if name in ('lan1', 'wan') else ifindex}\n")
        (self.sysfs / "class/net/eth0/dsa").mkdir()
        (self.sysfs / "class/net/eth0/dsa/tagging").write_text("mtk\n")
        (self.sysfs / "class/net/lan1/phys_port_name").write_text("p1\n")
        (self.sysfs / "class/net/wan/phys_port_name").write_text("p0\n")

    def ifindex(self, dev: str) -> int:
        return json.loads(sh("ip", "-n", self.r, "-j", "link", "show", dev))[0]["ifindex"]

    def ping(self, count: int = 3) -> bool:
        res = subprocess.run(["ip", "netns", "exec", self.c, "ping", "-c", str(count), "-i", "0.2",
                              "-W", "2", SERVER], capture_output=True, text=True)
        return res.returncode == 0

    def start_daemon(self, *args: str) -> None:
        cmd = [*EBPFW, "--control", str(self.root / "ebpfw.sock"), "run",
               "--pin-dir", str(self.bpffs / "ebpfw"), "--log-level", "debug",
               "--sweep-interval", "0.2", "--heartbeat-timeout", "1", "--no-early-drop",
               "--sysfs", str(self.sysfs), *args]
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        with open(self.log, "ab") as log:
            self.daemon = subprocess.Popen(["ip", "netns", "exec", self.r, *cmd], env=env,
                                           stdout=log, stderr=log, start_new_session=True)
        wait_for(lambda: self.status() is not None, "the daemon's control socket", 30)

    def stop_daemon(self) -> None:
        if self.daemon is not None:
            self.daemon.terminate()
            try:
                self.daemon.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.daemon.pid, 9)
                self.daemon.wait(5)
            self.daemon = None

    def status(self) -> dict | None:
        try:
            return control.call(str(self.root / "ebpfw.sock"), "status")
        except (control.ControlError, OSError):
            if self.daemon is not None and self.daemon.poll() is not None:
                raise RuntimeError("daemon exited:\n" + self.log.read_text()[-3000:])
            return None


def wait_for(cond, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def dsa_lab(request: pytest.FixtureRequest) -> Iterator[DsaLab]:
    root = Path(tempfile.mkdtemp(prefix="ebpfw-dsa-", dir="/run"))
    lab = DsaLab(root)
    try:
        with contextlib.ExitStack() as stack:
            lab.build(stack)
            try:
                yield lab
            finally:
                lab.stop_daemon()
                rep = getattr(request.node, "rep_call", None)
                if rep is not None and rep.failed and lab.log.exists():
                    print("--- daemon log (tail) ---\n" +
                          "\n".join(lab.log.read_text().splitlines()[-60:]))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_simulated_switch_carries_traffic_through_lan1_and_wan(dsa_lab: DsaLab):
    assert dsa_lab.ping()
    router = wire.dsa_counts(str(dsa_lab.bpffs / "router-side"))
    switch = wire.dsa_counts(str(dsa_lab.bpffs / "switch-side"))
    # every echo and reply crossed the conduit tagged, both ways (ARP on top)
    assert min(router) >= 6 and min(switch) >= 6, (router, switch)


def test_daemon_attaches_the_conduit_with_the_tag_object(dsa_lab: DsaLab):
    dsa_lab.start_daemon("--mode", "tc")
    st = dsa_lab.status()
    assert st["dsa"] == {"tag": "mtk", "conduits": ["eth0"], "not_conduits": {}}
    assert "eth0" in st["interfaces"]
    assert not {"lan1", "wan"} & set(st["interfaces"])
    assert dsa_lab.ping()
    run_in_netns(dsa_lab.c, _send_udp, 5)
    # ICMP parsed through the tag (not TCP/UDP), the UDP flow a miss: both read past the tag
    # (ARP is not IP either way)
    st = wait_for(lambda: (s := dsa_lab.status()) and s["pass_reasons"].get("miss") and s,
                  "the fast path to see the tagged flows")
    assert st["pass_reasons"].get("l4_proto", 0) >= 3
    assert not {"dsa_tag", "dsa_untagged"} & set(st["pass_reasons"])


def _send_udp(count: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(count):
            s.sendto(b"ebpfw", (SERVER, 9))


def _send_untagged(count: int) -> None:
    """Plain IPv4 frames into the conduit from the switch's side, as a MAC that took the
    tag off in hardware would deliver them."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind(("sw0", 0))
        from scapy.layers.inet import IP, UDP
        from scapy.layers.l2 import Ether
        frame = bytes(Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02")
                      / IP(src=CLIENT, dst=SERVER) / UDP(sport=1, dport=2) / (b"x" * 20))
        for _ in range(count):
            s.send(frame)


def test_untagged_frames_on_the_conduit_move_the_daemon_to_the_user_ports(dsa_lab: DsaLab):
    dsa_lab.start_daemon("--mode", "tc")
    run_in_netns(dsa_lab.w, _send_untagged, 100)
    st = wait_for(lambda: (s := dsa_lab.status()) and not s["dsa"]["conduits"] and s,
                  "the fallback to the user ports")
    assert st["dsa"]["not_conduits"]["eth0"].startswith("frames arrive without the mtk tag")
    assert {"lan1", "wan"} <= set(st["interfaces"]) and "eth0" not in st["interfaces"]
    assert dsa_lab.ping()


def flows(lab: DsaLab, port: int) -> list[dict]:
    page = control.call(str(lab.root / "ebpfw.sock"), "flows", {"limit": 1000})
    return [f for f in page["flows"] if f"{port}" in (f["src"] + f["dst"])]


@pytest.mark.parametrize("mode", ["xdp", "tc"])
def test_flow_from_lan1_to_wan_is_offloaded_through_the_conduit(dsa_lab: DsaLab, mode: str):
    """In at the conduit from port 1 (lan1), out at the conduit to port 0 (wan), and back: the
    fast path re-tags for the port the kernel's own frame was tagged for."""
    dsa_lab.start_daemon("--mode", mode)
    traffic = str(ROOT / "tests" / "traffic.py")
    gate = dsa_lab.root / "go"
    echo = subprocess.Popen(["ip", "netns", "exec", dsa_lab.s, sys.executable, traffic, "server",
                             "--port", "5201"], stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        client = subprocess.Popen(
            ["ip", "netns", "exec", dsa_lab.c, sys.executable, traffic, "client", "udp", SERVER,
             "5201", "--count", "300", "--interval", "0.002", "--sport", "47000",
             f"--warmup-until={gate}"], stdout=subprocess.PIPE, text=True)
        eth0 = dsa_lab.ifindex("eth0")
        both = wait_for(lambda: len(f := [x for x in flows(dsa_lab, 47000)
                                         if x["state"] == "forward"]) == 2 and f,
                        "both directions offloaded", 30)
        out = next(f for f in both if f["src"].startswith(CLIENT))
        back = next(f for f in both if f is not out)
        assert (out["ifindex"], out["dsa_port"], out["oif"], out["dsa_port_out"]) == \
            (eth0, 1, eth0, 0)
        assert (back["ifindex"], back["dsa_port"], back["oif"], back["dsa_port_out"]) == \
            (eth0, 0, eth0, 1)
        before = dsa_lab.status()["counters"]["forward"]
        gate.touch()
        result = json.loads(client.communicate(timeout=120)[0])
        assert result["corrupt"] == 0 and result["received"] >= result["sent"] - 5
        assert dsa_lab.status()["counters"]["forward"] - before >= 2 * 300 * 0.9
    finally:
        echo.kill()
        echo.wait()
