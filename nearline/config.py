"""Typed configuration, loaded from one YAML file (``nearline.yaml``) with environment overrides.

Declarative config (what entities, topics, services and policies exist) is kept apart from the code
that executes it. Every field is documented here and in ``nearline.yaml``. Unknown keys are errors,
so a typo never silently falls back to a default.

Environment overrides (they win over the file):
  NEARLINE_KAFKA_BOOTSTRAP  e.g. ``broker1:9092,broker2:9092``: use this cluster, start no local broker
  NEARLINE_REDIS_URL        e.g. ``redis://cache:6379/0``: use this Redis, start no local redis-server
  NEARLINE_CONFIG           path of the config file (default: ./nearline.yaml, else the repo's)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from nearline import REPO_ROOT


class ConfigError(ValueError):
    pass


@dataclass
class TopicsConfig:
    entity_updates: str = "entity-updates"
    """Input topic of EntityUpdate events, keyed '<type>:<id>'."""
    standardized_prefix: str = "standardized."
    """Each standardizer writes StandardizedFeatures to '<prefix><processor>'."""
    embeddings: str = "entity-embeddings"
    """Output topic of EntityEmbeddings, keyed '<type>:<id>'."""
    dead_letter: str = "dead-letter"
    """DeadLetter records from every stage."""
    feature_snapshot: str = "feature-snapshot"
    """Log-compacted FeatureSnapshot topic, keyed '<type>:<id>': each live entity's latest joined features
    (what the towers read), written by the job before it commits; `nearline backfill` scans it. Created
    with cleanup.policy=compact (nearline/snapshot.py); deletes are null tombstones. Empty: no snapshot
    (saves ~100 us of Avro encoding and producing per joined entity; `nearline backfill` then has nothing to read)."""
    partitions: int = 4
    """Partitions of every topic. All input topics MUST have the same count and keying: the job joins
    partition p of every input topic together (co-partitioning, as in Kafka Streams)."""
    replication_factor: int = 1
    """Replication factor used when this service creates the topics."""


@dataclass
class KafkaConfig:
    bootstrap: str = ""
    """host:port[,host:port]. Empty: use the local broker that `nearline services up` started."""
    consumer_group: str = "nearline-embeddings"
    """Consumer group of the nearline job (its committed offsets are the job's checkpoint)."""
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    producer_linger_ms: int = 5
    """Producer batching delay; the job flushes before it commits anyway."""


@dataclass
class RedisConfig:
    url: str = ""
    """redis://host:port/db. Empty: use the local redis-server that `nearline services up` started."""
    key_prefix: str = "emb"
    """Embeddings of an entity live in the hash '<prefix>:<type>:<id>', one field per model version."""


@dataclass
class ServicesConfig:
    state_dir: str = ".nearline"
    """Where `nearline services` keeps PIDs, logs and broker data (relative to the working directory)."""
    broker: str = "kafka"
    """Local broker: 'kafka' (Apache Kafka, KRaft single node, jars fetched by the setup from Maven
    Central) or 'noida' (noida-db 0.2.3, a light Kafka-protocol emulator from PyPI)."""
    kafka_port: int = 19092
    """Port of the local broker; 0 picks a free one."""
    kafka_controller_port: int = 0
    """KRaft controller port of the local Apache Kafka; 0 picks a free one at every start."""
    redis_port: int = 16379
    """Port of the local redis-server; 0 picks a free one."""
    start_timeout_s: float = 60.0
    """How long `services up` waits for each service to answer (Apache Kafka takes 4-15 s on 2 cores)."""


@dataclass
class JoinConfig:
    timeout_s: float = 30.0
    """How long an entity update may wait for all its standardizers before the timeout policy applies."""
    timeout_policy: str = "partial"
    """'partial': score with the manifests' declared defaults for missing features and flag the
    embedding partial; 'dead_letter': send the incomplete update to the dead-letter topic."""
    replay_timeout_s: float = 10.0
    """Timeout of a join made only of messages a previous run had read (after a restart). Such a join
    may be a version already processed whose other messages were committed; it is released if Redis has
    that version, else dead-lettered, and never scored with defaults."""
    max_pending: int = 200_000
    """Upper bound on pending joins per job; beyond it the oldest are timed out early (state stays bounded)."""


@dataclass
class DedupeConfig:
    tolerance: float = 0.0
    """0: an embedding is unchanged only if bitwise equal to the stored one. >0: unchanged if the max
    absolute difference per dimension is at most this."""


@dataclass
class JobConfig:
    runner: str = "FnApiRunner"
    """Beam runner. The local default is Python's FnApiRunner in streaming mode."""
    io: str = "kafka-python"
    """'kafka-python': the in-process unbounded Kafka reader (works offline, any runner).
    'beam-kafkaio': Beam's cross-language ReadFromKafka/WriteToKafka for Flink/Dataflow deployments
    (needs a Java expansion service; not available offline)."""
    max_poll_records: int = 1000
    """Records one poll of one partition group may return; one poll becomes one batch through the graph."""
    poll_timeout_ms: int = 60
    """How long an idle round of polls over all partition groups waits (split evenly between them); also
    the period of the join's timeout check when idle. Lower: less latency, more idle CPU."""
    drain_budget_ms: float = 30.0
    """Under load, a batch keeps taking already-fetched records for up to this long (bigger batches,
    fewer per-batch costs); it never waits for new records beyond poll_timeout_ms."""
    ort_threads: int = 1
    """onnxruntime intra-op threads per session (one beats two on small machines)."""
    registry_poll_s: float = 2.0
    """How often the job re-reads models/registry.yaml for newly registered versions."""
    backfill_on_register: bool = True
    """When the job starts scoring a newly registered version, it launches `nearline backfill --models
    <version>` (a child process, log in <state_dir>/backfill/) so every live entity gets it, not only the
    ones updated afterwards; unfinished backfills are relaunched at start-up (nearline/model_lifecycle.py)."""
    metrics_port: int = 9464
    """Prometheus text endpoint on 127.0.0.1:<port>/metrics; 0 disables it."""
    log_every_s: float = 10.0
    """Period of the counters log line."""


@dataclass
class ProcessorConfig:
    delay_ms: float = 0.0
    """Fixed delay before a processor publishes a result (exercises the downstream join)."""
    jitter_ms: float = 0.0
    """Uniform random extra delay in [0, jitter_ms], so results arrive out of order across processors."""


@dataclass
class StandardizersConfig:
    processors: list[str] = field(default_factory=lambda: ["title", "skills", "company", "geo"])
    """Processors that exist. Which ones an entity type needs follows from its registered manifests."""
    taxonomy_dir: str = "data/marketplace"
    """Directory with taxonomies.json written by `nearline marketplace generate`."""
    delays: dict[str, ProcessorConfig] = field(default_factory=dict)
    """Per-processor delay/jitter, e.g. {skills: {delay_ms: 50, jitter_ms: 200}}."""


@dataclass
class ModelsConfig:
    registry: str = "models/registry.yaml"
    """The registry: one line per registered model version (path of its package folder)."""


@dataclass
class Config:
    entity_types: list[str] = field(default_factory=lambda: ["member", "job"])
    """Entity types the service knows; events of any other type are dead-lettered."""
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    services: ServicesConfig = field(default_factory=ServicesConfig)
    join: JoinConfig = field(default_factory=JoinConfig)
    dedupe: DedupeConfig = field(default_factory=DedupeConfig)
    job: JobConfig = field(default_factory=JobConfig)
    standardizers: StandardizersConfig = field(default_factory=StandardizersConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    base_dir: str = "."
    """Directory that relative paths (registry, taxonomy_dir, state_dir) are resolved against;
    set to the config file's directory when loaded from a file."""

    # ---- derived names -------------------------------------------------------------------
    def standardized_topic(self, processor: str) -> str:
        return f"{self.topics.standardized_prefix}{processor}"

    def input_topics(self) -> list[str]:
        return [self.topics.entity_updates] + [self.standardized_topic(p) for p in self.standardizers.processors]

    def all_topics(self) -> list[str]:
        return self.input_topics() + [self.topics.embeddings, self.topics.dead_letter]

    def path(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else Path(self.base_dir) / q

    def validate(self) -> "Config":
        if self.join.timeout_policy not in ("partial", "dead_letter"):
            raise ConfigError(f"join.timeout_policy must be 'partial' or 'dead_letter', not {self.join.timeout_policy!r}")
        if self.services.broker not in ("kafka", "noida"):
            raise ConfigError(f"services.broker must be 'kafka' or 'noida', not {self.services.broker!r}")
        if self.job.io not in ("kafka-python", "beam-kafkaio"):
            raise ConfigError(f"job.io must be 'kafka-python' or 'beam-kafkaio', not {self.job.io!r}")
        if self.topics.partitions < 1:
            raise ConfigError("topics.partitions must be >= 1")
        if self.dedupe.tolerance < 0:
            raise ConfigError("dedupe.tolerance must be >= 0")
        return self


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value or {}, where)
    origin = get_origin(tp)
    if origin is list:
        (item,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list")
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, vt = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping")
        return {k: _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def default_config_path() -> Path:
    env = os.environ.get("NEARLINE_CONFIG")
    if env:
        return Path(env)
    local = Path("nearline.yaml")
    return local if local.exists() else REPO_ROOT / "nearline.yaml"


def load_config(path: str | Path | None = None, *, env: dict | None = None) -> Config:
    env = os.environ if env is None else env
    path = Path(path) if path else default_config_path()
    data = yaml.safe_load(path.read_text()) or {} if path.exists() else {}
    if path.exists():
        data.setdefault("base_dir", str(path.resolve().parent))
    cfg = _build(Config, data, path.name)
    if env.get("NEARLINE_KAFKA_BOOTSTRAP"):
        cfg.kafka.bootstrap = env["NEARLINE_KAFKA_BOOTSTRAP"]
    if env.get("NEARLINE_REDIS_URL"):
        cfg.redis.url = env["NEARLINE_REDIS_URL"]
    return cfg.validate()
