# SPDX-License-Identifier: GPL-2.0-only
"""The ebpfw daemon: one event loop that keeps the fast path's flow table true.

Sources: the fast path's ring buffer (new and closing flows), conntrack events, rtnetlink
events, the control socket, ubus, signals and a sweep timer. The daemon owns all state; every
handler runs to completion in the loop, so nothing here needs a lock.
"""
from __future__ import annotations

import contextlib
import heapq
import logging
import math
import os
import selectors
import signal
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from fw_ebpf import api, config, conduit, fw4, libubus, maps, ubus_api
from fw_ebpf import conntrack as ctmod
from fw_ebpf import nexthop as nhmod
from fw_ebpf import rtnl
from fw_ebpf.config import Disabled, Settings
from fw_ebpf.conntrack import Conntrack, ConntrackEvents, CtEntry, Direction
from fw_ebpf.control import DEFAULT_PATH, ControlServer
from fw_ebpf.flows import FlowBook, FlowRecord
from fw_ebpf.flowtable import FlowTables
from fw_ebpf.fw4live import Fw4Keeper
from fw_ebpf.libbpf import BpfMap, RingBuffer
from fw_ebpf.loader import BYTE_ORDER, Loader, default_object_dir
from fw_ebpf.maps import State
from fw_ebpf.nexthop import NextHop, NextHopResolver, RtEvents, Unresolved
from fw_ebpf.policy import Facts, Policy, Query, Verdict

log = logging.getLogger("fw_ebpf.daemon")

# Conntrack confirms a flow only after its first packet left the stack: retry this soon
RETRY_DELAYS = (0.005, 0.02, 0.1, 0.5)
# How long an early-drop verdict holds before the flow is looked at again
DROP_TTL_NS = 30 * 10**9
# frames without their tag on the conduits before their user ports take over
UNTAGGED_FALLBACK = 64
# fw4 includes these in its table; their rules are not in fw4's model
NFT_INCLUDE_DIR = "/etc/nftables.d"
# A PENDING entry nobody could admit is removed after this, so a later packet asks again
PENDING_TTL = 10.0
# PENDING entries the sweep adopts without having heard of them (shed or lost events), at most
ADOPT_PER_SWEEP = 256
# Ineligible for good: write PASS rather than asking conntrack on every retry
FINAL_REASONS = ("helper", "seq adjust", "in nft flowtable")
SHAPING_QDISCS = frozenset({"htb", "hfsc", "tbf", "cake", "cbq", "drr", "qfq", "ets"})

@dataclass(frozen=True)
class Paths:
    object_dir: str | None = None
    pin_dir: str = config.PIN_DIR
    control: str = DEFAULT_PATH
    config: str | None = None
    fw4_model: str | None = None    # fw4's model as JSON; None: ask the ucode hook if present
    sysfs: str = conduit.SYSFS      # where DSA switches are discovered


class Daemon:
    def __init__(self, settings: Settings, paths: Paths,
                 reload_settings: Callable[[], Settings] | None = None,
                 ubus: libubus.Connection | None = None) -> None:
        self.settings = settings
        self.paths = paths
        self._reload_settings = reload_settings
        self._ubus_conn = ubus      # the one the configuration is read on, if it is read on ubus
        self.book = FlowBook()
        self.started = time.monotonic()
        self._stopping = False
        self._reload = False
        self._ring_events: list[bytes] = []
        self._retries: list[tuple[float, int, bytes]] = []
        self._retry_seq = 0
        self._next_sweep = 0.0
        self._revalidate = False            # every flow's next hop to be re-resolved
        self._stale: set[bytes] = set()     # these flows' next hops to be re-resolved
        self._shaped_cache: dict[int, tuple[float, bool]] = {}
        self.last_sweep_s = 0.0
        self._modes: dict[int, str] = {}     # attached ifindex -> hook mode
        self._ct_expiry: dict[maps.Tuple, float] = {}   # offloaded connection -> conntrack timeout
        self.admission_ms: deque[float] = deque(maxlen=10000)   # first packet -> FORWARD
        self.fw4 = Fw4Keeper(self._read_model, self._make_policy)
        self.policy: Policy | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self) -> int:
        """Starts every subsystem in order, runs the loop, stops them in reverse."""
        with contextlib.ExitStack() as stack:
            self._start_fastpath(stack)
            self.conntrack = stack.enter_context(Conntrack())
            self.ct_events = stack.enter_context(ConntrackEvents())
            self.resolver = stack.enter_context(NextHopResolver())
            self.rt_events = stack.enter_context(RtEvents())
            self.policy = self._load_policy()
            self._attach_interfaces(stack)
            self._readopt()   # needs the hook modes; until then XDP passes (empty devmap)
            self.ring = stack.enter_context(RingBuffer(self.loader.map("ebpfw_events"),
                                                       self._on_ring_record))
            self.api = api.Api(self)
            self.control = ControlServer(self.paths.control, self.api.call)
            stack.callback(self.control.close)
            self.ubus = self._start_ubus(stack)
            self._loop()
        log.info("stopped")
        return 0

    def _start_ubus(self, stack: contextlib.ExitStack) -> ubus_api.UbusServer | None:
        """The `ebpfw` object, on the connection the configuration came from or a new one."""
        conn = self._ubus_conn
        if conn is None:
            if not libubus.available():
                log.info("ubus: libubus is not installed; serving the control socket only")
                return None
            try:
                conn = libubus.Connection(self.settings.ubus_socket)
            except libubus.UbusError as e:
                log.warning("ubus: %s; serving the control socket only", e)
                return None
            stack.callback(conn.close)
        server = ubus_api.UbusServer(conn, self.api.call)
        stack.callback(server.close)
        return server

    def _start_fastpath(self, stack: contextlib.ExitStack) -> None:
        s = self.settings
        self._untagged: tuple[str, ...] = ()   # conduits found delivering untagged frames
        self._untagged_seen = 0
        self.dsa = self._dsa_plan()
        self.loader = Loader(obj_dir=self.paths.object_dir, pin_dir=self.paths.pin_dir,
                             flows_max=s.flows_max, dsa_tag=self.dsa.tag,
                             config=maps.encode_config(
                                 s.heartbeat_timeout, dsa_conduits=self.dsa.conduit_ifindexes))
        stack.callback(self.loader.close)
        self.loader.load()
        # a clean stop leaves nothing behind: detach, then remove the pins (callbacks run LIFO)
        stack.callback(self.loader.unpin)
        stack.callback(self.loader.detach_all)
        self.flows_map = FlowTables(self.loader.map)
        self.stats_map: BpfMap = self.loader.map("ebpfw_stats")
        self.tx_map: BpfMap = self.loader.map("ebpfw_tx")
        self.runtime_map: BpfMap = self.loader.map("ebpfw_runtime")
        self._heartbeat()

    def _attach_interfaces(self, stack: contextlib.ExitStack) -> None:
        names = self._interface_names()
        if not names:
            raise RuntimeError("no interface to attach to (option 'interface')")
        for ifname in names:
            mode = self.loader.attach(ifname, self.settings.mode_of(ifname))
            log.info("%s: attached (%s)", ifname, mode)
        self._update_modes()

    def _update_modes(self) -> None:
        self._modes = {socket.if_nametoindex(n): m for n, m in self.loader.attachments.items()}

    def _interface_names(self) -> list[str]:
        return list(self.dsa.interfaces)

    def _dsa_plan(self, untagged: tuple[str, ...] = ()) -> conduit.Plan:
        """Which object (the DSA tag of the conduits used) and which interfaces: `auto` puts
        a conduit in place of its user ports where it can; named interfaces are taken as
        named, a conduit among them with its tag."""
        switches = conduit.discover(self.paths.sysfs)
        has_object = conduit.object_exists(self.paths.object_dir or default_object_dir(),
                                           BYTE_ORDER)
        wanted = list(self.settings.interfaces)
        if wanted == ["auto"]:
            dsa = conduit.plan(lowest_devices(), switches, has_object, self._zone_devices(),
                               untagged)
        else:
            named = {n: c for n, c in switches.items() if n in wanted}
            dsa = conduit.plan([n for n in wanted if n not in named or n not in untagged],
                               named, has_object, None, untagged)
            dsa.interfaces = [n for n in wanted if n in dsa.interfaces or n not in switches]
        for name, why in dsa.notes.items():
            log.warning("%s: not attached as a DSA conduit: %s", name, why)
        if dsa.conduits:
            log.info("DSA: %s tag on %s", dsa.tag, ", ".join(c.name for c in dsa.conduits))
        return dsa

    def _zone_devices(self) -> dict[str, set[str]] | None:
        """fw4 zones as their lowest devices (bridges by their ports), if fw4's model is there."""
        try:
            model = self._read_model()
        except fw4.ModelError:
            return None
        with rtnl.Rtnl() as rt:
            links = [(lk.name, lk.index, lk.master) for lk in map(nhmod.link_from_msg, rt.links())]
        return conduit.zone_devices({z.name: z.match_devices for z in model.zones}, links)

    def _check_untagged(self, counters: dict[maps.Counter, int]) -> None:
        """A conduit whose frames come without their tag (MediaTek SoCs can take it off in
        hardware) gives no source port: its user ports take over."""
        seen = counters[maps.Counter.PASS_DSA_UNTAGGED]
        if not self.dsa.conduits or seen - self._untagged_seen < UNTAGGED_FALLBACK:
            return
        self._untagged_seen = seen
        names = tuple(c.name for c in self.dsa.conduits)
        log.warning("%s: %d frames without the %s tag; attaching to the user ports instead",
                    ", ".join(names), seen, self.dsa.tag)
        self._untagged += names
        # the object loaded stays: on devices that are not its conduits it has no tag step
        tag = self.dsa.tag
        self.dsa = self._dsa_plan(self._untagged)
        self.dsa.tag, self.dsa.conduits = tag, ()
        for name in names:
            if name in self.loader.attachments:
                self.loader.detach(name)
        for name in self.dsa.interfaces:
            if name not in self.loader.attachments:
                log.info("%s: attached (%s)", name,
                         self.loader.attach(name, self.settings.mode_of(name)))
        self._update_modes()

    def request_stop(self) -> None:
        self._stopping = True

    # -- the loop -------------------------------------------------------------------------------

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno())
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "_reload", True))
        sel.register(wake_r, selectors.EVENT_READ, lambda: wake_r.recv(4096))
        sel.register(self.ring.fileno(), selectors.EVENT_READ, self._drain_ring)
        sel.register(self.ct_events.fileno(), selectors.EVENT_READ, self._on_conntrack)
        sel.register(self.rt_events.fileno(), selectors.EVENT_READ, self._on_rtnetlink)
        sel.register(self.control.fileno(), selectors.EVENT_READ, self.control.serve_ready)
        if self.ubus is not None:
            sel.register(self.ubus.fileno(), selectors.EVENT_READ, self.ubus.service)
        log.info("running: %d interfaces, %d flows re-adopted",
                 len(self.loader.attachments), len(self.book.in_state(State.FORWARD)))
        try:
            while not self._stopping:
                for key, _ in sel.select(self._timeout()):
                    key.data()
                self._drain_ring()
                if self._revalidate or self._stale:
                    self._revalidate_flows()
                self._run_retries()
                if time.monotonic() >= self.fw4.retry_at:
                    self._fw4_tick()
                if time.monotonic() >= self._next_sweep:
                    self.sweep()
                if self._reload:
                    self._reload = False
                    self.reload()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, h in handlers.items():
                signal.signal(sig, h)
            sel.close()
            wake_r.close()
            wake_w.close()

    def _timeout(self) -> float:
        deadline = self._next_sweep
        if self._retries:
            deadline = min(deadline, self._retries[0][0])
        deadline = min(deadline, self.fw4.retry_at)
        return max(0.0, deadline - time.monotonic())

    # -- fast-path events -----------------------------------------------------------------------

    def _on_ring_record(self, raw: bytes) -> None:
        self._ring_events.append(raw)    # decided after consume() returns, not in the callback

    def _drain_ring(self) -> None:
        self.ring.consume()
        events = self._ring_events[:]
        self._ring_events.clear()
        for raw in events:
            kind, key = maps.split_event(raw)
            if kind == maps.EventType.NEW:
                self._admit(self.book.add(key))
            elif kind == maps.EventType.CLOSING:
                rec = self.book.get(key)
                if rec is not None and rec.ct is not None:
                    self.evict_connection(rec.ct, "tcp close")
                else:
                    self._evict(key, "tcp close")

    def _schedule_retry(self, rec: FlowRecord, attempt: int) -> None:
        if attempt >= len(RETRY_DELAYS):
            self._no_conntrack(rec)
            return
        self._retry_seq += 1
        heapq.heappush(self._retries, (time.monotonic() + RETRY_DELAYS[attempt],
                                       self._retry_seq, rec.key))
        rec.attempts = attempt + 1
        rec.reason = "waiting for conntrack"

    def _no_conntrack(self, rec: FlowRecord) -> None:
        """The kernel kept no connection for this flow: fw4 dropped or rejected its packets.

        Only a verdict the policy is certain is DROP becomes a DROP entry; a REJECT must still
        be answered by the stack, and anything else stays with it.
        """
        rec.reason = "no conntrack entry"
        if self.policy is None:
            return
        t = rec.info.tuple
        try:
            in_device = socket.if_indextoname(self.resolver.l3_input(rec.info.ifindex,
                                                                     rec.info.vlan))
        except OSError:
            return
        decision = self.policy.decide(Query(family=t.saddr.version, l4proto=t.l4proto,
                                            saddr=t.saddr, daddr=t.daddr, sport=t.sport,
                                            dport=t.dport, in_device=in_device))
        rec.reason = f"no conntrack entry; fw4 {decision.verdict.name.lower()}: {decision.reason}"
        if decision.verdict == Verdict.DROP:
            ttl_ns = drop_ttl_ns(decision.until, time.time())
            if ttl_ns <= 0:
                return
            self.flows_map.update(rec.key, maps.encode_verdict(
                State.DROP, expires_ns=time.monotonic_ns() + ttl_ns))
            rec.state = State.DROP
            log.debug("early drop %s: %s", t, decision.reason)

    def _run_retries(self) -> None:
        now = time.monotonic()
        while self._retries and self._retries[0][0] <= now:
            _, _, key = heapq.heappop(self._retries)
            rec = self.book.get(key)
            if rec is not None and rec.state == State.PENDING:
                self._admit(rec, attempt=rec.attempts)

    def _load_policy(self) -> Policy | None:
        """fw4's verdicts for early drop, or None (early drop off, or no model to trust)."""
        if not self.settings.early_drop:
            self.fw4.off()
            return None
        return self.fw4.refresh()

    def _read_model(self) -> fw4.Model:
        includes = user_includes(NFT_INCLUDE_DIR)
        if includes:
            raise fw4.ModelError(f"rules in {', '.join(includes)} may accept what fw4's model "
                                 "drops")
        if self.paths.fw4_model is not None:
            return fw4.load_model(self.paths.fw4_model)
        if os.path.exists(fw4.HOOK_CMD[1]):
            return fw4.model_from_hook()
        raise fw4.ModelError(f"no fw4 model ({fw4.HOOK_CMD[1]} is missing)")

    def _make_policy(self, model: fw4.Model, facts: Facts) -> Policy:
        return Policy(model, self.resolver.is_local, self.resolver.out_device, facts)

    def _fw4_tick(self) -> None:
        """A model retry, or facts that moved (sets, marks): verdicts of the old policy go."""
        if not self.settings.early_drop:
            self.fw4.off()
            return
        if self.fw4.tick():
            self.policy = self.fw4.policy
            for rec in self.book.in_state(State.DROP):
                self._evict(rec.key, "fw4 model or facts changed")

    # -- admission ------------------------------------------------------------------------------

    def _admit(self, rec: FlowRecord, attempt: int = 0) -> None:
        """Decides a PENDING flow: FORWARD both directions when conntrack and routing agree."""
        if rec.state != State.PENDING:
            return
        found = self.conntrack.lookup(rec.info.tuple)
        if found is None:
            self._schedule_retry(rec, attempt)
            return
        entry, direction = found
        if not self._routed_back_where_it_came_in(rec):
            self._write_verdict(rec, State.PASS, "its source is not routed back where it came in")
            return
        self.book.bind(rec, entry.orig, direction)
        self._offload(entry, rec, direction)

    def _routed_back_where_it_came_in(self, rec: FlowRecord) -> bool:
        """Conntrack matches a tuple wherever the packet arrives: a copy of an accepted
        connection's tuple sent in from another interface finds the entry all the same. Only
        a key whose ingress is the device the route back to its source leaves by is offloaded
        (strict reverse path); anything else stays with the stack."""
        try:
            iif = self.resolver.l3_input(rec.info.ifindex, rec.info.vlan)
            return self.resolver.out_device(rec.info.tuple.saddr) == socket.if_indextoname(iif)
        except (OSError, Unresolved):
            return False

    def _offload(self, entry: CtEntry, rec: FlowRecord, direction: Direction) -> None:
        why = entry.ineligible_reason()
        if why is not None and entry.closing:
            # a late ACK of a closed connection: nothing to wait for, leave no entry behind
            self._evict(rec.key, f"closing ({why})")
            return
        if why is not None:
            rec.reason = why
            if why.startswith(FINAL_REASONS):
                self._write_verdict(rec, State.PASS, why)
            return   # conntrack update events bring it back when it becomes eligible
        new_connection = entry.orig not in self._ct_expiry
        tcp = entry.orig.l4proto == socket.IPPROTO_TCP
        if new_connection and tcp:
            # before the first FORWARD entry: while one direction is offloaded, the other's
            # packets reach conntrack acking data it never saw; without this they are INVALID
            # and fw4's forward chain answers them with a reset
            self.conntrack.set_liberal(entry.orig)
        nh = self._forward(rec, entry.egress(direction), entry.mark)
        if nh is None:
            return
        self._pair(rec, nh)
        if new_connection:
            if tcp:   # again: stack-seen ACKs set MAXACK meanwhile, and that breaks RST checks
                self.conntrack.set_liberal(entry.orig)
            self._ct_expiry[entry.orig] = time.monotonic() + entry.timeout

    def _pair(self, rec: FlowRecord, nh: NextHop) -> None:
        """Offloads the other direction too, where it enters if routing is symmetric: on the
        device this one leaves by, as this one's egress tuple reversed. If it enters elsewhere,
        its own first packet asks for it like any other flow."""
        if nh.oif not in self._modes or rec.egress is None or rec.ct is None:
            return
        vids = tuple(t & 0x0FFF for t in nh.vlans) + (0, 0)
        other_key = maps.encode_key(nh.oif, _reverse(rec.egress), vlan=(vids[0], vids[1]))
        other_rec = self.book.add(other_key)
        if other_rec.state == State.PENDING:
            other = Direction.REPLY if rec.direction == Direction.ORIGINAL else Direction.ORIGINAL
            self.book.bind(other_rec, rec.ct, other)
            self._forward(other_rec, _reverse(rec.info.tuple), rec.mark)

    def _forward(self, rec: FlowRecord, egress: maps.Tuple, mark: int) -> NextHop | None:
        """Writes (or rewrites) the FORWARD entry of one direction, leaving as egress."""
        ingress = rec.info.tuple
        unchanged_egress = rec.egress == egress
        rec.egress, rec.mark = egress, mark    # all a later re-resolve needs
        try:
            iif = self.resolver.l3_input(rec.info.ifindex, rec.info.vlan)
            nh = self.resolver.resolve(egress.daddr, ingress.saddr, iif, mark=mark)
        except Unresolved as e:
            log.debug("no next hop for %s: %s", egress, e.reason)
            rec.reason = f"next hop: {e.reason}"
            if rec.state == State.FORWARD:
                self._write_verdict(rec, State.PENDING, rec.reason)
            return None
        tc_only = self._needs_tc(rec.info.ifindex, nh.oif)
        if tc_only is None:
            self._write_verdict(rec, State.PASS, "egress needs the tc hook, ingress has none")
            return None
        if rec.state == State.FORWARD and unchanged_egress and rec.nexthop == nh \
                and rec.tc_only == tc_only:
            return nh   # re-resolved after an event that changed nothing this flow uses
        value = maps.encode_forward(ingress, egress, nh.oif, nh.mtu,
                                    maps.L2Out(nh.dmac, nh.smac, nh.vlans, nh.vlan_tpid),
                                    tc_only=tc_only, last_seen_ns=time.monotonic_ns())
        self.tx_map.update(struct.pack("=I", nh.oif), struct.pack("=I", nh.oif))
        old = self.flows_map.lookup(rec.key)
        if rec.state == State.FORWARD:
            value = _keep_counters(old, value)
        self.flows_map.update(rec.key, value)
        if rec.state == State.PENDING and old is not None:
            # a PENDING entry's last_seen is when the fast path saw the flow's first packet
            first_ns = maps.FLOW_HEAD.unpack_from(old)[2]
            if first_ns:
                self.admission_ms.append((time.monotonic_ns() - first_ns) / 1e6)
        rec.state, rec.reason, rec.nexthop, rec.tc_only = State.FORWARD, "offloaded", nh, tc_only
        log.debug("forward %s -> %s via ifindex %d", ingress, egress, nh.oif)
        return nh

    def _needs_tc(self, in_ifindex: int, oif: int) -> bool | None:
        """Whether the flow must be forwarded from TC; None if the ingress hook cannot do it.

        XDP redirect skips the egress qdisc (shaping) and needs a driver that transmits XDP
        frames; only an egress carrying our native XDP program is trusted to have one.
        """
        modes = self._modes
        in_mode = modes.get(in_ifindex)
        shaped = self._egress_shaped(oif)
        if in_mode == "tc":
            return True
        if in_mode == "xdp-generic" and not shaped:
            return False
        if in_mode == "xdp" and not shaped and modes.get(oif) == "xdp":
            return False
        return None

    def _egress_shaped(self, ifindex: int) -> bool:
        now = time.monotonic()
        cached = self._shaped_cache.get(ifindex)
        if cached is not None and now - cached[0] < 1.0:
            return cached[1]
        shaped = bool(rtnl.qdisc_kinds(ifindex) & SHAPING_QDISCS)
        self._shaped_cache[ifindex] = (now, shaped)
        return shaped

    def _write_verdict(self, rec: FlowRecord, state: State, reason: str) -> None:
        self.flows_map.update(rec.key, maps.encode_verdict(state))
        rec.state, rec.reason, rec.nexthop = state, reason, None

    # -- eviction -------------------------------------------------------------------------------

    def _evict(self, key: bytes, why: str) -> None:
        self.flows_map.delete(key)
        rec = self.book.remove(key)
        if rec is not None:
            log.debug("evict %s: %s", rec.info.tuple, why)

    def evict_connection(self, ct: maps.Tuple, why: str) -> int:
        self._ct_expiry.pop(ct, None)
        recs = self.book.of_connection(ct)
        for rec in recs:
            self._evict(rec.key, why)
        return len(recs)

    def flush(self) -> int:
        keys = list(self.book.records)
        for key in keys:
            self._evict(key, "flush")
        for key in list(self.flows_map.keys()):
            self.flows_map.delete(key)
        return len(keys)

    def resync(self) -> dict[str, int]:
        """After a firewall reload: re-read the configuration and fw4's model, forget PASS and
        DROP verdicts, re-check every FORWARD flow (kept when still valid)."""
        self.reload()
        self.policy = self._load_policy()
        dropped = 0
        for rec in self.book.in_state(State.PASS, State.DROP):
            self._evict(rec.key, "resync")
            dropped += 1
        forward = self.book.in_state(State.FORWARD)
        self.resolver.invalidate()
        self._recheck_connections()
        self._revalidate = True
        self._revalidate_flows()
        return {"verdicts_flushed": dropped, "revalidated": len(forward)}

    # -- conntrack and rtnetlink events ---------------------------------------------------------

    def _on_conntrack(self) -> None:
        try:
            events = self.ct_events.read()
        except ctmod.EventsLost:
            log.warning("conntrack events lost: revalidating every flow")
            self._recheck_connections()
            return
        for ev in events:
            if ev.entry is None:
                continue
            log.debug("conntrack %s: %s status %#x tcp %s", ev.kind, ev.entry.orig,
                      ev.entry.status, ev.entry.tcp_state)
            if ev.kind == "destroy":
                self.evict_connection(ev.entry.orig, "conntrack destroy")
                continue
            for rec in self.book.waiting_for(ev.entry.orig, ev.entry.reply) + \
                    self.book.of_connection(ev.entry.orig):
                if rec.state == State.PENDING:
                    self._admit(rec)

    def _recheck_connections(self) -> None:
        for rec in list(self.book.records.values()):
            if rec.key not in self.book:
                continue
            found = self.conntrack.lookup(rec.info.tuple)
            if found is None:
                if rec.ct is not None:
                    self.evict_connection(rec.ct, "conntrack entry gone")
                else:
                    self._evict(rec.key, "no conntrack entry")
            elif rec.state == State.PENDING:
                self._admit(rec)
            elif rec.state == State.FORWARD and found[0].ineligible_reason() is not None:
                self.evict_connection(found[0].orig, found[0].ineligible_reason() or "")

    def _on_rtnetlink(self) -> None:
        try:
            events = self.rt_events.read()
        except nhmod.EventsLost:
            self._revalidate = True    # everything
            events = []
        if not events and not self._revalidate:
            return
        self.resolver.invalidate()
        self._shaped_cache.clear()
        self.fw4.poke()     # netifd brings devices and addresses: a refused model may do now
        changed = Changes()
        for ev in events:
            if ev.kind in ("route", "addr"):
                self._revalidate = True    # any flow may take another path now
            else:
                changed.add(ev)
        if not self._revalidate and changed:
            # one pass over the flows per batch of events, not one per event
            self._stale.update(r.key for r in self.book.records.values() if changed.affect(r))

    def _revalidate_flows(self) -> None:
        """Re-resolves the next hop of the flows routing events may have changed: all of them
        after a route or address change, else those on the changed link, neighbour or port."""
        if self._revalidate:
            self._revalidate, self._stale = False, set()
            recs = list(self.book.records.values())
        else:
            recs = [r for k in self._stale if (r := self.book.get(k)) is not None]
            self._stale = set()
        for rec in recs:
            if rec.egress is None or rec.state not in (State.FORWARD, State.PENDING):
                continue
            was_pending = rec.state == State.PENDING
            nh = self._forward(rec, rec.egress, rec.mark)
            if nh is not None and was_pending:
                self._pair(rec, nh)

    # -- sweep ----------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        self.runtime_map.update(bytes(4), maps.encode_runtime(time.monotonic_ns()))

    def sweep(self) -> None:
        """Counters, idle expiry, conntrack timeout refresh, stale PENDING cleanup, heartbeat."""
        start = time.monotonic()
        self._heartbeat()
        self._check_untagged(self.stats())
        now_ns = time.monotonic_ns()
        idle_ns = int(self.settings.idle_timeout * 1e9)
        refresh: set[maps.Tuple] = set()
        idle: set[maps.Tuple] = set()
        closing: set[maps.Tuple] = set()
        seen: set[bytes] = set()
        adopt = ADOPT_PER_SWEEP
        for key, value in self.flows_map.lookup_batch(4096):
            seen.add(key)
            packets, nbytes, last_seen, expires, state, flags = maps.FLOW_HEAD.unpack_from(value)
            rec = self.book.get(key)
            if rec is None:
                if state == State.PENDING:   # a flood must not cost a conntrack lookup each
                    if adopt == 0:
                        continue
                    adopt -= 1
                self._adopt(key, State(state))
                continue
            rec.active = packets != rec.packets
            rec.packets, rec.bytes, rec.last_seen_ns = packets, nbytes, last_seen
            if rec.state == State.FORWARD and rec.ct is not None:
                if flags & maps.F_CLOSING:   # its CLOSING event was lost
                    closing.add(rec.ct)
                elif now_ns - last_seen > idle_ns:
                    idle.add(rec.ct)
                elif rec.active:
                    refresh.add(rec.ct)
            elif rec.state in (State.PENDING, State.PASS) and start - rec.created > PENDING_TTL:
                self._evict(key, "undecided")
            elif rec.state == State.DROP and now_ns >= expires:
                self._evict(key, "drop verdict expired")
        for key in [k for k in self.book.records if k not in seen]:
            self.book.remove(key)    # the LRU evicted it
        for ct in closing:
            self.evict_connection(ct, "tcp close")
        for ct in idle:
            self.evict_connection(ct, "idle")
        self._refresh_conntrack(refresh - idle, start)
        self._fw4_tick()
        self._heartbeat()
        self.last_sweep_s = time.monotonic() - start
        self._next_sweep = time.monotonic() + self.settings.sweep_interval

    def _refresh_conntrack(self, active: set[maps.Tuple], now: float) -> None:
        """Keeps conntrack entries of carried flows alive.

        Only when half their timeout is spent: every refresh makes the kernel send an UPDATE
        event to every listener, this daemon included, and those cost far more than the refresh.
        """
        full = {p: self.conntrack.established_timeout(p) for p in (socket.IPPROTO_TCP,
                                                                   socket.IPPROTO_UDP)}
        due = [ct for ct in active
               if self._ct_expiry.get(ct, 0.0) - now < full.get(ct.l4proto, 120) / 2]
        if not due:
            return
        self.conntrack.refresh(due, lambda t: full.get(t.l4proto, 120))
        for ct in due:
            self._ct_expiry[ct] = now + full.get(ct.l4proto, 120)

    def _adopt(self, key: bytes, state: State) -> None:
        """An entry the daemon does not know: a restart's leftovers or a lost ring event."""
        rec = self.book.add(key)
        if state != State.FORWARD:
            self.flows_map.update(key, maps.encode_verdict(State.PENDING))
            self._admit(rec)
            return
        found = self.conntrack.lookup(rec.info.tuple)
        if found is None or found[0].ineligible_reason() is not None:
            self._evict(key, "re-adopt: no eligible conntrack entry")
            return
        entry, direction = found
        self.book.bind(rec, entry.orig, direction)
        rec.state = State.FORWARD
        self._forward(rec, entry.egress(direction), entry.mark)   # keeps counters, new next hop

    def _readopt(self) -> None:
        for key, value in self.flows_map.lookup_batch(4096):
            self._adopt(key, State(maps.FLOW_HEAD.unpack_from(value)[4]))

    # -- configuration --------------------------------------------------------------------------

    def reload(self) -> None:
        if self._reload_settings is None:
            return
        try:
            new = self._reload_settings()
        except Disabled as e:
            log.info("reload: %s: stopping", e)
            self.request_stop()
            return
        except ValueError as e:
            log.error("reload: %s (keeping the running configuration)", e)
            return
        old, self.settings = self.settings, new
        if (new.heartbeat_timeout, new.flows_max, new.ubus_socket) != \
                (old.heartbeat_timeout, old.flows_max, old.ubus_socket):
            log.warning("reload: heartbeat_timeout, flows_max and ubus_socket apply after a "
                        "restart")
        current = dict(self.loader.attachments)
        fresh = self._dsa_plan(self._untagged)
        if not fresh.conduits or (fresh.tag, fresh.conduit_ifindexes) == \
                (self.dsa.tag, self.dsa.conduit_ifindexes):
            fresh.tag = self.dsa.tag
            self.dsa = fresh
        else:   # the object's tag code and conduits are fixed at load
            log.warning("reload: DSA conduits or tag changed (%s on %s): applies after a restart",
                        fresh.tag, ", ".join(c.name for c in fresh.conduits) or "none")
        wanted = {name: new.mode_of(name) for name in self._interface_names()}
        for name, mode in current.items():
            if name not in wanted or (wanted[name] != "auto" and wanted[name] != mode):
                self.loader.detach(name)
        for name, mode in wanted.items():
            if name not in self.loader.attachments:
                log.info("%s: attached (%s)", name, self.loader.attach(name, mode))
        self._update_modes()
        self._revalidate = True
        log.info("configuration reloaded")

    # -- read-only views for api.py -------------------------------------------------------------

    def stats(self) -> dict[maps.Counter, int]:
        return maps.sum_stats(self.stats_map.lookup_percpu(bytes(4)))

    def heartbeat_age_ns(self) -> int:
        """Age of the heartbeat the fast path checks; past heartbeat_timeout it fails open."""
        raw = self.runtime_map.lookup(bytes(4))
        beat = maps.Runtime.from_buffer_copy(raw).heartbeat_ns if raw else 0
        return max(0, time.monotonic_ns() - beat)


def drop_ttl_ns(until: float, now: float) -> int:
    """How long an early-drop verdict may hold: DROP_TTL_NS, and never beyond the next boundary
    of a time window the verdict depended on (`until`, wall clock)."""
    if until == math.inf:
        return DROP_TTL_NS
    return max(0, min(DROP_TTL_NS, int((until - now) * 1e9)))


def _reverse(t: maps.Tuple) -> maps.Tuple:
    return maps.Tuple(t.l4proto, t.daddr, t.saddr, t.dport, t.sport)


@dataclass
class Changes:
    """A batch of link, neighbour and FDB events, as what they can change."""

    links: set[int] = field(default_factory=set)
    neighs: dict[object, tuple[str, bytes | None]] = field(default_factory=dict)
    macs: set[bytes] = field(default_factory=set)

    def add(self, ev: nhmod.RtEvent) -> None:
        if ev.kind == "link":
            self.links.add(ev.ifindex)
        elif ev.kind == "neigh":
            self.neighs[ev.address] = (ev.action, ev.lladdr)
        elif ev.kind == "fdb" and ev.lladdr is not None:
            self.macs.add(ev.lladdr)

    def __bool__(self) -> bool:
        return bool(self.links or self.neighs or self.macs)

    def affect(self, rec: FlowRecord) -> bool:
        """Whether these events can change this flow's next hop."""
        nh = rec.nexthop
        if nh is None:      # PENDING for want of a next hop: any such event may bring it
            return rec.egress is not None
        if self.links & {nh.oif, nh.l3_oif, rec.info.ifindex} or nh.dmac in self.macs:
            return True
        neigh = self.neighs.get(nh.neigh)
        # most neighbour events are state changes (REACHABLE -> STALE) of the same MAC
        return neigh is not None and (neigh[0] == "del" or neigh[1] != nh.dmac)


def _keep_counters(old: bytes | None, new: bytes) -> bytes:
    """A rewritten entry keeps its counters and last-seen time (first 24 bytes)."""
    if old is None:
        return new
    return old[:24] + new[24:]


def user_includes(directory: str) -> list[str]:
    """The *.nft files fw4 would include that hold anything but comments."""
    found = []
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if not name.endswith(".nft") or not os.path.isfile(path):
                continue
            with open(path, errors="replace") as f:
                if any(line.strip() and not line.lstrip().startswith("#") for line in f):
                    found.append(path)
    return found


def lowest_devices() -> list[str]:
    """Interfaces for 'auto' without fw4: up, not loopback, not a bridge or other upper device."""
    names = []
    with rtnl.Rtnl() as rt:
        for link in map(nhmod.link_from_msg, rt.links()):
            if link.name == "lo" or not link.flags & 1 or \
                    link.kind in ("bridge", "vlan", "ppp", "ifb"):
                continue
            names.append(link.name)
    return names
