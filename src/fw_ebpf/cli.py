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

from fw_ebpf import api, config, libubus
from fw_ebpf.control import DEFAULT_PATH, ControlError, call

DEFAULT_CONFIG = "/etc/config/ebpfw"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ebpfw", description="eBPF flow offloading for firewall4")
    p.add_argument("--control", default=DEFAULT_PATH, help="control socket (default %(default)s)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", metavar="FILE",
                     help="ebpfw UCI file, overriding the one in the config source")
    run.add_argument("--config-dir", metavar="DIR",
                     help="read 'firewall' and 'ebpfw' from this UCI directory instead of ubus "
                          f"(default: ubus on a router, else {config.DEFAULT_DIR} if it has "
                          "'firewall')")
    run.add_argument("--force", action="store_true",
                     help=f"run even when firewall.@defaults[0].{config.SWITCH} is off")
    run.add_argument("-i", "--interface", action="append", metavar="DEV[=MODE]",
                     help="attach to DEV (repeatable); MODE: xdp, xdp-generic, tc, auto")
    run.add_argument("--mode", choices=config.MODES, help="hook for interfaces without =MODE")
    run.add_argument("--idle-timeout", type=float, help="seconds before an idle flow is evicted")
    run.add_argument("--sweep-interval", type=float, help="seconds between sweeps")
    run.add_argument("--heartbeat-timeout", type=float, help="fail-open after this many seconds")
    run.add_argument("--flows-max", type=int, help="flow table size")
    run.add_argument("--event-rate", type=int,
                     help="new-flow events a second per CPU (more: the sweep adopts them)")
    run.add_argument("--log-level", choices=config.LOG_LEVELS)
    run.add_argument("--syslog", action="store_true", help="log to syslog instead of stderr")
    run.add_argument("--pin-dir", default=config.PIN_DIR, help="bpffs directory for pins")
    run.add_argument("--object-dir", help="directory of ebpfw-le.o / ebpfw-be.o")
    run.add_argument("--sysfs", metavar="DIR", default="/sys",
                     help="where DSA switches are looked up (class/net/*/dsa/tagging)")
    run.add_argument("--fw4-model", metavar="FILE",
                     help="fw4's model as JSON (default: ask the ucode hook, on a router)")
    run.add_argument("--early-drop", action=argparse.BooleanOptionalAction, default=None,
                     help="drop flows fw4 drops in the fast path (config option early_drop)")
    run.add_argument("--ubus-socket", metavar="PATH",
                     help="ubusd's socket, for the ebpfw object and the uci reads (config option "
                          "ubus_socket; default: libubus's)")

    for name, text in (("status", "attached interfaces, flows, counters"),
                       ("flows", "the flow table"), ("stats", "fast-path counters")):
        q = sub.add_parser(name, help=text)
        q.add_argument("--json", action="store_true", help="print JSON")
        if name == "flows":
            q.add_argument("--state", choices=api.METHODS["flows"].args["state"].choices)
            q.add_argument("--proto", choices=api.METHODS["flows"].args["proto"].choices)
            q.add_argument("--family", type=int, choices=(4, 6))
            q.add_argument("--sort", choices=api.FLOW_SORTS, default="bytes",
                           help="largest first (default %(default)s)")
            q.add_argument("--limit", type=int, metavar="N", help="at most N flows (default: all)")
            q.add_argument("--offset", type=int, default=0, metavar="N", help="skip N flows")
    sub.add_parser("flush", help="hand every flow back to the stack")
    sub.add_parser("resync", help="re-check every flow (after a firewall reload)")
    return p


def _source(args: argparse.Namespace,
            ubus: libubus.Connection | None) -> config.SectionReader | None:
    """Where this run reads the switch and tunables, on start and on every reload.

    None: no firewall config on this host (a development machine, the tests), so there is no
    switch to honour and the settings come from --config, /etc/config/ebpfw or the defaults.
    """
    if args.config_dir is not None:
        return config.dir_reader(args.config_dir)
    if ubus is not None:
        return config.ubus_reader(config.uci_get(ubus))
    if os.path.exists(os.path.join(config.DEFAULT_DIR, "firewall")):
        return config.dir_reader(config.DEFAULT_DIR)
    return None


def _settings(args: argparse.Namespace,
              ubus: libubus.Connection | None = None) -> config.Settings:
    """The settings to run with; raises config.Disabled when the switch is off."""
    read = _source(args, ubus)
    if read is not None and not args.force and not config.switch_from(read):
        raise config.Disabled()
    if args.config is not None:
        settings = config.load_file(args.config)
    elif read is not None:
        settings = config.settings_from(read)
    elif os.path.exists(DEFAULT_CONFIG):
        settings = config.load_file(DEFAULT_CONFIG)
    else:
        settings = config.Settings()
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
        event_rate=args.event_rate,
        log_level=args.log_level, early_drop=args.early_drop, ubus_socket=args.ubus_socket)


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


def _run(args: argparse.Namespace) -> int:
    # on a router the configuration is read from rpcd over ubus, on the connection the daemon
    # then serves its object on (the socket comes from the command line: the init script reads
    # the UCI option from the file)
    ubus = None
    if args.config_dir is None and libubus.available():
        ubus = libubus.Connection(args.ubus_socket)
    try:
        return _run_with(args, ubus)
    finally:
        if ubus is not None:
            ubus.close()


def _run_with(args: argparse.Namespace, ubus: libubus.Connection | None) -> int:
    try:
        settings = _settings(args, ubus)
    except config.Disabled as e:
        print(f"ebpfw: {e}")
        return 0
    from fw_ebpf.netlink import NetlinkError   # the daemon's imports: only when it runs
    from fw_ebpf.daemon import Daemon, Paths

    _setup_logging(settings.log_level, args.syslog)
    paths = Paths(object_dir=args.object_dir, pin_dir=args.pin_dir, control=args.control,
                  config=args.config, fw4_model=args.fw4_model, sysfs=args.sysfs)
    # on SIGHUP the daemon re-reads the same source; config.Disabled from there means the
    # switch went off: the daemon stops (if it lets the exception out, it unwinds cleanly here)
    try:
        return Daemon(settings, paths, reload_settings=lambda: _settings(args, ubus),
                      ubus=ubus).run()
    except config.Disabled as e:
        logging.getLogger("fw_ebpf").info("stopped: %s", e)
        return 0
    except NetlinkError as e:
        raise RuntimeError(str(e)) from None


def _print_status(s: dict[str, Any]) -> None:
    print(f"uptime {s['uptime']}s, last sweep {s['last_sweep_ms']} ms")
    print("interfaces: " + ", ".join(f"{k} ({v})" for k, v in s["interfaces"].items()))
    print("flows: " + ", ".join(f"{k} {v}" for k, v in s["flows"].items()))
    adm = s["admission_ms"]
    if adm["count"]:
        print(f"admission (first packet to offloaded): p50 {adm['p50']} ms, p99 {adm['p99']} ms, "
              f"max {adm['max']} ms over {adm['count']} flows")
    b = s.get("admission_backlog", {})
    if b.get("new") or b.get("retrying") or b.get("passed_over") or s.get("rejected_forgotten"):
        print(f"new flows waiting: {b.get('new', 0)} in the backlog, {b.get('retrying', 0)} for "
              f"a retry of their lookup; {b.get('passed_over', 0)} passed over for a full "
              f"backlog, {s.get('rejected_forgotten', 0)} without a conntrack entry forgotten")
    g = s["generation"]
    waiting = f", {g['waiting']} flows waiting to be proved again" if g["waiting"] else ""
    print(f"generation {g['number']} ({g['why']}, {g['age_s']} s ago){waiting}")
    m = s.get("fw4_model", {})
    if m:
        age = f", model read {m['model_age_s']} s ago" if m.get("model_age_s") is not None else ""
        why = f": {m['error']} (retry in {m['retry_in_s']} s)" if m.get("error") else ""
        print(f"early drop: fw4 model {m['state']}{age}{why}")
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


def _all_flows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The flows asked for, fetched a page at a time as a ubus client would."""
    request: dict[str, Any] = {k: getattr(args, k) for k in ("state", "proto", "family", "sort")
                               if getattr(args, k) is not None}
    wanted = args.limit if args.limit is not None else float("inf")
    offset, out = args.offset, []
    while len(out) < wanted:
        page = call(args.control, "flows", {**request, "offset": offset,
                                            "limit": int(min(api.FLOWS_LIMIT_MAX,
                                                             wanted - len(out)))})
        out += page["flows"]
        offset += len(page["flows"])
        if not page["flows"] or offset >= page["total"]:
            break
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "flows":
            result = _all_flows(args)
        else:
            result = call(args.control, args.command, {})
    except (ControlError, ValueError, OSError, RuntimeError) as e:
        message = str(e)   # config errors about the 'ebpfw' config already start with its name
        print(message if message.startswith("ebpfw: ") else f"ebpfw: {message}", file=sys.stderr)
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
