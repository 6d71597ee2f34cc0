# SPDX-License-Identifier: GPL-2.0-only
"""Opens many UDP flows from inside a namespace: one datagram per (destination, port).

    ip netns exec NS python3 flows.py --count 1000 --rate 200 --sport 30000

Flow i goes to 198.51.100.(100 + i // 50000), port 1024 + i % 50000, from --sport. The server
namespace owns none of those addresses and does not forward, so it drops them silently; the
router's conntrack (with masquerade) and ebpfw see a new flow each. Prints the seconds taken.
"""
from __future__ import annotations

import argparse
import socket
import sys
import time

PER_ADDRESS = 50_000


def destination(i: int) -> tuple[str, int]:
    return f"198.51.100.{100 + i // PER_ADDRESS}", 1024 + i % PER_ADDRESS


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--start", type=int, default=0, help="index of the first flow")
    p.add_argument("--rate", type=float, default=0.0, help="flows per second; 0: at once")
    p.add_argument("--sport", type=int, required=True)
    args = p.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", args.sport))
    start = time.monotonic()
    for n, i in enumerate(range(args.start, args.start + args.count)):
        if args.rate:
            delay = start + n / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        while True:
            try:
                sock.sendto(b"ebpfw-bench", destination(i))
                break
            except BlockingIOError:
                time.sleep(0.001)
    print(f"{time.monotonic() - start:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
