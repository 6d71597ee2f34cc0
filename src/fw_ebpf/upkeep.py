# SPDX-License-Identifier: GPL-2.0-only
"""Upkeep: what keeps the flow table true between admissions.

- The sweep, once a sweep_interval: counters and last-seen times into the book, idle flows
  out, conntrack timeouts of carried flows refreshed, undecided and expired entries out, flows
  that never got their proof handed back, the heartbeat the fast path fails open without.
- Generations: any change to the ruleset (nftables, any table, any family), to routing, to a
  device a flow uses or to a neighbour's or bridge port's address starts a new one. Every
  FORWARD and DROP entry then passes until the kernel forwards one of its packets again, which
  the egress program sees and proves in place; early-drop verdicts are made again.
- Adoption of entries the daemon does not know: a restarted daemon's pinned tables, and
  PENDING entries whose NEW event the fast path shed or lost.
"""
from __future__ import annotations

import itertools
import logging
import socket
import struct
import time
from typing import Callable, Container, Iterator

from fw_ebpf import maps
from fw_ebpf.admission import Admission
from fw_ebpf.conntrack import Conntrack
from fw_ebpf.flows import FlowBook
from fw_ebpf.flowtable import UNDECIDED, FlowTables
from fw_ebpf.links import RtEvent
from fw_ebpf.maps import DROP, FORWARD, PASS, PENDING, PROVING, State

log = logging.getLogger("fw_ebpf.upkeep")

# A PENDING or PASS entry nobody could admit is removed after this, so a later packet asks again
PENDING_TTL = 10.0
# PENDING entries the sweep adopts without having heard of them (shed or lost events), at most
# (one batch of conntrack lookups); catch_up shares the allowance until the next sweep. It
# bounds the lookups spent on tuples the kernel has no connection for (a flood): a lookup that
# finds one gives its share back, so a burst of real connections is taken up as fast as the
# daemon can
ADOPT_PER_SWEEP = 4096
# A PROVING flow the kernel forwarded none of for this long says so (it goes when idle)
PROOF_SLOW = 3.0
# A sweep_interval's slice reads about SWEEP_SLICE entries (bounded CPU a sweep_interval; a
# bigger table takes several), SWEEP_STEP at a time (one map batch): the daemon admits new
# flows between two steps, so a flow arriving meanwhile waits one step, not a whole slice
SWEEP_SLICE = 4096
SWEEP_STEP = 1024
BATCH = 4096    # entries read at once when all of a table is read (catch_up, readopt)
_GEN = struct.Struct("=I")
LINK_VIEW = ("name", "MAC", "MTU", "state", "master", "VLAN id", "parent",
             "VLAN filtering")   # links.Link.fast_path_view
_GEN_OFFSET = maps.Flow.gen.offset


class Upkeep:
    def __init__(self, book: FlowBook, tables: FlowTables, admission: Admission,
                 conntrack: Conntrack, idle_timeout: Callable[[], float],
                 on_sweep: Callable[[], None]) -> None:
        self.book, self.tables, self.admission, self.conntrack = book, tables, admission, conntrack
        self._idle_timeout = idle_timeout
        self._on_sweep = on_sweep
        self.last_sweep_s = 0.0
        self.last_sweep_cpu_s = 0.0         # of it, CPU time (a busy machine stretches the rest)
        self.stale = 0                      # FORWARD entries of an old generation, last sweep
        self.recovered = 0                  # flows the sweep found whose event never came
        self._adoptable = ADOPT_PER_SWEEP   # unheard PENDING entries to adopt until the next sweep
        self._connected = 0                 # admission.connected, when the allowance was last set
        self._missed = 0                    # NEW events shed or lost, as of the last catch_up
        self._scan: Iterator[tuple[list[tuple[bytes, bytes]], bool]] | None = None
        self._slice_done = SWEEP_SLICE      # entries the current slice read (full: none open)
        self._slice_s = self._slice_cpu_s = 0.0     # its steps' wall and CPU time so far
        self._cycle = 0                     # cycles: full passes over the tables
        self._cycle_start = 0.0
        self._cycle_stale = self._cycle_proving = self._marks = 0
        self._stale_reason = ""
        self.generation_why = "start"
        self.generation_at = time.monotonic()
        # what the current generation was made from: a change to any of it starts a new one
        self._links: dict[int, tuple[object, ...]] = {}
        self._brports: dict[int, bytes] = {}
        self._neighbours: dict[tuple[int, bytes], bytes] = {}
        self._ports: dict[bytes, int] = {}
        self._seen_before: object = None

    # -- generations --------------------------------------------------------------------------

    def new_generation(self, why: str) -> None:
        gen = self.tables.new_generation()
        self.generation_why, self.generation_at = why, time.monotonic()
        for rec in self.book.in_state(DROP):
            self.tables.beat()
            self.admission.evict(rec.key, "made under another ruleset")
        log.info("generation %d (%s): flows are proved again by their next packet", gen, why)

    def routing_changed(self, events: list[RtEvent]) -> str | None:
        """Why these rtnetlink events change what offloaded flows depend on, or None.

        Statistics, a neighbour going STALE with the same address, a bridge refreshing a MAC
        on the same port or our own XDP attach change nothing; a device's state, address, MTU
        or master, a neighbour's or a MAC's new place, any route, rule or address do."""
        for ev in events:
            if ev.kind in ("addr", "route") and ev.address is not None and \
                    ev.address.is_link_local:
                continue    # never the destination of a forwarded packet
            if ev.kind in ("route", "addr"):
                return f"{ev.kind} {ev.action} {ev.address or ''}".strip()
            if ev.kind == "link":
                view = ev.link.fast_path_view if ev.link is not None else None
                if view is None:
                    if self._links.pop(ev.ifindex, None) is not None:
                        return f"device {ev.ifindex} gone"
                elif self._changed(self._links, ev.ifindex, view):
                    old = self._seen_before
                    fields = [n for n, a, b in zip(LINK_VIEW, old, view) if a != b]
                    return f"device {view[0]}: {', '.join(fields)} changed"
            elif ev.kind == "brport" and ev.port is not None:
                if self._changed(self._brports, ev.ifindex, ev.port):
                    return f"bridge port {ev.ifindex} changed"
            elif ev.kind == "neigh" and ev.lladdr is not None and ev.address is not None:
                if self._changed(self._neighbours, (ev.ifindex, ev.address.packed), ev.lladdr):
                    return f"neighbour {ev.address} moved"
            elif ev.kind == "fdb" and ev.lladdr is not None and ev.action == "new":
                if self._changed(self._ports, ev.lladdr, ev.ifindex):
                    return "a MAC moved to another bridge port"
        return None

    def _changed(self, known: dict, key: object, value: object) -> bool:
        """Records value; True if something else was known for key (first sightings after
        start are no change: start took stock of everything)."""
        self._seen_before = known.get(key, value)
        known[key] = value
        return self._seen_before != value

    def take_stock(self, links: dict[int, tuple[object, ...]],
                   neighbours: list[tuple[int, bytes, bytes]],
                   fdb: list[tuple[int, bytes, bytes]]) -> None:
        """The devices, neighbours and bridge MACs as they are when the daemon starts; later
        events are compared to them."""
        self._links = dict(links)
        self._neighbours = {(index, addr): lladdr for index, addr, lladdr in neighbours}
        self._ports = {mac: index for index, mac, _ in fdb}

    # -- the sweep ----------------------------------------------------------------------------

    def sweep(self, recover: bool = True) -> bool:
        """One step of the sweep: SWEEP_STEP entries, from where the last one stopped; whether
        it ended a slice (SWEEP_SLICE entries, or the end of the tables), the sweep_interval's
        share. A table of more is covered over several slices (a cycle); what needs the whole
        table (entries the LRU took, whether anything waits for proof) is settled at the end
        of a cycle. recover: every event sent so far was handled, so a flow whose event did
        not come was shed or lost and is taken up here (not while events wait: most of those
        would be handled twice)."""
        start, cpu = time.monotonic(), time.thread_time()
        self.tables.heartbeat()
        if self._slice_done >= SWEEP_SLICE:
            self._slice_done, self._slice_s, self._slice_cpu_s = 0, 0.0, 0.0
            self._adoptable, self._connected = ADOPT_PER_SWEEP, self.admission.connected
        self._refund()
        if self._scan is None:
            self._scan = self.tables.scan(SWEEP_STEP)
            self._cycle += 1
            self._cycle_start, self._cycle_stale, self._cycle_proving = start, 0, 0
            self._marks = self.tables.proving_marks
            self._stale_reason = f"waiting to be proved again ({self.generation_why})"
        cycle = self._cycle
        now_ns = time.monotonic_ns()
        idle_ns = int(self._idle_timeout() * 1e9)
        refresh: set[bytes] = set()
        idle: set[bytes] = set()
        closing: set[bytes] = set()
        gen = self.tables.gen
        unheard: list[tuple[bytes, int]] = []
        proved: list[bytes] = []
        done = 0
        # looked up once, not once an entry
        head, note, gen_of = maps.FLOW_HEAD.unpack_from, self.book.sweep_note, _GEN.unpack_from
        for chunk, pending in self._scan:
            self.tables.beat()
            for key, value in chunk:
                packets, nbytes, last_seen, expires, state, flags = head(value)
                noted = note(key, cycle, packets, nbytes, last_seen)
                if noted is None:
                    if state == PENDING:  # a flood must not cost a conntrack lookup each
                        if recover and len(unheard) < self._adoptable:
                            unheard.append((key, last_seen))
                        continue
                    self.adopt(key, State(state))
                    continue
                rec, known, active = noted
                if pending and known == DROP and state == PENDING:
                    # the LRU took the verdict, and a packet came since: decided anew
                    self.admission.evict(key, "drop verdict evicted")
                    continue
                if pending and known not in UNDECIDED:
                    # written by the fast path while the daemon decided the key: stale
                    self.tables.delete_pending(key)
                    continue
                if recover and flags & maps.F_REPORTED and \
                        known in (PROVING, FORWARD):
                    proved.append(key)      # its PROVED event was lost (a full ring)
                if known == FORWARD and (conn := rec.conn) is not None:
                    if gen_of(value, _GEN_OFFSET)[0] != gen:
                        self._cycle_stale += 1
                        rec.reason = self._stale_reason
                    elif rec.reason != "offloaded":
                        rec.reason = "offloaded"
                    if flags & maps.F_CLOSING:   # its CLOSING event was lost
                        closing.add(conn)
                    elif now_ns - last_seen > idle_ns and start - rec.since > idle_ns / 1e9:
                        idle.add(conn)
                    elif active:
                        refresh.add(conn)
                elif known == PROVING:
                    waited = start - rec.since
                    if waited > idle_ns / 1e9:
                        self.admission.evict(key, "never proved")
                        continue
                    self._cycle_proving += 1
                    if waited > PROOF_SLOW:
                        rec.reason = (f"not forwarded by the kernel in the {waited:.0f} s "
                                      "since conntrack accepted it (idle, or a rule drops it)")
                elif known in (PENDING, PASS) and \
                        start - rec.created > PENDING_TTL:
                    self.admission.evict(key, "undecided")
                elif known == DROP and now_ns >= expires:
                    self.admission.evict(key, "drop verdict expired")
            done += len(chunk)
            chunk.clear()   # the paused scan would hold it until the next step (MBs at 64k)
            if done >= SWEEP_STEP:
                break
        else:
            self._scan = None
        first_step = self._slice_done == 0
        self._slice_done = SWEEP_SLICE if self._scan is None else self._slice_done + done
        ended = self._slice_done >= SWEEP_SLICE
        if not (first_step and ended):    # a slice of one step: quiet
            log.debug("sweep step: %d entries read, %s", done,
                      "slice ended" if ended else "slice goes on")
        self._adoptable -= len(unheard)
        self.admission.on_new(unheard)      # NEW events shed or lost
        self.admission.on_proved(proved)
        self.recovered += len(unheard) + len(proved)
        for conn in closing:
            self.admission.evict_connection(conn, "tcp close")
        for conn in idle:
            self.admission.evict_connection(conn, "idle")
        self._refresh_conntrack(refresh - idle, start)
        if self._scan is None:
            self._end_cycle(cycle)
        if ended:
            self._on_sweep()
        self.tables.heartbeat()
        self._slice_s += time.monotonic() - start
        self._slice_cpu_s += time.thread_time() - cpu
        if ended:
            self.last_sweep_s, self.last_sweep_cpu_s = self._slice_s, self._slice_cpu_s
        return ended

    def catch_up(self, missed: int, waiting: Container[bytes]) -> list[tuple[bytes, int]]:
        """`missed`: NEW events the fast path shed (its rate limit) or lost (a full ring) so
        far. When it grew, their flows wait in the pending tables: their keys are returned, to
        be admitted like new flows now, not when the sweep's cycle comes to them (seconds, in
        a big table), with when they were first seen; within the sweep's allowance of
        adoptions. `waiting`: keys whose events were read but not handled yet."""
        self._refund()
        if missed == self._missed or self._adoptable <= 0:
            return []
        unheard = list(itertools.islice(
            ((key, first_ns) for key, first_ns in self.tables.pending_entries(BATCH)
             if key not in self.book and key not in waiting), self._adoptable + 1))
        if len(unheard) <= self._adoptable:
            self._missed = missed       # else the rest waits for the next call
        unheard = unheard[:self._adoptable]
        self._adoptable -= len(unheard)
        self.recovered += len(unheard)
        return unheard

    def _refund(self) -> None:
        """Lookups that found a connection since the allowance was last set give theirs back
        (up to one batch)."""
        connected = self.admission.connected
        self._adoptable = min(ADOPT_PER_SWEEP, self._adoptable + connected - self._connected)
        self._connected = connected

    def _end_cycle(self, cycle: int) -> None:
        """The whole table was read: what the book holds and it did not is gone (the LRU took
        it), unless it came or moved while the cycle ran.

        An undecided or verdict record holds nothing else in the kernel: it is forgotten
        without a lookup (after a flood the LRU takes thousands), and should its entry still
        be there, the next cycle adopts it. A carried flow is looked up: its egress index
        entry goes with it."""
        for key in self.book.not_swept(cycle, self._cycle_start):
            self.tables.beat()
            rec = self.book.get(key)
            if rec is not None and rec.state in (PENDING, PASS, DROP):
                self.book.remove(key)
            elif self.tables.lookup(key) is None:
                self.admission.evict(key, "evicted from the table")
        self.stale = self._cycle_stale
        # the egress program looks at forwarded packets only while some flow waits for proof
        # (a flow made PROVING, or a generation begun, while the cycle ran keeps it looking)
        self.tables.set_proving(bool(self._cycle_stale or self._cycle_proving or
                                     self.tables.proving_marks != self._marks))

    def _refresh_conntrack(self, active: set[bytes], now: float) -> None:
        """Keeps conntrack entries of carried flows alive.

        Only when half their timeout is spent: every refresh makes the kernel send an UPDATE
        event to every listener (the daemon's own socket filter drops those it caused).
        """
        full = {p: self.conntrack.established_timeout(p) for p in (socket.IPPROTO_TCP,
                                                                   socket.IPPROTO_UDP)}

        def timeout_of(conn: bytes | maps.Tuple) -> int:
            return full.get(maps.id_l4proto(maps.as_id(conn)), 120)
        book = self.book
        half = {p: t / 2 for p, t in full.items()}
        expiry = book.ct_expiry
        due = [conn for conn in active if expiry(conn) - now < half.get(maps.id_l4proto(conn), 60)]
        if not due:
            return
        # sent as they are kept, packed: a Tuple of each would cost more than its message
        self.conntrack.refresh(due, timeout_of)
        for conn in due:
            book.set_ct_expiry(conn, now + timeout_of(conn))
        # a FIN or RST that conntrack saw before the refresh landed got the established timeout
        self.conntrack.restore_closing([c for c in due
                                        if maps.id_l4proto(c) == socket.IPPROTO_TCP])

    # -- adoption -------------------------------------------------------------------------------

    def adopt(self, key: bytes, state: State) -> None:
        """An entry the daemon does not know: a restart's leftovers or a lost ring event. A
        PENDING one is admitted like a new flow; a FORWARD or PROVING one is kept if conntrack
        still has its connection (it is of an old generation: proved again before it forwards
        anything); a verdict is made again."""
        if state == PENDING:
            self.admission.on_new([(key, 0)])
            return
        if state not in (FORWARD, PROVING):
            self.tables.delete(key)
            return
        rec = self.book.add(key)
        found = self.conntrack.lookup(maps.key_tuple_id(key))
        if found is None or found[0].ineligible_reason() is not None:
            self.admission.evict(key, "re-adopt: no eligible conntrack entry")
            return
        entry, direction = found
        conn, out = entry.orig_id, entry.egress_id(direction)
        owner = self.book.bound(conn, direction.value)
        if owner is not None and owner != rec:
            self.admission.evict(key, "re-adopt: another ingress carries this direction")
            return
        self.book.bind(rec, conn, direction.value, out)
        self.tables.index(out, key)
        rec.state, rec.since = state, time.monotonic()
        rec.reason = "re-adopted"
        if not self.book.ct_expiry(conn):
            self.book.set_ct_expiry(conn, time.monotonic() + entry.timeout)

    def readopt(self) -> int:
        """A restarted daemon takes over what the pinned tables hold."""
        indexed = self.tables.indexed()
        for key, value in self.tables.lookup_batch(BATCH):
            self.tables.beat()
            self.adopt(key, State(maps.FLOW_HEAD.unpack_from(value)[4]))
        for egress, key in indexed:   # index entries whose flow is gone
            rec = self.book.get(key)
            if rec is None or rec.egress != egress:
                self.tables.unindex(egress)
        return len(self.book.in_state(FORWARD))
