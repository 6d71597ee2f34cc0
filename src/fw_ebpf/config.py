# SPDX-License-Identifier: GPL-2.0-only
"""ebpfw settings: the fw4 switch, /etc/config/ebpfw (UCI) and command-line overrides, validated.

Two sources, one result: on a router rpcd's `uci` ubus object, elsewhere UCI files in a config
directory. The switch is `firewall.@defaults[0].flow_offloading_ebpf` (default off). A bad value
is a ConfigError naming the config, section and option; the daemon then does not start.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from fw_ebpf import libubus, maps

MODES = ("xdp", "xdp-generic", "tc", "auto")
LOG_LEVELS = ("debug", "info", "notice", "warning", "error")


DEFAULT_DIR = "/etc/config"
PIN_DIR = "/sys/fs/bpf/ebpfw"     # maps and links, so a restarted daemon re-adopts live flows
SWITCH = "flow_offloading_ebpf"
DISABLED_REASON = f"disabled (firewall.@defaults[0].{SWITCH} is not 1)"


class ConfigError(ValueError):
    """A setting a user has to fix; the message names where it is."""


class Disabled(Exception):
    """The switch is off: not an error, the service has nothing to do."""

    def __init__(self) -> None:
        super().__init__(DISABLED_REASON)


@dataclass(frozen=True)
class Settings:
    interfaces: tuple[str, ...] = ("auto",)
    mode: str = "auto"
    modes: dict[str, str] = field(default_factory=dict)    # per-interface overrides
    idle_timeout: float = 30.0
    flows_max: int = 65536
    sweep_interval: float = 1.0
    heartbeat_timeout: float = 5.0
    event_rate: int = maps.EVENT_RATE   # NEW events a second per CPU the fast path sends
    early_drop: bool = True
    log_level: str = "info"
    ubus_socket: str | None = None     # None: libubus's default

    def mode_of(self, ifname: str) -> str:
        return self.modes.get(ifname, self.mode)

    def with_overrides(self, **changes: object) -> Settings:
        settings = replace(self, **{k: v for k, v in changes.items() if v is not None})
        settings.validate("command line")
        return settings

    def validate(self, where: str) -> None:
        def bad(option: str, why: str) -> ConfigError:
            return ConfigError(f"{where}: option '{option}' {why}")

        for name, mode in [("mode", self.mode)] + [(f"mode of {i}", m) for i, m in self.modes.items()]:
            if mode not in MODES:
                raise bad(name, f"is '{mode}', expected one of {', '.join(MODES)}")
        if not self.interfaces:
            raise bad("interface", "is empty: name devices or 'auto'")
        if not 1 <= self.idle_timeout <= 86400:
            raise bad("idle_timeout", "must be between 1 and 86400 seconds")
        if not 1024 <= self.flows_max <= 4_194_304:
            raise bad("flows_max", "must be between 1024 and 4194304")
        if not 0.05 <= self.sweep_interval <= 60:
            raise bad("sweep_interval", "must be between 0.05 and 60 seconds")
        if not self.sweep_interval * 2 <= self.heartbeat_timeout <= 3600:
            raise bad("heartbeat_timeout", "must be at least twice sweep_interval and at most 3600")
        if not 0 <= self.event_rate <= 1_000_000:
            raise bad("event_rate", "must be between 0 (no limit) and 1000000 a second")
        if self.log_level not in LOG_LEVELS:
            raise bad("log_level", f"is '{self.log_level}', expected one of {', '.join(LOG_LEVELS)}")
        if self.ubus_socket is not None and not self.ubus_socket.startswith("/"):
            raise bad("ubus_socket", f"is '{self.ubus_socket}', expected an absolute path")


@dataclass
class UciSection:
    type: str
    name: str | None
    options: dict[str, str | list[str]] = field(default_factory=dict)


def parse_uci(text: str, source: str) -> list[UciSection]:
    """The subset of UCI syntax that uci(1) writes: config / option / list lines."""
    sections: list[UciSection] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as e:
            raise ConfigError(f"{source}:{lineno}: {e}") from None
        if not words:
            continue
        kind = words[0]
        if kind == "config" and len(words) in (2, 3):
            sections.append(UciSection(words[1], words[2] if len(words) == 3 else None))
        elif kind in ("option", "list") and len(words) == 3 and sections:
            opts = sections[-1].options
            if kind == "option":
                opts[words[1]] = words[2]
            else:
                prev = opts.get(words[1], [])
                opts[words[1]] = (prev if isinstance(prev, list) else [prev]) + [words[2]]
        elif kind == "package":
            continue
        else:
            raise ConfigError(f"{source}:{lineno}: cannot parse '{line.strip()}'")
    return sections


def _number(sec: UciSection, where: str, option: str, kind: type[int] | type[float]) -> object:
    value = sec.options.get(option)
    if value is None:
        return None
    try:
        return kind(value)   # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: option '{option}' is '{value}', expected a number") from None


def _bool(sec: UciSection, where: str, option: str) -> bool | None:
    value = sec.options.get(option)
    if value is None:
        return None
    if value in ("1", "on", "true", "yes", "enabled"):
        return True
    if value in ("0", "off", "false", "no", "disabled"):
        return False
    raise ConfigError(f"{where}: option '{option}' is '{value}', expected 0 or 1")


def _labels(sections: list[UciSection], source: str) -> list[str]:
    """"source: section NAME" or, for anonymous sections, "source: section @TYPE[N]" as uci(1)."""
    seen: dict[str, int] = {}
    labels = []
    for sec in sections:
        index = seen.get(sec.type, 0)
        seen[sec.type] = index + 1
        labels.append(f"{source}: section {sec.name or f'@{sec.type}[{index}]'}")
    return labels


def settings_from_uci(sections: list[UciSection], source: str) -> Settings:
    changes: dict[str, object] = {}
    modes: dict[str, str] = {}
    where_global = source
    for sec, where in zip(sections, _labels(sections, source)):
        if sec.type == "ebpfw":
            where_global = where
            iface = sec.options.get("interface")
            if iface is not None:
                changes["interfaces"] = tuple(iface if isinstance(iface, list) else iface.split())
            for option, kind in (("idle_timeout", float), ("sweep_interval", float),
                                 ("heartbeat_timeout", float), ("flows_max", int),
                                 ("event_rate", int)):
                value = _number(sec, where, option, kind)
                if value is not None:
                    changes[option] = value
            for option in ("mode", "log_level"):
                if option in sec.options:
                    changes[option] = str(sec.options[option])
            if sec.options.get("ubus_socket"):    # empty: libubus's default socket
                changes["ubus_socket"] = str(sec.options["ubus_socket"])
            early = _bool(sec, where, "early_drop")
            if early is not None:
                changes["early_drop"] = early
        elif sec.type == "interface":
            device, mode = sec.options.get("device"), sec.options.get("mode", "auto")
            if not isinstance(device, str) or not device:
                raise ConfigError(f"{where}: option 'device' is missing")
            modes[device] = str(mode)
    settings = replace(Settings(), modes=modes, **changes)  # type: ignore[arg-type]
    settings.validate(where_global)
    return settings


def load_file(path: str | Path) -> Settings:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    return settings_from_uci(parse_uci(text, str(path)), str(path))


# -- where the sections come from: a config directory or rpcd's `uci` object on ubus ----------

# (config, section type or None for all) -> the sections, or None when the config does not exist
SectionReader = Callable[[str, str | None], list[UciSection] | None]


def dir_reader(config_dir: str | Path) -> SectionReader:
    """Reads /etc/config-style files: DIR/firewall, DIR/ebpfw."""
    directory = Path(config_dir)

    def read(config: str, section_type: str | None) -> list[UciSection] | None:
        path = directory / config
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from None
        sections = parse_uci(text, str(path))
        return [s for s in sections if section_type is None or s.type == section_type]

    return read


def sections_from_ubus(reply: Any, config: str) -> list[UciSection]:
    """What `ubus call uci get {"config": ..., ["type": ...]}` answers, as UciSections.

    The answer is {"values": {sid: {".anonymous", ".type", ".name", ".index", option...}}},
    options are strings and lists are arrays of strings.
    """
    values = reply.get("values") if isinstance(reply, dict) else None
    if not isinstance(values, dict):
        raise ConfigError(f"{config}: unexpected answer from ubus uci get: {reply!r}")
    entries = sorted(values.values(), key=lambda v: int(v.get(".index", 0)))
    sections = []
    for entry in entries:
        options: dict[str, str | list[str]] = {}
        for key, value in entry.items():
            if key.startswith("."):
                continue
            options[key] = [str(v) for v in value] if isinstance(value, list) else str(value)
        name = None if entry.get(".anonymous") else entry.get(".name")
        sections.append(UciSection(str(entry.get(".type", "")), name, options))
    return sections


UBUS_TIMEOUT_MS = 5000
UciGet = Callable[[str, "str | None"], "Any | None"]


def uci_get(conn: libubus.Connection) -> UciGet:
    """`uci get` on rpcd's `uci` object over conn; None when rpcd says the config does not exist.
    The daemon passes the connection its ubus object lives on (calls to the object that arrive
    meanwhile are queued, see libubus.Connection.call)."""
    def get(config: str, section_type: str | None) -> Any | None:
        request = {"config": config}
        if section_type is not None:
            request["type"] = section_type
        try:
            return conn.call("uci", "get", request, timeout_ms=UBUS_TIMEOUT_MS) or {}
        except libubus.NoSuchObject as e:
            raise ConfigError(f"cannot read '{config}': {e} (is rpcd running?)") from None
        except libubus.UbusError as e:
            if e.status == libubus.Status.NOT_FOUND:     # rpcd: no such config
                return None
            raise ConfigError(f"cannot read '{config}': {e}") from None
    return get


def ubus_reader(call: UciGet) -> SectionReader:
    def read(config: str, section_type: str | None) -> list[UciSection] | None:
        reply = call(config, section_type)
        return None if reply is None else sections_from_ubus(reply, config)

    return read


def switch_from_uci(defaults: list[UciSection] | None) -> bool:
    """firewall.@defaults[0].flow_offloading_ebpf; missing config, section or option: off."""
    if not defaults:
        return False
    return bool(_bool(defaults[0], "firewall: section @defaults[0]", SWITCH))


def switch_from(read: SectionReader) -> bool:
    return switch_from_uci(read("firewall", "defaults"))


def settings_from(read: SectionReader) -> Settings:
    """The `ebpfw` config; defaults when it does not exist."""
    sections = read("ebpfw", None)
    return Settings() if sections is None else settings_from_uci(sections, "ebpfw")


def load_from(read: SectionReader) -> tuple[bool, Settings]:
    return switch_from(read), settings_from(read)


def load(config_dir: str | None = None) -> tuple[bool, Settings]:
    """(enabled, settings) from the UCI files in config_dir (default /etc/config)."""
    return load_from(dir_reader(config_dir or DEFAULT_DIR))
