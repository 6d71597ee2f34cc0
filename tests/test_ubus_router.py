# SPDX-License-Identifier: GPL-2.0-only
"""ebpfw on real OpenWrt userland: the daemon in the lab's router namespace, inside a router.sh
session (ubusd, rpcd with the package's ACL, uhttpd's ubus JSON-RPC), configured over rpcd's
`uci` object as on a router, with real flows. What issue 8 found broken, for real: calls with
arguments from the ubus tool and from LuCI's path, wrong types, reloads and resyncs while calls
run, a large flow table, the socket option, ubusd restarting."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from conftest import requires_root
from fw_ebpf import control
from lab import CLIENT4, SERVER4, Lab
from luci_harness import ACL_DIR
from openwrt import (SKIP_REASON, PortTaken, Session, prefix, router_sh, status_of,
                     wait_for)

ROOT = Path(__file__).resolve().parents[1]
ACL = ACL_DIR / "luci-app-ebpfw.json"      # the one the LuCI app ships
ALT_SOCKET = "/var/run/ebpfw-test/ubus.sock"

pytestmark = [
    requires_root,
    pytest.mark.usefixtures("bpf_build"),
    pytest.mark.skipif(prefix() is None or router_sh() is None, reason=SKIP_REASON),
]

FIREWALL = """
config defaults
	option input 'REJECT'
	option forward 'REJECT'
	option flow_offloading_ebpf '1'
"""

# read over rpcd by the daemon; the command line adds the lab's interfaces
EBPFW = """
config ebpfw 'global'
	option mode 'xdp'
	option idle_timeout '3600'
	option sweep_interval '1'
	option heartbeat_timeout '5'
	option early_drop '0'
	option log_level 'info'
"""


def rpcd_config() -> str:
    """An admin and a LuCI reader who gets only what the package's ACL grants for reading."""
    def hashed(password: str) -> str:
        return subprocess.run(["openssl", "passwd", "-5", "-salt", "ebpfwtest", password],
                              capture_output=True, text=True, check=True).stdout.strip()

    return f"""
config rpcd
	option socket '/var/run/ubus/ubus.sock'
	option timeout '30'

config login
	option username 'root'
	option password '{hashed("admin")}'
	list read '*'
	list write '*'

config login
	option username 'reader'
	option password '{hashed("reader")}'
	list read 'luci-app-ebpfw'
	list read 'unauthenticated'
"""


def start_session(cfg: Path, www: Path) -> Session:
    for _ in range(5):
        try:
            return Session(cfg, [ACL], www)
        except PortTaken:
            continue
    raise RuntimeError("no free port for uhttpd in 5 tries")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    cfg = tmp_path_factory.mktemp("etc-config")
    (cfg / "firewall").write_text(FIREWALL)
    (cfg / "ebpfw").write_text(EBPFW)
    (cfg / "rpcd").write_text(rpcd_config())
    with Lab() as lab:
        # flows without traffic stay as long as the test needs them
        lab.sh(lab.router, "sysctl -qw net.netfilter.nf_conntrack_udp_timeout=3600")
        session = start_session(cfg, tmp_path_factory.mktemp("www"))
        try:
            wrap = tuple(session.wrap())
            lab.start_daemon("--log-level", "info", "--sweep-interval", "1",
                             "--heartbeat-timeout", "5", wrap=wrap)
            yield SimpleNamespace(lab=lab, session=session, wrap=wrap)
        finally:
            lab.stop_daemon()
            session.close()


@pytest.fixture(autouse=True)
def daemon_log_on_failure(request: pytest.FixtureRequest, rig: SimpleNamespace) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and rig.lab.daemon_log.exists():
        lines = [x for x in rig.lab.daemon_log.read_text().splitlines() if "libbpf:" not in x]
        print("--- daemon log (tail) ---\n" + "\n".join(lines[-60:]))


def ubus_json(rig: SimpleNamespace, *args: str, sock: str | None = None) -> Any:
    res = rig.session.ubus(*(["-s", sock] if sock else []), *args)
    assert res.returncode == 0, f"ubus {' '.join(args)}: {res.stderr.strip()}"
    return json.loads(res.stdout)


def rpc(rig: SimpleNamespace, sid: str, obj: str, method: str,
        args: dict[str, Any] | None = None) -> dict[str, Any]:
    """One call through uhttpd's /ubus, as LuCI's rpc.js makes it."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "call",
                       "params": [sid, obj, method, args or {}]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{rig.session.http_port}/ubus", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def login(rig: SimpleNamespace, user: str, password: str) -> str:
    answer = rpc(rig, "0" * 32, "session", "login", {"username": user, "password": password})
    assert answer["result"][0] == 0, answer
    return str(answer["result"][1]["ubus_rpc_session"])


def spray(rig: SimpleNamespace, first_port: int, count: int) -> None:
    """One UDP datagram from the client to each of `count` server ports, from one source port:
    `count` real connections through the router's fw4 ruleset and conntrack (masqueraded to
    the wan); the same connections each time it is called with the same ports."""
    code = ("import socket,sys\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.bind(('', 50000 + int(sys.argv[2]) // 1000))\n"
            "for p in range(int(sys.argv[2]), int(sys.argv[2]) + int(sys.argv[3])):\n"
            "    s.sendto(b'x', (sys.argv[1], p))\n")
    subprocess.run(["ip", "netns", "exec", rig.lab.client, sys.executable, "-c", code, SERVER4,
                    str(first_port), str(count)], check=True, timeout=120)


def flow_counts(rig: SimpleNamespace) -> dict[str, int]:
    """{} while the daemon is busy: it admits a burst of new flows in one go."""
    try:
        return control.call(rig.lab.control, "status")["flows"]
    except (control.ControlError, BlockingIOError):   # busy, or its accept queue full
        assert rig.lab.daemon.poll() is None, "the daemon died"
        return {}


def forward_count(rig: SimpleNamespace) -> int:
    return int(flow_counts(rig).get("forward", 0))


def offload(rig: SimpleNamespace, first_port: int, count: int, timeout: float = 120) -> None:
    """Sprays until the client-to-server direction of each connection is FORWARD and the
    other waits for its proof (PROVING: the server never answers): the first datagram makes
    a connection's entries, the next one the kernel forwards proves its direction. A burst
    larger than what the daemon admits at once takes more rounds."""
    def done() -> bool:
        spray(rig, first_port, count)
        counts = flow_counts(rig)
        return counts.get("forward", 0) >= count and sum(counts.values()) >= 2 * count
    wait_for(done, f"{count} connections offloaded", timeout=timeout, interval=1)


def wait_forward(rig: SimpleNamespace, at_least: int, timeout: float = 60) -> int:
    return wait_for(lambda: (n := forward_count(rig)) >= at_least and n,
                    f"{at_least} offloaded flow entries", timeout=timeout, interval=1)


def reloads(rig: SimpleNamespace) -> int:
    return rig.lab.daemon_log.read_text().count("configuration reloaded")


# -- the tests, in the order they leave the rig ----------------------------------------------------

def test_optional_arguments_from_the_ubus_tool(rig: SimpleNamespace) -> None:
    """Issue 8, failure 1: `ubus call ebpfw flows '{"state":"forward"}'` was Invalid argument."""
    offload(rig, 30000, 20)
    listed = rig.session.ubus("-v", "list", "ebpfw").stdout
    assert '"flows":{"state":"String","proto":"String","family":"Integer","limit":"Integer",' \
           '"offset":"Integer","sort":"String"}' in listed
    page = ubus_json(rig, "call", "ebpfw", "flows", '{"state":"forward","limit":5}')
    assert page["total"] >= 20 and page["limit"] == 5 and len(page["flows"]) == 5
    assert {f["state"] for f in page["flows"]} == {"forward"}
    assert all(f["proto"] == "udp" and "oif" in f for f in page["flows"])
    some = ubus_json(rig, "call", "ebpfw", "flows",
                     '{"proto":"udp","family":4,"sort":"packets","offset":2,"limit":3}')
    assert some["offset"] == 2 and len(some["flows"]) == 3
    assert ubus_json(rig, "call", "ebpfw", "status")["flows"]["forward"] >= 20


def test_luci_path_through_uhttpd_with_sessions_and_the_acl(rig: SimpleNamespace) -> None:
    """Issue 8, failure 1 through uhttpd: it adds ubus_rpc_session to every call."""
    admin = login(rig, "root", "admin")
    reader = login(rig, "reader", "reader")
    total = forward_count(rig)
    for sid in (admin, reader):
        answer = rpc(rig, sid, "ebpfw", "flows", {"state": "forward", "limit": 5})
        assert answer["result"][0] == 0, answer
        assert answer["result"][1]["total"] == total and len(answer["result"][1]["flows"]) == 5
        assert rpc(rig, sid, "ebpfw", "status")["result"][0] == 0
        assert rpc(rig, sid, "ebpfw", "stats")["result"][0] == 0
    denied = rpc(rig, reader, "ebpfw", "flush")
    assert denied["error"]["message"] == "Access denied", denied
    assert forward_count(rig) == total                  # the reader's flush did nothing
    wrong = rpc(rig, admin, "ebpfw", "flows", {"limit": "5"})
    assert wrong["result"] == [2], wrong               # UBUS_STATUS_INVALID_ARGUMENT
    flushed = rpc(rig, admin, "ebpfw", "flush")
    assert flushed["result"][0] == 0 and flushed["result"][1]["flushed"] >= total


def test_wrong_types_are_invalid_argument_and_change_nothing(rig: SimpleNamespace) -> None:
    offload(rig, 31000, 10)
    before = control.call(rig.lab.control, "flows", {"limit": 1000})
    for args in ('{"limit":"5"}', '{"family":"4"}', '{"family":6.5}', '{"offset":-1}',
                 '{"state":"bogus"}', '{"sort":1}', '{"limit":4294967296}'):
        res = rig.session.ubus("call", "ebpfw", "flows", args)
        assert status_of(res) == 2, (args, res.returncode, res.stderr)
        assert "Invalid argument" in res.stderr
    after = control.call(rig.lab.control, "flows", {"limit": 1000})
    assert [(f["src"], f["dst"], f["state"]) for f in after["flows"]] == \
        [(f["src"], f["dst"], f["state"]) for f in before["flows"]]
    assert rig.lab.daemon.poll() is None


LOAD = """
n=0; bad=0
while [ ! -e "$1" ]; do
  ubus call ebpfw status >/dev/null || bad=$((bad+1))
  ubus call ebpfw flows '{"state":"forward","limit":1000}' >/dev/null || bad=$((bad+1))
  ubus call ebpfw stats '{"ubus_rpc_session":"x"}' >/dev/null || bad=$((bad+1))
  n=$((n+3))
done
echo "$n $bad"
"""


def test_100_sighups_and_100_resyncs_while_ubus_calls_run(rig: SimpleNamespace,
                                                          tmp_path: Path) -> None:
    """Issue 8, failure 2: the reload's `uci get` on the connection the object lives on, and
    resyncs from the control socket and ubus, while clients keep calling over ubus and uhttpd."""
    wait_forward(rig, 10)
    stop = tmp_path / "stop"
    loads = [rig.session.popen("sh", "-c", LOAD, "load", str(stop), stdout=subprocess.PIPE)
             for _ in range(2)]
    admin = login(rig, "root", "admin")
    http = {"calls": 0, "bad": []}
    done = threading.Event()

    def luci() -> None:
        while not done.is_set():
            answer = rpc(rig, admin, "ebpfw", "flows", {"limit": 100, "sort": "bytes"})
            http["calls"] += 1
            if answer.get("result", [None])[0] != 0:
                http["bad"].append(answer)

    poller = threading.Thread(target=luci)
    poller.start()
    daemon = rig.lab.daemon
    try:
        for i in range(100):
            before = reloads(rig)
            os.kill(daemon.pid, signal.SIGHUP)
            wait_for(lambda: reloads(rig) > before, f"reload {i + 1} after SIGHUP", timeout=30)
            assert control.call(rig.lab.control, "resync", timeout=30)["revalidated"] >= 0
            res = rig.session.ubus("-t", "30", "call", "ebpfw", "resync")
            assert res.returncode == 0, f"ubus resync {i + 1}: {res.stderr.strip()}"
    finally:
        done.set()
        stop.touch()
        poller.join(60)
        results = [p.communicate(timeout=60)[0].split() for p in loads]
    assert daemon.poll() is None, "the daemon died"
    assert all(int(bad) == 0 for _, bad in results), results
    calls = sum(int(n) for n, _ in results)
    assert calls >= 100 and http["calls"] >= 10 and not http["bad"], (calls, http)
    log = rig.lab.daemon_log.read_text()
    assert "Traceback" not in log and "keeping the running configuration" not in log
    assert rig.session.ubus("list", "ebpfw").stdout.strip() == "ebpfw"
    print(f"\n100 SIGHUPs + 200 resyncs with {calls} ubus and {http['calls']} uhttpd calls "
          "meanwhile")


def test_20k_flow_entries_page_over_ubus(rig: SimpleNamespace) -> None:
    """Issue 8, failure 3: 4,000 flows in one reply unregistered the object for good."""
    ubus_json(rig, "call", "ebpfw", "flush")
    offload(rig, 20000, 10000, timeout=1200)    # 10k connections: an entry per direction
    seen: set[tuple[str, str, int]] = set()
    offset, pages, biggest = 0, 0, 0
    while True:
        # in the book's order: sorted by bytes (the default), the order moves while the
        # sweep takes up the counters of the flows' last packets, and pages overlap
        res = rig.session.ubus("call", "ebpfw", "flows",
                               json.dumps({"limit": 1000, "offset": offset, "sort": "none"}))
        assert res.returncode == 0, res.stderr
        page = json.loads(res.stdout)
        biggest = max(biggest, len(res.stdout))
        assert page["total"] == 20000
        if not page["flows"]:
            break
        seen |= {(f["src"], f["dst"], f["ifindex"]) for f in page["flows"]}
        offset += len(page["flows"])
        pages += 1
    assert pages == 20 and len(seen) == 20000
    ports = {int(src.rsplit(":", 1)[1]) for src, dst, _ in seen if src.startswith(CLIENT4)}
    assert len(ports) == 1     # one client socket...
    dports = {int(dst.rsplit(":", 1)[1]) for src, dst, _ in seen if src.startswith(CLIENT4)}
    assert dports == set(range(20000, 30000))      # ...to every port sprayed
    default = ubus_json(rig, "call", "ebpfw", "flows")
    assert default["total"] == 20000 and len(default["flows"]) == 100
    admin = login(rig, "root", "admin")
    answer = rpc(rig, admin, "ebpfw", "flows", {"limit": 1000, "offset": 19500})
    assert answer["result"][0] == 0 and len(answer["result"][1]["flows"]) == 500
    assert rig.session.ubus("list", "ebpfw").stdout.strip() == "ebpfw"
    print(f"\n20000 entries in {pages} pages, largest reply {biggest} bytes of JSON")
    ubus_json(rig, "call", "ebpfw", "flush")


def test_ubus_socket_option_and_ubusd_restart(rig: SimpleNamespace) -> None:
    """Issue 8, failure 4 (the socket could not be chosen), and ubusd restarting: the object
    is registered again by itself. On its own ubusd + rpcd, so the session's stay up."""
    lab, session = rig.lab, rig.session
    lab.stop_daemon()
    assert session.run("mkdir", "-p", os.path.dirname(ALT_SOCKET)).returncode == 0
    ubusd = session.popen("ubusd", "-s", ALT_SOCKET, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    rpcd = None
    try:
        wait_for(lambda: session.run("test", "-S", ALT_SOCKET).returncode == 0, "the alt ubusd")
        rpcd = session.popen("rpcd", "-s", ALT_SOCKET, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        wait_for(lambda: session.ubus("-s", ALT_SOCKET, "list", "uci").returncode == 0,
                 "rpcd on the alt socket")
        # the configuration comes from that rpcd too: with no rpcd there, the daemon could not
        # read the firewall switch and would not start
        lab.start_daemon("--log-level", "info", "--sweep-interval", "1", "--heartbeat-timeout",
                         "5", "--ubus-socket", ALT_SOCKET, wrap=rig.wrap)
        wait_for(lambda: session.ubus("-s", ALT_SOCKET, "list", "ebpfw").returncode == 0,
                 "ebpfw on the alt socket")
        assert session.ubus("list", "ebpfw").returncode != 0      # not on the default one
        page = ubus_json(rig, "call", "ebpfw", "flows", '{"limit":1}', sock=ALT_SOCKET)
        assert page["limit"] == 1
        before = reloads(rig)
        os.kill(lab.daemon.pid, signal.SIGHUP)
        wait_for(lambda: reloads(rig) > before, "a reload read over the alt socket")

        ubusd.kill()
        ubusd.wait(10)
        wait_for(lambda: "ubus: connection to " + ALT_SOCKET + " lost"
                 in lab.daemon_log.read_text(), "the daemon to notice")
        ubusd = session.popen("ubusd", "-s", ALT_SOCKET, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        start = time.monotonic()
        wait_for(lambda: session.ubus("-s", ALT_SOCKET, "list", "ebpfw").returncode == 0,
                 "ebpfw registered again", timeout=15)
        took = time.monotonic() - start
        again = ubus_json(rig, "call", "ebpfw", "flows", '{"state":"forward","limit":2}',
                          sock=ALT_SOCKET)
        assert again["limit"] == 2
        assert lab.daemon.poll() is None
        print(f"\nobject back on the restarted ubusd after {took:.2f}s")
    finally:
        for proc in (rpcd, ubusd):
            if proc is not None:
                proc.kill()
                proc.wait(10)
