"""Typed configuration, loaded from one YAML file (``nearline.yaml``) with environment overrides.

Declarative config (what entities, topics, services and policies exist) is kept apart from the code
that executes it. Every field is documented here and in ``nearline.yaml``. Unknown keys are errors,
so a typo never silently falls back to a default.

Environment overrides (they win over the file):
  NEARLINE_KAFKA_BOOTSTRAP  e.g. ``broker1:9092,broker2:9092``: use this cluster, start no local broker
  NEARLINE_REDIS_URL        e.g. ``redis://cache:6379/0``: use this Redis, start no local redis-server
  NEARLINE_CONFIG           path of the config file (default: ./nearline.yaml, else the repo's)
  NEARLINE_KAFKA_SASL_PASSWORD  the SASL password (kafka.sasl_password), kept out of config files
  NEARLINE_SCHEMA_REGISTRY_PASSWORD  the registry's basic-auth password (kafka.schema_registry_password)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from nearline import DATA_ROOT


class ConfigError(ValueError):
    pass


@dataclass
class TopicsConfig:
    entity_updates: str = "entity-updates"
    """Input topic of EntityUpdate events, keyed '<type>:<id>'."""
    standardized_prefix: str = "standardized."
    """Each standardizer writes StandardizedFeatures to '<prefix><processor>'."""
    embeddings: str = "entity-embeddings"
    """Output topic of EntityEmbeddings, keyed '<type>:<id>'. Log-compacted (created with
    cleanup.policy=compact, nearline/io/embedding_messages.py): each message is the entity's full state,
    a delete is a null-value tombstone with the version in the 'version' header."""
    embeddings_delete_retention_ms: int = 604_800_000
    """delete.retention.ms of the embedding topic: how long a tombstone stays after compaction reaches it.
    7 days, like Kafka's default retention.ms: a consumer that falls further behind than this (or is
    down longer) can miss a delete and must rebuild from the beginning (EmbeddingClient always does)."""
    embeddings_min_compaction_lag_ms: int = 3_600_000
    """min.compaction.lag.ms of the embedding topic: a message is never compacted away younger than this
    (1 hour), so a consumer up to an hour behind still sees every version, not only the newest."""
    dead_letter: str = "dead-letter"
    """DeadLetter records from every stage."""
    feature_snapshot: str = "feature-snapshot"
    """Log-compacted FeatureSnapshot topic, keyed '<type>:<id>': each live entity's latest joined features
    (what the towers read), written by the job before it commits; `nearline backfill` scans it. Created
    with cleanup.policy=compact (nearline/io/snapshot.py); deletes are null tombstones. Empty: no snapshot
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
    fetch_max_wait_ms: int = 500
    """How long the broker may hold an empty fetch (consumers' long poll). Apache Kafka answers as soon as
    data arrives, so this costs no latency; shorter only makes idle consumers and the broker busy (20 ms:
    7% of a core per idle consumer and 8-15% on the broker, against 1.2% and 2.5% at 500 ms, with the
    same 6 ms produce-to-poll latency; docs/scaleout.md)."""
    security_protocol: str = "PLAINTEXT"
    """PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL, for every Kafka client of the service (job,
    standardizers, consumer client, CLI)."""
    sasl_mechanism: str = ""
    """With SASL_*: PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512."""
    sasl_username: str = ""
    sasl_password: str = ""
    """Prefer the environment variable NEARLINE_KAFKA_SASL_PASSWORD to a password in a file."""
    ssl_cafile: str = ""
    """With SSL/SASL_SSL: PEM file of the CA that signed the brokers' certificates (empty: system CAs)."""
    ssl_certfile: str = ""
    """PEM client certificate, for brokers that require client authentication (mTLS)."""
    ssl_keyfile: str = ""
    ssl_check_hostname: bool = True
    """Verify that a broker's certificate names the host connected to."""
    wire_format: str = "single-object"
    """How every message the service writes is framed (nearline/io/codec.py): 'single-object' (Avro
    single-object encoding, no registry needed) or 'confluent' (0x00 + 4-byte schema id + Avro binary,
    the schemas registered in ``schema_registry_url`` under '<topic>-value'). Readers decode both."""
    schema_registry_url: str = ""
    """Confluent-compatible schema registry (e.g. http://host:8081, or Apicurio's .../apis/ccompat/v7).
    Required with wire_format 'confluent'; with 'single-object' it lets readers decode Confluent-framed
    messages during a migration."""
    schema_registry_username: str = ""
    """Basic auth for the registry (empty: none)."""
    schema_registry_password: str = ""
    """Prefer the environment variable NEARLINE_SCHEMA_REGISTRY_PASSWORD to a password in a file."""
    schema_registry_retry_s: float = 30.0
    """How long a registry call of a CLI command or client is retried with backoff before the error is
    raised. The job and the standardizers retry until the registry answers or a stop is requested.
    Ids already fetched are cached: an outage after start-up does not stop encoding or decoding them."""


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
    redis_appendfsync: str = "always"
    """Persistence of the local redis-server: 'always' (append-only file fsynced before each reply
    batch: a SIGKILL loses nothing acknowledged), 'everysec' (may lose the last second), or 'off'
    (memory only: a restart comes back empty and needs `nearline backfill --all`)."""
    kafka_secure_listeners: bool = False
    """Also open SASL_PLAINTEXT and SASL_SSL listeners (PLAIN and SCRAM-SHA-256, a self-signed
    certificate made with openssl) on the local Apache Kafka, to try the kafka.security_* settings;
    `nearline services status --json` shows their addresses and the local credentials."""
    redis_port: int = 16379
    """Port of the local redis-server; 0 picks a free one."""
    start_timeout_s: float = 60.0
    """How long `services up` waits for each service to answer (Apache Kafka takes 4-15 s on 2 cores)."""
    schema_registry: bool = False
    """Also start a local schema registry with `services up`: Apicurio Registry (built by `python -m
    nearline.ops.jars fetch`), serving the Confluent API, in memory (its ids are gone when it stops; every
    process registers its schemas at start-up). While `kafka.schema_registry_url` is empty, every
    `nearline` command using this state dir takes its URL (shown by `services status`), so
    `kafka.wire_format: confluent` works locally without an external registry."""
    schema_registry_port: int = 0
    """Port of the local schema registry; 0 picks a free one."""


@dataclass
class JoinConfig:
    timeout_s: float = 30.0
    """How long an entity update may wait for all its standardizers before the timeout policy applies."""
    timeout_policy: str = "partial"
    """'partial': score with the manifests' declared defaults for missing features and flag the
    embedding partial; 'dead_letter': send the incomplete update to the dead-letter topic."""
    replay_timeout_s: float = 30.0
    """Timeout of a join made only of messages a previous run had read (after a restart). Such a join
    may be a version already processed whose other messages were committed; it is released if Redis has
    that version, else dead-lettered, and never scored with defaults. Keep it above a standardizer's
    worst recovery from a stuck group join, 2 x ``standardizers.rejoin_stall_s`` plus its start-up
    (about 10 s): a restart of the job during such a recovery otherwise dead-letters replayed joins that
    were only late (``replay_incomplete``; loading a config with less than 2 x rejoin_stall_s warns).
    Capped at ``timeout_s``."""
    max_pending: int = 200_000
    """Upper bound on pending joins per job; beyond it the oldest are timed out early (state stays bounded)."""
    stall_gap_s: float = 5.0
    """A gap longer than this between two batches of one partition group means the job itself was
    stalled (retrying Redis or Kafka, stopped, swapping): join timeouts count such a gap as only this
    long, so a stall never times out joins whose messages are waiting unread in Kafka. 0 disables."""


@dataclass
class LimitsConfig:
    """Size and range limits, enforced before expensive work (docs/design.md, "Failure classification")."""

    max_message_bytes: int = 65_536
    """Input messages (EntityUpdate, StandardizedFeatures) larger than this are dead-lettered undecoded
    (a marketplace EntityUpdate is < 2 KB; StandardizedFeatures at max_ids_per_feature ~10 KB)."""
    max_key_bytes: int = 512
    """Longest message key accepted (keys are '<type>:<id>')."""
    max_entity_id_chars: int = 256
    """Longest entity_id accepted."""
    max_fields: int = 64
    """Most raw text fields one EntityUpdate may carry."""
    max_field_chars: int = 4096
    """Longest raw text field a standardizer works on; longer ones are dead-lettered before fuzzy matching
    (whose cost grows with the text length)."""
    max_ids_per_feature: int = 1024
    """Most taxonomy ids one standardized feature may carry."""
    max_abs_weight: float = 1000.0
    """Feature weights must be finite and within +-this (larger ones overflow float32 in the towers)."""
    dead_letter_original_bytes: int = 65_536
    """A dead letter carries at most this many bytes of the original message (and of its key); a longer
    original is truncated, the error says so, and topic/partition/offset point at the full message."""


@dataclass
class DedupeConfig:
    tolerance: float = 0.0
    """0: an embedding is unchanged only if bitwise equal to the stored one. >0: unchanged if the max
    absolute difference per dimension is at most this."""


@dataclass
class JobConfig:
    runner: str = "FnApiRunner"
    """Beam runner of `nearline run`: FnApiRunner (Python's, in this process; the local default) or PrismRunner
    (Beam's portable Go runner, built by scripts/setup.sh). `nearline run --runner fnapi|prism` overrides it."""
    prism_binary: str = ""
    """Path of the Prism binary; empty: NEARLINE_PRISM_BINARY, else the one scripts/setup.sh builds into
    ~/.cache/nearline/prism/v<beam version>/prism."""
    assignment: str = "static"
    """How job instances share the partition groups (partition p of every input topic).
    'static': instance `instance` of `instances` owns the groups p with p % instances == instance (one
    instance: all of them; a StatefulSet: `nearline run --instance auto`). 'group': Kafka's consumer-group
    protocol assigns them (group `<kafka.consumer_group>.owners`); instances join and leave at any time."""
    instances: int = 1
    """With assignment 'static': how many instances share the partitions (at most topics.partitions)."""
    instance: int = 0
    """With assignment 'static': this instance's index, 0..instances-1."""
    io: str = "kafka-python"
    """'kafka-python': the in-process unbounded Kafka reader (works offline, any runner).
    'beam-kafkaio': Beam's cross-language ReadFromKafka/WriteToKafka for Flink/Dataflow deployments
    (needs a Java expansion service; not available offline)."""
    max_poll_records: int = 1000
    """Records one poll of one partition group may return; one poll becomes one batch through the graph."""
    poll_timeout_ms: int = 60
    """How long an idle round of polls over all partition groups waits (split evenly between them); also
    the period of the join's timeout check when idle. Lower: less latency, more idle CPU."""
    idle_poll_timeout_ms: int = 1000
    """Once a partition group has brought nothing for a second, an idle round of polls over all groups
    waits this long instead of poll_timeout_ms (split between the groups): an idle job then costs next to
    no CPU (docs/scaleout.md). The first update after an idle spell waits at most this long for its
    group's turn; under load it never applies. 0: always poll_timeout_ms."""
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
    ones updated afterwards; unfinished backfills are relaunched at start-up (nearline/offline/launcher.py)."""
    metrics_port: int = 9464
    """HTTP port of /metrics (Prometheus), /healthz and /readyz; 0 disables it."""
    metrics_bind: str = "127.0.0.1"
    """Address the metrics/health server binds to; 0.0.0.0 in a container so Prometheus can scrape it."""
    ready_max_lag: int = 100_000
    """/readyz reports not ready while the summed input lag (messages not yet committed) exceeds this;
    0 = lag is not checked."""
    ready_max_stall_s: float = 60.0
    """/readyz reports not ready when the job has not taken a batch from Kafka for this long."""
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
    group_prefix: str = "standardizer-"
    """Consumer group of processor P is '<group_prefix>P'. Two deployments (or test runs) sharing one
    Kafka cluster need different prefixes: a member of another deployment's group, subscribed to other
    topics, would otherwise take part in (and stall) this one's rebalances."""

    rejoin_stall_s: float = 10.0
    """A processor without partitions for this long, while its group's committed offsets do not move and
    input is waiting, replaces its consumer and joins again (nearline/io/group_watchdog.py: a guard against
    group joins that kafka-python leaves stuck). Recovery takes about twice this."""

    def group(self, processor: str) -> str:
        """The consumer group id of one processor."""
        return f"{self.group_prefix}{processor}"


@dataclass
class ModelsConfig:
    registry: str = "models/registry.yaml"
    """The registry: one line per registered model version (path of its package folder)."""


@dataclass
class DataCentersConfig:
    local: str = ""
    """Name of the data center this process runs in (e.g. 'dc1'); empty for a single-DC deployment.
    Every DC runs its own Kafka cluster, Redis, standardizers and nearline job."""
    peers: list[str] = field(default_factory=list)
    """The other data centers. MirrorMaker 2 (DefaultReplicationPolicy) mirrors each peer's entity-updates
    topic into this DC's Kafka as '<peer>.<entity_updates>'; the standardizers and the job read those
    topics beside the local one, so every DC processes every entity. The prefix is what stops
    re-mirroring loops: MirrorMaker 2 never mirrors a topic back to the cluster it came from."""


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
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    job: JobConfig = field(default_factory=JobConfig)
    standardizers: StandardizersConfig = field(default_factory=StandardizersConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    datacenters: DataCentersConfig = field(default_factory=DataCentersConfig)
    base_dir: str = "."
    """Directory that relative paths (registry, taxonomy_dir, state_dir) are resolved against;
    set to the config file's directory when loaded from a file."""

    # ---- derived names -------------------------------------------------------------------
    def standardized_topic(self, processor: str) -> str:
        return f"{self.topics.standardized_prefix}{processor}"

    def update_topics(self) -> list[str]:
        """EntityUpdate topics this DC reads: its own, then each peer DC's mirror of it."""
        return [self.topics.entity_updates] + [f"{peer}.{self.topics.entity_updates}" for peer in self.datacenters.peers]

    def input_topics(self) -> list[str]:
        return self.update_topics() + [self.standardized_topic(p) for p in self.standardizers.processors]

    def all_topics(self) -> list[str]:
        return self.input_topics() + [self.topics.embeddings, self.topics.dead_letter]

    def path(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else Path(self.base_dir) / q

    def validate(self) -> "Config":
        if self.join.replay_timeout_s < 2 * self.standardizers.rejoin_stall_s:
            logging.getLogger(__name__).warning(
                "join.replay_timeout_s (%gs) is below 2 x standardizers.rejoin_stall_s (%gs): a job restart while a "
                "standardizer recovers from a stuck group join dead-letters replayed joins as replay_incomplete",
                self.join.replay_timeout_s, 2 * self.standardizers.rejoin_stall_s)
        if self.join.timeout_policy not in ("partial", "dead_letter"):
            raise ConfigError(f"join.timeout_policy must be 'partial' or 'dead_letter', not {self.join.timeout_policy!r}")
        if self.services.redis_appendfsync not in ("always", "everysec", "off"):
            raise ConfigError(f"services.redis_appendfsync must be always, everysec or off, not {self.services.redis_appendfsync!r}")
        if self.services.broker not in ("kafka", "noida"):
            raise ConfigError(f"services.broker must be 'kafka' or 'noida', not {self.services.broker!r}")
        k = self.kafka
        if k.security_protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise ConfigError(f"kafka.security_protocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, not {k.security_protocol!r}")
        if k.wire_format not in ("single-object", "confluent"):
            raise ConfigError(f"kafka.wire_format must be 'single-object' or 'confluent', not {k.wire_format!r}")
        if k.wire_format == "confluent" and not k.schema_registry_url and not self.services.schema_registry:
            raise ConfigError("kafka.wire_format 'confluent' needs kafka.schema_registry_url "
                              "(or services.schema_registry: true for a local one)")
        if k.security_protocol.startswith("SASL_"):
            if k.sasl_mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
                raise ConfigError(f"kafka.sasl_mechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 with "
                                  f"{k.security_protocol}, not {k.sasl_mechanism!r}")
            if not k.sasl_username:
                raise ConfigError(f"kafka.sasl_username is required with {k.security_protocol}")
        if self.job.io not in ("kafka-python", "beam-kafkaio"):
            raise ConfigError(f"job.io must be 'kafka-python' or 'beam-kafkaio', not {self.job.io!r}")
        if self.job.assignment not in ("static", "group"):
            raise ConfigError(f"job.assignment must be 'static' or 'group', not {self.job.assignment!r}")
        if not 0 <= self.job.instance < max(1, self.job.instances):
            raise ConfigError(f"job.instance must be in 0..{self.job.instances - 1}, not {self.job.instance}")
        if self.topics.partitions < 1:
            raise ConfigError("topics.partitions must be >= 1")
        if self.dedupe.tolerance < 0:
            raise ConfigError("dedupe.tolerance must be >= 0")
        if min(self.limits.max_message_bytes, self.limits.max_field_chars, self.limits.max_ids_per_feature,
               self.limits.dead_letter_original_bytes) < 1 or not self.limits.max_abs_weight > 0:
            raise ConfigError("limits: every limit must be positive")
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
    return local if local.exists() else DATA_ROOT / "nearline.yaml"


def load_config(path: str | Path | None = None, *, env: dict | None = None) -> Config:
    env = os.environ if env is None else env
    explicit = bool(path) or bool(env.get("NEARLINE_CONFIG"))
    path = Path(path) if path else default_config_path()
    if explicit and not path.exists():
        # a named config that is missing must not silently run on defaults
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {} if path.exists() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if path.exists():
        data.setdefault("base_dir", str(path.resolve().parent))
    cfg = _build(Config, data, path.name)
    if not path.exists():
        # no config file at all (an installed wheel run from any directory): the shipped registry, and
        # everything else relative to the working directory
        cfg.models.registry = str(DATA_ROOT / "models" / "registry.yaml")
    if env.get("NEARLINE_KAFKA_BOOTSTRAP"):
        cfg.kafka.bootstrap = env["NEARLINE_KAFKA_BOOTSTRAP"]
    if env.get("NEARLINE_REDIS_URL"):
        cfg.redis.url = env["NEARLINE_REDIS_URL"]
    if env.get("NEARLINE_KAFKA_SASL_PASSWORD"):
        cfg.kafka.sasl_password = env["NEARLINE_KAFKA_SASL_PASSWORD"]
    if env.get("NEARLINE_SCHEMA_REGISTRY_PASSWORD"):
        cfg.kafka.schema_registry_password = env["NEARLINE_SCHEMA_REGISTRY_PASSWORD"]
    return cfg.validate()
