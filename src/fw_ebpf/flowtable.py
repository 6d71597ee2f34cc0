# SPDX-License-Identifier: GPL-2.0-only
"""The fast path's tables seen as one store: flows, the egress index, the runtime word.

A key goes to the IPv4 or the IPv6 tables by its length (maps.encode_key), a value to the
decided table (PROVING, FORWARD, PASS) or the pending one (PENDING, DROP) by its state. The
fast path creates PENDING entries in the pending tables only, and early drop's verdicts are
on such flows, so a flood of new tuples, dropped or not, can evict PENDING and DROP entries
but never a decided one. The egress index maps the tuple a flow leaves with to its key, for
the proof (ebpfw_egress).

Admission writes decided entries and their egress index a batch at a time: stage() and
index() hold them until flush(), which writes them in one syscall per table, the index first
(the egress program finds a flow through it). Every other access to the flow tables flushes
first, so what is read or written afterwards sees them.
"""
from __future__ import annotations

import struct
import time
from typing import Callable, Iterator

from fw_ebpf import maps
from fw_ebpf.libbpf import BpfMap

_STATE = maps.Flow.state.offset
UNDECIDED = (maps.State.PENDING, maps.State.DROP)     # the states of the pending tables
_LAST_SEEN = struct.Struct("=Q")
_LAST_SEEN_AT = maps.Flow.last_seen_ns.offset


class FlowTables:
    def __init__(self, map_of: Callable[[str], BpfMap], beat_every: float = 0.25) -> None:
        self._decided = {fam: map_of(names[0]) for fam, names in maps.TABLES.items()}
        self._pending = {fam: map_of(names[1]) for fam, names in maps.TABLES.items()}
        self._egress = {fam: map_of(name) for fam, name in maps.EGRESS_TABLES.items()}
        self._runtime = map_of("ebpfw_runtime")
        raw = self._runtime.lookup(bytes(4))
        was = maps.Runtime.from_buffer_copy(raw) if raw else maps.Runtime()
        self.gen, self.proving = was.gen, bool(was.proving)   # what a pinned runtime held
        self.proving_marks = 0      # how often a flow was made to wait for proof
        self.beat_every_ns = int(beat_every * 1e9)
        self.next_beat_ns = 0
        # staged entries by family (the last value of a key wins): decided ones, the keys
        # whose pending entry goes with them, and DROP verdicts (in the pending tables)
        self._staged: dict[int, dict[bytes, bytes]] = {fam: {} for fam in maps.TABLES}
        self._drops: dict[int, dict[bytes, bytes]] = {fam: {} for fam in maps.TABLES}
        self._unpend: dict[int, list[bytes]] = {fam: [] for fam in maps.TABLES}
        self._index: dict[int, dict[bytes, bytes]] = {fam: {} for fam in maps.TABLES}
        self._dirty = False
        # told the key of each flow whose index entry the kernel refused at a flush, and why;
        # what it stages is written in the same flush
        self.on_index_full: Callable[[bytes, str], None] | None = None

    def _pair(self, key: bytes) -> tuple[BpfMap, BpfMap]:
        fam = maps.key_family(key)
        return self._decided[fam], self._pending[fam]

    def stage(self, key: bytes, value: bytes, pending_too: bool = True) -> None:
        """update() of a decided value or a DROP verdict at the next flush(). pending_too
        False: for an entry the decided table holds already, whose pending entry, if the
        fast path wrote one meanwhile, is stale (the sweep removes it)."""
        fam = maps.key_family(key)
        if value[_STATE] == maps.State.DROP:     # over the flow's PENDING entry
            self._drops[fam][key] = value
        else:
            self._staged[fam][key] = value
            if pending_too:
                self._unpend[fam].append(key)
        self._dirty = True

    def unpend(self, key: bytes) -> None:
        """delete_pending() at the next flush, in one batch with the others."""
        self._unpend[maps.key_family(key)].append(key)
        self._dirty = True

    def flush(self) -> None:
        """Writes what was staged: decided entries before the pending ones they replace go,
        so the fast path never finds neither; DROP verdicts over their pending entries."""
        if not self._dirty:
            return
        self._dirty = False
        for fam, index in self._index.items():
            if index:
                items = list(index.items())
                index.clear()
                self._write_index(self._egress[fam], items)
        for fam, staged in self._staged.items():
            if staged:
                items = list(staged.items())
                staged.clear()
                self._decided[fam].update_batch(items)
        for fam, keys in self._unpend.items():
            if keys:
                self._unpend[fam] = []
                self._pending[fam].delete_batch(keys)
        for fam, drops in self._drops.items():
            if drops:
                items = list(drops.items())
                drops.clear()
                self._pending[fam].update_batch(items)

    def lookup(self, key: bytes) -> bytes | None:
        self.flush()
        decided, pending = self._pair(key)
        value = decided.lookup(key)
        return value if value is not None else pending.lookup(key)

    def lookup_pending(self, key: bytes) -> bytes | None:
        self.flush()
        return self._pair(key)[1].lookup(key)

    def update(self, key: bytes, value: bytes) -> None:
        """Writes the entry to the table its state belongs in and removes it from the other
        (written first, so the fast path never finds neither)."""
        self.flush()
        decided, pending = self._pair(key)
        if value[_STATE] in UNDECIDED:
            pending.update(key, value)
            decided.delete(key)
        else:
            decided.update(key, value)
            pending.delete(key)

    def delete(self, key: bytes) -> bool:
        self.flush()
        decided, pending = self._pair(key)
        return decided.delete(key) | pending.delete(key)

    def keys(self) -> Iterator[bytes]:
        self.flush()
        for table in (*self._decided.values(), *self._pending.values()):
            yield from table.keys()

    def pending_entries(self, batch: int = 256) -> Iterator[tuple[bytes, int]]:
        """Every key of the pending tables, with its last_seen (a PENDING entry's is when the
        fast path saw the flow's first packet), a batch read at a time."""
        self.flush()
        for table in self._pending.values():
            for chunk in table.batches(batch):
                for key, value in chunk:
                    yield key, _LAST_SEEN.unpack_from(value, _LAST_SEEN_AT)[0]

    def delete_pending(self, key: bytes) -> bool:
        self.flush()
        return self._pair(key)[1].delete(key)

    def scan(self, batch: int = 256) -> Iterator[tuple[list[tuple[bytes, bytes]], bool]]:
        """Every entry, a batch at a time, decided ones first; with each batch whether it is
        of a pending table. Entries written meanwhile may be missed, moved ones seen twice."""
        for table in self._decided.values():
            self.flush()
            for chunk in table.batches(batch):
                yield chunk, False
                self.flush()
        for table in self._pending.values():
            self.flush()
            for chunk in table.batches(batch):
                yield chunk, True
                self.flush()

    def lookup_batch(self, batch: int = 256) -> list[tuple[bytes, bytes]]:
        """Every entry, decided ones first. A PENDING entry the fast path wrote while the
        daemon decided the same key is stale: it is removed, not returned."""
        self.flush()
        out = [item for table in self._decided.values() for item in table.lookup_batch(batch)]
        decided = {key for key, _ in out}
        for table in self._pending.values():
            for key, value in table.lookup_batch(batch):
                if key in decided:
                    table.delete(key)
                else:
                    out.append((key, value))
        return out

    # -- the egress index -------------------------------------------------------------------

    def index(self, egress: bytes, key: bytes) -> None:
        """The flow with this key leaves with the tuple egress (a maps.tuple_id); written at
        the next flush()."""
        self._index[maps.key_family(egress)][egress] = key
        self._dirty = True

    def unindex(self, egress: bytes) -> None:
        fam = maps.key_family(egress)
        self._index[fam].pop(egress, None)
        self._egress[fam].delete(egress)

    def _write_index(self, table: BpfMap, items: list[tuple[bytes, bytes]]) -> None:
        """The index is as large as the flow table, which a burst can outrun: the batch stops
        at the first entry refused, one at a time from there says which (an update of an entry
        written already is none)."""
        padded = [(egress, key.ljust(maps.KEY6_LEN, b"\0")) for egress, key in items]
        try:
            table.update_batch(padded)
            return
        except OSError:
            if self.on_index_full is None:
                raise
        for (egress, value), (_, key) in zip(padded, items):
            try:
                table.update(egress, value)
            except OSError as e:
                self.on_index_full(key, e.strerror or str(e))

    def indexed(self) -> list[tuple[bytes, bytes]]:
        """(egress tuple_id, key) of every index entry."""
        self.flush()
        out = []
        for fam, table in self._egress.items():
            size = maps.KEY4_LEN if fam == maps.L3_IPV4 else maps.KEY6_LEN
            out += [(egress, key[:size]) for egress, key in table.lookup_batch(256)]
        return out

    def clear(self) -> int:
        """Every flow and index entry gone; how many flow entries there were."""
        self.flush()
        n = 0
        for table in (*self._decided.values(), *self._pending.values(), *self._egress.values()):
            for key in list(table.keys()):
                n += table.delete(key) and table not in self._egress.values()
        return n

    # -- the runtime word the fast path reads once a tick -----------------------------------

    def heartbeat(self) -> None:
        now = time.monotonic_ns()
        self._runtime.update(bytes(4), maps.encode_runtime(now, self.gen, self.proving))
        self.next_beat_ns = now + self.beat_every_ns

    def beat(self) -> None:
        """The heartbeat if it is due: called between the items of any work that can be long
        (a burst, a sweep of a big table), so the fast path never fails open for a busy daemon,
        only for a dead or hung one."""
        if time.monotonic_ns() >= self.next_beat_ns:
            self.heartbeat()

    def new_generation(self) -> int:
        """Every FORWARD and DROP entry of the current generation stops holding (in force one
        tick later on every CPU); the egress program is told to look."""
        self.gen = (self.gen + 1) & 0xFFFFFFFF
        self.proving = True
        self.proving_marks += 1
        self.heartbeat()
        return self.gen

    def set_proving(self, proving: bool) -> None:
        self.proving_marks += proving
        if proving != self.proving:
            self.proving = proving
            self.heartbeat()
