# SPDX-License-Identifier: GPL-2.0-only
"""ebpfw settings: /etc/config/ebpfw (UCI) and command-line overrides, validated.

A bad value is a ConfigError naming the section and option; the daemon then does not start.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path

MODES = ("xdp", "xdp-generic", "tc", "auto")
LOG_LEVELS = ("debug", "info", "notice", "warning", "error")


class ConfigError(ValueError):
    """A setting a user has to fix; the message names where it is."""


@dataclass(frozen=True)
class Settings:
    interfaces: tuple[str, ...] = ("auto",)
    mode: str = "auto"
    modes: dict[str, str] = field(default_factory=dict)    # per-interface overrides
    idle_timeout: float = 30.0
    flows_max: int = 65536
    sweep_interval: float = 1.0
    heartbeat_timeout: float = 5.0
    early_drop: bool = True
    log_level: str = "info"

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
        if self.log_level not in LOG_LEVELS:
            raise bad("log_level", f"is '{self.log_level}', expected one of {', '.join(LOG_LEVELS)}")


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


def settings_from_uci(sections: list[UciSection], source: str) -> Settings:
    changes: dict[str, object] = {}
    modes: dict[str, str] = {}
    for i, sec in enumerate(sections):
        where = f"{source}: section {sec.name or f'@{sec.type}[{i}]'}"
        if sec.type == "ebpfw":
            iface = sec.options.get("interface")
            if iface is not None:
                changes["interfaces"] = tuple(iface if isinstance(iface, list) else iface.split())
            for option, kind in (("idle_timeout", float), ("sweep_interval", float),
                                 ("heartbeat_timeout", float), ("flows_max", int)):
                value = _number(sec, where, option, kind)
                if value is not None:
                    changes[option] = value
            for option in ("mode", "log_level"):
                if option in sec.options:
                    changes[option] = str(sec.options[option])
            early = _bool(sec, where, "early_drop")
            if early is not None:
                changes["early_drop"] = early
        elif sec.type == "interface":
            device, mode = sec.options.get("device"), sec.options.get("mode", "auto")
            if not isinstance(device, str) or not device:
                raise ConfigError(f"{where}: option 'device' is missing")
            modes[device] = str(mode)
    settings = replace(Settings(), modes=modes, **changes)  # type: ignore[arg-type]
    settings.validate(source)
    return settings


def load_file(path: str | Path) -> Settings:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    return settings_from_uci(parse_uci(text, str(path)), str(path))
