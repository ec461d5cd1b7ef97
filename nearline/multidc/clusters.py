"""Several data centers on one machine: a Kafka cluster and a Redis per DC, MirrorMaker 2 between them.

The production topology (docs/design.md "Multi-data-center"): every DC has its own Kafka cluster, Redis,
standardizers and nearline job. Apache Kafka's MirrorMaker 2 mirrors each DC's ``entity-updates`` topic
into every other DC as ``<source-dc>.entity-updates`` (its DefaultReplicationPolicy). Each DC's
standardizers and job read the local topic and the mirrors (``Config.update_topics``), so every DC
computes every entity's embeddings into its own Redis and embedding topic, whatever DC the update was
produced in. Only the raw updates cross DCs: the standardized features and embeddings are recomputed
locally, so one DC's broken standardizer or job never poisons another DC.

``nearline services up --dcs N`` starts dc1..dcN (each a :class:`LocalServices` in ``<state_dir>/<dc>``)
and one MirrorMaker 2 process in dedicated mode (``<state_dir>/mirrormaker``) replicating every ordered
pair. ``down --dcs N`` stops them all.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from pathlib import Path

import yaml

from nearline.config import Config, DataCentersConfig, ServicesConfig
from nearline.ops.procs import ServiceError, pid_alive
from nearline.ops.procs import log_tail as log_tail
from nearline.ops.procs import stop_pid as stop_pid
from nearline.ops.services import JVM_FLAGS, LocalServices, kafka_java


def dc_names(n: int) -> list[str]:
    return [f"dc{i}" for i in range(1, n + 1)]


class MirrorMaker:
    """MirrorMaker 2 in dedicated mode (``org.apache.kafka.connect.mirror.MirrorMaker``) for all DC pairs."""

    HEAP = "384m"

    def __init__(self, root: Path, clusters: dict[str, str], topics: list[str]):
        self.root, self.clusters, self.topics = Path(root), clusters, topics

    def properties(self) -> dict[str, str]:
        names = list(self.clusters)
        props = {"clusters": ", ".join(names)}
        for name, bootstrap in self.clusters.items():
            props[f"{name}.bootstrap.servers"] = bootstrap
            # cross-DC staleness: the Java consumer's default fetch wait (500 ms) would sit on records
            props[f"{name}.consumer.fetch.max.wait.ms"] = "50"
            props[f"{name}.producer.linger.ms"] = "5"
        for src in names:
            for dst in names:
                if src != dst:
                    props[f"{src}->{dst}.enabled"] = "true"
                    # only the local topic: '<peer>.entity-updates' never matches, so nothing loops back
                    props[f"{src}->{dst}.topics"] = "|".join(self.topics)
        props.update({
            # one broker per DC locally; production keeps the defaults (3)
            "replication.factor": "1",
            "checkpoints.topic.replication.factor": "1",
            "heartbeats.topic.replication.factor": "1",
            "offset-syncs.topic.replication.factor": "1",
            "offset.storage.replication.factor": "1",
            "status.storage.replication.factor": "1",
            "config.storage.replication.factor": "1",
            "sync.topic.acls.enabled": "false",
            "sync.topic.configs.enabled": "false",  # the mirrors are created by `services up` with our settings
            "plugin.discovery": "service_load",  # skips scanning 94 jars for plugins (seconds of start-up)
            "refresh.topics.interval.seconds": "5",
            "tasks.max": "2",
        })
        return props

    def write(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "mm2.properties"
        conf.write_text("".join(f"{k} = {v}\n" for k, v in self.properties().items()))
        return conf

    def command(self, java: str, classpath: str) -> list[str]:
        return [java, f"-Xmx{self.HEAP}", *JVM_FLAGS, "-cp", classpath, "org.apache.kafka.connect.mirror.MirrorMaker", str(self.write())]


def _internal_topics_ready(bootstrap: str, peers: list[str]) -> bool:
    """MirrorMaker 2 creates 'mm2-status.<source>.internal' on a target cluster once its herder for that
    flow is up: seeing it on every target means every flow is running."""
    from nearline.io.kafka_io import list_topics

    try:
        topics = list_topics(bootstrap, 2.0, secure=False)
    except Exception:
        return False
    return all(f"mm2-status.{p}.internal" in topics for p in peers)


class MultiDCServices:
    """dc1..dcN on this machine, plus one MirrorMaker 2; state in ``<state_dir>/multidc.json``."""

    def __init__(self, cfg: Config, n: int, state_dir: Path | None = None):
        if n < 2:
            raise ServiceError("--dcs needs at least 2 data centers")
        self.cfg, self.n = cfg, n
        self.state_dir = Path(state_dir) if state_dir else cfg.path(cfg.services.state_dir)
        self.names = dc_names(n)
        self.state_file = self.state_dir / "multidc.json"

    def _dc_services(self, name: str) -> LocalServices:
        c = copy.deepcopy(self.cfg)
        c.kafka.bootstrap, c.redis.url = "", ""
        c.services = ServicesConfig(broker="kafka", kafka_port=0, redis_port=0,
                                    start_timeout_s=self.cfg.services.start_timeout_s)
        return LocalServices(c, self.state_dir / name)

    def dc_config(self, name: str, endpoints: dict) -> Config:
        """The Config a DC's standardizers and job run with."""
        c = copy.deepcopy(self.cfg)
        c.kafka.bootstrap = endpoints[name]["kafka_bootstrap"]
        c.redis.url = endpoints[name]["redis_url"]
        c.datacenters = DataCentersConfig(local=name, peers=[p for p in self.names if p != name])
        return c

    def up(self) -> dict:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(self.names)) as pool:  # the DCs' brokers start side by side
            states = dict(zip(self.names, pool.map(lambda n: self._dc_services(n).up(create_topics=False), self.names)))
        endpoints = {name: {"kafka_bootstrap": st.kafka_bootstrap, "redis_url": st.redis_url,
                            "kafka_pid": st.kafka_pid, "redis_pid": st.redis_pid} for name, st in states.items()}
        from nearline.io.embedding_messages import ensure_embedding_topic
        from nearline.io.kafka_io import ensure_topics

        for name in self.names:  # the mirrors too, so that readers can subscribe before the first record
            # each DC's embedding topic is its own (only entity updates are mirrored), log-compacted
            ensure_embedding_topic(endpoints[name]["kafka_bootstrap"], self.cfg)
            ensure_topics(endpoints[name]["kafka_bootstrap"], self.dc_config(name, endpoints).all_topics(),
                          self.cfg.topics.partitions, self.cfg.topics.replication_factor)
        old = self.read_state() or {}
        mm_pid = old.get("mirrormaker_pid")
        same = old.get("dcs") == {k: v["kafka_bootstrap"] for k, v in endpoints.items()}
        if not (mm_pid and pid_alive(mm_pid) and same):
            if mm_pid and pid_alive(mm_pid):
                stop_pid(mm_pid, grace_s=15)
            mm_pid = self._start_mirrormaker(endpoints)
        state = {"dcs": {k: v["kafka_bootstrap"] for k, v in endpoints.items()}, "endpoints": endpoints,
                 "mirrormaker_pid": mm_pid}
        self.state_file.write_text(json.dumps(state, indent=2))
        return state

    def _start_mirrormaker(self, endpoints: dict) -> int:
        java, cp = kafka_java()
        mm = MirrorMaker(self.state_dir / "mirrormaker", {k: v["kafka_bootstrap"] for k, v in endpoints.items()},
                         [self.cfg.topics.entity_updates])
        log_path = self.state_dir / "mirrormaker" / "mirrormaker.log"
        cmd = mm.command(java, cp)
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + max(60.0, self.cfg.services.start_timeout_s)
        while not all(_internal_topics_ready(endpoints[n]["kafka_bootstrap"], [p for p in self.names if p != n])
                      for n in self.names):
            if proc.poll() is not None:
                raise ServiceError(f"MirrorMaker 2 exited with code {proc.returncode} while starting ({log_path}): "
                                   f"{log_tail(log_path)}")
            if time.monotonic() > deadline:
                stop_pid(proc.pid)
                raise ServiceError(f"MirrorMaker 2 did not start its flows in time ({log_path}): {log_tail(log_path)}")
            time.sleep(0.5)
        return proc.pid

    def read_state(self) -> dict | None:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else None

    def down(self) -> list[str]:
        stopped = []
        st = self.read_state() or {}
        pid = st.get("mirrormaker_pid")
        if pid and pid_alive(pid):
            stop_pid(pid, grace_s=15)
            stopped.append("mirrormaker")
        for name in self.names:
            stopped += [f"{name}:{s}" for s in self._dc_services(name).down()]
        self.state_file.unlink(missing_ok=True)
        return stopped

    def status(self) -> dict:
        out = {name: self._dc_services(name).status() for name in self.names}
        st = self.read_state() or {}
        pid = st.get("mirrormaker_pid")
        out["mirrormaker"] = {"pid": pid if pid and pid_alive(pid) else None}
        return out

    def write_dc_configs(self, endpoints: dict, out_dir: Path, base: dict | None = None) -> dict[str, Path]:
        """One nearline.yaml per DC (endpoints, datacenters, its own metrics port and state dir)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {}
        for i, name in enumerate(self.names):
            conf = copy.deepcopy(base or {})
            conf.setdefault("kafka", {})["bootstrap"] = endpoints[name]["kafka_bootstrap"]
            conf.setdefault("redis", {})["url"] = endpoints[name]["redis_url"]
            conf["datacenters"] = {"local": name, "peers": [p for p in self.names if p != name]}
            job = conf.setdefault("job", {})
            if job.get("metrics_port", self.cfg.job.metrics_port):
                job["metrics_port"] = (job.get("metrics_port") or self.cfg.job.metrics_port) + i
            conf.setdefault("services", {})["state_dir"] = str(self.state_dir / name)
            path = out_dir / f"{name}.yaml"
            path.write_text(yaml.safe_dump(conf))
            paths[name] = path
        return paths
