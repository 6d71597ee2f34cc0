# SPDX-License-Identifier: GPL-2.0-only
"""Connection churn for the soak: many short TCP and UDP connections over IPv4 and IPv6 to the
lab's echo server, a few long ones among them; each is tests/traffic.py's echo client.

    ip netns exec NS python3 churn.py --connections 2000 --concurrency 32 --seed 1 \
        --hosts 198.51.100.20,2001:db8::20 --port 5201

Connection i picks its protocol, address family, length and ending from a generator seeded
with (seed, i), so a run is reproducible. Most connections exchange 2-10 echoed messages; one
in LONG_EVERY exchanges LONG_MESSAGES, paced, long enough to be offloaded and carried by the
fast path. TCP connections end with a FIN or (one in RST_EVERY) a RST. A failed connection
is counted by what failed, never retried; a UDP message without an echo within 2 s is lost.
Prints one JSON line.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import traffic  # noqa: E402

SHORT_MESSAGES = (2, 10)
LONG_EVERY, LONG_MESSAGES, LONG_INTERVAL = 10, 60, 0.01
RST_EVERY = 4
SIZE = 200


def one(i: int, seed: int, hosts: list[str], port: int) -> dict[str, int | str]:
    """Connection i: tests/traffic.py's echo client, with what it picked from (seed, i)."""
    rnd = random.Random(f"{seed}/{i}")
    proto = rnd.choice(("tcp", "udp"))
    host = rnd.choice(hosts)
    long = rnd.randrange(LONG_EVERY) == 0
    count = LONG_MESSAGES if long else rnd.randint(*SHORT_MESSAGES)
    rst = proto == "tcp" and rnd.randrange(RST_EVERY) == 0
    out: dict[str, int | str] = {"kind": f"{proto}{6 if ':' in host else 4}", "error": ""}
    try:
        r = traffic.client(proto, host, port, count, SIZE, LONG_INTERVAL if long else 0.0,
                           sport=0, hold=0.0, rst=rst)
    except OSError as e:      # connect refused or timed out
        return {**out, "sent": 0, "echoed": 0, "lost": 0, "error": type(e).__name__}
    if proto == "tcp" and r["lost"]:
        out["error"] = "broken"        # the client gives up on a TCP connection at its first loss
    return {**out, "sent": r["sent"], "echoed": r["received"], "lost": r["lost"]}


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
            total[str(r["kind"])] += 1
            for k in ("sent", "echoed", "lost"):
                total[k] += int(r[k])
            if r["error"]:
                errors[f"{r['kind']} {r['error']}"] += 1
    print(json.dumps({"connections": args.connections, **total, "errors": dict(errors),
                      "seconds": round(time.monotonic() - start, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
