# SPDX-License-Identifier: GPL-2.0-only
"""Connection churn for the soak: many short TCP and UDP connections over IPv4 and IPv6 to the
lab's echo server (tests/traffic.py server), a few long ones among them.

    ip netns exec NS python3 churn.py --connections 2000 --concurrency 32 --seed 1 \
        --hosts 198.51.100.20,2001:db8::20 --port 5201

Connection i picks its protocol, address family, length and ending from a generator seeded
with (seed, i), so a run is reproducible. Most connections exchange 2-10 echoed messages; one
in LONG_EVERY exchanges LONG_MESSAGES, paced, long enough to be offloaded and carried by the
fast path. TCP connections end with a FIN or (one in RST_EVERY) a RST. A failed connection
is counted by what failed, never retried. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import random
import socket
import struct
import sys
import time

SHORT_MESSAGES = (2, 10)
LONG_EVERY, LONG_MESSAGES, LONG_INTERVAL = 10, 60, 0.01
RST_EVERY = 4
SIZE = 200
TIMEOUT = 2.0


def _payload(seq: int) -> bytes:
    return struct.pack("!I", seq) * (SIZE // 4)


def one(i: int, seed: int, hosts: list[str], port: int) -> dict[str, int | str]:
    rnd = random.Random(f"{seed}/{i}")
    proto = rnd.choice(("tcp", "udp"))
    host = rnd.choice(hosts)
    long = rnd.randrange(LONG_EVERY) == 0
    count = LONG_MESSAGES if long else rnd.randint(*SHORT_MESSAGES)
    rst = proto == "tcp" and rnd.randrange(RST_EVERY) == 0
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    out: dict[str, int | str] = {"proto": proto, "family": 6 if family == socket.AF_INET6 else 4,
                                 "sent": 0, "echoed": 0, "lost": 0, "error": ""}
    sock = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect((host, port))
        pending = b""
        for seq in range(count):
            msg = _payload(seq)
            if proto == "tcp":
                sock.sendall(msg)
                while len(pending) < SIZE:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed by the server")
                    pending += chunk
                echo, pending = pending[:SIZE], pending[SIZE:]
            else:
                sock.send(msg)
                try:
                    echo = sock.recv(65536)
                except TimeoutError:
                    out["lost"] = int(out["lost"]) + 1
                    out["sent"] = int(out["sent"]) + 1
                    continue
            out["sent"] = int(out["sent"]) + 1
            if echo == msg:
                out["echoed"] = int(out["echoed"]) + 1
            if long:
                time.sleep(LONG_INTERVAL)   # pacing: a long connection lasts ~0.6 s
        if rst:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (OSError, ConnectionError) as e:
        out["error"] = type(e).__name__
    finally:
        sock.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hosts", required=True, help="comma-separated server addresses")
    p.add_argument("--port", type=int, default=5201)
    args = p.parse_args()
    hosts = args.hosts.split(",")
    start = time.monotonic()
    total: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        for r in pool.map(lambda i: one(i, args.seed, hosts, args.port), range(args.connections)):
            total[f"{r['proto']}{r['family']}"] += 1
            for k in ("sent", "echoed", "lost"):
                total[k] += int(r[k])
            if r["error"]:
                errors[f"{r['proto']}{r['family']} {r['error']}"] += 1
    print(json.dumps({"connections": args.connections, **total, "errors": dict(errors),
                      "seconds": round(time.monotonic() - start, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
