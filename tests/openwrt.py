# SPDX-License-Identifier: GPL-2.0-only
"""OpenWrt's userland (ubusd, libubus, rpcd, uhttpd) for the tests that need the real thing.

Debian packages none of it; a build from the upstream sources (outside the repository) is used
when EBPFW_OPENWRT_PREFIX names its install prefix (with sbin/ubusd, bin/ubus, lib/libubus.so).
Without it those tests skip, as in CI.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from lab import Lab

PREFIX_ENV = "EBPFW_OPENWRT_PREFIX"
SKIP_REASON = ("needs OpenWrt's ubusd/libubus, not packaged in Debian "
               f"(set {PREFIX_ENV} to an install prefix of a build from upstream)")


def prefix() -> Path | None:
    value = os.environ.get(PREFIX_ENV)
    if not value:
        return None
    path = Path(value)
    return path if (path / "sbin/ubusd").exists() and (path / "lib/libubus.so").exists() else None


requires_openwrt = pytest.mark.skipif(prefix() is None, reason=SKIP_REASON)


def tool(name: str) -> str:
    p = prefix()
    assert p is not None
    for sub in ("bin", "sbin"):
        if (p / sub / name).exists():
            return str(p / sub / name)
    raise FileNotFoundError(f"{name} is not in {p}")


def env() -> dict[str, str]:
    p = prefix()
    assert p is not None
    return dict(os.environ, LD_LIBRARY_PATH=str(p / "lib"))


def connectable(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


wait_for = Lab.wait_for


@contextlib.contextmanager
def ubusd(path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """ubusd on a socket of our own, stopped on exit."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    proc = subprocess.Popen([tool("ubusd"), "-s", str(path)], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: connectable(path), f"ubusd at {path}")
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def ubus(sock: Path | str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The `ubus` command line tool; `ubus call` exits with -status & 0xff on failure."""
    return subprocess.run([tool("ubus"), "-s", str(sock), *args], capture_output=True, text=True,
                          env=env(), timeout=timeout)


def status_of(result: subprocess.CompletedProcess[str]) -> int:
    """The ubus status a failed `ubus call` reported (its exit code is -status)."""
    return (256 - result.returncode) % 256


# -- a router session: ubusd, rpcd and uhttpd in a private mount namespace ------------------------

def router_sh() -> Path | None:
    """router.sh of the same build (next to the prefix): runs ubusd, rpcd and uhttpd with a
    private /etc/config, /usr/share/rpcd/acl.d and /var/run, touching nothing of the host."""
    p = prefix()
    script = p.parent / "router.sh" if p is not None else None
    return script if script is not None and script.exists() else None


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


class PortTaken(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Session:
    """router.sh running `sleep` until closed; run() executes commands in its mount namespace
    (its /var/run/ubus/ubus.sock, /etc/config), in the host's network namespace, so uhttpd is
    reachable from here on 127.0.0.1:http_port."""

    def __init__(self, config_dir: Path, acls: list[Path], www: Path) -> None:
        script = router_sh()
        assert script is not None
        # uhttpd on a port free a moment ago: another test's uhttpd may have taken it since,
        # and would then answer our requests. A token in our document root tells them apart.
        self.http_port = free_port()
        token = secrets.token_hex(8)
        www.mkdir(parents=True, exist_ok=True)
        (www / "token").write_text(token)
        cmd = [str(script), "-c", str(config_dir), "--no-netifd", "-p", str(self.http_port),
               "-w", str(www)]
        for acl in acls:
            cmd += ["--acl-add", str(acl)]
        self.proc = subprocess.Popen([*cmd, "--", "sh", "-c", "echo ready; exec sleep 1000000"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.close()
            raise RuntimeError(f"router.sh did not start: {err.strip()}")
        # router.sh -> unshare -> PID 1 of the session, which mounted its file system view
        unshare = children(self.proc.pid)
        pid1 = children(unshare[0]) if unshare else []
        assert len(pid1) == 1, f"cannot find the session's PID 1 under {self.proc.pid}"
        self.pid1 = pid1[0]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/token",
                                        timeout=10) as resp:
                ours = resp.read().decode() == token
        except OSError:
            ours = False
        if not ours:
            self.close()
            raise PortTaken(f"127.0.0.1:{self.http_port} is answered by another uhttpd")

    def wrap(self) -> list[str]:
        """The session's mount namespace, with a /proc of our own PID namespace (the session's
        /proc shows its own PIDs, so /proc/self would not be there)."""
        p = prefix()
        assert p is not None
        return ["nsenter", "-t", str(self.pid1), "-m", "--", "unshare", "-m", "--mount-proc",
                "--", "env", f"LD_LIBRARY_PATH={p / 'lib'}"]

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.wrap(), *cmd], capture_output=True, text=True,
                              timeout=timeout)

    def popen(self, *cmd: str, **kw: object) -> subprocess.Popen[str]:
        return subprocess.Popen([*self.wrap(), *cmd], text=True,
                                **kw)   # type: ignore[call-overload]

    def ubus(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run("ubus", *args, timeout=timeout)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
