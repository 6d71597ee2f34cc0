# SPDX-License-Identifier: GPL-2.0-only
"""Load the fast-path object, pin its maps, attach it to interfaces and detach it again.

Every interface gets the proof (ebpfw_egress on TC egress) and an ingress fast path: XDP
(native or generic), TC ingress, or in `auto` both, so that a flow whose egress cannot take an
XDP redirect is forwarded from TC on the same ingress. XDP attachments are bpf_links pinned in
the pin dir, so they survive a daemon crash and a restarted daemon replaces the program in
place. TC attachments are cls_bpf filters with our own handle and priority on a clsact qdisc;
the qdisc is removed only if we created it and nothing else is left on it. That we created it
is recorded in the pin dir (the TC program pinned as `tc-clsact-<ifname>`), so a daemon
restarted after a crash still knows. The loader never removes what it did not attach.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from fw_ebpf import libbpf, maps, rtnl
from fw_ebpf.config import PIN_DIR
from fw_ebpf.libbpf import BpfError, BpfMap, BpfObject, Link

log = logging.getLogger("fw_ebpf.loader")

BPFFS = "/sys/fs/bpf"
ROUTER_OBJ_DIR = "/lib/bpf"
DEV_OBJ_DIR = str(Path(__file__).resolve().parents[2] / "build")  # repo checkout

RODATA_SECTION = ".rodata.config"
FLOW_MAPS = tuple(name for pair in maps.TABLES.values() for name in pair)
EGRESS_MAPS = tuple(maps.EGRESS_TABLES.values())
# ebpfw_tx is not pinned: libbpf 1.1 cannot reuse a pinned devmap (the kernel adds
# BPF_F_RDONLY_PROG to its flags), and the daemon refills it from the re-adopted flows
PINNED_MAPS = (*FLOW_MAPS, *EGRESS_MAPS, "ebpfw_stats", "ebpfw_runtime")
XDP_PROG, TC_PROG, EGRESS_PROG = "ebpfw_xdp", "ebpfw_tc", "ebpfw_egress"

# cls_bpf identity on clsact ingress. qosify uses prio 0x110.., bridger 0xbb00..0xbb03; lower
# prio runs first, so ours runs after both and never hides their classification.
TC_HANDLE = 0xEB
TC_PRIORITY = 0xEB00
TC_PARENT_INGRESS, TC_PARENT_EGRESS = 0xFFFFFFF2, 0xFFFFFFF3

MODES = ("xdp", "xdp-generic", "tc", "auto")
_XDP_MODE = {"xdp": "native", "xdp-generic": "generic"}


def pending_size(flows_max: int) -> int:
    """Pending table entries per family: an eighth of the decided table's, at least 1024."""
    return max(1024, flows_max // 8)


BYTE_ORDER = "le" if sys.byteorder == "little" else "be"


def object_name(dsa_tag: str | None = None) -> str:
    """The object for this host's byte order: with the tag code of a DSA tag protocol, or
    without any (all of them share the maps, pins included)."""
    return f"ebpfw-{dsa_tag}-{BYTE_ORDER}.o" if dsa_tag else f"ebpfw-{BYTE_ORDER}.o"


def default_object_dir() -> str:
    """/lib/bpf on a router, the checkout's build/ in development."""
    if os.path.exists(os.path.join(ROUTER_OBJ_DIR, object_name())):
        return ROUTER_OBJ_DIR
    return DEV_OBJ_DIR


def xdp_prog_ids(ifindex: int) -> dict[str, int]:
    """XDP programs on an interface as the kernel reports them: {"native"|"generic": prog id}."""
    return rtnl.xdp_prog_ids(ifindex)


def tc_filter_count(ifindex: int) -> int:
    """Filters (anyone's) on the clsact qdisc of an interface, both directions."""
    return len(rtnl.tc_filters(ifindex, (TC_PARENT_INGRESS, TC_PARENT_EGRESS)))


def has_clsact(ifindex: int) -> bool:
    return "clsact" in rtnl.qdisc_kinds(ifindex)


def _bpffs_mounted(path: str = BPFFS) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1:3] == [path, "bpf"] for line in f)


def _fs_type(path: str) -> str:
    """The type of the filesystem path is on (the longest mount point that contains it)."""
    real, best, kind = os.path.realpath(path), "", ""
    with open("/proc/self/mounts") as f:
        for line in f:
            mnt, fstype = line.split()[1:3]
            mnt = mnt.replace("\\040", " ")
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, kind = mnt, fstype
    return kind


def _mount_bpffs(path: str = BPFFS) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", path.encode(), b"bpf", ctypes.c_ulong(0), b"mode=0700") != 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"{path}: cannot mount bpffs: {os.strerror(err)}")
    log.info("mounted bpffs at %s", path)


@dataclass
class _Attachment:
    ifindex: int
    xdp: str | None = None          # "xdp" (native) or "xdp-generic"
    link: Link | None = None        # the XDP link
    tc_ingress: bool = False
    created_clsact: bool = False

    @property
    def mode(self) -> str:
        """What carries flows entering here: "xdp", "xdp-generic", "tc", or XDP with TC
        beside it ("xdp+tc") for the flows XDP cannot send."""
        if self.xdp and self.tc_ingress:
            return f"{self.xdp}+tc"
        return self.xdp or "tc"


class Loader:
    def __init__(self, obj_path: str | None = None, *, obj_dir: str | None = None,
                 pin_dir: str = PIN_DIR, flows_max: int | None = None,
                 config: bytes | None = None, dsa_tag: str | None = None) -> None:
        self.obj_path = obj_path or os.path.join(obj_dir or default_object_dir(),
                                                 object_name(dsa_tag))
        self.pin_dir = pin_dir
        self.flows_max = flows_max
        self.config = config  # .rodata.config contents, e.g. bytes(fw_ebpf.maps.Config(...))
        self.obj: BpfObject | None = None
        self._attached: dict[str, _Attachment] = {}

    # ---- load / pins ----

    def _pin_path(self, name: str) -> str:
        return os.path.join(self.pin_dir, name)

    def _link_pin(self, ifname: str) -> str:
        return self._pin_path(f"link-xdp-{ifname}")

    def _clsact_pin(self, ifname: str) -> str:
        return self._pin_path(f"tc-clsact-{ifname}")

    def load(self) -> None:
        if self.obj is not None:
            return
        if os.path.commonpath([os.path.abspath(self.pin_dir), BPFFS]) == BPFFS \
                and not _bpffs_mounted():
            _mount_bpffs()
        try:
            os.makedirs(self.pin_dir, mode=0o700, exist_ok=True)
        except OSError as e:
            raise BpfError(e.errno or errno.EIO, f"{self.pin_dir}: cannot create the pin "
                                                 f"directory: {e.strerror}") from None
        if _fs_type(self.pin_dir) != "bpf":
            raise BpfError(errno.EINVAL, f"{self.pin_dir}: pin directory is not on a bpf "
                                         "filesystem (mount -t bpf bpf <dir>)")
        obj = BpfObject(self.obj_path)
        try:
            if self.config is not None:
                obj.set_rodata(RODATA_SECTION, bytes(self.config))
            if self.flows_max is not None:
                for decided, pending in maps.TABLES.values():
                    obj.set_max_entries(decided, self.flows_max)
                    obj.set_max_entries(pending, pending_size(self.flows_max))
                for egress in EGRESS_MAPS:
                    obj.set_max_entries(egress, self.flows_max)
            reused = []
            for name in PINNED_MAPS:
                path = self._pin_path(name)
                if os.path.exists(path) and self._pin_compatible(obj.map(name), path):
                    reused.append(name)
                obj.set_pin_path(name, path)
            obj.load()
        except BaseException:
            obj.close()
            raise
        self.obj = obj
        log.info("loaded %s (libbpf %s); maps in %s%s", self.obj_path, libbpf.libbpf_version(),
                 self.pin_dir, f", re-adopted {', '.join(reused)}" if reused else "")

    @staticmethod
    def _pin_compatible(want: BpfMap, path: str) -> bool:
        """A pinned map libbpf cannot reuse (other flows_max, new ABI) would fail the load:
        drop it and start empty; the daemon re-learns flows from conntrack anyway."""
        try:
            with libbpf.open_pinned_map(path) as have:
                shape = (have.type, have.key_size, have.value_size, have.max_entries, have.flags)
        except BpfError as e:
            log.warning("%s: unusable pin, removing it (%s)", path, e)
            os.unlink(path)
            return False
        if shape == (want.type, want.key_size, want.value_size, want.max_entries, want.flags):
            return True
        log.warning("%s: pinned map has another layout (type, key, value, entries, flags = %s; "
                    "object wants %s); starting it empty", path, shape,
                    (want.type, want.key_size, want.value_size, want.max_entries, want.flags))
        os.unlink(path)
        return False

    def _loaded(self) -> BpfObject:
        if self.obj is None:
            raise BpfError(errno.EINVAL, f"{self.obj_path}: not loaded; call load() first")
        return self.obj

    def map(self, name: str) -> BpfMap:
        return self._loaded().map(name)

    # ---- attach / detach ----

    @property
    def attachments(self) -> dict[str, str]:
        return {ifname: a.mode for ifname, a in self._attached.items()}

    def hooks(self, ifindex: int) -> tuple[str | None, bool]:
        """(XDP kind or None, TC ingress) of the attached interface with this index."""
        for att in self._attached.values():
            if att.ifindex == ifindex:
                return att.xdp, att.tc_ingress
        return None, False

    def attach(self, ifname: str, mode: str = "auto") -> str:
        """Attach to ifname; returns what carries its flows (see _Attachment.mode)."""
        if mode not in MODES:
            raise ValueError(f"{ifname}: unknown attach mode {mode!r} "
                             f"(use one of {', '.join(MODES)})")
        self._loaded()
        try:
            ifindex = socket.if_nametoindex(ifname)
        except OSError:
            raise BpfError(errno.ENODEV, f"{ifname}: no such interface") from None
        current = self._attached.get(ifname)
        if current is not None:
            if current.ifindex == ifindex and mode in ("auto", current.mode):
                return current.mode
            self.detach(ifname)
        att = _Attachment(ifindex)
        self._attached[ifname] = att   # detach() undoes whatever part was done
        try:
            # the proof first, the fast paths after: nothing is forwarded unproved
            att.created_clsact = self._attach_tc(ifname, ifindex, EGRESS_PROG, egress=True)
            if mode in ("tc", "auto"):
                self._attach_tc(ifname, ifindex, TC_PROG, egress=False)
                att.tc_ingress = True
            if mode == "auto":
                self._attach_xdp_auto(ifname, att)
            elif mode != "tc":
                att.link = self._attach_xdp(ifname, ifindex, mode)
                att.xdp = mode
        except BaseException:
            self.detach(ifname)
            raise
        return att.mode

    def _attach_xdp_auto(self, ifname: str, att: _Attachment) -> None:
        """Native XDP where the driver has it, else generic; TC alone if neither works."""
        failures = []
        for kind in _XDP_MODE:
            try:
                att.link = self._attach_xdp(ifname, att.ifindex, kind)
            except BpfError as e:
                failures.append(f"{kind}: {e}")
                continue
            att.xdp = kind
            break
        log.info("%s: attached %s%s", ifname, att.mode,
                 f" ({'; '.join(failures)})" if failures else "")

    def _attach_xdp(self, ifname: str, ifindex: int, mode: str) -> Link:
        prog, pin = self._loaded().program(XDP_PROG), self._link_pin(ifname)
        link = self._adopt_link(ifname, ifindex, _XDP_MODE[mode], prog.fd)
        if link is None:
            link = libbpf.xdp_attach(prog, ifindex, _XDP_MODE[mode])
            try:
                link.pin(pin)
            except BaseException:
                link.close()  # never pinned: closing detaches
                raise
        return link

    def _adopt_link(self, ifname: str, ifindex: int, xdp_mode: str, prog_fd: int) -> Link | None:
        """Re-adopt the link a previous run pinned (no gap in forwarding), or clear it away."""
        pin = self._link_pin(ifname)
        if not os.path.exists(pin):
            return None
        try:
            link = libbpf.open_pinned_link(pin)
        except BpfError as e:
            log.warning("%s: removing unusable pin %s (%s)", ifname, pin, e)
            os.unlink(pin)
            return None
        try:
            info = link.info()
            if info.ifindex == ifindex and xdp_prog_ids(ifindex).get(xdp_mode) == info.prog_id:
                link.update_program(prog_fd)
                log.info("%s: re-adopted pinned XDP link, program replaced", ifname)
                return link
            # a link of ours for a vanished interface or another mode: pin dir is ours
            with contextlib.suppress(BpfError):
                link.detach()
        except BaseException:
            link.close()
            raise
        link.unpin(pin)
        link.close()
        return None

    def _attach_tc(self, ifname: str, ifindex: int, program: str, egress: bool) -> bool:
        """Our filter on clsact ingress or egress; True if the clsact is ours (created now or
        by an earlier run)."""
        prog = self._loaded().program(program)
        marker = self._clsact_pin(ifname)
        # asking first: creating over an existing qdisc makes libbpf log a kernel error
        created = not has_clsact(ifindex) and libbpf.tc_hook_create(ifindex)
        try:
            if created:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(marker)   # from a device of that name that has gone since
                self._loaded().program(TC_PROG).pin(marker)
            # replace: a filter at our handle/priority is ours from an earlier run
            libbpf.tc_attach(ifindex, prog.fd, TC_HANDLE, TC_PRIORITY, replace=True, egress=egress)
        except BaseException:
            if created:
                libbpf.tc_hook_destroy(ifindex)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(marker)
            raise
        return os.path.exists(marker)

    def detach(self, ifname: str) -> None:
        """Remove what this loader attached to ifname (and what an earlier run of ours left)."""
        att = self._attached.pop(ifname, None)
        pin, marker = self._link_pin(ifname), self._clsact_pin(ifname)
        if att is not None and att.link is not None:
            att.link.unpin(pin)
            att.link.close()  # last reference: the kernel detaches the program
        elif os.path.exists(pin):   # an earlier run's
            with libbpf.open_pinned_link(pin) as link:
                with contextlib.suppress(BpfError):
                    link.detach()
                link.unpin(pin)
        ifindex = att.ifindex if att is not None else _ifindex_of(ifname)
        if ifindex is not None and _ifindex_alive(ifindex):   # else it took its filters along
            for parent, egress in ((TC_PARENT_INGRESS, False), (TC_PARENT_EGRESS, True)):
                if any(f.handle == TC_HANDLE and f.priority == TC_PRIORITY
                       for f in rtnl.tc_filters(ifindex, (parent,))):
                    libbpf.tc_detach(ifindex, TC_HANDLE, TC_PRIORITY, egress=egress)
            if os.path.exists(marker) and tc_filter_count(ifindex) == 0:
                libbpf.tc_hook_destroy(ifindex)
        # the qdisc is gone, or others use it now: either way no longer ours to remove
        with contextlib.suppress(FileNotFoundError):
            os.unlink(marker)
        if att is not None:
            log.info("%s: detached (%s)", ifname, att.mode)

    def detach_all(self) -> None:
        errors = []
        for ifname in list(self._attached):
            try:
                self.detach(ifname)
            except (BpfError, OSError) as e:
                errors.append(e)
                log.error("%s", e)
        if errors:
            raise errors[0]

    def unpin(self) -> None:
        """Remove the map pins (call after detach_all, on a clean stop) and the empty pin dir."""
        for name in PINNED_MAPS:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._pin_path(name))
        with contextlib.suppress(OSError):
            os.rmdir(self.pin_dir)

    def close(self) -> None:
        """Drop our fds; attachments and pins stay for the next run (see detach_all/unpin)."""
        for att in self._attached.values():
            if att.link is not None:
                att.link.close()
        self._attached.clear()
        if self.obj is not None:
            self.obj.close()
            self.obj = None

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ifindex_of(ifname: str) -> int | None:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


def _ifindex_alive(ifindex: int) -> bool:
    try:
        socket.if_indextoname(ifindex)
        return True
    except OSError:
        return False
