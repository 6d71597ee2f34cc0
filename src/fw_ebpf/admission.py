# SPDX-License-Identifier: GPL-2.0-only
"""Admission: how a flow comes to be forwarded by the fast path, and how it stops.

    NEW      the fast path saw the first packet of an unknown flow (a PENDING entry)
    lookup   conntrack, retried while the kernel confirms the connection; none at all: the
             firewall dropped or rejected it (early drop, if fw4's policy is certain)
    PROVING  conntrack accepted it: the entry holds the NAT conntrack says, the egress index the
             tuple it will leave with; the fast path still passes it
    PROVED   the egress program saw the kernel forward one of its packets, after every
             netfilter hook, and wrote the device and L2 header into the entry
    FORWARD  from the hook that can send to that device, in the generation it was proved in
             (a proof read after a change does not hold in the new generation)

A connection's direction has one ingress key: a copy of its tuple arriving elsewhere (spoofed,
or asymmetric routing) stays with the stack. The other direction is made PROVING as soon as one
direction is proved, where it will enter: on the device this one leaves by.
"""
from __future__ import annotations

import heapq
import logging
import math
import socket
import time
from array import array
from collections import deque
from typing import Callable, Iterable, Iterator

from fw_ebpf import maps
from fw_ebpf.conntrack import Conntrack, CtEntry, CtEvent, Direction
from fw_ebpf.flows import FlowBook, FlowRecord
from fw_ebpf.flowtable import FlowTables
from fw_ebpf.links import Links, NoL3Input
from fw_ebpf.maps import DROP, FORWARD, PASS, PENDING, PROVING, State
from fw_ebpf.policy import Policy, Query, Verdict

log = logging.getLogger("fw_ebpf.admission")

# Conntrack confirms a flow only after its first packet left the stack: retry this soon
RETRY_DELAYS = (0.005, 0.02, 0.1, 0.5)
# How long an early-drop verdict holds before the flow is looked at again
DROP_TTL_NS = 30 * 10**9
# Ineligible for good: write PASS rather than asking conntrack on every retry
FINAL_REASONS = ("helper", "seq adjust", "in nft flowtable")
PPPOE_HLEN = 8
PROVING_REASON = "waiting for the kernel to forward one of its packets"
# A reply whose first packet came this much before its connection's first packet is of an
# earlier connection (the fast path's clock is coarse: a tick or so either way)
REPLY_BEFORE_NS = 100 * 10**6
RECHECK_BATCH = 1024    # records asked about at once after lost conntrack events
RETRY_CHUNK = 256       # retries asked about at once (one batch of conntrack lookups)
_L4PROTO = maps.Key4.l4proto.offset

Hooks = Callable[[int], "tuple[str | None, bool]"]   # ifindex -> (XDP kind, TC ingress)
# ifindex, DSA port -> the L3 MTU of what leaves there (a conduit: its user port's)
EgressMtu = Callable[[int, int], int]
DSA_PORT_MASK = 0x7F    # the port number in an l2.dsa_port (bit 7: a tag's own flag)


def drop_ttl_ns(until: float, now: float) -> int:
    """How long an early-drop verdict may hold: DROP_TTL_NS, and never beyond the next boundary
    of a time window the verdict depended on (`until`, wall clock)."""
    if until == math.inf:
        return DROP_TTL_NS
    return max(0, min(DROP_TTL_NS, int((until - now) * 1e9)))


class Samples:
    """The last `size` figures, as 32-bit floats in a ring: a deque of floats costs about
    30 bytes a figure, which on a router is what a connection may cost in all."""

    def __init__(self, size: int = 10000) -> None:
        self._values = array("f")
        self._size, self._next = size, 0

    def append(self, value: float) -> None:
        if len(self._values) < self._size:
            self._values.append(value)
        else:
            self._values[self._next] = value
        self._next = (self._next + 1) % self._size

    def __iter__(self) -> Iterator[float]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


class Admission:
    def __init__(self, book: FlowBook, tables: FlowTables, conntrack: Conntrack, links: Links,
                 hooks: Hooks, policy: Callable[[], Policy | None],
                 tx_devices: Callable[[], set[int]], egress_mtu: EgressMtu,
                 retries_max: int, rejected_max: int) -> None:
        self.book, self.tables, self.conntrack, self.links = book, tables, conntrack, links
        self._hooks = hooks
        self._policy = policy
        self._tx_devices = tx_devices      # egress devices in the XDP devmap
        self._egress_mtu = egress_mtu
        self._retries: list[tuple[float, int, bytes]] = []
        # A flood of tuples the firewall rejects keeps each waiting for every retry of its
        # lookup (RETRY_DELAYS): past retries_max waiting, new flows wait in the daemon's
        # backlog, then in the pending tables, so its memory stays bounded whatever comes
        self._retries_max = retries_max
        # Flows the kernel keeps no connection for (undecided, or dropped early) are
        # remembered, so their packets cost no lookup, while they last; past rejected_max
        # (what the pending tables hold: the LRU has taken the entries of older ones), the
        # oldest are forgotten with their entries. A flood of rejected tuples costs the daemon
        # bounded memory (0.4 KB a key in the book).
        self._rejected: deque[bytes] = deque()     # oldest first
        self._rejected_max = rejected_max
        self.forgotten = 0      # rejected keys forgotten to make room (status)
        self._retry_seq = 0
        self.retrying_peak = 0      # the most flows that waited for a retry at once (status)
        self.connected = 0          # lookups that found the flow's connection, so far
        self.admission_ms = Samples()   # first packet -> FORWARD
        self.proving_ms = Samples()     # first packet -> PROVING
        tables.on_index_full = self._index_full

    # -- events from the fast path --------------------------------------------------------

    def on_new(self, flows: Iterable[tuple[bytes, int]]) -> None:
        """The fast path saw the first packets of these flows (key, when: its NEW event's or
        PENDING entry's time, 0 if not known): one batch of conntrack lookups."""
        recs = []
        for key, first_ns in flows:
            rec = self.book.add(key)
            if rec.state != PENDING:
                continue
            if not rec.first_ns:
                if not first_ns:
                    raw = self.tables.lookup_pending(key)
                    # a PENDING entry's last_seen: when the fast path saw the first packet
                    first_ns = maps.FLOW_HEAD.unpack_from(raw)[2] if raw else 0
                rec.first_ns = first_ns or time.monotonic_ns()
            recs.append(rec)
        self.admit(recs)

    def on_closing(self, key: bytes) -> None:
        rec = self.book.get(key)
        if rec is not None and rec.conn is not None:
            self.evict_connection(rec.conn, "tcp close")
        else:
            self.evict(key, "tcp close")

    def on_proved(self, keys: Iterable[bytes]) -> None:
        """The egress program saw these flows leave and wrote where and how into their
        entries: read first, then written as one batch."""
        entries = [(key, self.tables.lookup(key)) for key in dict.fromkeys(keys)]
        for key, raw in entries:
            self.tables.beat()
            self._proved(key, raw)
        self.tables.flush()

    def _proved(self, key: bytes, raw: bytes | None) -> None:
        rec = self.book.get(key)
        if rec is None or raw is None or rec.conn is None:
            return      # gone meanwhile, or not ours yet (the sweep adopts what it finds)
        p = maps.decode_proof(raw)
        if p.state not in (PROVING, FORWARD) or not p.flags & maps.F_REPORTED:
            return
        first = p.state == PROVING
        ingress = maps.key_ifindex(key)
        xdp, tc = self._hooks(ingress)
        tc_only = p.oif not in self._tx_devices() or self.links.shaped(p.oif)
        if tc_only and not tc:
            self.write_verdict(rec, PASS, f"leaves by {self.links.name(p.oif)}, which "
                               f"only the tc hook can send to; {self.links.name(ingress)} has "
                               f"{xdp or 'no'} XDP and no tc hook")
            return
        mtu = max(0, self._egress_mtu(p.oif, p.dsa_port) - (PPPOE_HLEN if p.pppoe_sid else 0))
        flags = p.flags & ~(maps.F_REPORTED | maps.F_TC_ONLY) | (maps.F_TC_ONLY if tc_only else 0)
        # in the generation of the proof: one made before a change holds only once the kernel
        # forwards the flow again (in place); packets the fast path counted meanwhile are kept
        self.tables.stage(key, maps.encode_forwarding(
            raw, flags, mtu, p.gen, time.monotonic_ns() if first else 0), pending_too=False)
        rec.state, rec.since = FORWARD, time.monotonic()
        rec.reason = "offloaded" if p.gen == self.tables.gen else \
            f"proved in generation {p.gen}, before this one: waiting to be proved again"
        if log.isEnabledFor(logging.DEBUG):
            log.debug("forward %s via %s (%s)", rec.info.tuple, self.links.name(p.oif),
                      "tc" if tc_only else "xdp or tc")
        if not first:
            return
        if rec.first_ns:
            self.admission_ms.append((time.monotonic_ns() - rec.first_ns) / 1e6)
        conn = rec.conn
        if conn is not None and conn[_L4PROTO] == socket.IPPROTO_TCP and \
                sum(r.state == FORWARD for r in self.book.of_connection(conn)) == 1:
            # the first direction the fast path carries: ACKs the stack saw meanwhile set
            # MAXACK, and that breaks conntrack's check of the closing RST
            self.conntrack.set_liberal(conn)
        self._pair(rec, p)

    # -- deciding a PENDING flow ------------------------------------------------------------

    def admit(self, recs: list[FlowRecord]) -> None:
        """Asks conntrack about PENDING flows, all in one batch, and decides each."""
        recs = [r for r in recs if r.state == PENDING]
        if not recs:
            return

        def undecided(i: int) -> bool:
            rec = recs[i]
            return self.book.holds(rec) and rec.state == PENDING

        found = self.conntrack.lookup_many([maps.key_tuple_id(r.key) for r in recs],
                                           undecided)
        for i, answer in enumerate(found):
            self.tables.beat()
            rec = recs[i]
            if not undecided(i):
                continue    # evicted, or decided with the other direction or by an event
            if answer is None:
                self._schedule_retry(rec, rec.attempts)
            else:
                self.connected += 1
                self.decide(rec, *answer)
        self.tables.flush()

    def decide(self, rec: FlowRecord, entry: CtEntry, direction: Direction) -> None:
        why = entry.ineligible_reason()
        if why is not None and entry.closing:
            # a late ACK of a closed connection: nothing to wait for, leave no entry behind
            self.evict(rec.key, f"closing ({why})")
            return
        if why is not None:
            rec.reason = why
            if why.startswith(FINAL_REASONS):
                self.write_verdict(rec, PASS, why)
            return   # conntrack update events bring it back when it becomes eligible
        conn = entry.orig_id
        if direction == Direction.REPLY:
            orig = self.book.bound(conn, Direction.ORIGINAL.value)
            if orig is not None and 0 < rec.first_ns < orig.first_ns - REPLY_BEFORE_NS:
                # a reply does not come before its connection's first packet: this key's
                # packets are of an earlier connection with these tuples (a straggler of an
                # old PPPoE session), and must not take the direction from the live one
                rec.reason = "its first packet came before its connection's"
                return
        new_connection = not self.book.ct_expiry(conn)
        if new_connection and entry.l4proto == socket.IPPROTO_TCP:
            # before any of it is carried: while one direction is offloaded, the other's
            # packets reach conntrack acking data it never saw; without this they are INVALID
            # and fw4's forward chain answers them with a reset
            self.conntrack.set_liberal(conn)
        if not self._prove(rec, conn, direction.value, maps.key_tuple_id(rec.key),
                           entry.egress_id(direction)):
            return
        if new_connection:
            self.book.set_ct_expiry(conn, time.monotonic() + entry.timeout)
        if rec.first_ns:
            self.proving_ms.append((time.monotonic_ns() - rec.first_ns) / 1e6)
        # the other direction's first packets already came (the reply of a quick peer): its
        # own lookup would find this same entry
        if direction == Direction.ORIGINAL:
            back, reverse = entry.reply_id, Direction.REPLY
        else:
            back, reverse = conn, Direction.ORIGINAL
        for other in self.book.waiting_for(back):
            if other.state == PENDING:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("%s: decided with its connection's other direction",
                              other.info.tuple)
                self.decide(other, entry, reverse)

    def _prove(self, rec: FlowRecord, conn: bytes, direction: int, ingress: bytes,
               out: bytes) -> bool:
        """Makes a flow PROVING: the kernel's next forwarded packet of it is the proof.
        ingress, out: the tuples (tuple_id) it arrives and leaves with."""
        other = self.book.bound(conn, direction)
        if other is not None and other.key != rec.key:
            self.write_verdict(rec, PASS, "this direction of the connection already "
                               f"enters by {self.links.name(other.info.ifindex)}")
            return False
        self.tables.index(out, rec.key)
        self.tables.stage(rec.key, maps.encode_proving(ingress, out))
        self.book.bind(rec, conn, direction, out)
        rec.state, rec.reason, rec.since = PROVING, PROVING_REASON, time.monotonic()
        self.tables.set_proving(True)
        return True

    def _index_full(self, key: bytes, why: str) -> None:
        """The egress index refused the tuple this flow leaves with: nothing could prove it."""
        rec = self.book.get(key)
        if rec is not None and rec.state in (PROVING, FORWARD):
            self.write_verdict(rec, PASS, f"egress index full ({why})")

    def _pair(self, rec: FlowRecord, p: maps.Proof) -> None:
        """The other direction enters where this one leaves (routing is symmetric, mostly),
        tagged as this one leaves: it waits for its proof there at once. If it enters
        elsewhere, its own first packet asks for it like any other flow's."""
        conn, back = rec.conn, rec.other_arrives
        if conn is None or back is None or \
                self.book.bound(conn, 1 - rec.direction) is not None:
            return      # or its own first packets came, and it is decided already
        vids = [tci & 0x0FFF for tci in p.vlan_tci] + [0, 0]
        port = p.dsa_port
        key = maps.id_key(p.oif, back, vlan=(vids[0], vids[1]), pppoe_sid=p.pppoe_sid,
                          dsa_port=port if port == maps.NO_DSA_PORT else port & DSA_PORT_MASK)
        if key == rec.key or self._hooks(p.oif) == (None, False):
            return
        other = self.book.add(key)
        if other.state == PENDING:
            other.first_ns = other.first_ns or time.monotonic_ns()
            self._prove(other, conn, 1 - rec.direction, back,
                        maps.reverse_id(maps.key_tuple_id(rec.key)))

    # -- no connection: what the firewall did with it ---------------------------------------

    def _schedule_retry(self, rec: FlowRecord, attempt: int) -> None:
        """attempt: how many lookups found nothing before this one."""
        if attempt >= len(RETRY_DELAYS):
            self._no_conntrack(rec)
            return
        self._retry_seq += 1
        heapq.heappush(self._retries, (time.monotonic() + RETRY_DELAYS[attempt],
                                       self._retry_seq, rec.key))
        self.retrying_peak = max(self.retrying_peak, len(self._retries))
        rec.attempts = attempt + 1
        rec.reason = "waiting for conntrack"

    @property
    def retrying(self) -> int:
        return len(self._retries)

    @property
    def saturated(self) -> bool:
        """Too many flows wait for a retry to take new ones."""
        return len(self._retries) >= self._retries_max

    @property
    def next_retry(self) -> float:
        return self._retries[0][0] if self._retries else math.inf

    def run_retries(self, until: float = 0.0) -> None:
        """The due retries, RETRY_CHUNK at a time (one batch of lookups each) until the clock
        passes `until` (at least one chunk): a flood of rejected tuples makes thousands due at
        once, each a policy decision at its last; the rest stay due for the next turn."""
        while True:
            now = time.monotonic()
            due: list[FlowRecord] = []
            while self._retries and self._retries[0][0] <= now and len(due) < RETRY_CHUNK:
                _, _, key = heapq.heappop(self._retries)
                rec = self.book.get(key)
                if rec is not None and rec.state == PENDING:
                    due.append(rec)
            if not due:
                return
            self.admit(due)
            if time.monotonic() >= until:
                return

    def _no_conntrack(self, rec: FlowRecord) -> None:
        """The kernel kept no connection for this flow: fw4 dropped or rejected its packets.

        Only a verdict the policy is certain is DROP becomes a DROP entry; a REJECT must still
        be answered by the stack, and anything else stays with it.
        """
        rec.reason = "no conntrack entry"
        self._remember_rejected(rec.key)
        policy = self._policy()
        if policy is None:
            return
        info = rec.info
        t = info.tuple
        try:
            in_device = self.links.name(self.links.l3_input(info.ifindex, info.vlan))
        except NoL3Input:
            return
        decision = policy.decide(Query(family=t.saddr.version, l4proto=t.l4proto,
                                       saddr=t.saddr, daddr=t.daddr, sport=t.sport,
                                       dport=t.dport, in_device=in_device))
        rec.reason = f"no conntrack entry; fw4 {decision.verdict.name.lower()}: {decision.reason}"
        if decision.verdict == Verdict.DROP:
            ttl_ns = drop_ttl_ns(decision.until, time.time())
            if ttl_ns <= 0:
                return
            self.tables.stage(rec.key, maps.encode_verdict(
                DROP, expires_ns=time.monotonic_ns() + ttl_ns, gen=self.tables.gen))
            rec.state = DROP
            log.debug("early drop %s: %s", t, decision.reason)

    def _remember_rejected(self, key: bytes) -> None:
        rejected = self._rejected
        rejected.append(key)
        while len(rejected) > self._rejected_max:
            old = self.book.get(rejected.popleft())
            # a key decided since, or forgotten and seen anew, is not this one's to forget
            if old is None or old.state not in (PENDING, DROP) or old.conn is not None or \
                    not old.reason.startswith("no conntrack entry"):
                continue
            # its next packet makes a PENDING entry again (the LRU has most likely taken a
            # DROP verdict's already): looked up, as a new flow
            self.tables.unpend(old.key)
            self.book.remove(old.key)
            self.forgotten += 1

    # -- conntrack events -------------------------------------------------------------------

    def on_conntrack(self, events: Iterable[CtEvent]) -> None:
        pending: dict[bytes, FlowRecord] = {}
        for ev in events:
            self.tables.beat()
            if ev.entry is None:
                continue
            conn = ev.entry.orig_id
            if ev.kind == "destroy":
                self.evict_connection(conn, "conntrack destroy")
                continue
            for rec in self.book.waiting_for(conn, ev.entry.reply_id) + \
                    self.book.of_connection(conn):
                if rec.state == PENDING:
                    pending[rec.key] = rec
        self.admit(list(pending.values()))

    def recheck_connections(self) -> None:
        """After lost conntrack events: every record against what conntrack holds now, asked
        in batches."""
        keys = list(self.book.records)
        for i in range(0, len(keys), RECHECK_BATCH):
            chunk = [key for key in keys[i:i + RECHECK_BATCH] if key in self.book]
            answers = self.conntrack.lookup_many([maps.key_tuple_id(key) for key in chunk])
            for key, found in zip(chunk, answers):
                self.tables.beat()
                rec = self.book.get(key)
                if rec is not None:     # else evicted with its connection meanwhile
                    self._recheck(rec, found)
            self.tables.flush()

    def _recheck(self, rec: FlowRecord, found: tuple[CtEntry, Direction] | None) -> None:
        if found is None:
            if rec.conn is not None:
                self.evict_connection(rec.conn, "conntrack entry gone")
            else:
                self.evict(rec.key, "no conntrack entry")
        elif rec.state == PENDING:
            self.decide(rec, *found)
        elif found[0].ineligible_reason() is not None:
            self.evict_connection(found[0].orig_id, found[0].ineligible_reason() or "")

    # -- verdicts and eviction ----------------------------------------------------------------

    def write_verdict(self, rec: FlowRecord, state: State, reason: str) -> None:
        self.tables.stage(rec.key, maps.encode_verdict(state, gen=self.tables.gen))
        self._unindex(rec)
        rec.state, rec.reason = state, reason

    def _unindex(self, rec: FlowRecord) -> None:
        conn, egress = rec.conn, rec.egress
        if conn is not None and egress is not None and \
                self.book.bound(conn, rec.direction) == rec:
            self.tables.unindex(egress)

    def evict(self, key: bytes, why: str) -> None:
        rec = self.book.get(key)
        value = self.tables.lookup(key) if rec is not None else None
        self.tables.delete(key)
        if rec is None:
            return
        if value is not None:   # what was carried since the last sweep stays in the totals
            rec.packets, rec.bytes = maps.FLOW_HEAD.unpack_from(value)[:2]
        self._unindex(rec)
        self.book.remove(key)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("evict %s: %s", rec.info.tuple, why)

    def evict_connection(self, conn: bytes, why: str) -> int:
        recs = self.book.of_connection(conn)
        for rec in recs:
            self.evict(rec.key, why)
        return len(recs)

    def flush(self) -> int:
        n = len(self.book)
        for key in list(self.book.records):
            self.tables.beat()
            self.evict(key, "flush")
        self.tables.clear()
        return n
