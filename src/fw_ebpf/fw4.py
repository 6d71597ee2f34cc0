# SPDX-License-Identifier: GPL-2.0-only
"""firewall4's own model, as typed dataclasses.

The ucode hook (ucode/fw4-model.uc) prints what fw4's API returns after `fw4.load(false)`:
defaults, zones, rules and redirects per chain, ipsets (see ../shared/fw4-cases/README.md). The
rules are already fw4's expanded form (one entry per family and protocol, addresses and ports as
the strings fw4 writes into nft), so policy.py can mirror the generated ruleset line by line.

Options the policy cannot evaluate are not dropped silently: every rule and redirect keeps the
names of such options in `unparsed`, and a zone its `dflags`, so the policy can say "unknown".

A model that cannot describe the router is refused here (ModelError naming the zone): fw4 prints
one even when it could not reach ubus or netifd, with zones that match nothing (see
`refuse_broken`). The hook's own additions (key `ebpfw`: what netifd reported, the networks and
zones in UCI) make that check exact; a plain model file gets the conservative version.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HOOK_CMD = ("ucode", "/usr/share/ebpfw/fw4-model.uc")
VERDICTS = ("accept", "reject", "drop")

# options fw4 keeps on a rule or redirect that never change what the nft rule matches or does
# (raw UCI values already folded into the *_pos/_neg fields, logging, counters, NAT reflection
# bookkeeping, values only used by targets that live outside the filter chains)
_INERT = frozenset((
    "chain", "name", "_name", "enabled", "counter", "log", "log_limit", "utc_time", "src_ip",
    "dest_ip", "src_port", "dest_port", "icmp_type", "src_dport", "src_dip", "reflection",
    "reflection_src", "reflection_zone", "limit_burst", "set_mark", "set_xmark", "set_dscp",
    "set_helper", "direction", "ipset", "mark", "start_time", "stop_time", "start_date",
    "stop_date", "weekdays",
))
_PARSED = frozenset((
    "family", "proto", "has_addrs", "has_ports", "saddrs_pos", "saddrs_neg", "saddrs_masked",
    "daddrs_pos", "daddrs_neg", "daddrs_masked", "sports_pos", "sports_neg", "dports_pos",
    "dports_neg", "icmp_types", "icmp_codes", "target", "jump_chain", "src", "dest", "raddr",
    "rport",
))


class ModelError(ValueError):
    """The model JSON is not what fw4 prints; the message names the source and the key."""


@dataclass(frozen=True)
class AddrRange:
    """An address range `a-b` as fw4 writes it."""
    first: IPAddress
    last: IPAddress

    def __contains__(self, addr: object) -> bool:
        return (isinstance(addr, type(self.first))
                and self.first <= addr <= self.last)  # type: ignore[operator]


AddrSpec = IPNetwork | AddrRange


@dataclass(frozen=True)
class MaskedAddr:
    """`saddr & mask == addr` (or `!=` when inverted): fw4's non-contiguous masks."""
    addr: IPAddress
    mask: IPAddress
    invert: bool


@dataclass(frozen=True)
class PortRange:
    first: int
    last: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last


@dataclass(frozen=True)
class Proto:
    name: str | None        # fw4's name: tcp, udp, icmp, ipv6-icmp, esp, a number...
    any: bool = False
    invert: bool = False


@dataclass(frozen=True)
class ZoneMatch:
    """One of a zone's match rules: how fw4 decides a packet belongs to the zone."""
    family: int
    devices_pos: tuple[str, ...] = ()
    devices_neg: tuple[str, ...] = ()
    devices_neg_wildcard: tuple[str, ...] = ()
    subnets_pos: tuple[AddrSpec, ...] = ()
    subnets_neg: tuple[AddrSpec, ...] = ()
    subnets_masked: tuple[MaskedAddr, ...] = ()


@dataclass(frozen=True)
class Zone:
    name: str
    input: str
    output: str
    forward: str
    family: int
    masq: bool
    masq6: bool
    match_rules: tuple[ZoneMatch, ...]
    match_devices: tuple[str, ...]
    match_subnets: tuple[str, ...]
    dflags: frozenset[str]
    sflags: frozenset[str]
    networks: tuple[str, ...] = ()     # UCI networks the zone names (not inverted)
    log: int = 0
    log_limit: bool = False            # zone-verdict.uc: logged verdicts go through a limit


@dataclass(frozen=True)
class TimeMatch:
    """rule.uc's `meta hour`, `meta day` and `meta time` matches, as fw4 writes them.

    Times of day are seconds after local midnight as written in UCI; nft turns them into UTC
    when the ruleset is loaded (policy.py mirrors that). Dates are the local wall-clock moment
    as seconds since the epoch read as if UTC. fw4 ignores `utc_time` and `monthdays` (the
    latter "not supported by fw4"), so neither is here.
    """
    start: int | None = None
    stop: int | None = None
    start_date: int | None = None
    stop_date: int | None = None
    weekdays: frozenset[int] | None = None    # nft numbering: Sunday 0 ... Saturday 6
    weekdays_invert: bool = False


@dataclass(frozen=True)
class MarkMatch:
    """`meta mark and MASK == MARK` (mask 0xffffffff: `meta mark MARK`), `!=` when inverted."""
    mark: int
    mask: int
    invert: bool


@dataclass(frozen=True)
class SetMatch:
    """`FIELD . FIELD @name` (`!=` when inverted); fields as fw4 writes them (`ip saddr`...)."""
    name: str
    invert: bool
    fields: tuple[str, ...]


@dataclass(frozen=True)
class Match:
    """What rule.uc and redirect.uc turn into nft match expressions."""
    family: int
    proto: Proto
    has_addrs: bool
    has_ports: bool
    saddrs_pos: tuple[AddrSpec, ...] = ()
    saddrs_neg: tuple[AddrSpec, ...] = ()
    saddrs_masked: tuple[MaskedAddr, ...] = ()
    daddrs_pos: tuple[AddrSpec, ...] = ()
    daddrs_neg: tuple[AddrSpec, ...] = ()
    daddrs_masked: tuple[MaskedAddr, ...] = ()
    sports_pos: tuple[PortRange, ...] = ()
    sports_neg: tuple[PortRange, ...] = ()
    dports_pos: tuple[PortRange, ...] = ()
    dports_neg: tuple[PortRange, ...] = ()
    icmp_types: tuple[int, ...] = ()
    icmp_codes: tuple[tuple[int, int], ...] = ()
    time: TimeMatch | None = None
    mark: MarkMatch | None = None
    ipset: SetMatch | None = None
    logged: bool = False
    log_limited: bool = False          # logged through a rate limit: rule.uc puts the verdict
    # after `limit ... log`, so over the limit the rule does not match (also the chain zone's)
    unparsed: tuple[str, ...] = ()     # present options this model does not represent


@dataclass(frozen=True)
class Rule:
    name: str
    chain: str
    match: Match
    target: str | None              # accept, drop, reject, (mark, dscp, notrack, helper)
    jump_chain: str | None          # accept_to_lan, reject_from_wan, handle_reject...
    src: str | None                 # zone name, "*" for any, None when absent
    dest: str | None


@dataclass(frozen=True)
class NatAddr:
    addr: IPAddress
    bits: int
    last: IPAddress | None = None   # set for a range: the kernel picks, we cannot know


@dataclass(frozen=True)
class Redirect:
    name: str
    chain: str
    match: Match
    target: str                     # dnat, redirect, snat, masquerade, accept
    raddr: NatAddr | None
    rport: PortRange | None
    src: str | None
    dest: str | None


@dataclass(frozen=True)
class Defaults:
    input: str
    output: str
    forward: str
    flow_offloading: bool
    drop_invalid: bool
    synflood_protect: bool


@dataclass(frozen=True)
class IPSet:
    name: str
    family: int
    types: tuple[str, ...]                  # nft types: ipv4_addr, ipv6_addr, inet_service...
    entries: tuple[tuple[str, ...], ...] = ()   # one tuple per element, as fw4 prints them
    loadfile: str | None = None
    timeout: bool = False                   # elements expire: contents change at run time
    interval: bool = False                  # `net` entries (prefixes)


@dataclass(frozen=True)
class HookFacts:
    """What the project's hook adds beside fw4's model (key `ebpfw`); absent in plain files."""
    netifd: frozenset[str]        # networks netifd reported (fw4's state.networks)
    uci_networks: frozenset[str]  # interface sections in /etc/config/network
    uci_zones: int                # enabled zone sections in /etc/config/firewall


@dataclass(frozen=True)
class Model:
    defaults: Defaults
    zones: tuple[Zone, ...]
    rules: dict[str, tuple[Rule, ...]]
    redirects: dict[str, tuple[Redirect, ...]]
    ipsets: tuple[IPSet, ...]
    hook: HookFacts | None = None

    def zone(self, name: str) -> Zone | None:
        return next((z for z in self.zones if z.name == name), None)

    def ipset(self, name: str) -> IPSet | None:
        return next((s for s in self.ipsets if s.name == name), None)


# -- parsing ----------------------------------------------------------------------------------

class _Ctx:
    """Where we are in the JSON, for error messages: `model.json: rules.input_wan[3].proto`."""

    def __init__(self, source: str, path: str = "") -> None:
        self.source, self.path = source, path

    def at(self, key: str | int) -> _Ctx:
        sep = "" if not self.path or isinstance(key, int) else "."
        part = f"[{key}]" if isinstance(key, int) else key
        return _Ctx(self.source, f"{self.path}{sep}{part}")

    def fail(self, problem: str) -> ModelError:
        return ModelError(f"{self.source}: {self.path or '(top level)'}: {problem}")


def _obj(ctx: _Ctx, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ctx.fail(f"expected an object, got {type(value).__name__}")
    return value


def _list(ctx: _Ctx, value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ctx.fail(f"expected a list, got {type(value).__name__}")
    return value


def _str(ctx: _Ctx, value: Any) -> str:
    if not isinstance(value, str):
        raise ctx.fail(f"expected a string, got {type(value).__name__}")
    return value


def _req(ctx: _Ctx, obj: dict[str, Any], key: str) -> Any:
    if key not in obj:
        raise ctx.at(key).fail("missing")
    return obj[key]


def _family(ctx: _Ctx, value: Any) -> int:
    if value is None:
        return 0
    if value not in (0, 4, 6):
        raise ctx.fail(f"family must be 0, 4 or 6, not {value!r}")
    return int(value)


def _policy(ctx: _Ctx, value: Any) -> str:
    if value not in VERDICTS:
        raise ctx.fail(f"policy must be one of {', '.join(VERDICTS)}, not {value!r}")
    return str(value)


def _addr(ctx: _Ctx, value: Any) -> IPAddress:
    try:
        return ipaddress.ip_address(_str(ctx, value))
    except ValueError:
        raise ctx.fail(f"not an IP address: {value!r}") from None


def _addr_spec(ctx: _Ctx, value: Any) -> AddrSpec:
    """fw4.cidr() output: `a.b.c.d`, `net/len`, `a-b`."""
    text = _str(ctx, value)
    try:
        if "-" in text:
            first, last = (ipaddress.ip_address(p) for p in text.split("-", 1))
            if first.version != last.version or first > last:  # type: ignore[operator]
                raise ValueError
            return AddrRange(first, last)
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ctx.fail(f"not an address, network or range: {text!r}") from None


def _addr_specs(ctx: _Ctx, value: Any) -> tuple[AddrSpec, ...]:
    return tuple(_addr_spec(ctx.at(i), v) for i, v in enumerate(_list(ctx, value)))


def _masked(ctx: _Ctx, value: Any) -> tuple[MaskedAddr, ...]:
    out = []
    for i, item in enumerate(_list(ctx, value)):
        c = ctx.at(i)
        obj = _obj(c, item)
        out.append(MaskedAddr(_addr(c.at("addr"), _req(c, obj, "addr")),
                              _addr(c.at("mask"), _req(c, obj, "mask")),
                              bool(obj.get("invert"))))
    return tuple(out)


def _port(ctx: _Ctx, value: Any) -> PortRange:
    text = str(value) if isinstance(value, int) else _str(ctx, value)
    try:
        first, _, last = text.partition("-")
        lo, hi = int(first), int(last or first)
    except ValueError:
        raise ctx.fail(f"not a port or port range: {text!r}") from None
    if not 0 <= lo <= hi <= 65535:
        raise ctx.fail(f"not a port or port range: {text!r}")
    return PortRange(lo, hi)


def _ports(ctx: _Ctx, value: Any) -> tuple[PortRange, ...]:
    return tuple(_port(ctx.at(i), v) for i, v in enumerate(_list(ctx, value)))


def _port_obj(ctx: _Ctx, value: Any) -> PortRange | None:
    """A parsed port object ({min, max}) as fw4 keeps rport."""
    if value is None:
        return None
    obj = _obj(ctx, value)
    try:
        lo, hi = int(_req(ctx, obj, "min")), int(_req(ctx, obj, "max"))
    except (TypeError, ValueError):
        raise ctx.fail("min/max must be integers") from None
    if not 0 <= lo <= hi <= 65535:
        raise ctx.fail(f"bad port range {lo}-{hi}")
    return PortRange(lo, hi)


def _proto(ctx: _Ctx, value: Any) -> Proto:
    obj = _obj(ctx, value)
    if obj.get("any"):
        return Proto(None, any=True, invert=bool(obj.get("invert")))
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise ctx.at("name").fail("protocol without a name")
    return Proto(name.lower(), invert=bool(obj.get("invert")))


def _zone_ref(ctx: _Ctx, value: Any) -> str | None:
    if value is None:
        return None
    obj = _obj(ctx, value)
    if obj.get("any"):
        return "*"
    zone = _obj(ctx.at("zone"), _req(ctx, obj, "zone"))
    return _str(ctx.at("zone").at("name"), _req(ctx.at("zone"), zone, "name"))


def _icmp_codes(ctx: _Ctx, value: Any) -> tuple[tuple[int, int], ...]:
    out = []
    for i, item in enumerate(_list(ctx, value)):
        try:
            t, c = (int(p) for p in _str(ctx.at(i), item).split("."))
        except ValueError:
            raise ctx.at(i).fail(f"expected 'type . code', got {item!r}") from None
        out.append((t, c))
    return tuple(out)


_DAYS = {"Sunday": 0, "Monday": 1, "Tuesday": 2, "Wednesday": 3, "Thursday": 4, "Friday": 5,
         "Saturday": 6}


def _int(ctx: _Ctx, obj: dict[str, Any], key: str, default: int | None = None) -> int:
    value = obj.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ctx.at(key).fail(f"expected an integer, got {value!r}")
    return value


def _time_of_day(ctx: _Ctx, value: Any) -> int | None:
    """fw4.parse_time(): {hour, min, sec} -> seconds after midnight."""
    if value is None:
        return None
    obj = _obj(ctx, value)
    h, m, sec = (_int(ctx, obj, k, 0) for k in ("hour", "min", "sec"))
    if not (0 <= h <= 23 and 0 <= m <= 59 and 0 <= sec <= 59):
        raise ctx.fail(f"not a time of day: {h}:{m}:{sec}")
    return h * 3600 + m * 60 + sec


def _date(ctx: _Ctx, value: Any) -> int | None:
    """fw4.parse_date(): {year, month, day, hour, min, sec} -> seconds, the wall clock as UTC."""
    if value is None:
        return None
    obj = _obj(ctx, value)
    try:
        moment = datetime.datetime(_int(ctx, obj, "year"), _int(ctx, obj, "month", 1),
                                   _int(ctx, obj, "day", 1), _int(ctx, obj, "hour", 0),
                                   _int(ctx, obj, "min", 0), _int(ctx, obj, "sec", 0),
                                   tzinfo=datetime.timezone.utc)
    except ValueError as e:
        raise ctx.fail(f"not a date: {e}") from None
    return int(moment.timestamp())


def _time_match(ctx: _Ctx, obj: dict[str, Any]) -> TimeMatch | None:
    days = None
    invert = False
    if obj.get("weekdays") is not None:
        w = _obj(ctx.at("weekdays"), obj["weekdays"])
        names = _list(ctx.at("weekdays").at("days"), w.get("days"))
        try:
            days = frozenset(_DAYS[str(d)] for d in names)
        except KeyError as e:
            raise ctx.at("weekdays").fail(f"not a weekday: {e.args[0]!r}") from None
        invert = bool(w.get("invert"))
    t = TimeMatch(start=_time_of_day(ctx.at("start_time"), obj.get("start_time")),
                  stop=_time_of_day(ctx.at("stop_time"), obj.get("stop_time")),
                  start_date=_date(ctx.at("start_date"), obj.get("start_date")),
                  stop_date=_date(ctx.at("stop_date"), obj.get("stop_date")),
                  weekdays=days, weekdays_invert=invert)
    return None if t == TimeMatch() else t


def _mark_match(ctx: _Ctx, value: Any) -> MarkMatch | None:
    if value is None:
        return None
    obj = _obj(ctx, value)
    mark, mask = _int(ctx, obj, "mark"), _int(ctx, obj, "mask", 0xFFFFFFFF)
    if not (0 <= mark <= 0xFFFFFFFF and 0 <= mask <= 0xFFFFFFFF):
        raise ctx.fail(f"mark/mask out of range: {mark:#x}/{mask:#x}")
    return MarkMatch(mark, mask, bool(obj.get("invert")))


def _set_match(ctx: _Ctx, value: Any) -> SetMatch | None:
    if value is None:
        return None
    obj = _obj(ctx, value)
    fields = tuple(_str(ctx.at("fields").at(i), f)
                   for i, f in enumerate(_list(ctx.at("fields"), obj.get("fields"))))
    if not fields:
        raise ctx.at("fields").fail("set match without fields")
    return SetMatch(_str(ctx.at("name"), _req(ctx, obj, "name")), bool(obj.get("invert")),
                    fields)


def _zone_log_limit(value: Any) -> bool:
    zone = value.get("zone") if isinstance(value, dict) else None
    return isinstance(zone, dict) and _present(zone.get("log_limit"))


def _present(value: Any) -> bool:
    return value is not None and value is not False and value != [] and value != {}


def _match(ctx: _Ctx, obj: dict[str, Any]) -> Match:
    unparsed = tuple(sorted(k for k, v in obj.items()
                            if k not in _INERT and k not in _PARSED and _present(v)))
    icmp_types = []
    for i, t in enumerate(_list(ctx.at("icmp_types"), obj.get("icmp_types"))):
        if not isinstance(t, int):
            raise ctx.at("icmp_types").at(i).fail(f"expected an integer, got {t!r}")
        icmp_types.append(t)
    return Match(
        family=_family(ctx.at("family"), obj.get("family")),
        proto=_proto(ctx.at("proto"), _req(ctx, obj, "proto")),
        has_addrs=bool(obj.get("has_addrs")),
        has_ports=bool(obj.get("has_ports")),
        saddrs_pos=_addr_specs(ctx.at("saddrs_pos"), obj.get("saddrs_pos")),
        saddrs_neg=_addr_specs(ctx.at("saddrs_neg"), obj.get("saddrs_neg")),
        saddrs_masked=_masked(ctx.at("saddrs_masked"), obj.get("saddrs_masked")),
        daddrs_pos=_addr_specs(ctx.at("daddrs_pos"), obj.get("daddrs_pos")),
        daddrs_neg=_addr_specs(ctx.at("daddrs_neg"), obj.get("daddrs_neg")),
        daddrs_masked=_masked(ctx.at("daddrs_masked"), obj.get("daddrs_masked")),
        sports_pos=_ports(ctx.at("sports_pos"), obj.get("sports_pos")),
        sports_neg=_ports(ctx.at("sports_neg"), obj.get("sports_neg")),
        dports_pos=_ports(ctx.at("dports_pos"), obj.get("dports_pos")),
        dports_neg=_ports(ctx.at("dports_neg"), obj.get("dports_neg")),
        icmp_types=tuple(icmp_types),
        icmp_codes=_icmp_codes(ctx.at("icmp_codes"), obj.get("icmp_codes")),
        time=_time_match(ctx, obj),
        mark=_mark_match(ctx.at("mark"), obj.get("mark")),
        ipset=_set_match(ctx.at("ipset"), obj.get("ipset")),
        logged=_present(obj.get("log")),
        log_limited=_present(obj.get("log")) and (
            _present(obj.get("log_limit")) or _zone_log_limit(obj.get("src"))
            or _zone_log_limit(obj.get("dest"))),
        unparsed=unparsed,
    )


def _opt_str(ctx: _Ctx, value: Any) -> str | None:
    return None if value is None else _str(ctx, value)


def _rule(ctx: _Ctx, value: Any, chain: str) -> Rule:
    obj = _obj(ctx, value)
    name = _str(ctx.at("name"), obj.get("name") or "(unnamed)")
    if obj.get("chain", chain) != chain:
        raise ctx.at("chain").fail(f"rule listed under {chain} says chain {obj['chain']!r}")
    return Rule(name=name, chain=chain, match=_match(ctx, obj),
                target=_opt_str(ctx.at("target"), obj.get("target")),
                jump_chain=_opt_str(ctx.at("jump_chain"), obj.get("jump_chain")),
                src=_zone_ref(ctx.at("src"), obj.get("src")),
                dest=_zone_ref(ctx.at("dest"), obj.get("dest")))


def _nat_addr(ctx: _Ctx, value: Any) -> NatAddr | None:
    if value is None:
        return None
    obj = _obj(ctx, value)
    addr = _addr(ctx.at("addr"), _req(ctx, obj, "addr"))
    bits = obj.get("bits", addr.max_prefixlen)
    if not isinstance(bits, int):
        raise ctx.at("bits").fail(f"expected an integer, got {bits!r}")
    last = _addr(ctx.at("addr2"), obj["addr2"]) if obj.get("range") else None
    return NatAddr(addr, bits, last)


def _redirect(ctx: _Ctx, value: Any, chain: str) -> Redirect:
    obj = _obj(ctx, value)
    return Redirect(name=_str(ctx.at("name"), obj.get("name") or "(unnamed)"), chain=chain,
                    match=_match(ctx, obj),
                    target=_str(ctx.at("target"), _req(ctx, obj, "target")),
                    raddr=_nat_addr(ctx.at("raddr"), obj.get("raddr")),
                    rport=_port_obj(ctx.at("rport"), obj.get("rport")),
                    src=_zone_ref(ctx.at("src"), obj.get("src")),
                    dest=_zone_ref(ctx.at("dest"), obj.get("dest")))


def _zone_match(ctx: _Ctx, value: Any) -> ZoneMatch:
    obj = _obj(ctx, value)

    def names(key: str) -> tuple[str, ...]:
        return tuple(_str(ctx.at(key).at(i), v) for i, v in enumerate(_list(ctx.at(key),
                                                                            obj.get(key))))
    return ZoneMatch(family=_family(ctx.at("family"), obj.get("family")),
                     devices_pos=names("devices_pos"), devices_neg=names("devices_neg"),
                     devices_neg_wildcard=names("devices_neg_wildcard"),
                     subnets_pos=_addr_specs(ctx.at("subnets_pos"), obj.get("subnets_pos")),
                     subnets_neg=_addr_specs(ctx.at("subnets_neg"), obj.get("subnets_neg")),
                     subnets_masked=_masked(ctx.at("subnets_masked"),
                                            obj.get("subnets_masked")))


def _zone_networks(ctx: _Ctx, value: Any) -> tuple[str, ...]:
    """The networks a zone names: UCI's `network` list (`val`) and those netifd assigned to
    it (`device` only), inverted ones left out."""
    out = []
    for i, item in enumerate(_list(ctx, value)):
        n = _obj(ctx.at(i), item)
        if not n.get("invert"):
            out.append(_str(ctx.at(i), n.get("val", n.get("device"))))
    return tuple(out)


def _flags(ctx: _Ctx, value: Any) -> frozenset[str]:
    return frozenset(k for k, v in _obj(ctx, value or {}).items() if v)


def _zone(ctx: _Ctx, value: Any) -> Zone:
    obj = _obj(ctx, value)
    name = _str(ctx.at("name"), _req(ctx, obj, "name"))

    def strs(key: str) -> tuple[str, ...]:
        return tuple(_str(ctx.at(key).at(i), v)
                     for i, v in enumerate(_list(ctx.at(key), obj.get(key))))
    return Zone(name=name,
                input=_policy(ctx.at("input"), _req(ctx, obj, "input")),
                output=_policy(ctx.at("output"), _req(ctx, obj, "output")),
                forward=_policy(ctx.at("forward"), _req(ctx, obj, "forward")),
                family=_family(ctx.at("family"), obj.get("family")),
                masq=bool(obj.get("masq")), masq6=bool(obj.get("masq6")),
                match_rules=tuple(_zone_match(ctx.at("match_rules").at(i), m) for i, m in
                                  enumerate(_list(ctx.at("match_rules"),
                                                  _req(ctx, obj, "match_rules")))),
                match_devices=strs("match_devices"), match_subnets=strs("match_subnets"),
                dflags=_flags(ctx.at("dflags"), obj.get("dflags")),
                sflags=_flags(ctx.at("sflags"), obj.get("sflags")),
                networks=_zone_networks(ctx.at("network"), obj.get("network")),
                log=obj.get("log") if isinstance(obj.get("log"), int) else 0,
                log_limit=_present(obj.get("log_limit")))


def _defaults(ctx: _Ctx, value: Any) -> Defaults:
    obj = _obj(ctx, value)
    return Defaults(input=_policy(ctx.at("input"), _req(ctx, obj, "input")),
                    output=_policy(ctx.at("output"), _req(ctx, obj, "output")),
                    forward=_policy(ctx.at("forward"), _req(ctx, obj, "forward")),
                    flow_offloading=bool(obj.get("flow_offloading")),
                    drop_invalid=bool(obj.get("drop_invalid")),
                    synflood_protect=bool(obj.get("synflood_protect")))


def _ipset(ctx: _Ctx, value: Any) -> IPSet:
    obj = _obj(ctx, value)
    types = tuple(str(t) for t in _list(ctx.at("types"), obj.get("types")))
    entries = []
    for i, e in enumerate(_list(ctx.at("entries"), obj.get("entries"))):
        c = ctx.at("entries").at(i)
        entry = tuple(str(v) for v in _list(c, e))
        if len(entry) != len(types):
            raise c.fail(f"{len(entry)} values for {len(types)} types")
        entries.append(entry)
    flags = [str(f) for f in _list(ctx.at("flags"), obj.get("flags"))]
    timeout = obj.get("timeout")
    return IPSet(_str(ctx.at("name"), _req(ctx, obj, "name")),
                 _family(ctx.at("family"), obj.get("family")), types, tuple(entries),
                 _opt_str(ctx.at("loadfile"), obj.get("loadfile")),
                 timeout="timeout" in flags or (isinstance(timeout, int) and timeout >= 0),
                 interval=bool(obj.get("interval")) or "interval" in flags)


def _hook_facts(ctx: _Ctx, value: Any) -> HookFacts | None:
    if value is None:
        return None
    obj = _obj(ctx, value)

    def names(key: str) -> frozenset[str]:
        return frozenset(_str(ctx.at(key).at(i), v)
                         for i, v in enumerate(_list(ctx.at(key), _req(ctx, obj, key))))
    return HookFacts(names("netifd"), names("uci_networks"), _int(ctx, obj, "uci_zones"))


def _per_chain(ctx: _Ctx, value: Any, parse: Any) -> dict[str, tuple[Any, ...]]:
    out = {}
    for chain, items in _obj(ctx, value or {}).items():
        c = ctx.at(chain)
        out[chain] = tuple(parse(c.at(i), item, chain) for i, item in enumerate(_list(c, items)))
    return out


def parse_model(obj: dict[str, Any], source: str = "fw4 model") -> Model:
    """The model from the decoded JSON object; ModelError names the offending key."""
    top = _Ctx(source)
    obj = _obj(top, obj)
    for key in ("defaults", "zones", "rules", "redirects", "ipsets"):
        _req(top, obj, key)
    model = Model(defaults=_defaults(top.at("defaults"), obj["defaults"]),
                  zones=tuple(_zone(top.at("zones").at(i), z)
                              for i, z in enumerate(_list(top.at("zones"), obj["zones"]))),
                  rules=_per_chain(top.at("rules"), obj["rules"], _rule),
                  redirects=_per_chain(top.at("redirects"), obj["redirects"], _redirect),
                  ipsets=tuple(_ipset(top.at("ipsets").at(i), s)
                               for i, s in enumerate(_list(top.at("ipsets"), obj["ipsets"]))),
                  hook=_hook_facts(top.at("ebpfw"), obj.get("ebpfw")))
    refuse_broken(model, source)
    return model


def refuse_broken(model: Model, source: str) -> None:
    """ModelError when the model cannot be the router's firewall: fw4 ran without ubus or
    before netifd answered (zones that resolve to nothing), or read no configuration."""
    hook = model.hook
    if not model.zones:
        had = f" (UCI has {hook.uci_zones})" if hook is not None else ""
        if hook is None or hook.uci_zones:
            raise ModelError(f"{source}: fw4's model has no zones{had}: refusing an empty model")
    for z in model.zones:
        if hook is not None:
            # exact: a network UCI declares that netifd did not report
            missing = [n for n in z.networks if n in hook.uci_networks and n not in hook.netifd]
            if missing:
                raise ModelError(f"{source}: zone '{z.name}': netifd reported no network "
                                 f"{', '.join(repr(n) for n in missing)} (ubus or netifd not "
                                 f"answering)")
        elif z.networks and not (z.match_rules or z.match_devices or z.match_subnets):
            raise ModelError(f"{source}: zone '{z.name}': networks "
                             f"{', '.join(repr(n) for n in z.networks)} resolve to no device "
                             f"and no subnet (ubus or netifd not answering?)")


def missing_devices(model: Model, exists: Callable[[str], bool]) -> str | None:
    """The model's device lists name nothing on this router (fw4 fell back to network names,
    or read another router's state): an error message, or None.

    One zone's devices missing is normal (a guest bridge not created, a VPN down) and harmless:
    the kernel's rules name the same absent devices (checked against the kernel separately).
    """
    per_zone = {z.name: sorted({d for m in z.match_rules for d in m.devices_pos})
                for z in model.zones}
    named = {d for devices in per_zone.values() for d in devices}
    if not named or any(d.endswith("*") or exists(d) for d in named):
        return None
    listing = "; ".join(f"zone '{z}': {', '.join(d)}" for z, d in per_zone.items() if d)
    return f"no device the zones name exists on this router ({listing})"


def _decode(text: str, source: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelError(f"{source}: not JSON: {e.msg} at line {e.lineno} column {e.colno}") \
            from None
    if not isinstance(obj, dict):
        raise ModelError(f"{source}: (top level): expected an object, got {type(obj).__name__}")
    return obj


def load_model(path: str | Path) -> Model:
    """The model from a JSON file (a case's model.json, or the hook's output saved)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ModelError(f"{path}: {e.strerror or e}") from None
    return parse_model(_decode(text, str(path)), str(path))


def model_from_hook(cmd: Sequence[str] = HOOK_CMD, timeout: float = 30) -> Model:
    """Runs the ucode hook on a router and parses what it prints."""
    source = " ".join(cmd)
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ModelError(f"{source}: cannot run: {e}") from None
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"{source}: exit status {res.returncode}: {last}")
    trouble = hook_trouble(res.stderr)
    if trouble:
        raise ModelError(f"{source}: fw4 said: {trouble}")
    return parse_model(_decode(res.stdout, source), source)


def hook_trouble(stderr: str) -> str | None:
    """The first line fw4 wrote to stderr that is not a configuration warning, or None.

    fw4 prefixes warnings about its configuration with `[!] ` (they change nothing the model
    says: fw4 builds the ruleset from the same state); everything else it writes there is a
    failure that leaves the model incomplete: `Unable to connect to ubus`, an unreadable set
    file, unparsable nft output.
    """
    for line in stderr.splitlines():
        text = line.strip()
        if text and not text.startswith(("[!] ", "\x1b[33m[!] ")):
            return text
    return None
