# SPDX-License-Identifier: GPL-2.0-only
"""The daemon's book of flow-table entries: what each key is, why, and which connection owns it.

Pure bookkeeping, no I/O: the daemon decides, this module remembers, so the indexes (by
connection, by egress device, waiting for conntrack) can never disagree with each other.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from fw_ebpf import maps
from fw_ebpf.conntrack import Direction
from fw_ebpf.maps import KeyInfo, State, Tuple
from fw_ebpf.nexthop import NextHop


@dataclass(slots=True)
class FlowRecord:
    key: bytes
    info: KeyInfo
    state: State = State.PENDING
    reason: str = "new"                 # why it is in this state, for `ebpfw flows`
    ct: Tuple | None = None             # original tuple of the owning conntrack entry
    direction: Direction | None = None
    egress: Tuple | None = None         # tuple after NAT
    mark: int = 0                       # conntrack mark (routing may depend on it)
    nexthop: NextHop | None = None
    tc_only: bool = False
    created: float = field(default_factory=time.monotonic)
    attempts: int = 0                   # conntrack lookups that found nothing
    packets: int = 0                    # BPF counters at the last sweep
    bytes: int = 0
    last_seen_ns: int = 0
    active: bool = False                # carried packets since the previous sweep


class FlowBook:
    """Records by key, plus the indexes the daemon's events need."""

    def __init__(self) -> None:
        self.records: dict[bytes, FlowRecord] = {}
        self._by_ct: dict[Tuple, set[bytes]] = defaultdict(set)
        self._waiting: dict[Tuple, set[bytes]] = defaultdict(set)   # packet tuple -> keys
        # what the fast path carried for entries no longer in the book (status reports totals)
        self.retired_packets = 0
        self.retired_bytes = 0

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, key: bytes) -> bool:
        return key in self.records

    def get(self, key: bytes) -> FlowRecord | None:
        return self.records.get(key)

    def add(self, key: bytes) -> FlowRecord:
        rec = self.records.get(key)
        if rec is None:
            rec = self.records[key] = FlowRecord(key, maps.decode_key(key))
            self._waiting[rec.info.tuple].add(key)
        return rec

    def bind(self, rec: FlowRecord, ct: Tuple, direction: Direction) -> None:
        """Ties a record to its conntrack entry; it no longer waits for one."""
        if rec.ct is not None and rec.ct != ct:
            self._unbind(rec)
        rec.ct, rec.direction = ct, direction
        self._by_ct[ct].add(rec.key)
        self._drop_waiting(rec)

    def _unbind(self, rec: FlowRecord) -> None:
        if rec.ct is None:
            return
        keys = self._by_ct.get(rec.ct)
        if keys is not None:
            keys.discard(rec.key)
            if not keys:
                del self._by_ct[rec.ct]
        rec.ct = None

    def _drop_waiting(self, rec: FlowRecord) -> None:
        keys = self._waiting.get(rec.info.tuple)
        if keys is not None:
            keys.discard(rec.key)
            if not keys:
                del self._waiting[rec.info.tuple]

    def remove(self, key: bytes) -> FlowRecord | None:
        rec = self.records.pop(key, None)
        if rec is not None:
            self.retired_packets += rec.packets
            self.retired_bytes += rec.bytes
            self._unbind(rec)
            self._drop_waiting(rec)
        return rec

    def of_connection(self, ct: Tuple) -> list[FlowRecord]:
        return [self.records[k] for k in self._by_ct.get(ct, ())]

    def waiting_for(self, *tuples: Tuple) -> list[FlowRecord]:
        """Records without a conntrack entry yet whose packets have one of these tuples."""
        return [self.records[k] for t in tuples for k in self._waiting.get(t, ())]

    def in_state(self, *states: State) -> list[FlowRecord]:
        return [r for r in self.records.values() if r.state in states]

    def carried(self) -> tuple[int, int]:
        """Packets and bytes the fast path forwarded for every entry since the book began, as
        of the last sweep (counters of removed entries are kept)."""
        return (self.retired_packets + sum(r.packets for r in self.records.values()),
                self.retired_bytes + sum(r.bytes for r in self.records.values()))

    def counts(self) -> dict[str, int]:
        out = {s.name.lower(): 0 for s in State}
        for rec in self.records.values():
            out[rec.state.name.lower()] += 1
        return out
