# SPDX-License-Identifier: GPL-2.0-only
"""What `ebpfw status|flows|stats|flush|resync` answer, over the control socket or ubus.

Each handler takes the request's arguments and returns plain JSON-able data built from the
daemon's state; the transports (control.py, ubus_api.py) only carry it.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fw_ebpf import maps

if TYPE_CHECKING:
    from fw_ebpf.control import Handler
    from fw_ebpf.daemon import Daemon

L4_NAMES = {6: "tcp", 17: "udp"}


def status(d: Daemon, _args: dict[str, Any]) -> dict[str, Any]:
    counters = d.stats()
    return {
        "uptime": round(time.monotonic() - d.started, 1),
        "interfaces": dict(d.loader.attachments),
        "flows": d.book.counts(),
        "counters": {c.name.lower(): v for c, v in counters.items() if not c.is_pass_reason},
        "pass_reasons": {c.name[5:].lower(): v for c, v in counters.items()
                         if c.is_pass_reason and v},
        "last_sweep_ms": round(d.last_sweep_s * 1000, 2),
        "admission_ms": _percentiles(list(d.admission_ms)),
        "settings": {"idle_timeout": d.settings.idle_timeout, "flows_max": d.settings.flows_max,
                     "sweep_interval": d.settings.sweep_interval,
                     "heartbeat_timeout": d.settings.heartbeat_timeout},
    }


def flows(d: Daemon, args: dict[str, Any]) -> list[dict[str, Any]]:
    wanted = args.get("state")
    out = []
    now_ns = time.monotonic_ns()
    for rec in d.book.records.values():
        if wanted and rec.state.name.lower() != wanted:
            continue
        t = rec.info.tuple
        item: dict[str, Any] = {
            "state": rec.state.name.lower(),
            "reason": rec.reason,
            "ifindex": rec.info.ifindex,
            "proto": L4_NAMES.get(t.l4proto, str(t.l4proto)),
            "src": f"{_host(t.saddr)}:{t.sport}",
            "dst": f"{_host(t.daddr)}:{t.dport}",
            "packets": rec.packets,
            "bytes": rec.bytes,
        }
        if rec.info.vlan != (0, 0):
            item["vlan"] = list(rec.info.vlan)
        if rec.info.pppoe_sid:
            item["pppoe_sid"] = rec.info.pppoe_sid
        if rec.direction is not None:
            item["direction"] = rec.direction.name.lower()
        if rec.egress is not None and rec.egress != t:
            item["nat_src"] = f"{_host(rec.egress.saddr)}:{rec.egress.sport}"
            item["nat_dst"] = f"{_host(rec.egress.daddr)}:{rec.egress.dport}"
        if rec.nexthop is not None:
            item["oif"] = rec.nexthop.oif
            item["dmac"] = rec.nexthop.dmac.hex(":")
            item["hook"] = "tc" if rec.tc_only else "any"
        if rec.last_seen_ns:
            item["idle_s"] = round(max(0, now_ns - rec.last_seen_ns) / 1e9, 2)
        out.append(item)
    return out


def stats(d: Daemon, _args: dict[str, Any]) -> dict[str, int]:
    return {c.name.lower(): v for c, v in d.stats().items()}


def flush(d: Daemon, _args: dict[str, Any]) -> dict[str, int]:
    return {"flushed": d.flush()}


def resync(d: Daemon, _args: dict[str, Any]) -> dict[str, int]:
    return d.resync()


def handlers(d: Daemon) -> dict[str, Handler]:
    return {name: (lambda args, f=f: f(d, args)) for name, f in
            (("status", status), ("flows", flows), ("stats", stats), ("flush", flush),
             ("resync", resync))}


def _percentiles(values: list[float]) -> dict[str, float | int]:
    """p50 / p99 / max of the recent admission latencies, in ms."""
    if not values:
        return {"count": 0}
    values.sort()
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]   # noqa: E731
    return {"count": len(values), "p50": round(pick(0.5), 2), "p99": round(pick(0.99), 2),
            "max": round(values[-1], 2)}


def _host(addr: maps.IPAddress) -> str:
    return f"[{addr}]" if addr.version == 6 else str(addr)
