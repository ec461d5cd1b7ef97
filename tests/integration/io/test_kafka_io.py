"""Kafka I/O against Apache Kafka and the noida-db emulator (the light local option must keep working)."""

import time

import pytest

from nearline.io import kafka_io
from nearline.io.kafka_io import TopicPartition

pytestmark = pytest.mark.integration


def _drain(consumer, n, timeout=15):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        for msgs in consumer.poll(200).values():
            got.extend(msgs)
    return got


def test_topics_keys_partitions_commit_resume(any_broker_bootstrap, unique):
    topic = f"io-{unique}"
    assert kafka_io.ensure_topics(any_broker_bootstrap, [topic], 4) == [topic]
    assert kafka_io.ensure_topics(any_broker_bootstrap, [topic], 4) == []  # idempotent
    p = kafka_io.make_producer(any_broker_bootstrap)
    futs = [p.send(topic, key=f"job:{i % 10}".encode(), value=f"v{i}".encode()) for i in range(200)]
    p.flush()
    parts_by_key = {}
    for i, f in enumerate(futs):
        md = f.get(timeout=10)
        parts_by_key.setdefault(f"job:{i % 10}", set()).add(md.partition)
    assert all(len(s) == 1 for s in parts_by_key.values())  # one key, one partition
    assert len({next(iter(s)) for s in parts_by_key.values()}) > 1  # keys spread over partitions

    group = f"g-{unique}"
    c = kafka_io.make_consumer(any_broker_bootstrap, group)
    tps = [TopicPartition(topic, i) for i in kafka_io.partitions_of(c, topic)]
    c.assign(tps)
    got = _drain(c, 200)
    assert len(got) == 200
    # commit only half of one partition, then resume in a new consumer: the rest is re-read
    tp0 = tps[0]
    mine = sorted(m.offset for m in got if m.partition == tp0.partition)
    half = mine[len(mine) // 2]
    kafka_io.commit(c, {tp0: half})
    c.close(autocommit=False)
    c2 = kafka_io.make_consumer(any_broker_bootstrap, group)
    c2.assign([tp0])
    assert c2.committed(tp0) == half
    again = _drain(c2, len(mine) - half)
    assert sorted(m.offset for m in again) == mine[half:]
    c2.close(autocommit=False)
    p.close()
