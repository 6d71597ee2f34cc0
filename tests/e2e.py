# SPDX-License-Identifier: GPL-2.0-only
"""What the end-to-end tests share: flow queries, gated traffic (the `lab` fixture is in
conftest.py)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

from lab import SERVER4, Lab

# Functional deadlines are generous here (a loaded CI machine); `make bench` reports real latency.
# Traffic that a test must observe while it runs is held open by gates (lab.gate), never timed.
OFFLOAD_WAIT = 20.0

# Sends raw frames (hex, one per line on stdin) out of a device, from inside a namespace
_SEND = ("import socket, sys\n"
         "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
         "s.bind((sys.argv[1], 0))\n"
         "for line in sys.stdin.read().split():\n"
         "    s.send(bytes.fromhex(line))\n")


def send(lab: Lab, ns: str, dev: str, frames: list[bytes]) -> None:
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _SEND, dev],
                   input="\n".join(f.hex() for f in frames), text=True, check=True, timeout=60)


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


def stack_packets(lab: Lab, port: int) -> int:
    """Packets of the connection with this source port that conntrack (the stack) saw."""
    return sum(ct_packets(conntrack_entry(lab, proto, port, fam))
               for proto in ("tcp", "udp") for fam in (4, 6))


def measured_phase(lab: Lab, port: int, proc: subprocess.Popen) -> tuple[int, int]:
    """Opens the "go" gate of an offloaded flow and lets the client send its counted
    messages; returns the packets the fast path and the stack carried meanwhile."""
    fast, stack = lab.stats()["forward"], stack_packets(lab, port)
    lab.open_gate("go")
    lab.wait_at_gate("close", proc)
    return lab.stats()["forward"] - fast, stack_packets(lab, port) - stack


def finish(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=120)
    return json.loads(out)


def long_flow(lab: Lab, proto: str, sport: int, count: int = 600, interval: float = 0.005,
              host: str = SERVER4, **kw: object) -> subprocess.Popen:
    return lab.traffic_bg(lab.client, proto, host, count=count, interval=interval, sport=sport,
                          **kw)


def gated_flow(lab: Lab, proto: str, sport: int, count: int = 1, close: bool = False,
               **kw: object) -> subprocess.Popen:
    """Runs until the test opens the "go" gate, then sends count more messages (and with
    close, waits for the "close" gate before closing)."""
    if close:
        kw["close_after"] = lab.gate("close")
    return long_flow(lab, proto, sport, count=count, warmup_until=lab.gate("go"), **kw)


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
