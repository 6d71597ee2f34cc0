# SPDX-License-Identifier: GPL-2.0-only
"""`make demo`: a router in namespaces running the fw4 ruleset, traffic through it with
ebpfw off (the kernel forwards) and on (the fast path forwards), results side by side."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lab import SERVER4, SERVER6, Lab, ruleset_path  # noqa: E402

ECHO_COUNT = 3000
IPERF_PORT = 5301


def iperf(lab: Lab, seconds: int = 3) -> float | None:
    """TCP throughput client -> server in Gbit/s, or None without iperf3."""
    if shutil.which("iperf3") is None:
        return None
    server = lab.spawn(lab.server, "iperf3", "-s", "-1", "-B", SERVER4, "-p", str(IPERF_PORT),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    out = subprocess.run(["ip", "netns", "exec", lab.client, "iperf3", "-c", SERVER4, "-p",
                          str(IPERF_PORT), "-t", str(seconds), "-J"],
                         capture_output=True, text=True, timeout=60)
    server.wait(10)
    try:
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    except (ValueError, KeyError):
        return None


def echo(lab: Lab, proto: str, host: str) -> dict:
    return lab.traffic(lab.client, proto, host, count=ECHO_COUNT, size=200)


def stack_packets(lab: Lab) -> int:
    out = lab.sh(lab.router, "conntrack -L", check=False)
    return sum(int(n) for n in re.findall(r"packets=(\d+)", out))


def run_round(lab: Lab, label: str) -> dict:
    lab.sh(lab.router, "conntrack -F", check=False)
    result = {"label": label}
    for proto, host, name in (("tcp", SERVER4, "TCP/IPv4 masq"), ("udp", SERVER6, "UDP/IPv6")):
        r = echo(lab, proto, host)
        result[f"{name} echoes intact"] = f"{r['received'] - r['corrupt']}/{r['sent']}"
        result[f"{name} round trips/s"] = f"{r['received'] / r['seconds']:.0f}"
    result["packets the stack saw"] = str(stack_packets(lab))
    gbps = iperf(lab)
    result["iperf3 TCP/IPv4 Gbit/s"] = f"{gbps:.2f}" if gbps is not None else "n/a"
    return result


def main() -> int:
    print(f"building the lab: client, router (fw4 ruleset {ruleset_path()}), server ...")
    with Lab() as lab:
        lab.start_echo_server(lab.server)

        print("\n== round 1: ebpfw off, the kernel forwards every packet")
        off = run_round(lab, "kernel")

        rounds = [off]
        for mode in ("xdp", "tc"):
            print(f"== round {len(rounds) + 1}: ebpfw on, {mode} hook on eth0, eth1, eth2")
            lab.start_daemon(mode=mode)
            lab.sh(lab.router, "conntrack -F", check=False)
            flow = lab.traffic_bg(lab.client, "udp", SERVER4, count=400, interval=0.005)
            time.sleep(1.0)
            print("\n$ ebpfw flows   (while a UDP echo flow runs)")
            print(lab.ctl("flows"))
            flow.communicate(timeout=60)
            rounds.append(run_round(lab, f"ebpfw {mode}"))
            print("$ ebpfw status")
            print(lab.ctl("status"))
            lab.stop_daemon()

        print("== results")
        keys = [k for k in off if k != "label"]
        width = max(len(k) for k in keys) + 2
        print(f"{'':{width}}" + "".join(f"{r['label']:>14}" for r in rounds))
        for k in keys:
            print(f"{k:{width}}" + "".join(f"{r[k]:>14}" for r in rounds))
        print("\nEvery echo is checked end to end (sequence number and checksum of each message).\n"
              "'packets the stack saw' is what conntrack counted: with ebpfw only the first\n"
              "packets of each flow. Round trips/s over veth measure latency, where XDP adds a\n"
              "NAPI hop per veth; `make bench` has the per-packet and packet-rate figures.")
    print("lab removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
