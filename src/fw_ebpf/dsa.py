# SPDX-License-Identifier: GPL-2.0-only
"""DSA tag protocols as the Linux taggers (net/dsa/tag_*.c) put them on the wire, and the
C header each one renders to (bpf/dsa/tag.h.j2). Build time only: jinja2 is not on the router.

Three formats per tag, all relative to the frame the switch and the CPU exchange:
  RX  switch -> CPU: what arrives on the conduit; the fast path reads the source port.
  TX  CPU -> switch: what the kernel's tagger writes for a user port; the egress program
      (#11) reads the destination port from it, and the fast path writes it (push).
A FORWARD value's dsa_port is what the TX parse returns: the port number, plus for some tags
one bit of the tag the kernel varies per port (TX_BRIDGED below).

    python -m fw_ebpf.dsa render OUTDIR      one dsa-<tag>.h per tag
    python -m fw_ebpf.dsa names              the tag names, one per line
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

AFTER_SA, HEAD, TAIL = "after-source-mac", "before-destination-mac", "tail"
TX_BRIDGED = 0x80  # dsa_port bit: Marvell port in a bridge (the kernel writes VID 4095)
TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "bpf" / "dsa"


@dataclass(frozen=True)
class Bits:
    """A field of the tag: bytes [offset, offset + size) read in `order`, (word >> shift) & mask.
    kind "value" holds the port number itself, "bit" one bit per port (bit port + shift)."""

    offset: int
    mask: int
    shift: int = 0
    size: int = 1
    order: str = "be"
    kind: str = "value"

    @property
    def bits(self) -> int:
        """The field's bits in the word."""
        return self.mask << self.shift if self.kind == "value" else self.mask


@dataclass(frozen=True)
class Match:
    """(tag[offset] & mask) == value, or the tag is not one to act on."""

    offset: int
    mask: int
    value: int


@dataclass(frozen=True)
class Tag:
    name: str                    # as /sys/class/net/<conduit>/dsa/tagging says it
    source: str                  # the kernel file it was read from
    position: str                # AFTER_SA, HEAD or TAIL
    rx_len: int
    tx_len: int
    rx_port: Bits                # source port in an RX tag
    rx_match: tuple[Match, ...]  # an RX tag the kernel accepts (and we act on)
    tx: bytes                    # TX tag for port 0 before the port field is set
    tx_port: Bits                # destination port in a TX tag
    ports: int                   # port numbers the TX tag can address: 0 .. ports - 1
    ethertype: int | None = None  # EtherType the tag starts with, if any
    pad_to: int = 0              # the kernel pads shorter frames (without tag) to this first
    vlan: str | None = None      # the tag stands in for the outer VLAN tag: "mtk", "marvell"
    tx_ignore: tuple[Match, ...] = ()  # TX bits the kernel varies per frame (mask; value unused)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def c_name(self) -> str:
        return self.name.replace("-", "_")

    def tx_tag(self, port: int, bridged: bool = False) -> bytes:
        """The TX tag of an untagged frame for port (what the push writes)."""
        if not 0 <= port < self.ports:
            raise ValueError(f"{self.name}: port {port} is out of range 0..{self.ports - 1}")
        tag = bytearray(self.tx)
        p = self.tx_port
        word = (1 << (port + p.shift)) if p.kind == "bit" else (port << p.shift)
        raw = word.to_bytes(p.size, "big" if p.order == "be" else "little")
        for i, b in enumerate(raw):
            tag[p.offset + i] |= b
        if bridged and self.vlan == "marvell":
            tag[self.tx_len - 2:] = (0x0FFF).to_bytes(2, "big")
        return bytes(tag)

    def tx_checks(self) -> tuple[Match, ...]:
        """The bits of a TX tag the kernel writes as constants: all but the port field and,
        where the tag can carry a VLAN tag, the VLAN fields."""
        free = [0] * self.tx_len
        p = self.tx_port
        for i, b in enumerate(p.bits.to_bytes(p.size, "big" if p.order == "be" else "little")):
            free[p.offset + i] |= b
        v = self.tx_len - 4
        if self.vlan == "mtk":
            free[0] = free[2] = free[3] = 0xFF
        elif self.vlan == "marvell":
            free[v] |= 0x20
            free[v + 1] |= 0x01
            free[v + 2] = free[v + 3] = 0xFF
        for m in self.tx_ignore:
            free[m.offset] |= m.mask
        return tuple(Match(i, m, self.tx[i] & m) for i, f in enumerate(free) if (m := 0xFF & ~f))


def _marvell(name: str, extra: bytes) -> Tag:
    """dsa and edsa: one format, edsa behind an EtherType header (net/dsa/tag_dsa.c)."""
    o = len(extra)
    return Tag(
        name=name, source="net/dsa/tag_dsa.c", position=AFTER_SA,
        rx_len=o + 4, tx_len=o + 4, ethertype=0xDADA if extra else None,
        # FORWARD command (bits 7:6 = 3) from switch 0, not from a trunk; bit 5: VLAN inside
        rx_match=tuple(Match(i, 0xFF, b) for i, b in enumerate(extra))
        + (Match(o, 0xDF, 0xC0), Match(o + 1, 0x04, 0x00)),
        rx_port=Bits(o + 1, 0x1F, shift=3),
        # FROM_CPU command (bits 7:6 = 1) to switch 0, VID 0 (a standalone port)
        tx=extra + bytes([0x40, 0, 0, 0]), tx_port=Bits(o + 1, 0x1F, shift=3), ports=32,
        vlan="marvell",
        notes=("TO_CPU (trapped), TO_SNIFFER, trunk and other-switch frames pass",
               "bit 5 of the first DSA byte: the tag replaces an 802.1Q tag (TCI in bytes "
               "2-3, CFI in bit 0 of byte 1), both ways",
               "TX VID 4095 for a port in a bridge: dsa_port bit 7 (TX_BRIDGED)"))


TAGS: dict[str, Tag] = {t.name: t for t in (
    Tag(name="mtk", source="net/dsa/tag_mtk.c", position=AFTER_SA, rx_len=4, tx_len=4,
        rx_port=Bits(0, 0x7, size=2), rx_match=(),
        # byte 0: 0 untagged, 1 / 2 an 802.1Q / 802.1ad TCI in bytes 2-3; byte 1: BIT(port)
        tx=bytes(4), tx_port=Bits(1, 0x3F, kind="bit"), ports=6, pad_to=60, vlan="mtk",
        notes=("TX bit 7 of byte 1 (passthrough to a second switch) is not written: such "
               "frames do not parse",)),
    Tag(name="qca", source="net/dsa/tag_qca.c + include/linux/dsa/tag_qca.h", position=AFTER_SA,
        rx_len=2, tx_len=2,
        # version 2 in bits 15:14, packet type (10:6) normal: MIB and register acks pass
        rx_match=(Match(0, 0xC7, 0x80), Match(1, 0xC0, 0x00)), rx_port=Bits(1, 0x7),
        # version 2, FROM_CPU (bit 7), BIT(port) in bits 6:0
        tx=bytes([0x80, 0x80]), tx_port=Bits(0, 0x7F, size=2, kind="bit"), ports=7),
    Tag(name="gswip", source="net/dsa/tag_gswip.c", position=HEAD, rx_len=8, tx_len=4,
        rx_match=(), rx_port=Bits(7, 0x7, shift=4),
        # SLPID CPU, DPID ELAN, PORT_MAP_EN | PORT_MAP_SEL, port map (bits 6:1) | DPID_EN
        tx=bytes([0x02, 0x00, 0xC0, 0x01]), tx_port=Bits(3, 0x7E, shift=1, kind="bit"),
        ports=6),
    Tag(name="brcm", source="net/dsa/tag_brcm.c", position=AFTER_SA, rx_len=4, tx_len=4,
        # opcode 0 (bits 7:5), no reserved reason code (byte 2 bits 7:6)
        rx_match=(Match(0, 0xE0, 0x00), Match(2, 0xC0, 0x00)), rx_port=Bits(3, 0x1F),
        # opcode 1, traffic class 0; destination map: port 8 in byte 2 bit 0, 0-7 in byte 3
        tx=bytes([0x20, 0, 0, 0]), tx_port=Bits(2, 0x1FF, size=2, kind="bit"), ports=9,
        pad_to=64, tx_ignore=(Match(0, 0x1C, 0),),
        notes=("TX traffic class (byte 0 bits 4:2, from the queue) is read past and written 0",)),
    Tag(name="brcm-prepend", source="net/dsa/tag_brcm.c", position=HEAD, rx_len=4, tx_len=4,
        rx_match=(Match(0, 0xE0, 0x00), Match(2, 0xC0, 0x00)), rx_port=Bits(3, 0x1F),
        tx=bytes([0x20, 0, 0, 0]), tx_port=Bits(2, 0x1FF, size=2, kind="bit"), ports=9,
        pad_to=64, tx_ignore=(Match(0, 0x1C, 0),), notes=("as brcm, in front of the destination MAC",)),
    Tag(name="rtl4a", source="net/dsa/tag_rtl4_a.c", position=AFTER_SA, rx_len=4, tx_len=4,
        ethertype=0x8899,
        # protocol 0xA (RTL8366RB) in bits 15:12 of the second word, port in bits 7:0
        rx_match=(Match(0, 0xFF, 0x88), Match(1, 0xFF, 0x99), Match(2, 0xF0, 0xA0)),
        rx_port=Bits(3, 0xFF),
        tx=bytes([0x88, 0x99, 0xA2, 0x00]), tx_port=Bits(3, 0xFF), ports=6, pad_to=60),
    Tag(name="rtl8_4", source="net/dsa/tag_rtl8_4.c", position=AFTER_SA, rx_len=8, tx_len=8,
        ethertype=0x8899,
        # protocol 0x04 (RTL8365MB); source port in bits 3:0 of the fourth word
        rx_match=(Match(0, 0xFF, 0x88), Match(1, 0xFF, 0x99), Match(2, 0xFF, 0x04)),
        rx_port=Bits(7, 0xF),
        # LEARN_DIS, forwarding port mask in bits 10:0 of the fourth word
        tx=bytes([0x88, 0x99, 0x04, 0x00, 0x00, 0x20, 0x00, 0x00]),
        tx_port=Bits(6, 0x7FF, size=2, kind="bit"), ports=11),
    _marvell("dsa", b""),
    _marvell("edsa", bytes([0xDA, 0xDA, 0x00, 0x00])),
    Tag(name="ar9331", source="net/dsa/tag_ar9331.c", position=HEAD, rx_len=2, tx_len=2,
        # little-endian word: version 1 (bits 15:14), not FROM_CPU (bit 6); port in bits 3:0
        rx_match=(Match(1, 0xC0, 0x40), Match(0, 0x40, 0x00)), rx_port=Bits(0, 0xF),
        # version 1, FROM_CPU, the reserved bits 5:4 set (0b11 on AR9331), port
        tx=bytes([0x70, 0x40]), tx_port=Bits(0, 0xF, size=2, order="le"), ports=16),
    Tag(name="trailer", source="net/dsa/tag_trailer.c", position=TAIL, rx_len=4, tx_len=4,
        rx_match=(Match(0, 0xFF, 0x80), Match(1, 0xF8, 0x00), Match(2, 0xEF, 0x00),
                  Match(3, 0xFF, 0x00)),
        rx_port=Bits(1, 0x7),
        tx=bytes([0x80, 0x00, 0x10, 0x00]), tx_port=Bits(1, 0xFF, kind="bit"), ports=8,
        pad_to=60, notes=("the tag is the last 4 bytes; the DSA core pads to 60 bytes first",)),
)}


def render(tag: Tag, env: object | None = None) -> str:
    """The C header for one tag."""
    import jinja2   # build time only
    if env is None:
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
                                 undefined=jinja2.StrictUndefined, trim_blocks=True,
                                 lstrip_blocks=True, keep_trailing_newline=True)
    return env.get_template("tag.h.j2").render(  # type: ignore[attr-defined]
        tag=tag, tx_checks=tag.tx_checks(), AFTER_SA=AFTER_SA, HEAD=HEAD, TAIL=TAIL,
        TX_BRIDGED=TX_BRIDGED)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fw_ebpf.dsa", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="write dsa-<tag>.h for every tag into OUTDIR")
    r.add_argument("outdir", type=Path)
    r.add_argument("tags", nargs="*", help="only these tags")
    sub.add_parser("names", help="print the tag names")
    args = ap.parse_args(argv)
    if args.cmd == "names":
        print("\n".join(TAGS))
        return 0
    unknown = [t for t in args.tags if t not in TAGS]
    if unknown:
        print(f"unknown DSA tag {unknown[0]!r} (known: {', '.join(TAGS)})", file=sys.stderr)
        return 2
    args.outdir.mkdir(parents=True, exist_ok=True)
    for name in args.tags or TAGS:
        out = args.outdir / f"dsa-{name}.h"
        text = render(TAGS[name])
        if not out.exists() or out.read_text() != text:   # unchanged: make keeps its objects
            out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
