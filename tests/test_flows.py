# SPDX-License-Identifier: GPL-2.0-only
"""FlowBook: records bound to conntrack connections, and what each leaves with."""
from __future__ import annotations

import ipaddress
import socket

from fw_ebpf import maps
from fw_ebpf.flows import FlowBook
from fw_ebpf.maps import Tuple

A = ipaddress.ip_address
CLIENT, SERVER, WAN = A("10.0.1.2"), A("10.0.2.2"), A("10.0.2.1")
ORIG = Tuple(socket.IPPROTO_UDP, CLIENT, SERVER, 40000, 53)
REPLY = Tuple(socket.IPPROTO_UDP, SERVER, WAN, 53, 61000)       # masqueraded


def test_records_leave_with_the_reverse_of_the_other_directions_tuple():
    book = FlowBook()
    conn, reply = maps.tuple_id(ORIG), maps.tuple_id(REPLY)
    lan = book.add(maps.encode_key(2, ORIG))
    wan = book.add(maps.encode_key(3, REPLY, vlan=(7, 0)))
    assert book.waiting_for(conn) == [lan] and book.waiting_for(reply) == [wan]
    book.bind(lan, conn, 0, maps.reverse_id(reply))
    assert (lan.conn, lan.direction, lan.egress) == (conn, 0, maps.reverse_id(reply))
    assert book.bound(conn, 0) == lan and book.bound(conn, 1) is None
    assert book.waiting_for(conn) == []
    book.bind(wan, conn, 1, maps.reverse_id(conn))
    assert wan.egress == maps.reverse_id(conn) and book.bound(conn, 1) == wan
    assert book.of_connection(conn) == [lan, wan]

    # a copy of the reply arriving elsewhere takes the direction over; the first is unbound
    other = book.add(maps.encode_key(4, REPLY))
    book.bind(other, conn, 1, maps.reverse_id(conn))
    assert book.bound(conn, 1) == other
    assert (wan.conn, wan.egress) == (None, None)

    book.remove(lan.key)
    book.remove(other.key)
    assert book.bound(conn, 0) is None and book.of_connection(conn) == []
    assert book.ct_expiry(conn) == 0.0      # the row went with its last record


def test_slots_and_rows_are_reused_with_nothing_left_of_the_last_owner():
    book = FlowBook()
    conn = maps.tuple_id(ORIG)
    rec = book.add(maps.encode_key(2, ORIG))
    book.bind(rec, conn, 0, maps.reverse_id(maps.tuple_id(REPLY)))
    book.set_ct_expiry(conn, 5.0)
    book.remove(rec.key)
    again = book.add(maps.encode_key(2, ORIG))
    assert again.slot == rec.slot and again.conn is None and again.egress is None
    assert book.waiting_for(conn) == [again]
    book.bind(again, conn, 1, maps.reverse_id(conn))   # the same row, told nothing yet
    assert book.ct_expiry(conn) == 0.0 and again.egress == maps.reverse_id(conn)

