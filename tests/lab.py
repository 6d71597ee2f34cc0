# SPDX-License-Identifier: GPL-2.0-only
"""A router in network namespaces, as in ../shared/fw4-cases: the e2e tests, `make demo` and
the benchmarks all use it.

    client (192.168.1.10)  --eth0-- router: br-lan(eth0) 192.168.1.1       (lan)
                                            eth1 203.0.113.2  --eth1-- server 203.0.113.1 (wan)
                                            eth2 203.0.114.2  --eth2-- server 203.0.114.1 (2nd path)
    server also owns 198.51.100.20 and 2001:db8::20 (the "internet" address) on its loopback.

Everything is created inside fresh namespaces and removed on exit, processes first.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from fw_ebpf import control

ROOT = Path(__file__).resolve().parents[1]
SHARED_CASES = ROOT.parent / "shared" / "fw4-cases"
FALLBACK_RULESET = ROOT / "tests" / "data" / "fw4-style.nft"
TRAFFIC = ROOT / "tests" / "traffic.py"
EBPFW = [sys.executable, "-m", "fw_ebpf.cli"]

CLIENT4, CLIENT6 = "192.168.1.10", "fd12:3456:789a::10"
ROUTER_LAN4, ROUTER_LAN6 = "192.168.1.1", "fd12:3456:789a::1"
ROUTER_WAN4, ROUTER_WAN6 = "203.0.113.2", "2001:db8:ffff::2"
GATEWAY4, GATEWAY6 = "203.0.113.1", "2001:db8:ffff::1"
ALT_ROUTER4, ALT_GATEWAY4 = "203.0.114.2", "203.0.114.1"
ALT_ROUTER6, ALT_GATEWAY6 = "2001:db8:fffe::2", "2001:db8:fffe::1"
SERVER4, SERVER6 = "198.51.100.20", "2001:db8::20"

_seq = itertools.count()


def ruleset_path(case: str = "default") -> Path:
    """The real fw4 output when ../shared is there, else the project's fw4-shaped ruleset."""
    shared = SHARED_CASES / case / "ruleset.nft"
    return shared if shared.exists() else FALLBACK_RULESET


def run(*cmd: str, check: bool = True, timeout: float = 60) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


@dataclass
class Lab:
    case: str = "default"
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}{next(_seq)}")
    procs: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client, self.router, self.server = (f"eb{r}{self.tag}" for r in "crs")
        self.run_dir = Path(f"/run/ebpfw-lab-{self.tag}")
        self.bpffs = self.run_dir / "bpffs"
        self.pin_dir = str(self.bpffs / "ebpfw")
        self.control = str(self.run_dir / "ebpfw.sock")
        self.daemon: subprocess.Popen | None = None
        self.daemon_log = self.run_dir / "daemon.log"

    # -- setup / teardown ---------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop_daemon()
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.wait(5)
        for ns in (self.client, self.router, self.server):
            for pid in run("ip", "netns", "pids", ns, check=False).split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            run("ip", "netns", "del", ns, check=False)
        if self.bpffs.is_dir():
            run("umount", str(self.bpffs), check=False)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _build(self) -> None:
        c, r, s = self.client, self.router, self.server
        for ns in (c, r, s):
            run("ip", "netns", "add", ns)
            self.sh(ns, "ip link set lo up")
        # the pins must outlive one `ip netns exec` (it remounts /sys): a bpffs of our own
        self.bpffs.mkdir(parents=True)
        run("mount", "-t", "bpf", "bpf", str(self.bpffs))

        run("ip", "link", "add", "eth0", "netns", c, "type", "veth", "peer", "eth0", "netns", r)
        run("ip", "link", "add", "eth1", "netns", s, "type", "veth", "peer", "eth1", "netns", r)
        run("ip", "link", "add", "eth2", "netns", s, "type", "veth", "peer", "eth2", "netns", r)

        self.sh(r, "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 "
                   "net.netfilter.nf_conntrack_acct=1")
        # this kernel has br_netfilter built in, OpenWrt does not load it
        for name in ("iptables", "ip6tables", "arptables"):
            self.sh(r, f"sysctl -qw net.bridge.bridge-nf-call-{name}=0", check=False)
        self.sh(r, "ip link add br-lan type bridge")
        self.sh(r, "ip link set eth0 master br-lan")
        for dev in ("br-lan", "eth0", "eth1", "eth2"):
            self.sh(r, f"ip link set {dev} up")
        self.sh(r, f"ip addr add {ROUTER_LAN4}/24 dev br-lan")
        self.sh(r, f"ip addr add {ROUTER_LAN6}/64 dev br-lan nodad")
        self.sh(r, f"ip addr add {ROUTER_WAN4}/24 dev eth1")
        self.sh(r, f"ip addr add {ROUTER_WAN6}/64 dev eth1 nodad")
        self.sh(r, f"ip addr add {ALT_ROUTER4}/24 dev eth2")
        self.sh(r, f"ip addr add {ALT_ROUTER6}/64 dev eth2 nodad")
        self.sh(r, f"ip route add default via {GATEWAY4}")
        self.sh(r, f"ip -6 route add default via {GATEWAY6}")

        self.sh(c, "ip link set eth0 up")
        self.sh(c, f"ip addr add {CLIENT4}/24 dev eth0")
        self.sh(c, f"ip addr add {CLIENT6}/64 dev eth0 nodad")
        self.sh(c, f"ip route add default via {ROUTER_LAN4}")
        self.sh(c, f"ip -6 route add default via {ROUTER_LAN6}")

        for dev in ("eth1", "eth2"):
            self.sh(s, f"ip link set {dev} up")
        self.sh(s, f"ip addr add {GATEWAY4}/24 dev eth1")
        self.sh(s, f"ip addr add {GATEWAY6}/64 dev eth1 nodad")
        self.sh(s, f"ip addr add {ALT_GATEWAY4}/24 dev eth2")
        self.sh(s, f"ip addr add {ALT_GATEWAY6}/64 dev eth2 nodad")
        self.sh(s, f"ip addr add {SERVER4}/32 dev lo")
        self.sh(s, f"ip addr add {SERVER6}/128 dev lo")
        self.sh(s, f"ip -6 route add fd12:3456:789a::/48 via {ROUTER_WAN6}")

        # endpoints: XDP cannot see partial checksums, and a veth only takes XDP frames
        # redirected into it when its peer runs NAPI (GRO on)
        for ns, devs in ((c, ("eth0",)), (s, ("eth1", "eth2"))):
            for dev in devs:
                self.sh(ns, f"ethtool -K {dev} tx off gro on", check=False)
        # eth2 is in no fw4 zone and some cases drop wan input: neighbour discovery would be
        # dropped by the router's own firewall there, so the wan side has static neighbours
        for dev, here, there in (("eth2", (ALT_GATEWAY4, ALT_GATEWAY6), (ALT_ROUTER6,)),
                                 ("eth1", (GATEWAY6,), (ROUTER_WAN6,))):
            for ns, peer, addrs in ((r, s, here), (s, r, there)):
                mac = json.loads(self.sh(peer, f"ip -j link show dev {dev}"))[0]["address"]
                for addr in addrs:
                    self.sh(ns, f"ip neigh replace {addr} lladdr {mac} dev {dev} nud permanent")
        self.sh(r, f"nft -f {ruleset_path(self.case)}")
        self.wait_reachable()

    def wait_reachable(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        for target in (SERVER4, SERVER6):
            while True:
                ok = subprocess.run(["ip", "netns", "exec", self.client, "ping", "-c1", "-W1",
                                     target], capture_output=True).returncode == 0
                if ok:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"lab: {target} not reachable from the client")
                time.sleep(0.2)

    # -- commands -----------------------------------------------------------------------------

    def sh(self, ns: str, cmd: str, check: bool = True, timeout: float = 60) -> str:
        return run("ip", "netns", "exec", ns, *cmd.split(), check=check, timeout=timeout)

    def ifindex(self, ns: str, dev: str) -> int:
        return json.loads(self.sh(ns, f"ip -j link show dev {dev}"))[0]["ifindex"]

    def spawn(self, ns: str, *cmd: str, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def start_echo_server(self, ns: str, port: int = 5201) -> None:
        proc = self.spawn(ns, sys.executable, str(TRAFFIC), "server", "--port", str(port),
                          stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"echo server in {ns} did not start")

    def traffic(self, ns: str, proto: str, host: str, port: int = 5201, **opts: object) -> dict:
        args = [f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]
        out = run("ip", "netns", "exec", ns, sys.executable, str(TRAFFIC), "client", proto, host,
                  str(port), *args, timeout=300)
        return json.loads(out)

    def traffic_bg(self, ns: str, proto: str, host: str, port: int = 5201,
                   **opts: object) -> subprocess.Popen:
        args = [f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]
        return self.spawn(ns, sys.executable, str(TRAFFIC), "client", proto, host, str(port),
                          *args, stdout=subprocess.PIPE, text=True)

    # -- the daemon ---------------------------------------------------------------------------

    def start_daemon(self, *args: str, interfaces: tuple[str, ...] = ("eth0", "eth1", "eth2"),
                     mode: str = "xdp", wait: bool = True,
                     wrap: tuple[str, ...] = ()) -> subprocess.Popen:
        """wrap: a command to run it under (tests/openwrt.py: in an OpenWrt session)."""
        cmd = [*EBPFW, "--control", self.control, "run", "--pin-dir", self.pin_dir,
               "--mode", mode, "--log-level", "debug", "--sweep-interval", "0.2",
               "--heartbeat-timeout", "1", *args]
        for dev in interfaces:
            cmd += ["--interface", dev]
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        log = open(self.daemon_log, "ab")
        self.daemon = subprocess.Popen([*wrap, "ip", "netns", "exec", self.router, *cmd], env=env,
                                       stdout=log, stderr=log, start_new_session=True)
        log.close()
        if wait:
            self.wait_for(lambda: self.ctl_ok(), what="daemon control socket", timeout=30)
        return self.daemon

    def stop_daemon(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        proc, self.daemon = self.daemon, None
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait(5)

    def call(self, method: str, **args: object) -> dict:
        """Asks the daemon directly over its control socket (a path, so reachable from any
        network namespace): much faster than a CLI process when a test polls."""
        return control.call(self.control, method, args)

    def ctl(self, *args: str) -> object:
        out = run("ip", "netns", "exec", self.router, *EBPFW, "--control", self.control, *args)
        return json.loads(out) if "--json" in args or args[0] in ("flush", "resync") else out

    def ctl_ok(self) -> bool:
        try:
            self.call("status")
            return True
        except control.ControlError:
            if self.daemon is not None and self.daemon.poll() is not None:
                raise RuntimeError("daemon exited:\n" + self.daemon_log.read_text()[-3000:])
            return False

    def flows(self, state: str | None = None) -> list[dict]:
        args: dict[str, object] = {"state": state} if state else {}
        out: list[dict] = []
        while True:
            page = self.call("flows", **args, offset=len(out), limit=1000)
            out += page["flows"]
            if not page["flows"] or len(out) >= page["total"]:
                return out

    def stats(self) -> dict[str, int]:
        return self.call("stats")

    def status(self) -> dict:
        return self.call("status")

    def gate(self, name: str) -> str:
        """A file path traffic.py waits for (--warmup-until, --close-after)."""
        return str(self.run_dir / f"gate-{name}")

    def open_gate(self, name: str) -> None:
        Path(self.gate(name)).touch()

    def wait_at_gate(self, name: str, proc: subprocess.Popen, timeout: float = 120) -> None:
        """Until a client is done with its counted messages and waits at --close-after."""
        def waiting() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"traffic client exited before gate {name}: "
                                     f"{proc.communicate()[0]}")
            return Path(self.gate(name) + ".waiting").exists()
        self.wait_for(waiting, what=f"client at gate {name}", timeout=timeout)

    @staticmethod
    def wait_for(cond: Callable[[], object], what: str, timeout: float = 10,
                 interval: float = 0.02) -> object:
        deadline = time.monotonic() + timeout
        while True:
            value = cond()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)


@contextlib.contextmanager
def lab(case: str = "default") -> Iterator[Lab]:
    with Lab(case) as the_lab:
        yield the_lab
