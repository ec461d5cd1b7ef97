"""Scanning the feature snapshot: plan partition ranges, and read one range into the newest entry per entity
(SnapshotChunk: a list per attribute, nothing decoded; librdkafka in RangeReader, kafka-python in scan_range).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from nearline.io.codec import Codec
from nearline.io.snapshot import (
    PARTIAL_HEADER,
    VERSION_HEADER,
    SnapshotEntry,
    header_partial,
    latest_per_key,
    record_version,
)
from nearline.offline.producer import rdkafka_security
from nearline.offline.progress import BackfillError

log = logging.getLogger(__name__)


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


# ---- reading the snapshot ----------------------------------------------------------------------
def plan_ranges(consumer, topic: str, partitions: list[int], since: dict[int, int] | None = None) -> list[PartitionRange]:
    """One range per partition, from ``since`` (or the beginning) to the end offsets now."""
    from nearline.io import kafka_io

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
    from nearline.io import kafka_io

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

        from nearline.io import kafka_io

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
