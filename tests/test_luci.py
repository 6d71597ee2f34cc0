# SPDX-License-Identifier: GPL-2.0-only
"""luci-app-ebpfw: the files LuCI loads parse and agree with the ubus methods, and the page works
in a real browser (headless chromium) against the REAL daemon in the lab router.

The browser loads the view into a LuCI-shaped page (tests/luci_harness.py, tests/luci/luci.js)
whose ubus endpoint forwards `ebpfw` calls to the daemon's control socket (api.Api.call, as
ubus would), with sessions and ACLs taken from the app's ACL file. Assertions are on what a user
sees: the DOM, compared with `ebpfw status` and the flows the test started. A screenshot of
each mode goes to build/luci-*.png.

Where OpenWrt's userland is built (EBPFW_OPENWRT_PREFIX), the same view also runs in real LuCI
(luci-base's client, uhttpd, rpcd, ubusd) to check that the stand-in behaves as LuCI does.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from conftest import BUILD, requires_root
from fw_ebpf import api
from lab import CLIENT4, CLIENT6, SERVER4, SERVER6, Lab
from luci_harness import ACL_DIR, APP, MENU_DIR, RESOURCES, STANDIN, Harness, write_uci

VIEW = RESOURCES / "view" / "ebpfw" / "status.js"
POT = APP / "po" / "templates" / "ebpfw.pot"
ACL = ACL_DIR / "luci-app-ebpfw.json"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# the browser waits for what a user would see; generous for a loaded 2-CPU machine
WAIT = 60


# -- the files ------------------------------------------------------------------------------


def js_files() -> list[Path]:
    return sorted(RESOURCES.rglob("*.js")) + sorted(STANDIN.glob("*.js"))


@pytest.mark.parametrize("path", js_files(), ids=lambda p: p.name)
def test_javascript_parses(path: Path, tmp_path: Path):
    """LuCI evaluates a class file as a function body (a view ends in a top-level return)."""
    source = path.read_text()
    if path.is_relative_to(RESOURCES):
        source = "(function(window, document, L) {\n" + source + "\n});\n"
    wrapped = tmp_path / path.name
    wrapped.write_text(source)
    res = subprocess.run(["node", "--check", str(wrapped)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_json_files_are_valid():
    files = sorted(APP.rglob("*.json"))
    assert {p.name for p in files} == {"luci-app-ebpfw.json"} and len(files) == 2
    for path in files:
        json.loads(path.read_text())


def declared_calls() -> dict[str, dict]:
    """The view's rpc.declare()s: method -> {object, params}."""
    calls = {}
    for body in re.findall(r"rpc\.declare\(\{(.*?)\}\)", VIEW.read_text(), re.S):
        obj = re.search(r"object:\s*'([^']+)'", body).group(1)
        method = re.search(r"method:\s*'([^']+)'", body).group(1)
        params = re.search(r"params:\s*\[([^\]]*)\]", body)
        calls[method] = {"object": obj,
                         "params": re.findall(r"'([^']+)'", params.group(1)) if params else []}
    return calls


def test_view_calls_methods_the_daemon_has_with_arguments_they_declare():
    calls = declared_calls()
    assert {c["object"] for c in calls.values()} == {"ebpfw"}
    assert set(calls) == {"status", "flows", "flush", "resync"}
    for method, call in calls.items():
        assert set(call["params"]) <= set(api.METHODS[method].args), method


def test_acl_grants_reads_to_readers_and_writes_to_writers_and_the_switch():
    acl = json.loads(ACL.read_text())["luci-app-ebpfw"]
    read, write = acl["read"]["ubus"]["ebpfw"], acl["write"]["ubus"]["ebpfw"]
    assert set(read) == {n for n, m in api.METHODS.items() if not m.writes}
    assert set(write) == {n for n, m in api.METHODS.items() if m.writes}
    called = set(declared_calls())
    assert called <= set(read) | set(write)
    # the switch is firewall.@defaults[0].flow_offloading_ebpf: reading and changing firewall
    assert "firewall" in acl["read"]["uci"] and "firewall" in acl["write"]["uci"]
    assert "form.Map('firewall')" in VIEW.read_text()


def test_menu_entry_opens_the_view_for_holders_of_the_acl():
    menu = json.loads((MENU_DIR / "luci-app-ebpfw.json").read_text())
    node = menu["admin/status/ebpfw"]
    assert node["action"] == {"type": "view", "path": "ebpfw/status"}
    assert (RESOURCES / "view" / (node["action"]["path"] + ".js")) == VIEW
    assert node["depends"]["acl"] == ["luci-app-ebpfw"]
    assert set(node["depends"]["acl"]) <= set(json.loads(ACL.read_text()))


def test_acl_ships_once_in_the_luci_app():
    root = Path(__file__).resolve().parents[1]
    acls = [p for p in root.rglob("acl.d/*.json") if ".venv" not in p.parts]
    assert acls == [ACL]
    assert "acl.d" not in (root / "openwrt-feed/ebpfw/Makefile").read_text()
    makefile = (APP / "Makefile").read_text()
    assert "luci.mk" in makefile and "+ebpfw" in makefile


def translatable() -> list[str]:
    """The strings LuCI's i18n scan finds: _('...') in the view and menu titles."""
    found = [re.sub(r"\\(.)", r"\1", m) for m in re.findall(r"_\('((?:\\.|[^'\\])*)'\)", VIEW.read_text())]
    for node in json.loads((MENU_DIR / "luci-app-ebpfw.json").read_text()).values():
        found.append(node["title"])
    return sorted(set(found))


def pot_text() -> str:
    def quote(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    entries = [f"msgid {quote(s)}\nmsgstr \"\"\n" for s in translatable()]
    return ("# SPDX-License-Identifier: GPL-2.0-only\n"
            'msgid ""\nmsgstr "Content-Type: text/plain; charset=UTF-8"\n\n' + "\n".join(entries))


def test_translation_template_lists_every_string():
    """Regenerate with: .venv/bin/python tests/test_luci.py pot"""
    assert POT.read_text() == pot_text()
    # themes style the page: no inline style in it
    assert "style" not in VIEW.read_text()
    # no user-visible English outside _(): E() children that are bare literals
    bare = re.findall(r"E\('[a-z0-9]+',\s*\{[^}]*\},\s*\[\s*'([A-Za-z][^']*)'", VIEW.read_text())
    assert set(bare) <= {"TCP", "UDP", "IPv%d"}, bare


# -- the browser ----------------------------------------------------------------------------

INTERFACES = ("eth0=xdp", "eth1=xdp", "eth2=tc")
# the switch's checkbox, as LuCI's form.Flag renders it
SWITCH_BOX = ".cbi-value[data-name='flow_offloading_ebpf'] input[type='checkbox']"
UDP_PORT, TCP_PORT = 44444, 44445


class Router:
    """The lab router as LuCI sees it: UCI files, the daemon honouring the switch, and procd's
    part (reload triggers on firewall changes start, reload or stop the daemon)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.uci_dir = lab.run_dir / "config"
        self.uci_dir.mkdir()
        self.write_firewall(switch="1", flowtable="0")

    def write_firewall(self, switch: str, flowtable: str) -> None:
        write_uci(self.uci_dir / "firewall", [
            ("defaults", None, {"syn_flood": "1", "input": "REJECT", "output": "ACCEPT",
                                "forward": "REJECT", "flow_offloading": flowtable,
                                "flow_offloading_hw": "0", "flow_offloading_ebpf": switch}),
            ("zone", None, {"name": "lan", "input": "ACCEPT", "output": "ACCEPT",
                            "forward": "ACCEPT"}),
            ("zone", None, {"name": "wan", "input": "REJECT", "output": "ACCEPT",
                            "forward": "DROP", "masq": "1"}),
        ])

    def option(self, name: str) -> str | None:
        m = re.search(rf"option {name} '([^']*)'", (self.uci_dir / "firewall").read_text())
        return m.group(1) if m else None

    def running(self) -> bool:
        return self.lab.daemon is not None and self.lab.daemon.poll() is None

    def start(self) -> None:
        self.lab.start_daemon("--config-dir", str(self.uci_dir), "--idle-timeout", "600",
                              interfaces=INTERFACES)

    def ensure_running(self) -> None:
        if self.option("flow_offloading_ebpf") != "1" or self.option("flow_offloading") != "0":
            self.write_firewall(switch="1", flowtable="0")
        if not self.running():
            self.lab.stop_daemon()
            self.start()

    def on_apply(self, configs: set[str]) -> None:
        """procd_add_reload_trigger firewall: the init script's reload (files/etc/init.d)."""
        if "firewall" not in configs:
            return
        if self.option("flow_offloading_ebpf") == "1":
            if self.running():
                self.lab.daemon.send_signal(signal.SIGHUP)
            else:
                self.start()
        else:
            self.lab.stop_daemon()

    def status(self) -> dict:
        return self.lab.ctl("status", "--json")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def router(bpf_build):
    with Lab() as lab:
        lab.start_echo_server(lab.server)
        # flows of the paging test outlive the test (UDP conntrack keeps them 600 s)
        lab.sh(lab.router, "sysctl -qw net.netfilter.nf_conntrack_udp_timeout=600 "
                           "net.netfilter.nf_conntrack_udp_timeout_stream=600")
        r = Router(lab)
        r.start()
        # the known flows: UDP over IPv4 and TCP over IPv6, 25 messages/s each way, all along
        lab.traffic_bg(lab.client, "udp", SERVER4, count=10**6, interval=0.04, sport=UDP_PORT)
        lab.traffic_bg(lab.client, "tcp", SERVER6, count=10**6, interval=0.04, sport=TCP_PORT)
        lab.wait_for(lambda: r.status()["flows"]["forward"] >= 4, what="known flows offloaded",
                     timeout=WAIT)
        yield r


@pytest.fixture(scope="module")
def harness(router: Router):
    with Harness(router.uci_dir, router.lab.control, on_apply=router.on_apply) as h:
        yield h


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="ebpfw-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--window-size=1280,1000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser, harness: Harness, router: Router):
    """A page opener; after the test, the browser's console must hold no error."""
    router.ensure_running()
    browser.get_log("browser")          # start with an empty log
    yield Page(browser, harness, router)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


class Page:
    def __init__(self, browser, harness: Harness, router: Router) -> None:
        self.b, self.harness, self.router = browser, harness, router

    def open(self, user: str) -> None:
        self.b.get(f"{self.harness.url}/login?user={user}&next=/cgi-bin/luci/admin/status/ebpfw")
        self.wait(lambda b: self.text("ebpfw-state") == "Running" or self.find("#ebpfw-down"),
                  "the page showing the daemon's state")

    def wait(self, cond, what: str, timeout: float = WAIT):
        """Polls cond until it holds; the page redraws as it polls, so an element found a
        moment ago may be gone (stale): that counts as not yet."""
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait
        try:
            return WebDriverWait(self.b, timeout, poll_frequency=0.1,
                                 ignored_exceptions=(StaleElementReferenceException,)).until(cond)
        except TimeoutException:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None

    def plot_points(self, line: str = "forward") -> list[tuple[float, float]]:
        """The points of a plotted line, read in one go (the plot is redrawn on each poll)."""
        points = self.b.execute_script(
            "const l = document.getElementById(arguments[0]); return l ? l.getAttribute('points') : ''",
            f"ebpfw-plot-{line}") or ""
        return [(float(x), float(y)) for x, y in (p.split(",") for p in points.split())]

    def find(self, css: str):
        found = self.b.find_elements("css selector", css)
        return found[0] if found else None

    def text(self, element_id: str) -> str:
        el = self.find(f"#{element_id}")
        return el.text if el is not None else ""

    def rows(self, table_css: str) -> list[dict]:
        """Rows of a table as {data-* attributes, cells: [text]}; one script, one snapshot."""
        return self.b.execute_script("""
            return Array.from(document.querySelectorAll(arguments[0] + ' tr')).map(tr => ({
                data: Object.assign({}, tr.dataset),
                cells: Array.from(tr.querySelectorAll('td')).map(td => td.textContent)
            }));""", table_css)

    def screenshot(self, name: str) -> Path:
        height = self.b.execute_script("return document.documentElement.scrollHeight")
        self.b.set_window_size(1280, max(1000, height + 200))   # the window's frame included
        BUILD.mkdir(exist_ok=True)
        path = BUILD / f"luci-{name}.png"
        self.b.save_screenshot(str(path))
        self.b.set_window_size(1280, 1000)
        return path

    def calls(self, user: str, method: str) -> list[dict]:
        return [args for u, obj, m, args in self.harness.calls
                if u == user and obj == "ebpfw" and m == method]


def flow_rows(page: Page) -> list[dict]:
    return [r for r in page.rows("#ebpfw-flow-table") if r["data"].get("state")]


def has_flow(rows: list[dict], src: str, dst: str, proto: str) -> bool:
    return any(r["cells"][3] == src and r["cells"][4] == dst and r["cells"][2] == proto
               and r["data"]["state"] == "forward" for r in rows)


@requires_root
def test_admin_sees_interfaces_flow_counts_known_flows_and_the_plot(page: Page):
    page.open("root")
    status = page.router.status()

    # interfaces and their hooks, as the daemon attached them
    shown = {r["data"]["ifname"]: r["cells"][1] for r in page.rows("#ebpfw-interfaces")
             if r["data"].get("ifname")}
    words = {"xdp": "XDP (native, in the driver)", "tc": "TC ingress",
             "xdp+tc": "XDP (native), TC where XDP cannot send"}
    assert shown == {h["name"]: words[h["mode"]] for h in status["hooks"]}
    assert set(shown) == {"eth0", "eth1", "eth2"}

    # flow counts per state equal `ebpfw status` (read together until they agree)
    def counts_agree(_b) -> bool:
        flows = page.router.status()["flows"]
        return all(page.text(f"ebpfw-flows-{k}") == str(flows[k]) for k in flows)
    page.wait(counts_agree, "flow counts equal to `ebpfw status`")

    # the flows this test started, both directions offloaded, addresses as LuCI shows them
    page.wait(lambda b: has_flow(flow_rows(page), f"{CLIENT4}:{UDP_PORT}", f"{SERVER4}:5201", "UDP")
              and has_flow(flow_rows(page), f"[{CLIENT6}]:{TCP_PORT}", f"[{SERVER6}]:5201", "TCP"),
              "the known UDP and TCP flows in the table")
    udp = next(r for r in flow_rows(page) if r["cells"][3] == f"{CLIENT4}:{UDP_PORT}")
    assert udp["cells"][6] == "eth0 \u2192 eth1" and re.search(r"\(\d+ Pkts\.\)", udp["cells"][7])
    assert udp["cells"][5].startswith("203.0.113.2:")          # masqueraded on the wan side

    # the plot: offloaded packets/s drawn, above zero for the running flows
    def plotted(_b) -> bool:
        points = page.plot_points()
        return len(points) >= 3 and any(y < 160 for _x, y in points)     # 160: the zero line
    page.wait(plotted, "offloaded packets/s plotted")
    assert re.fullmatch(r"\d+(\.\d+ K)? ?", page.text("ebpfw-rate-forward").strip() + " ")
    assert int(page.text("ebpfw-total-forward")) > 0
    assert page.text("ebpfw-total-bytes").endswith("B") and page.text("ebpfw-uptime").endswith("s")
    # admission latency percentiles, over the flows the daemon admitted
    assert re.fullmatch(r"median [\d.]+ ms, 99th percentile [\d.]+ ms, max [\d.]+ ms \((\d+) flows\)",
                        page.text("ebpfw-admission")), page.text("ebpfw-admission")
    assert re.match(r"last beat \d+ ms ago; the fast path fails open after 1\.0 s",
                    page.text("ebpfw-heartbeat"))

    # why packets went to the stack: ranked, in words
    reasons = [r for r in page.rows("#ebpfw-reason-table") if r["data"].get("reason")]
    assert reasons and all(r["cells"][0] != r["data"]["reason"] for r in reasons)
    counts = [int(r["cells"][1]) for r in reasons]
    assert counts == sorted(counts, reverse=True)

    # an administrator has every control
    for css in ("#ebpfw-flush", "#ebpfw-resync", ".cbi-button-apply",
                SWITCH_BOX):
        assert page.find(css).is_enabled(), css
    assert page.find(SWITCH_BOX).is_selected()
    assert page.find("#ebpfw-readonly") is None
    assert {"state", "proto", "limit", "offset", "sort"} >= set(page.calls("root", "flows")[-1])
    assert page.calls("root", "flows")[-1]["limit"] == 25
    print(page.screenshot("admin"))

    # filter by protocol: only TCP entries, the known TCP flow among them
    from selenium.webdriver.support.ui import Select
    Select(page.find("#ebpfw-filter-proto")).select_by_value("tcp")
    page.wait(lambda b: (rows := flow_rows(page)) and all(r["data"]["proto"] == "tcp" for r in rows)
              and has_flow(rows, f"[{CLIENT6}]:{TCP_PORT}", f"[{SERVER6}]:5201", "TCP"),
              "only TCP flows listed")
    assert page.calls("root", "flows")[-1]["proto"] == "tcp"


@requires_root
def test_flow_table_pages_through_flows_limit_and_offset(page: Page):
    lab = page.router.lab
    for i in range(14):          # 28 more entries: more than one page
        lab.traffic(lab.client, "udp", SERVER4, count=5, interval=0.01, sport=45000 + i)
    page.open("root")
    page.wait(lambda b: re.fullmatch(r"1-25 of (\d+)", page.text("ebpfw-page"))
              and int(page.text("ebpfw-page").split()[-1]) > 25, "a first page of 25 flows")
    assert len(flow_rows(page)) == 25
    page.find("#ebpfw-next").click()
    page.wait(lambda b: page.text("ebpfw-page").startswith("26-"), "the second page")
    assert page.calls("root", "flows")[-1]["offset"] == 25
    total = int(page.text("ebpfw-page").split()[-1])
    assert 0 < len(flow_rows(page)) <= min(25, total - 25)
    page.find("#ebpfw-prev").click()
    page.wait(lambda b: page.text("ebpfw-page").startswith("1-25 "), "the first page again")


@requires_root
def test_read_only_user_sees_everything_but_cannot_change_anything(page: Page):
    page.open("viewer")
    page.wait(lambda b: has_flow(flow_rows(page), f"{CLIENT4}:{UDP_PORT}", f"{SERVER4}:5201", "UDP"),
              "the known flow, for a read-only user too")
    note = page.find("#ebpfw-readonly")
    assert note is not None and "read-only" in note.text
    for css in ("#ebpfw-flush", "#ebpfw-resync", ".cbi-button-apply", ".cbi-button-save",
                ".cbi-button-reset", SWITCH_BOX):
        assert not page.find(css).is_enabled(), css
    page.wait(lambda b: page.text("ebpfw-flows-forward") == str(page.router.status()["flows"]["forward"]),
              "flow counts for a read-only user")
    print(page.screenshot("readonly"))
    assert not [c for c in page.harness.calls if c[0] == "viewer" and
                (c[2] in ("flush", "resync", "set", "delete", "apply"))]
    # the ACL is enforced, not only the buttons: rpcd refuses the viewer's flush
    sid = page.b.execute_script("return L.env.sessionid")
    reply = rpc(page.harness.url, [sid, "ebpfw", "flush", {}])
    assert reply["error"]["code"] == -32002
    assert rpc(page.harness.url, [sid, "ebpfw", "status", {}])["result"][0] == 0


def rpc(url: str, params: list) -> dict:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "call", "params": params}).encode()
    req = urllib.request.Request(f"{url}/ubus/", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as res:
        return json.loads(res.read())


@requires_root
def test_flush_and_resync_act_on_the_daemon(page: Page):
    page.open("root")
    page.wait(lambda b: int(page.text("ebpfw-flows-forward") or 0) >= 4, "offloaded flows shown")
    page.find("#ebpfw-resync").click()
    page.wait(lambda b: re.search(r"Resynced: \d+ verdicts dropped, \d+ offloaded flows checked again",
                                  page.find("#maincontent").text), "the resync result")
    page.find("#ebpfw-flush").click()
    page.wait(lambda b: (m := re.search(r"(\d+) flow entries handed back", page.find("#maincontent").text))
              and int(m.group(1)) >= 4, "the flush result")
    assert page.calls("root", "resync") and page.calls("root", "flush")


@requires_root
def test_switch_off_stops_the_daemon_and_the_page_says_how_to_turn_it_on(page: Page):
    from selenium.webdriver.support import expected_conditions as EC
    page.open("root")
    box = page.find(SWITCH_BOX)
    assert box.is_selected()
    box.click()
    page.find(".cbi-button-apply").click()
    page.wait(EC.staleness_of(box), "the page reloading after Save & Apply")
    page.wait(lambda b: page.find("#ebpfw-down[data-kind='off']"), "the page saying ebpfw is off")
    assert page.router.option("flow_offloading_ebpf") == "0" and not page.router.running()
    down = page.text("ebpfw-down")
    assert "off" in down and "uci set firewall.@defaults[0].flow_offloading_ebpf=1" in down
    assert not page.find("#ebpfw-live").is_displayed()
    box = page.find(SWITCH_BOX)
    assert not box.is_selected() and box.is_enabled()
    print(page.screenshot("down-off"))

    box.click()
    page.find(".cbi-button-apply").click()
    page.wait(EC.staleness_of(box), "the page reloading after Save & Apply")
    page.wait(lambda b: page.text("ebpfw-state") == "Running", "the daemon running again")
    assert page.router.option("flow_offloading_ebpf") == "1" and page.router.running()
    assert page.find("#ebpfw-down") is None


@requires_root
def test_crashed_daemon_is_explained_and_the_page_recovers_when_it_is_back(page: Page):
    page.open("root")
    page.router.lab.stop_daemon(signal.SIGKILL)        # left attached and pinned: fail-open
    page.wait(lambda b: page.find("#ebpfw-down[data-kind='stopped']"),
              "the page saying ebpfw is on but not running")
    down = page.text("ebpfw-down")
    assert "not running" in down and "/etc/init.d/ebpfw restart" in down and "logread" in down
    assert not page.find("#ebpfw-live").is_displayed()
    print(page.screenshot("down-crashed"))
    page.router.start()
    page.wait(lambda b: page.text("ebpfw-state") == "Running" and page.find("#ebpfw-down") is None,
              "the page back to the running daemon without a reload")


@requires_root
def test_warns_when_the_fw4_flowtable_is_on_as_well(page: Page):
    page.router.write_firewall(switch="1", flowtable="1")
    page.open("root")
    warning = page.find("#ebpfw-flowtable-warning")
    assert warning is not None and "Software flow offloading" in warning.text
    assert "flowtable" in page.find("#cbi-firewall-defaults").text


# -- the same page in real LuCI (only where OpenWrt's userland is built) ---------------------


def openwrt_root() -> Path | None:
    """Where ubusd, rpcd, uhttpd and luci-base's htdocs were built (see shared/openwrt-userland.md)."""
    prefix = os.environ.get("EBPFW_OPENWRT_PREFIX")
    if not prefix:
        return None
    root = Path(prefix).parent
    needed = (root / ".done", root / "router.sh", root / LUCI_RESOURCES / "luci.js")
    return root if all(p.exists() for p in needed) else None


LUCI_RESOURCES = Path("luci/modules/luci-base/htdocs/luci-static/resources")
LUCI_BASE_ACL = Path("luci/modules/luci-base/root/usr/share/rpcd/acl.d/luci-base.json")
BRIDGE = STANDIN / "ebpfw-bridge.uc"
PASSWORD = "ebpfw-test"


class RealLuci:
    """uhttpd, rpcd and ubusd of a router.sh session, serving luci-base's real client and the
    view; the `ebpfw` ubus object is tests/luci/ebpfw-bridge.uc in front of the lab's daemon."""

    def __init__(self, url: str, www: Path) -> None:
        self.url, self.www = url, www

    def call(self, params: list) -> dict:
        return rpc(self.url, params)

    def page(self, user: str, writer: bool) -> str:
        """A page as LuCI's header template makes it, for a fresh login of `user`."""
        login = self.call(["00000000000000000000000000000000", "session", "login",
                           {"username": user, "password": PASSWORD}])
        sid = login["result"][1]["ubus_rpc_session"]
        env = {"sessionid": sid, "token": secrets.token_hex(16), "resource": "/luci-static/resources",
               "media": "/luci-static/bootstrap", "scriptname": "/cgi-bin/luci",
               "requestpath": ["admin", "status", "ebpfw"], "dispatchpath": ["admin", "status", "ebpfw"],
               "pathinfo": "/admin/status/ebpfw", "documentroot": "/www", "ubuspath": "/ubus/",
               "pollinterval": 1, "rpctimeout": 20, "apply_rollback": 90, "apply_holdoff": 4,
               "apply_timeout": 5, "apply_display": 1.5,
               "nodespec": {"satisfied": True, "readonly": not writer,
                            "action": {"type": "view", "path": "ebpfw/status"}}}
        name = f"{user}.html"
        (self.www / name).write_text(
            "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><link rel='icon' href='data:,'>"
            "<title>LuCI</title></head><body><div id='maincontent'><div id='view'></div></div>\n"
            "<script src='/luci-static/resources/cbi.js'></script>\n"
            "<script src='/luci-static/resources/luci.js'></script>\n"
            f"<script>L = new LuCI({json.dumps(env)});</script>\n"
            "<script>L.require('ui').then(ui => ui.instantiateView('ebpfw/status'));</script>\n"
            "</body></html>\n")
        return f"{self.url}/{name}"


@pytest.fixture(scope="module")
def real_luci(router: Router, tmp_path_factory):
    owrt = openwrt_root()
    if owrt is None:
        pytest.skip("OpenWrt's ubusd, rpcd, uhttpd and luci-base are not built on this machine "
                    "(EBPFW_OPENWRT_PREFIX is not set; not in Debian, so not in CI); the stand-in "
                    "tests above ran instead")
    router.ensure_running()           # and the firewall config as the other tests begin it
    base = tmp_path_factory.mktemp("real-luci")
    www, config = base / "www", base / "config"
    shutil.copytree(owrt / LUCI_RESOURCES, www / "luci-static" / "resources")
    shutil.copytree(RESOURCES / "view", www / "luci-static" / "resources" / "view", dirs_exist_ok=True)
    config.mkdir()
    shutil.copy(router.uci_dir / "firewall", config / "firewall")
    write_uci(config / "luci", [("core", "main", {"lang": "auto"})])
    digest = subprocess.run(["openssl", "passwd", "-5", PASSWORD], capture_output=True,
                            text=True, check=True).stdout.strip()
    (config / "rpcd").write_text(
        f"config login\n\toption username 'root'\n\toption password '{digest}'\n"
        "\tlist read '*'\n\tlist write '*'\n\n"
        f"config login\n\toption username 'viewer'\n\toption password '{digest}'\n"
        "\tlist read '*'\n")
    # ucode publishes with a policy: declared arguments only, uhttpd's session included
    hint = {api.ArgType.STRING: "s", api.ArgType.INT: 32, api.ArgType.BOOL: True}
    signatures = {name: {**{a: hint[spec.type] for a, spec in m.args.items()},
                         "ubus_rpc_session": "s"} for name, m in api.METHODS.items()}
    proc = subprocess.Popen(
        [str(owrt / "router.sh"), "-p", "auto", "-w", str(www), "-c", str(config),
         "--acl-add", str(owrt / LUCI_BASE_ACL), "--acl-add", str(ACL), "--",
         "ucode", str(BRIDGE), router.lab.control, json.dumps(signatures)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        ready = selectors.DefaultSelector()
        ready.register(proc.stdout, selectors.EVENT_READ)
        url = proc.stdout.readline().strip() if ready.select(WAIT) else "no answer in time"
        ready.close()
        if not url.startswith("http://"):
            raise RuntimeError(f"router.sh did not start: {url}{proc.stdout.read()}")
        yield RealLuci(url, www)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def real_page(browser, real_luci: RealLuci, harness: Harness, router: Router):
    router.ensure_running()
    browser.get_log("browser")
    yield Page(browser, harness, router)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


def open_real(page: Page, real_luci: RealLuci, user: str, writer: bool) -> None:
    page.b.get(real_luci.page(user, writer))
    page.wait(lambda b: page.text("ebpfw-state") == "Running" or page.find("#ebpfw-down"),
              "the page in real LuCI showing the daemon's state")


@requires_root
def test_real_luci_runs_the_view_as_the_stand_in_does(real_page: Page, real_luci: RealLuci):
    page = real_page
    open_real(page, real_luci, "root", writer=True)
    status = page.router.status()
    shown = {r["data"]["ifname"]: r["data"] for r in page.rows("#ebpfw-interface-table")
             if r["data"].get("ifname")}
    assert set(shown) == {h["name"] for h in status["hooks"]}
    page.wait(lambda b: all(page.text(f"ebpfw-flows-{k}") == str(v)
                            for k, v in page.router.status()["flows"].items()),
              "flow counts equal to `ebpfw status`")
    page.wait(lambda b: has_flow(flow_rows(page), f"{CLIENT4}:{UDP_PORT}", f"{SERVER4}:5201", "UDP"),
              "the known flow in the table")
    page.wait(lambda b: len(page.plot_points()) >= 3, "the plot drawn")
    for css in ("#ebpfw-flush", "#ebpfw-resync", SWITCH_BOX):
        assert page.find(css).is_enabled(), css
    from selenium.webdriver.support.ui import Select
    Select(page.find("#ebpfw-filter-proto")).select_by_value("tcp")
    page.wait(lambda b: (rows := flow_rows(page)) and all(r["data"]["proto"] == "tcp" for r in rows),
              "the protocol filter through real rpc.js and uhttpd")
    print(page.screenshot("real-admin"))


@requires_root
def test_real_luci_read_only_login_and_stopped_daemon(real_page: Page, real_luci: RealLuci):
    page = real_page
    open_real(page, real_luci, "viewer", writer=False)
    page.wait(lambda b: has_flow(flow_rows(page), f"{CLIENT4}:{UDP_PORT}", f"{SERVER4}:5201", "UDP"),
              "the known flow for a read-only login")
    assert page.find("#ebpfw-readonly") is not None
    # real form.Map asks rpcd (session access uci firewall write) and disables the switch
    for css in ("#ebpfw-flush", "#ebpfw-resync", SWITCH_BOX):
        assert not page.find(css).is_enabled(), css
    print(page.screenshot("real-readonly"))
    page.router.lab.stop_daemon(signal.SIGKILL)
    page.wait(lambda b: page.find("#ebpfw-down[data-kind='stopped']"),
              "real LuCI explaining the stopped daemon (object gone from ubus)")
    print(page.screenshot("real-down"))


if __name__ == "__main__" and sys.argv[1:] == ["pot"]:
    POT.parent.mkdir(parents=True, exist_ok=True)
    POT.write_text(pot_text())
