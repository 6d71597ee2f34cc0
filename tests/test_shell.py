# SPDX-License-Identifier: GPL-2.0-only
"""The OpenWrt-side shell files: shellcheck, and their behaviour with OpenWrt's tools stubbed.

No procd, ubus or uci here: each test gives the script stand-ins that record what they were
asked, which is what the script decides (the tools themselves are OpenWrt's business).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = ROOT / "files"
INIT = FILES / "etc/init.d/ebpfw"
UCI_DEFAULTS = FILES / "etc/uci-defaults/90-ebpfw"
INCLUDE = FILES / "usr/share/ebpfw/fw4-include.sh"
HOTPLUG = FILES / "etc/hotplug.d/iface/50-ebpfw"
PATCH = ROOT / "openwrt-feed/firewall4/patches/100-flow-offloading-ebpf.patch"

# rc.common reads START, STOP and USE_PROCD after sourcing an init script
INIT_EXCLUDES = ["SC2034"]


def shell_files() -> list[Path]:
    found = []
    for path in sorted(p for p in FILES.rglob("*") if p.is_file()):
        head = path.read_text(errors="replace").splitlines()[:3]
        if path.suffix == ".sh" or (head and head[0].startswith("#!/bin/sh")):
            found.append(path)
    return found


def test_every_shell_file_is_found() -> None:
    assert {INIT, UCI_DEFAULTS, INCLUDE, HOTPLUG, FILES / "usr/sbin/ebpfw"} <= set(shell_files())


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("path", shell_files(), ids=lambda p: str(p.relative_to(FILES)))
def test_shellcheck_is_clean(path: Path) -> None:
    cmd = ["shellcheck", "-s", "sh"]
    if path.parent.name == "init.d":
        cmd += ["-e", ",".join(INIT_EXCLUDES)]
    result = subprocess.run([*cmd, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_every_shell_file_starts_with_the_license() -> None:
    for path in shell_files():
        lines = path.read_text().splitlines()
        first = lines[1] if lines[0].startswith("#!") else lines[0]
        assert first == "# SPDX-License-Identifier: GPL-2.0-only", path


# -- behaviour with stand-ins ---------------------------------------------------------------------

def sh(script: str, path_dir: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, **env)
    if path_dir is not None:
        full_env["PATH"] = f"{path_dir}:{full_env['PATH']}"
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=full_env,
                          timeout=20)


INIT_STUBS = """
config_load() { echo "config_load $*"; }
config_foreach() { for s in $EBPFW_TEST_SECTIONS; do "$1" "$s"; done; }
config_get_bool() { eval "$1=\\$EBPFW_TEST_$2"; }
config_get() { eval "$1=\\${EBPFW_TEST_$2_$3:-}"; }
procd_append_param() { echo "procd_append_param $*"; }
procd_open_instance() { echo "procd_open_instance"; }
procd_set_param() { echo "procd_set_param $*"; }
procd_close_instance() { echo "procd_close_instance"; }
procd_running() { [ "$EBPFW_TEST_RUNNING" = 1 ]; }
procd_send_signal() { echo "procd_send_signal $*"; }
procd_add_reload_trigger() { echo "procd_add_reload_trigger $*"; }
start() { echo "start"; start_service; }
"""


def run_init(call: str, switch: str, running: str = "0", **env: str) -> list[str]:
    # two defaults sections: only the first one counts, as in fw4
    result = sh(f"{INIT_STUBS}\n. {INIT}\n{call}", EBPFW_TEST_SECTIONS="d0 d1",
                EBPFW_TEST_d0=switch, EBPFW_TEST_d1="1", EBPFW_TEST_RUNNING=running, **env)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_init_starts_a_respawning_instance_only_when_the_switch_is_on() -> None:
    out = run_init("start_service", "1")
    assert out[0] == "config_load firewall"
    assert "procd_set_param command /usr/sbin/ebpfw run --syslog" in out
    assert "procd_set_param respawn" in out
    assert out[-1] == "procd_close_instance"
    assert "procd_open_instance" not in run_init("start_service", "0")


def test_init_passes_the_ubus_socket_option_only_when_set() -> None:
    out = run_init("start_service", "1")
    assert "config_load ebpfw" in out
    assert not any("--ubus-socket" in line for line in out)
    out = run_init("start_service", "1", EBPFW_TEST_d0_ubus_socket="/tmp/ubus.sock")
    assert "procd_append_param command --ubus-socket /tmp/ubus.sock" in out
    # the last section that sets it wins, as in the daemon
    out = run_init("start_service", "1", EBPFW_TEST_d0_ubus_socket="/a",
                   EBPFW_TEST_d1_ubus_socket="/b")
    assert [line for line in out if "--ubus-socket" in line] == \
        ["procd_append_param command --ubus-socket /b"]


def test_init_reload_signals_a_running_daemon_and_starts_or_stops_otherwise() -> None:
    assert run_init("reload_service", "1", running="1")[-1] == "procd_send_signal ebpfw * HUP"
    started = run_init("reload_service", "1", running="0")
    assert "start" in started and "procd_open_instance" in started
    # switch off: a start without instance, which makes procd stop the running one
    stopped = run_init("reload_service", "0", running="1")
    assert "start" in stopped and "procd_open_instance" not in stopped
    assert not any(line.startswith("procd_send_signal") for line in stopped)


def test_init_reloads_on_firewall_and_ebpfw_changes() -> None:
    assert run_init("service_triggers", "0") == ["procd_add_reload_trigger firewall ebpfw"]


def fake_uci(tmp_path: Path, show: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "uci.log"
    (bin_dir / "uci").write_text(f"""#!/bin/sh
echo "uci $*" >> {log}
case "$*" in
	"-q show firewall") printf '%s\\n' "{show}" ;;
	"-q get firewall.ebpfw") exit 1 ;;
	"-q batch") cat >> {log} ;;
esac
""")
    (bin_dir / "uci").chmod(0o755)
    return bin_dir


def test_uci_defaults_adds_the_fw4_include_once(tmp_path: Path) -> None:
    bin_dir = fake_uci(tmp_path, "firewall.@defaults[0]=defaults")
    assert sh(str(UCI_DEFAULTS), bin_dir).returncode == 0
    batch = [line.strip() for line in (tmp_path / "uci.log").read_text().splitlines()]
    assert batch[-5:] == ["set firewall.ebpfw=include", "set firewall.ebpfw.type=script",
                          "set firewall.ebpfw.path=/usr/share/ebpfw/fw4-include.sh",
                          "set firewall.ebpfw.fw4_compatible=1", "commit firewall"]


def test_uci_defaults_leaves_an_existing_include_alone(tmp_path: Path) -> None:
    bin_dir = fake_uci(tmp_path, "firewall.cfg99.path='/usr/share/ebpfw/fw4-include.sh'")
    assert sh(str(UCI_DEFAULTS), bin_dir).returncode == 0
    assert "batch" not in (tmp_path / "uci.log").read_text()


def fake_ubus(tmp_path: Path, delay: float) -> tuple[Path, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "ubus.log"
    (bin_dir / "ubus").write_text(f"#!/bin/sh\nsleep {delay}\necho \"ubus $*\" >> {log}\n")
    (bin_dir / "ubus").chmod(0o755)
    return bin_dir, log


def wait_for(path: Path, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return path.read_text()
        time.sleep(0.05)
    return path.read_text() if path.exists() else ""


def test_fw4_include_returns_at_once_and_resyncs_in_the_background(tmp_path: Path) -> None:
    """As fw4 runs it: sourced by `sh -c` under fw4's lock, with a slow ubus."""
    bin_dir, log = fake_ubus(tmp_path, delay=1)
    start = time.monotonic()
    result = sh(f". '{INCLUDE}'", bin_dir)   # fw4: sh -c "exec 1000>&-; . PATH" (ash)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    assert time.monotonic() - start < 0.8
    assert "ubus -t 5 call ebpfw resync" in wait_for(log, "call ebpfw resync")


def test_fw4_include_never_fails_fw4(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ubus").write_text("#!/bin/sh\nexit 4\n")
    (bin_dir / "ubus").chmod(0o755)
    assert sh(f". '{INCLUDE}'", bin_dir).returncode == 0


def test_hotplug_ignores_other_actions_and_returns_at_once(tmp_path: Path) -> None:
    bin_dir, log = fake_ubus(tmp_path, delay=0)
    assert sh(str(HOTPLUG), bin_dir, ACTION="ifupdate", INTERFACE="wan").returncode == 0
    start = time.monotonic()
    assert sh(str(HOTPLUG), bin_dir, ACTION="ifdown", INTERFACE="wan").returncode == 0
    assert time.monotonic() - start < 0.8
    time.sleep(0.3)
    assert not log.exists()   # /etc/init.d/ebpfw does not run here, so nothing is asked


# -- the fw4 patch ------------------------------------------------------------------------------

HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def test_fw4_patch_is_a_well_formed_unified_diff_of_fw4_uc() -> None:
    """Applying it to openwrt/firewall4 itself is checked by hand (see openwrt-feed/README.md)."""
    lines = PATCH.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("--- "))
    assert lines[start] == "--- a/root/usr/share/ucode/fw4.uc"
    assert lines[start + 1] == "+++ b/root/usr/share/ucode/fw4.uc"
    i, hunks = start + 2, 0
    while i < len(lines):
        m = HUNK.match(lines[i])
        assert m, f"line {i + 1}: expected a hunk header, got {lines[i]!r}"
        old_n, new_n = int(m[2] or 1), int(m[4] or 1)
        i += 1
        while old_n > 0 or new_n > 0:
            tag = lines[i][:1]
            assert tag in (" ", "-", "+"), f"line {i + 1}: {lines[i]!r}"
            old_n -= tag in (" ", "-")
            new_n -= tag in (" ", "+")
            i += 1
        assert old_n == new_n == 0
        hunks += 1
    assert hunks == 1
    added = [line for line in lines[start:] if line.startswith("+") and not line.startswith("+++")]
    assert added == ['+\t\t\tflow_offloading_ebpf: [ "bool", "0" ],']
