# SPDX-License-Identifier: GPL-2.0-only
"""What the daemon's netlink layer costs (issue #13), with pyroute2 (its previous codec) beside it.

- RSS of a fresh interpreter after importing the daemon, and after also importing the pyroute2
  modules the daemon used to import (as it was before), bare and pyroute2 alone for scale.
- Decoding one message the kernel sent (a conntrack UPDATE event, a route get reply): our
  decoder vs pyroute2's decode plus the attribute look-ups the daemon made (tests/pyroute2_ref).
- Conntrack lookups in a namespace holding 10k UDP entries (created over ctnetlink, as
  `conntrack -I` does): one request per tuple with each codec, and Conntrack.lookup_many().

    .venv/bin/python bench/netlink_cost.py      # or: bench/run.py netlink
"""
from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from ipaddress import ip_address
from typing import Any, Callable

from common import ROOT, in_netns, log, summary
from netns import netns, sh

from fw_ebpf import conntrack as ctmod
from fw_ebpf import netlink as nl
from fw_ebpf import rtnl
from fw_ebpf.maps import Tuple
from pyroute2_ref import ct_decode, ct_encode, ct_tuple_attrs, route_ref

ENTRIES = 10_000
RUNS = 3
UDP = socket.IPPROTO_UDP
_RSS = ("import sys; {code}; print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0],"
        " 'pyroute2' in sys.modules)")
IMPORTS = {
    "bare interpreter": "pass",
    "pyroute2 alone": "import pyroute2",
    "fw_ebpf.daemon (before: with its pyroute2 modules)":
        "import fw_ebpf.daemon; from pyroute2 import IPRoute, IPRSocket; "
        "import pyroute2.netlink.nfnetlink.nfctsocket",
    "fw_ebpf.daemon": "import fw_ebpf.daemon",
}


def _rss_mb(code: str) -> tuple[float, bool]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-c", _RSS.format(code=code)], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[0]) / 1024, out[1] == "True"


def _per_call_us(fn: Callable[[], Any], n: int) -> float:
    """Best of five rounds of n calls: the cost without the machine's noise on top."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def _tuple(i: int) -> Tuple:
    return Tuple(UDP, ip_address(f"10.{1 + i // 60000}.{i // 250 % 240}.{1 + i % 250}"),
                 ip_address("203.0.113.10"), 10000 + i % 50000, 53)


def _create_entries(tuples: list[Tuple]) -> list[Tuple]:
    """UDP entries with NAT-looking reply tuples, CT_NEW with NLM_F_CREATE in batches."""
    n = len(tuples)
    new = ctmod.NFNL_SUBSYS_CTNETLINK << 8 | ctmod.IPCTNL_MSG_CT_NEW
    with nl.Socket(nl.NETLINK_NETFILTER, "conntrack create", rcvbuf=4 << 20) as sock:
        for i in range(0, n, 500):
            reqs = []
            for t in tuples[i:i + 500]:
                reply = Tuple(UDP, t.daddr, ip_address("198.51.100.1"), t.dport, t.sport)
                body = (bytes([socket.AF_INET, 0, 0, 0]) + ctmod.tuple_nla(t)
                        + ctmod.tuple_nla(reply, ctmod.CTA_TUPLE_REPLY)
                        + nl.attr(ctmod.CTA_TIMEOUT, nl.be32(3600)))
                reqs.append((new, nl.NLM_F_CREATE | nl.NLM_F_EXCL | nl.NLM_F_ACK, body))
            for end in sock.batch(reqs, "create"):
                if end.error:
                    raise sock.error(end.error, "create", end.text)
    return tuples


def _update_event(t: Tuple) -> nl.Message:
    """The UPDATE event the kernel sends when an entry's timeout is changed. The entry is made
    after subscribing: one made before, with only the UPDATE group joined, often sent none
    here (6.18, nf_conntrack_events=2; with DESTROY joined too it always did)."""
    with nl.Socket(nl.NETLINK_NETFILTER, "events", (ctmod.NFNLGRP_CONNTRACK_UPDATE,),
                   blocking=False) as ev, ctmod.Conntrack() as ct:
        _create_entries([t])
        ct.refresh([t], 1800)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            select.select([ev], [], [], 0.5)
            for m in ev.recv() or ():
                e = ctmod.decode_entry(m.data)
                if e is not None and e.orig == t:
                    return m
    raise RuntimeError("no conntrack UPDATE event")


def _pyroute2_lookup(sock: nl.Socket, t: Tuple) -> Any:
    """One GET as the daemon made it before: pyroute2 encodes and decodes."""
    seq = sock.next_seq()
    sock.send(ct_encode(ctmod.IPCTNL_MSG_CT_GET, nl.NLM_F_REQUEST | nl.NLM_F_ACK, seq,
                        socket.AF_INET, [["CTA_TUPLE_ORIG", ct_tuple_attrs(t)]]))
    entry = None
    while True:
        for m in sock.recv() or ():
            if m.seq != seq:
                continue
            if m.type == nl.NLMSG_ERROR:
                return entry
            entry = ct_decode(nl.message(m.type, m.flags, m.seq, m.data))


def _round(tuples: list[Tuple], event: nl.Message, route: nl.Message) -> dict[str, float]:
    whole_event = nl.message(event.type, event.flags, event.seq, event.data)
    whole_route = nl.message(route.type, route.flags, route.seq, route.data)
    assert ctmod.decode_entry(event.data) == ct_decode(whole_event)
    assert rtnl.route_from_msg(route) == route_ref(whole_route)
    out = {
        "ct_event_decode_us_ours": _per_call_us(lambda: ctmod.decode_entry(event.data), 2000),
        "ct_event_decode_us_pyroute2": _per_call_us(lambda: ct_decode(whole_event), 200),
        "route_decode_us_ours": _per_call_us(lambda: rtnl.route_from_msg(route), 2000),
        "route_decode_us_pyroute2": _per_call_us(lambda: route_ref(whole_route), 200),
    }
    with ctmod.Conntrack() as ct:
        t0 = time.perf_counter()
        assert all(ct.lookup(t) is not None for t in tuples)
        out["lookup_per_s_single"] = len(tuples) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        found = list(ct.lookup_many(tuples))
        out["lookup_per_s_batched"] = len(tuples) / (time.perf_counter() - t0)
        assert all(v is not None for v in found)
    with nl.Socket(nl.NETLINK_NETFILTER, "pyroute2 codec") as sock:
        some = tuples[:500]
        t0 = time.perf_counter()
        assert all(_pyroute2_lookup(sock, t) is not None for t in some)
        out["lookup_per_s_single_pyroute2"] = len(some) / (time.perf_counter() - t0)
    return out


def run(runs: int = RUNS) -> dict[str, Any]:
    result: dict[str, Any] = {"entries": ENTRIES, "rss_mb": {}}
    for what, code in IMPORTS.items():
        values = [_rss_mb(code) for _ in range(runs)]
        result["rss_mb"][what] = summary([v for v, _ in values])
        if what == "fw_ebpf.daemon" and any(loaded for _, loaded in values):
            raise RuntimeError("importing fw_ebpf.daemon loads pyroute2")
    with netns(f"ebpfw-nlbench-{os.getpid()}") as ns:
        sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        for dev, addr in (("eth0", "192.168.1.1/24"), ("eth1", "10.0.1.1/24")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "-n", ns, "route", "add", "203.0.113.0/24", "via", "10.0.1.2", "mtu", "1400")
        with in_netns(ns):
            log(f"netlink: creating {ENTRIES} conntrack entries")
            tuples = _create_entries([_tuple(i) for i in range(ENTRIES)])
            event = _update_event(_tuple(ENTRIES))
            iif = int(json.loads(sh("ip", "-n", ns, "-j", "link", "show", "eth0"))[0]["ifindex"])
            with rtnl.Rtnl() as rt:
                route = rt.route_message(ip_address("203.0.113.10"), ip_address("192.168.1.10"),
                                         iif, 0, UDP, 4000, 53)
            rounds = []
            for i in range(runs):
                log(f"netlink: round {i + 1}/{runs}")
                rounds.append(_round(tuples, event, route))
    for key in rounds[0]:
        result[key] = summary([r[key] for r in rounds])
    return result


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("netlink_cost: needs root (network namespaces, ctnetlink)")
    print(json.dumps(run(), indent=1))


if __name__ == "__main__":
    main()
