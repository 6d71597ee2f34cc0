# SPDX-License-Identifier: GPL-2.0-only
"""The verdict fw4 would give the first packet of a new flow, from fw4's model.

The model is turned into the chains fw4's templates generate (ruleset.uc, rule.uc,
redirect.uc, zone-jump.uc, zone-verdict.uc), in the same order, and a packet is walked through
them: dstnat (port forwards) first, then input or forward. Each match is yes, no or maybe; a
"maybe" (ipset, mark, time window, limit, MAC, device, anything the model does not represent)
explores both ways. Only when every way ends in the same verdict is that verdict returned;
otherwise the answer is UNKNOWN. DROP therefore only comes out when it is certain.

Not modelled on purpose: ct state (only NEW flows are asked about), the syn_flood rate limit
(a drop that depends on the rate is never reported), drop_invalid (new flows are not invalid).
"""
from __future__ import annotations

import enum
import ipaddress
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence

from .fw4 import (AddrRange, AddrSpec, IPAddress, MaskedAddr, Match, Model, PortRange, Redirect,
                  Rule, SetMatch, Zone, ZoneMatch)
from .fw4sets import SetContents
from .fw4time import nft_hour_values, window_state


class Verdict(enum.Enum):
    ACCEPT = "accept"
    DROP = "drop"
    REJECT = "reject"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    until: float = math.inf     # wall-clock time when a time window the answer used may change


@dataclass(frozen=True)
class TimeView:
    """The router's clock as fw4's nft rules see it."""
    now: Callable[[], float]            # wall clock, seconds since the epoch
    nft_gmtoff: int                     # local UTC offset (s east) when nft loaded the ruleset
    kernel_west: int = 0                # sys_tz.tz_minuteswest: the zone `meta day` counts in
    kernel_hours: frozenset[int] | None = None   # `meta hour` values in fw4's table, if read


@dataclass(frozen=True)
class Facts:
    """What the policy knows beyond fw4's model; the default knows nothing."""
    time: TimeView | None = None
    mark_setter: str | None = "packet marks on the router are not known"   # None: no setter
    # static sets: name -> contents, or why the set is not static
    sets: Mapping[str, SetContents | str] = field(default_factory=dict)


@dataclass(frozen=True)
class Query:
    family: int                      # 4 or 6
    l4proto: int                     # IANA protocol number: 6 tcp, 17 udp, 1 icmp, 58 icmpv6
    saddr: IPAddress
    daddr: IPAddress
    sport: int
    dport: int
    in_device: str                   # the L3 input device (br-lan, eth1...)
    icmp_type: int | None = None


class _T(enum.Enum):
    NO = 0
    YES = 1
    MAYBE = 2


# protocol names fw4 passes to `meta l4proto` / `<proto> dport`
_PROTO_NUMBERS = {
    "icmp": 1, "igmp": 2, "ipencap": 4, "tcp": 6, "egp": 8, "udp": 17, "ipv6": 41,
    "ipv6-route": 43, "ipv6-frag": 44, "rsvp": 46, "gre": 47, "esp": 50, "ah": 51,
    "ipv6-icmp": 58, "ipv6-nonxt": 59, "ipv6-opts": 60, "ospf": 89, "pim": 103, "vrrp": 112,
    "l2tp": 115, "sctp": 132, "udplite": 136, "mpls-in-ip": 137,
}

# what each option the model keeps but the policy cannot evaluate means, for reasons
_UNPARSED_WHAT = {
    "ipset": "an ipset match", "helper": "a ct helper match", "limit": "a rate limit",
    "start_date": "a date window", "stop_date": "a date window", "start_time": "a time window",
    "stop_time": "a time window", "weekdays": "a weekday match", "monthdays": "a monthday match",
    "mark": "a mark match", "dscp": "a dscp match", "smacs_pos": "a MAC match",
    "smacs_neg": "a MAC match", "src_mac": "a MAC match", "iifnames": "a device match",
    "oifnames": "a device match", "device": "a device match", "extra": "extra nft options",
    "log_limit": "a log rate limit",
}


@dataclass(frozen=True)
class _Pkt:
    family: int
    l4proto: int
    saddr: IPAddress
    daddr: IPAddress
    sport: int
    dport: int
    icmp_type: int | None
    iif: str
    oif: str | None
    moment: _Moment
    dnat: str | None = None          # name of the redirect that rewrote the destination


class _Moment:
    """The instant one decision is made at, and the earliest time a window it used changes."""

    def __init__(self, now: float | None) -> None:
        self.now = now
        self.until = math.inf


@dataclass(frozen=True)
class _Nat:
    """A dstnat outcome: the new destination (addr None: the router itself)."""
    addr: IPAddress | None
    port: int | None
    name: str


@dataclass(frozen=True)
class _End:
    """Where one path through the chains ends: a verdict, or None for fell off / returned."""
    verdict: Verdict | None
    reason: str
    notes: tuple[str, ...]
    nat: _Nat | None = None


Matcher = Callable[[_Pkt], tuple[_T, str]]


@dataclass(frozen=True)
class _Line:
    """One nft rule: a match and what happens when it matches."""
    match: Matcher
    verdict: Verdict | None = None   # terminal verdict
    jump: str | None = None          # chain to jump to
    nat: Redirect | None = None      # dstnat statement
    label: str = ""                  # what a verdict reached through this line is called


@dataclass(frozen=True)
class _Chain:
    lines: tuple[_Line, ...]


# -- small matchers ---------------------------------------------------------------------------

def _in_spec(addr: IPAddress, spec: AddrSpec) -> bool:
    return addr in spec


def _masked_ok(addr: IPAddress, m: MaskedAddr) -> bool:
    if addr.version != m.addr.version:
        return False
    hit = (int(addr) & int(m.mask)) == int(m.addr)
    return hit != m.invert


def _in_ports(port: int, ranges: Sequence[PortRange]) -> bool:
    return any(port in r for r in ranges)


def _glob(name: str, pattern: str) -> bool:
    # nft interface wildcards: a trailing '*' matches any suffix
    return name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern


def _proto_number(name: str) -> int | None:
    if name.isdigit():
        return int(name)
    return _PROTO_NUMBERS.get(name)


def _version(spec: AddrSpec | MaskedAddr) -> int:
    if isinstance(spec, MaskedAddr):
        return spec.addr.version
    if isinstance(spec, AddrRange):
        return spec.first.version
    return spec.version


def _addr_ok(addr: IPAddress, pos: Sequence[AddrSpec], neg: Sequence[AddrSpec],
             masked: Sequence[MaskedAddr], family: int) -> bool:
    # `ip saddr X` only matches IPv4 packets, `ip6 saddr X` IPv6 ones
    for specs in (pos, neg, masked):
        if specs and _version(specs[0]) != family:
            return False
    if pos and not any(_in_spec(addr, s) for s in pos):
        return False
    if neg and any(_in_spec(addr, s) for s in neg):
        return False
    return all(_masked_ok(addr, m) for m in masked)


def _zone_match(zm: ZoneMatch, egress: bool) -> Matcher:
    """zone-match.uc: iifname/oifname and saddr/daddr of one zone match rule."""
    def match(p: _Pkt) -> tuple[_T, str]:
        if zm.family and zm.family != p.family:
            return _T.NO, ""
        dev = p.oif if egress else p.iif
        if dev is None:
            if zm.devices_pos or zm.devices_neg or zm.devices_neg_wildcard:
                return _T.MAYBE, "the output device is not known"
        else:
            if zm.devices_pos and not any(_glob(dev, d) for d in zm.devices_pos):
                return _T.NO, ""
            if any(_glob(dev, d) for d in zm.devices_neg + zm.devices_neg_wildcard):
                return _T.NO, ""
        addr = p.daddr if egress else p.saddr
        if not _addr_ok(addr, zm.subnets_pos, zm.subnets_neg, zm.subnets_masked, p.family):
            return _T.NO, ""
        return _T.YES, ""
    return match


def _l4_numbers(family: int, proto_name: str) -> set[int] | None:
    """fw4.l4proto(): `icmp` means both ICMPs unless the rule is IPv6 only (or IPv4)."""
    if proto_name == "icmp":
        return {58} if family == 6 else {1} if family == 4 else {1, 58}
    n = _proto_number(proto_name)
    return None if n is None else {n}


def _rule_match(m: Match, where: str, nat_rule: bool, facts: Facts,
                limited_zone: bool = False) -> Matcher:
    """rule.uc / redirect.uc: the match part of one generated nft rule. limited_zone: the
    chain's zone logs through a rate limit (rule.uc then puts the verdict after it)."""
    unparsed = tuple(m.unparsed)
    if m.proto.invert:
        unparsed += ("proto",)   # fw4 ignores a negated protocol when it emits the rule
    if m.log_limited or (limited_zone and m.logged):
        unparsed += ("log_limit",)
    extra = _extra_matchers(m, facts)

    def match(p: _Pkt) -> tuple[_T, str]:
        if m.family and m.family != p.family:
            return _T.NO, ""
        name = m.proto.name or ""
        if not m.proto.any and not m.has_ports and (nat_rule or not (m.icmp_types or
                                                                     m.icmp_codes)):
            if nat_rule and name == "icmp":
                # redirect.uc writes ipv6-icmp for IPv6 redirects, plain icmp otherwise
                wanted: set[int] | None = {58 if m.family == 6 else 1}
            else:
                wanted = _l4_numbers(m.family, name)
            if wanted is None:
                return _T.MAYBE, f"{where} matches protocol {name!r} (not known here)"
            if p.l4proto not in wanted:
                return _T.NO, ""
        if not _addr_ok(p.saddr, m.saddrs_pos, m.saddrs_neg, m.saddrs_masked, p.family):
            return _T.NO, ""
        if not _addr_ok(p.daddr, m.daddrs_pos, m.daddrs_neg, m.daddrs_masked, p.family):
            return _T.NO, ""
        if m.sports_pos or m.sports_neg or m.dports_pos or m.dports_neg:
            # `tcp dport ...` carries its own protocol dependency
            if _proto_number(name) != p.l4proto:
                return _T.NO, ""
            if m.sports_pos and not _in_ports(p.sport, m.sports_pos):
                return _T.NO, ""
            if m.sports_neg and _in_ports(p.sport, m.sports_neg):
                return _T.NO, ""
            if m.dports_pos and not _in_ports(p.dport, m.dports_pos):
                return _T.NO, ""
            if m.dports_neg and _in_ports(p.dport, m.dports_neg):
                return _T.NO, ""
        maybe = []
        if not nat_rule and (m.icmp_types or m.icmp_codes):
            # rule.uc writes `icmp type` for IPv4 rules and `icmpv6 type` for all others
            if p.l4proto != (1 if m.family == 4 else 58):
                return _T.NO, ""
            if p.icmp_type is None:
                maybe.append("an ICMP type match (the query has no type)")
            elif m.icmp_types and p.icmp_type not in m.icmp_types:
                return _T.NO, ""
            elif m.icmp_codes:
                if p.icmp_type not in {t for t, _ in m.icmp_codes}:
                    return _T.NO, ""
                maybe.append("an ICMP code match (the query has no code)")
        for opt in unparsed:
            maybe.append(_UNPARSED_WHAT.get(opt, f"option {opt!r}"))
        for extra_match in extra:
            t, why = extra_match(p)
            if t is _T.NO:
                return _T.NO, ""
            if t is _T.MAYBE:
                maybe.append(why)
        if maybe:
            return _T.MAYBE, f"{where} has {', '.join(dict.fromkeys(maybe))} (not modelled)"
        return _T.YES, ""
    return match


def _extra_matchers(m: Match, facts: Facts) -> list[Matcher]:
    """Time window, mark and set matches: decided from the facts, else "maybe"."""
    out: list[Matcher] = []
    if m.time is not None:
        tm = m.time
        tv = facts.time
        why_not = None
        if tv is None:
            why_not = "a time window (the clock is not known)"
        elif tv.kernel_hours is not None and not nft_hour_values(tm, tv.nft_gmtoff) <= \
                tv.kernel_hours:
            why_not = "a time window (the kernel's was converted with another UTC offset)"

        def time_match(p: _Pkt) -> tuple[_T, str]:
            if why_not is not None or tv is None or p.moment.now is None:
                return _T.MAYBE, why_not or "a time window"
            state = window_state(tm, p.moment.now, tv.nft_gmtoff, tv.kernel_west)
            p.moment.until = min(p.moment.until, state.until)
            if state.open is None:
                return _T.MAYBE, "a date window within a day of its bound"
            return (_T.YES if state.open else _T.NO), ""
        out.append(time_match)
    if m.mark is not None:
        mk = m.mark
        if facts.mark_setter is None:
            # nothing sets a mark before fw4's filter hooks: every packet has mark 0 there
            hit = ((0 & mk.mask) == mk.mark) != mk.invert
            out.append(lambda p, hit=hit: ((_T.YES if hit else _T.NO), ""))
        else:
            why = f"a mark match ({facts.mark_setter})"
            out.append(lambda p, why=why: (_T.MAYBE, why))
    if m.ipset is not None:
        out.append(_set_matcher(m.ipset, facts.sets.get(m.ipset.name)))
    return out


def _field_value(name: str, p: _Pkt) -> tuple[object, bool]:
    """(value, applies): the packet's value for one of fw4's set match fields; applies False
    when the field's protocol dependency does not hold (the rule cannot match at all)."""
    proto, _, what = name.partition(" ")
    if proto in ("ip", "ip6"):
        if p.family != (4 if proto == "ip" else 6):
            return None, False
        return (p.saddr if what == "saddr" else p.daddr), True
    if proto in ("tcp", "udp"):
        if p.l4proto != (6 if proto == "tcp" else 17):
            return None, False
        return (p.sport if what == "sport" else p.dport), True
    return None, True    # ether saddr and anything else: not in the query


def _set_matcher(sm: SetMatch, contents: SetContents | str | None) -> Matcher:
    def match(p: _Pkt) -> tuple[_T, str]:
        key = []
        for f in sm.fields:
            value, applies = _field_value(f, p)
            if not applies:
                return _T.NO, ""
            key.append(value)
        if not isinstance(contents, SetContents):
            return _T.MAYBE, f"an ipset match ({contents or f'set {sm.name!r} not known'})"
        if any(v is None for v in key):
            return _T.MAYBE, f"an ipset match on {', '.join(sm.fields)} (not in the query)"
        return (_T.YES if contents.contains(tuple(key)) != sm.invert else _T.NO), ""
    return match


def _always(_p: _Pkt) -> tuple[_T, str]:
    return _T.YES, ""


def _dnat_done(p: _Pkt) -> tuple[_T, str]:
    return (_T.YES if p.dnat else _T.NO), ""


def _iif_lo(p: _Pkt) -> tuple[_T, str]:
    return (_T.YES if p.iif == "lo" else _T.NO), ""


_NFT_VERDICT = {"accept": Verdict.ACCEPT, "drop": Verdict.DROP, "reject": Verdict.REJECT}


# -- the chains fw4 generates -----------------------------------------------------------------

def _chain_zone(model: Model, chain: str) -> Zone | None:
    """The zone whose chain this is (input_lan -> lan); rule.uc logs through its limit."""
    kind, _, name = chain.partition("_")
    return model.zone(name) if name and kind in ("input", "output", "forward", "dstnat",
                                                 "srcnat") else None


def _rule_line(rule: Rule, model: Model, facts: Facts) -> _Line:
    where = f"rule '{rule.name}' ({rule.chain})"
    zone = _chain_zone(model, rule.chain)
    match = _rule_match(rule.match, where, nat_rule=False, facts=facts,
                        limited_zone=zone is not None and zone.log_limit)
    if rule.target in ("mark", "dscp", "notrack", "helper"):
        # these never end up in filter chains; if one did, its effect is not modelled
        def unknown(p: _Pkt, m: Matcher = match) -> tuple[_T, str]:
            t, why = m(p)
            return (_T.NO, "") if t is _T.NO else (_T.MAYBE, f"{where} sets {rule.target}")
        return _Line(unknown, verdict=Verdict.UNKNOWN, label=where)
    if rule.jump_chain:
        return _Line(match, jump=rule.jump_chain, label=where)
    if rule.target in _NFT_VERDICT:
        return _Line(match, verdict=_NFT_VERDICT[rule.target], label=where)
    return _Line(match, label=where)   # counter only


def _limited(match: Matcher, why: str) -> Matcher:
    """A match that only holds under a rate limit: "maybe" wherever it would hold."""
    def limited(p: _Pkt) -> tuple[_T, str]:
        t, _ = match(p)
        return (_T.NO, "") if t is _T.NO else (_T.MAYBE, why)
    return limited


def _build(model: Model, facts: Facts) -> dict[str, _Chain]:
    chains: dict[str, list[_Line]] = {}
    d = model.defaults

    def rules(chain: str) -> list[_Line]:
        return [_rule_line(r, model, facts) for r in model.rules.get(chain, ())]

    def zone_jumps(direction: str, zones: Sequence[Zone]) -> list[_Line]:
        return [_Line(_zone_match(zm, egress=False), jump=f"{direction}_{z.name}")
                for z in zones for zm in z.match_rules]

    base_input = [_Line(_iif_lo, verdict=Verdict.ACCEPT, label="loopback input")]
    base_input += rules("input") + zone_jumps("input", model.zones)
    if d.input == "reject":
        base_input.append(_Line(_always, jump="handle_reject", label="defaults input policy"))
    chains["input"] = base_input

    base_forward = rules("forward") + zone_jumps("forward", model.zones)
    if d.forward == "reject":
        base_forward.append(_Line(_always, jump="handle_reject",
                                  label="defaults forward policy"))
    chains["forward"] = base_forward

    chains["handle_reject"] = [_Line(_always, verdict=Verdict.REJECT)]

    chains["dstnat"] = zone_jumps("dstnat", [z for z in model.zones if "dnat" in z.dflags])

    for z in model.zones:
        for direction, verdict_chain in (("input", f"{z.input}_from_{z.name}"),
                                       ("forward", f"{z.forward}_to_{z.name}")):
            lines = rules(f"{direction}_{z.name}")
            if "dnat" in z.dflags:
                lines.append(_Line(_dnat_done, verdict=Verdict.ACCEPT,
                                   label="port forward '{dnat}' (ct status dnat accept "
                                         f"in {direction}_{z.name})"))
            lines.append(_Line(_always, jump=verdict_chain,
                               label=f"zone {z.name} {direction} policy"))
            chains[f"{direction}_{z.name}"] = lines
        for verdict in ("accept", "reject", "drop"):
            for egress, name in ((False, f"{verdict}_from_{z.name}"),
                                 (True, f"{verdict}_to_{z.name}")):
                lines = []
                for zm in z.match_rules:
                    match = _zone_match(zm, egress)
                    if verdict != "accept" and z.log & 1 and z.log_limit:
                        # zone-verdict.uc: the verdict follows `limit name ... log`
                        match = _limited(match, f"zone {z.name} logs its {verdict} verdict "
                                                f"through a rate limit")
                    if verdict == "reject":
                        lines.append(_Line(match, jump="handle_reject"))
                    else:
                        lines.append(_Line(match, verdict=_NFT_VERDICT[verdict]))
                chains[name] = lines
        chains[f"dstnat_{z.name}"] = [
            _Line(_rule_match(r.match, f"redirect '{r.name}' ({r.chain})", nat_rule=True,
                              facts=facts, limited_zone=z.log_limit),
                  nat=r, label=f"redirect '{r.name}' ({r.chain})")
            for r in model.redirects.get(f"dstnat_{z.name}", ())]
    return {name: _Chain(tuple(lines)) for name, lines in chains.items()}


# -- walking the chains -----------------------------------------------------------------------

class _Walker:
    def __init__(self, chains: dict[str, _Chain]) -> None:
        self.chains = chains

    def run(self, chain: str, p: _Pkt, notes: tuple[str, ...], depth: int = 0) -> list[_End]:
        if chain not in self.chains:
            return [_End(Verdict.UNKNOWN, f"jump to chain {chain} that fw4's model lacks",
                         notes)]
        if depth > 16:
            return [_End(Verdict.UNKNOWN, "chain nesting too deep", notes)]
        out: list[_End] = []
        self._walk(self.chains[chain].lines, 0, p, notes, depth, out)
        return out

    def _walk(self, lines: tuple[_Line, ...], i: int, p: _Pkt, notes: tuple[str, ...],
              depth: int, out: list[_End]) -> None:
        while i < len(lines):
            line = lines[i]
            hit, why = line.match(p)
            if hit is _T.NO:
                i += 1
                continue
            if hit is _T.MAYBE:
                # the way where it does not match, then go on as if it did
                self._walk(lines, i + 1, p, notes + (why,), depth, out)
                notes = notes + (why,)
            for end in self._act(line, p, notes, depth):
                if end.verdict is None and end.nat is None:
                    self._walk(lines, i + 1, p, end.notes, depth, out)
                else:
                    out.append(end)
            return
        out.append(_End(None, "", notes))

    def _act(self, line: _Line, p: _Pkt, notes: tuple[str, ...], depth: int) -> list[_End]:
        if line.nat is not None:
            return [self._nat(line.nat, p, notes, line.label)]
        if line.verdict is not None:
            return [_End(line.verdict, line.label.replace("{dnat}", p.dnat or ""), notes)]
        if line.jump is not None:
            ends = self.run(line.jump, p, notes, depth + 1)
            # a verdict found in a verdict chain is named after the line that jumped there
            return [replace(e, reason=e.reason or line.label) if e.verdict else e for e in ends]
        return [_End(None, "", notes)]

    @staticmethod
    def _nat(r: Redirect, p: _Pkt, notes: tuple[str, ...], label: str) -> _End:
        if r.target == "accept":
            return _End(Verdict.ACCEPT, label, notes, nat=_Nat(p.daddr, p.dport, ""))
        port: int | None = p.dport
        if r.rport is not None:
            if r.rport.first != r.rport.last:
                return _End(Verdict.UNKNOWN, f"{label} maps to a port range", notes)
            port = r.rport.first
        if r.target == "redirect":
            return _End(Verdict.ACCEPT, label, notes, nat=_Nat(None, port, r.name))
        if r.target != "dnat" or r.raddr is None:
            return _End(Verdict.UNKNOWN, f"{label} has target {r.target!r}", notes)
        if r.raddr.last is not None:
            return _End(Verdict.UNKNOWN, f"{label} maps to an address range", notes)
        if r.raddr.addr.version != p.family:
            return _End(Verdict.UNKNOWN, f"{label} maps to another address family", notes)
        # fw4.host() writes the address with its prefix applied
        net = ipaddress.ip_network(f"{r.raddr.addr}/{r.raddr.bits}", strict=False)
        return _End(Verdict.ACCEPT, label, notes, nat=_Nat(net.network_address, port, r.name))


class Policy:
    """fw4's verdict for the first packet of a new flow (see the module doc)."""

    def __init__(self, model: Model, is_local: Callable[[IPAddress], bool],
                 out_device: Callable[[IPAddress], str | None], facts: Facts = Facts()) -> None:
        self.model = model
        self.is_local = is_local
        self.out_device = out_device
        self.facts = facts
        self._walker = _Walker(_build(model, facts))
        # notrack rules (raw chains, not in the model) would skip conntrack and with it dstnat
        self._notrack = sorted(z.name for z in model.zones if "notrack" in z.dflags)

    def decide(self, q: Query, now: float | None = None) -> Decision:
        """The verdict for q; `now` (wall clock) overrides the facts' clock for time windows."""
        if now is None and self.facts.time is not None:
            now = self.facts.time.now()
        moment = _Moment(now)
        d = self._decide(q, moment)
        return replace(d, until=moment.until) if d.verdict is not Verdict.UNKNOWN else d

    def _decide(self, q: Query, moment: _Moment) -> Decision:
        if q.family not in (4, 6) or q.saddr.version != q.family or q.daddr.version != q.family:
            return Decision(Verdict.UNKNOWN, f"inconsistent address family in {q}")
        if self._notrack:
            return Decision(Verdict.UNKNOWN, f"zone {', '.join(self._notrack)} has notrack "
                                             f"rules (not in the model)")
        p = _Pkt(q.family, q.l4proto, q.saddr, q.daddr, q.sport, q.dport, q.icmp_type,
                 q.in_device, None, moment)
        ends: list[_End] = []
        for nat in self._walker.run("dstnat", p, ()):
            if nat.verdict is Verdict.UNKNOWN:
                ends.append(nat)
                continue
            ends.extend(self._filter(p, nat))
        return _combine(ends)

    def _filter(self, p: _Pkt, nat: _End) -> list[_End]:
        """Routing after dstnat, then the input or forward chain."""
        if nat.nat is not None and nat.nat.name:
            p = replace(p, dnat=nat.nat.name, dport=nat.nat.port if nat.nat.port is not None
                        else p.dport)
            if nat.nat.addr is not None:
                p = replace(p, daddr=nat.nat.addr)
        local = (nat.nat is not None and nat.nat.name != "" and nat.nat.addr is None) \
            or self.is_local(p.daddr)
        if local:
            chain, policy = "input", self.model.defaults.input
        else:
            oif = self.out_device(p.daddr)
            if oif is None:
                return [_End(Verdict.UNKNOWN, f"no route to {p.daddr}", nat.notes)]
            p = replace(p, oif=oif)
            chain, policy = "forward", self.model.defaults.forward
        ends = []
        for end in self._walker.run(chain, p, nat.notes):
            if end.verdict is None:
                # chain policy: fw4 writes drop for reject (handle_reject came before)
                verdict = Verdict.ACCEPT if policy == "accept" else Verdict.DROP
                end = _End(verdict, f"defaults {chain} policy", end.notes)
            ends.append(end)
        return ends


def _combine(ends: list[_End]) -> Decision:
    verdicts = {e.verdict for e in ends}
    if len(verdicts) == 1 and Verdict.UNKNOWN not in verdicts:
        first = ends[0]
        return Decision(first.verdict, first.reason)  # type: ignore[arg-type]
    notes = list(dict.fromkeys(n for e in ends for n in e.notes))
    unknown = [e.reason for e in ends if e.verdict is Verdict.UNKNOWN]
    # the way that assumed nothing is the last explored: name its deciding rule
    plain = min(ends, key=lambda e: len(e.notes))
    parts = notes + unknown
    what = "; ".join(dict.fromkeys(parts)) or "undecidable"
    if plain.verdict not in (None, Verdict.UNKNOWN) and notes:
        what += f", before deciding {plain.reason}"
    return Decision(Verdict.UNKNOWN, what)
