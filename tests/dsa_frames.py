# SPDX-License-Identifier: GPL-2.0-only
"""DSA tags as the Linux taggers write and read them, written from net/dsa/tag_*.c and
net/dsa/user.c independently of src/fw_ebpf/dsa.py: the oracle the rendered tag code is
tested against. RX: switch -> CPU (what a conduit receives), TX: CPU -> switch (what the
kernel's tagger writes for a user port)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

AFTER_SA, HEAD, TAIL = "after_sa", "head", "tail"


@dataclass(frozen=True)
class Oracle:
    position: str
    rx_ports: int                       # values the RX port field can hold
    rx: Callable[[int], bytes]          # RX tag from a port
    tx: Callable[[int], bytes]          # TX tag to a port, untagged frame
    tx_ports: int                       # ports a TX tag can address
    pad_to: int = 0                     # the tagger pads the frame to this first
    tx_vlan: Callable[[int, int, int], bytes] | None = None   # (port, tpid, tci): replaces it
    garbled_rx: tuple[bytes, ...] = ()  # RX tags the kernel drops
    garbled_tx: tuple[bytes, ...] = ()  # TX tags no tagger writes (for one port)


def _be16(v: int) -> bytes:
    return v.to_bytes(2, "big")


def _marvell_tx_vlan(prefix: bytes) -> Callable[[int, int, int], bytes]:
    def tag(port: int, tpid: int, tci: int) -> bytes:
        # dsa_xmit_ll: tagged FROM_CPU, CFI moved from byte 2 bit 4 to byte 1 bit 0
        b2 = (tci >> 8) & 0xFF
        return prefix + bytes([0x60, port << 3 | (1 if b2 & 0x10 else 0), b2 & ~0x10 & 0xFF,
                               tci & 0xFF])
    return tag


EDSA = bytes([0xDA, 0xDA, 0, 0])

ORACLES: dict[str, Oracle] = {
    # mtk_tag_rcv: port = be16 & 7; mtk_tag_xmit: [tpid kind, BIT(port), TCI or 0], eth_skb_pad
    "mtk": Oracle(AFTER_SA, 8, lambda p: bytes([0x00, 0xF8 | p, 0x00, 0x00]),
                  lambda p: bytes([0, 1 << p, 0, 0]), 6, pad_to=60,
                  tx_vlan=lambda p, tpid, tci: bytes([1 if tpid == 0x8100 else 2, 1 << p])
                  + _be16(tci),
                  garbled_tx=(bytes([3, 1, 0, 0]), bytes([0, 0x03, 0, 0]), bytes([0, 0, 0, 0]),
                              bytes([0, 1, 0, 5]))),
    # qca_tag_rcv: version 2 (15:14), type normal, port 2:0; xmit: version | FROM_CPU | BIT(port)
    "qca": Oracle(AFTER_SA, 8, lambda p: _be16(0x8000 | 0x3 << 11 | 1 << 3 | p),
                  lambda p: _be16(0x8000 | 0x80 | 1 << p), 7,
                  garbled_rx=(_be16(0x4000 | 1), _be16(0x8000 | 1 << 6 | 1),
                              _be16(0x8000 | 2 << 6 | 1)),
                  garbled_tx=(_be16(0x8000 | 1), _be16(0x4000 | 0x80 | 1), _be16(0x8000 | 0x80 | 3))),
    # gswip_tag_rcv: 8 bytes in front, port = (byte 7 >> 4) & 7; xmit: 4 bytes
    "gswip": Oracle(HEAD, 8, lambda p: bytes([0, 0, 0, 0, 0, 0, 0, p << 4 | 0x1]),
                    lambda p: bytes([0x02, 0x00, 0xC0, (1 << (p + 1)) | 1]), 6,
                    garbled_tx=(bytes([0x03, 0, 0xC0, 0x03]), bytes([0x02, 0, 0xC0, 0x06 | 1]),
                                bytes([0x02, 0, 0xC0, 0x02]))),
    # brcm_tag_rcv_ll: opcode 0, no reserved reason, port = byte 3 & 0x1f;
    # brcm_tag_xmit_ll: opcode 1, TC 0, port 8 in byte 2, pad to ETH_ZLEN + 4
    "brcm": Oracle(AFTER_SA, 32, lambda p: bytes([0x00, 0x00, 0x04, p]),
                   lambda p: bytes([0x20, 0, 1 if p == 8 else 0, (1 << p) & 0xFF]), 9,
                   pad_to=64,
                   garbled_rx=(bytes([0x20, 0, 0, 1]), bytes([0x00, 0, 0x40, 1])),
                   garbled_tx=(bytes([0x00, 0, 0, 1]), bytes([0x20, 0, 0, 3]))),
    "brcm-prepend": Oracle(HEAD, 32, lambda p: bytes([0x00, 0x00, 0x04, p]),
                           lambda p: bytes([0x20, 0, 1 if p == 8 else 0, (1 << p) & 0xFF]), 9,
                           pad_to=64,
                           garbled_rx=(bytes([0x60, 0, 0, 1]), bytes([0x00, 0, 0x80, 1])),
                           garbled_tx=(bytes([0x40, 0, 0, 1]), bytes([0x20, 0, 0, 0]))),
    # rtl4a_tag_rcv: 0x8899, protocol 0xA in 15:12, port = low byte; xmit pads to ETH_ZLEN
    "rtl4a": Oracle(AFTER_SA, 256, lambda p: bytes([0x88, 0x99, 0xA0, p]),
                    lambda p: bytes([0x88, 0x99, 0xA2, p]), 6, pad_to=60,
                    garbled_rx=(bytes([0x88, 0x98, 0xA0, 1]), bytes([0x88, 0x99, 0x90, 1])),
                    garbled_tx=(bytes([0x88, 0x99, 0xA0, 1]), bytes([0x88, 0x99, 0xA2, 9]))),
    # rtl8_4_tag_rcv: 0x8899, protocol 0x04, port = word 3 bits 3:0; xmit: LEARN_DIS, BIT(port)
    "rtl8_4": Oracle(AFTER_SA, 16,
                     lambda p: bytes([0x88, 0x99, 0x04, 0x00, 0x00, 0x00, 0x00, p]),
                     lambda p: bytes([0x88, 0x99, 0x04, 0x00, 0x00, 0x20]) + _be16(1 << p), 11,
                     garbled_rx=(bytes([0x88, 0x99, 0x05, 0, 0, 0, 0, 1]),
                                 bytes([0x88, 0x98, 0x04, 0, 0, 0, 0, 1])),
                     garbled_tx=(bytes([0x88, 0x99, 0x04, 0, 0, 0x20, 0, 3]),
                                 bytes([0x88, 0x99, 0x04, 0, 0, 0x00, 0, 1]))),
    # dsa_rcv_ll: FORWARD from switch 0 (not a trunk): port = (byte 1 >> 3) & 0x1f;
    # dsa_xmit_ll: FROM_CPU to switch 0, VID 0 (standalone) / 4095 (bridged)
    "dsa": Oracle(AFTER_SA, 32, lambda p: bytes([0xC0, p << 3, 0, 0]),
                  lambda p: bytes([0x40, p << 3, 0, 0]), 32, tx_vlan=_marvell_tx_vlan(b""),
                  garbled_rx=(bytes([0x00, 1 << 3, 0x10, 0]), bytes([0xC1, 1 << 3, 0, 0]),
                              bytes([0xC0, 1 << 3 | 4, 0, 0]), bytes([0x40, 1 << 3, 0, 0])),
                  garbled_tx=(bytes([0xC0, 1 << 3, 0, 0]), bytes([0x41, 1 << 3, 0, 0]),
                              bytes([0x40, 1 << 3, 0, 5]))),
    "edsa": Oracle(AFTER_SA, 32, lambda p: EDSA + bytes([0xC0, p << 3, 0, 0]),
                   lambda p: EDSA + bytes([0x40, p << 3, 0, 0]), 32,
                   tx_vlan=_marvell_tx_vlan(EDSA),
                   garbled_rx=(bytes([0xDA, 0xDB, 0, 0, 0xC0, 8, 0, 0]),
                               bytes([0xDA, 0xDA, 0, 1, 0xC0, 8, 0, 0]),
                               bytes([0xDA, 0xDA, 0, 0, 0x00, 8, 0x10, 0])),
                   garbled_tx=(bytes([0xDA, 0xDA, 0, 0, 0xC0, 8, 0, 0]),
                               bytes([0xDB, 0xDA, 0, 0, 0x40, 8, 0, 0]))),
    # ar9331_tag_rcv: LE word, version 1, not FROM_CPU, port 3:0; xmit: version, FROM_CPU,
    # reserved bits 5:4 set, port
    "ar9331": Oracle(HEAD, 16, lambda p: (0x4000 | 0x30 | p).to_bytes(2, "little"),
                     lambda p: (0x4000 | 0x40 | 0x30 | p).to_bytes(2, "little"), 16,
                     garbled_rx=((0x8000 | 1).to_bytes(2, "little"),
                                 (0x4000 | 0x40 | 1).to_bytes(2, "little")),
                     garbled_tx=((0x4000 | 0x30 | 1).to_bytes(2, "little"),
                                 (0xC000 | 0x70 | 1).to_bytes(2, "little"))),
    # trailer_rcv: last 4 bytes 0x80, port, 0x00/0x10, 0x00; xmit: BIT(port), after the DSA
    # core's eth_skb_pad (tail taggers)
    "trailer": Oracle(TAIL, 8, lambda p: bytes([0x80, p, 0x10, 0x00]),
                      lambda p: bytes([0x80, 1 << p, 0x10, 0x00]), 8, pad_to=60,
                      garbled_rx=(bytes([0x81, 1, 0, 0]), bytes([0x80, 9, 0, 0]),
                                  bytes([0x80, 1, 0x01, 0])),
                      garbled_tx=(bytes([0x80, 3, 0x10, 0]), bytes([0x80, 1, 0x11, 0]))),
}


def tag_frame(name: str, frame: bytes, tag: bytes, pad_to: int = 0, vlan_inside: bool = False
              ) -> bytes:
    """frame (untagged Ethernet) with tag where the protocol puts it; pad_to first, as the
    tagger does; vlan_inside: the tag replaces the frame's outer VLAN header."""
    if len(frame) < pad_to:
        frame += bytes(pad_to - len(frame))
    pos = ORACLES[name].position
    if pos == HEAD:
        return tag + frame
    if pos == TAIL:
        return frame + tag
    return frame[:12] + tag + (frame[16:] if vlan_inside else frame[12:])
