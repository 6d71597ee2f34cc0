# SPDX-License-Identifier: GPL-2.0-only
"""Config: the fw4 switch and /etc/config/ebpfw, from UCI files and from ubus `uci get`."""
from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from fw_ebpf import cli, config, libubus

ROOT = Path(__file__).resolve().parents[1]

FIREWALL_ON = """
config defaults
	option syn_flood	1
	option input		REJECT
	option flow_offloading_ebpf	1

config zone
	option name		lan
"""

EBPFW = """
config ebpfw 'global'
	list interface 'eth0'
	list interface 'eth1'
	option mode 'tc'
	option idle_timeout '45'
	option flows_max '131072'
	option early_drop '0'
	option log_level 'debug'

config interface
	option device 'eth1'
	option mode 'xdp'
"""

# What rpcd answered to `ubus call uci get` for the two files above.
UBUS_FIREWALL_DEFAULTS = {"values": {"cfg01e63d": {
    ".anonymous": True, ".type": "defaults", ".name": "cfg01e63d", ".index": 0,
    "syn_flood": "1", "input": "REJECT", "flow_offloading_ebpf": "1"}}}
UBUS_EBPFW = {"values": {
    "cfg023d8a": {".anonymous": True, ".type": "interface", ".name": "cfg023d8a", ".index": 1,
                  "device": "eth1", "mode": "xdp"},
    "global": {".anonymous": False, ".type": "ebpfw", ".name": "global", ".index": 0,
               "interface": ["eth0", "eth1"], "mode": "tc", "idle_timeout": "45",
               "flows_max": "131072", "early_drop": "0", "log_level": "debug"}}}

EXPECTED = config.Settings(interfaces=("eth0", "eth1"), mode="tc", modes={"eth1": "xdp"},
                           idle_timeout=45.0, flows_max=131072, early_drop=False,
                           log_level="debug")


def config_dir(tmp_path: Path, firewall: str | None = FIREWALL_ON,
               ebpfw: str | None = EBPFW) -> str:
    if firewall is not None:
        (tmp_path / "firewall").write_text(firewall)
    if ebpfw is not None:
        (tmp_path / "ebpfw").write_text(ebpfw)
    return str(tmp_path)


def test_switch_on_and_ebpfw_options_are_read_from_a_config_dir(tmp_path: Path) -> None:
    assert config.load(config_dir(tmp_path)) == (True, EXPECTED)


@pytest.mark.parametrize("firewall", [
    FIREWALL_ON.replace("flow_offloading_ebpf\t1", "flow_offloading_ebpf\t0"),
    FIREWALL_ON.replace("\toption flow_offloading_ebpf\t1\n", ""),   # option missing
    "config zone\n\toption name lan\n",                              # no defaults section
    None,                                                            # no firewall config
])
def test_switch_is_off_unless_set_to_1(tmp_path: Path, firewall: str | None) -> None:
    enabled, settings = config.load(config_dir(tmp_path, firewall=firewall))
    assert not enabled
    assert settings == EXPECTED


def test_switch_reads_only_the_first_defaults_section(tmp_path: Path) -> None:
    firewall = "config defaults\n\toption input ACCEPT\n" + FIREWALL_ON
    assert config.load(config_dir(tmp_path, firewall=firewall))[0] is False


def test_switch_accepts_uci_spellings_of_true(tmp_path: Path) -> None:
    firewall = FIREWALL_ON.replace("flow_offloading_ebpf\t1", "flow_offloading_ebpf\ton")
    assert config.load(config_dir(tmp_path, firewall=firewall))[0] is True


def test_bad_switch_value_names_config_section_and_option(tmp_path: Path) -> None:
    firewall = FIREWALL_ON.replace("flow_offloading_ebpf\t1", "flow_offloading_ebpf\tmaybe")
    with pytest.raises(config.ConfigError) as e:
        config.load(config_dir(tmp_path, firewall=firewall))
    assert str(e.value) == ("firewall: section @defaults[0]: option 'flow_offloading_ebpf' "
                            "is 'maybe', expected 0 or 1")


def test_missing_ebpfw_config_gives_the_defaults(tmp_path: Path) -> None:
    assert config.load(config_dir(tmp_path, ebpfw=None)) == (True, config.Settings())


def test_shipped_ebpfw_config_holds_the_defaults(tmp_path: Path) -> None:
    """files/etc/config/ebpfw documents every option with the value config.py defaults to."""
    shipped = (ROOT / "files/etc/config/ebpfw").read_text()
    assert config.load(config_dir(tmp_path, ebpfw=shipped))[1] == config.Settings()
    sections = config.parse_uci(shipped, "ebpfw")
    documented = set(sections[0].options)
    assert documented == {"interface", "mode", "idle_timeout", "flows_max", "sweep_interval",
                          "heartbeat_timeout", "event_rate", "early_drop", "log_level"}


@pytest.mark.parametrize("text, message", [
    ("config ebpfw 'global'\n\toption idle_timeout 'abc'\n",
     "ebpfw: section global: option 'idle_timeout' is 'abc', expected a number"),
    ("config ebpfw\n\toption flows_max '1.5'\n",
     "ebpfw: section @ebpfw[0]: option 'flows_max' is '1.5', expected a number"),
    ("config ebpfw 'global'\n\toption early_drop 'sometimes'\n",
     "ebpfw: section global: option 'early_drop' is 'sometimes', expected 0 or 1"),
    ("config ebpfw 'global'\n\toption idle_timeout '0'\n",
     "ebpfw: section global: option 'idle_timeout' must be between 1 and 86400 seconds"),
    ("config ebpfw 'global'\n\toption mode 'fast'\n",
     "ebpfw: section global: option 'mode' is 'fast', expected one of xdp, xdp-generic, tc, "
     "auto"),
    ("config ebpfw 'global'\nconfig interface\n\toption mode 'xdp'\n",
     "ebpfw: section @interface[0]: option 'device' is missing"),
])
def test_bad_values_name_section_and_option(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.load(config_dir(tmp_path, ebpfw=text))
    assert str(e.value) == message


class FakeUbus:
    """A stand-in for libubus.Connection.call answering `uci get` like rpcd."""

    def __init__(self, configs: dict[str, Any]) -> None:
        self.configs = configs
        self.asked: list[tuple[str, str, dict[str, Any]]] = []

    def call(self, path: str, method: str, args: dict[str, Any],
             timeout_ms: int = 0) -> dict[str, Any] | None:
        self.asked.append((path, method, args))
        reply = self.configs.get(args["config"])
        if reply is None:
            raise libubus.UbusError("ubus call uci get: Not found", libubus.Status.NOT_FOUND)
        values = {k: v for k, v in reply["values"].items()
                  if "type" not in args or v[".type"] == args["type"]}
        return {"values": values}


def fake_uci_get(configs: dict[str, Any]) -> Any:
    return config.uci_get(FakeUbus(configs))   # type: ignore[arg-type]


def test_ubus_uci_get_replies_parse_like_the_files(tmp_path: Path) -> None:
    read = config.ubus_reader(fake_uci_get({"firewall": UBUS_FIREWALL_DEFAULTS,
                                            "ebpfw": UBUS_EBPFW}))
    assert config.load_from(read) == config.load(config_dir(tmp_path)) == (True, EXPECTED)


def test_ubus_without_ebpfw_config_gives_the_defaults() -> None:
    read = config.ubus_reader(fake_uci_get({"firewall": UBUS_FIREWALL_DEFAULTS}))
    assert config.load_from(read) == (True, config.Settings())


def test_ubus_bad_value_names_section_and_option() -> None:
    bad = {"values": {"global": {".anonymous": False, ".type": "ebpfw", ".name": "global",
                                 ".index": 0, "idle_timeout": "abc"}}}
    read = config.ubus_reader(fake_uci_get({"ebpfw": bad}))
    with pytest.raises(config.ConfigError) as e:
        config.load_from(read)
    assert str(e.value) == ("ebpfw: section global: option 'idle_timeout' is 'abc', "
                            "expected a number")


def test_ubus_reply_with_a_plain_dict_and_empty_values_parse() -> None:
    assert config.sections_from_ubus({"values": {}}, "firewall") == []
    with pytest.raises(config.ConfigError):
        config.sections_from_ubus([{"value": "x"}], "firewall")


def test_uci_get_asks_rpcd_for_the_section_type_and_reports_its_absence() -> None:
    ubus = FakeUbus({"firewall": UBUS_FIREWALL_DEFAULTS})
    read = config.ubus_reader(config.uci_get(ubus))   # type: ignore[arg-type]
    assert config.switch_from(read) is True
    assert read("ebpfw", None) is None
    assert ubus.asked == [("uci", "get", {"config": "firewall", "type": "defaults"}),
                          ("uci", "get", {"config": "ebpfw"})]


def test_uci_get_without_rpcd_is_a_config_error() -> None:
    class NoRpcd:
        def call(self, *_args: Any, **_kw: Any) -> None:
            raise libubus.NoSuchObject("ubus object 'uci' at the default socket: Not found",
                                       libubus.Status.NOT_FOUND)

    read = config.ubus_reader(config.uci_get(NoRpcd()))   # type: ignore[arg-type]
    with pytest.raises(config.ConfigError,
                       match=r"cannot read 'firewall': .* \(is rpcd running\?\)"):
        config.switch_from(read)


def test_ubus_socket_option_and_its_override() -> None:
    sections = config.parse_uci("config ebpfw 'global'\n\toption ubus_socket '/tmp/u.sock'\n",
                                "ebpfw")
    settings = config.settings_from_uci(sections, "ebpfw")
    assert settings.ubus_socket == "/tmp/u.sock"
    assert settings.with_overrides(ubus_socket="/run/x.sock").ubus_socket == "/run/x.sock"
    empty = config.parse_uci("config ebpfw\n\toption ubus_socket ''\n", "ebpfw")
    assert config.settings_from_uci(empty, "ebpfw").ubus_socket is None
    with pytest.raises(config.ConfigError, match="option 'ubus_socket' is 'rel', expected an "
                                                  "absolute path"):
        config.settings_from_uci(config.parse_uci("config ebpfw\n\toption ubus_socket rel\n",
                                                  "ebpfw"), "ebpfw")


# -- the command line ----------------------------------------------------------------------------

def run_args(*argv: str) -> Any:
    return cli._parser().parse_args(["run", *argv])


def ebpfw(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-m", "fw_ebpf.cli", *argv], capture_output=True,
                          text=True, env=env, timeout=60)


def test_run_with_the_switch_off_prints_one_line_and_exits_0(tmp_path: Path) -> None:
    d = config_dir(tmp_path, firewall="config defaults\n\toption input ACCEPT\n")
    result = ebpfw("--control", str(tmp_path / "sock"), "run", "--config-dir", d)
    assert result.returncode == 0
    assert result.stdout == ("ebpfw: disabled (firewall.@defaults[0].flow_offloading_ebpf "
                             "is not 1)\n")
    assert result.stderr == ""


def test_run_with_a_bad_config_exits_1_with_one_line(tmp_path: Path) -> None:
    d = config_dir(tmp_path, ebpfw="config ebpfw 'global'\n\toption idle_timeout 'abc'\n")
    result = ebpfw("--control", str(tmp_path / "sock"), "run", "--config-dir", d)
    assert result.returncode == 1
    assert result.stderr == ("ebpfw: section global: option 'idle_timeout' is 'abc', "
                             "expected a number\n")
    assert result.stdout == ""


def test_run_with_an_unparsable_file_exits_1_with_one_line(tmp_path: Path) -> None:
    d = config_dir(tmp_path, ebpfw="config ebpfw 'global\n")
    result = ebpfw("run", "--config-dir", d)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr and result.stderr.startswith("ebpfw: ")


def test_force_runs_with_the_switch_off(tmp_path: Path) -> None:
    d = config_dir(tmp_path, firewall="config defaults\n")
    assert cli._settings(run_args("--config-dir", d, "--force")) == EXPECTED


def test_command_line_overrides_the_config_dir(tmp_path: Path) -> None:
    settings = cli._settings(run_args("--config-dir", config_dir(tmp_path), "-i", "veth0=tc",
                                      "--idle-timeout", "5"))
    assert settings.interfaces == ("veth0",)
    assert settings.modes == {"eth1": "xdp", "veth0": "tc"}
    assert settings.idle_timeout == 5.0


def test_config_file_overrides_the_ebpfw_config_but_not_the_switch(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_text("config ebpfw\n\toption idle_timeout '7'\n")
    (tmp_path / "etc").mkdir()
    d = config_dir(tmp_path / "etc")
    assert cli._settings(run_args("--config-dir", d, "--config", str(other))).idle_timeout == 7
    Path(d, "firewall").write_text("config defaults\n")
    with pytest.raises(config.Disabled):
        cli._settings(run_args("--config-dir", d, "--config", str(other)))


def test_reload_rereads_the_same_source_and_raises_disabled_when_switched_off(
        tmp_path: Path) -> None:
    """What the daemon's reload_settings callback does on SIGHUP."""
    d = config_dir(tmp_path)
    args = run_args("--config-dir", d)
    assert cli._settings(args) == EXPECTED
    Path(d, "ebpfw").write_text(EBPFW.replace("'45'", "'60'"))
    assert cli._settings(args).idle_timeout == 60
    Path(d, "firewall").write_text(FIREWALL_ON.replace("ebpf\t1", "ebpf\t0"))
    with pytest.raises(config.Disabled) as e:
        cli._settings(args)
    assert not isinstance(e.value, ValueError)   # not a config error the daemon would swallow


def test_without_config_dir_or_firewall_config_it_runs_as_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Development hosts and the e2e tests: explicit interfaces, no /etc/config/firewall."""
    monkeypatch.setattr(config, "DEFAULT_DIR", str(tmp_path / "none"))
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", str(tmp_path / "none" / "ebpfw"))
    settings = cli._settings(run_args("-i", "veth0", "--mode", "tc"))
    assert settings == config.Settings(interfaces=("veth0",), mode="tc")


def test_without_config_dir_the_router_config_dir_is_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = config_dir(tmp_path, firewall="config defaults\n")
    monkeypatch.setattr(config, "DEFAULT_DIR", d)
    with pytest.raises(config.Disabled):
        cli._settings(run_args())


def test_run_returns_0_when_the_switch_goes_off_during_a_reload(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the daemon lets config.Disabled out of reload, `ebpfw run` still ends with 0."""
    d = config_dir(tmp_path)

    class FakeDaemon:
        def __init__(self, settings: config.Settings, paths: Any, reload_settings: Any,
                     ubus: Any = None) -> None:
            self.reload_settings = reload_settings

        def run(self) -> int:
            Path(d, "firewall").write_text("config defaults\n")
            self.reload_settings()     # what a SIGHUP does
            return 99

    fake = types.ModuleType("fw_ebpf.daemon")
    fake.Daemon = FakeDaemon                                   # type: ignore[attr-defined]
    fake.Paths = lambda **kw: kw                               # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fw_ebpf.daemon", fake)   # no BPF, no netlink
    monkeypatch.setattr(cli, "_setup_logging", lambda level, use_syslog: None)
    assert cli.main(["--control", str(tmp_path / "sock"), "run", "--config-dir", d]) == 0
