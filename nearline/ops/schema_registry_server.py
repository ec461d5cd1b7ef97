"""A local schema registry for tests and local runs: Apicurio Registry, built by ``python -m nearline.ops.jars fetch``.

It serves the Confluent Schema Registry REST API under ``/apis/ccompat/v7`` (what
``kafka.schema_registry_url`` points at), keeps its schemas in memory (H2) and loses them when stopped.
Start-up takes ~10 s on this project's 2-core machines (Quarkus + H2 schema creation); see docs/design.md.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from pathlib import Path

from nearline.ops.procs import ServiceError, free_port
from nearline.ops.procs import log_tail as log_tail
from nearline.ops.procs import stop_pid as stop_pid

CCOMPAT_PATH = "/apis/ccompat/v7"


def answers_at(url: str) -> bool:
    """Whether a Confluent-compatible registry answers at ``url`` (its subject list, within 1 s)."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/subjects", timeout=1) as resp:
            return resp.status == 200
    except (OSError, ValueError):
        return False


class SchemaRegistryServer:
    """One Apicurio Registry process on a free port; ``url`` is its Confluent-compatible API."""

    HEAP = "256m"

    def __init__(self, log_dir: Path, port: int = 0):
        self.port = port or free_port()
        self.log_path = Path(log_dir) / "schema-registry.log"
        self.proc: subprocess.Popen | None = None
        self.started_in_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    def command(self) -> list[str]:
        from nearline.ops import jars

        try:
            java, jar = jars.java_executable(), jars.schema_registry_jar()
        except jars.JarsError as exc:
            raise ServiceError(str(exc)) from None
        # management/metrics on their own port would need a second free port: keep them off
        return [java, f"-Xmx{self.HEAP}", "-Xms64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                f"-Dquarkus.http.port={self.port}", "-Dquarkus.http.host=127.0.0.1",
                "-Dquarkus.log.level=WARN", "-Dquarkus.http.access-log.enabled=false", "-jar", str(jar)]

    def answers(self) -> bool:
        return answers_at(self.url)

    def start(self, timeout_s: float = 120.0) -> "SchemaRegistryServer":
        cmd = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        while not self.answers():
            if self.proc.poll() is not None:
                raise ServiceError(f"schema registry exited with code {self.proc.returncode} while starting "
                                   f"({self.log_path}): {log_tail(self.log_path)}")
            if time.monotonic() - t0 > timeout_s:
                self.stop()
                raise ServiceError(f"schema registry did not answer {self.url}/subjects within {timeout_s:.0f}s "
                                   f"({self.log_path}): {log_tail(self.log_path)}")
            time.sleep(0.2)
        self.started_in_s = time.monotonic() - t0
        return self

    def rss_mb(self) -> float | None:
        """Resident memory of the JVM (Linux /proc), for the docs' figures."""
        if self.proc is None:
            return None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_pid(self.proc.pid, grace_s=10.0)  # SIGTERM: Quarkus shuts down cleanly
        self.proc = None

    def __enter__(self) -> "SchemaRegistryServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> int:  # pragma: no cover - a manual check: python -m nearline.ops.schema_registry_server
    srv = SchemaRegistryServer(Path(os.environ.get("TMPDIR", "/tmp")))
    try:
        srv.start()
    except ServiceError as exc:
        print(f"error: {exc}")
        return 1
    print(f"schema registry at {srv.url}: up in {srv.started_in_s:.1f}s, RSS {srv.rss_mb():.0f} MB")
    srv.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
