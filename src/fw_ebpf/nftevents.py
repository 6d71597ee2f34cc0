# SPDX-License-Identifier: GPL-2.0-only
"""Changes of the nftables ruleset (any table, any family, iptables-nft's too), as events.

nf_tables ends every committed transaction with one NFT_MSG_NEWGEN to the NFNLGRP_NFTABLES
group, carrying the new generation id; a batch (`nft -f`, an fw4 reload) is one transaction and
one generation. The group also carries a message per changed object, which is only counted
past. After a receive overrun the ruleset may have changed unseen, so that is reported as a
change too, with the generation asked from the kernel.
"""
from __future__ import annotations

import socket
import struct

from fw_ebpf import netlink as nl

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN, NFT_MSG_GETGEN = 15, 16
NFNLGRP_NFTABLES = 7
NFTA_GEN_ID = 1
_NEWGEN = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN
_GETGEN = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN
_NFGENMSG = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)


def _gen_id(m: nl.Message) -> int:
    return nl.get_be(nl.attrs(m.data, 4).get(NFTA_GEN_ID))


def generation() -> int:
    """The ruleset's current generation id in the caller's network namespace."""
    with nl.Socket(nl.NETLINK_NETFILTER, "nftables") as sock:
        answers = sock.request(_GETGEN, _NFGENMSG, "generation", "get")
    for m in answers:
        if m.type == _NEWGEN:
            return _gen_id(m)
    raise nl.NetlinkError("nftables generation: no answer")


class NftEvents(nl.Owner):
    """Ruleset changes of the netns this object was created in; fileno() for a selector."""

    _sock: nl.Socket

    def __init__(self, rcvbuf: int = 1 << 20) -> None:
        self._sock = nl.Socket(nl.NETLINK_NETFILTER, "nftables events", (NFNLGRP_NFTABLES,),
                               rcvbuf, blocking=False)

    def read(self, max_datagrams: int = 1024) -> int | None:
        """The newest generation committed since the last read, None if there was none.

        Never blocks; reads at most max_datagrams (the rest waits for the next call).
        """
        newest = None
        for _ in range(max_datagrams):
            try:
                msgs = self._sock.recv()
            except nl.EventsLost:
                self._sock.drain()
                return generation()
            if msgs is None:
                break
            for m in msgs:
                if m.type == _NEWGEN:
                    newest = _gen_id(m)
        return newest
