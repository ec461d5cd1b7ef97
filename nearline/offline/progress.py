"""A backfill run's progress counters, its outbox, and the Redis keys of requested and finished backfills.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

from nearline.core.lifecycle import retry_until_done
from nearline.io.codec import Codec, codec_for
from nearline.io.embedding_messages import full_state_record, full_state_send
from nearline.io.store import PARTIAL_FIELD, VERSION_FIELD

log = logging.getLogger(__name__)


class BackfillError(RuntimeError):
    """A backfill cannot start; the message says what to do (one line for the CLI)."""


# ---- progress, requests, markers (Redis) ---------------------------------------------------------
class RunProgress:
    """Counters of one backfill run in a Redis hash, so that workers of any runner report to the driver's
    progress bar and the summary survives the workers."""

    def __init__(self, r, key: str):
        self.r, self.key = r, key

    def add(self, counts: BackfillCounts) -> None:
        pipe = self.r.pipeline(transaction=False)
        for k, v in counts.as_dict().items():
            if v:
                pipe.hincrby(self.key, k, v)
        pipe.expire(self.key, 7 * 86400)
        pipe.execute()

    def read(self) -> BackfillCounts:
        raw = self.r.hgetall(self.key)
        return BackfillCounts(**{k.decode(): int(v) for k, v in raw.items() if k.decode() in BackfillCounts.__dataclass_fields__})


class ResumePoints:
    """Per partition of the snapshot topic, the offset below which a backfill request has written every
    entity: the driver's first pass of a rerun starts there, so a killed backfill does not redo what it had
    finished. Sound because a range is scored in the offset order of each entity's newest record: once the
    batch ending at offset L is written, every entity whose newest record is at or before L is done, and
    the newer records of the others are all after L. Keyed by the set of versions (one request), dropped
    when the request completes."""

    def __init__(self, r, prefix: str, chosen: list[str]):
        import hashlib

        digest = hashlib.sha1(",".join(sorted(chosen)).encode()).hexdigest()[:16]
        self.r, self.key = r, f"{prefix}:backfill:resume:{digest}"

    def get(self) -> dict[int, int]:
        return {int(k): int(v) for k, v in self.r.hgetall(self.key).items()}

    def advance(self, partition: int, offset: int) -> None:
        # one writer per partition at a time (one range per partition per pass): no race on the max
        cur = self.r.hget(self.key, partition)
        if cur is None or int(cur) < offset:
            self.r.hset(self.key, partition, offset)
            self.r.expire(self.key, 30 * 86400)

    def clear(self) -> None:
        self.r.delete(self.key)


def requests_key(prefix: str) -> str:
    """Hash of model versions whose backfill was requested and has not completed (model key -> time)."""
    return f"{prefix}:backfill:requested"


def running_key(prefix: str) -> str:
    """Hash of backfills in progress (model key -> run id, start, snapshot offsets planned, pid, host)."""
    return f"{prefix}:backfill:running"


def outbox_key(prefix: str) -> str:
    """Set of entity hash keys the backfill wrote whose full state is not yet acknowledged on the
    embedding topic (added by the write script, removed after the acknowledged send)."""
    return f"{prefix}:backfill:unpublished"


def publish_outbox(cfg, store, producer, codec: Codec | None = None, registered: dict[str, list[str]] | None = None,
                   chunk: int = 1000) -> int:
    """Publish the current full state of every entity in the outbox (a backfill that died between its
    Redis write and the acknowledged send), then remove it; returns how many. A rerun calls it first,
    so a crash at any point loses no message: the rerun's dedupe finds the fields written and would
    not publish them again. ``registered``: model keys per entity type (None: every field)."""
    codec = codec or codec_for(cfg)
    key = outbox_key(cfg.redis.key_prefix)
    n = 0
    plen = len(cfg.redis.key_prefix) + 1
    while True:
        members = store._retrying("outbox", lambda: store.r.srandmember(key, chunk))
        if not members:
            return n
        pipe = store.r.pipeline(transaction=False)
        for m in members:
            pipe.hgetall(m)
        hashes = store._retrying("outbox", pipe.execute)
        sends, now_ms = [], int(time.time() * 1000)
        for m, h in zip(members, hashes):
            h = {k.decode(): v for k, v in h.items()}
            etype, _, eid = m.decode()[plen:].partition(":")
            if VERSION_FIELD not in h or "_deleted" in h:
                continue  # gone or deleted since: the job published that
            keys = (registered or {}).get(etype) or [k for k in h if not k.startswith("_")]
            # which fields that run changed is not known any more: every entry is marked changed
            rec = full_state_record(etype, eid, int(h[VERSION_FIELD]), {k: h[k] for k in keys if k in h}, set(keys),
                                    now_ms, PARTIAL_FIELD in h)
            sends.append(full_state_send(cfg.topics.embeddings, f"{etype}:{eid}", rec, codec))
        if sends:
            retry_until_done(f"publishing {len(sends)} unpublished backfill states", lambda: producer.send_batch(sends), log)
        store._retrying("outbox", lambda: store.r.srem(key, *members))
        n += len(sends)
        log.warning("backfill: published %d full states a previous run wrote to Redis but had not published", len(sends))


def done_key(prefix: str) -> str:
    """Hash of model versions whose backfill completed (model key -> JSON summary)."""
    return f"{prefix}:backfill:done"


@dataclass
class BackfillCounts:
    scanned: int = 0              # snapshot records read
    entities: int = 0             # newest entry per entity, live or deleted, processed by the stage
    written: int = 0              # embeddings (entity x model version) written to Redis and published
    entities_written: int = 0     # entities with at least one embedding written
    skipped_newer: int = 0        # embeddings not written: Redis holds a newer version of the entity
    deduped: int = 0              # embeddings already in Redis at the snapshot's version (or bitwise equal)
    failed: int = 0               # embeddings that could not be computed (dead-lettered with the reason)
    tombstones: int = 0           # deletes restored into Redis (after a wipe)
    would_score: int = 0          # --dry-run: embeddings a real run would compute
    progress: int = 0             # snapshot offsets fully handled (the progress bar's unit)

    def add(self, other: "BackfillCounts") -> "BackfillCounts":
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)
        return self

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
