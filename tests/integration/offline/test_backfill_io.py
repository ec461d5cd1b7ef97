"""The backfill's batch I/O against the job's own on a real Redis and Kafka: store.read_many and
store.write_state_many (same version guard, case by case, full state back), BatchProducer (same
partitions), RangeReader (same newest entries as scan_range)."""

from __future__ import annotations

import itertools

import pytest

from nearline.io.store import RedisEmbeddingStore

pytestmark = pytest.mark.integration

# stored state before the write: None (absent), or (version, partial, deleted, fields)
STORED = [None,
          (5, False, False, {"m@v1": b"old1"}),
          (5, True, False, {"m@v1": b"old1", "m@v2": b"old2"}),
          (5, False, True, {}),
          (2**53 + 1, False, False, {"m@v1": b"big"})]
# incoming: (version, partial, fields)
INCOMING = [(4, False), (5, False), (5, True), (6, False), (6, True), (2**53, False), (2**53 + 2, False)]


def _seed(store: RedisEmbeddingStore, key: tuple[str, str], stored) -> None:
    store.r.delete(store.key(*key))
    if stored is None:
        return
    v, partial, deleted, fields = stored
    mapping = {"_v": str(v), **fields}
    if partial:
        mapping["_partial"] = "1"
    if deleted:
        mapping["_deleted"] = "1"
    store.r.hset(store.key(*key), mapping=mapping)


def test_write_state_many_applies_the_jobs_version_guard_case_by_case(redis_url, unique):
    store = RedisEmbeddingStore(redis_url, f"t{unique}")
    cases = list(itertools.product(range(len(STORED)), INCOMING))
    singles, batch = [], []
    for n, (si, (v, partial)) in enumerate(cases):
        a, b = ("member", f"single{n}"), ("member", f"batch{n}")
        _seed(store, a, STORED[si])
        _seed(store, b, STORED[si])
        singles.append((*a, v, {"m@v1": b"new1", "m@v3": b"new3"}, partial))
        batch.append((*b, v, {"m@v1": b"new1", "m@v3": b"new3"}, partial))
    applied = [store.write([u], [])[0] for u in singles]  # the job's script, one entity at a time
    outbox = f"t{unique}:outbox"
    states = store.write_state_many(batch, outbox)
    assert any(applied) and not all(applied), "the matrix must contain both outcomes"
    for n, (ok, state) in enumerate(zip(applied, states)):
        a, b = store.get("member", f"single{n}"), store.get("member", f"batch{n}")
        assert (state is not None) == ok, (cases[n], ok, state)
        assert a == b, (cases[n], a, b)
        if ok:
            assert state == b, "the reply is the whole hash after the write"
    members = {m.decode() for m in store.r.smembers(outbox)}
    assert members == {store.key("member", f"batch{n}") for n, ok in enumerate(applied) if ok}


def test_read_many_equals_read(redis_url, unique):
    store = RedisEmbeddingStore(redis_url, f"t{unique}")
    keys = [("job", f"j{i}") for i in range(len(STORED))]
    for k, st in zip(keys, STORED):
        _seed(store, k, st)
    fields = ["m@v1", "m@v2", "m@v3"]
    assert store.read_many(keys, fields) == store.read(keys, [fields] * len(keys))
    assert store.read_many([], fields) == [] and store.write_state_many([]) == []


def test_batch_producer_partitions_keys_as_the_jobs_producer(kafka_bootstrap, unique):
    """An entity's messages from the backfill (librdkafka) and the job (kafka-python) share a partition."""
    from nearline.io import kafka_io
    from nearline.offline.producer import BatchProducer

    topic = f"bp-{unique}"
    kafka_io.ensure_topics(kafka_bootstrap, [topic], 4)
    keys = [f"member:m{i}".encode() for i in range(40)]
    job = kafka_io.make_producer(kafka_bootstrap)
    job_parts = {k: job.send(topic, key=k, value=b"job").get(timeout=30).partition for k in keys}
    job.close()
    bp = BatchProducer(kafka_bootstrap)
    bp.send_batch([(topic, k, b"backfill", [("version", b"1")]) for k in keys])
    bp.close()
    c = kafka_io.make_consumer(kafka_bootstrap, None)
    tps = [kafka_io.TopicPartition(topic, p) for p in range(4)]
    c.assign(tps)
    c.seek_to_beginning()
    seen: dict[bytes, set[int]] = {}
    deadline = kafka_io.time.monotonic() + 30
    while sum(len(v) for v in seen.values()) < 2 * len(keys) and kafka_io.time.monotonic() < deadline:
        for tp, msgs in c.poll(200).items():
            for m in msgs:
                seen.setdefault(m.key, set()).add((tp.partition, m.value))
    c.close()
    assert len(set(job_parts.values())) > 1, "the keys must spread over partitions for this test to mean something"
    for k in keys:
        assert seen[k] == {(job_parts[k], b"job"), (job_parts[k], b"backfill")}, k


def test_range_reader_finds_the_newest_entries_scan_range_finds(kafka_bootstrap, unique):
    from nearline.io import kafka_io
    from nearline.io.snapshot import tombstone_send
    from nearline.offline.scan import RangeReader, plan_ranges, scan_range

    topic = f"snap-{unique}"
    kafka_io.ensure_topics(kafka_bootstrap, [topic], 2)
    prod = kafka_io.make_producer(kafka_bootstrap)
    for i in range(3000):  # 500 keys, 6 versions each, some deleted last, some partial
        key = f"member:m{i % 500}"
        v = 10 + i // 500
        if i >= 2500 and i % 7 == 0:
            t, k, val, h = tombstone_send(topic, key, v)
        else:
            t, k, val, h = topic, key.encode(), f"value-{i}".encode(), [("version", str(v).encode()),
                                                                      ("partial", b"1" if i % 3 else b"0")]
        prod.send(t, key=k, value=val, headers=h)
    prod.flush()
    prod.close()
    c = kafka_io.make_consumer(kafka_bootstrap, None)
    reader = RangeReader(kafka_bootstrap)
    try:
        full = plan_ranges(c, topic, [0, 1])
        sub = [type(r)(r.topic, r.partition, r.start + 100, r.end - 50) for r in full]  # inside a range too
        for rng in full + sub:
            want, n_want = scan_range(c, rng)
            got = reader.scan(rng)
            assert got.scanned == n_want == rng.size
            assert got.as_entries() == want, rng
            assert got.offsets == sorted(got.offsets)
        assert sum(len(reader.scan(r)) for r in full) == 500
    finally:
        reader.close()
        c.close(autocommit=False)


def test_write_state_many_records_every_written_entity_in_the_outbox_beyond_one_sadd(redis_url, unique):
    store = RedisEmbeddingStore(redis_url, f"t{unique}")
    ups = [("member", f"m{i}", 7, {"m@v1": b"x"}, False) for i in range(2500)]  # 3 SADD chunks of up to 1000
    states = store.write_state_many(ups, f"t{unique}:outbox")
    assert all(s == {"_v": b"7", "m@v1": b"x"} for s in states)
    assert store.r.scard(f"t{unique}:outbox") == 2500


def test_publish_outbox_sends_the_current_full_state_of_what_a_dead_run_left(kafka_bootstrap, redis_url, unique):
    """A backfill that died after its Redis write and before the acknowledged send leaves the entity in
    the outbox; the next run publishes its state from Redis (skipping one deleted since) and empties it."""
    from nearline.config import Config
    from nearline.io import kafka_io
    from nearline.io.codec import Codec
    from nearline.offline.producer import BatchProducer
    from nearline.offline.progress import outbox_key, publish_outbox

    cfg = Config()
    cfg.redis.key_prefix, cfg.topics.embeddings = f"t{unique}", f"emb-{unique}"
    kafka_io.ensure_topics(kafka_bootstrap, [cfg.topics.embeddings], 2)
    store = RedisEmbeddingStore(redis_url, cfg.redis.key_prefix)
    store.write_state_many([("member", "a", 5, {"m@v1": b"\x00" * 8}, False),
                            ("member", "b", 6, {"m@v1": b"\x01" * 8, "m@v2": b"\x02" * 8}, True),
                            ("job", "c", 7, {"j@v1": b"\x03" * 8}, False)], outbox_key(cfg.redis.key_prefix))
    store.write([], [("job", "c", 8)])  # deleted since: the job published that tombstone
    bp = BatchProducer(kafka_bootstrap)
    try:
        assert publish_outbox(cfg, store, bp, chunk=2) == 2
    finally:
        bp.close()
    assert not store.r.exists(outbox_key(cfg.redis.key_prefix))
    c = kafka_io.make_consumer(kafka_bootstrap, None)
    tps = [kafka_io.TopicPartition(cfg.topics.embeddings, p) for p in range(2)]
    c.assign(tps)
    c.seek_to_beginning()
    got, codec = {}, Codec()
    deadline = kafka_io.time.monotonic() + 30
    while len(got) < 2 and kafka_io.time.monotonic() < deadline:
        for msgs in c.poll(200).values():
            for m in msgs:
                got[m.key.decode()] = (codec.decode(m.value), dict(m.headers))
    c.close()
    assert set(got) == {"member:a", "member:b"}
    rec, headers = got["member:b"]
    assert rec["version"] == 6 and rec["partial"] and headers["version"] == b"6"
    assert {f"{e['model']}@{e['model_version']}": e["vector"] for e in rec["embeddings"]} == \
           {"m@v1": b"\x01" * 8, "m@v2": b"\x02" * 8}
