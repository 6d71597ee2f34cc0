# SPDX-License-Identifier: GPL-2.0-only
"""The daemon's book of flow-table entries: what each key is, why, and which connection owns it.

Pure bookkeeping, no I/O: the daemon decides, this module remembers, so the indexes (by
connection, by the tuple a flow leaves with, waiting for conntrack) can never disagree with
each other. Tuples are kept packed (maps.tuple_id: the bytes of a key without device fields),
which hash fast and take little room; they are decoded only to be shown or sent to conntrack.

A router holds tens of thousands of connections, so the book is a compact table, not an object
per flow: each field is a column (an array of machine numbers, or a list of shared objects)
indexed by the flow's slot, and a connection's two directions are two slots of its own row.
FlowRecord is a view of one slot, made when asked for; it compares equal to another view of
the same entry.
"""
from __future__ import annotations

import time
from array import array
from collections import Counter
from operator import attrgetter
from typing import Iterator

from fw_ebpf import maps
from fw_ebpf.maps import KeyInfo, State

_NONE = -1


def _column(name: str, doc: str) -> property:
    column = attrgetter(name)   # read on every access of every field: no getattr by name

    def get(rec: FlowRecord) -> object:
        return column(rec.book)[rec.slot]

    def put(rec: FlowRecord, value: object) -> None:
        column(rec.book)[rec.slot] = value
    return property(get, put, doc=doc)


class FlowRecord:
    """One entry of the book (a view: its fields live in the book's columns)."""

    __slots__ = ("book", "slot", "key")

    def __init__(self, book: FlowBook, slot: int, key: bytes) -> None:
        self.book, self.slot, self.key = book, slot, key

    state = _column("_state", "")
    reason = _column("_reason", "why it is in this state, for `ebpfw flows`")
    created = _column("_created", "")
    since = _column("_since", "PROVING: since when; FORWARD: when it was proved")
    first_ns = _column("_first_ns", "fine clock of its first packet (admission latency)")
    attempts = _column("_attempts", "conntrack lookups that found nothing")
    packets = _column("_packets", "BPF counters at the last sweep")
    bytes = _column("_bytes", "")
    last_seen_ns = _column("_last_seen", "")
    swept = _column("_swept", "the last sweep cycle that saw its entry")

    @property
    def conn(self) -> bytes | None:
        """tuple_id of the owning connection's original tuple."""
        row = self.book._conn_of[self.slot]
        return None if row == _NONE else self.book._conn_ids[row]

    @property
    def direction(self) -> int:
        """Of that connection: 0 original, 1 reply, -1 none."""
        return self.book._direction[self.slot]

    @property
    def egress(self) -> bytes | None:
        """tuple_id of the tuple it leaves with (after NAT), while bound to a connection: the
        reverse of the other direction's arriving tuple."""
        other = self.other_arrives
        return None if other is None else maps.reverse_id(other)

    @property
    def other_arrives(self) -> bytes | None:
        """tuple_id of the tuple the other direction of its connection arrives with."""
        book = self.book
        row = book._conn_of[self.slot]
        if row == _NONE:
            return None
        return book._conn_reply[row] if book._direction[self.slot] == 0 else book._conn_ids[row]

    @property
    def info(self) -> KeyInfo:
        return maps.decode_key(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FlowRecord) and other.book is self.book and \
            other.slot == self.slot and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"FlowRecord({self.key.hex()}, {self.state.name})"


class _Records:
    """The book as a mapping key -> FlowRecord (read-only)."""

    def __init__(self, book: FlowBook) -> None:
        self._book = book

    def __len__(self) -> int:
        return len(self._book._slots)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._book._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._book._slots

    def __getitem__(self, key: bytes) -> FlowRecord:
        return FlowRecord(self._book, self._book._slots[key], key)

    def get(self, key: bytes) -> FlowRecord | None:
        return self._book.get(key)

    def keys(self) -> Iterator[bytes]:
        return iter(self._book._slots)

    def values(self) -> Iterator[FlowRecord]:
        book = self._book
        return (FlowRecord(book, slot, key) for key, slot in list(book._slots.items()))

    def items(self) -> Iterator[tuple[bytes, FlowRecord]]:
        return ((rec.key, rec) for rec in self.values())


class FlowBook:
    """Records by key, plus the indexes the daemon's events need."""

    def __init__(self) -> None:
        self._slots: dict[bytes, int] = {}                  # key -> slot
        self._free: list[int] = []
        # the columns, one item per slot
        self._keys: list[bytes | None] = []
        self._state: list[State | None] = []
        self._reason: list[str] = []
        self._conn_of = array("i")                          # the connection's row, or -1
        self._direction = array("b")
        self._attempts = array("H")
        self._swept = array("I")
        self._created = array("d")
        self._since = array("d")
        self._first_ns = array("q")
        self._last_seen = array("q")
        self._packets = array("Q")
        self._bytes = array("Q")
        # connections: a row each, with the slots of its two directions
        self._conn_rows: dict[bytes, int] = {}
        self._conn_ids: list[bytes | None] = []
        self._conn_reply: list[bytes | None] = []           # conntrack's reply tuple_id
        self._conn_flows = array("i")                       # 2 per row: direction 0, 1
        self._conn_expiry = array("d")      # when conntrack's timeout of it ends (0: not known)
        self._conn_free: list[int] = []
        # packet tuple_id -> slots of the records without a connection yet (a tuple, not a
        # set: a burst holds tens of thousands, nearly all alone with their tuple)
        self._waiting: dict[bytes, tuple[int, ...]] = {}
        self.records = _Records(self)
        # what the fast path carried for entries no longer in the book (status reports totals)
        self.retired_packets = 0
        self.retired_bytes = 0

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: bytes) -> bool:
        return key in self._slots

    def get(self, key: bytes) -> FlowRecord | None:
        slot = self._slots.get(key)
        return None if slot is None else FlowRecord(self, slot, key)

    def holds(self, rec: FlowRecord) -> bool:
        """Whether rec is still in the book (not removed, its slot not reused)."""
        return self._slots.get(rec.key) == rec.slot

    def add(self, key: bytes) -> FlowRecord:
        slot = self._slots.get(key)
        if slot is not None:
            return FlowRecord(self, slot, key)
        if self._free:
            slot = self._free.pop()
            self._keys[slot], self._state[slot] = key, maps.PENDING
            self._reason[slot] = "new"
            self._conn_of[slot], self._direction[slot] = _NONE, -1
            self._created[slot] = time.monotonic()
        else:
            slot = len(self._keys)
            self._keys.append(key)
            self._state.append(maps.PENDING)
            self._reason.append("new")
            self._conn_of.append(_NONE)
            self._direction.append(-1)
            self._created.append(time.monotonic())
            for column in (self._attempts, self._swept, self._since, self._first_ns,
                           self._last_seen, self._packets, self._bytes):
                column.append(0)
        self._slots[key] = slot
        tid = maps.key_tuple_id(key)
        self._waiting[tid] = self._waiting.get(tid, ()) + (slot,)
        return FlowRecord(self, slot, key)

    def bind(self, rec: FlowRecord, conn: bytes, direction: int, egress: bytes) -> None:
        """Ties a record to its conntrack entry and the tuple it leaves with; it no longer
        waits for a connection."""
        slot = rec.slot
        self._forget(slot)
        row = self._conn_rows.get(conn)
        if row is None:
            if self._conn_free:
                row = self._conn_free.pop()
                self._conn_ids[row] = conn
                self._conn_reply[row] = None
                self._conn_expiry[row] = 0.0
            else:
                row = len(self._conn_ids)
                self._conn_ids.append(conn)
                self._conn_reply.append(None)
                self._conn_flows.extend((_NONE, _NONE))
                self._conn_expiry.append(0.0)
            self._conn_rows[conn] = row
        other = self._conn_flows[2 * row + direction]
        if other != _NONE and other != slot:    # not two records for one direction
            self._conn_of[other], self._direction[other] = _NONE, -1
        self._conn_flows[2 * row + direction] = slot
        self._conn_of[slot], self._direction[slot] = row, direction
        # conntrack's reply tuple: what direction 1 arrives with, direction 0 leaves reversed
        self._conn_reply[row] = maps.reverse_id(egress) if direction == 0 else \
            maps.key_tuple_id(rec.key)

    def _forget(self, slot: int) -> None:
        """Takes the record out of every index (its fields stay as they are)."""
        key = self._keys[slot]
        row = self._conn_of[slot]
        if row != _NONE:
            pair = 2 * row
            if self._conn_flows[pair + self._direction[slot]] == slot:
                self._conn_flows[pair + self._direction[slot]] = _NONE
            if self._conn_flows[pair] == _NONE and self._conn_flows[pair + 1] == _NONE:
                conn = self._conn_ids[row]
                assert conn is not None
                del self._conn_rows[conn]
                self._conn_ids[row] = self._conn_reply[row] = None
                self._conn_free.append(row)
            self._conn_of[slot] = _NONE
        assert key is not None
        tid = maps.key_tuple_id(key)
        slots = self._waiting.get(tid)
        if slots is not None and slot in slots:
            rest = tuple(s for s in slots if s != slot)
            if rest:
                self._waiting[tid] = rest
            else:
                del self._waiting[tid]

    def remove(self, key: bytes) -> FlowRecord | None:
        """Forgets a record; the caller clears its kernel entries (key, egress) with it.
        The view returned holds none of its fields any more."""
        slot = self._slots.pop(key, None)
        if slot is None:
            return None
        self.retired_packets += self._packets[slot]
        self.retired_bytes += self._bytes[slot]
        self._forget(slot)
        self._keys[slot] = self._state[slot] = None
        self._reason[slot] = ""
        for column in (self._attempts, self._swept, self._since, self._first_ns,
                       self._last_seen, self._packets, self._bytes):
            column[slot] = 0
        self._free.append(slot)
        return FlowRecord(self, slot, key)

    def sweep_note(self, key: bytes, cycle: int, packets: int, nbytes: int, last_seen: int) \
            -> tuple[FlowRecord, State, bool] | None:
        """The sweep saw the entry of key in cycle with these counters: the record, its state
        and whether it carried anything since the last look (None: no such record)."""
        slot = self._slots.get(key)
        if slot is None:
            return None
        self._swept[slot] = cycle
        active = packets != self._packets[slot]
        self._packets[slot], self._bytes[slot], self._last_seen[slot] = packets, nbytes, last_seen
        state = self._state[slot]
        assert state is not None
        return FlowRecord(self, slot, key), state, active

    def of_connection(self, conn: bytes) -> list[FlowRecord]:
        row = self._conn_rows.get(conn)
        if row is None:
            return []
        keys = self._keys
        return [FlowRecord(self, s, k) for s in self._conn_flows[2 * row:2 * row + 2]
                if s != _NONE and (k := keys[s]) is not None]

    def ct_expiry(self, conn: bytes) -> float:
        """When conntrack's timeout of this connection ends, as last set (monotonic clock;
        0: a connection the book has no record of, or whose timeout it was not told)."""
        row = self._conn_rows.get(conn)
        return 0.0 if row is None else self._conn_expiry[row]

    def set_ct_expiry(self, conn: bytes, when: float) -> None:
        """For a connection a record is bound to (else nothing to keep it with)."""
        row = self._conn_rows.get(conn)
        if row is not None:
            self._conn_expiry[row] = when

    def bound(self, conn: bytes, direction: int) -> FlowRecord | None:
        """The record of this direction of the connection: the one that leaves with its
        egress tuple (the tuple is conntrack's, one per connection and direction)."""
        row = self._conn_rows.get(conn)
        if row is None:
            return None
        slot = self._conn_flows[2 * row + direction]
        key = self._keys[slot] if slot != _NONE else None
        return None if key is None else FlowRecord(self, slot, key)

    def waiting_for(self, *tuple_ids: bytes) -> list[FlowRecord]:
        """Records without a conntrack entry yet whose packets have one of these tuples."""
        keys = self._keys
        return [FlowRecord(self, s, keys[s]) for t in tuple_ids  # type: ignore[arg-type]
                for s in self._waiting.get(t, ())]

    def in_state(self, *states: State) -> list[FlowRecord]:
        keys = self._keys
        return [FlowRecord(self, slot, keys[slot])  # type: ignore[arg-type]
                for slot, state in enumerate(self._state) if state in states]

    def ingress_counts(self, state: State) -> Counter[int]:
        """How many records in this state enter through each device (ifindex)."""
        keys = self._keys
        return Counter(maps.key_ifindex(keys[slot])  # type: ignore[arg-type]
                       for slot, s in enumerate(self._state) if s is state)

    def not_swept(self, cycle: int, before: float) -> list[bytes]:
        """Keys of records created before `before` that sweep cycle `cycle` did not see."""
        swept, created = self._swept, self._created
        return [key for key, slot in self._slots.items()
                if swept[slot] != cycle and created[slot] < before]

    def carried(self) -> tuple[int, int]:
        """Packets and bytes the fast path forwarded for every entry since the book began, as
        of the last sweep (counters of removed entries are kept)."""
        return self.retired_packets + sum(self._packets), self.retired_bytes + sum(self._bytes)

    def counts(self) -> dict[str, int]:
        out = {s.name.lower(): 0 for s in State}
        for state, n in Counter(self._state).items():
            if state is not None:
                out[state.name.lower()] = n
        return out
