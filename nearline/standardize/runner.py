"""One standardizer as its own process and consumer group: read EntityUpdate, write StandardizedFeatures to
the processor's topic keyed by entity, keep the update version, dead-letter what cannot be parsed, and commit
input offsets only after the output (and any dead letter) is acknowledged by the broker.
"""

from __future__ import annotations

import heapq
import logging
import random
import signal
import time

from nearline.config import Config
from nearline.core.lifecycle import STOP, StopRequested
from nearline.core.validate import Limits, Rejected, check_size, check_update
from nearline.io.codec import Codec, CodecError, codec_for
from nearline.io.deadletter import encode_dead_letter, reference_only
from nearline.io.delivery import send_acknowledged
from nearline.io.group_watchdog import GroupStallWatchdog
from nearline.io.offsets import OffsetTracker
from nearline.standardize.processors import Processor, StandardizationError, load_taxonomies, make_processor

log = logging.getLogger(__name__)
# kafka-python's default is 5 min; one metadata request per 10 s per standardizer costs nothing measurable
METADATA_MAX_AGE_MS = 10_000


def standardize_message(proc: Processor, codec: Codec, value: bytes, now_ms: int,
                        limits: Limits | None = None) -> tuple[str, bytes] | None:
    """One EntityUpdate -> (key, StandardizedFeatures bytes); None for a delete (nothing to standardize).

    Raises CodecError / StandardizationError / Rejected for input that must be dead-lettered. Sizes
    are checked before decoding and raw fields before (fuzzy, length-dependent) standardizing.
    """
    limits = limits or Limits()
    check_size(value, limits)
    upd = codec.decode(value, expect="EntityUpdate")
    if upd["op"] == "DELETE":
        return None
    check_update(upd, limits)
    try:
        feats = proc.standardize(upd["fields"])
    except StandardizationError as exc:
        exc.update = upd  # a valid update this processor cannot serve: the job is told (refused_marker)
        raise
    out = {"entity_type": upd["entity_type"], "entity_id": upd["entity_id"], "version": upd["version"],
           "processor": proc.name, "features": feats, "produced_at": now_ms}
    return f"{upd['entity_type']}:{upd['entity_id']}", codec.encode("StandardizedFeatures", out)


COMMIT_EVERY_S = 0.2


def refused_marker(proc: Processor, codec: Codec, upd: dict, error: str, now_ms: int) -> tuple[str, bytes]:
    """(key, StandardizedFeatures bytes) saying that this processor refused this entity version: the job's
    join stops waiting for it at once (schemas/StandardizedFeatures.avsc, ``refused``)."""
    out = {"entity_type": upd["entity_type"], "entity_id": upd["entity_id"], "version": upd["version"],
           "processor": proc.name, "features": {}, "produced_at": now_ms, "refused": error[:1000]}
    return f"{upd['entity_type']}:{upd['entity_id']}", codec.encode("StandardizedFeatures", out)


def publish_or_dead_letter(producer, codec: Codec, sends: list, cfg: Config, name: str, stats: dict) -> None:
    """Every record acknowledged (transient failures retried, acknowledged ones never re-sent), or
    permanently refused: a refused output is dead-lettered (reason publish_refused), a refused dead
    letter is sent again as a reference without its original. Never retried forever."""
    what = f"standardize.{name}: publishing {len(sends)} records"
    refused = send_acknowledged(producer, [(t, k, v) for t, k, v, _, _ in sends], what, log)
    retry = []
    for i, exc in refused:
        t, k, v, tp, off = sends[i]
        if t == cfg.topics.dead_letter:
            log.error("standardize.%s: the dead-letter topic refused a %d-byte record (%s); sending it without its original",
                      name, len(v), exc)
            retry.append((t, None, reference_only(codec, v, str(exc))))
        else:
            stats["dead_letters"] += 1
            retry.append((cfg.topics.dead_letter, k, encode_dead_letter(
                codec, original=b"", key=k, topic=tp.topic, partition=tp.partition, offset=off, stage=f"standardize.{name}",
                error=f"publish_refused: {t} refused the {len(v)}-byte output ({exc})")))
    for i, exc in send_acknowledged(producer, retry, f"standardize.{name}: publishing {len(retry)} dead letters", log):
        log.error("standardize.%s: dead letter refused even without its original, dropped (%s)", name, exc)


def run_processor(cfg: Config, name: str, bootstrap: str, *, max_messages: int | None = None,
                  idle_exit_s: float | None = None, stop: list | None = None) -> dict:
    """The processor's consume-standardize-produce loop. Returns counters when it stops.

    Stops on SIGTERM/SIGINT, after ``max_messages`` inputs, or after ``idle_exit_s`` without input.
    """
    from nearline.io import kafka_io

    proc = make_processor(name, load_taxonomies(cfg))
    codec = codec_for(cfg, retry_forever=True)
    limits = Limits.from_config(cfg)
    delay = cfg.standardizers.delays.get(name)
    delay_s = (delay.delay_ms / 1000.0) if delay else 0.0
    jitter_s = (delay.jitter_ms / 1000.0) if delay else 0.0
    rnd = random.Random(hash(name) & 0xFFFF)
    out_topic = cfg.standardized_topic(name)

    def new_consumer():
        return kafka_io.make_consumer(bootstrap, cfg.standardizers.group(name),
                                      session_timeout_ms=cfg.kafka.session_timeout_ms,
                                      heartbeat_interval_ms=cfg.kafka.heartbeat_interval_ms,
                                      max_poll_records=500,
                                      # a member that led its group's assignment before its own metadata
                                      # listed the input partitions was assigned nothing until its next
                                      # refresh, 5 min by default (seen once in CI: "assigned []" and idle);
                                      # a refresh every 10 s makes it rejoin with the partitions within 10 s
                                      metadata_max_age_ms=METADATA_MAX_AGE_MS)

    consumer = new_consumer()
    producer = kafka_io.make_producer(bootstrap, cfg.kafka.producer_linger_ms)
    tracker = OffsetTracker()
    held: list = []  # (due, seq, tp, offset, key, value) delayed outputs

    resume_at: dict = {}  # partition -> first offset whose output was dropped at a revoke

    class _Rebalance(kafka_io.ConsumerRebalanceListener):
        """Partitions taken away in a rebalance (or lost) are forgotten with their delayed outputs; the
        first offset whose output was not yet published is remembered, and if the partition comes back
        to this consumer it resumes there (kafka-python keeps the position of a partition it gets back,
        so without the seek those records would never be read again and their outputs would be lost).
        A partition that goes to another consumer is read from the committed offset (duplicates only,
        dropped by version in the job). No blocking call here: kafka-python 3 runs the listener on the
        consumer's IO thread and refuses commits from it."""

        def on_partitions_revoked(self, revoked):
            gone = set(revoked)
            if not gone:
                return
            for tp in gone:
                first = tracker.first_pending(tp)
                if first is not None:
                    resume_at[tp] = min(first, resume_at.get(tp, first))
            n = sum(1 for h in held if h[2] in gone)
            held[:] = [h for h in held if h[2] not in gone]
            heapq.heapify(held)
            tracker.forget(gone)
            log.info("standardize.%s: partitions revoked %s (%d delayed outputs dropped, re-read later)", name,
                     sorted(tp.partition for tp in gone), n)

        def on_partitions_assigned(self, assigned):
            tracker.forget(assigned)  # fresh positions: from the committed offset (or resume_at, below)
            for tp in assigned:
                if tp in resume_at:
                    consumer.seek(tp, resume_at.pop(tp))
            resume_at.clear()  # partitions that went elsewhere: their new owner reads from the commit
            log.info("standardize.%s: partitions assigned %s", name, sorted(tp.partition for tp in assigned))

    def join_group():
        # Join only once the broker lists the input partitions (asked with a group-less consumer, so the
        # member's own metadata is untouched): a member that joins before a just-created topic's
        # partitions are known is assigned nothing until its next metadata refresh (5 min by default).
        for topic in kafka_io.await_partitions(bootstrap, cfg.update_topics()):
            log.warning("standardize.%s: topic %s lists no partitions yet; subscribing anyway", name, topic)
        consumer.subscribe(cfg.update_topics(), listener=_Rebalance())

    def group_offset_totals() -> tuple[int, int]:
        tps = [kafka_io.TopicPartition(t, p) for t in cfg.update_topics() for p in kafka_io.partitions_of(consumer, t)]
        ends = kafka_io.end_offsets(consumer, tps, attempts=2, timeout_ms=5000)
        return sum(ends.values()), sum(consumer.committed(tp, timeout_ms=5000) or 0 for tp in tps)

    stats = {"read": 0, "written": 0, "deletes_skipped": 0, "dead_letters": 0}
    join_group()
    watchdog = GroupStallWatchdog(cfg.standardizers.rejoin_stall_s)
    commit_failures = 0
    seq = 0
    stopping = stop if stop is not None else []

    def _sig(*_):
        stopping.append(True)
        STOP.set()  # also ends a retry that is waiting for the broker

    old = {s: signal.signal(s, _sig) for s in (signal.SIGTERM, signal.SIGINT)} if stop is None else {}
    last_input = time.monotonic()
    # offsets are committed at most every COMMIT_EVERY_S (their outputs are acknowledged before, so a later
    # commit only means a few more re-reads after a crash, which the join drops as duplicates): a synchronous
    # commit per poll was most of a standardizer's CPU per update at a steady rate (10x its cost on a backlog)
    next_commit = 0.0
    try:
        while not stopping:
            batch = consumer.poll(timeout_ms=100)
            now = time.monotonic()
            sends = []
            for tp, msgs in batch.items():
                for m in msgs:
                    stats["read"] += 1
                    tracker.read(tp, m.offset)
                    try:
                        res = standardize_message(proc, codec, m.value, int(time.time() * 1000), limits)
                    except (CodecError, StandardizationError, Rejected) as exc:
                        stats["dead_letters"] += 1
                        error = str(exc) if isinstance(exc, Rejected) else (
                            f"{'undecodable' if isinstance(exc, CodecError) else 'standardize_failed'}: {exc}")
                        reason = error.split(":", 1)[0]
                        stats[f"dead_letters_{reason}"] = stats.get(f"dead_letters_{reason}", 0) + 1
                        log.warning("standardize.%s: dead letter (%s[%d]@%d): %s", name, m.topic, m.partition, m.offset,
                                    error[:300])
                        dl = encode_dead_letter(codec, original=m.value, key=m.key, topic=m.topic, partition=m.partition,
                                                offset=m.offset, stage=f"standardize.{name}", error=error,
                                                max_original=cfg.limits.dead_letter_original_bytes)
                        sends.append((cfg.topics.dead_letter, m.key[:256] if m.key else m.key, dl, tp, m.offset))
                        upd = getattr(exc, "update", None)
                        if upd is not None:  # the update itself is valid (the job accepts it): tell its join
                            mkey, marker = refused_marker(proc, codec, upd, error, int(time.time() * 1000))
                            sends.append((out_topic, mkey.encode(), marker, tp, m.offset))
                            stats["refused_markers"] = stats.get("refused_markers", 0) + 1
                        continue
                    if res is None:
                        stats["deletes_skipped"] += 1
                        tracker.done(tp, m.offset)
                        continue
                    due = now + delay_s + (rnd.random() * jitter_s if jitter_s else 0.0)
                    heapq.heappush(held, (due, seq, tp, m.offset, res[0].encode(), res[1]))
                    seq += 1
            assigned = bool(consumer.assignment())
            if batch or not assigned:
                last_input = now  # idle time counts only once the group has given us partitions
            try:
                stalled = watchdog.observe(now, assigned or bool(held), group_offset_totals)
            except kafka_io.KafkaError as exc:  # the broker is away: nothing to decide now
                log.debug("standardize.%s: group progress unknown (%s)", name, exc)
                stalled = False
            if stalled:
                log.warning("standardize.%s: no partitions for %.0fs while the group makes no progress; "
                            "joining again with a new consumer", name, now - watchdog.unassigned_since)
                watchdog.reset()
                consumer.close(autocommit=False, timeout_ms=5000)  # holds no partitions: nothing pending to lose
                consumer = new_consumer()
                join_group()
                stats["group_rejoins"] = stats.get("group_rejoins", 0) + 1
                continue
            while held and held[0][0] <= now:
                _, _, tp, off, key, value = heapq.heappop(held)
                sends.append((out_topic, key, value, tp, off))
            if sends:
                publish_or_dead_letter(producer, codec, sends, cfg, name, stats)
                for _, _, _, tp, off in sends:
                    tracker.done(tp, off)
                stats["written"] += len(sends)
            finishing = bool(stopping) or (max_messages is not None and stats["read"] >= max_messages and not held) or (
                idle_exit_s is not None and not held and time.monotonic() - last_input > idle_exit_s)
            to_commit = tracker.committable() if (time.monotonic() >= next_commit or finishing) else None
            if to_commit:
                next_commit = time.monotonic() + COMMIT_EVERY_S
                # Never block on a commit: while the broker restarts or the group rebalances, a commit
                # fails ("not part of an active group"), and only poll() rejoins the group. The offsets
                # stay committable and are tried again after the next poll; outputs are already acked.
                try:
                    kafka_io.commit(consumer, to_commit, timeout_ms=5000)
                    tracker.mark_committed(to_commit)
                    if commit_failures:
                        log.info("standardize.%s: offset commits work again after %d failures", name, commit_failures)
                    commit_failures = 0
                except kafka_io.KafkaError as exc:
                    commit_failures += 1
                    if commit_failures == 1 or commit_failures % 50 == 0:
                        log.warning("standardize.%s: offset commit failed (%s, %d in a row); polling on, "
                                    "the commit is retried after the next poll", name, exc, commit_failures)
            if finishing and not stopping:  # max_messages or idle_exit_s reached (a stop ends the while itself)
                break
    except StopRequested:
        log.info("standardize.%s: stopped while waiting for the broker; unacknowledged input is re-read next time", name)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        producer.close(timeout=10)
        consumer.close(autocommit=False)
    stats["written"] -= stats["dead_letters"] + stats.get("refused_markers", 0)
    return stats
