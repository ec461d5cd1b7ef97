"""Issue 13 against a real Apache Kafka broker and real Redis: permanent publish errors are dead-lettered
(not retried forever), dead letters always fit, versions are exact up to 2**63-1 in the Redis CAS,
deletes of unknown entities leave their marker too, and an emptied Redis is noticed."""

import shutil
import subprocess
import time

import numpy as np
import pytest
import redis
from kafka.admin import KafkaAdminClient, NewTopic

from nearline.core.metrics import Metrics
from nearline.io import kafka_io
from nearline.io.codec import Codec
from nearline.io.delivery import send_acknowledged
from nearline.io.store import DataLossDetector, RedisEmbeddingStore
from nearline.ops.procs import free_port
from nearline.stream.join import Deleted, Joined, RawRef
from nearline.stream.pipeline import DeadLetterOut, PublishStage, WorkBatch
from tests.conftest import isolated_config
from tests.integration.harness import Harness

pytestmark = pytest.mark.integration
C = Codec()


def vec(*x):
    return np.asarray(x, dtype="<f4").tobytes()


def records(cfg, topic):
    h = Harness.__new__(Harness)  # only its topic reader
    h.cfg, h.codec = cfg, C
    return h.topic_records(topic)


def raw_values(bootstrap, topic, partitions=1):
    c = kafka_io.make_consumer(bootstrap, None)
    tps = [kafka_io.TopicPartition(topic, p) for p in range(partitions)]
    c.assign(tps)
    c.seek_to_beginning()
    ends = kafka_io.end_offsets(c, tps)
    out, deadline = [], time.monotonic() + 30
    while any(c.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
        for msgs in c.poll(200).values():
            out += [m.value for m in msgs]
    c.close()
    return out


def test_a_record_too_large_is_refused_once_and_good_records_are_sent_once(kafka_bootstrap, unique):
    topic = f"sizes-{unique}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    # the broker's own limit (smaller than the producer's): refused by the broker, not the client
    admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "20000"})])
    admin.close()
    kafka_io.ensure_topics(kafka_bootstrap, [topic], 1)
    producer = kafka_io.make_producer(kafka_bootstrap)
    try:
        sends = [(topic, b"k", b"good-1"), (topic, b"k", b"x" * 50_000),          # broker refuses
                 (topic, b"k", b"y" * 2_000_000), (topic, b"k", b"good-2")]      # producer refuses
        t0 = time.monotonic()
        refused = send_acknowledged(producer, sends, "test")
        assert time.monotonic() - t0 < 20
        assert [i for i, _ in refused] == [1, 2]
        assert all("MessageSizeTooLarge" in type(e).__name__ for _, e in refused)
        assert send_acknowledged(producer, [(topic, b"k", b"good-3")], "test") == []  # the producer still works
        assert raw_values(kafka_bootstrap, topic) == [b"good-1", b"good-2", b"good-3"]  # each exactly once
    finally:
        producer.close()


def test_publish_stage_goes_on_past_a_huge_dead_letter(kafka_bootstrap, redis_url, unique):
    cfg = isolated_config(kafka_bootstrap, redis_url, unique)
    kafka_io.ensure_topics(kafka_bootstrap, cfg.all_topics(), 4)
    producer = kafka_io.make_producer(kafka_bootstrap)
    store = RedisEmbeddingStore(redis_url, cfg.redis.key_prefix)
    metrics = Metrics()
    try:
        st = PublishStage(cfg, store, producer, metrics=metrics)
        huge = b"\xc3\x01" + b"z" * 1_100_000  # ~1 MB: above the producer's max_request_size as it was
        wb = WorkBatch(0, joined=[Joined("member:a", "member", "a", 1, {}, False, [], [], 0.0)],
                       embeddings=[{"m@v1": vec(1, 2)}],
                       dead_letters=[DeadLetterOut(RawRef(cfg.topics.entity_updates, 3, 41, b"member:x", huge),
                                                   "nearline.decode", "oversize: too big", "oversize")])
        t0 = time.monotonic()
        st.run(wb)
        assert time.monotonic() - t0 < 20
        [dl] = records(cfg, cfg.topics.dead_letter)
        assert len(dl["original"]) == cfg.limits.dead_letter_original_bytes and dl["original"] == huge[:len(dl["original"])]
        assert (dl["topic"], dl["partition"], dl["offset"]) == (cfg.topics.entity_updates, 3, 41)
        assert "truncated" in dl["error"] and dl["error"].startswith("oversize: ")
        assert [m["entity_id"] for m in records(cfg, cfg.topics.embeddings)] == ["a"]
        assert store.get("member", "a")["m@v1"] == vec(1, 2)
        c = metrics.snapshot()["counters"]
        assert c["dead_letters"] == 1 and c["dead_letters_oversize"] == 1
        # a delete of an entity Redis never held: counted, and its marker written (an older upsert replayed
        # later must be refused); a tombstone goes out too
        st.run(WorkBatch(0, deleted=[Deleted("member:ghost", "member", "ghost", 7, [])]))
        assert store.r.hgetall(store.key("member", "ghost")) == {b"_v": b"7", b"_deleted": b"1"}
        assert metrics.snapshot()["counters"]["deletes_unknown_entity"] == 1
        assert store.write([("member", "ghost", 6, {"m@v1": vec(9)})], []) == [False]  # the replayed older upsert
        assert sorted((m["entity_id"], m.get("tombstone", False)) for m in records(cfg, cfg.topics.embeddings)) == \
            [("a", False), ("ghost", True)]
    finally:
        producer.close()


def test_versions_compare_exactly_up_to_int64_max(redis_url, unique):
    s = RedisEmbeddingStore(redis_url, f"v-{unique}")
    big = 2**53
    assert s.write([("job", "1", big + 1, {"m@v1": vec(1)})], []) == [True]
    assert s.write([("job", "1", big, {"m@v1": vec(2)})], []) == [False]   # was accepted with doubles
    assert s.get("job", "1")["m@v1"] == vec(1) and s.written_versions([("job", "1")]) == [(big + 1, False)]
    top = 2**63 - 1
    assert s.write([("job", "2", top - 1, {"m@v1": vec(1)})], []) == [True]
    assert s.write([("job", "2", top, {"m@v1": vec(2)})], []) == [True]
    assert s.write([], [("job", "2", top - 1)]) == [False]
    assert s.write([("job", "2", 999, {"m@v1": vec(3)})], []) == [False]   # shorter string = smaller number
    assert s.written_versions([("job", "2")]) == [(top, False)]
    assert s.write([("job", "3", 9, {"m@v1": vec(1)})], []) == [True]
    assert s.write([("job", "3", 10, {"m@v1": vec(2)})], []) == [True]      # "10" < "9" as strings: not used
    for bad in (-1, 2**63, 1.5, True):
        with pytest.raises(ValueError, match="valid range"):
            s.write([("job", "4", bad, {"m@v1": vec(1)})], [])
    # delete of an entity Redis holds nothing for: its marker, which refuses an older upsert afterwards
    assert s.write([], [("job", "never", 3)]) == [True] and s.get("job", "never") == {"_v": b"3", "_deleted": b"1"}
    assert s.written_versions([("job", "never")]) == [(3, False)]
    assert s.write([("job", "never", 2, {"m@v1": vec(1)})], []) == [False]
    assert s.write([("job", "never", 4, {"m@v1": vec(1)})], []) == [True]   # a newer one recreates it


def test_an_emptied_redis_is_detected(tmp_path, caplog):
    port = free_port()
    cmd = [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", str(tmp_path)]

    def start():
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        for _ in range(100):
            try:
                redis.Redis(port=port).ping()
                return proc
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    proc = start()
    try:
        store = RedisEmbeddingStore(f"redis://127.0.0.1:{port}/0", "emb", retry_max_s=0.5)
        metrics = Metrics()
        det = DataLossDetector(store, every_s=0, metrics=metrics)
        assert det.check() is False and det.check() is False  # first: creates the sentinel
        store.write([("job", "1", 1, {"m@v1": vec(1)})], [])
        proc.kill()   # SIGKILL, restarted empty
        proc.wait()
        proc = start()
        assert det.check() is True
        assert metrics.snapshot()["counters"]["redis_data_loss_detected"] == 1
        assert any("REDIS DATA LOSS" in r.message for r in caplog.records)
        assert det.check() is False  # the sentinel is written again; reported once per loss
    finally:
        proc.kill()
        proc.wait()


def test_a_late_complete_result_replaces_the_partial_one_even_if_equal(kafka_bootstrap, redis_url, unique):
    cfg = isolated_config(kafka_bootstrap, redis_url, unique)
    kafka_io.ensure_topics(kafka_bootstrap, cfg.all_topics(), 4)
    producer = kafka_io.make_producer(kafka_bootstrap)
    store = RedisEmbeddingStore(redis_url, cfg.redis.key_prefix)
    try:
        st = PublishStage(cfg, store, producer, metrics=Metrics())
        for partial in (True, False):
            st.run(WorkBatch(0, joined=[Joined("member:p", "member", "p", 5, {}, partial, [], [], 0.0)],
                             embeddings=[{"m@v1": vec(1, 2)}]))
        assert store.written_versions([("member", "p")]) == [(5, False)]
        assert [(m["version"], m["partial"]) for m in records(cfg, cfg.topics.embeddings)] == [(5, True), (5, False)]
    finally:
        producer.close()
