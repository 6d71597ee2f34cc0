# SPDX-License-Identifier: GPL-2.0-only
"""Echo traffic for the lab: `server` echoes TCP and UDP on a port; `client` sends numbered,
checksummed messages, verifies every echo and prints one JSON line with what it saw; `sink`
notes when each datagram arrived.

Run inside a namespace: ip netns exec NS python3 traffic.py server --port 5201
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import socket
import struct
import sys
import threading
import time

HDR = struct.Struct("!I16s")   # sequence number, md5 of the payload


def message(seq: int, size: int) -> bytes:
    payload = (seq.to_bytes(4, "big") * (size // 4 + 1))[:max(0, size - HDR.size)]
    return HDR.pack(seq, hashlib.md5(payload).digest()) + payload


def verify(msg: bytes, size: int) -> int | None:
    """The sequence number if the message is intact, else None."""
    if len(msg) != size:
        return None
    seq, digest = HDR.unpack_from(msg)
    return seq if hashlib.md5(msg[HDR.size:]).digest() == digest else None


def _dual_stack(kind: int, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    return sock


def serve(port: int) -> None:
    tcp = _dual_stack(socket.SOCK_STREAM, port)
    tcp.listen(128)
    udp = _dual_stack(socket.SOCK_DGRAM, port)

    def echo_tcp(conn: socket.socket) -> None:
        with conn, contextlib.suppress(ConnectionError):   # clients may end with a RST
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            conn, _ = tcp.accept()
            threading.Thread(target=echo_tcp, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    # answer from the address asked, not the one routing picks (the server's is on lo)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    print("ready", flush=True)
    while True:
        data, ancillary, _flags, peer = udp.recvmsg(65536, socket.CMSG_SPACE(20))
        pktinfo = [c for c in ancillary if c[:2] == (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO)]
        udp.sendmsg([data], pktinfo, 0, peer)


GATE_LIMIT_S = 120.0   # a gate nobody opens: give up rather than hang a test run


def _gate_open(path: str, since: float) -> bool:
    if os.path.exists(path):
        return True
    if time.monotonic() - since > GATE_LIMIT_S:
        raise TimeoutError(f"gate {path} never opened")
    return False


def client(proto: str, host: str, port: int, count: int, size: int, interval: float,
           sport: int, hold: float, rst: bool = False, oneway: bool = False,
           warmup_until: str = "", close_after: str = "") -> dict:
    """count messages (after warm-up messages sent until the file warmup_until exists), then
    the socket stays open for hold seconds, or until the file close_after exists. The result
    counts every message; "warmup" says how many of them were warm-up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sport:
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", sport))
    sock.settimeout(2.0)
    sock.connect((host, port))
    result = {"sent": 0, "received": 0, "corrupt": 0, "lost": 0, "warmup": 0,
              "sport": sock.getsockname()[1], "seconds": 0.0}
    start = time.monotonic()
    pending = b""
    seq = -1
    while True:
        seq += 1
        warming = bool(warmup_until) and not _gate_open(warmup_until, start)
        if not warming and seq - result["warmup"] >= count:
            break
        if warming:
            result["warmup"] += 1
        msg = message(seq, size)
        try:
            sock.sendall(msg) if kind == socket.SOCK_STREAM else sock.send(msg)
            result["sent"] += 1
            if oneway:
                if interval:
                    time.sleep(interval)
                continue
            if kind == socket.SOCK_STREAM:
                while len(pending) < size:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed")
                    pending += chunk
                echo, pending = pending[:size], pending[size:]
            else:
                echo = sock.recv(65536)
        except (socket.timeout, ConnectionError, OSError):
            result["lost"] += 1
            if kind == socket.SOCK_STREAM:
                break
            continue
        if verify(echo, size) == seq:
            result["received"] += 1
        else:
            result["corrupt"] += 1
        if interval:
            time.sleep(interval)
    result["seconds"] = round(time.monotonic() - start, 3)
    if hold:
        time.sleep(hold)
    if close_after:
        open(close_after + ".waiting", "w").close()   # the counted messages are done
        since = time.monotonic()
        while not _gate_open(close_after, since):
            time.sleep(0.01)
    if rst and kind == socket.SOCK_STREAM:
        # linger 0: close() sends a RST instead of a FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    return result


def sink(port: int, until: str) -> dict:
    """Receives datagrams on port until the file `until` exists; when each arrived
    (CLOCK_MONOTONIC, which every network namespace shares) and its sequence number."""
    sock = _dual_stack(socket.SOCK_DGRAM, port)
    sock.settimeout(0.05)
    print("ready", flush=True)
    arrivals: list[tuple[float, int]] = []
    since = time.monotonic()
    while not _gate_open(until, since):
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        arrivals.append((time.monotonic(), HDR.unpack_from(data)[0] if len(data) >= HDR.size
                         else -1))
    return {"arrivals": arrivals}


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, default=5201)
    k = sub.add_parser("sink")
    k.add_argument("--port", type=int, required=True)
    k.add_argument("--until", required=True, help="stop when this file exists")
    c = sub.add_parser("client")
    c.add_argument("proto", choices=("tcp", "udp"))
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("--count", type=int, default=100)
    c.add_argument("--size", type=int, default=1000)
    c.add_argument("--interval", type=float, default=0.0)
    c.add_argument("--sport", type=int, default=0)
    c.add_argument("--hold", type=float, default=0.0, help="keep the socket open this long after")
    c.add_argument("--rst", type=int, default=0, help="1: end a TCP connection with a RST")
    c.add_argument("--oneway", type=int, default=0, help="1: send only, expect no echo")
    c.add_argument("--warmup-until", default="",
                   help="send (uncounted) messages until this file exists, then --count more")
    c.add_argument("--close-after", default="", help="keep the socket open until this file exists")
    args = p.parse_args()
    if args.cmd == "server":
        serve(args.port)
        return 0
    if args.cmd == "sink":
        print(json.dumps(sink(args.port, args.until)), flush=True)
        return 0
    print(json.dumps(client(args.proto, args.host, args.port, args.count, args.size,
                            args.interval, args.sport, args.hold, bool(args.rst),
                            bool(args.oneway), args.warmup_until, args.close_after)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
