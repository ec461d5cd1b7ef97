"""BackfillStage: per batch of entities, prepare (one Redis read -> which versions each entity lacks -> decode
those records together -> score with the job's own ModelSet.score_columns -> dedupe) and commit
(version-guarded Redis writes -> the written entities' full state to the embedding topic). run_range runs
one range, preparing batch k+1 while batch k commits.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from nearline.core.lifecycle import retry_until_done
from nearline.io.codec import Codec, codec_for
from nearline.io.deadletter import encode_dead_letter
from nearline.io.snapshot import VERSION_HEADER
from nearline.io.store import PARTIAL_FIELD
from nearline.offline.progress import BackfillCounts, ResumePoints, RunProgress, outbox_key
from nearline.offline.scan import PartitionRange, RangeReader, SnapshotChunk
from nearline.stream.dedupe import decide

log = logging.getLogger(__name__)


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
    (nearline/offline/snapshot_columns.py), their tensors built by the job's own vectorised builder and scored
    by the job's ModelSet.score_columns, one onnxruntime call per model and entity type; the per-entity
    Python left is the version guard's decision and the message bytes."""

    def __init__(self, cfg, store, producer, models, chosen: set[str], *, rescore: bool = False,
                 dry_run: bool = False, codec: Codec | None = None, before_write=None):
        from nearline.io.embedding_messages import state_encoder

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
        from nearline.offline.snapshot_columns import decode_snapshots

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
              batch_size: int, codec: Codec | None = None, resume: "ResumePoints | None" = None) -> None:
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
        if resume is not None and len(prepared.chunk):  # the chunk is in offset order (RangeReader.scan)
            resume.advance(rng.partition, prepared.chunk.offsets[-1] + 1)

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
    if resume is not None:
        resume.advance(rng.partition, rng.end)
