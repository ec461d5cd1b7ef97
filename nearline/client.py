"""A small Python API for consumers of the embeddings.

    client = EmbeddingClient.from_config()
    client.get("member", "m12")                      # {model key: np.ndarray} from Redis
    client.subscribe(group="my-ranker")              # background thread keeps a local cache fresh
    client.cached("job", "j7")
    client.score("member_pyramid@v1", "job_pyramid@v1", "m12", ["j7", "j9"], task="apply")
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from nearline.codec import Codec
from nearline.config import Config, load_config
from nearline.registry import Registry, check_package
from nearline.store import DELETED_FIELD, META_FIELDS, VERSION_FIELD, RedisEmbeddingStore


def decode_vector(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype="<f4")


class EmbeddingClient:
    def __init__(self, cfg: Config, bootstrap: str, redis_url: str):
        self.cfg, self.bootstrap = cfg, bootstrap
        self.store = RedisEmbeddingStore(redis_url, cfg.redis.key_prefix)
        self.codec = Codec()
        self.cache: dict[tuple[str, str], dict] = {}  # (type, id) -> {"version": v, "vectors": {key: arr}}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, path: str | Path | None = None) -> "EmbeddingClient":
        from nearline.services import resolve_endpoints

        cfg = load_config(path)
        return cls(cfg, *resolve_endpoints(cfg))

    # ---- Redis --------------------------------------------------------------------------------
    def get(self, entity_type: str, entity_id: str) -> dict[str, np.ndarray]:
        raw = self.store.get(entity_type, entity_id)
        return {k: decode_vector(v) for k, v in raw.items() if k not in META_FIELDS}

    def get_with_version(self, entity_type: str, entity_id: str) -> tuple[int | None, bool, dict[str, np.ndarray]]:
        raw = self.store.get(entity_type, entity_id)
        v = int(raw[VERSION_FIELD]) if VERSION_FIELD in raw else None
        return v, DELETED_FIELD in raw, {k: decode_vector(x) for k, x in raw.items() if k not in META_FIELDS}

    # ---- topic subscription with a local cache -----------------------------------------------
    def apply(self, rec: dict) -> None:
        """Fold one EntityEmbeddings record into the cache (keeps the highest version)."""
        k = (rec["entity_type"], rec["entity_id"])
        with self._lock:
            cur = self.cache.get(k)
            if cur and cur["version"] > rec["version"]:
                return
            if rec["deleted"]:
                self.cache[k] = {"version": rec["version"], "vectors": {}, "deleted": True}
                return
            vecs = dict(cur["vectors"]) if cur and not cur.get("deleted") else {}
            for e in rec["embeddings"]:
                vecs[f"{e['model']}@{e['model_version']}"] = decode_vector(e["vector"])
            self.cache[k] = {"version": rec["version"], "vectors": vecs, "deleted": False}

    def retire(self, rec: dict) -> None:
        """Drop a retired model version (a ModelRetired notice) from every cached entity of its type."""
        key = f"{rec['model']}@{rec['model_version']}"
        with self._lock:
            for (etype, _), c in self.cache.items():
                if etype == rec["entity_type"]:
                    c["vectors"].pop(key, None)

    def subscribe(self, group: str | None = None, from_beginning: bool = True) -> None:
        from nearline import kafka_io

        consumer = kafka_io.make_consumer(self.bootstrap, group, auto_offset_reset="earliest" if from_beginning else "latest")
        consumer.subscribe([self.cfg.topics.embeddings]) if group else consumer.assign(
            [kafka_io.TopicPartition(self.cfg.topics.embeddings, p)
             for p in kafka_io.partitions_of(consumer, self.cfg.topics.embeddings)])

        def loop():
            try:
                while not self._stop.is_set():
                    for msgs in consumer.poll(200).values():
                        for m in msgs:
                            rec = self.codec.decode(m.value)
                            if "retired_at" in rec:  # ModelRetired control notice (nearline models retire)
                                self.retire(rec)
                            else:
                                self.apply(rec)
            finally:
                consumer.close()

        self._thread = threading.Thread(target=loop, daemon=True, name="embeddings-subscriber")
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def cached(self, entity_type: str, entity_id: str) -> dict[str, np.ndarray]:
        with self._lock:
            c = self.cache.get((entity_type, entity_id))
            return dict(c["vectors"]) if c else {}

    # ---- scoring with a model's Hadamard head ------------------------------------------------
    def head(self, member_model: str, task: str) -> tuple[np.ndarray, float]:
        reg = Registry(self.cfg.path(self.cfg.models.registry))
        for e in reg.entries():
            pkg, _ = check_package(reg.resolve(e))
            if pkg and pkg.manifest.key == member_model:
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
