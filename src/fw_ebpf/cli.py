# SPDX-License-Identifier: GPL-2.0-only
"""The `ebpfw` command: run the daemon, or ask the running one."""
from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import os
import sys
from typing import Any

from fw_ebpf import config
from fw_ebpf.control import DEFAULT_PATH, ControlError, call
from fw_ebpf.loader import DEFAULT_PIN_DIR

DEFAULT_CONFIG = "/etc/config/ebpfw"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ebpfw", description="eBPF flow offloading for firewall4")
    p.add_argument("--control", default=DEFAULT_PATH, help="control socket (default %(default)s)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", help=f"UCI config file (default {DEFAULT_CONFIG} if present)")
    run.add_argument("-i", "--interface", action="append", metavar="DEV[=MODE]",
                     help="attach to DEV (repeatable); MODE: xdp, xdp-generic, tc, auto")
    run.add_argument("--mode", choices=config.MODES, help="hook for interfaces without =MODE")
    run.add_argument("--idle-timeout", type=float, help="seconds before an idle flow is evicted")
    run.add_argument("--sweep-interval", type=float, help="seconds between sweeps")
    run.add_argument("--heartbeat-timeout", type=float, help="fail-open after this many seconds")
    run.add_argument("--flows-max", type=int, help="flow table size")
    run.add_argument("--log-level", choices=config.LOG_LEVELS)
    run.add_argument("--syslog", action="store_true", help="log to syslog instead of stderr")
    run.add_argument("--pin-dir", default=DEFAULT_PIN_DIR, help="bpffs directory for pins")
    run.add_argument("--object-dir", help="directory of ebpfw-le.o / ebpfw-be.o")

    for name, text in (("status", "attached interfaces, flows, counters"),
                       ("flows", "the flow table"), ("stats", "fast-path counters")):
        q = sub.add_parser(name, help=text)
        q.add_argument("--json", action="store_true", help="print JSON")
        if name == "flows":
            q.add_argument("--state", choices=("pending", "pass", "drop", "forward"))
    sub.add_parser("flush", help="hand every flow back to the stack")
    sub.add_parser("resync", help="re-check every flow (after a firewall reload)")
    return p


def _settings(args: argparse.Namespace) -> config.Settings:
    path = args.config
    if path is None:
        path = DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None
    settings = config.load_file(path) if path else config.Settings()
    modes = dict(settings.modes)
    interfaces = None
    if args.interface:
        interfaces = []
        for item in args.interface:
            name, _, mode = item.partition("=")
            interfaces.append(name)
            if mode:
                modes[name] = mode
    return settings.with_overrides(
        interfaces=tuple(interfaces) if interfaces else None, modes=modes, mode=args.mode,
        idle_timeout=args.idle_timeout, sweep_interval=args.sweep_interval,
        heartbeat_timeout=args.heartbeat_timeout, flows_max=args.flows_max,
        log_level=args.log_level)


def _setup_logging(level: str, use_syslog: bool) -> None:
    handler: logging.Handler
    if use_syslog:
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.setFormatter(logging.Formatter("ebpfw: %(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"NOTICE": "INFO"}.get(level.upper(), level.upper()))
    logging.getLogger("pyroute2").setLevel(logging.WARNING)   # its debug log is per message


def _run(args: argparse.Namespace) -> int:
    from fw_ebpf.daemon import Daemon, Paths

    settings = _settings(args)
    _setup_logging(settings.log_level, args.syslog)
    paths = Paths(object_dir=args.object_dir, pin_dir=args.pin_dir, control=args.control,
                  config=args.config)
    return Daemon(settings, paths, reload_settings=lambda: _settings(args)).run()


def _print_status(s: dict[str, Any]) -> None:
    print(f"uptime {s['uptime']}s, last sweep {s['last_sweep_ms']} ms")
    print("interfaces: " + ", ".join(f"{k} ({v})" for k, v in s["interfaces"].items()))
    print("flows: " + ", ".join(f"{k} {v}" for k, v in s["flows"].items()))
    adm = s["admission_ms"]
    if adm["count"]:
        print(f"admission (first packet to offloaded): p50 {adm['p50']} ms, p99 {adm['p99']} ms, "
              f"max {adm['max']} ms over {adm['count']} flows")
    c = s["counters"]
    print(f"packets: rx {c['rx']}, forwarded {c['forward']}, dropped {c['drop']}, "
          f"passed {c['pass']}")
    if s["pass_reasons"]:
        print("passed because: " + ", ".join(f"{k} {v}" for k, v in
                                             sorted(s["pass_reasons"].items(), key=lambda kv: -kv[1])))


def _print_flows(flows: list[dict[str, Any]]) -> None:
    print(f"{'state':8} {'proto':5} {'source':28} {'destination':28} {'packets':>9} {'bytes':>12}  info")
    for f in flows:
        info = f["reason"]
        if "nat_src" in f:
            info = f"nat {f['nat_src']} -> {f['nat_dst']}"
        print(f"{f['state']:8} {f['proto']:5} {f['src']:28} {f['dst']:28} {f['packets']:>9} "
              f"{f['bytes']:>12}  {info}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        request = {"state": args.state} if args.command == "flows" and args.state else {}
        result = call(args.control, args.command, request)
    except (ControlError, ValueError, OSError, RuntimeError) as e:
        print(f"ebpfw: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if getattr(args, "json", False) or args.command in ("flush", "resync"):
        print(json.dumps(result, indent=2))
    elif args.command == "status":
        _print_status(result)
    elif args.command == "flows":
        _print_flows(result)
    else:
        for name, value in result.items():
            print(f"{name:24} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
