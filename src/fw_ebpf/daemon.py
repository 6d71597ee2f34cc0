# SPDX-License-Identifier: GPL-2.0-only
"""The ebpfw daemon: one event loop that keeps the fast path's flow table true.

run() reads as the table of contents: the fast path (loader, maps), conntrack, the router's
devices and their events, nftables events, fw4's policy, the interfaces, the flows a previous
run left, the ring buffer, the control socket and ubus; then the loop; then all of it stopped in
reverse. The rooms: admission.py (how a flow comes to be forwarded and how it stops), upkeep.py
(the sweep, generations, adoption). Every handler runs to completion in the loop: no locks.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import signal
import socket
import struct
import time
from dataclasses import dataclass
from typing import Callable

from fw_ebpf import api, conduit, config, fw4, libubus, maps, rtnl, ubus_api
from fw_ebpf import conntrack as ctmod
from fw_ebpf import links as lkmod
from fw_ebpf.admission import DSA_PORT_MASK, Admission
from fw_ebpf.config import Disabled, Settings
from fw_ebpf.conntrack import Conntrack, ConntrackEvents
from fw_ebpf.control import DEFAULT_PATH, ControlServer
from fw_ebpf.flows import FlowBook
from fw_ebpf.flowtable import FlowTables
from fw_ebpf.fw4live import Fw4Keeper
from fw_ebpf.libbpf import BpfMap, RingBuffer
from fw_ebpf.links import Links, RtEvents
from fw_ebpf.loader import BYTE_ORDER, Loader, default_object_dir, pending_size
from fw_ebpf.maps import State
from fw_ebpf.nftevents import NftEvents
from fw_ebpf.policy import Facts, Policy
from fw_ebpf.upkeep import Upkeep

log = logging.getLogger("fw_ebpf.daemon")

# fw4 includes these in its table; their rules are not in fw4's model
NFT_INCLUDE_DIR = "/etc/nftables.d"
# frames without their tag on the conduits before their user ports take over
UNTAGGED_FALLBACK = 64
# heartbeats written per heartbeat_timeout, busy or not
HEARTBEATS = 4
# how long a turn of the loop admits new flows and retries before it answers requests again
# (at least one chunk of each): by count, a turn would last as long as its costliest flows
# (a rejected tuple's last retry is a policy decision each)
TURN_BUDGET = 0.1
# how many new flows may wait read; the ring is always read (a PROVED event lost to a full
# ring costs a flow its offload until the sweep finds it), new flows past the backlog are left
# in the pending tables, taken up once it is done (catch_up)
RING_BACKLOG = 16384
# new flows admitted at once (one batch of conntrack lookups); the ring is read between two,
# so it does not fill while a slice is admitted
ADMIT_CHUNK = 256
# how often the fast path's counts of shed and lost NEW events are looked at (Upkeep.catch_up)
CATCH_UP_INTERVAL = 0.1
# how often at most the PROVING flows are looked at after ring events were lost
PROOF_CHECK_INTERVAL = 1.0


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
        self._ring_read: list[bytes] = []
        # to admit: (key, when the fast path saw the flow's first packet, 0: not known)
        self.new_flows: collections.deque[tuple[bytes, int]] = collections.deque()
        self._next_sweep = 0.0
        self._next_catch_up = 0.0
        self._turn_ends = 0.0       # the current turn's budget for new flows and retries
        self.left_pending = 0       # NEW events passed over for a full backlog (catch_up)
        self._events_lost = 0       # the fast path's count when the proofs were last checked
        self._next_proof_check = 0.0
        self._tx: set[int] = set()           # egress devices in the XDP devmap
        self._macs: dict[bytes, int] = {}    # ebpfw_macs: address -> a device with it
        self.fw4 = Fw4Keeper(self._read_model, self._make_policy)
        self.policy: Policy | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self) -> int:
        """Starts every subsystem in order, runs the loop, stops them in reverse."""
        with contextlib.ExitStack() as stack:
            self._start_fastpath(stack)
            self.conntrack = stack.enter_context(Conntrack())
            # no NEW events: a flow's first lookup finds its entry, or is retried (RETRY_DELAYS);
            # UDP updates never change what may be offloaded, our own refreshes are known
            self.ct_events = stack.enter_context(ConntrackEvents(
                ("update", "destroy"), udp_updates=False, not_from=self.conntrack.portid))
            self.links = stack.enter_context(Links())
            self.rt_events = stack.enter_context(RtEvents())
            self.nft_events = stack.enter_context(NftEvents())
            pending = pending_size(self.settings.flows_max)     # entries a pending table holds
            self.admission = Admission(self.book, self.tables, self.conntrack, self.links,
                                       self.loader.hooks, lambda: self.policy, lambda: self._tx,
                                       self._egress_mtu, retries_max=pending,
                                       rejected_max=len(maps.TABLES) * pending)
            self.upkeep = Upkeep(self.book, self.tables, self.admission, self.conntrack,
                                 lambda: self.settings.idle_timeout, self._after_sweep)
            self.policy = self._load_policy()
            self._attach_interfaces()
            self.upkeep.take_stock({i: lk.fast_path_view for i, lk in self.links.links().items()},
                                   self.links.neighbours(), self.links.neighbours(rtnl.AF_BRIDGE))
            readopted = self.upkeep.readopt()
            # whatever changed while no daemon ran: everything is proved again
            self.upkeep.new_generation("daemon started")
            self.ring = stack.enter_context(RingBuffer(self.loader.map("ebpfw_events"),
                                                       self._on_ring_record))
            self.api = api.Api(self)
            self.control = ControlServer(self.paths.control, self.api.call)
            stack.callback(self.control.close)
            self.ubus = self._start_ubus(stack)
            log.info("running: %d interfaces, %d flows re-adopted",
                     len(self.loader.attachments), readopted)
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
                                 s.heartbeat_timeout, event_rate=s.event_rate,
                                 event_burst=s.event_rate,
                                 dsa_conduits=self.dsa.conduit_ifindexes))
        stack.callback(self.loader.close)
        self.loader.load()
        # a clean stop leaves nothing behind: detach, then remove the pins (callbacks run LIFO)
        stack.callback(self.loader.unpin)
        stack.callback(self.loader.detach_all)
        self.tables = FlowTables(self.loader.map, beat_every=s.heartbeat_timeout / HEARTBEATS)
        self.stats_map: BpfMap = self.loader.map("ebpfw_stats")
        self.tx_map: BpfMap = self.loader.map("ebpfw_tx")
        self.macs_map: BpfMap = self.loader.map(maps.MACS_MAP)
        self.tables.heartbeat()

    def _attach_interfaces(self) -> None:
        names = self._interface_names()
        if not names:
            raise RuntimeError("no interface to attach to (option 'interface')")
        self._sync_macs()   # before the first frame could prove anything
        for ifname in names:
            log.info("%s: attached (%s)", ifname,
                     self.loader.attach(ifname, self.settings.mode_of(ifname)))
        self._sync_devices()

    def _sync_devices(self) -> None:
        self._sync_macs()
        self._sync_tx()

    def _sync_macs(self) -> None:
        """ebpfw_macs holds every address of every device here: the sources the kernel
        writes on what it routes."""
        want = {lk.mac: lk.index for lk in self.links.links().values()
                if len(lk.mac) == 6 and any(lk.mac)}
        if len(want) > maps.MACS_MAX:
            log.warning("%d MAC addresses here, ebpfw_macs holds %d: flows leaving from the "
                        "others are not offloaded", len(want), maps.MACS_MAX)
            want = dict(sorted(want.items(), key=lambda kv: kv[1])[:maps.MACS_MAX])
        for mac in self._macs.keys() - want.keys():
            self.macs_map.delete(mac)
        for mac, index in want.items():
            if self._macs.get(mac) != index:
                self.macs_map.update(mac, struct.pack("=I", index))
        self._macs = want

    def _sync_tx(self) -> None:
        """The XDP devmap holds the attached devices whose driver takes XDP frames."""
        want = set()
        for name in self.loader.attachments:
            with contextlib.suppress(OSError):
                index = socket.if_nametoindex(name)
                if self.links.takes_xdp(index, self.loader.hooks(index)[0] == "xdp"):
                    want.add(index)
        for index in self._tx - want:
            self.tx_map.delete(struct.pack("=I", index))
        for index in want - self._tx:
            self.tx_map.update(struct.pack("=I", index), struct.pack("=I", index))
        self._tx = want

    def _interface_names(self) -> list[str]:
        return list(self.dsa.interfaces)

    # -- DSA switches ---------------------------------------------------------------------------

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
            devices = [(lk.name, lk.index, lk.master) for lk in map(lkmod.link_from_msg,
                                                                     rt.links())]
        return conduit.zone_devices({z.name: z.match_devices for z in model.zones}, devices)

    def _egress_mtu(self, oif: int, dsa_port: int) -> int:
        """The L3 MTU of a flow's egress: a conduit's user port for the port its tag names."""
        if dsa_port != maps.NO_DSA_PORT:
            for c in self.dsa.conduits:
                for port in c.ports if c.ifindex == oif else ():
                    if port.port == dsa_port & DSA_PORT_MASK:
                        return self.links.mtu(port.ifindex)
        return self.links.mtu(oif)

    def _check_untagged(self) -> None:
        """A conduit whose frames come without their tag (MediaTek SoCs can take it off in
        hardware) gives no source port: its user ports take over."""
        seen = self.stats()[maps.Counter.PASS_DSA_UNTAGGED]
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
        self._sync_devices()
        self.upkeep.new_generation("DSA conduit delivers untagged frames")

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
        sel.register(self.nft_events.fileno(), selectors.EVENT_READ, self._on_nftables)
        sel.register(self.control.fileno(), selectors.EVENT_READ, self.control.serve_ready)
        if self.ubus is not None:
            sel.register(self.ubus.fileno(), selectors.EVENT_READ, self.ubus.service)
        try:
            while not self._stopping:
                ready = sel.select(self._timeout())
                self._turn_ends = time.monotonic() + TURN_BUDGET
                for key, _ in ready:
                    key.data()
                self._drain_ring()
                self.tables.beat()
                self.admission.run_retries(self._turn_ends)
                if not self.new_flows and time.monotonic() >= self._next_catch_up:
                    self._catch_up()
                if time.monotonic() >= self.fw4.retry_at:
                    self._fw4_tick()
                if time.monotonic() >= self._next_sweep:
                    self.sweep()
                if self._reload:
                    self._reload = False
                    self.reload()
                self.tables.flush()     # nothing staged outlives a turn of the loop
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, h in handlers.items():
                signal.signal(sig, h)
            sel.close()
            wake_r.close()
            wake_w.close()

    def _timeout(self) -> float:
        if self._ring_read or self.new_flows and not self.admission.saturated:
            return 0.0
        deadline = min(self._next_sweep, self.admission.next_retry, self.fw4.retry_at,
                       self.tables.next_beat_ns / 1e9)
        return max(0.0, deadline - time.monotonic())

    def sweep(self) -> None:
        """A step of the sweep: the slice's next one comes next turn, after the new flows
        that came meanwhile; the next slice a sweep_interval after this one ends."""
        if len(self.new_flows) < RING_BACKLOG:
            self._drain_ring()
        if self.upkeep.sweep(recover=not self.new_flows and not self._ring_read and
                             not self.admission.saturated):
            self._next_sweep = time.monotonic() + self.settings.sweep_interval

    # -- events ---------------------------------------------------------------------------------

    def _on_ring_record(self, raw: bytes) -> None:
        self._ring_read.append(raw)    # decided after consume() returns, not in the callback

    def _drain_ring(self) -> None:
        """Proofs and closes at once (cheap, and a flow waits on them), new flows ADMIT_CHUNK
        at a time (one batch of conntrack lookups each) until the turn's budget is spent, the
        ring read between two."""
        self.ring.consume()   # into _ring_read: what stays in a full ring is lost
        read, self._ring_read = self._ring_read, []
        proved, closing = [], []
        for raw in read:
            kind, key, first_ns = maps.split_event(raw)
            if kind == maps.EV_NEW:
                if len(self.new_flows) < RING_BACKLOG:
                    self.new_flows.append((key, first_ns))
                else:
                    self.left_pending += 1
            elif kind == maps.EV_PROVED:
                proved.append(key)
            elif kind == maps.EV_CLOSING:
                closing.append(key)
        self.admission.on_proved(proved)
        for key in closing:     # after the proofs: a flow proved and closed is gone
            self.tables.beat()
            self.admission.on_closing(key)
        while self.new_flows and not self.admission.saturated:
            n = min(ADMIT_CHUNK, len(self.new_flows))
            self.admission.on_new([self.new_flows.popleft() for _ in range(n)])
            self.ring.consume()
            if time.monotonic() >= self._turn_ends:
                break

    def _catch_up(self) -> None:
        """Flows whose NEW event the fast path shed or lost, or the backlog passed over, join
        the new ones once the backlog is done; flows whose PROVED event was lost are found."""
        self._next_catch_up = time.monotonic() + CATCH_UP_INTERVAL
        counters = self.stats()
        waiting = {key for key, _ in self.new_flows}
        waiting.update(key for kind, key, _ in map(maps.split_event, self._ring_read)
                       if kind == maps.EventType.NEW)
        self.new_flows.extend(self.upkeep.catch_up(
            counters[maps.Counter.EVENT_SHED] + counters[maps.Counter.EVENT_LOST]
            + self.left_pending, waiting))
        now = time.monotonic()
        if counters[maps.Counter.EVENT_LOST] != self._events_lost and \
                now >= self._next_proof_check:
            # a PROVED event lost to a full ring: its flow would wait for the sweep's cycle
            # (half a minute at 64k); the PROVING flows are few, each is looked up now
            self._events_lost = counters[maps.Counter.EVENT_LOST]
            self._next_proof_check = now + PROOF_CHECK_INTERVAL
            self.admission.on_proved([r.key for r in self.book.in_state(State.PROVING)])

    def _on_conntrack(self) -> None:
        try:
            events = self.ct_events.read(tuples_only=True)     # which connections changed
        except ctmod.EventsLost:
            log.warning("conntrack events lost: checking every flow against conntrack")
            self.admission.recheck_connections()
            return
        self.admission.on_conntrack(events)

    def _on_rtnetlink(self) -> None:
        try:
            events = self.rt_events.read()
            why = self.upkeep.routing_changed(events)
        except lkmod.EventsLost:
            why, events = "routing events lost", []
        self.links.invalidate()
        self.fw4.poke()     # netifd brings devices and addresses: a refused model may do now
        if any(ev.kind == "link" for ev in events) or why:
            self._sync_devices()
        if why:
            self.upkeep.new_generation(why)

    def _on_nftables(self) -> None:
        if self.nft_events.read() is not None:
            # any table, any family: a rule outside fw4 may drop what was accepted so far
            self.upkeep.new_generation("firewall ruleset changed")

    # -- fw4's policy (early drop) ----------------------------------------------------------------

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
        return Policy(model, self.links.is_local, self.links.out_device, facts)

    def _after_sweep(self) -> None:
        self._check_untagged()
        self._fw4_tick()

    def _fw4_tick(self) -> None:
        """A model retry, or facts that moved (sets, marks): verdicts of the old policy go."""
        if not self.settings.early_drop:
            self.fw4.off()
            return
        if self.fw4.tick():
            self.policy = self.fw4.policy
            for rec in self.book.in_state(State.DROP):
                self.admission.evict(rec.key, "fw4 model or facts changed")

    # -- what api.py asks for -------------------------------------------------------------------

    def flush(self) -> int:
        return self.admission.flush()

    def resync(self) -> dict[str, int]:
        """After a firewall reload: re-read the configuration and fw4's model, forget PASS and
        DROP verdicts, and prove every offloaded flow again."""
        dropped = 0
        for rec in self.book.in_state(State.PASS, State.DROP):
            self.admission.evict(rec.key, "resync")
            dropped += 1
        self.reload()
        self.policy = self._load_policy()
        self.upkeep.new_generation("resync")
        return {"verdicts_flushed": dropped,
                "revalidated": len(self.book.in_state(State.FORWARD, State.PROVING))}

    def stats(self) -> dict[maps.Counter, int]:
        return maps.sum_stats(self.stats_map.lookup_percpu(bytes(4)))

    def heartbeat_age_ns(self) -> int:
        """Age of the heartbeat the fast path checks; past heartbeat_timeout it fails open."""
        raw = self.loader.map("ebpfw_runtime").lookup(bytes(4))
        beat = maps.Runtime.from_buffer_copy(raw).heartbeat_ns if raw else 0
        return max(0, time.monotonic_ns() - beat)

    @property
    def admission_ms(self) -> list[float]:
        return list(self.admission.admission_ms)

    @property
    def last_sweep_s(self) -> float:
        return self.upkeep.last_sweep_s

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
        fixed = ("heartbeat_timeout", "flows_max", "event_rate", "ubus_socket")
        if any(getattr(new, f) != getattr(old, f) for f in fixed):
            log.warning("reload: heartbeat_timeout, flows_max, event_rate and ubus_socket apply "
                        "after a restart")
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
        if self.loader.attachments != current:
            self._sync_devices()
            # hooks came or went: which one can carry a flow is decided again with its proof
            self.upkeep.new_generation("interfaces reattached")
        log.info("configuration reloaded")


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
        for link in map(lkmod.link_from_msg, rt.links()):
            if link.name == "lo" or not link.flags & 1 or \
                    link.kind in ("bridge", "vlan", "ppp", "ifb"):
                continue
            names.append(link.name)
    return names
