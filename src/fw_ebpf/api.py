# SPDX-License-Identifier: GPL-2.0-only
"""The methods of `ebpfw` (ubus object and control socket): signatures, validation, answers.

Each method declares its arguments the way a C ubus service does (name -> type, all optional);
`Api.call` checks a request against that signature before the handler sees it, so a wrong type
changes nothing and is answered with InvalidArgument. Keys a method does not declare (uhttpd adds
`ubus_rpc_session` to every call) are ignored. Every reply is a JSON object bounded well under
ubusd's 1 MiB message limit: the flow table is paged. The transports (control.py, ubus_api.py)
only carry requests and replies.
"""
from __future__ import annotations

import enum
import json
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from fw_ebpf import maps

if TYPE_CHECKING:
    from fw_ebpf.daemon import Daemon
    from fw_ebpf.flows import FlowRecord

L4_NAMES = {6: "tcp", 17: "udp"}
FLOWS_LIMIT_DEFAULT = 100
FLOWS_LIMIT_MAX = 1000
# ubusd refuses messages over 1 MiB; keep every reply well below, whatever is in it
REPLY_MAX_BYTES = 512 * 1024


class ArgType(enum.Enum):
    """The blobmsg types an argument can have (what the ubus binding declares)."""

    STRING = "string"
    INT = "int32"
    BOOL = "bool"


class InvalidArgument(ValueError):
    """A request the method cannot take: ubus answers UBUS_STATUS_INVALID_ARGUMENT."""


class UnknownMethod(LookupError):
    """ubus answers UBUS_STATUS_METHOD_NOT_FOUND."""


@dataclass(frozen=True)
class Arg:
    type: ArgType
    choices: tuple[str, ...] = ()
    min: int | None = None
    max: int | None = None

    def check(self, name: str, value: Any) -> Any:
        integer = isinstance(value, int) and not isinstance(value, bool)
        # a JSON integer beyond int32 reaches ubus as an int64 attribute: not what is declared
        int32 = integer and -(1 << 31) <= value < 1 << 31
        ok = {ArgType.STRING: isinstance(value, str), ArgType.INT: int32,
              ArgType.BOOL: isinstance(value, bool)}[self.type]
        if not ok:
            given = "int64" if integer and not int32 else type(value).__name__
            raise InvalidArgument(f"argument '{name}' must be of type {self.type.value}, "
                                  f"not {given}")
        if self.choices and value not in self.choices:
            raise InvalidArgument(f"argument '{name}' is '{value}', expected one of "
                                  f"{', '.join(self.choices)}")
        if self.min is not None and value < self.min:
            raise InvalidArgument(f"argument '{name}' must be at least {self.min}")
        if self.max is not None and value > self.max:
            raise InvalidArgument(f"argument '{name}' must be at most {self.max}")
        return value


Handler = Callable[["Daemon", dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Method:
    handler: Handler
    args: dict[str, Arg] = field(default_factory=dict)
    writes: bool = False          # changes state: the rpcd ACL grants it to admins only


# -- handlers -------------------------------------------------------------------------------------

def status(d: Daemon, _args: dict[str, Any]) -> dict[str, Any]:
    counters = d.stats()
    age_ms = d.heartbeat_age_ns() / 1e6
    timeout_ms = d.settings.heartbeat_timeout * 1000
    packets, nbytes = d.book.carried()
    return {
        "uptime": round(time.monotonic() - d.started, 1),
        "interfaces": dict(d.loader.attachments),
        "hooks": _hooks(d),
        "dsa": {"tag": d.dsa.tag, "conduits": [c.name for c in d.dsa.conduits],
                "not_conduits": dict(d.dsa.notes)},
        # the fast path fails open past timeout_ms; pass_reasons.heartbeat counts such packets
        "heartbeat": {"age_ms": round(age_ms, 1), "timeout_ms": timeout_ms},
        "early_drop": d.policy is not None,
        "flows": d.book.counts(),
        "offloaded": {"packets": packets, "bytes": nbytes},
        "counters": {c.name.lower(): v for c, v in counters.items() if not c.is_pass_reason},
        "pass_reasons": {c.name[5:].lower(): v for c, v in counters.items()
                         if c.is_pass_reason and v},
        "last_sweep_ms": round(d.last_sweep_s * 1000, 2),
        "last_sweep_cpu_ms": round(d.upkeep.last_sweep_cpu_s * 1000, 2),
        # flows the sweep found itself: their NEW or PROVED event was shed or lost
        "sweep_recovered": d.upkeep.recovered,
        # new flows waiting for the daemon: in its backlog, for a retry of their lookup (past
        # a bound, new ones wait), the most that ever did, and those the full backlog passed
        # over (taken up later from the pending tables)
        "admission_backlog": {"new": len(d.new_flows), "retrying": d.admission.retrying,
                              "retrying_peak": d.admission.retrying_peak,
                              "passed_over": d.left_pending},
        # flows without a conntrack entry forgotten, oldest first, past what the pending
        # tables hold (a flood of rejected tuples)
        "rejected_forgotten": d.admission.forgotten,
        # first packet seen by the fast path -> FORWARD written / -> PROVING written
        "admission_ms": _percentiles(list(d.admission_ms)),
        "proving_ms": _percentiles(list(d.admission.proving_ms)),
        "fw4_model": d.fw4.status() if d.settings.early_drop else {"state": "early drop off"},
        # every change to the ruleset or to routing starts a generation: flows are proved again
        "generation": {"number": d.tables.gen, "why": d.upkeep.generation_why,
                       "age_s": round(time.monotonic() - d.upkeep.generation_at, 1),
                       "waiting": d.upkeep.stale, "proving": d.tables.proving},
        "settings": {"idle_timeout": d.settings.idle_timeout, "flows_max": d.settings.flows_max,
                     "sweep_interval": d.settings.sweep_interval,
                     "heartbeat_timeout": d.settings.heartbeat_timeout},
    }


def _hooks(d: Daemon) -> list[dict[str, Any]]:
    """Each attached interface: its index (flows name devices by index), hook and how many
    offloaded flow entries enter through it."""
    entering = d.book.ingress_counts(maps.State.FORWARD)
    hooks = []
    for name, mode in sorted(d.loader.attachments.items()):
        try:
            ifindex = socket.if_nametoindex(name)
        except OSError:
            ifindex = 0          # the device went away; the daemon detaches on the link event
        hooks.append({"name": name, "ifindex": ifindex, "mode": mode,
                      "flows": entering.get(ifindex, 0)})
    return hooks


FLOW_SORTS = ("bytes", "packets", "none")


def flows(d: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """One page of the flow table, filtered and sorted; `total` counts every match."""
    state, proto, family = args.get("state"), args.get("proto"), args.get("family")
    limit = args.get("limit", FLOWS_LIMIT_DEFAULT)
    offset = args.get("offset", 0)
    sort = args.get("sort", "bytes")
    recs = [r for r in d.book.records.values()
            if (state is None or r.state.name.lower() == state)
            and (proto is None or L4_NAMES.get(r.info.tuple.l4proto) == proto)
            and (family is None or r.info.tuple.saddr.version == family)]
    if sort != "none":
        recs.sort(key=lambda r: getattr(r, sort), reverse=True)
    now_ns = time.monotonic_ns()
    page = [_flow(d, r, now_ns) for r in recs[offset:offset + limit]]
    return {"total": len(recs), "offset": offset, "limit": limit, "flows": page}


def _flow(d: Daemon, rec: FlowRecord, now_ns: int) -> dict[str, Any]:
    info = rec.info
    t = info.tuple
    item: dict[str, Any] = {
        "state": rec.state.name.lower(),
        "reason": rec.reason,
        "ifindex": info.ifindex,
        "family": t.saddr.version,
        "proto": L4_NAMES.get(t.l4proto, str(t.l4proto)),
        "src": f"{_host(t.saddr)}:{t.sport}",
        "dst": f"{_host(t.daddr)}:{t.dport}",
        "packets": rec.packets,
        "bytes": rec.bytes,
        "age_s": round(max(0.0, time.monotonic() - rec.created), 2),
    }
    if info.vlan != (0, 0):
        item["vlan"] = list(info.vlan)
    if info.pppoe_sid:
        item["pppoe_sid"] = info.pppoe_sid
    if info.dsa_port != maps.NO_DSA_PORT:
        item["dsa_port"] = info.dsa_port
    if rec.direction >= 0:
        item["direction"] = ("original", "reply")[rec.direction]
    if rec.egress is not None:
        out = maps.decode_key(rec.egress).tuple
        if out != t:
            item["nat_src"] = f"{_host(out.saddr)}:{out.sport}"
            item["nat_dst"] = f"{_host(out.daddr)}:{out.dport}"
    raw = d.tables.lookup(rec.key) if rec.state == maps.State.FORWARD else None
    if raw is not None:
        # where and how it leaves, as the kernel was seen sending it
        f = maps.decode_flow(raw)
        item["oif"] = f.oif
        item["dmac"] = bytes(f.l2.dmac).hex(":")
        if f.l2.vlans:
            item["vlan_out"] = [tci & 0x0FFF for tci in f.l2.vlan_tci[:f.l2.vlans]]
        if f.l2.pppoe_sid:
            item["pppoe_sid_out"] = f.l2.pppoe_sid
        if f.l2.dsa_port != maps.NO_DSA_PORT:
            item["dsa_port_out"] = f.l2.dsa_port
        xdp, _tc = d.loader.hooks(info.ifindex)
        item["hook"] = "tc" if f.flags & maps.F_TC_ONLY or not xdp else xdp
    if rec.last_seen_ns:
        item["idle_s"] = round(max(0, now_ns - rec.last_seen_ns) / 1e9, 2)
    return item


def stats(d: Daemon, _args: dict[str, Any]) -> dict[str, Any]:
    return {c.name.lower(): v for c, v in d.stats().items()}


def flush(d: Daemon, _args: dict[str, Any]) -> dict[str, Any]:
    return {"flushed": d.flush()}


def resync(d: Daemon, _args: dict[str, Any]) -> dict[str, Any]:
    return d.resync()


_STATES = tuple(s.name.lower() for s in maps.State)

METHODS: dict[str, Method] = {
    "status": Method(status),
    "flows": Method(flows, {
        "state": Arg(ArgType.STRING, choices=_STATES),
        "proto": Arg(ArgType.STRING, choices=tuple(L4_NAMES.values())),
        "family": Arg(ArgType.INT, min=4, max=6),
        "limit": Arg(ArgType.INT, min=1, max=FLOWS_LIMIT_MAX),
        "offset": Arg(ArgType.INT, min=0),
        "sort": Arg(ArgType.STRING, choices=FLOW_SORTS),
    }),
    "stats": Method(stats),
    "flush": Method(flush, writes=True),
    "resync": Method(resync, writes=True),
}


class Api:
    """The daemon's methods behind one entry point shared by every transport."""

    def __init__(self, daemon: Daemon, methods: dict[str, Method] | None = None) -> None:
        self.daemon = daemon
        self.methods = METHODS if methods is None else methods

    def call(self, name: str, args: dict[str, Any] | None) -> dict[str, Any]:
        method = self.methods.get(name)
        if method is None:
            raise UnknownMethod(f"unknown method '{name}'")
        checked = validate(method, args)
        reply = method.handler(self.daemon, checked)
        return bounded(name, reply)


def validate(method: Method, args: Any) -> dict[str, Any]:
    """The declared arguments of a request, type-checked; undeclared keys are dropped."""
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise InvalidArgument("arguments must be an object")
    checked = {}
    for name, spec in method.args.items():
        if name in args and args[name] is not None:
            checked[name] = spec.check(name, args[name])
    if "family" in checked and checked["family"] not in (4, 6):
        raise InvalidArgument("argument 'family' must be 4 or 6")
    return checked


def bounded(name: str, reply: dict[str, Any]) -> dict[str, Any]:
    """Refuses to send what ubusd would drop: a handler bug must not unregister the object."""
    size = len(json.dumps(reply, separators=(",", ":")))
    if size > REPLY_MAX_BYTES:
        raise RuntimeError(f"{name}: reply of {size} bytes exceeds {REPLY_MAX_BYTES}; "
                           "ask for fewer entries")
    return reply


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
