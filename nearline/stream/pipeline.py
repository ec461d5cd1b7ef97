"""The stages of the nearline job as plain Python, one batch of input records at a time.

Beam DoFns in beam_jobs/ are thin wrappers around these classes; tests drive them directly too.

    JoinStage     decode + validate + StandardizationJoin; decides which offsets become committable
    ScoreStage    every registered tower for the entity type, one ORT call per model per batch
    PublishStage  dedupe against Redis -> full-state EntityEmbeddings / null tombstones / dead letters to
                  Kafka (acked) -> version-guarded Redis writes (pipelined across entities)
    CommitStage   commit the input offsets computed by JoinStage, now that their effects are written

Order of effects: Kafka first, then Redis, then the offset commit. A crash between any two re-reads
the input from the committed offsets; dedupe then finds Redis not yet updated and publishes again, so
a consumer may see a message twice (keep the highest version) but never misses one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Hashable

import numpy as np

from nearline.config import Config
from nearline.core.lifecycle import retry_until_done
from nearline.core.metrics import METRICS, Metrics
from nearline.core.validate import (
    Limits,
    Rejected,
    check_features,
    check_identity,
    check_key,
    check_size,
    check_update,
    reason_of,
)
from nearline.io.codec import Codec, CodecError, codec_for
from nearline.io.deadletter import encode_dead_letter, reference_only
from nearline.io.delivery import send_acknowledged
from nearline.io.embedding_messages import full_state_record, full_state_send
from nearline.io.embedding_messages import tombstone_send as embedding_tombstone_send
from nearline.io.offsets import OffsetTracker
from nearline.io.snapshot import snapshot_send, tombstone_send
from nearline.io.store import DataLossDetector
from nearline.stream.dedupe import decide
from nearline.stream.join import Deleted, JoinDeadLetter, Joined, RawRef, ReplayTimeout, StandardizationJoin
from nearline.stream.ordering import BatchSequencer

log = logging.getLogger(__name__)


@dataclass
class KafkaRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    replayed: bool = False  # at or below the highest offset a previous run had read (nearline.store.ReadMarks)


@dataclass
class RecordBatch:
    """One poll of one partition group. ``polled_at`` (wall-clock seconds) is the join's notion of now,
    so the join is a deterministic function of its input (replays and TestStream tests)."""

    records: list[KafkaRecord]
    polled_at: float
    # which reader of the group polled it (the ownership epoch: a new one after a start or a reassignment)
    # and its place in that reader's sequence: the join takes a group's batches in this order
    # (nearline.stream.ordering), whatever order a runner delivers them in
    epoch: int = 0
    seq: int = 0
    # the reader is past the read marks of the group's EntityUpdate partitions: every update the previous run
    # had read has been re-read (StandardizationJoin.on_updates_replayed)
    updates_replayed: bool = False


@dataclass
class DeadLetterOut:
    raw: RawRef
    stage: str
    error: str
    reason: str = "other"  # a nearline.validate.REASONS key (dead_letters_<reason> counts it)


@dataclass
class WorkBatch:
    group: Hashable
    joined: list[Joined] = field(default_factory=list)
    deleted: list[Deleted] = field(default_factory=list)
    dead_letters: list[DeadLetterOut] = field(default_factory=list)
    embeddings: list[dict[str, bytes]] = field(default_factory=list)  # aligned with joined
    # entity type -> every registered model key (disabled ones too): the fields an entity's full state
    # is read from Redis with (None: only the keys scored in this batch)
    model_keys: dict[str, list[str]] | None = None
    replay_timeouts: list[ReplayTimeout] = field(default_factory=list)
    commit: dict[tuple[str, int], int] = field(default_factory=dict)


@dataclass
class PartitionGroupState:
    """Everything the job remembers for one partition group (lives in Beam state)."""

    join: StandardizationJoin
    tracker: OffsetTracker
    sequencer: BatchSequencer = field(default_factory=BatchSequencer)


class JoinStage:
    def __init__(self, cfg: Config, codec: Codec | None = None, metrics: Metrics = METRICS):
        self.cfg, self.codec, self.metrics = cfg, codec or codec_for(cfg, retry_forever=True), metrics
        self.update_topics = set(cfg.update_topics())  # local + mirrored from peer DCs
        self.entity_types = set(cfg.entity_types)
        self.limits = Limits.from_config(cfg)
        from nearline.standardize.processors import PROCESSORS

        self.topic_processor = {cfg.standardized_topic(p): p for p in cfg.standardizers.processors}
        # the features each known processor produces (a custom processor's are not restricted)
        self.known_features = {p: set(PROCESSORS[p].features) for p in cfg.standardizers.processors if p in PROCESSORS}

    def new_state(self, required: dict[str, set[str]]) -> PartitionGroupState:
        j = self.cfg.join
        return PartitionGroupState(StandardizationJoin(required, timeout_s=j.timeout_s, policy=j.timeout_policy,
                                                       max_pending=j.max_pending, replay_timeout_s=j.replay_timeout_s,
                                                       stall_gap_s=j.stall_gap_s),
                                   OffsetTracker())

    def admit(self, rec: KafkaRecord, is_update: bool) -> dict:
        """Decode and validate one input record, cheapest checks first; raises Rejected with the reason."""
        lim = self.limits
        check_size(rec.value, lim)
        if rec.key is not None and len(rec.key) > lim.max_key_bytes:
            raise Rejected("bad_key", f"key is {len(rec.key)} bytes, limits.max_key_bytes is {lim.max_key_bytes}")
        try:
            msg = self.codec.decode(rec.value, expect="EntityUpdate" if is_update else "StandardizedFeatures")
        except CodecError as exc:
            raise Rejected("undecodable", str(exc)) from None
        if msg["entity_type"] not in self.entity_types:
            raise Rejected("unknown_entity_type", f"unknown entity type {msg['entity_type']!r}; known: "
                                                  f"{sorted(self.entity_types)}")
        if is_update:
            # the same checks as the standardizers': an update they refuse is refused here at once,
            # not held pending (with its bytes) until the join times out and scored with defaults
            check_update(msg, lim)
            check_key(rec.key, msg, rec.partition, self.cfg.topics.partitions)
            return msg
        check_identity(msg, lim)
        check_key(rec.key, msg, rec.partition, self.cfg.topics.partitions)
        proc = self.topic_processor.get(rec.topic)
        try:
            check_features(msg, lim, processor=proc,
                           known_features=self.known_features if proc in self.known_features else None)
        except Rejected as exc:
            # whose output it is, is known and sound: the join need not wait for it (StandardizationJoin.on_refused)
            if proc is not None and msg.get("processor") == proc:
                exc.refused_features = msg
            raise
        return msg

    def run_in_order(self, state: PartitionGroupState, group, batch: RecordBatch,
                     required: dict[str, set[str]]) -> tuple[PartitionGroupState, list[WorkBatch]]:
        """Offer ``batch`` to the group's sequencer and run every batch it releases, in poll order, whatever
        order the runner delivered them in. Returns the state to keep (a new one when the group came back to
        this instance: what it held then belongs to another reader) and the WorkBatches."""
        ready, new_reader = state.sequencer.offer(batch)
        if new_reader:
            fresh = self.new_state(required)
            fresh.sequencer = state.sequencer
            state = fresh
        return state, [self.run(state, group, b, required) for b in ready]

    def run(self, state: PartitionGroupState, group, batch: RecordBatch,
            required: dict[str, set[str]] | None = None) -> WorkBatch:
        records = batch.records
        wb = WorkBatch(group)
        join, tracker = state.join, state.tracker
        join.now_override = batch.polled_at
        before = dict(join.counters)
        outputs = []
        if required is not None and required != join.required:
            log.info("group %s: joins now wait for %s (was %s)", group,
                     {t: sorted(p) for t, p in required.items()}, {t: sorted(p) for t, p in join.required.items()})
            outputs += join.set_required(required)
        for rec in records:
            raw = RawRef(rec.topic, rec.partition, rec.offset, rec.key, rec.value, rec.replayed)
            tracker.read((rec.topic, rec.partition), rec.offset)
            is_update = rec.topic in self.update_topics
            try:
                msg = self.admit(rec, is_update)
            except Rejected as exc:
                stage = "nearline.decode" if exc.reason in ("oversize", "undecodable") else "nearline.validate"
                wb.dead_letters.append(DeadLetterOut(raw, stage, str(exc), exc.reason))
                refused = getattr(exc, "refused_features", None)
                if refused is not None:
                    outputs += join.on_refused(refused, raw)
                continue
            if not is_update and msg.get("refused"):
                # the standardizer refused this version (and dead-lettered the update): stop waiting for it
                outputs += join.on_refused(msg, raw)
                tracker.done((raw.topic, raw.partition), raw.offset)
                continue
            outputs += join.on_update(msg, raw) if is_update else join.on_features(msg, raw)
        if batch.updates_replayed:
            outputs += join.on_updates_replayed()
        outputs += join.on_tick()
        join.now_override = None
        for o in outputs:
            if isinstance(o, Joined):
                wb.joined.append(o)
            elif isinstance(o, Deleted):
                wb.deleted.append(o)
            elif isinstance(o, JoinDeadLetter):
                wb.dead_letters.append(DeadLetterOut(o.raw, "nearline.join", o.error, o.reason))
            elif isinstance(o, ReplayTimeout):
                wb.replay_timeouts.append(o)
            # Released: consumed, nothing to write
            for (tp, off) in o.sources:
                tracker.done(tp, off)
        for d in wb.dead_letters:
            if d.stage != "nearline.join":
                tracker.done((d.raw.topic, d.raw.partition), d.raw.offset)
        # Everything emitted above is written by the downstream stages of this same batch before
        # CommitStage commits; events still pending in the join hold their partitions back.
        wb.commit = tracker.committable()
        tracker.mark_committed(wb.commit)
        self.metrics.inc("events_read", len(records))
        for k, v in join.counters.items():
            self.metrics.inc(k, v - before.get(k, 0))
        self.metrics.set("pending_joins", len(join.pending), group=str(group))
        self.metrics.set("last_batch_timestamp_seconds", time.time())  # /readyz: the job is consuming
        return wb


class ScoreStage:
    def __init__(self, models, metrics: Metrics = METRICS):
        self.models, self.metrics = models, metrics

    def run(self, wb: WorkBatch) -> WorkBatch:
        self.models.refresh()
        wb.embeddings = [{} for _ in wb.joined]
        loaded = getattr(self.models, "models", None)
        if isinstance(loaded, dict):
            wb.model_keys = {}
            for key, m in loaded.items():
                wb.model_keys.setdefault(m.package.manifest.entity_type, []).append(key)
        by_type: dict[str, list[int]] = {}
        for i, j in enumerate(wb.joined):
            by_type.setdefault(j.entity_type, []).append(i)
        bad_rows: set[int] = set()
        for etype, idx in by_type.items():
            scores, bad = self.models.score(etype, [wb.joined[i].features for i in idx])
            for local, err in bad.items():
                i = idx[local]
                bad_rows.add(i)
                j = wb.joined[i]
                wb.dead_letters.append(DeadLetterOut(RawRef("(joined)", -1, -1, j.key.encode(), b""), "nearline.score",
                                                     f"{err} ({j.key} version {j.version})", reason_of(err)))
            for key, mat in scores.items():
                for local, i in enumerate(idx):
                    if i not in bad_rows:
                        wb.embeddings[i][key] = np.ascontiguousarray(mat[local], dtype="<f4").tobytes()
        if bad_rows:
            keep = [i for i in range(len(wb.joined)) if i not in bad_rows]
            wb.joined = [wb.joined[i] for i in keep]
            wb.embeddings = [wb.embeddings[i] for i in keep]
        self.metrics.inc("embeddings_computed", sum(len(e) for e in wb.embeddings))
        return wb


class PublishStage:
    def __init__(self, cfg: Config, store, producer, codec: Codec | None = None, metrics: Metrics = METRICS):
        self.cfg, self.store, self.producer = cfg, store, producer
        self.codec, self.metrics = codec or codec_for(cfg, retry_forever=True), metrics
        self.data_loss = DataLossDetector(store, metrics=metrics) if hasattr(store, "r") else None

    def run(self, wb: WorkBatch) -> WorkBatch:
        tol = self.cfg.dedupe.tolerance
        if self.data_loss is not None:
            self.data_loss.check()
        self._resolve_replay_timeouts(wb)
        # one Redis read per distinct entity; several versions of one entity can complete in the same
        # batch, so decisions are applied to this in-batch view and each version is compared with the
        # one before it, not with what Redis held before the batch
        keys = list(dict.fromkeys([(j.entity_type, j.entity_id) for j in wb.joined] +
                                  [(d.entity_type, d.entity_id) for d in wb.deleted]))
        # every registered version of the type, not only the ones scored: each message carries the
        # entity's full state (a disabled model's stored vector too), so compaction loses nothing
        registered = wb.model_keys or {}
        fields: dict[tuple[str, str], set[str]] = {k: set(registered.get(k[0], ())) for k in keys}
        for j, emb in zip(wb.joined, wb.embeddings):
            fields[(j.entity_type, j.entity_id)].update(emb)
        view = {k: [sv, sp, sf] for k, (sv, sp, sf) in zip(keys, self.store.read(keys, [sorted(fields[k]) for k in keys]))}
        now_ms = int(time.time() * 1000)
        upserts, deletes, sends, latencies = [], [], [], []
        owners: list[tuple[str, int | None]] = []  # per send: ("up"|"del", index in upserts/deletes or None)
        n_dedup = n_written = n_stale = n_unknown_deletes = 0
        # the feature snapshot (nearline/io/snapshot.py): every non-stale version's features, deduped or not,
        # so a backfill scores exactly the version Redis holds; sent with the batch, before the commit
        snap_topic, snapshots = self.cfg.topics.feature_snapshot, []
        for j, emb in zip(wb.joined, wb.embeddings):
            cur = view[(j.entity_type, j.entity_id)]
            sv, sp, sf = cur
            d = decide(sv, sf, j.version, emb, tol, partial=j.partial, stored_partial=sp)
            if d.stale:
                n_stale += len(emb)
                continue
            if snap_topic:
                snapshots.append(snapshot_send(snap_topic, j, self.codec, now_ms))
            n_dedup += d.unchanged
            if not d.changed:
                continue
            cur[0], cur[1] = j.version, j.partial
            cur[2] = {**sf, **d.changed}  # what the hash holds after this write (HSET keeps the other fields)
            n_written += len(d.changed)
            upserts.append((j.entity_type, j.entity_id, j.version, d.changed, j.partial))
            rec = full_state_record(j.entity_type, j.entity_id, j.version, cur[2], d.changed, now_ms, j.partial)
            sends.append(full_state_send(self.cfg.topics.embeddings, j.key, rec, self.codec))
            owners.append(("up", len(upserts) - 1))
            if j.last_produced_ms:
                latencies.append(now_ms - j.last_produced_ms)
        for dl in wb.deleted:
            cur = view[(dl.entity_type, dl.entity_id)]
            if cur[0] is None:
                # Redis holds nothing for it: the delete still leaves its marker (_v, _deleted), so that an
                # older upsert replayed later (a producer retry, a mirrored or re-read message) is refused by
                # the version guard and a re-read fragment of an older version resolves as superseded, and a
                # rebuild of an emptied Redis restores it like any other delete
                n_unknown_deletes += 1
            elif dl.version < cur[0]:
                n_stale += 1
                continue
            cur[0], cur[1], cur[2] = dl.version, False, {}
            deletes.append((dl.entity_type, dl.entity_id, dl.version))
            if snap_topic:
                snapshots.append(tombstone_send(snap_topic, dl.key, dl.version))
            sends.append(embedding_tombstone_send(self.cfg.topics.embeddings, dl.key, dl.version))
            owners.append(("del", len(deletes) - 1))
        n_msgs = len(sends)
        for d in wb.dead_letters:
            sends.append(self._dead_letter_send(d))
        n_msgs -= self._send_all(sends + snapshots, owners, upserts, deletes, wb)   # 1. Kafka (acknowledged)
        retries_before = self.store.retries
        self.store.write([u for u in upserts if u is not None],
                         [d for d in deletes if d is not None])        # 2. Redis, version-guarded
        m = self.metrics
        m.inc("embeddings_deduped", n_dedup)
        m.inc("embeddings_written", n_written)
        m.inc("embeddings_stale", n_stale)
        m.inc("messages_published", n_msgs)
        m.inc("snapshots_written", len(snapshots))
        m.inc("dead_letters", len(wb.dead_letters))
        for d in wb.dead_letters:
            m.inc(f"dead_letters_{d.reason}")
        m.inc("deletes_unknown_entity", n_unknown_deletes)
        m.inc("redis_retries", self.store.retries - retries_before)
        m.observe_latency(latencies)
        return wb

    def _resolve_replay_timeouts(self, wb: WorkBatch) -> None:
        """A timed-out join of replayed messages: released if its version is already written, else
        dead-lettered (it may have been processed with no write, e.g. an unchanged embedding; or its
        standardizers may be down): never scored with defaults over a complete embedding."""
        if not wb.replay_timeouts:
            return
        versions = self.store.written_versions([(r.entity_type, r.entity_id) for r in wb.replay_timeouts])
        released = superseded = resolved_before = 0
        for r, (sv, sp) in zip(wb.replay_timeouts, versions):
            if sv is not None and (sv > r.version or (sv == r.version and not sp)):
                # written already, or superseded by a newer write or delete marker: nothing lost
                if r.replayed:
                    released += 1
                else:
                    superseded += 1
                continue
            if not r.replayed:
                wb.dead_letters.append(DeadLetterOut(r.raw, "nearline.join", r.error, "features_without_update"))
                continue
            if "<EntityUpdate>" in r.missing:
                # the fragment was read before the restart but its EntityUpdate was not re-read: the update's
                # offset was committed, which happens only after its join was resolved and its effect written
                # (completed, deduped as unchanged, or superseded): a leftover, not a loss
                resolved_before += 1
                continue
            wb.dead_letters.append(DeadLetterOut(r.raw, "nearline.join", (
                f"replay_incomplete: join of {r.key} version {r.version} re-read after a restart did not complete within "
                f"join.replay_timeout_s (missing: {', '.join(r.missing)}); Redis holds version {sv}. Either it was "
                f"processed before the restart without a write (unchanged embedding) or its standardizers are down"),
                "replay_incomplete"))
        self.metrics.inc("replays_released", released)
        self.metrics.inc("fragments_superseded", superseded)
        self.metrics.inc("replays_resolved_before_restart", resolved_before)

    def _dead_letter_send(self, d: DeadLetterOut) -> tuple[str, bytes | None, bytes]:
        r = d.raw
        log.warning("dead letter from %s (%s[%d]@%d): %s", d.stage, r.topic, r.partition, r.offset, d.error[:500])
        return (self.cfg.topics.dead_letter, r.key[:256] if r.key else r.key, encode_dead_letter(
            self.codec, original=r.value, key=r.key, topic=r.topic, partition=r.partition, offset=r.offset,
            stage=d.stage, error=d.error, max_original=self.cfg.limits.dead_letter_original_bytes))

    def _send_all(self, sends, owners, upserts, deletes, wb: WorkBatch) -> int:
        """Send until every record is acknowledged or permanently refused (transient failures are retried,
        acknowledged records never re-sent). A refused embedding message is dead-lettered and its Redis
        write dropped (the store never holds what the topic does not); a refused dead letter is sent
        again as a reference without its original. Returns how many embedding messages were refused."""
        if not sends:
            return 0
        refused = send_acknowledged(self.producer, sends, f"publishing {len(sends)} records", log)
        retry, n_refused = [], 0
        for i, exc in refused:
            t, k, v = sends[i][:3]
            if t == self.cfg.topics.feature_snapshot and t:
                # a snapshot record the broker refuses: the embeddings are still written; a backfill
                # will not see this version (the dead letter says which)
                d = DeadLetterOut(RawRef(t, -1, -1, k, b""), "nearline.snapshot",
                                  f"publish_refused: {t} refused the {len(v or b'')}-byte snapshot record ({exc})",
                                  "publish_refused")
                wb.dead_letters.append(d)
                retry.append(self._dead_letter_send(d))
                continue
            if i < len(owners):
                kind, idx = owners[i]
                if idx is not None:  # None: a tombstone with no Redis write behind it
                    (upserts if kind == "up" else deletes)[idx] = None
                n_refused += 1
                d = DeadLetterOut(RawRef(t, -1, -1, k, b""), "nearline.publish",
                                  f"publish_refused: {t} refused the {len(v or b'')}-byte record ({exc}); not written to Redis either",
                                  "publish_refused")
                wb.dead_letters.append(d)
                retry.append(self._dead_letter_send(d))
            else:
                log.error("the dead-letter topic refused a %d-byte record (%s); sending it without its original", len(v), exc)
                retry.append((t, None, reference_only(self.codec, v, str(exc))))
        for i, exc in send_acknowledged(self.producer, retry, f"publishing {len(retry)} reference dead letters", log):
            log.error("dead letter refused even without its original, dropped (%s): %s", exc,
                      self.codec.decode(retry[i][2])["error"][:500])
        return n_refused


class CommitStage:
    def __init__(self, committer, metrics: Metrics = METRICS):
        self.committer, self.metrics = committer, metrics

    def run(self, wb: WorkBatch) -> WorkBatch:
        if wb.commit:
            from nearline.io import kafka_io

            offsets = {kafka_io.TopicPartition(t, p): off for (t, p), off in wb.commit.items()}
            retry_until_done("offset commit", lambda: kafka_io.commit(self.committer, offsets), log)
            self.metrics.inc("offsets_committed")
            for (t, p), off in wb.commit.items():
                self.metrics.set("committed_offset", off, topic=t, partition=p)
        return wb
