"""Local real services: a private redis-server and a Kafka broker.

`nearline services up|down|status` and the pytest fixtures both use :class:`LocalServices`.
When NEARLINE_KAFKA_BOOTSTRAP / NEARLINE_REDIS_URL (or the config) name existing endpoints, the
corresponding local service is not started.

Brokers (see docs/design.md for measurements and quirks):
  kafka  Apache Kafka (pinned in nearline/ops/jars.py), single node in KRaft combined mode (broker +
         controller), from the Maven Central jars the setup fetched; data under <state_dir>/kafka-data,
         kept across down/up. The default everywhere: users run Apache Kafka.
  noida  noida-db==0.2.3, a light Kafka-protocol emulator (0.2 s start, 12 MB): the binary inside the
         package is started directly (its console script forks and would leave the broker running when
         killed). Loses data killed -9 within ~1 s of a write; kept for quick Kafka I/O checks.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nearline.config import Config
from nearline.ops.procs import ServiceError, bootstrap_open, free_port, log_tail, pid_alive, port_open, stop_pid


def broker_command(kind: str, port: int, data_dir: Path) -> list[str]:
    """Command line of a broker that needs no preparation (noida). Apache Kafka: see :class:`KafkaBroker`."""
    if kind == "noida":
        import noida_db  # pinned: noida-db==0.2.3

        binary = Path(noida_db.__file__).parent / "noida-db"
        data_dir.mkdir(parents=True, exist_ok=True)
        return [str(binary), "start", "--data-dir", str(data_dir), "--only", "kafka",
                "--host", "127.0.0.1", "--kafka-port", str(port)]
    raise ServiceError(f"unknown broker {kind!r} (kafka or noida)")


# JVM flags of every local Kafka-side process (broker, MirrorMaker 2): a small machine, quiet logs
JVM_FLAGS = ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
             "-Dorg.slf4j.simpleLogger.showDateTime=true"]


def kafka_java() -> tuple[str, str]:
    """(java executable, Kafka classpath), or a ServiceError naming what to install or fetch."""
    from nearline.ops import jars

    try:
        return jars.java_executable(), jars.kafka_classpath()
    except jars.JarsError as exc:
        raise ServiceError(str(exc)) from None


class KafkaBroker:
    """A single-node Apache Kafka in KRaft combined mode, its files under one folder.

    ``<root>/server.properties`` is written anew at every start (ports may change); ``<root>/data`` is
    formatted once with a cluster id kept in ``<root>/cluster.id``, so a restart keeps topics, records
    and committed offsets.
    """

    HEAP = "512m"

    # Credentials of the optional SASL listeners (services.kafka_secure_listeners): a local test broker's,
    # written to <root>/credentials.json for the clients; production brokers bring their own.
    SASL_USER, SASL_PASSWORD = "nearline", "nearline-secret"

    def __init__(self, root: Path, port: int, controller_port: int, extra_props: dict[str, str] | None = None,
                 sasl_port: int | None = None, sasl_ssl_port: int | None = None):
        self.root, self.port, self.controller_port = Path(root), port, controller_port
        self.data = self.root / "data"
        self.extra_props = extra_props or {}
        self.sasl_port, self.sasl_ssl_port = sasl_port, sasl_ssl_port
        self.tls_dir = self.root / "tls"

    def _secure_props(self) -> dict[str, str]:
        """SASL_PLAINTEXT and SASL_SSL listeners, each with PLAIN and SCRAM-SHA-256 (inter-broker and
        controller traffic stays PLAINTEXT on loopback)."""
        listeners, proto = [], []
        props: dict[str, str] = {"sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256"}
        plain = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
                 f'username="{self.SASL_USER}" password="{self.SASL_PASSWORD}" '
                 f'user_{self.SASL_USER}="{self.SASL_PASSWORD}";')
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        for name, port in (("SASL_PLAINTEXT", self.sasl_port), ("SASL_SSL", self.sasl_ssl_port)):
            if not port:
                continue
            listeners.append(f"{name}://127.0.0.1:{port}")
            proto.append(f"{name}:{name}")
            low = name.lower()
            props[f"listener.name.{low}.plain.sasl.jaas.config"] = plain
            props[f"listener.name.{low}.scram-sha-256.sasl.jaas.config"] = scram
        if self.sasl_ssl_port:
            props.update({"ssl.keystore.type": "PEM", "ssl.keystore.location": str(self.tls_dir / "broker.pem"),
                          "ssl.client.auth": "none"})
        return {"_listeners": ",".join(listeners), "_proto": ",".join(proto), **props}

    def ensure_tls(self) -> Path:
        """A self-signed certificate for 127.0.0.1/localhost (openssl); returns the CA file clients trust."""
        self.tls_dir.mkdir(parents=True, exist_ok=True)
        key, cert = self.tls_dir / "key.pem", self.tls_dir / "ca.pem"
        if not cert.exists():
            res = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                                  "-out", str(cert), "-days", "3650", "-subj", "/CN=localhost",
                                  "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                                 capture_output=True, text=True)
            if res.returncode != 0:
                raise ServiceError(f"openssl could not make the local broker's certificate: {res.stderr.strip()[-200:]}")
            (self.tls_dir / "broker.pem").write_text(key.read_text() + cert.read_text())
        return cert

    def properties(self) -> dict[str, str]:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data),
            # one node: every internal topic has one replica
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",  # the default 50 costs seconds at the first group join
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "min.insync.replicas": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.partitions": "4",
        }
        if self.sasl_port or self.sasl_ssl_port:
            sec = self._secure_props()
            props["listeners"] += "," + sec.pop("_listeners")
            props["advertised.listeners"] += "," + ",".join(
                ln for ln in props["listeners"].split(",") if ln.startswith("SASL_"))
            props["listener.security.protocol.map"] += "," + sec.pop("_proto")
            props.update(sec)
        props.update(self.extra_props)
        return props

    def prepare(self, java: str, classpath: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.sasl_ssl_port:
            self.ensure_tls()
        conf = self.root / "server.properties"
        conf.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        if (self.data / "meta.properties").exists():
            return
        id_file = self.root / "cluster.id"
        if not id_file.exists():
            res = subprocess.run([java, "-cp", classpath, "kafka.tools.StorageTool", "random-uuid"],
                                 capture_output=True, text=True, timeout=60)
            if res.returncode != 0:
                raise ServiceError(f"kafka StorageTool random-uuid failed: {res.stderr.strip()[-300:]}")
            id_file.write_text(res.stdout.strip().splitlines()[-1])
        scram = (["--add-scram", f"SCRAM-SHA-256=[name={self.SASL_USER},password={self.SASL_PASSWORD}]"]
                 if (self.sasl_port or self.sasl_ssl_port) else [])
        res = subprocess.run([java, "-cp", classpath, "kafka.tools.StorageTool", "format", "-t",
                              id_file.read_text().strip(), "-c", str(conf), *scram],
                             capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise ServiceError(f"formatting the Kafka log dir {self.data} failed: {(res.stdout + res.stderr).strip()[-300:]}")

    def command(self, java: str, classpath: str) -> list[str]:
        # Serial GC and a capped heap: a test broker on a 2-core machine; -Dlog4j2 keeps its own
        # logging quiet (slf4j-simple writes Kafka's log to the broker.log we capture).
        return [java, f"-Xmx{self.HEAP}", "-Xms64m", *JVM_FLAGS, "-Djava.awt.headless=true",
                "-cp", classpath, "kafka.Kafka", str(self.root / "server.properties")]


def metadata_ok(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True when the (local, plaintext) broker answers a metadata request."""
    from nearline.io.kafka_io import list_topics

    try:
        list_topics(bootstrap, timeout_s, secure=False)
        return True
    except Exception:
        return False


@dataclass
class ServicesState:
    kafka_bootstrap: str = ""
    redis_url: str = ""
    broker: str = ""
    kafka_pid: int | None = None
    redis_pid: int | None = None
    started: list[str] = field(default_factory=list)
    # with services.kafka_secure_listeners: the SASL listeners of the local Apache Kafka and their credentials
    kafka_sasl_bootstrap: str = ""
    kafka_sasl_ssl_bootstrap: str = ""
    kafka_ca_file: str = ""
    kafka_sasl_user: str = ""
    kafka_sasl_password: str = ""
    # with services.schema_registry: the local Apicurio Registry (Confluent API)
    schema_registry_url: str = ""
    schema_registry_pid: int | None = None

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
                [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *_redis_persistence(self.cfg.services.redis_appendfsync),
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
                stop_pid(old.kafka_pid)
            port = self.cfg.services.kafka_port or free_port()
            if port_open("127.0.0.1", port):
                raise ServiceError(f"port {port} is taken by another process; set services.kafka_port (0 = any free port)")
            bootstrap = f"127.0.0.1:{port}"
            self._mk()
            if st.broker == "kafka":
                from nearline.ops import jars

                java, cp = kafka_java()
                cport = self.cfg.services.kafka_controller_port or free_port()
                if port_open("127.0.0.1", cport):
                    raise ServiceError(f"port {cport} is taken by another process; set services.kafka_controller_port (0 = any free port)")
                secure = self.cfg.services.kafka_secure_listeners
                sasl_port, ssl_port = (free_port(), free_port()) if secure else (None, None)
                broker = KafkaBroker(self.state_dir / "kafka", port, cport, sasl_port=sasl_port, sasl_ssl_port=ssl_port)
                broker.prepare(java, cp)
                if secure:
                    st.kafka_sasl_bootstrap = f"127.0.0.1:{sasl_port}"
                    st.kafka_sasl_ssl_bootstrap = f"127.0.0.1:{ssl_port}"
                    st.kafka_ca_file = str(broker.tls_dir / "ca.pem")
                    st.kafka_sasl_user, st.kafka_sasl_password = KafkaBroker.SASL_USER, KafkaBroker.SASL_PASSWORD
                cmd = broker.command(java, cp)
                ready, what = (lambda: metadata_ok(bootstrap)), f"Apache Kafka {jars.KAFKA_VERSION}"
            else:
                cmd = broker_command(st.broker, port, self.state_dir / "broker-data")
                ready, what = (lambda: port_open("127.0.0.1", port)), f"{st.broker} broker"
            log_path = self.state_dir / "broker.log"
            with open(log_path, "ab") as logf:
                proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
            st.kafka_pid, st.kafka_bootstrap = proc.pid, bootstrap
            st.started.append("kafka")
            self._write_state(st)
            self._wait(ready, timeout, what, proc, log_path)

        if self.cfg.services.schema_registry and not self.cfg.kafka.schema_registry_url:
            if old.schema_registry_pid and pid_alive(old.schema_registry_pid) and old.schema_registry_url:
                st.schema_registry_url, st.schema_registry_pid = old.schema_registry_url, old.schema_registry_pid
            else:
                from nearline.ops.schema_registry_server import SchemaRegistryServer

                self._mk()
                srv = SchemaRegistryServer(self.state_dir, self.cfg.services.schema_registry_port)
                if port_open("127.0.0.1", srv.port):
                    raise ServiceError(f"port {srv.port} is taken by another process; set services.schema_registry_port "
                                       f"(0 = any free port)")
                srv.start(timeout_s=max(timeout, 120.0))  # Quarkus + H2: ~10 s beside a starting broker
                st.schema_registry_url, st.schema_registry_pid = srv.url, srv.proc.pid
            st.started.append("schema-registry")

        self._write_state(st)
        if not create_topics:
            return st
        from nearline.io.embedding_messages import ensure_embedding_topic
        from nearline.io.kafka_io import ensure_topics

        ensure_embedding_topic(st.kafka_bootstrap, self.cfg)  # log-compacted: first, before the generic create
        ensure_topics(st.kafka_bootstrap, self.cfg.all_topics(), self.cfg.topics.partitions,
                      self.cfg.topics.replication_factor, timeout_s=timeout)
        return st

    def down(self) -> list[str]:
        st = self.read_state()
        stopped = []
        if st:
            for name, pid in (("schema-registry", st.schema_registry_pid), ("kafka", st.kafka_pid), ("redis", st.redis_pid)):
                if pid and pid_alive(pid):
                    # Kafka's controlled shutdown flushes logs and writes a clean-shutdown marker: let it
                    stop_pid(pid, grace_s={"kafka": 30.0, "schema-registry": 10.0}.get(name, 5.0))
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
                if st.kafka_sasl_bootstrap:
                    out.update(kafka_sasl_bootstrap=st.kafka_sasl_bootstrap, kafka_sasl_ssl_bootstrap=st.kafka_sasl_ssl_bootstrap,
                               kafka_ca_file=st.kafka_ca_file, kafka_sasl_user=st.kafka_sasl_user,
                               kafka_sasl_password=st.kafka_sasl_password)
            if not self.cfg.redis.url:
                out.update(redis_url=st.redis_url,
                           redis_pid=st.redis_pid if st.redis_pid and pid_alive(st.redis_pid) else None)
        out["kafka_up"] = bool(out["kafka_bootstrap"]) and bootstrap_open(out["kafka_bootstrap"])
        out["redis_up"] = bool(out["redis_url"]) and self._redis_ok(out["redis_url"])
        if self.cfg.kafka.schema_registry_url or self.cfg.services.schema_registry or (st and st.schema_registry_url):
            url = self.cfg.kafka.schema_registry_url or (st.schema_registry_url if st else "")
            out["schema_registry_url"] = url
            from nearline.ops.schema_registry_server import answers_at

            out["schema_registry_up"] = bool(url) and answers_at(url)
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
    def _wait(check, timeout: float, what: str, proc: subprocess.Popen, log_path: Path | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            if proc.poll() is not None:
                raise ServiceError(f"{what} exited with code {proc.returncode} while starting ({log_path or 'see its log'}): {log_tail(log_path)}")
            time.sleep(0.05)
        raise ServiceError(f"{what} did not answer within {timeout:.0f}s ({log_path or 'see its log'}): {log_tail(log_path)}")


def _redis_persistence(appendfsync: str) -> list[str]:
    """redis-server flags: an append-only file fsynced as configured ('always': a SIGKILL loses no
    acknowledged write, so the job's commit-after-write guarantee survives a Redis crash; Redis fsyncs
    once per event-loop round, so pipelined batches pay one fsync), or no persistence at all ('off')."""
    if appendfsync == "off":
        return ["--appendonly", "no"]
    return ["--appendonly", "yes", "--appendfsync", appendfsync]


def resolve_endpoints(cfg: Config) -> tuple[str, str]:
    """(kafka_bootstrap, redis_url): config/env first, else the running local services. With
    ``services.schema_registry`` and no ``kafka.schema_registry_url``, also sets that field to the local
    registry's URL (every codec made from ``cfg`` afterwards uses it)."""
    kafka, redis_url = cfg.kafka.bootstrap, cfg.redis.url
    st = None
    if not kafka or not redis_url:
        st = LocalServices(cfg).read_state()
        if st is None:
            raise ServiceError("no Kafka/Redis endpoints: run `nearline services up` or set "
                               "NEARLINE_KAFKA_BOOTSTRAP and NEARLINE_REDIS_URL")
        kafka, redis_url = kafka or st.kafka_bootstrap, redis_url or st.redis_url
    if cfg.services.schema_registry and not cfg.kafka.schema_registry_url:
        st = st or LocalServices(cfg).read_state()
        if st is None or not st.schema_registry_url:
            raise ServiceError("services.schema_registry is on but no local schema registry runs: run "
                               "`nearline services up` (or set kafka.schema_registry_url)")
        cfg.kafka.schema_registry_url = st.schema_registry_url
    return kafka, redis_url
