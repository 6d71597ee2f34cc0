# SPDX-License-Identifier: GPL-2.0-only
"""DSA switches as sysfs shows them, and where `auto` attaches on a router that has one.

A conduit (the CPU's Ethernet device, eth0) carries the tagged frames of every user port
(lan1.., wan) of its switch: /sys/class/net/<conduit>/dsa/tagging names the tag protocol. A
user port's conduit is its iflink, its port number the N of its phys_port_name "pN". Native
XDP only exists on the conduit's driver, so the fast path attaches there with the object of
the conduit's tag and reads the source port from the tag, unless it cannot (no object for the
tag, a tail tag, a zone split over conduits, frames arriving untagged): then on the user ports.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

SYSFS = "/sys"
# Tags whose frames the fast path leaves to the stack (tail tags are not parsed): their
# conduits are never attached (src/fw_ebpf/dsa.py, build time only, has the full table)
TAIL_TAGS = frozenset({"trailer", "ksz8795", "ksz9477", "ksz9893", "lan937x", "rtl_otto"})


@dataclass(frozen=True)
class UserPort:
    name: str
    ifindex: int
    port: int            # phys_port_name "pN"
    conduit: str


@dataclass(frozen=True)
class Conduit:
    name: str
    ifindex: int
    tag: str             # dsa/tagging
    ports: tuple[UserPort, ...] = ()


def _read(path: Path) -> str | None:
    """A sysfs attribute, None if absent or not supported by the driver (EOPNOTSUPP)."""
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _port_number(name: str | None) -> int | None:
    if name and name[0] == "p" and name[1:].isdigit():
        return int(name[1:])
    return None


def discover(sysfs: str = SYSFS) -> dict[str, Conduit]:
    """Every DSA conduit under sysfs/class/net with its tag protocol and user ports."""
    net = Path(sysfs) / "class" / "net"
    devices: list[tuple[str, int, int]] = []   # name, ifindex, iflink
    tags: dict[int, tuple[str, str]] = {}      # conduit ifindex -> (name, tag)
    for dev in sorted(net.iterdir()) if net.is_dir() else []:
        ifindex, iflink = _read(dev / "ifindex"), _read(dev / "iflink")
        if not (ifindex and ifindex.isdigit()):
            continue
        devices.append((dev.name, int(ifindex), int(iflink) if iflink and iflink.isdigit()
                        else int(ifindex)))
        tag = _read(dev / "dsa" / "tagging")
        if tag:
            tags[int(ifindex)] = (dev.name, tag)
    ports: dict[int, list[UserPort]] = {i: [] for i in tags}
    for name, ifindex, iflink in devices:
        # a VLAN device on the conduit has the same iflink but no phys_port_name
        port = _port_number(_read(net / name / "phys_port_name"))
        if iflink != ifindex and iflink in tags and port is not None:
            ports[iflink].append(UserPort(name, ifindex, port, tags[iflink][0]))
    return {name: Conduit(name, ifindex, tag, tuple(sorted(ports[ifindex], key=lambda p: p.port)))
            for ifindex, (name, tag) in tags.items()}


@dataclass
class Plan:
    """What `auto` attaches on a router with DSA switches."""

    tag: str | None                       # the object's tag protocol (None: the untagged one)
    conduits: tuple[Conduit, ...] = ()    # attached, the tag parsed there
    interfaces: list[str] = field(default_factory=list)   # everything to attach
    notes: dict[str, str] = field(default_factory=dict)   # conduit -> why its user ports

    @property
    def conduit_ifindexes(self) -> tuple[int, ...]:
        return tuple(c.ifindex for c in self.conduits)


def plan(candidates: Iterable[str], switches: Mapping[str, Conduit],
         has_object: Callable[[str], bool], zones: Mapping[str, set[str]] | None = None,
         untagged: Iterable[str] = (), max_conduits: int = 4) -> Plan:
    """Where to attach, from the devices `auto` would take (candidates, in order).

    A conduit replaces its user ports when there is an object for its tag (one tag protocol
    per daemon: the first conduit's by name), its tag is parsed (not a tail tag), its frames
    do not arrive untagged, and every user port of each fw4 zone (zones: name -> lowest
    devices) that has one on this conduit sits on it. Otherwise its user ports are attached
    and the conduit is not: its frames are tagged, nothing there would parse.
    """
    candidates = list(candidates)
    port_of = {p.name: c for c in switches.values() for p in c.ports}
    untagged = set(untagged)
    chosen: str | None = None
    used: list[Conduit] = []
    notes: dict[str, str] = {}
    for c in sorted(switches.values(), key=lambda c: c.name):
        wanted = [p for p in c.ports if p.name in candidates]
        if not wanted and c.name not in candidates:
            continue
        why = _why_not(c, chosen, has_object, zones, port_of, untagged)
        if why is None and len(used) >= max_conduits:
            why = f"more than {max_conduits} conduits"
        if why is not None:
            notes[c.name] = f"{why}: attached to {', '.join(p.name for p in wanted) or 'none'}"
            continue
        chosen = c.tag
        used.append(c)
    on_used = {p.name for c in used for p in c.ports}
    not_used = {c.name for c in switches.values() if c not in used}
    interfaces = [n for n in candidates if n not in on_used and n not in not_used]
    interfaces += [c.name for c in used if c.name not in interfaces]
    return Plan(chosen, tuple(used), interfaces, notes)


def _why_not(c: Conduit, chosen: str | None, has_object: Callable[[str], bool],
             zones: Mapping[str, set[str]] | None, port_of: Mapping[str, Conduit],
             untagged: set[str]) -> str | None:
    """Why conduit c cannot be attached in place of its user ports, or None."""
    if c.name in untagged:
        return f"frames arrive without the {c.tag} tag (taken off in hardware)"
    if c.tag in TAIL_TAGS:
        return f"{c.tag} is a tail tag, which the fast path does not parse"
    if not has_object(c.tag):
        return f"no object for the {c.tag} tag"
    if chosen is not None and c.tag != chosen:
        return f"its tag {c.tag} is not {chosen}, the tag of the object loaded"
    own = {p.name for p in c.ports}
    for zone, devices in sorted((zones or {}).items()):
        ports = {d for d in devices if d in port_of}
        if ports & own and not ports <= own:
            return f"zone {zone} also has user ports of {', '.join(sorted(ports - own))}"
    return None


def zone_devices(zones: Mapping[str, Iterable[str]], links: Iterable[tuple[str, int, int]]
                 ) -> dict[str, set[str]]:
    """The lowest devices of each zone: its devices, bridges replaced by their ports.
    links: (name, ifindex, master ifindex) of every device."""
    links = list(links)
    index = {name: ifindex for name, ifindex, _ in links}
    members: dict[int, list[str]] = {}
    for name, _, master in links:
        if master:
            members.setdefault(master, []).append(name)
    out = {}
    for zone, devices in zones.items():
        lowest: set[str] = set()
        todo = list(devices)
        while todo:
            dev = todo.pop()
            below = members.get(index.get(dev, -1), [])
            if below:
                todo += [d for d in below if d not in lowest]
            else:
                lowest.add(dev)
        out[zone] = lowest
    return out


def object_exists(obj_dir: str, suffix: str) -> Callable[[str], bool]:
    """has_object for plan(): ebpfw-<tag>-<suffix>.o in obj_dir."""
    return lambda tag: os.path.exists(os.path.join(obj_dir, f"ebpfw-{tag}-{suffix}.o"))
