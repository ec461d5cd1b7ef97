"""Offline backfill and rebuild: score chosen model versions on every live entity of the feature snapshot.

Plain Python, one batch at a time; beam_jobs/backfill_job.py wires it into a Beam batch pipeline and
`nearline backfill` drives it (:func:`run_backfill`).

    RangeReader      one partition range of the snapshot topic -> the newest entry per entity, as a
                     SnapshotChunk (a list per attribute, nothing decoded; librdkafka; scan_range is the
                     same with a kafka-python consumer)
    BackfillStage    per batch of entities, prepare: one Redis read -> which versions each entity lacks
                     -> decode those records together (nearline/offline/snapshot_columns.py) -> score them with the
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
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from nearline.offline.producer import BatchProducer
from nearline.offline.progress import (
    BackfillCounts,
    BackfillError,
    ResumePoints,
    RunProgress,
    done_key,
    outbox_key,
    publish_outbox,
    requests_key,
    running_key,
)
from nearline.offline.scan import plan_ranges

log = logging.getLogger(__name__)


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
    from nearline.registry.packages import Registry

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
    from nearline.io import kafka_io
    from nearline.io.store import RedisEmbeddingStore

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
            from nearline.offline.lease import LeaseKeeper

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
        # a rerun of a killed request starts where it had written everything (ResumePoints); a dry run reads all
        resume = ResumePoints(store.r, cfg.redis.key_prefix, chosen)
        since: dict[int, int] = {} if dry_run else resume.get()
        if since:
            log.info("resuming the backfill of %s from snapshot offsets %s (finished before)", chosen, since)
        t0 = time.monotonic()
        started, planned = time.time(), 0
        passes = 0
        all_ranges = []
        while passes < max_passes:
            ranges = [r for r in plan_ranges(consumer, topic, parts, since) if r.size > 0]
            if not ranges:
                break
            passes += 1
            all_ranges += [[r.partition, r.start, r.end] for r in ranges]
            if not dry_run:  # for `nearline backfill --status`
                planned += sum(r.size for r in ranges)
                info = json.dumps({"run": run_id, "started": started, "planned": planned, "pid": os.getpid(),
                                   "host": socket.gethostname()})
                store.r.hset(running_key(cfg.redis.key_prefix), mapping={k: info for k in chosen})
            before = prog.read()
            # catch-up passes rescore: an entity the job rewrote meanwhile may hold the field from an older
            # version (a job that had not loaded the version yet keeps fields it does not write)
            run_pass(cfg, bootstrap, redis_url, ranges, chosen, prog, dry_run=dry_run, rescore=rescore or passes > 1,
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
        if not dry_run and run_id:
            store.r.hdel(running_key(cfg.redis.key_prefix), *chosen)
        if keeper is not None:
            keeper.__exit__(None, None, None)
    result = BackfillResult(chosen, total, passes, time.monotonic() - t0, dry_run, all_ranges)
    if not dry_run:
        pipe = store.r.pipeline(transaction=False)
        for k in chosen:
            pipe.hset(done_key(cfg.redis.key_prefix), k, json.dumps({"at": time.time(), "run": run_id, **total.as_dict()}))
            pipe.hdel(requests_key(cfg.redis.key_prefix), k)
        pipe.execute()
        resume.clear()
    return result


def run_pass(cfg, bootstrap, redis_url, ranges, chosen, prog: RunProgress, *, dry_run, rescore, batch_size,
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
