# SPDX-License-Identifier: GPL-2.0-only
"""A drop rule outside fw4's model against an offloaded stream (issue 11), for tests/test_proof.py
and bench/revoke.py: a UDP stream from the client is offloaded, then the connection is deleted
and a drop rule inserted in some order (in fw4's table, in a table of the user's, or with
iptables-nft); the server's sink records when each datagram arrived."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

from e2e import OFFLOAD_WAIT, finish, flows_of, gated_flow
from lab import SERVER4, TRAFFIC, Lab

PORT = 6000
ORDERS = ("delete, then rule", "rule, then delete", "together")
RULES = {
    "fw4": "nft insert rule inet fw4 forward udp dport 6000 counter drop",
    "user table": "nft -f -",      # a table of the user's, fed on stdin below
    "iptables-nft": "iptables-nft -I FORWARD -p udp --dport 6000 -j DROP",
}
USER_TABLE = """table inet user {
    chain forward {
        type filter hook forward priority filter - 5; policy accept;
        udp dport 6000 counter drop
    }
}
"""
# how long the stream goes on after the rule: arrivals this late would be found
WATCH_S = 2.0


def have_iptables_nft() -> bool:
    return shutil.which("iptables-nft") is not None


@dataclass
class Outcome:
    inserted: float          # CLOCK_MONOTONIC when the rule was in the kernel for sure
    arrivals: list[float]    # when each datagram reached the server (same clock)
    forwarded: int           # packets the fast path forwarded

    @property
    def late(self) -> list[float]:
        """Seconds after the rule of each datagram that still arrived."""
        return [round(t - self.inserted, 4) for t in self.arrivals if t > self.inserted]


def _start_sink(lab: Lab) -> subprocess.Popen:
    proc = lab.spawn(lab.server, sys.executable, str(TRAFFIC), "sink", "--port", str(PORT),
                     "--until", lab.gate("sink"), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _insert_rule(lab: Lab, where: str) -> float:
    cmd = ["ip", "netns", "exec", lab.router, *RULES[where].split()]
    subprocess.run(cmd, input=USER_TABLE if where == "user table" else None, text=True,
                   check=True, capture_output=True)
    return time.monotonic()


def _delete_connection(lab: Lab) -> None:
    lab.sh(lab.router, f"conntrack -D -p udp --dport {PORT}", check=False)


def run(lab: Lab, mode: str, order: str, where: str) -> Outcome:
    """One case on a fresh lab (the rule stays: the caller's lab goes with it)."""
    sink = _start_sink(lab)
    lab.start_daemon(mode=mode)
    sender = gated_flow(lab, "udp", 46000, host=SERVER4, port=PORT, oneway=1, interval=0.002)
    lab.wait_for(lambda: flows_of(lab, PORT), what="the stream offloaded", timeout=OFFLOAD_WAIT)
    # old enough that a record made after the delete is told apart by its age
    before = lab.wait_for(lambda: [f for f in flows_of(lab, PORT) if f["age_s"] >= 0.5],
                          what="the offloaded stream half a second old", timeout=OFFLOAD_WAIT)
    born = time.monotonic() - before[0]["age_s"]
    if order == "delete, then rule":
        # the connection comes back at once (a packet makes it again) and is proved again
        # before the rule: the case that was forwarded for seconds after the rule
        _delete_connection(lab)
        lab.wait_for(lambda: any(time.monotonic() - f["age_s"] > born + 0.25
                                 for f in flows_of(lab, PORT)),
                     what="the stream offloaded again from a new connection",
                     timeout=OFFLOAD_WAIT)
        inserted = _insert_rule(lab, where)
    elif order == "rule, then delete":
        inserted = _insert_rule(lab, where)
        _delete_connection(lab)
    else:   # back to back
        _delete_connection(lab)
        inserted = _insert_rule(lab, where)
    lab.wait_for(lambda: time.monotonic() > inserted + WATCH_S,
                 what="time to see datagrams that should not arrive", timeout=10)
    lab.open_gate("go")
    finish(sender)
    lab.open_gate("sink")
    out, _ = sink.communicate(timeout=60)
    arrived = [t for t, _seq in json.loads(out)["arrivals"]]
    return Outcome(inserted, arrived, lab.stats()["forward"])
