# SPDX-License-Identifier: GPL-2.0-only
"""What the kernel says about fw4's ruleset and about packet marks, for the policy's facts.

nftables is read through libnftables (ctypes, JSON output: the library `nft` itself uses, in
OpenWrt's nftables-json package), everything else through rtnetlink (fw_ebpf.rtnl), libbpf
and /proc:
- `fw4_table()`: fw4's zone jumps (to check a model against the ruleset the kernel runs),
  the `meta hour` values nft stored, a fingerprint that changes with any change of the table;
- `set_elements()`: the elements of fw4's sets;
- `mark_setters()`: everything that can set a packet's mark before fw4's filter hooks (nft
  `meta mark set` / `ct mark set` / iptables-nft targets / queues in any table, tc actions and
  BPF classifiers on ingress, BPF programs on tcx links, legacy iptables tables) plus
  `ip rule ... fwmark`, which the project treats the same way: a router that routes by mark
  has something marking packets;
- `nft_generation()`: nftables' generation id (NFT_MSG_GETGEN), which moves with every change
  of any table or set, to know when the above must be read again.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Iterator

from . import netlink as nl
from . import nftevents, rtnl
from .fw4sets import Element, SetError, kernel_elements
from .links import link_from_msg

_JSON, _TERSE = 1 << 4, 1 << 11     # NFT_CTX_OUTPUT_* in libnftables.h
# BPF classifiers that belong to ebpfw (loader.py's programs) and set no mark
OWN_BPF_PREFIX = "ebpfw"
# tc actions that cannot change a packet's mark; any other action kind may
_MARKLESS_ACTIONS = frozenset(("gact", "mirred", "police", "vlan", "pedit", "csum", "nat",
                               "mpls", "tunnel_key", "sample", "simple", "skbmod", "gate"))
_AFTER_FILTER_HOOKS = frozenset(("output", "postrouting", "egress"))
_INGRESS_PARENT = 0xFFFFFFF2


class KernelError(OSError):
    """libnftables is missing or refused a command; the message says which."""


class Nft:
    """A libnftables context that answers in JSON."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            raise KernelError(f"libnftables not available: {e}") from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for fn in ("nft_ctx_free", "nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        for fn in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
            getattr(lib, fn).restype = ctypes.c_char_p
        self._lib = lib
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise KernelError("libnftables: cannot create a context")
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)

    def json(self, cmd: str, terse: bool = False) -> list[dict[str, Any]]:
        """The objects of `nft -j [-t] CMD`, metainfo left out."""
        self._lib.nft_ctx_output_set_flags(self._ctx, _JSON | (_TERSE if terse else 0))
        ret = self._lib.nft_run_cmd_from_buffer(self._ctx, cmd.encode())
        out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
        err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        if ret != 0:
            first = (err.decode(errors="replace").strip().splitlines() or ["failed"])[0]
            raise KernelError(f"nft {cmd}: {first}")
        try:
            items = json.loads(out or b'{"nftables": []}')["nftables"]
        except (ValueError, KeyError) as e:
            raise KernelError(f"nft {cmd}: unreadable JSON: {e}") from None
        return [i for i in items if isinstance(i, dict) and "metainfo" not in i]

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> Nft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- fw4's table ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fw4Table:
    zone_devices: dict[str, frozenset[str]]   # zone -> iifnames its input jump rules name
    zone_jumps: dict[str, int]                # zone -> number of input jump rules
    hour_values: frozenset[int]               # `meta hour` values, seconds after UTC midnight
    fingerprint: str


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _hhmm(text: str) -> int:
    parts = [int(x) for x in text.split(":")]
    return parts[0] * 3600 + parts[1] * 60 + (parts[2] if len(parts) > 2 else 0)


@contextlib.contextmanager
def _utc() -> Iterator[None]:
    """libnftables prints `meta hour` values in the process's local time (and nft 1.0.6 gets
    it wrong west of UTC); listed under UTC they come out as stored."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC0"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def fw4_table(nft: Nft) -> Fw4Table | None:
    """fw4's table as the kernel has it, or None when there is none (fw4 is not loaded)."""
    try:
        with _utc():
            items = nft.json("list table inet fw4", terse=True)
    except KernelError as e:
        if "No such file" in str(e) or "does not exist" in str(e):
            return None
        raise
    devices: dict[str, set[str]] = {}
    jumps: dict[str, int] = {}
    hours: set[int] = set()
    for item in items:
        rule = item.get("rule")
        if not rule:
            continue
        exprs = rule.get("expr", [])
        if rule.get("chain") == "input":
            target = next((e["jump"]["target"] for e in exprs if "jump" in e), "")
            if target.startswith("input_"):
                zone = target[len("input_"):]
                jumps[zone] = jumps.get(zone, 0) + 1
                names = devices.setdefault(zone, set())
                for e in exprs:
                    m = e.get("match", {})
                    if m.get("left") == {"meta": {"key": "iifname"}} and m.get("op") == "==":
                        right = m["right"]
                        names.update(right["set"] if isinstance(right, dict) else [right])
        for node in _walk(exprs):
            if isinstance(node, dict) and node.get("left") == {"meta": {"key": "hour"}}:
                right = node.get("right")
                values = right["range"] if isinstance(right, dict) and "range" in right \
                    else [right]
                hours.update(_hhmm(v) for v in values if isinstance(v, str))
    digest = hashlib.sha256(json.dumps(_without_state(items), sort_keys=True).encode())
    return Fw4Table({z: frozenset(d) for z, d in devices.items()}, jumps, frozenset(hours),
                    digest.hexdigest()[:16])


# what changes without the ruleset changing: counters and quotas count, handles are renumbered
_STATE_KEYS = frozenset(("handle", "packets", "bytes", "used"))


def _without_state(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_state(v) for k, v in node.items() if k not in _STATE_KEYS}
    if isinstance(node, list):
        return [_without_state(v) for v in node]
    return node



def set_elements(nft: Nft, name: str, types: tuple[str, ...]) -> set[Element] | str:
    """The elements of set `name` in fw4's table, or why they cannot be read."""
    try:
        items = nft.json(f"list set inet fw4 {name}")
        sets = [i["set"] for i in items if "set" in i]
        return kernel_elements(sets[0].get("elem", []) if sets else [], types)
    except (KernelError, SetError) as e:
        return f"set '{name}': {e}"


# -- mark setters -----------------------------------------------------------------------------

def _sets_mark(stmt: dict[str, Any]) -> bool:
    if "mangle" in stmt:
        key = stmt["mangle"].get("key", {})
        return key.get("meta", {}).get("key") == "mark" or key.get("ct", {}).get("key") == "mark"
    # iptables-nft targets (MARK, CONNMARK...) and userspace queues (verdicts carry a mark)
    return "xt" in stmt or "queue" in stmt


def nft_mark_setters(nft: Nft) -> list[str]:
    """Rules in any table that can set a mark before fw4's filter hooks see the packet."""
    items = nft.json("list ruleset", terse=True)
    hooks = {(c["family"], c["table"], c["name"]): c.get("hook")
             for i in items if (c := i.get("chain"))}
    found = []
    for i in items:
        rule = i.get("rule")
        if not rule:
            continue
        where = (rule["family"], rule["table"], rule["chain"])
        # a regular chain may be jumped to from any hook: counted
        if hooks.get(where) in _AFTER_FILTER_HOOKS:
            continue
        what = f"nft table {where[0]} {where[1]} chain {where[2]} sets a mark"
        if what not in found and any(isinstance(n, dict) and _sets_mark(n)
                                     for n in rule.get("expr", [])):
            found.append(what)
    return found


# The attribute holding a classifier's actions (linux/pkt_cls.h, TCA_<kind>_ACT)
_ACTIONS_ATTR = {"bpf": 1, "cgroup": 1, "matchall": 2, "basic": 3, "flower": 3, "fw": 4,
                 "route": 6, "u32": 7, "flow": 9}
_TCA_BPF_NAME = 7
_TCA_ACT_KIND, _TCA_ACT_OPTIONS = 1, 2
_TCA_SKBEDIT_MARK = 5


def tc_mark_setters(rt: rtnl.Rtnl) -> list[str]:
    """tc filters and actions on ingress (and on ifb devices, where ingress is redirected)
    that can set a mark."""
    found = []
    for link in map(link_from_msg, rt.links()):
        parents = [_INGRESS_PARENT]
        if link.kind == "ifb":
            parents += [handle for handle, _parent, _kind in rt.qdiscs(link.index)]
        for parent in parents:
            filters: list[rtnl.TcFilter] = []
            with contextlib.suppress(nl.NetlinkError):
                filters = rt.filters(link.index, parent)
            for f in filters:
                why = _tc_filter_sets_mark(f)
                if why and f"tc filter on {link.name}: {why}" not in found:
                    found.append(f"tc filter on {link.name}: {why}")
    return found


def _tc_filter_sets_mark(f: rtnl.TcFilter) -> str | None:
    options = nl.attrs(f.options)
    if f.kind == "bpf":
        prog = nl.get_str(options.get(_TCA_BPF_NAME))
        if not prog.startswith(OWN_BPF_PREFIX):
            return f"BPF program {prog or '(unnamed)'} may set the mark"
    if f.kind not in _ACTIONS_ATTR:
        return f"classifier {f.kind}, whose actions are not read here"
    for _order, action in nl.attr_list(options.get(_ACTIONS_ATTR[f.kind], b"")):
        a = nl.attrs(action)
        kind = nl.get_str(a.get(_TCA_ACT_KIND))
        if kind not in _MARKLESS_ACTIONS:
            if kind == "skbedit" and \
                    _TCA_SKBEDIT_MARK not in nl.attrs(a.get(_TCA_ACT_OPTIONS, b"")):
                continue
            return f"action {kind}"
    return None


def tcx_mark_setters(ifindexes: set[int]) -> list[str]:
    """BPF programs on tcx or netkit links (not listed as tc filters) of this namespace's
    devices; link ifindexes carry no namespace, so one elsewhere with the same index counts
    too."""
    from . import libbpf
    found = []
    for info, prog in libbpf.all_links():
        if info.type in (libbpf.BPF_LINK_TYPE_TCX, libbpf.BPF_LINK_TYPE_NETKIT) and \
                info.ifindex in ifindexes and not prog.startswith(OWN_BPF_PREFIX):
            found.append(f"BPF program {prog or '(unnamed)'} on a tcx link of ifindex "
                         f"{info.ifindex} may set the mark")
    return found


def rule_fwmarks(rt: rtnl.Rtnl) -> list[str]:
    return [f"ip rule {r.priority} matches fwmark {r.fwmark:#x}"
            for family in (socket.AF_INET, socket.AF_INET6) for r in rt.rules(family)
            if r.fwmark or r.fwmask]


def legacy_iptables(proc: str = "/proc/net") -> list[str]:
    """Legacy (x_tables) tables in this namespace: their rules cannot be read, so any of them
    may mark."""
    found = []
    for name in ("ip_tables_names", "ip6_tables_names"):
        with contextlib.suppress(OSError), open(os.path.join(proc, name)) as f:
            tables = f.read().split()
            if tables:
                found.append(f"legacy {name.split('_')[0]} tables {', '.join(tables)}")
    return found


def mark_setters(nft: Nft) -> list[str]:
    """Everything on this router (network namespace) that can set or routes by a mark."""
    try:
        with rtnl.Rtnl() as rt:
            ifindexes = {rtnl.IFINFOMSG.unpack_from(m.data)[2] for m in rt.links()}
            return nft_mark_setters(nft) + tc_mark_setters(rt) + \
                tcx_mark_setters(ifindexes) + rule_fwmarks(rt) + legacy_iptables()
    except nl.NetlinkError as e:
        raise KernelError(str(e)) from None


# -- clocks and generations -------------------------------------------------------------------

class _Timezone(ctypes.Structure):
    _fields_ = [("tz_minuteswest", ctypes.c_int), ("tz_dsttime", ctypes.c_int)]


def kernel_minuteswest() -> int:
    """sys_tz.tz_minuteswest, the zone the kernel counts `meta day` in (0 unless set)."""
    libc = ctypes.CDLL(None, use_errno=True)
    tz = _Timezone()
    if libc.gettimeofday(None, ctypes.byref(tz)) != 0:
        raise OSError(ctypes.get_errno(), "gettimeofday")
    return int(tz.tz_minuteswest)


def nft_generation() -> int:
    """nftables' generation id in this network namespace."""
    try:
        return nftevents.generation()
    except nl.NetlinkError as e:
        raise KernelError(str(e)) from None
