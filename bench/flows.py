# SPDX-License-Identifier: GPL-2.0-only
"""Opens many UDP flows from inside a namespace and keeps them talking, on command.

    ip netns exec NS python3 flows.py --sport 30000
    stdin:  open COUNT RATE       (RATE new flows a second; 0: as fast as the socket takes them)
    stdout: opened COUNT SECONDS  (when the first datagram of the last of them is sent)

    ip netns exec NS python3 flows.py --sport 30000 --count 1000 [--start 0]

The second form sends one datagram to each of COUNT flows, to addresses nobody owns
(198.51.100.(100 + i // 50000), port 1024 + i % 50000: the server drops them without an answer),
prints the seconds taken and exits.

Flow i goes from port --sport + i // PER_PORT to 198.51.100.20 (tests/lab.py SERVER4), port
10000 + i % PER_PORT; bench/bpf/reflect.c on the server's veth sends every datagram back, so
each flow has packets in both directions. A flow sends at SCHEDULE seconds after its first
datagram, then every KEEPALIVE seconds until stdin closes: ebpfw admits by proof (the kernel
must forward one of the flow's packets after the daemon made it PROVING), so the gaps of the
schedule bound how late after the daemon's decision a flow is seen offloaded.
"""
from __future__ import annotations

import argparse
import collections
import os
import select
import socket
import sys
import time

ADDRESS = "198.51.100.20"
PORT_MIN = 10_000
PER_PORT = 50_000          # flows per source port (reflect.c: ports 10000-59999)
# the gap doubles up to 2.56 s, then stays 2.5 s up to 20 s (how late after the daemon's
# decision a flow is seen offloaded, while the control bench's targets are measured), then
# KEEPALIVE (the steady traffic)
SCHEDULE = (0.0, 0.01, 0.03, 0.07, 0.15, 0.31, 0.63, 1.27, 2.55, 5.11, 7.61, 10.11, 12.61,
            15.11, 17.61, 20.11)
KEEPALIVE = 10.0
PAYLOAD = b"ebpfw-bench"


class Flows:
    def __init__(self, sport: int) -> None:
        self.sport = sport
        self.socks: list[socket.socket] = []
        self.opened = 0
        # one FIFO per step of the schedule (flows enter them in time order), then keepalives
        self.steps: list[collections.deque[tuple[float, int]]] = \
            [collections.deque() for _ in SCHEDULE[1:]]
        self.keepalive: collections.deque[tuple[float, int]] = collections.deque()

    def send(self, i: int) -> None:
        n = i // PER_PORT
        while len(self.socks) <= n:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("0.0.0.0", self.sport + len(self.socks)))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # replies are not read
            self.socks.append(s)
        while True:
            try:
                self.socks[n].sendto(PAYLOAD, (ADDRESS, PORT_MIN + i % PER_PORT))
                return
            except BlockingIOError:
                time.sleep(0.0005)

    def open(self, now: float) -> None:
        i = self.opened
        self.opened += 1
        self.send(i)
        self.steps[0].append((now, i))

    def due(self, now: float) -> float:
        """Sends what is due; returns when the next one is."""
        nxt = now + 0.05
        for k, q in enumerate(self.steps):
            offset = SCHEDULE[k + 1]
            while q and q[0][0] + offset <= now:
                t0, i = q.popleft()
                self.send(i)
                if k + 1 < len(self.steps):
                    self.steps[k + 1].append((t0, i))
                else:
                    self.keepalive.append((now + KEEPALIVE, i))
            if q:
                nxt = min(nxt, q[0][0] + offset)
        while self.keepalive and self.keepalive[0][0] <= now:
            _, i = self.keepalive.popleft()
            self.send(i)
            self.keepalive.append((now + KEEPALIVE, i))
        if self.keepalive:
            nxt = min(nxt, self.keepalive[0][0])
        return nxt


def once(sport: int, start: int, count: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", sport))
    for i in range(start, start + count):
        sock.sendto(PAYLOAD, (f"198.51.100.{100 + i // PER_PORT}", 1024 + i % PER_PORT))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sport", type=int, required=True)
    p.add_argument("--count", type=int, help="send one datagram to each of so many flows")
    p.add_argument("--start", type=int, default=0, help="index of the first of them")
    args = p.parse_args()
    if args.count is not None:
        t0 = time.monotonic()
        once(args.sport, args.start, args.count)
        print(f"{time.monotonic() - t0:.3f}")
        return 0
    flows = Flows(args.sport)
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    pending = b""
    job: tuple[int, float, float, int] | None = None    # count, rate, started, first index
    while True:
        if job is None and b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            _, count, rate = line.split()
            job = (int(count), float(rate), time.monotonic(), flows.opened)
        now = time.monotonic()
        if job is not None:
            count, rate, started, first = job
            want = count if not rate else min(count, int((now - started) * rate) + 1)
            while flows.opened - first < want:
                flows.open(time.monotonic())
            if flows.opened - first == count:
                print(f"opened {count} {time.monotonic() - started:.3f}", flush=True)
                job = None
        nxt = flows.due(time.monotonic())
        if job is not None and job[1]:
            nxt = min(nxt, job[2] + (flows.opened - job[3]) / job[1])
        ready, _, _ = select.select([stdin], [], [], max(0.0, nxt - time.monotonic()))
        if not ready:
            continue
        chunk = os.read(stdin, 4096)
        if not chunk:
            return 0
        pending += chunk


if __name__ == "__main__":
    sys.exit(main())
