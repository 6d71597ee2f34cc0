# SPDX-License-Identifier: GPL-2.0-only
"""ucode/fw4-model.uc run by the real ucode and firewall4 (issue 9).

Needs OpenWrt's userland (ubusd, a netifd stand-in, ucode, firewall4), which Debian does not
have: found through EBPFW_OPENWRT_PREFIX (a prefix built from upstream as
../shared/openwrt-userland.md says), whose parent holds `router.sh`, the script that runs a
private router session. Without it these tests skip, saying so (CI has none).

Run as a script inside such a session (`python test_fw4_hook.py keeper HOOK`) it is the
daemon's side of the last test: the model keeper with the real hook and the real kernel.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "ucode" / "fw4-model.uc"
CASES_DIR = ROOT.parent / "shared" / "fw4-cases"
OWN_CASE = ROOT / "tests" / "data" / "fw4-cases" / "windows_sets_marks"


def _router_sh() -> Path | None:
    prefix = os.environ.get("EBPFW_OPENWRT_PREFIX")
    if not prefix:
        return None
    script = Path(prefix).parent / "router.sh"
    return script if script.is_file() and os.geteuid() == 0 else None


def keeper_session(hook: str) -> dict[str, object]:
    """Inside a router session with fw4 started: the keeper with the real hook, then ubusd
    gone (what a resync during a ubusd restart meets)."""
    import time

    from fw_ebpf import fw4
    from fw_ebpf.fw4live import Fw4Keeper
    from fw_ebpf.policy import Policy
    keeper = Fw4Keeper(lambda: fw4.model_from_hook(("ucode", hook)),
                       lambda m, f: Policy(m, lambda a: False, lambda a: None, f))
    out: dict[str, object] = {"first": keeper.refresh() is not None,
                              "first_status": keeper.status()}
    subprocess.run(["sh", "-c", "kill $(pidof ubusd)"], check=True)
    deadline = time.monotonic() + 10
    while subprocess.run(["pidof", "ubusd"], capture_output=True).returncode == 0:
        if time.monotonic() > deadline:
            raise RuntimeError("ubusd did not go")
        time.sleep(0.05)
    out["second"] = keeper.refresh() is not None
    out["second_status"] = keeper.status()
    subprocess.run(["nft", "add", "chain", "inet", "fw4", "ebpfw_test_chain"], check=True)
    out["third"] = keeper.refresh() is not None     # fw4's table changed: nothing to keep
    out["third_status"] = keeper.status()
    return out


def setters_session() -> list[str]:
    from fw_ebpf import fw4kernel
    with fw4kernel.Nft() as nft:
        return fw4kernel.mark_setters(nft)


if __name__ == "__main__" and len(sys.argv) >= 2 and sys.argv[1] in ("keeper", "setters"):
    sys.path.insert(0, str(ROOT / "src"))
    print(json.dumps(keeper_session(sys.argv[2]) if sys.argv[1] == "keeper"
                     else setters_session()))
    sys.exit(0)


import pytest  # noqa: E402

from fw_ebpf.fw4 import ModelError, model_from_hook, parse_model  # noqa: E402

ROUTER_SH = _router_sh()
pytestmark = pytest.mark.skipif(
    ROUTER_SH is None, reason="needs OpenWrt's ucode, firewall4 and ubusd (EBPFW_OPENWRT_PREFIX"
    "/../router.sh) and root: not in Debian, so not in CI")


def session(*args: str, config: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROUTER_SH), "-c", str(config), *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.skipif(not CASES_DIR.is_dir(), reason=f"{CASES_DIR} is absent")
def test_hook_prints_fws_model_for_the_shared_cases():
    for case in ("default", "portfwd_rules", "three_zones_guest"):
        res = session("--", "ucode", str(HOOK), config=CASES_DIR / case)
        assert res.returncode == 0, res.stderr
        got = json.loads(res.stdout)
        facts = got.pop("ebpfw")
        assert got == json.loads((CASES_DIR / case / "model.json").read_text()), case
        assert set(facts["netifd"]) == set(facts["uci_networks"]) >= {"lan", "wan"}
        parse_model(got | {"ebpfw": facts}, case)


def test_own_case_fixtures_are_what_fw4_prints():
    d = OWN_CASE
    res = session("--", "sh", "-c", f"cp {d}/ebpfw-svc.txt /etc/ebpfw-svc.txt && fw4 print && "
                  f"echo '#####' && ucode {HOOK}", config=d)
    assert res.returncode == 0, res.stderr
    ruleset, model = res.stdout.split("#####\n")
    assert ruleset == (d / "ruleset.nft").read_text()
    assert json.loads(model) == json.loads((d / "model.json").read_text())
    # fw4 ignores monthdays, and says so (a configuration warning, not trouble)
    assert "option 'monthdays' is not supported by fw4" in res.stderr


def test_zone_on_a_disabled_network_is_not_taken_for_a_missing_netifd(tmp_path: Path):
    for name in ("network", "firewall"):
        (tmp_path / name).write_text((OWN_CASE / name).read_text())
    with (tmp_path / "network").open("a") as f:
        f.write("\nconfig interface 'wwan'\n\toption proto 'static'\n\toption device 'wlan0'\n"
                "\toption ipaddr '10.9.9.1/24'\n\toption disabled '1'\n")
    with (tmp_path / "firewall").open("a") as f:
        f.write("\nconfig zone\n\toption name 'wwan'\n\tlist network 'wwan'\n"
                "\toption input 'REJECT'\n\toption output 'ACCEPT'\n\toption forward 'REJECT'\n")
    res = session("--", "sh", "-c", f"cp {OWN_CASE}/ebpfw-svc.txt /etc/ebpfw-svc.txt && "
                  f"ucode {HOOK}", config=tmp_path)
    assert res.returncode == 0, res.stderr
    obj = json.loads(res.stdout)
    assert "wwan" not in obj["ebpfw"]["uci_networks"]
    model = parse_model(obj, "hook")
    assert model.zone("wwan") is not None


def test_model_from_hook_without_netifd_is_refused_naming_the_zone():
    cmd = (str(ROUTER_SH), "--no-netifd", "-c", str(OWN_CASE), "--", "ucode", str(HOOK))
    with pytest.raises(ModelError) as info:
        model_from_hook(cmd)
    assert "zone 'lan': netifd reported no network 'lan'" in str(info.value)
    assert "\n" not in str(info.value)


def test_model_from_hook_without_ubus_is_refused():
    cmd = (str(ROUTER_SH), "-c", str(OWN_CASE), "--", "sh", "-c",
           f"kill $(pidof ubusd); while pidof ubusd >/dev/null; do sleep 0.05; done; "
           f"ucode {HOOK}")
    with pytest.raises(ModelError, match=r"fw4 said: Unable to connect to ubus"):
        model_from_hook(cmd)


def test_keeper_keeps_the_last_good_model_only_while_fws_table_is_the_same():
    res = session("-n", "-d", "--", "sh", "-c",
                  f"fw4 start && {sys.executable} {__file__} keeper {HOOK}",
                  config=CASES_DIR / "default" if CASES_DIR.is_dir() else OWN_CASE)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["first"] is True and out["first_status"]["state"] == "ok"
    assert out["first_status"]["mark_setter"] is None
    # ubusd gone: the hook's model is refused, the one read before stays (same fw4 table)
    assert out["second"] is True
    st = out["second_status"]
    assert st["state"] == "refused, last good model kept"
    assert "Unable to connect to ubus" in st["error"] and st["retry_in_s"] > 0
    assert st["model_age_s"] >= 0
    # the table changed while the model cannot be read: early drop off
    assert out["third"] is False and out["third_status"]["state"] == "off"


def _setters_after_fw4_start(config: Path) -> list[str]:
    res = session("-n", "-d", "--", "sh", "-c",
                  f"cp {OWN_CASE}/ebpfw-svc.txt /etc/ebpfw-svc.txt && fw4 start && "
                  f"{sys.executable} {__file__} setters", config=config)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_fws_own_mark_rules_are_found_in_the_kernel(tmp_path: Path):
    """A MARK rule in UCI: fw4 puts `meta mark set` in its mangle chains, and mark matches
    become undecidable; a MARK rule on output only does not count."""
    for name in ("network", "firewall"):
        (tmp_path / name).write_text((OWN_CASE / name).read_text())
    assert _setters_after_fw4_start(tmp_path) == []
    with (tmp_path / "firewall").open("a") as f:
        f.write("\nconfig rule\n\toption name 'Mark-Output'\n\toption dest 'wan'\n"
                "\toption target 'MARK'\n\toption set_mark '0x2'\n")
    assert _setters_after_fw4_start(tmp_path) == []
    with (tmp_path / "firewall").open("a") as f:
        for dest in ("", "\toption dest 'wan'\n"):     # to the router, and forwarded
            f.write("\nconfig rule\n\toption name 'Mark-Guests'\n\toption src 'lan'\n"
                    f"{dest}\toption src_ip '192.168.1.66'\n\toption target 'MARK'\n"
                    "\toption set_mark '0x1'\n")
    assert _setters_after_fw4_start(tmp_path) == [
        "nft table inet fw4 chain mangle_input sets a mark",
        "nft table inet fw4 chain mangle_forward sets a mark"]
