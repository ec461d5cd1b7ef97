"""The durable feature snapshot: each live entity's latest joined features, on a log-compacted Kafka topic.

Why a compacted Kafka topic (and not Redis or files): the job already writes Kafka first and commits its
input offsets only after the acknowledged sends, so the snapshot gets exactly the embeddings' guarantees
for free (same producer, same flush, same retry); compaction keeps one record per entity (the newest),
so the topic stays the size of the live entity set; it survives a Redis wipe, which is the point; and a
batch job scans it partition by partition (Beam reads it in parallel). Deletes are null-value tombstones
(compaction drops them after ``delete.retention.ms``).

Every record carries its entity version in a Kafka header, so a scan picks the newest version per key
without decoding every record (records of one key are in one partition, in the order the job wrote them;
the job writes an entity's versions in order and never a stale one, so "newest offset" and "highest
version" agree; the scan still takes the highest version, so a replay cannot regress it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from nearline.io.codec import Codec

log = logging.getLogger(__name__)
SCHEMA = "FeatureSnapshot"
VERSION_HEADER = "version"
PARTIAL_HEADER = "partial"  # "1"/"0": lets a backfill decide what to score before decoding the features
TOPIC_CONFIGS = {"cleanup.policy": "compact"}


def snapshot_send(topic: str, joined, codec: Codec, now_ms: int | None = None) -> tuple:
    """(topic, key, value, headers) of the snapshot record of a Joined (nearline.join)."""
    rec = {"entity_type": joined.entity_type, "entity_id": joined.entity_id, "version": joined.version,
           "partial": bool(joined.partial), "missing": list(joined.missing or []),
           "features": {name: {"ids": list(f.get("ids") or []), "weights": f.get("weights")}
                        for name, f in joined.features.items()},
           "written_at": int(time.time() * 1000) if now_ms is None else now_ms}
    return (topic, joined.key.encode(), codec.encode(SCHEMA, rec),
            [(VERSION_HEADER, str(joined.version).encode()), (PARTIAL_HEADER, b"1" if joined.partial else b"0")])


def tombstone_send(topic: str, key: str, version: int) -> tuple:
    """A delete: null value (compaction removes the entity), its version in the header."""
    return (topic, key.encode(), None, [(VERSION_HEADER, str(version).encode())])


def header_version(headers) -> int | None:
    for k, v in headers or ():
        if k == VERSION_HEADER and v is not None:
            return int(v)
    return None


def header_partial(headers) -> bool | None:
    for k, v in headers or ():
        if k == PARTIAL_HEADER and v is not None:
            return v == b"1"
    return None


@dataclass
class SnapshotEntry:
    """The newest snapshot record of one entity seen by a scan (value None: deleted)."""

    key: str
    version: int
    offset: int
    value: bytes | None
    partial: bool | None = None  # from the header; None: unknown until decoded

    @property
    def deleted(self) -> bool:
        return self.value is None


def record_version(headers, value: bytes | None, codec: Codec | None = None) -> int | None:
    """A snapshot record's version: its header, else (a record without one) decoded from the value;
    None for a tombstone without a version, which cannot be ordered (the job never writes one)."""
    v = header_version(headers)
    if v is None and value is not None:
        v = (codec or Codec()).decode(value, expect=SCHEMA)["version"]
    return v


def latest_per_key(records, codec: Codec | None = None) -> tuple[dict[str, SnapshotEntry], int]:
    """Fold consumer records (in offset order) into the newest entry per key: highest version, ties to the
    later offset. Records without a version header are decoded to find it. Returns (entries, scanned)."""
    out: dict[str, SnapshotEntry] = {}
    n = 0
    for r in records:
        n += 1
        if r.key is None:
            continue
        v = record_version(r.headers, r.value, codec)
        if v is None:
            continue
        key = r.key.decode()
        cur = out.get(key)
        if cur is None or v >= cur.version:
            out[key] = SnapshotEntry(key, v, r.offset, r.value, header_partial(r.headers))
    return out, n


def ensure_snapshot_topic(bootstrap: str, cfg) -> None:
    """Create the snapshot topic log-compacted; if it exists with another cleanup policy (e.g. auto-created
    by a broker), switch it to compact and say so: a delete-policy snapshot would lose entities."""
    from nearline.io import kafka_io

    topic = cfg.topics.feature_snapshot
    if not topic:
        return  # snapshot disabled
    created = kafka_io.ensure_topics(bootstrap, [topic], cfg.topics.partitions, cfg.topics.replication_factor,
                                     topic_configs=TOPIC_CONFIGS)
    if created:
        return
    policy = cleanup_policy(bootstrap, topic)
    if policy is not None and "compact" not in policy:
        log.warning("feature snapshot topic %s had cleanup.policy=%s; setting it to compact", topic, policy)
        set_compacted(bootstrap, topic)


def cleanup_policy(bootstrap: str, topic: str) -> str | None:
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {"cleanup.policy": None})],
                                     config_filter="all")
    except Exception as exc:  # an emulator without DescribeConfigs: nothing to check against
        log.info("cannot read the cleanup policy of %s (%s)", topic, exc)
        return None
    finally:
        admin.close()
    return _find_value(res, "cleanup.policy")


def _find_value(res, name: str):
    """describe_configs answers with nested dicts whose exact shape varies by client version."""
    if isinstance(res, dict):
        if name in res:
            v = res[name]
            return v.get("value", v.get("config_value")) if isinstance(v, dict) else v
        for v in res.values():
            found = _find_value(v, name)
            if found is not None:
                return found
    elif isinstance(res, (list, tuple)):
        for v in res:
            found = _find_value(v, name)
            if found is not None:
                return found
    return None


def set_compacted(bootstrap: str, topic: str) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, dict(TOPIC_CONFIGS))])
    finally:
        admin.close()
