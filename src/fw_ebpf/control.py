# SPDX-License-Identifier: GPL-2.0-only
"""The local control socket: one JSON request line in, one JSON answer line out.

Serves the same methods (api.py) that ubus_api.py registers on ubus, for hosts without ubus (and
for the tests). Requests are tiny, so a client is served to completion when it connects.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from typing import Any, Callable

from fw_ebpf.api import InvalidArgument, UnknownMethod

log = logging.getLogger("fw_ebpf.control")

DEFAULT_PATH = "/var/run/ebpfw.sock"
Call = Callable[[str, dict[str, Any]], Any]    # api.Api.call


class ControlError(RuntimeError):
    """The daemon could not be asked, or answered with an error."""


class ControlServer:
    def __init__(self, path: str, call: Call) -> None:
        self.path = path
        self.call = call
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # root-only from the first moment clients can find it: made 0600 under another name,
        # then renamed over the path (bind alone leaves the mode to the umask)
        fresh = f"{path}.{os.getpid()}.new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fresh)
        try:
            self.sock.bind(fresh)
            os.chmod(fresh, 0o600)
            os.rename(fresh, path)
        except OSError:
            self.sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(fresh)
            raise
        self.sock.listen(16)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve_ready(self) -> None:
        """Answers every client waiting to be accepted."""
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self._serve(conn)
                except (OSError, ValueError) as e:
                    log.debug("control client: %s", e)

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            buf += chunk
        request = json.loads(buf or b"{}")
        method = str(request.get("method"))
        answer: dict[str, Any]
        try:
            answer = {"result": self.call(method, request.get("args"))}
        except (InvalidArgument, UnknownMethod) as e:
            answer = {"error": f"{method}: {e}"}
        except Exception as e:  # a handler bug must not kill the daemon
            log.exception("control method %s failed", method)
            answer = {"error": f"{method}: {e}"}
        conn.sendall(json.dumps(answer).encode() + b"\n")

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def call(path: str, method: str, args: dict[str, Any] | None = None, timeout: float = 10) -> Any:
    """Asks the running daemon; raises ControlError with a message a user can act on."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"ebpfw is not running (no control socket at {path})") from None
        sock.sendall(json.dumps({"method": method, "args": args or {}}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
    except socket.timeout:
        raise ControlError(f"ebpfw did not answer '{method}' within {timeout:g}s") from None
    finally:
        sock.close()
    try:
        answer = json.loads(buf)
    except ValueError:
        raise ControlError(f"ebpfw sent a malformed answer to '{method}'") from None
    if "error" in answer:
        raise ControlError(answer["error"])
    return answer.get("result")
