# SPDX-License-Identifier: GPL-2.0-only
"""The fast path's four flow tables seen as one map.

A key goes to the IPv4 or the IPv6 tables by its length (maps.encode_key), a value to the
decided table (FORWARD, DROP, PASS) or the pending one by its state. The fast path creates
PENDING entries in the pending tables only, so a flood of new tuples can evict PENDING entries
but never a decided one; this class keeps the daemon's PENDING entries there too.
"""
from __future__ import annotations

from typing import Callable, Iterator

from fw_ebpf import maps
from fw_ebpf.libbpf import BpfMap

_STATE = maps.Flow.state.offset


class FlowTables:
    def __init__(self, map_of: Callable[[str], BpfMap]) -> None:
        self._decided = {fam: map_of(names[0]) for fam, names in maps.TABLES.items()}
        self._pending = {fam: map_of(names[1]) for fam, names in maps.TABLES.items()}

    def _pair(self, key: bytes) -> tuple[BpfMap, BpfMap]:
        fam = maps.key_family(key)
        return self._decided[fam], self._pending[fam]

    def lookup(self, key: bytes) -> bytes | None:
        decided, pending = self._pair(key)
        value = decided.lookup(key)
        return value if value is not None else pending.lookup(key)

    def update(self, key: bytes, value: bytes) -> None:
        """Writes the entry to the table its state belongs in and removes it from the other
        (written first, so the fast path never finds neither)."""
        decided, pending = self._pair(key)
        if value[_STATE] == maps.State.PENDING:
            pending.update(key, value)
            decided.delete(key)
        else:
            decided.update(key, value)
            pending.delete(key)

    def delete(self, key: bytes) -> bool:
        decided, pending = self._pair(key)
        return decided.delete(key) | pending.delete(key)

    def keys(self) -> Iterator[bytes]:
        for table in (*self._decided.values(), *self._pending.values()):
            yield from table.keys()

    def lookup_batch(self, batch: int = 256) -> list[tuple[bytes, bytes]]:
        """Every entry, decided ones first. A PENDING entry the fast path wrote while the
        daemon decided the same key is stale: it is removed, not returned."""
        out = [item for table in self._decided.values() for item in table.lookup_batch(batch)]
        decided = {key for key, _ in out}
        for table in self._pending.values():
            for key, value in table.lookup_batch(batch):
                if key in decided:
                    table.delete(key)
                else:
                    out.append((key, value))
        return out
