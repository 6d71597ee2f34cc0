# SPDX-License-Identifier: GPL-2.0-only
"""A running daemon seen from outside: /proc/<pid> and its pinned maps, nothing of its insides.

The soak and the flood read the same things: memory, file descriptors, threads, the netlink
sockets' unread bytes (the kernel's own account, /proc/<pid>/net/netlink), the flow tables'
occupancy and the fast path's counters. None of it asks the daemon, so it holds whatever the
daemon's internals become.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fw_ebpf import libbpf, maps

TABLE_NAMES = tuple(name for pair in maps.TABLES.values() for name in pair)
_STATE = maps.Flow.state.offset


@dataclass
class Netlink:
    sockets: int
    unread_bytes: int   # Rmem: bytes queued for the daemon to read, over its netlink sockets
    drops: int          # messages the kernel dropped for a full receive buffer


def proc_status(pid: int) -> dict[str, int]:
    """The kB and count fields of /proc/<pid>/status (VmRSS, VmHWM, Threads, ...)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            out[name] = int(parts[0])
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def netlink(pid: int) -> Netlink:
    """The daemon's netlink sockets (matched by inode to its fds) and what waits on them."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue            # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    lines = Path(f"/proc/{pid}/net/netlink").read_text().splitlines()
    head = lines[0].split()
    col = {name: i for i, name in enumerate(head)}
    n = rmem = drops = 0
    for line in lines[1:]:
        f = line.split()
        if len(f) == len(head) and int(f[col["Inode"]]) in inodes:
            n += 1
            rmem += int(f[col["Rmem"]])
            drops += int(f[col["Drops"]])
    return Netlink(n, rmem, drops)


class PinnedTables:
    """The flow tables and counters a daemon pinned under pin_dir."""

    def __init__(self, pin_dir: str) -> None:
        self.tables = {name: libbpf.open_pinned_map(os.path.join(pin_dir, name))
                       for name in TABLE_NAMES}
        self.stats = libbpf.open_pinned_map(os.path.join(pin_dir, "ebpfw_stats"))

    def close(self) -> None:
        for m in (*self.tables.values(), self.stats):
            m.close()

    def __enter__(self) -> PinnedTables:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def capacity(self) -> dict[str, int]:
        return {name: m.max_entries for name, m in self.tables.items()}

    def counts(self) -> dict[str, int]:
        """Entries per table, and entries per state (pending, proving, forward, drop, pass)."""
        out: dict[str, int] = {}
        for name, m in self.tables.items():
            entries = m.lookup_batch(4096)
            out[name] = len(entries)
            for _, value in entries:
                state = maps.State(value[_STATE]).name.lower()
                out[state] = out.get(state, 0) + 1
        return out

    def entries(self, name: str) -> dict[bytes, bytes]:
        return dict(self.tables[name].lookup_batch(4096))

    def counters(self) -> dict[str, int]:
        return {c.name.lower(): v for c, v in
                maps.sum_stats(self.stats.lookup_percpu(bytes(4))).items()}
