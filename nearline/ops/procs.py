"""Helpers for local service processes: free ports, liveness, stopping a pid, log tails.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


class ServiceError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); treat it as dead
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return True


def log_tail(path: Path | None) -> str:
    """The most telling line of a service's log: the last error, else the last line."""
    if path is None or not path.exists():
        return ""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()[-200:] if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or "Exception" in ln or "rror:" in ln]
    return (errors or lines or [""])[-1][-300:]


def bootstrap_open(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return port_open(host or "127.0.0.1", int(port))


def stop_pid(pid: int, grace_s: float = 5.0) -> None:
    """SIGTERM the process group, wait, then SIGKILL: nothing is left behind."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)  # reap if it is our child
            except ChildProcessError:
                pass
            if not pid_alive(pid):
                try:
                    os.waitpid(pid, os.WNOHANG)  # reap the zombie of our own child, if it is one
                except ChildProcessError:
                    pass
                return
            time.sleep(0.05)
