# SPDX-License-Identifier: GPL-2.0-only
"""Revocation: how long an offloaded flow goes on reaching the server after a drop rule fw4's
model cannot see (issue 11: under 100 ms).

tests/revoke.py's scenario, XDP and TC: a UDP stream (one datagram each 2 ms) offloaded
through the lab router; its conntrack entry deleted and a drop rule inserted, in each order,
in fw4's table, in a table of the user's, or with iptables-nft. The server's sink records
when each datagram arrived (CLOCK_MONOTONIC, shared by the namespaces); the figure is the
last arrival after the command that inserted the rule returned, and how many datagrams
arrived after it (in flight at that moment, or forwarded too long).
"""
from __future__ import annotations

from typing import Any

import revoke
from common import log, summary
from lab import Lab

RUNS = 3
TARGET_MS = 100.0


def _cases() -> list[tuple[str, str, str]]:
    wheres = ["fw4", "user table"] + (["iptables-nft"] if revoke.have_iptables_nft() else [])
    return [(mode, order, where) for mode in ("xdp", "tc") for order in revoke.ORDERS
            for where in wheres]


def run() -> dict[str, Any]:
    cases = []
    for mode, order, where in _cases():
        last_ms, late = [], []
        for _ in range(RUNS):
            with Lab() as lab:
                out = revoke.run(lab, mode, order, where)
            last_ms.append(max(out.late, default=0.0) * 1000)
            late.append(len(out.late))
        cases.append({"mode": mode, "order": order, "where": where,
                      "last_after_rule_ms": summary(last_ms), "datagrams_after_rule": late})
        log(f"  revoke {mode} / {order} / {where}: last datagram "
            f"{max(last_ms):.2f} ms after the rule (worst of {RUNS}), {late} after it")
    worst = max(c["last_after_rule_ms"]["max"] for c in cases)
    return {"cases": cases, "runs": RUNS, "worst_ms": worst, "target_ms": TARGET_MS}
