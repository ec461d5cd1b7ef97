"""Offline backfill and rebuild: score chosen model versions on every live entity of the feature snapshot.

Plain Python, one batch at a time; beam_jobs/backfill_job.py wires it into a Beam batch pipeline and
`nearline backfill` drives it (:func:`run_backfill`).

    RangeReader      one partition range of the snapshot topic -> the newest entry per entity, as a
                     SnapshotChunk (a list per attribute, nothing decoded; librdkafka; scan_range is the
                     same with a kafka-python consumer)
    BackfillStage    per batch of entities, prepare: one Redis read -> which versions each entity lacks
                     -> decode those records together (nearline/snapshot_columns.py) -> score them with the
                     job's own ModelSet.score_columns (same tensor builder, same ORT session options, so
                     the bits are identical) -> dedupe; commit: version-guarded Redis writes (the job's
                     CAS, one script call per batch, replying with each hash) -> the written entities'
                     full state to the embedding topic (BatchProducer, acknowledged)
    run_range        one range: scan, then prepare batch k+1 while batch k commits on a second thread
    run_backfill     publishes what a dead run left in the outbox, then passes over the snapshot until it
                     converges, progress bar, summary

Version guard. The stored ``_v`` decides, per entity:
  * stored newer than the snapshot: skipped (the job wrote a newer version meanwhile; the job scores
    every registered version, and the next pass picks up the newer snapshot record if it lacks one);
  * stored equal: only the chosen versions whose field is missing are scored and added (HSET adds the
    field, the CAS accepts an equal version);
  * stored older (the job deduped that version entirely, an irrelevant update leaves ``_v`` behind; or its
    Redis write of a version whose snapshot is already on the topic is in flight): the chosen versions
    are scored and compared with what is stored (the job's dedupe rule), so the other fields stay valid;
  * absent (a wiped Redis): the chosen versions are scored (``--all``: every registered one);
  * a partial hash and a complete snapshot of the same version: every registered version is rescored,
    since the write clears ``_partial`` for the whole hash.
  The Lua CAS re-checks at write time, so a version the job writes between our read and our write is
  never overwritten (counted as skipped_newer).

Idempotent and resumable: fields already present at the snapshot's version are not rescored (they were
computed from the same features by the same model), so a rerun after a crash redoes only what is missing.

Convergence. A pass scans the snapshot up to its end offsets at the start of the pass. While the job runs,
a batch it scored before it loaded a new version can land after those offsets (Redis then holds a newer
version without the field: skipped above). So passes repeat over the records appended meanwhile until a
pass writes nothing (bounded by ``max_passes``). Catch-up passes rescore what they read: the job may have
rewritten an entity the first pass had completed, keeping a field it does not score yet from the older
version; rescoring finds the difference (or dedupes it bitwise when the job did score the version).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field

import numpy as np

from nearline.codec import Codec, codec_for
from nearline.deadletter import encode_dead_letter
from nearline.dedupe import decide
from nearline.lifecycle import retry_until_done
from nearline.embedding_messages import full_state_record, full_state_send
from nearline.snapshot import (PARTIAL_HEADER, VERSION_HEADER, SnapshotEntry, header_partial, latest_per_key,
                               record_version)
from nearline.store import PARTIAL_FIELD, VERSION_FIELD

log = logging.getLogger(__name__)


class BackfillError(RuntimeError):
    """A backfill cannot start; the message says what to do (one line for the CLI)."""


@dataclass
class PartitionRange:
    topic: str
    partition: int
    start: int
    end: int  # exclusive

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


@dataclass
class SnapshotChunk:
    """The newest snapshot record of each entity of (part of) one partition range, column by column, in
    offset order; nothing decoded yet. What the scan hands the stage: a list per attribute instead of an
    object per record (the scan's per-record Python was as costly as the scoring)."""

    partition: int
    keys: list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    values: list = field(default_factory=list)      # bytes, or None for a tombstone
    partial: list = field(default_factory=list)     # the 'partial' header: True/False, None if absent
    scanned: int = 0                                # records read to find these (the summary's 'scanned')

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, sl: slice) -> "SnapshotChunk":
        """A slice of the entities (what batches_with_progress cuts); ``scanned`` stays with the whole."""
        if not isinstance(sl, slice):
            raise TypeError("a SnapshotChunk is sliced, not indexed")
        return SnapshotChunk(self.partition, self.keys[sl], self.versions[sl], self.offsets[sl], self.values[sl],
                             self.partial[sl])

    def in_offset_order(self) -> "SnapshotChunk":
        order = sorted(range(len(self.keys)), key=self.offsets.__getitem__)
        return SnapshotChunk(self.partition, [self.keys[i] for i in order], [self.versions[i] for i in order],
                             [self.offsets[i] for i in order], [self.values[i] for i in order],
                             [self.partial[i] for i in order], self.scanned)

    @classmethod
    def from_entries(cls, entries, partition: int, scanned: int = 0) -> "SnapshotChunk":
        """From SnapshotEntry objects (scan_range's, latest_per_key's), in offset order."""
        es = sorted(entries, key=lambda e: e.offset)
        return cls(partition, [e.key for e in es], [e.version for e in es], [e.offset for e in es],
                   [e.value for e in es], [e.partial for e in es], scanned)

    def as_entries(self) -> dict[str, SnapshotEntry]:
        return {k: SnapshotEntry(k, v, o, val, p) for k, v, o, val, p in
                zip(self.keys, self.versions, self.offsets, self.values, self.partial)}


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


# ---- reading the snapshot ----------------------------------------------------------------------
def plan_ranges(consumer, topic: str, partitions: list[int], since: dict[int, int] | None = None) -> list[PartitionRange]:
    """One range per partition, from ``since`` (or the beginning) to the end offsets now."""
    from nearline import kafka_io

    tps = [kafka_io.TopicPartition(topic, p) for p in partitions]
    ends = kafka_io.end_offsets(consumer, tps)
    begins = consumer.beginning_offsets(tps, timeout_ms=10_000)
    out = []
    for tp in tps:
        start = max(begins[tp], (since or {}).get(tp.partition, 0))
        out.append(PartitionRange(topic, tp.partition, start, ends[tp]))
    return out


def scan_range(consumer, rng: PartitionRange, codec: Codec | None = None) -> tuple[dict[str, SnapshotEntry], int]:
    """Read [start, end) of one partition; the newest entry per entity and the number of records read."""
    from nearline import kafka_io

    if rng.size == 0:
        return {}, 0
    tp = kafka_io.TopicPartition(rng.topic, rng.partition)
    consumer.assign([tp])
    consumer.seek(tp, rng.start)
    entries: dict[str, SnapshotEntry] = {}
    scanned = 0
    idle_deadline = time.monotonic() + 60
    while consumer.position(tp) < rng.end:
        recs = [r for r in consumer.poll(timeout_ms=500, max_records=5000).get(tp, []) if r.offset < rng.end]
        if not recs:
            if time.monotonic() > idle_deadline:
                raise BackfillError(f"snapshot {rng.topic}[{rng.partition}] stopped at offset {consumer.position(tp)} "
                                    f"before {rng.end}: is the broker up?")
            continue
        idle_deadline = time.monotonic() + 60
        scanned += keep_newest(entries, recs, codec)
    return entries, scanned


def keep_newest(entries: dict[str, "SnapshotEntry"], recs: list, codec: Codec | None) -> int:
    """Fold a chunk of snapshot records into ``entries`` (newest version per entity wins, a later record
    of an equal version too); returns how many records the chunk had."""
    part, n = latest_per_key(recs, codec)
    for k, e in part.items():
        cur = entries.get(k)
        if cur is None or e.version >= cur.version:
            entries[k] = e
    return n


class RangeReader:
    """Reads partition ranges of the snapshot topic with librdkafka (confluent-kafka): the scan is the
    backfill's first stage, and kafka-python's per-record Python (record unpacking, a ConsumerRecord per
    record) cost about as much as the scoring. No group: offsets are assigned, nothing is committed."""

    def __init__(self, bootstrap: str, fetch_bytes: int = 8 << 20):
        from confluent_kafka import Consumer

        from nearline import kafka_io

        conf = {"bootstrap.servers": bootstrap, "group.id": "nearline-backfill-scan", "enable.auto.commit": False,
                "enable.auto.offset.store": False, "enable.partition.eof": True,
                "max.partition.fetch.bytes": fetch_bytes, "fetch.max.bytes": 4 * fetch_bytes,
                "fetch.wait.max.ms": 50}
        conf.update(rdkafka_security(kafka_io._with_security({})))
        self._c = Consumer(conf, logger=log)

    def scan(self, rng: PartitionRange, codec: Codec | None = None) -> SnapshotChunk:
        """The newest entry per entity of [start, end) (highest version; of equal versions the later
        offset, as :func:`nearline.snapshot.latest_per_key`), in offset order, with the records read."""
        from confluent_kafka import KafkaError, TopicPartition

        out = SnapshotChunk(rng.partition)
        if rng.size == 0:
            return out
        keys, versions, offsets, values, partial = out.keys, out.versions, out.offsets, out.values, out.partial
        where: dict[bytes, int] = {}  # key -> its position in the columns
        self._c.assign([TopicPartition(rng.topic, rng.partition, rng.start)])
        pos, end = rng.start, rng.end
        idle_deadline = time.monotonic() + 60
        try:
            while pos < end:
                # consume() waits until it has num_messages or the timeout: never ask for more than is left
                msgs = self._c.consume(max(1, min(10_000, end - pos)), timeout=0.2)
                # attribute by attribute in comprehensions: a per-record loop with branches cost ~2x
                if any(m.error() is not None for m in msgs):
                    for m in msgs:
                        err = m.error()
                        if err is not None and err.code() != KafkaError._PARTITION_EOF:
                            raise BackfillError(f"reading snapshot {rng.topic}[{rng.partition}]: {err}")
                        if err is not None:
                            pos = max(pos, m.offset())
                    msgs = [m for m in msgs if m.error() is None]
                offs = [m.offset() for m in msgs]
                if offs:
                    pos = max(pos, offs[-1] + 1)
                    if offs[-1] >= end:
                        msgs = [m for m, o in zip(msgs, offs) if o < end]
                        offs = offs[:len(msgs)]
                got = len(msgs)
                hdrs = [m.headers() for m in msgs]
                # the job writes [version, partial] in that order; anything else takes the general path
                vers = [int(h[0][1]) if h and h[0][0] == VERSION_HEADER else None for h in hdrs]
                parts = [h[1][1] == b"1" if h and len(h) > 1 and h[1][0] == PARTIAL_HEADER else None for h in hdrs]
                for m, off, v, p, h in zip(msgs, offs, vers, parts, hdrs):
                    key = m.key()
                    if key is None:
                        continue
                    value = m.value()
                    if v is None or p is None:
                        v, p = record_version(h, value, codec), header_partial(h)
                        if v is None:
                            continue  # a tombstone without a version cannot be ordered
                    i = where.get(key)
                    if i is None:
                        where[key] = len(keys)
                        keys.append(key.decode())
                        versions.append(v), offsets.append(off), values.append(value), partial.append(p)
                    elif v >= versions[i]:
                        versions[i], offsets[i], values[i], partial[i] = v, off, value, p
                out.scanned += got
                if not got:
                    if pos >= end:
                        break
                    if time.monotonic() > idle_deadline:
                        raise BackfillError(f"snapshot {rng.topic}[{rng.partition}] stopped at offset {pos} before "
                                            f"{end}: is the broker up?")
                    continue
                idle_deadline = time.monotonic() + 60
        finally:
            self._c.unassign()
        return out.in_offset_order()

    def close(self) -> None:
        self._c.close()


def batches_with_progress(rows: list, batch_size: int, span: int):
    """Split ``rows`` into batches and share the range's offset span between them (integers summing to
    span), so the progress bar moves as batches are written."""
    n = len(rows)
    if n == 0:
        if span:
            yield rows[0:0], span
        return
    done = 0
    for i in range(0, n, batch_size):
        upto = span * min(n, i + batch_size) // n
        yield rows[i:i + batch_size], upto - done
        done = upto


# ---- scoring and writing -----------------------------------------------------------------------
@dataclass
class PreparedBatch:
    """A batch scored and decided, not yet written (BackfillStage.prepare -> BackfillStage.commit)."""

    chunk: SnapshotChunk
    counts: BackfillCounts
    types: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    upserts: list[tuple] = field(default_factory=list)   # (type, id, version, {model key: bytes}, partial)
    written: list[int] = field(default_factory=list)     # the chunk row of each upsert
    dead: list[tuple[int, str]] = field(default_factory=list)   # (chunk row, reason) to dead-letter
    deletes: list[tuple[str, str, int]] = field(default_factory=list)
    dry_run: bool = False


class BackfillStage:
    """One batch of snapshot entries (a SnapshotChunk) -> Kafka + Redis, version-guarded. ``models`` is a
    loaded ModelSet; ``chosen`` the model keys to backfill (every registered one for a rebuild).

    Column-wise where it pays: the records that are scored are decoded together
    (nearline/snapshot_columns.py), their tensors built by the job's own vectorised builder and scored
    by the job's ModelSet.score_columns, one onnxruntime call per model and entity type; the per-entity
    Python left is the version guard's decision and the message bytes."""

    def __init__(self, cfg, store, producer, models, chosen: set[str], *, rescore: bool = False,
                 dry_run: bool = False, codec: Codec | None = None, before_write=None):
        from nearline.embedding_messages import state_encoder

        self.cfg, self.store, self.producer, self.models = cfg, store, producer, models
        self.chosen, self.rescore, self.dry_run = set(chosen), rescore, dry_run
        self.codec = codec or codec_for(cfg)
        self.encoder = state_encoder(self.codec)
        self.before_write = before_write  # test hook: called between the Redis read and the writes
        self.by_type: dict[str, list[str]] = {}
        for k, m in sorted(models.models.items()):
            self.by_type.setdefault(m.package.manifest.entity_type, []).append(k)
        self.chosen_by_type = {t: [k for k in ks if k in self.chosen] for t, ks in self.by_type.items()}

    def _lacking(self, key: str, cols, rows: list[int]) -> dict[int, str]:
        """Rows (positions in ``cols``) whose snapshot cannot feed version ``key``: it needs a standardizer
        no earlier version needed, so the snapshot's join did not wait for it and the feature may be
        absent; scoring with defaults would be wrong, not partial. -> {position: reason}."""
        man = self.models.models[key].package.manifest
        out: dict[int, str] = {}
        for f in man.inputs:
            for local in np.flatnonzero(~cols.features.column(f.name).present[rows]):
                pos = rows[local]
                if pos not in out and f.standardizer not in cols.missing[pos]:
                    out[pos] = (f"snapshot of {cols.entity_type[pos]}:{cols.entity_id[pos]} version {cols.version[pos]} "
                                f"has no {f.name!r} (standardizer {f.standardizer}); its next update scores {key}")
        return out

    def run(self, chunk: SnapshotChunk) -> BackfillCounts:
        """Read, score, write and publish one batch."""
        return self.commit(self.prepare(chunk))

    def prepare(self, chunk: SnapshotChunk) -> "PreparedBatch":
        """The batch's Redis read, decisions and scoring, up to the writes (:meth:`commit`). Split so that
        a caller can score the next batch while this one is written (entities of different batches of
        one pass are distinct: the newest entry per entity, one partition per entity)."""
        from nearline.snapshot_columns import decode_snapshots

        n = len(chunk)
        c = BackfillCounts(entities=n)
        keys, versions, values = chunk.keys, chunk.versions, chunk.values
        types, ids = [], []
        for k in keys:
            t, _, i = k.partition(":")
            types.append(t)
            ids.append(i)
        live = [j for j in range(n) if values[j] is None or types[j] in self.by_type]
        dead: list[tuple[int, str]] = []
        partial = list(chunk.partial)
        undecided = [j for j in live if values[j] is not None and partial[j] is None]
        if undecided:  # no 'partial' header (not written by this job): decode to decide
            pre = decode_snapshots([values[j] for j in undecided], self.codec)
            for pos, j in enumerate(undecided):
                partial[j] = bool(pre.partial[pos]) if pos not in pre.errors else False
        if not live:
            return PreparedBatch(chunk, c, dry_run=self.dry_run)
        reads = self._read(live, types, ids)
        need_by_row: dict[int, list[str]] = {}
        deletes = []
        for j, (sv, sp, sf) in zip(live, reads):
            if values[j] is None:
                if sv is None or sv < versions[j]:
                    deletes.append((types[j], ids[j], versions[j]))
                continue
            chosen = self.chosen_by_type[types[j]]
            if not chosen:
                continue
            v, p = versions[j], partial[j]
            if sv is not None and (sv > v or (sv == v and p and not sp)):
                c.skipped_newer += len(chosen)
                continue
            if sv is None:
                need = chosen  # no hash (a wiped Redis): --models writes only what was asked, --all rebuilds all
            elif sp and not p:
                need = self.by_type[types[j]]  # a complete snapshot over a partial hash: the write clears _partial for all
            elif sv < v:
                # the job deduped this version entirely (an irrelevant update leaves _v behind) or its Redis
                # write is in flight: the other versions are valid at this version; score the chosen ones
                need = chosen
            else:
                need = [k for k in chosen if self.rescore or sf.get(k) is None]
                c.deduped += len(chosen) - len(need)
            if need:
                need_by_row[j] = need
        scored = list(need_by_row)
        cols = decode_snapshots([values[j] for j in scored], self.codec) if scored else None
        pos_of = {j: pos for pos, j in enumerate(scored)}
        groups: dict[tuple[str, tuple[str, ...]], list[int]] = {}  # (type, versions) -> positions in cols
        for j in scored:
            pos = pos_of[j]
            if pos in cols.errors:
                dead.append((j, f"snapshot record of {keys[j]} undecodable: {cols.errors[pos]}"))
                c.failed += len(need_by_row[j])
                continue
            groups.setdefault((types[j], tuple(need_by_row[j])), []).append(pos)
        scoring: dict[tuple[str, tuple[str, ...]], list[int]] = {}
        for (etype, ks), poss in groups.items():
            lacking: dict[int, list[str]] = {}
            for k in ks:
                for pos, why in self._lacking(k, cols, poss).items():
                    lacking.setdefault(pos, []).append(k)
                    dead.append((scored[pos], f"{k}: {why}"))
                    c.failed += 1
            if not lacking:
                scoring[(etype, ks)] = poss
                continue
            for pos in poss:
                ok = tuple(k for k in ks if k not in lacking.get(pos, ()))
                if ok:
                    scoring.setdefault((etype, ok), []).append(pos)
        if self.dry_run:
            c.would_score = sum(len(ks) * len(poss) for (_, ks), poss in scoring.items())
            c.tombstones = len(deletes)
            return PreparedBatch(chunk, c, dry_run=True)
        emb: dict[int, dict[str, bytes]] = {}  # row -> model key -> float32 bytes
        for (etype, ks), poss in scoring.items():
            scores, bad = self.models.score_columns(etype, cols.take(poss).features, list(ks))
            off = [k for k in ks if k not in scores]
            if off:  # disabled by ModelSet after failing on every row of several batches (dead-lettered then)
                c.failed += len(off) * len(poss)
                log.error("backfill: %s disabled (it failed on every row of %d batches in a row): %d entities of this "
                          "batch not backfilled; fix the package, then rerun `nearline backfill --models %s`",
                          ", ".join(off), self.models.disable_after, len(poss), " ".join(off))
                ks = tuple(k for k in ks if k in scores)
            for local, err in bad.items():
                c.failed += len(ks)
                dead.append((scored[poss[local]], err))
            # one tobytes per model and batch, sliced per entity (the same bytes as per-row tobytes)
            flat = [(k, np.ascontiguousarray(scores[k], dtype="<f4").tobytes(), scores[k].shape[1] * 4) for k in ks]
            for local, pos in enumerate(poss):
                if local not in bad and flat:
                    emb[scored[pos]] = {k: b[local * w:(local + 1) * w] for k, b, w in flat}
        tol = self.cfg.dedupe.tolerance
        read_of = dict(zip(live, reads))
        upserts, written = [], []
        for j, vecs in emb.items():
            sv, sp, sf = read_of[j]
            if sv is None:
                changed = vecs  # nothing stored: every vector is new (what decide() answers, without its loop)
            else:
                d = decide(sv, sf, versions[j], vecs, tol, partial=partial[j], stored_partial=sp)  # the job's rule
                if d.stale:
                    c.skipped_newer += len(vecs)
                    continue
                c.deduped += d.unchanged
                changed = d.changed
                if not changed:
                    continue  # nothing changed: no write, no message
            upserts.append((types[j], ids[j], versions[j], changed, partial[j]))
            written.append(j)
        return PreparedBatch(chunk, c, types, ids, upserts, written, dead, deletes)

    def commit(self, b: "PreparedBatch") -> BackfillCounts:
        """Write a prepared batch: Redis (version-guarded, into the outbox), then its full states and dead
        letters to Kafka (acknowledged), then out of the outbox; tombstones last. Returns its counts."""
        c = b.counts
        if b.dry_run:
            return c
        chunk, types, ids, upserts, written, dead = b.chunk, b.types, b.ids, b.upserts, b.written, b.dead
        keys, versions, values = chunk.keys, chunk.versions, chunk.values
        if self.before_write is not None:
            self.before_write(chunk, upserts)
        # 1. Redis, the job's version guard, many entities per call; each applied write returns the
        #    entity's whole hash, and its key joins the outbox in the same call (see publish_outbox)
        states = self.store.write_state_many(upserts, outbox_key(self.cfg.redis.key_prefix)) if upserts else []
        sends, published = [], []
        now_ms = int(time.time() * 1000)
        topic = self.cfg.topics.embeddings
        for j, up, state in zip(written, upserts, states):
            if state is None:
                c.skipped_newer += len(up[3])  # the job wrote a newer version between our read and our write
                continue
            c.written += len(up[3])
            c.entities_written += 1
            reg = self.by_type[types[j]]
            value = self.encoder.encode(types[j], ids[j], versions[j], {k: state[k] for k in reg if k in state}, up[3],
                                        now_ms, PARTIAL_FIELD in state)
            sends.append((topic, keys[j].encode(), value, [(VERSION_HEADER, str(versions[j]).encode())]))
            published.append(self.store.key(types[j], ids[j]))
        for j, err in dead:
            sends.append((self.cfg.topics.dead_letter, keys[j].encode(), encode_dead_letter(
                self.codec, original=values[j] or b"", key=keys[j].encode(), topic=self.cfg.topics.feature_snapshot,
                partition=chunk.partition, offset=chunk.offsets[j], stage="nearline.backfill", error=err)))
            log.warning("backfill dead letter: %s", err)
        self._send_all(sends)                               # 2. Kafka: full state, acknowledged
        if published:                                       # 3. published: out of the outbox
            self.store._retrying("outbox", lambda: self.store.r.srem(outbox_key(self.cfg.redis.key_prefix), *published))
        if b.deletes:
            c.tombstones += sum(self.store.write([], b.deletes))
        return c

    def _read(self, rows: list[int], types: list[str], ids: list[str]) -> list[tuple]:
        """The stored (version, partial, fields) of each row's entity: one script call per entity type."""
        out: list = [None] * len(rows)
        by_type: dict[str, list[int]] = {}
        for pos, j in enumerate(rows):
            by_type.setdefault(types[j], []).append(pos)
        for etype, poss in by_type.items():
            res = self.store.read_many([(etype, ids[rows[p]]) for p in poss], self.by_type.get(etype, []))
            for p, x in zip(poss, res):
                out[p] = x
        return out

    def _send_all(self, sends) -> None:
        if not sends:
            return
        if hasattr(self.producer, "send_batch"):  # BatchProducer
            retry_until_done(f"publishing {len(sends)} backfill records", lambda: self.producer.send_batch(sends), log)
            return

        def send():
            futs = [self.producer.send(s[0], key=s[1], value=s[2], headers=s[3] if len(s) > 3 else None) for s in sends]
            self.producer.flush(timeout=30)
            for f in futs:
                f.get(timeout=30)

        retry_until_done(f"publishing {len(sends)} backfill records", send, log)


def run_range(reader: "RangeReader", stage: BackfillStage, progress: "RunProgress", rng: PartitionRange,
              batch_size: int, codec: Codec | None = None) -> None:
    """One partition range: scan it, then batch by batch prepare (Redis read, score) while the batch before
    is committed (Redis write, Kafka send) on a second thread, at most one batch ahead: onnxruntime,
    Redis and the broker's acknowledgements wait without the GIL, so scoring the next batch overlaps the
    writes of this one. Counters go to ``progress`` as each batch is committed. A commit's error is
    raised here, after the commit in flight finished; nothing later is committed."""
    from concurrent.futures import ThreadPoolExecutor

    chunk = reader.scan(rng, codec)
    scanned = chunk.scanned

    def commit(prepared: PreparedBatch, share: int, scanned: int) -> None:
        counts = stage.commit(prepared)
        counts.progress, counts.scanned = share, scanned
        progress.add(counts)

    with ThreadPoolExecutor(1, thread_name_prefix="backfill-commit") as pool:
        in_flight = None
        for batch, share in batches_with_progress(chunk, batch_size, rng.size):
            prepared = stage.prepare(batch)
            if in_flight is not None:
                in_flight.result()
            in_flight = pool.submit(commit, prepared, share, scanned)
            scanned = 0
        if in_flight is not None:
            in_flight.result()


# ---- the backfill's producer ---------------------------------------------------------------------
# kafka-python setting -> librdkafka property (the same TLS/SASL settings as every other client)
_RDKAFKA_SECURITY = {"security_protocol": "security.protocol", "sasl_mechanism": "sasl.mechanisms",
                     "sasl_plain_username": "sasl.username", "sasl_plain_password": "sasl.password",
                     "ssl_cafile": "ssl.ca.location", "ssl_certfile": "ssl.certificate.location",
                     "ssl_keyfile": "ssl.key.location"}


def rdkafka_security(kafka_python_kw: dict) -> dict:
    """librdkafka properties for the security keyword arguments of nearline.kafka_io (configure_security)."""
    out = {}
    for k, v in kafka_python_kw.items():
        if k == "ssl_check_hostname":
            out["ssl.endpoint.identification.algorithm"] = "https" if v else "none"
        elif k in _RDKAFKA_SECURITY:
            out[_RDKAFKA_SECURITY[k]] = v
        else:
            raise BackfillError(f"Kafka security setting {k} has no librdkafka equivalent here")
    return out


class BatchProducer:
    """The backfill's Kafka producer: librdkafka (confluent-kafka), one acknowledged flush per batch.

    Why not kafka-python's KafkaProducer (the job's): the profile of a rebuild spent 30% of its time in
    kafka-python's per-record Python (partitioner, accumulator, a socket wakeup per send); librdkafka
    does that in C. The send contract is the job's: acks=all, every record of a batch acknowledged
    before the batch's Redis effects count as published, the same TLS/SASL settings
    (kafka_io.configure_security), retried with backoff on transient errors, a record the broker
    refuses as too large is permanent. Idempotence is on: librdkafka keeps per-partition order and
    drops retry duplicates (kafka-python's idempotent producer is what the job avoids, not this one)."""

    def __init__(self, bootstrap: str, linger_ms: int = 20, batch_bytes: int = 1 << 20):
        from confluent_kafka import Producer

        from nearline import kafka_io

        # murmur2_random: the Java client's (and kafka-python's) partitioner, so an entity's messages land
        # in the partition the job's do (librdkafka's default, CRC32, would split a key over two
        # partitions: no order between them, and compaction would keep both)
        conf = {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "partitioner": "murmur2_random",
                "linger.ms": linger_ms, "batch.size": batch_bytes, "compression.type": "none",
                "message.timeout.ms": 30_000, "queue.buffering.max.messages": 500_000,
                "queue.buffering.max.kbytes": 512 << 10, "delivery.report.only.error": True}
        conf.update(rdkafka_security(kafka_io._with_security({})))
        self._p = Producer(conf, logger=log)  # librdkafka's log lines through logging, not raw stderr

    def send_batch(self, sends) -> None:
        """Send (topic, key, value[, headers]) records and wait until the broker acknowledged all of them;
        raises if any failed (the caller retries the batch: a duplicate is harmless, a loss is not)."""
        from confluent_kafka import KafkaError, KafkaException

        from nearline.lifecycle import PermanentError

        failed: list = []

        def report(err, msg):  # called for failures only (delivery.report.only.error)
            failed.append(err)

        for s in sends:
            topic, key, value = s[0], s[1], s[2]
            headers = s[3] if len(s) > 3 else None
            while True:
                try:
                    self._p.produce(topic, value, key, headers=headers, on_delivery=report)
                    break
                except BufferError:  # local queue full: let librdkafka drain it
                    self._p.poll(0.05)
                except KafkaException as exc:
                    if exc.args and exc.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                        raise PermanentError(f"record for {topic} too large: {exc}") from exc
                    raise
        left = self._p.flush(60)
        if left or failed:
            err = failed[0] if failed else f"{left} records unacknowledged after 60 s"
            if failed and failed[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                raise PermanentError(f"the broker refused a record as too large: {err}")
            raise RuntimeError(f"{len(failed) or left} of {len(sends)} records not acknowledged: {err}")

    def close(self, timeout: float = 10) -> None:
        self._p.flush(timeout)


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


def requests_key(prefix: str) -> str:
    """Hash of model versions whose backfill was requested and has not completed (model key -> time)."""
    return f"{prefix}:backfill:requested"


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


# ---- the driver --------------------------------------------------------------------------------
@dataclass
class BackfillResult:
    models: list[str]
    counts: BackfillCounts
    passes: int
    seconds: float
    dry_run: bool
    ranges: list[list[int]] = field(default_factory=list)

    def summary_line(self) -> str:
        c = self.counts
        head = "dry run: " if self.dry_run else ""
        rate = c.entities / self.seconds if self.seconds else 0.0
        s = (f"{head}backfill of {', '.join(self.models)}: scanned {c.scanned} snapshot records, {c.entities} entities "
             f"in {self.passes} pass(es), {self.seconds:.1f}s ({rate:,.0f} entities/s); ")
        if self.dry_run:
            return s + f"would score {c.would_score}, deduped {c.deduped}, skipped as newer {c.skipped_newer}, " \
                       f"failed {c.failed}, tombstones to restore {c.tombstones}"
        return s + (f"written {c.written} ({c.entities_written} entities), skipped as newer {c.skipped_newer}, "
                    f"deduped {c.deduped}, failed {c.failed}, tombstones restored {c.tombstones}")


def resolve_models(cfg, models: list[str] | None, all_models: bool):
    """(valid registered keys, chosen keys). Unknown or broken versions are a BackfillError naming them."""
    from nearline.registry import Registry

    if not all_models and not models:
        raise BackfillError("name the versions to backfill (--models NAME@VERSION ...) or use --all")
    reg = Registry(cfg.path(cfg.models.registry))
    try:
        good, bad = reg.load(cfg.entity_types)
    except Exception as exc:
        raise BackfillError(f"registry {reg.path} unreadable: {exc}") from None
    for entry, problems in bad.items():
        log.warning("registered package %s is broken and not backfilled: %s", entry, "; ".join(problems))
    registered = sorted(p.manifest.key for p in good)
    if all_models:
        chosen = registered
    else:
        unknown = [m for m in models if m not in registered]
        if unknown:
            raise BackfillError(f"not registered (or broken): {', '.join(unknown)}; registered: {', '.join(registered) or 'none'} "
                                f"(register with `nearline models register PATH`)")
        chosen = list(dict.fromkeys(models))
    if not chosen:
        raise BackfillError(f"no valid model version is registered in {reg.path}")
    return registered, chosen


def run_backfill(cfg, bootstrap: str, redis_url: str, *, models: list[str] | None = None, all_models: bool = False,
                 dry_run: bool = False, rescore: bool = False, batch_size: int = 1024, max_passes: int = 5,
                 beam_args: list[str] | None = None, progress: bool = True, run_id: str | None = None,
                 after_pass=None) -> BackfillResult:
    """``after_pass(n)``: called after pass n (tests use it to let the job write meanwhile)."""
    from nearline import kafka_io
    from nearline.store import RedisEmbeddingStore

    _, chosen = resolve_models(cfg, models, all_models)  # workers load the sessions; this validates the choice
    topic = cfg.topics.feature_snapshot
    if not topic:
        raise BackfillError("topics.feature_snapshot is empty in the config: the job writes no feature snapshot to backfill from")
    store = RedisEmbeddingStore(redis_url, cfg.redis.key_prefix)
    consumer = kafka_io.make_consumer(bootstrap, None)
    keeper = None
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise BackfillError(f"feature snapshot topic {topic!r} does not exist on {bootstrap}: the nearline job "
                                f"creates and fills it (`nearline run`)")
        parts = sorted(parts)
        run_id = run_id or uuid.uuid4().hex[:12]
        prog = RunProgress(store.r, f"{cfg.redis.key_prefix}:backfill:run:{run_id}")
        if not dry_run:
            from nearline.model_lifecycle import LeaseKeeper

            # durable request (cleared on completion: a job restarted after a crash relaunches it) + lease
            pipe = store.r.pipeline(transaction=False)
            for k in chosen:
                pipe.hsetnx(requests_key(cfg.redis.key_prefix), k, json.dumps({"at": time.time(), "by": run_id}))
            pipe.execute()
            owner = os.environ.get("NEARLINE_BACKFILL_OWNER") or f"backfill-{run_id}"
            keeper = LeaseKeeper(store.r, cfg.redis.key_prefix, chosen, owner).__enter__()
            if store.r.scard(outbox_key(cfg.redis.key_prefix)):  # a run died between Redis and Kafka
                producer = BatchProducer(bootstrap)
                try:
                    publish_outbox(cfg, store, producer)
                finally:
                    producer.close()
        since: dict[int, int] = {}
        t0 = time.monotonic()
        passes = 0
        all_ranges = []
        while passes < max_passes:
            ranges = [r for r in plan_ranges(consumer, topic, parts, since) if r.size > 0]
            if not ranges:
                break
            passes += 1
            all_ranges += [[r.partition, r.start, r.end] for r in ranges]
            before = prog.read()
            # catch-up passes rescore: an entity the job rewrote meanwhile may hold the field from an older
            # version (a job that had not loaded the version yet keeps fields it does not write)
            _run_pass(cfg, bootstrap, redis_url, ranges, chosen, prog, dry_run=dry_run, rescore=rescore or passes > 1,
                      batch_size=batch_size, beam_args=beam_args, progress=progress, label=f"pass {passes}")
            after = prog.read()
            for r in ranges:
                since[r.partition] = r.end
            if after_pass is not None:
                after_pass(passes)
            log.info("backfill pass %d: %s", passes, {k: v - getattr(before, k) for k, v in after.as_dict().items()})
            if dry_run or after.written == before.written:
                break  # converged: the records appended during this pass needed nothing
        total = prog.read()
    finally:
        consumer.close(autocommit=False)
        if keeper is not None:
            keeper.__exit__(None, None, None)
    result = BackfillResult(chosen, total, passes, time.monotonic() - t0, dry_run, all_ranges)
    if not dry_run:
        pipe = store.r.pipeline(transaction=False)
        for k in chosen:
            pipe.hset(done_key(cfg.redis.key_prefix), k, json.dumps({"at": time.time(), "run": run_id, **total.as_dict()}))
            pipe.hdel(requests_key(cfg.redis.key_prefix), k)
        pipe.execute()
    return result


def _run_pass(cfg, bootstrap, redis_url, ranges, chosen, prog: RunProgress, *, dry_run, rescore, batch_size,
              beam_args, progress: bool, label: str) -> None:
    from nearline.beam_jobs import backfill_job

    total = sum(r.size for r in ranges)
    done = threading.Event()
    bar_thread = None
    if progress:
        start = prog.read()

        def show():
            from tqdm import tqdm

            with tqdm(total=total, desc=f"backfill {label}", unit="rec", smoothing=0.1, mininterval=0.5) as bar:
                last = 0
                while True:
                    finished = done.wait(0.5)
                    cur = prog.read()
                    p = cur.progress - start.progress
                    bar.update(max(0, min(total, p) - last))
                    last = max(last, min(total, p))
                    bar.set_postfix(written=cur.written - start.written, newer=cur.skipped_newer - start.skipped_newer,
                                    deduped=cur.deduped - start.deduped, failed=cur.failed - start.failed, refresh=False)
                    if finished:
                        return

        bar_thread = threading.Thread(target=show, daemon=True, name="backfill-progress")
        bar_thread.start()
    try:
        backfill_job.run(cfg, bootstrap, redis_url, ranges, chosen, prog.key, dry_run=dry_run, rescore=rescore,
                         batch_size=batch_size, beam_args=beam_args)
    finally:
        done.set()
        if bar_thread:
            bar_thread.join(timeout=5)
