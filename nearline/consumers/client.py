"""A small Python API for consumers of the embeddings.

    with EmbeddingClient.from_config() as client:
        client.get("member", "m12")                  # {model key: np.ndarray} from Redis
        client.subscribe()                           # broadcast: this replica caches every entity
        client.wait_until_caught_up(timeout=30)      # True once the cache holds what the topic held
        client.cached("job", "j7")
        client.score("member_pyramid@v1", "job_pyramid@v1", "m12", ["j7", "j9"], task="apply")

Subscription modes (the embedding topic is keyed by entity, so an entity lives in one partition):

* ``broadcast`` (default): every client reads every partition from the beginning; every replica of a
  service caches every entity. No consumer group, no committed offsets: a cache is rebuilt from the
  topic at each start. ``group`` is only a label (the Kafka client id) in this mode.
* ``group``: the replicas sharing ``group`` split the partitions between them (Kafka consumer group);
  each caches only the entities of its partitions and drops them when a rebalance moves a partition
  away. Use it only when requests are routed to the replica that owns the entity's partition.

The topic (nearline/io/embedding_messages.py): each message is an entity's full state (it replaces the
cached set: a version absent from it is removed), a null value (tombstone) deletes the entity, a
ModelRetired notice drops a model version from every cached entity; an older version never wins.

Structure: EmbeddingCache (the versioned cache), Subscriber (the consumer thread that feeds it) and
EmbeddingClient (Redis reads, scoring, and the subscription's lifecycle), so another source of records
(another cluster) can feed the same cache.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from nearline.config import Config, load_config
from nearline.io.codec import Codec, CodecError, codec_for
from nearline.io.embedding_messages import read_message
from nearline.io.store import DELETED_FIELD, META_FIELDS, VERSION_FIELD, RedisEmbeddingStore

log = logging.getLogger(__name__)
MODES = ("broadcast", "group")


def decode_vector(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype="<f4")


class EmbeddingCache:
    """(type, id) -> {"version", "vectors", "deleted", "partition"}; keeps the highest version per entity."""

    def __init__(self):
        self._lock = threading.Lock()
        self.entries: dict[tuple[str, str], dict] = {}

    def apply(self, rec: dict, partition: int | None = None, full_state: bool = True) -> None:
        """Fold one EntityEmbeddings record into the cache (an older version never wins). A full-state
        record replaces the entity's vectors; ``full_state=False`` (a delta, written before full-state
        messages) merges into them. ``deleted=true`` (old messages) deletes the entity."""
        k = (rec["entity_type"], rec["entity_id"])
        if rec.get("deleted"):
            self.delete(k[0], k[1], rec["version"], partition)
            return
        with self._lock:
            cur = self.entries.get(k)
            if cur and cur["version"] > rec["version"]:
                return
            vecs = dict(cur["vectors"]) if cur and not cur.get("deleted") and not full_state else {}
            for e in rec["embeddings"]:
                vecs[f"{e['model']}@{e['model_version']}"] = decode_vector(e["vector"])
            self.entries[k] = {"version": rec["version"], "vectors": vecs, "deleted": False, "partition": partition}

    def delete(self, entity_type: str, entity_id: str, version: int | None, partition: int | None = None) -> bool:
        """A tombstone: the entity is deleted as of ``version`` (ignored if the cache holds a newer one).
        A tombstone without a version (none of ours) deletes whatever is cached. True if applied."""
        k = (entity_type, entity_id)
        with self._lock:
            cur = self.entries.get(k)
            if version is None:
                version = cur["version"] if cur else -1
            elif cur and cur["version"] > version:
                return False
            self.entries[k] = {"version": version, "vectors": {}, "deleted": True, "partition": partition}
            return True

    def retire(self, rec: dict) -> int:
        """Drop a retired model version (a ModelRetired notice, `nearline models retire`) from every cached
        entity of its type; returns how many entities held it."""
        key, n = f"{rec['model']}@{rec['model_version']}", 0
        with self._lock:
            for (etype, _), c in self.entries.items():
                if etype == rec["entity_type"] and c["vectors"].pop(key, None) is not None:
                    n += 1
        return n

    def vectors(self, entity_type: str, entity_id: str) -> dict[str, np.ndarray]:
        with self._lock:
            c = self.entries.get((entity_type, entity_id))
            return dict(c["vectors"]) if c else {}

    def drop_partitions(self, partitions: set[int]) -> int:
        with self._lock:
            gone = [k for k, v in self.entries.items() if v["partition"] in partitions]
            for k in gone:
                del self.entries[k]
            return len(gone)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self.entries

    def __getitem__(self, key) -> dict:
        with self._lock:
            return self.entries[key]

    def values(self) -> list[dict]:
        with self._lock:
            return list(self.entries.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self.entries)


class Subscriber(threading.Thread):
    """The consumer thread behind EmbeddingClient.subscribe. It owns its KafkaConsumer (kafka-python
    consumers are not thread-safe); other threads talk to it through events and the catch-up request.

    A record that does not decode as EntityEmbeddings (a *poison* message) is logged, counted in
    ``stats["poison"]`` and skipped: it never stops the thread, and later records are still applied.
    Kafka errors are logged and retried with backoff; the thread ends only on ``stop()``.
    """

    def __init__(self, cfg: Config, bootstrap: str, cache: EmbeddingCache, *, mode: str, group: str | None,
                 from_beginning: bool, codec: Codec | None = None):
        super().__init__(daemon=True, name="embeddings-subscriber")
        self.cfg, self.bootstrap, self.cache = cfg, bootstrap, cache
        self.topic, self.mode, self.group, self.from_beginning = cfg.topics.embeddings, mode, group, from_beginning
        self.codec = codec or codec_for(cfg)
        self.stats = {"applied": 0, "poison": 0, "errors": 0}
        self.error: BaseException | None = None  # set if the thread died of an unexpected error
        self._stop_event = threading.Event()
        self._started = threading.Event()  # the consumer exists and has partitions (or group joined)
        self._cond = threading.Condition()
        self._catchup_requests = 0  # incremented by waiters; the thread answers with targets
        self._targets: dict | None = None  # TopicPartition -> end offset to reach
        self._target_gen = 0  # the request count the current targets answer
        self._caught_up_gen = 0  # requests up to this count are answered
        self._assigned_once = False

    # ---- thread ------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            consumer = self._connect()
        except BaseException as exc:  # noqa: BLE001 - reported to the caller of wait_until_caught_up
            self.error = exc
            self._started.set()
            with self._cond:
                self._cond.notify_all()
            return
        try:
            self._loop(consumer)
        except BaseException as exc:  # noqa: BLE001 - must not vanish silently
            log.exception("embedding subscriber stopped by an unexpected error")
            self.error = exc
            with self._cond:
                self._cond.notify_all()
        finally:
            try:
                consumer.close(autocommit=False)
            except Exception:
                pass

    def _connect(self):
        from kafka import ConsumerRebalanceListener

        from nearline.io import kafka_io

        reset = "earliest" if self.from_beginning else "latest"
        if self.mode == "broadcast":
            consumer = kafka_io.make_consumer(self.bootstrap, None, auto_offset_reset=reset,
                                              client_id=self.group or "nearline-embedding-client")
            tps = [kafka_io.TopicPartition(self.topic, p) for p in kafka_io.partitions_of(consumer, self.topic)]
            consumer.assign(tps)
            if self.from_beginning:
                consumer.seek_to_beginning(*tps)
            else:
                consumer.seek_to_end(*tps)
            self._assigned_once = True
            self._started.set()
            return consumer

        sub = self

        class Rebalance(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                dropped = sub.cache.drop_partitions({tp.partition for tp in revoked})
                if revoked:
                    log.info("group %s: partitions %s moved away; dropped %d cached entities",
                             sub.group, sorted(tp.partition for tp in revoked), dropped)

            def on_partitions_assigned(self, assigned):
                # a cache starts from the beginning of its partitions, whatever the group committed
                if assigned and sub.from_beginning:
                    consumer.seek_to_beginning(*assigned)
                elif assigned:
                    consumer.seek_to_end(*assigned)
                sub._assigned_once = True
                with sub._cond:
                    sub._targets = None  # the assignment changed: catch-up targets are recomputed
                    sub._cond.notify_all()
                sub._started.set()

        consumer = kafka_io.make_consumer(self.bootstrap, self.group, auto_offset_reset=reset,
                                          session_timeout_ms=self.cfg.kafka.session_timeout_ms,
                                          heartbeat_interval_ms=self.cfg.kafka.heartbeat_interval_ms)
        # a member joining before the group leader knows a new topic's partitions gets none for minutes
        for topic in kafka_io.await_partitions(self.bootstrap, [self.topic]):
            log.warning("group %s: topic %s lists no partitions yet; subscribing anyway", self.group, topic)
        consumer.subscribe([self.topic], listener=Rebalance())
        return consumer

    def _loop(self, consumer) -> None:
        from nearline.io import kafka_io

        backoff = 0.2
        while not self._stop_event.is_set():
            try:
                polled = consumer.poll(200)
                backoff = 0.2
            except Exception as exc:  # broker gone, rebalance errors...: keep the thread, retry
                self.stats["errors"] += 1
                log.warning("embedding subscriber: poll failed (%s); retrying in %.1fs", exc, backoff)
                self._stop_event.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            for tp, msgs in polled.items():
                for m in msgs:
                    self._apply(m)
            self._serve_catchup(consumer, kafka_io)

    def _apply(self, m) -> None:
        try:
            msg = read_message(m.key, m.value, m.headers, self.codec)
            if msg.kind == "delete" and msg.entity is None:
                raise CodecError(f"tombstone with key {msg.key!r}, not '<entity_type>:<entity_id>'")
        except (CodecError, ValueError) as exc:
            self.stats["poison"] += 1
            log.warning("embedding subscriber: skipped %s[%d]@%d: %s (%d skipped so far)",
                        m.topic, m.partition, m.offset, exc, self.stats["poison"])
            return
        if msg.kind == "retired":  # a ModelRetired control notice (nearline models retire)
            self.cache.retire(msg.record)
        elif msg.kind == "delete":
            self.cache.delete(*msg.entity, msg.version, m.partition)
        else:
            self.cache.apply(msg.record, m.partition, full_state=msg.full_state)
        self.stats["applied"] += 1

    def _serve_catchup(self, consumer, kafka_io) -> None:
        """Answer pending wait_until_caught_up calls: fix end offsets once per request, then report when
        the consumer's position has reached them on every assigned partition."""
        with self._cond:
            pending = self._catchup_requests
        if pending <= self._caught_up_gen or not self._assigned_once:
            return
        if self._targets is None:
            tps = list(consumer.assignment())
            try:
                targets = kafka_io.end_offsets(consumer, tps, attempts=3, timeout_ms=5_000) if tps else {}
            except Exception as exc:
                log.debug("end offsets unavailable (%s); retried on the next poll", exc)
                return
            with self._cond:
                self._targets, self._target_gen = targets, pending
        try:
            done = all(consumer.position(tp, timeout_ms=5_000) >= end for tp, end in self._targets.items())
        except Exception as exc:
            log.debug("position unavailable (%s); retried on the next poll", exc)
            return
        if done:
            with self._cond:
                self._caught_up_gen = self._target_gen
                self._targets = None
                self._cond.notify_all()

    # ---- called from other threads -----------------------------------------------------------
    def wait_until_caught_up(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            self._catchup_requests += 1
            mine = self._catchup_requests
            while self._caught_up_gen < mine:
                if self.error is not None:
                    raise RuntimeError(f"the embedding subscriber failed: {self.error}") from self.error
                if not self.is_alive() and self._started.is_set():
                    raise RuntimeError("the embedding subscriber is closed")
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return True

    def stop(self, timeout: float = 10.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=timeout)


class EmbeddingClient:
    def __init__(self, cfg: Config, bootstrap: str, redis_url: "str | list[str]", *, stale_after_s: float | None = 30.0,
                 timeout_s: float = 0.5):
        """``redis_url``: one Redis, or the ordered list of the data centers' Redis endpoints, this DC's
        first (names from ``cfg.datacenters``: local, then peers). With several, reads fail over to the
        next DC when one errors, times out or its job's heartbeat is older than ``stale_after_s``, fail
        back once it is healthy, and never return an older version than one already served
        (nearline.failover.FailoverReader)."""
        urls = [redis_url] if isinstance(redis_url, str) else list(redis_url)
        if not urls:
            raise ValueError("EmbeddingClient needs a Redis URL")
        self.cfg, self.bootstrap, self.redis_url = cfg, bootstrap, urls[0]
        self.store = RedisEmbeddingStore(urls[0], cfg.redis.key_prefix)
        self.reader = None
        if len(urls) > 1:
            from nearline.consumers.failover import Endpoint, FailoverReader

            dcs = [cfg.datacenters.local, *cfg.datacenters.peers]
            names = dcs if len(dcs) == len(urls) and all(dcs) else [f"dc{i + 1}" for i in range(len(urls))]
            self.reader = FailoverReader([Endpoint(n, u) for n, u in zip(names, urls)], prefix=cfg.redis.key_prefix,
                                         group=cfg.kafka.consumer_group, timeout_s=timeout_s,
                                         stale_after_s=stale_after_s)
        self.codec = codec_for(cfg)
        self.cache = EmbeddingCache()
        self._subscriber: Subscriber | None = None
        self._models = None  # RegistryWatcher, built on the first score()

    @classmethod
    def from_config(cls, path: str | Path | None = None) -> "EmbeddingClient":
        from nearline.ops.services import resolve_endpoints

        cfg = load_config(path)
        return cls(cfg, *resolve_endpoints(cfg))

    def __enter__(self) -> "EmbeddingClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- Redis --------------------------------------------------------------------------------
    def _raw(self, entity_type: str, entity_id: str) -> dict[str, bytes]:
        if self.reader is None:
            return self.store.get(entity_type, entity_id)
        _, raw = self.reader.get_raw(entity_type, entity_id)
        return {k.decode(): v for k, v in raw.items()}

    def get(self, entity_type: str, entity_id: str) -> dict[str, np.ndarray]:
        raw = self._raw(entity_type, entity_id)
        return {k: decode_vector(v) for k, v in raw.items() if k not in META_FIELDS}

    def get_with_version(self, entity_type: str, entity_id: str) -> tuple[int | None, bool, dict[str, np.ndarray]]:
        raw = self._raw(entity_type, entity_id)
        v = int(raw[VERSION_FIELD]) if VERSION_FIELD in raw else None
        return v, DELETED_FIELD in raw, {k: decode_vector(x) for k, x in raw.items() if k not in META_FIELDS}

    # ---- topic subscription with a local cache -----------------------------------------------
    def apply(self, rec: dict) -> None:
        """Fold one EntityEmbeddings (full-state) record into the cache (keeps the highest version)."""
        self.cache.apply(rec)

    def apply_tombstone(self, entity_type: str, entity_id: str, version: int | None) -> bool:
        """Fold one tombstone (null value; version from its 'version' header) into the cache."""
        return self.cache.delete(entity_type, entity_id, version)

    def retire(self, rec: dict) -> int:
        """Fold one ModelRetired notice into the cache: the retired version's vectors are dropped."""
        return self.cache.retire(rec)

    def subscribe(self, group: str | None = None, from_beginning: bool = True, mode: str = "broadcast") -> None:
        """Start the background consumer that keeps the cache fresh (see the module doc for the modes).
        Returns at once; ``wait_until_caught_up`` tells when the cache holds what the topic held.
        Raises RuntimeError if already subscribed (close() first; a closed client may subscribe again)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if mode == "group" and not group:
            raise ValueError("mode='group' needs a group name shared by the replicas")
        if self._subscriber is not None and self._subscriber.is_alive():
            raise RuntimeError("already subscribed; close() first to subscribe again")
        self._subscriber = Subscriber(self.cfg, self.bootstrap, self.cache, mode=mode, group=group,
                                      from_beginning=from_beginning, codec=self.codec)
        self._subscriber.start()

    def wait_until_caught_up(self, timeout: float = 30.0) -> bool:
        """Block until the cache has applied every record that was on the topic (on this client's
        partitions) when called; False on timeout. Raises RuntimeError if not subscribed or if the
        subscriber failed (e.g. the topic does not exist)."""
        if self._subscriber is None:
            raise RuntimeError("not subscribed: call subscribe() first")
        return self._subscriber.wait_until_caught_up(timeout)

    @property
    def subscription_stats(self) -> dict:
        """Records applied, poison records skipped, poll errors retried (of the current subscription)."""
        return dict(self._subscriber.stats) if self._subscriber else {"applied": 0, "poison": 0, "errors": 0}

    def close(self) -> None:
        """Stop the subscription (the cache stays readable) and release the Redis connections."""
        if self._subscriber is not None:
            self._subscriber.stop()
        self.store.r.close()

    def cached(self, entity_type: str, entity_id: str) -> dict[str, np.ndarray]:
        return self.cache.vectors(entity_type, entity_id)

    # ---- scoring with a model's Hadamard head ------------------------------------------------
    def head(self, member_model: str, task: str) -> tuple[np.ndarray, float]:
        """The task head (w, b) of a registered model. The registry is validated once (each package's
        ONNX session is built once) and re-read only when it changes, not at every call."""
        if self._models is None:
            from nearline.inference.scoring import RegistryWatcher
            from nearline.registry.packages import Registry

            self._models = RegistryWatcher(Registry(self.cfg.path(self.cfg.models.registry)), self.cfg.entity_types,
                                           self.cfg.job.registry_poll_s)
            self._models.poll(force=True)
        else:
            self._models.poll()
        for pkg in self._models.packages:
            if pkg.manifest.key == member_model:
                h = pkg.manifest.head.get(task)
                if not h:
                    raise KeyError(f"{member_model} has no head for task {task!r}; has {sorted(pkg.manifest.head)}")
                return np.asarray(h["w"], dtype=np.float32), float(h["b"])
        raise KeyError(f"model {member_model!r} is not registered")

    def score(self, member_model: str, job_model: str, member_id: str, job_ids: list[str], task: str,
              use_cache: bool = False) -> np.ndarray:
        """sigmoid(w . (member * job) + b) for one member against several jobs; NaN where missing."""
        w, b = self.head(member_model, task)
        get = self.cached if use_cache else self.get
        m = get("member", member_id).get(member_model)
        out = np.full(len(job_ids), np.nan, dtype=np.float32)
        if m is None:
            return out
        for i, jid in enumerate(job_ids):
            j = get("job", jid).get(job_model)
            if j is not None:
                out[i] = 1.0 / (1.0 + np.exp(-(float(np.dot(w, m * j)) + b)))
        return out
