# SPDX-License-Identifier: GPL-2.0-only
"""The daemon's book of flow-table entries: what each key is, why, and which connection owns it.

Pure bookkeeping, no I/O: the daemon decides, this module remembers, so the indexes (by
connection, by the tuple a flow leaves with, waiting for conntrack) can never disagree with
each other. Tuples are kept packed (maps.tuple_id: the bytes of a key without device fields),
which hash fast and take little room; they are decoded only to be shown or sent to conntrack.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from fw_ebpf import maps
from fw_ebpf.maps import KeyInfo, State


@dataclass(slots=True)
class FlowRecord:
    key: bytes
    state: State = State.PENDING
    reason: str = "new"                 # why it is in this state, for `ebpfw flows`
    conn: bytes | None = None           # tuple_id of the owning connection's original tuple
    direction: int = -1                 # of that connection: 0 original, 1 reply
    egress: bytes | None = None         # tuple_id of the tuple it leaves with (after NAT)
    created: float = field(default_factory=time.monotonic)
    since: float = 0.0                  # PROVING: since when; FORWARD: when it was proved
    first_ns: int = 0                   # fine clock of its first packet (admission latency)
    attempts: int = 0                   # conntrack lookups that found nothing
    packets: int = 0                    # BPF counters at the last sweep
    bytes: int = 0
    last_seen_ns: int = 0

    @property
    def info(self) -> KeyInfo:
        return maps.decode_key(self.key)


class FlowBook:
    """Records by key, plus the indexes the daemon's events need."""

    def __init__(self) -> None:
        self.records: dict[bytes, FlowRecord] = {}
        self._by_conn: dict[bytes, set[bytes]] = defaultdict(set)
        self._by_egress: dict[bytes, bytes] = {}             # egress tuple_id -> key
        self._waiting: dict[bytes, set[bytes]] = defaultdict(set)   # packet tuple_id -> keys
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
            rec = self.records[key] = FlowRecord(key)
            self._waiting[maps.key_tuple_id(key)].add(key)
        return rec

    def bind(self, rec: FlowRecord, conn: bytes, direction: int, egress: bytes) -> None:
        """Ties a record to its conntrack entry and the tuple it leaves with; it no longer
        waits for a connection."""
        self._forget(rec)
        rec.conn, rec.direction, rec.egress = conn, direction, egress
        self._by_conn[conn].add(rec.key)
        self._by_egress[egress] = rec.key

    def _forget(self, rec: FlowRecord) -> None:
        """Takes the record out of every index (its fields stay as they are)."""
        if rec.conn is not None:
            keys = self._by_conn.get(rec.conn)
            if keys is not None:
                keys.discard(rec.key)
                if not keys:
                    del self._by_conn[rec.conn]
        if rec.egress is not None and self._by_egress.get(rec.egress) == rec.key:
            del self._by_egress[rec.egress]
        tid = maps.key_tuple_id(rec.key)
        keys = self._waiting.get(tid)
        if keys is not None:
            keys.discard(rec.key)
            if not keys:
                del self._waiting[tid]

    def remove(self, key: bytes) -> FlowRecord | None:
        """Forgets a record; the caller clears its kernel entries (key, egress) with it."""
        rec = self.records.pop(key, None)
        if rec is not None:
            self.retired_packets += rec.packets
            self.retired_bytes += rec.bytes
            self._forget(rec)
        return rec

    def of_connection(self, conn: bytes) -> list[FlowRecord]:
        return [self.records[k] for k in self._by_conn.get(conn, ())]

    def leaving_as(self, egress: bytes) -> FlowRecord | None:
        """The record that leaves with this tuple (one per connection and direction)."""
        key = self._by_egress.get(egress)
        return None if key is None else self.records.get(key)

    def waiting_for(self, *tuple_ids: bytes) -> list[FlowRecord]:
        """Records without a conntrack entry yet whose packets have one of these tuples."""
        return [self.records[k] for t in tuple_ids for k in self._waiting.get(t, ())]

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
