# SPDX-License-Identifier: GPL-2.0-only
"""Contents of fw4's static sets, for deciding `ip saddr @set` style rule matches.

A set is static when fw4 fills it from UCI (`entry`, `loadfile`) and its elements do not
expire (`timeout`). Its contents are the model's entries plus the load file, read the way fw4
reads it (parse_setfile). When the kernel's elements are known too they must be the same
set: anything else means another program (dnsmasq's nftset, a script) changes it at run time,
and such a set stays unknown, as do sets with no entries at all.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from .fw4 import IPSet, PortRange

# one component of an element: an address network (a host is a /32 or /128), a port range,
# or a MAC address (lower case)
Part = ipaddress.IPv4Network | ipaddress.IPv6Network | PortRange | str
Element = tuple[Part, ...]


class SetError(ValueError):
    """An element this module cannot read the way fw4 or nft means it."""


@dataclass(frozen=True)
class SetContents:
    name: str
    types: tuple[str, ...]
    elements: frozenset[Element]

    def contains(self, key: tuple[object, ...]) -> bool:
        return any(all(_part_has(p, k) for p, k in zip(e, key)) for e in self.elements)


def _part_has(part: Part, value: object) -> bool:
    if isinstance(part, PortRange):
        return value in part
    if isinstance(part, str):
        return isinstance(value, str) and value.lower() == part
    return isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)) and \
        value.version == part.version and value in part


def _part(text: str, nft_type: str) -> Part:
    text = text.strip()
    try:
        if nft_type in ("ipv4_addr", "ipv6_addr"):
            net = ipaddress.ip_network(text, strict=False)
            if net.version != (4 if nft_type == "ipv4_addr" else 6):
                raise SetError(f"{text!r} is not an {nft_type}")
            return net
        if nft_type == "inet_service":
            lo, _, hi = text.partition("-")
            return PortRange(int(lo), int(hi or lo))
        if nft_type == "ether_addr":
            return text.lower()
    except ValueError:
        raise SetError(f"{text!r} is not an {nft_type}") from None
    raise SetError(f"set type {nft_type} is not modelled")


def _loadfile_part(value: str, nft_type: str, net: bool) -> Part:
    """fw4.parse_ipsetentry() for one value of a load file line."""
    if nft_type in ("ipv4_addr", "ipv6_addr"):
        addr, slash, bits = value.partition("/")
        if "-" in value or (slash and not bits.isdigit()):
            raise SetError(f"{value!r}: ranges and masks are not modelled")
        # fw4 keeps the prefix only for `net` sets, and the address as written
        return _part(f"{addr}/{bits}" if net and slash else addr, nft_type)
    if nft_type == "inet_service" and not value.isdigit():
        raise SetError(f"{value!r}: fw4 takes single ports only")
    return _part(value, nft_type)


def read_loadfile(ipset: IPSet, text: str) -> set[Element]:
    """fw4's parse_setfile(): one element per line, `#` comments, invalid lines skipped."""
    net = ipset.interval
    out = set()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        values = line.split()
        if len(values) != len(ipset.types):
            continue   # fw4 skips it with a warning
        out.add(tuple(_loadfile_part(v, t, net) for v, t in zip(values, ipset.types)))
    return out


def _kernel_part(value: Any, nft_type: str) -> Part:
    """One component of an element as libnftables prints it in JSON."""
    if isinstance(value, dict) and "prefix" in value:
        p = value["prefix"]
        return _part(f"{p['addr']}/{p['len']}", nft_type)
    if isinstance(value, dict) and "range" in value:
        lo, hi = value["range"]
        if nft_type == "inet_service":
            return PortRange(int(lo), int(hi))
        raise SetError(f"address range {lo}-{hi} is not modelled")
    return _part(str(value), nft_type)


def kernel_elements(elems: Iterable[Any], types: tuple[str, ...]) -> set[Element]:
    out = set()
    for e in elems:
        if isinstance(e, dict) and "elem" in e:
            e = e["elem"]["val"]
        values = e["concat"] if isinstance(e, dict) and "concat" in e else [e]
        if len(values) != len(types):
            raise SetError(f"element {e!r} does not have {len(types)} parts")
        out.add(tuple(_kernel_part(v, t) for v, t in zip(values, types)))
    return out


def static_sets(ipsets: Iterable[IPSet], read: Callable[[str], str],
                kernel: Mapping[str, set[Element] | str] | None = None
                ) -> dict[str, SetContents | str]:
    """name -> contents, or the reason the set is not static. read(path): a load file's text;
    kernel: name -> the kernel's elements (or why they could not be read), None if unknown."""
    out: dict[str, SetContents | str] = {}
    for s in ipsets:
        try:
            out[s.name] = _static(s, read, kernel)
        except (SetError, OSError) as e:
            out[s.name] = f"set '{s.name}': {e}"
    return out


def _static(s: IPSet, read: Callable[[str], str],
            kernel: Mapping[str, set[Element] | str] | None) -> SetContents | str:
    if s.timeout:
        return f"set '{s.name}' has timeouts (filled at run time)"
    if not s.entries and not s.loadfile:
        return f"set '{s.name}' has no entries in UCI (filled at run time)"
    elements = {tuple(_part(v, t) for v, t in zip(e, s.types)) for e in s.entries}
    if s.loadfile:
        elements |= read_loadfile(s, read(s.loadfile))
    if kernel is not None:
        got = kernel.get(s.name, f"set '{s.name}' is not in the kernel's fw4 table")
        if isinstance(got, str):
            return got
        if got != elements:
            return (f"set '{s.name}' in the kernel differs from its UCI entries "
                    f"({len(got)} vs {len(elements)} elements: changed at run time)")
    return SetContents(s.name, s.types, frozenset(elements))
