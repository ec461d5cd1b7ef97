"""The embedding topic's message contract, shared by every writer (the job, the backfill) and reader.

The embedding topic is **log-compacted**, keyed ``<entity_type>:<entity_id>``:

* every EntityEmbeddings message carries the entity's **full state**: every registered model version's
  vector Redis holds after the write (not only the ones that changed; ``changed`` on each entry says
  which did). Kafka keeps only the newest message per key, so a delta would lose the versions it did
  not carry; a full-state message makes "the latest message per key" equal to Redis's hash.
* a delete is a **tombstone**: the key with a null value, the entity version in the ``version`` header
  (the feature snapshot topic's convention, nearline/io/snapshot.py). Compaction removes the entity from
  the topic after ``delete.retention.ms``. ``deleted`` stays in the schema for readers of old
  messages; nothing writes ``deleted=true`` any more.
* every message has the ``version`` header, so a reader can order records without decoding them.
* ``ModelRetired`` notices (nearline/offline/launcher.py) keep their own keys ``_model:<model>@<version>``,
  one per partition: never superseded by an entity's messages, so compaction keeps them, and they stay
  after every message of their partition that carried the retired version.

Writers must publish an entity's versions in increasing order (compaction keeps the newest *offset*,
not the highest version). Readers keep the highest version per key anyway (a replay after a crash can
publish a version twice, never an older one after a newer one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nearline.io.codec import Codec, zigzag_varint
from nearline.io.snapshot import VERSION_HEADER, header_version, tombstone_send

log = logging.getLogger(__name__)
SCHEMA = "EntityEmbeddings"
RETIRED_SCHEMA = "ModelRetired"

__all__ = ["SCHEMA", "VERSION_HEADER", "full_state_record", "full_state_send", "tombstone_send", "topic_configs",
           "ensure_embedding_topic", "EmbeddingMessage", "read_message", "header_version"]


def full_state_record(entity_type: str, entity_id: str, version: int, state: dict[str, bytes],
                      changed, produced_at_ms: int, partial: bool = False) -> dict:
    """The EntityEmbeddings record of an entity's full state.

    ``state``: every model key (``<model>@<version>``) -> float32 little-endian bytes the entity has after
    this write (Redis's fields merged with the changed ones). ``changed``: the keys this write changes
    (any container supporting ``in``). Entries are sorted by model key (deterministic bytes)."""
    entries = []
    for k in sorted(state):
        vec = state[k]
        if vec is None:
            continue
        name, _, ver = k.partition("@")
        entries.append({"model": name, "model_version": ver, "dim": len(vec) // 4, "vector": vec,
                        "produced_at": produced_at_ms, "changed": k in changed})
    return {"entity_type": entity_type, "entity_id": entity_id, "version": version, "deleted": False,
            "partial": bool(partial), "embeddings": entries}


def full_state_send(topic: str, key: str, record: dict, codec: Codec) -> tuple:
    """(topic, key, value, headers) of a full-state record (from :func:`full_state_record`)."""
    return (topic, key.encode(), state_encoder(codec).encode_record(record), [(VERSION_HEADER, str(record["version"]).encode())])


_SMALL = [zigzag_varint(i) for i in range(4096)]  # lengths and counts: a list index, not a loop


def _avro_string(s: str) -> bytes:
    b = s.encode()
    return (_SMALL[len(b)] if len(b) < 4096 else zigzag_varint(len(b))) + b


class FullStateEncoder:
    """EntityEmbeddings full-state messages, encoded without building a record dict for fastavro.

    Why not fastavro here: fastavro's schemaless_writer costs 10-20 µs per message (measured, 1-3
    entries), more than onnxruntime spends on the entity, and the backfill writes one message per
    entity. This writes the same bytes for the one schema it knows: the entries' constant parts (model
    name, version, dim, vector length) are encoded once per model key. It is checked at construction
    against fastavro on a probe record under the codec's current EntityEmbeddings schema; if the bytes
    differ (the schema changed and this was not updated) it says so in the log and every message goes
    through fastavro, so a schema change can make it slower, never wrong (tests compare it with fastavro
    on fuzzed records too)."""

    def __init__(self, codec: Codec):
        self.codec = codec
        self._header: bytes | None = None
        self._entry_prefix: dict[tuple[str, int], bytes] = {}
        probe = full_state_record("member", "probe-é", -3, {"a@v1": b"\x00" * 8, "b@v2": b"\x01" * 4}, {"b@v2"}, 1_700_000_000_000, True)
        fast = self._datum(probe["entity_type"], probe["entity_id"], probe["version"], probe["partial"],
                           [(e["model"] + "@" + e["model_version"], e["vector"], e["changed"]) for e in probe["embeddings"]],
                           probe["embeddings"][0]["produced_at"])
        self.fast = codec.encode(SCHEMA, probe)[len(codec.header(SCHEMA)):] == fast
        if not self.fast:
            log.warning("EntityEmbeddings schema is not the one FullStateEncoder writes: encoding with fastavro (slower)")

    def _prefix(self, key: str, nbytes: int) -> bytes:
        """model, model_version, dim and the vector's length prefix of one entry."""
        p = self._entry_prefix.get((key, nbytes))
        if p is None:
            name, _, ver = key.partition("@")
            p = self._entry_prefix[(key, nbytes)] = _avro_string(name) + _avro_string(ver) + zigzag_varint(nbytes // 4) + zigzag_varint(nbytes)
        return p

    def _datum(self, entity_type: str, entity_id: str, version: int, partial: bool, entries, produced_at_ms: int) -> bytes:
        tail = zigzag_varint(produced_at_ms)
        parts = [_avro_string(entity_type), _avro_string(entity_id), zigzag_varint(version), b"\x00\x01" if partial else b"\x00\x00"]
        if entries:
            parts.append(_SMALL[len(entries)] if len(entries) < 4096 else zigzag_varint(len(entries)))  # one array block, then the 0 that ends it
            for key, vec, changed in entries:
                parts += (self._prefix(key, len(vec)), vec, tail, b"\x01" if changed else b"\x00")
        parts.append(b"\x00")
        return b"".join(parts)

    def encode(self, entity_type: str, entity_id: str, version: int, state: dict[str, bytes], changed,
               produced_at_ms: int, partial: bool = False) -> bytes:
        """The value of :func:`full_state_record`'s record with these arguments, encoded."""
        if not self.fast:
            return self.codec.encode(SCHEMA, full_state_record(entity_type, entity_id, version, state, changed, produced_at_ms, partial))
        if self._header is None:
            self._header = self.codec.header(SCHEMA)
        entries = [(k, state[k], k in changed) for k in sorted(state) if state[k] is not None]
        return self._header + self._datum(entity_type, entity_id, version, partial, entries, produced_at_ms)

    def encode_record(self, record: dict) -> bytes:
        """A record built by :func:`full_state_record` (whose entries share one produced_at)."""
        es = record["embeddings"]
        if not self.fast or record.get("deleted") or len({e["produced_at"] for e in es}) > 1:
            return self.codec.encode(SCHEMA, record)
        if self._header is None:
            self._header = self.codec.header(SCHEMA)
        return self._header + self._datum(record["entity_type"], record["entity_id"], record["version"], record["partial"],
                                          [(e["model"] + "@" + e["model_version"], e["vector"], e["changed"]) for e in es],
                                          es[0]["produced_at"] if es else 0)


def state_encoder(codec: Codec) -> FullStateEncoder:
    """The codec's FullStateEncoder (made once per codec)."""
    enc = codec.__dict__.get("_state_encoder")
    if enc is None:
        enc = codec.__dict__["_state_encoder"] = FullStateEncoder(codec)
    return enc


# ---- the topic ------------------------------------------------------------------------------------
def topic_configs(cfg) -> dict[str, str]:
    """The embedding topic's configs: compacted, tombstones kept ``delete.retention.ms`` after compaction
    reaches them, messages left uncompacted ``min.compaction.lag.ms`` (see the config fields' docs)."""
    t = cfg.topics
    return {"cleanup.policy": "compact",
            "delete.retention.ms": str(int(t.embeddings_delete_retention_ms)),
            "min.compaction.lag.ms": str(int(t.embeddings_min_compaction_lag_ms))}


def ensure_embedding_topic(bootstrap: str, cfg, topic: str | None = None) -> bool:
    """Create the embedding topic log-compacted (before any generic ensure_topics, which would create it
    with the broker's default delete policy). An existing topic with another cleanup policy (created by
    an older version, or auto-created) is switched to compact, with a warning: a delete-policy topic
    loses the entities of expired segments. Returns True if created."""
    from nearline.io import kafka_io
    from nearline.io.snapshot import cleanup_policy

    topic = topic or cfg.topics.embeddings
    created = kafka_io.ensure_topics(bootstrap, [topic], cfg.topics.partitions, cfg.topics.replication_factor,
                                     topic_configs=topic_configs(cfg))
    if created:
        return True
    policy = cleanup_policy(bootstrap, topic)
    if policy is not None and "compact" not in policy:
        log.warning("embedding topic %s had cleanup.policy=%s; setting it to compact (%s)", topic, policy,
                    ", ".join(f"{k}={v}" for k, v in topic_configs(cfg).items()))
        set_topic_configs(bootstrap, topic, topic_configs(cfg))
    return False


def set_topic_configs(bootstrap: str, topic: str, configs: dict[str, str]) -> None:
    """Set topic configs (kafka-python's AlterConfigs: the topic's other dynamic configs are reset)."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    from nearline.io import kafka_io

    admin = KafkaAdminClient(**kafka_io._with_security(dict(bootstrap_servers=bootstrap, request_timeout_ms=10_000)))
    try:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, dict(configs))])
    finally:
        admin.close()


# ---- reading --------------------------------------------------------------------------------------
@dataclass
class EmbeddingMessage:
    """One record of the embedding topic, classified.

    kind: ``"state"`` (``record`` is the EntityEmbeddings full state), ``"delete"`` (a tombstone, or an old
    ``deleted=true`` record), ``"retired"`` (``record`` is a ModelRetired notice)."""

    kind: str
    key: str | None
    version: int | None
    record: dict | None = None
    full_state: bool = True  # False: a delta written before full-state messages (merge it, do not replace)

    @property
    def entity(self) -> tuple[str, str] | None:
        if self.kind == "retired":
            return None
        if self.record is not None:
            return self.record["entity_type"], self.record["entity_id"]
        if self.key and ":" in self.key:
            t, _, i = self.key.partition(":")
            return t, i
        return None


def read_message(key: bytes | None, value: bytes | None, headers, codec: Codec) -> EmbeddingMessage:
    """Classify one consumer record of the embedding topic. A null value is a tombstone (its version from
    the ``version`` header; None if absent). Raises CodecError for a value that is neither an
    EntityEmbeddings nor a ModelRetired record."""
    from nearline.io.codec import CodecError

    k = key.decode(errors="replace") if key is not None else None
    if value is None:
        return EmbeddingMessage("delete", k, header_version(headers))
    rec = codec.decode(value)
    if "retired_at" in rec:
        return EmbeddingMessage("retired", k, None, rec)
    if "embeddings" not in rec:
        raise CodecError(f"not an EntityEmbeddings record (fields {sorted(rec)[:6]})")
    if rec.get("deleted"):  # written before tombstones replaced deleted=true records
        return EmbeddingMessage("delete", k, rec["version"], rec, False)
    return EmbeddingMessage("state", k, rec["version"], rec, not _is_delta_writer(codec, bytes(value[2:10])))


_DELTA_WRITERS: dict[bytes, bool] = {}


def _is_delta_writer(codec: Codec, fp: bytes) -> bool:
    """Whether the writer schema of a message is a delta-era EntityEmbeddings (its entries have no
    ``changed`` field: schemas/history/EntityEmbeddings.v1.avsc), whose messages carried only the
    entries that changed."""
    known = _DELTA_WRITERS.get(fp)
    if known is None:
        writer = getattr(getattr(codec, "store", None), "writers", {}).get(fp)
        try:
            items = next(f["type"]["items"] for f in writer["fields"] if f["name"] == "embeddings")
            known = not any(f["name"] == "changed" for f in items["fields"])
        except (TypeError, KeyError, StopIteration):
            known = False  # unknown layout: treat as full state
        _DELTA_WRITERS[fp] = known
    return known
