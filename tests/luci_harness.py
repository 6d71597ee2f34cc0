# SPDX-License-Identifier: GPL-2.0-only
"""A LuCI-shaped web server for the browser tests of luci-app-ebpfw.

It serves what a browser gets from a router running LuCI, for one page: the page itself
(LuCI's environment with the session and the menu node's permissions), the LuCI client runtime
(our stand-in, tests/luci/luci.js), the app's view from openwrt-feed/luci-app-ebpfw, and the
ubus JSON-RPC endpoint `/ubus/` that uhttpd serves, answering like uhttpd and rpcd:

- sessions and ACLs: rpcd's model, from the app's real ACL file (plus the luci-base grants
  every LuCI login has: `uci get/changes`, `session access`, and for writers `uci set/delete/
  apply`); a call the session may not make is refused with JSON-RPC error -32002;
- `uci`: get/set/delete/changes/apply over UCI files in a directory (changes are staged per
  session and committed by apply, which then calls `on_apply` with the changed configs: the
  test plays procd's reload triggers there);
- `ebpfw`: the REAL daemon, through its control socket, i.e. api.Api.call as ubus would; the
  arguments carry `ubus_rpc_session` as uhttpd adds it; no daemon: JSON-RPC error -32000
  (uhttpd's "Object not found"); a refused argument, or a null one: ubus status 2.
"""
from __future__ import annotations

import http.server
import json
import secrets
import socket
import threading
import urllib.parse
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fw_ebpf import api, control
from fw_ebpf.config import UciSection, parse_uci

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "openwrt-feed" / "luci-app-ebpfw"
STANDIN = ROOT / "tests" / "luci"
RESOURCES = APP / "htdocs" / "luci-static" / "resources"
MENU_DIR = APP / "root" / "usr" / "share" / "luci" / "menu.d"
ACL_DIR = APP / "root" / "usr" / "share" / "rpcd" / "acl.d"

# what luci-base's ACL and rpcd's unauthenticated group give every LuCI login
LUCI_BASE = {
    "luci-base": {
        "read": {"ubus": {"uci": ["changes", "get"], "session": ["access"]}},
        "write": {"ubus": {"uci": ["apply", "delete", "set"]}},
    }
}

# ubus status codes and uhttpd's JSON-RPC errors
UBUS_OK, UBUS_INVALID_ARGUMENT, UBUS_METHOD_NOT_FOUND = 0, 2, 3
UBUS_NOT_FOUND, UBUS_NO_DATA, UBUS_PERMISSION_DENIED, UBUS_UNKNOWN_ERROR = 4, 5, 6, 9
RPC_OBJECT_NOT_FOUND = (-32000, "Object not found")
RPC_ACCESS_DENIED = (-32002, "Access denied")
RPC_INVALID_REQUEST = (-32600, "Invalid request")
RPC_METHOD_NOT_FOUND = (-32601, "Method not found")


@dataclass(frozen=True)
class User:
    """An rpcd login: the ACL groups it may read and write ('*' for all), as in /etc/config/rpcd."""

    read: tuple[str, ...]
    write: tuple[str, ...]


USERS = {"root": User(("*",), ("*",)), "viewer": User(("*",), ())}


@dataclass
class Session:
    sid: str
    user: str
    grants: dict[tuple[str, str], set[str]] = field(default_factory=dict)   # (scope, object)
    groups: dict[str, set[str]] = field(default_factory=dict)                # group -> read/write
    staged: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def allowed(self, scope: str, obj: str, function: str) -> bool:
        granted = self.grants.get((scope, obj), set())
        return function in granted or "*" in granted


def load_acls(directory: Path = ACL_DIR) -> dict[str, Any]:
    groups: dict[str, Any] = dict(LUCI_BASE)
    for path in sorted(directory.glob("*.json")):
        groups.update(json.loads(path.read_text()))
    return groups


def new_session(user: str, acls: dict[str, Any]) -> Session:
    """rpcd's session setup: every permission of every group the login may read or write."""
    login = USERS[user]
    s = Session(secrets.token_hex(16), user)
    for group, spec in acls.items():
        for level, names in (("read", login.read), ("write", login.write)):
            if ("*" not in names and group not in names) or level not in spec:
                continue
            s.groups.setdefault(group, set()).add(level)
            for obj, methods in spec[level].get("ubus", {}).items():
                s.grants.setdefault(("ubus", obj), set()).update(methods)
            for config in spec[level].get("uci", []):
                s.grants.setdefault(("uci", config), set()).add(level)
    return s


class UciStore:
    """UCI files in a directory, with rpcd's per-session staging of changes."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.lock = threading.Lock()

    def sections(self, config: str) -> list[UciSection] | None:
        path = self.dir / config
        return parse_uci(path.read_text(), str(path)) if path.exists() else None

    def values(self, config: str, staged: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        """What `uci get {config}` answers: sections by name, anonymous ones named like uci."""
        sections = self.sections(config)
        if sections is None:
            return None
        out = {}
        for index, sec in enumerate(sections):
            name = sec.name or _anonymous_name(index, sec.type)
            entry: dict[str, Any] = {".anonymous": sec.name is None, ".type": sec.type,
                                     ".name": name, ".index": index, **sec.options}
            for option, value in staged.get(name, {}).items():
                if value is None:
                    entry.pop(option, None)
                else:
                    entry[option] = value
            out[name] = entry
        return out

    def commit(self, config: str, staged: dict[str, dict[str, Any]]) -> None:
        values = self.values(config, staged) or {}
        lines = []
        for entry in sorted(values.values(), key=lambda e: e[".index"]):
            head = f"config {entry['.type']}"
            lines.append(head if entry[".anonymous"] else f"{head} {_quote(entry['.name'])}")
            for option, value in entry.items():
                if option.startswith("."):
                    continue
                for item in (value if isinstance(value, list) else [value]):
                    kind = "list" if isinstance(value, list) else "option"
                    lines.append(f"\t{kind} {option} {_quote(str(item))}")
            lines.append("")
        (self.dir / config).write_text("\n".join(lines))


def _anonymous_name(index: int, section_type: str) -> str:
    return f"cfg{index:02x}{zlib.crc32(section_type.encode()) & 0xFFFF:04x}"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'" if value else "''"


class Harness:
    """The server; start() returns its base URL. `calls` records every ubus call it was asked."""

    def __init__(self, uci_dir: Path, control_path: str,
                 on_apply: Callable[[set[str]], None] = lambda configs: None,
                 pollinterval: int = 1) -> None:
        self.uci = UciStore(uci_dir)
        self.control_path = control_path
        self.on_apply = on_apply
        self.pollinterval = pollinterval
        self.acls = load_acls()
        self.menu = load_menu()
        self.sessions: dict[str, Session] = {}
        self.calls: list[tuple[str, str, str, dict[str, Any]]] = []
        self.server: http.server.ThreadingHTTPServer | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> str:
        harness = self

        class Handler(_Handler):
            owner = harness

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def __enter__(self) -> Harness:
        self.url = self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def login(self, user: str) -> Session:
        session = new_session(user, self.acls)
        self.sessions[session.sid] = session
        return session

    # -- the page -----------------------------------------------------------------------------

    def page(self, path: str, session: Session) -> str | None:
        node = self.menu.get(path.strip("/").removeprefix("cgi-bin/luci/"))
        if node is None or node.get("action", {}).get("type") != "view":
            return None
        spec = dict(node, satisfied=True, readonly=True)
        for group in node.get("depends", {}).get("acl", []):
            levels = session.groups.get(group, set())
            spec["satisfied"] = spec["satisfied"] and bool(levels)
            spec["readonly"] = spec["readonly"] and "write" not in levels
        parts = path.strip("/").removeprefix("cgi-bin/luci/").split("/")
        env = {
            "sessionid": session.sid, "token": secrets.token_hex(16), "base_url": "/luci-static/resources",
            "resource": "/luci-static/resources", "media": "/luci-static/harness",
            "scriptname": "/cgi-bin/luci", "requestpath": parts, "ubuspath": "/ubus/",
            "pollinterval": self.pollinterval, "rpctimeout": 20, "nodespec": spec,
            "documentroot": "/www",
        }
        view = "view." + node["action"]["path"].replace("/", ".")
        return (STANDIN / "page.html").read_text() \
            .replace("@TITLE@", _html(node.get("title", ""))) \
            .replace("@USER@", _html(session.user)) \
            .replace("@ENV@", json.dumps(env).replace("</", "<\\/")) \
            .replace("@VIEW@", json.dumps(view))

    # -- ubus JSON-RPC ------------------------------------------------------------------------

    def rpc(self, request: Any) -> Any:
        if isinstance(request, list):
            return [self.rpc(r) for r in request]
        rid = request.get("id") if isinstance(request, dict) else None
        try:
            result = self._rpc_one(request)
        except _RpcError as e:
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": e.code, "message": e.message}}
        return {"jsonrpc": "2.0", "id": rid, "result": result}

    def _rpc_one(self, request: Any) -> Any:
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0":
            raise _RpcError(*RPC_INVALID_REQUEST)
        params = request.get("params")
        if request.get("method") == "list":
            return self._list(params or [])
        if request.get("method") != "call":
            raise _RpcError(*RPC_METHOD_NOT_FOUND)
        if not (isinstance(params, list) and len(params) == 4 and isinstance(params[3], dict)):
            raise _RpcError(*RPC_INVALID_REQUEST)
        sid, obj, method, args = params
        if obj not in ("session", "uci", "ebpfw"):
            raise _RpcError(*RPC_OBJECT_NOT_FOUND)
        if obj == "ebpfw" and not self._ebpfw_registered():
            raise _RpcError(*RPC_OBJECT_NOT_FOUND)
        session = self.sessions.get(sid)
        if session is None or not session.allowed("ubus", obj, method):
            raise _RpcError(*RPC_ACCESS_DENIED)
        self.calls.append((session.user, obj, method, args))
        if obj == "session":
            return self._session(session, method, args)
        if obj == "uci":
            return self._uci(session, method, args)
        return self._ebpfw(session, method, args)

    def _ebpfw_registered(self) -> bool:
        """ubusd has the object while the daemon runs: its control socket accepts."""
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.control_path)
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def _list(self, objects: list[str]) -> Any:
        registered = {"session": {"access": {"scope": "string", "object": "string",
                                             "function": "string"}},
                      "uci": {"get": {"config": "string"}, "set": {"config": "string"}}}
        if self._ebpfw_registered():
            registered["ebpfw"] = {
                name: {arg: "number" if spec.type == api.ArgType.INT else spec.type.value
                       for arg, spec in m.args.items()}
                for name, m in api.METHODS.items()}
        if not objects:
            return sorted(registered)
        return {o: registered[o] for o in objects if o in registered}

    def _session(self, session: Session, method: str, args: dict[str, Any]) -> Any:
        if method != "access":
            return [UBUS_METHOD_NOT_FOUND]
        scope, obj, function = args.get("scope", "ubus"), args.get("object"), args.get("function")
        return [UBUS_OK, {"access": session.allowed(scope, str(obj), str(function))}]

    def _uci(self, session: Session, method: str, args: dict[str, Any]) -> Any:
        config = args.get("config")
        if not isinstance(config, str) and method in ("get", "set", "delete"):
            return [UBUS_INVALID_ARGUMENT]
        with self.uci.lock:
            if method == "get":
                if not session.allowed("uci", config, "read"):
                    return [UBUS_PERMISSION_DENIED]
                values = self.uci.values(config, session.staged.get(config, {}))
                return [UBUS_NOT_FOUND] if values is None else [UBUS_OK, {"values": values}]
            if method in ("set", "delete"):
                if not session.allowed("uci", config, "write"):
                    return [UBUS_PERMISSION_DENIED]
                section = args.get("section")
                if self.uci.values(config, {}) is None or not isinstance(section, str):
                    return [UBUS_NOT_FOUND]
                changes = session.staged.setdefault(config, {}).setdefault(section, {})
                if method == "set":
                    values = args.get("values")
                    if not isinstance(values, dict):
                        return [UBUS_INVALID_ARGUMENT]
                    changes.update({k: v if isinstance(v, list) else str(v)
                                    for k, v in values.items()})
                else:
                    changes.update(dict.fromkeys(args.get("options") or [], None))
                return [UBUS_OK]
            if method == "changes":
                return [UBUS_OK, {"changes": {c: [[("remove" if v is None else "set"), s, o, v]
                                                   for s, opts in secs.items()
                                                   for o, v in opts.items()]
                                               for c, secs in session.staged.items()}}]
            if method == "apply":
                configs = {c for c in session.staged if session.allowed("uci", c, "write")}
                if not configs:
                    return [UBUS_NO_DATA]
                for config in configs:
                    self.uci.commit(config, session.staged.pop(config))
        if method == "apply":
            self.on_apply(configs)       # procd's reload triggers, after the commit
            return [UBUS_OK]
        return [UBUS_METHOD_NOT_FOUND]

    def _ebpfw(self, session: Session, method: str, args: dict[str, Any]) -> Any:
        spec = api.METHODS.get(method)
        if spec is None:
            return [UBUS_METHOD_NOT_FOUND]
        # uhttpd turns a JSON null into an untyped attribute, which a typed policy refuses
        if any(value is None for value in args.values()):
            return [UBUS_INVALID_ARGUMENT]
        try:
            api.validate(spec, args)        # only to pick the status code; the daemon checks too
        except api.InvalidArgument:
            return [UBUS_INVALID_ARGUMENT]
        try:
            reply = control.call(self.control_path, method,
                                 {**args, "ubus_rpc_session": session.sid})
        except control.ControlError as e:
            if "not running" in str(e):
                raise _RpcError(*RPC_OBJECT_NOT_FOUND) from None
            return [UBUS_UNKNOWN_ERROR]
        return [UBUS_OK, reply]


class _RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class _Handler(http.server.BaseHTTPRequestHandler):
    owner: Harness
    protocol_version = "HTTP/1.1"

    def log_message(self, *_args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _session(self) -> Session | None:
        for part in self.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "sysauth_http":
                return self.owner.sessions.get(value)
        return None

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/login":
            query = urllib.parse.parse_qs(url.query)
            session = self.owner.login(query.get("user", ["root"])[0])
            where = query.get("next", ["/cgi-bin/luci/admin/status/ebpfw"])[0]
            self._send(302, b"", "text/plain", {"Location": where,
                                                "Set-Cookie": f"sysauth_http={session.sid}; Path=/"})
            return
        if url.path.startswith("/cgi-bin/luci/"):
            session = self._session()
            if session is None:
                self._send(403, b"login required", "text/plain")
                return
            page = self.owner.page(url.path, session)
            if page is None:
                self._send(404, b"no such page", "text/plain")
                return
            self._send(200, page.encode(), "text/html; charset=utf-8")
            return
        path = _static(url.path)
        if path is None:
            self._send(404, b"not found", "text/plain")
            return
        ctype = {".js": "application/javascript", ".css": "text/css",
                 ".svg": "image/svg+xml"}.get(path.suffix, "application/octet-stream")
        self._send(200, path.read_bytes(), ctype)

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path not in ("/ubus", "/ubus/"):
            self._send(404, b"not found", "text/plain")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            request = json.loads(body)
        except ValueError:
            reply: Any = {"jsonrpc": "2.0", "id": None,
                          "error": {"code": -32700, "message": "Parse error"}}
        else:
            reply = self.owner.rpc(request)
        self._send(200, json.dumps(reply).encode(), "application/json")


def _static(path: str) -> Path | None:
    """/luci-static/resources/luci.js is the stand-in, other resources are the app's."""
    if path == "/luci-static/resources/luci.js":
        return STANDIN / "luci.js"
    for prefix, base in (("/luci-static/resources/", RESOURCES), ("/luci-static/harness/", STANDIN)):
        if path.startswith(prefix):
            target = (base / path[len(prefix):]).resolve()
            if target.is_file() and base.resolve() in target.parents:
                return target
    return None


def load_menu(directory: Path = MENU_DIR) -> dict[str, Any]:
    menu: dict[str, Any] = {}
    for path in sorted(directory.glob("*.json")):
        menu.update(json.loads(path.read_text()))
    return menu


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_uci(path: Path, sections: list[tuple[str, str | None, dict[str, str]]]) -> None:
    """A UCI file as uci(1) writes it."""
    lines = []
    for stype, name, options in sections:
        lines.append(f"config {stype}" + (f" {_quote(name)}" if name else ""))
        lines += [f"\toption {k} {_quote(v)}" for k, v in options.items()]
        lines.append("")
    path.write_text("\n".join(lines))

