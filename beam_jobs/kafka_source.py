"""ReadPartitionGroups: an unbounded splittable DoFn that reads Kafka with kafka-python inside Beam.

Beam's ReadFromKafka is a Java cross-language transform that cannot run offline (its expansion service
is downloaded from Maven), so the local job reads with kafka-python. Each element is a *partition
group* p: partition p of every input topic. All input topics have the same partition count and are
keyed by entity, so everything about one entity (its EntityUpdate and every standardizer's output) is
in one group: the join needs no shuffle (co-partitioning, as in Kafka Streams).

Checkpointing: the restriction is a poll counter, not a Kafka offset; the job's position is the
consumer group's committed offsets, which only advance once effects are written (see
nearline/stream/pipeline.py). A fresh reader seeks to the committed offsets.

Quirks of the FnApiRunner (Beam 2.77.0) designed around here:
* ``defer_remainder``'s resume delay is ignored: an idle poll blocks instead of spinning a core. The
  runner polls the partition groups one after another in one thread, so each poll may block for only
  ``poll_timeout_ms / groups``: an idle round over all groups then takes about poll_timeout_ms, and data
  arriving in one group never waits behind the full timeout of every other group (measured: a 100 ms
  timeout per group gave a 430 ms p50 hop latency with 4 groups);
* every poll yields a batch, empty or not, so downstream join timeouts advance without timers (timers
  are unreliable on this runner in streaming mode);
* a stop is signalled through STOP: the reader claims the rest of its restriction and returns, which
  lets the pipeline finish cleanly.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Duration

from nearline.core.lifecycle import STOP  # set by `nearline run` on SIGINT/SIGTERM
from nearline.stream.pipeline import KafkaRecord, RecordBatch

log = logging.getLogger(__name__)


class _CheckpointOnlyTracker(OffsetRestrictionTracker):
    """A poll counter that only the reader itself may split, to checkpoint (defer_remainder). A runner's
    dynamic split (Prism asks for them on long bundles) would hand the rest of the counter to a second
    reader of the same partition group: two readers, duplicate reads, and batches of one group processed
    out of order."""

    def try_split(self, fraction_of_remainder):
        if fraction_of_remainder > 0:
            return None
        return super().try_split(fraction_of_remainder)


class _PollCounter(RestrictionProvider):
    def initial_restriction(self, element):
        return OffsetRange(0, sys.maxsize)

    def create_tracker(self, restriction):
        return _CheckpointOnlyTracker(restriction)

    def restriction_size(self, element, restriction):
        return 1

    def split(self, element, restriction):
        yield restriction  # one reader per partition group; parallelism comes from the groups

    def truncate(self, element, restriction):
        return None  # on drain: stop reading


_READERS: dict[tuple, dict] = {}
_READERS_LOCK = threading.Lock()


def _readers_of(key: tuple) -> dict:
    """The process-wide reader state of one source (bootstrap, consumer group, topics); counted per user."""
    with _READERS_LOCK:
        shared = _READERS.setdefault(key, {"consumers": {}, "replay_until": {}, "epochs": {}, "seq": {}, "replayed_ok": {},
                                         "users": 0})
        shared["users"] += 1
        return shared


def _release_readers(key: tuple) -> bool:
    """True when the last user of the shared reader state left (its consumers may be closed)."""
    with _READERS_LOCK:
        shared = _READERS.get(key)
        if shared is None:
            return False
        shared["users"] -= 1
        if shared["users"] <= 0:
            del _READERS[key]
            return True
        return False


class ReadPartitionGroups(beam.DoFn):
    """element: partition index p -> (p, RecordBatch) per poll."""

    def __init__(self, bootstrap: str, topics: list[str], group_id: str, redis_url: str, redis_prefix: str,
                 max_poll_records: int = 1000, poll_timeout_ms: int = 100, groups: int = 1, lag_every_s: float = 5.0,
                 drain_budget_ms: float = 30.0, security: dict | None = None, membership: dict | None = None,
                 idle_poll_timeout_ms: int = 0, idle_after_s: float = 1.0, update_topics: list[str] | None = None):
        self.bootstrap, self.topics, self.group_id = bootstrap, topics, group_id
        self.redis_url, self.redis_prefix = redis_url, redis_prefix
        self.max_poll_records, self.lag_every_s, self.drain_budget_ms = max_poll_records, lag_every_s, drain_budget_ms
        self.drain_min_records = max(1, max_poll_records // 10)
        self.security = dict(security or {})  # kafka_io.security_settings(cfg.kafka): TLS/SASL of the consumers
        self.poll_timeout_ms = max(1, poll_timeout_ms // max(1, groups))
        # job.idle_poll_timeout_ms: once a group has brought nothing for idle_after_s, its polls wait longer
        # (an idle round of the runner over every group then costs next to no CPU); the first record after
        # the idle spell ends the wait at once for its own group, and the others return to short polls.
        # (Waiting in defer_remainder instead is no option: the FnApiRunner ignores its delay and spins, and
        # Prism 2.77 spins harder on a delayed residual: 165% of a core idle against 67% with none.)
        self.idle_poll_timeout_ms = max(self.poll_timeout_ms, idle_poll_timeout_ms // max(1, groups))
        self.idle_after_s = idle_after_s
        self.update_topics = set(update_topics if update_topics is not None else topics[:1])
        # job.assignment 'group': {"group": ..., "topic": ...} of the owners group (nearline.io.membership);
        # None: this instance owns every group it was given (static assignment)
        self.membership = membership

    def setup(self):
        from nearline.io import kafka_io
        from nearline.io.store import ReadMarks, RedisEmbeddingStore

        kafka_io._SECURITY.update(self.security)  # this DoFn may run in another process (Flink workers)
        # the open consumers, replay marks and ownership epochs of the partition groups live per process, not
        # per DoFn instance: a runner that runs bundles on several threads (Prism) may hand a group's next
        # poll to another instance, which must continue the same consumer, not open a second one
        shared = _readers_of((self.bootstrap, self.group_id, tuple(self.topics)))
        self._consumers, self._replay_until = shared["consumers"], shared["replay_until"]
        self._epochs, self._seq = shared["epochs"], shared["seq"]
        self._replayed_ok = shared["replayed_ok"]
        self._next_lag = {}
        self._marks = ReadMarks(RedisEmbeddingStore(self.redis_url, self.redis_prefix), self.group_id)
        self._next_heartbeat = 0.0
        self._ownership = None
        self._last_records: dict[int, float] = {}  # consumer -> when it last brought records (idle detection)
        if self.membership:
            from nearline.io.membership import shared_membership

            self._ownership = shared_membership(self.bootstrap, self.membership["group"], self.membership["topic"])

    def teardown(self):
        if _release_readers((self.bootstrap, self.group_id, tuple(self.topics))):
            for c in getattr(self, "_consumers", {}).values():
                try:
                    c.close(autocommit=False)
                except Exception:
                    pass
            self._consumers.clear()

    def _consumer(self, p: int):
        c = self._consumers.get(p)
        if c is None:
            from nearline.io import kafka_io

            c = kafka_io.make_consumer(self.bootstrap, self.group_id, max_poll_records=self.max_poll_records)
            tps = [kafka_io.TopicPartition(t, p) for t in self.topics]
            c.assign(tps)
            for tp in tps:
                committed = self._committed(c, tp)
                if committed is None:
                    c.seek_to_beginning(tp)
                else:
                    c.seek(tp, committed)
            # what earlier runs had read: records up to these offsets are replays
            marks = self._marks.load()
            self._replay_until[p] = {(tp.topic, tp.partition): marks.get((tp.topic, tp.partition), -1) for tp in tps}
            log.info("partition group %d: reading %s from committed offsets", p, [f"{tp.topic}[{tp.partition}]" for tp in tps])
            self._consumers[p] = c
        return c

    def _take_ownership(self, p: int) -> int | None:
        """None: not ours (any open consumer of the group is closed). Else the ownership epoch of the group; a
        new one (a first poll, or the group assigned here again) reopens the consumer at the committed
        offsets and restarts the batch sequence, and the join drops what it held for the group."""
        epoch = 0
        if self._ownership is not None:
            if not self._ownership.owns(p):
                self._release(p)
                return None
            epoch = self._ownership.epoch(p)
        if self._epochs.get(p) != epoch:
            self._release(p)
            self._epochs[p] = epoch
            self._seq[p] = 0
        return epoch

    def _updates_replayed(self, p: int, c) -> bool:
        """True once this group's reader is past the previous run's read marks on every EntityUpdate
        partition (cheap: local positions; checked only until it first holds, per reader)."""
        if self._replayed_ok.get(p):
            return True
        until = self._replay_until.get(p, {})
        try:
            ok = all(c.position(tp) > until.get((tp.topic, tp.partition), -1)
                     for tp in c.assignment() if tp.topic in self.update_topics)
        except Exception:  # a position not known yet (the broker away): ask again next poll
            return False
        self._replayed_ok[p] = ok
        return ok

    def _release(self, p: int) -> None:
        self._epochs.pop(p, None)
        self._replayed_ok.pop(p, None)
        c = self._consumers.pop(p, None)
        if c is not None:
            log.info("partition group %d: released", p)
            try:
                c.close(autocommit=False)
            except Exception:
                pass

    @staticmethod
    def _committed(c, tp):
        """The committed offset, waiting (and logging) while the broker is unreachable; a stop request
        ends the wait."""
        from nearline.core.lifecycle import retry_until_done

        return retry_until_done(f"reading the committed offset of {tp.topic}[{tp.partition}]",
                                lambda: c.committed(tp, timeout_ms=10_000), log, first_delay=0.5)

    def _report_lag(self, p: int, c) -> None:
        now = time.monotonic()
        if now < self._next_lag.get(p, 0):
            return
        self._next_lag[p] = now + self.lag_every_s
        from nearline.core.metrics import METRICS
        from nearline.io import kafka_io

        try:
            ends = kafka_io.end_offsets(c, list(c.assignment()))
            for tp, end in ends.items():
                committed = c.committed(tp, timeout_ms=5_000) or 0
                METRICS.set("partition_lag", max(0, end - committed), topic=tp.topic, partition=tp.partition)
        except Exception as exc:  # lag is informational; never stop reading for it
            log.debug("lag query failed: %s", exc)

    def _heartbeat(self) -> None:
        """About once a second: this job is alive and polling (nearline.failover reads it: a DC whose job
        stopped writing it is skipped by readers, who fail over to another DC)."""
        now = time.monotonic()
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + 1.0
        from nearline.io.store import heartbeat_key

        try:
            self._marks.store.r.set(heartbeat_key(self.redis_prefix, self.group_id), int(time.time() * 1000), ex=86400)
        except Exception as exc:  # a dead Redis is handled (retried) where the job writes; never stop reading for this
            log.debug("heartbeat write failed: %s", exc)

    def _drain(self, c) -> dict:
        """One batch: wait up to the (per-group) poll timeout for the first records, then keep taking what
        is already fetched, without blocking, while each poll brings at least a tenth of max_poll_records,
        up to max_poll_records or drain_budget_ms. With a backlog this makes batches large enough to
        amortize the per-batch costs (runner round, state write, Kafka flush, Redis round trips); at a
        steady rate the first thin poll ends the batch (measured: draining to the budget regardless raised
        p50 latency from ~85 to 287 ms at 300 updates/s)."""
        out: dict = {}
        n = 0
        now = time.monotonic()
        deadline = now + self.drain_budget_ms / 1000
        idle = now - self._last_records.get(id(c), now) >= self.idle_after_s
        timeout = self.idle_poll_timeout_ms if idle else self.poll_timeout_ms
        while n < self.max_poll_records:
            got = c.poll(timeout_ms=timeout, max_records=self.max_poll_records - n)
            k = sum(len(m) for m in got.values())
            for tp, msgs in got.items():
                out.setdefault(tp, []).extend(msgs)
            n += k
            # a thin non-blocking poll means we are caught up: go, rather than trade latency for batch size
            if not k or (timeout == 0 and k < self.drain_min_records) or time.monotonic() >= deadline:
                break
            timeout = 0
        if n or id(c) not in self._last_records:
            self._last_records[id(c)] = time.monotonic()
        return out

    @beam.DoFn.unbounded_per_element()
    def process(self, p, tracker=beam.DoFn.RestrictionParam(_PollCounter())):
        pos = tracker.current_restriction().start
        if STOP.is_set():
            tracker.try_claim(sys.maxsize - 1)  # claim the rest: the restriction is done
            return
        if not tracker.try_claim(pos):
            return
        epoch = self._take_ownership(p)
        if epoch is None:  # another instance owns this group now
            time.sleep(self.poll_timeout_ms / 1000)
            tracker.defer_remainder(Duration.of(0))
            return
        c = self._consumer(p)
        t_poll = time.time()
        polled = self._drain(c)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("group %d poll at %.3f took %.1f ms: %d records", p, t_poll, (time.time() - t_poll) * 1000,
                      sum(len(v) for v in polled.values()))
        self._report_lag(p, c)
        self._heartbeat()
        until = self._replay_until[p]
        records = [KafkaRecord(m.topic, m.partition, m.offset, m.key, m.value,
                               m.offset <= until.get((m.topic, m.partition), -1))
                   for msgs in polled.values() for m in msgs]
        if records:
            # recorded before anything downstream acts on these records
            self._marks.save({(tp.topic, tp.partition): msgs[-1].offset for tp, msgs in polled.items() if msgs})
        self._report_lag(p, c)
        seq = self._seq.get(p, 0)
        self._seq[p] = seq + 1
        yield p, RecordBatch(records, time.time(), epoch=epoch, seq=seq, updates_replayed=self._updates_replayed(p, c))
        tracker.defer_remainder(Duration.of(0))
