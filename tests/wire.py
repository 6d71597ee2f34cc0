# SPDX-License-Identifier: GPL-2.0-only
"""Test-only BPF programs that stand in for what this kernel lacks on the wire (tests/bpf/):
a PPPoE session (pppoe_wire.c), a DSA switch behind a conduit (dsa_wire.c). Built like the fast path, loaded and attached with the
project's own libbpf binding, in namespaces the tests own."""
from __future__ import annotations

import ctypes
import fcntl
import socket
import struct
import subprocess
import sys
from pathlib import Path

from fw_ebpf import libbpf
from fw_ebpf.libbpf import BpfObject
from fw_ebpf.loader import has_clsact
from netns import run_in_netns, sh

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "tests" / "bpf"
BUILD = ROOT / "build" / "tests"

SIOCGIFHWADDR = 0x8927
# after ebpfw's filter (0xEB00): the fast path sees the wire as it is
WIRE_PRIORITY, WIRE_HANDLE = 0xF000, 0xF0


def build(name: str, variant: str = "", flags: tuple[str, ...] = (),
          deps: tuple[Path, ...] = ()) -> Path:
    """tests/bpf/<name>.c compiled for this host's byte order (when older than the source or
    deps); a variant (with its own flags) is built as <name>-<variant>.o."""
    BUILD.mkdir(parents=True, exist_ok=True)
    src = SOURCES / f"{name}.c"
    obj = BUILD / (f"{name}-{variant}.o" if variant else f"{name}.o")
    newest = max(p.stat().st_mtime for p in (src, *deps))
    if not obj.exists() or obj.stat().st_mtime < newest:
        arch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True,
                              text=True).stdout.strip()
        target = "bpfel" if sys.byteorder == "little" else "bpfeb"
        subprocess.run(["clang", "-O2", "-g", "-Wall", "-Werror", "-target", target,
                        f"-I/usr/include/{arch}", *flags, "-c", str(src), "-o", str(obj)],
                       check=True)
    return obj


class _Wire(ctypes.Structure):
    _fields_ = [("lower", ctypes.c_uint32), ("door", ctypes.c_uint32), ("sid", ctypes.c_uint16),
                ("peer_mac", ctypes.c_uint8 * 6), ("lower_mac", ctypes.c_uint8 * 6),
                ("upper_mac", ctypes.c_uint8 * 6)]


def _mac(ifname: str) -> bytes:
    """The device's MAC in the caller's network namespace (sysfs would show the host's)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("16s16x", ifname.encode()))
    return ifreq[18:24]


def _pppoe_end(obj_path: str, lower: str, upper: str, sid: int, peer_mac: bytes,
               pin: str) -> None:
    """In the namespace: the upper device (a NOARP veth whose peer is the door back in) and
    the two programs, the session settings pinned at pin (to change the session later)."""
    door = f"{upper}-door"
    for cmd in (f"ip link add {upper} mtu 1492 type veth peer name {door}",
                f"ip link set {upper} arp off", f"ip link set {upper} up", f"ip link set {door} up",
                # a ppp device has no offloads: the stack segments before it, as here
                f"ethtool -K {upper} tso off gso off sg off tx off", f"ethtool -K {door} gro off"):
        sh(*cmd.split())
    w = _Wire(lower=socket.if_nametoindex(lower), door=socket.if_nametoindex(door), sid=sid)
    w.peer_mac[:], w.lower_mac[:], w.upper_mac[:] = peer_mac, _mac(lower), _mac(upper)
    with BpfObject(obj_path) as obj:
        obj.load()
        config = obj.map("pppoe_wire")
        config.update(bytes(4), bytes(w))
        config.pin(pin)
        for dev, prog, egress in ((upper, "pppoe_encap", True), (lower, "pppoe_decap", False)):
            ifindex = socket.if_nametoindex(dev)
            libbpf.tc_hook_create(ifindex)
            libbpf.tc_attach(ifindex, obj.program(prog).fd, WIRE_HANDLE, WIRE_PRIORITY,
                             egress=egress)


def pppoe_end(ns: str, lower: str, upper: str, sid: int, peer_mac: bytes, pin: str) -> None:
    """One end of a PPPoE session over `lower` in namespace ns, seen by its stack as `upper`."""
    run_in_netns(ns, _pppoe_end, str(build("pppoe_wire")), lower, upper, sid, peer_mac, pin)


def set_session(pin: str, sid: int) -> None:
    """A new session id at one end (both ends must change: a session restart)."""
    with libbpf.open_pinned_map(pin) as config:
        w = _Wire.from_buffer_copy(config.lookup(bytes(4)))
        w.sid = sid
        config.update(bytes(4), bytes(w))


def mac_in(ns: str, ifname: str) -> bytes:
    return run_in_netns(ns, _mac, ifname)



class _DsaWire(ctypes.Structure):
    _fields_ = [("conduit", ctypes.c_uint32), ("tx_format", ctypes.c_uint32),
                ("out", ctypes.c_uint32 * 8), ("tagged", ctypes.c_uint64),
                ("untagged", ctypes.c_uint64)]


def _dsa_end(obj_path: str, conduit: str, ports: dict[int, tuple[str, str]], tx_format: bool,
             pin: str) -> None:
    """In the namespace: tag_out on each port device (egress on the router side, where the
    stack sends; ingress on the switch side, where hosts send), untag_in on the conduit (or
    its peer); ports: number -> (port device, device frames for it are sent through)."""
    w = _DsaWire(conduit=socket.if_nametoindex(conduit), tx_format=int(tx_format))
    with BpfObject(obj_path) as obj:
        obj.load()
        for port, (dev, out) in ports.items():
            w.out[port] = socket.if_nametoindex(out)
            obj.map("dsa_ports").update(struct.pack("=I", socket.if_nametoindex(dev)),
                                        struct.pack("=I", port))
        config = obj.map("dsa_wire")
        config.update(bytes(4), bytes(w))
        config.pin(pin)
        hooks = [(dev, "tag_out", tx_format) for dev, _ in ports.values()]
        for dev, prog, egress in hooks + [(conduit, "untag_in", False)]:
            ifindex = socket.if_nametoindex(dev)
            if not has_clsact(ifindex):
                libbpf.tc_hook_create(ifindex)
            libbpf.tc_attach(ifindex, obj.program(prog).fd, WIRE_HANDLE, WIRE_PRIORITY,
                             egress=egress)


def dsa_end(ns: str, conduit: str, ports: dict[int, tuple[str, str]], tx_format: bool,
            pin: str) -> None:
    """One end of a DSA conduit's wire with the MediaTek tag (tests/bpf/dsa_wire.c): the
    router's (tx_format, the DSA driver's part) or the switch's."""
    run_in_netns(ns, _dsa_end, str(build("dsa_wire")), conduit, ports, tx_format, pin)


def dsa_counts(pin: str) -> tuple[int, int]:
    """(frames tagged, frames untagged) at one end."""
    with libbpf.open_pinned_map(pin) as config:
        w = _DsaWire.from_buffer_copy(config.lookup(bytes(4)))
    return w.tagged, w.untagged
