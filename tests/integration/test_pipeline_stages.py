"""PublishStage against real Redis and a real broker: dedupe, in-batch ordering, tombstones, replays."""

import numpy as np
import pytest

from nearline import kafka_io
from nearline.codec import Codec
from nearline.join import Deleted, Joined, RawRef, ReplayTimeout
from nearline.pipeline import PublishStage, WorkBatch
from nearline.store import RedisEmbeddingStore
from tests.conftest import isolated_config
from tests.integration.harness import Harness

pytestmark = pytest.mark.integration


def vec(*x):
    return np.asarray(x, dtype="<f4").tobytes()


def joined(eid, version, partial=False):
    return Joined(f"member:{eid}", "member", eid, version, {}, partial, [], [], 0.0)


@pytest.fixture
def stage(kafka_bootstrap, redis_url, unique, tmp_path):
    cfg = isolated_config(kafka_bootstrap, redis_url, unique)
    kafka_io.ensure_topics(kafka_bootstrap, cfg.all_topics(), 4)
    producer = kafka_io.make_producer(kafka_bootstrap)
    store = RedisEmbeddingStore(redis_url, cfg.redis.key_prefix)
    yield PublishStage(cfg, store, producer), store, cfg
    producer.close()


def published(cfg, bootstrap):
    h = Harness.__new__(Harness)  # only its topic reader
    h.cfg, h.codec = cfg, Codec()
    return h.topic_records(cfg.topics.embeddings)


def test_versions_of_one_entity_in_one_batch_are_compared_in_order(stage, kafka_bootstrap):
    st, store, cfg = stage
    wb = WorkBatch(0, joined=[joined("a", 1), joined("a", 2), joined("a", 3)],
                   embeddings=[{"m@v1": vec(1, 2)}, {"m@v1": vec(1, 2)}, {"m@v1": vec(5, 5)}])
    st.run(wb)
    msgs = published(cfg, kafka_bootstrap)
    assert [m["version"] for m in msgs] == [1, 3]  # version 2 changed nothing: no message
    assert store.get("member", "a") == {"_v": b"3", "m@v1": vec(5, 5)}


def test_unchanged_across_batches_and_stale_versions_write_nothing(stage, kafka_bootstrap):
    st, store, cfg = stage
    st.run(WorkBatch(0, joined=[joined("b", 5)], embeddings=[{"m@v1": vec(1)}]))
    st.run(WorkBatch(0, joined=[joined("b", 6)], embeddings=[{"m@v1": vec(1)}]))      # unchanged
    st.run(WorkBatch(0, joined=[joined("b", 4)], embeddings=[{"m@v1": vec(9)}]))      # older: stale
    st.run(WorkBatch(0, joined=[joined("b", 7, partial=True)], embeddings=[{"m@v1": vec(2)}]))
    msgs = published(cfg, kafka_bootstrap)
    assert [(m["version"], m["partial"]) for m in msgs] == [(5, False), (7, True)]
    assert store.written_versions([("member", "b")]) == [(7, True)]


def test_tombstones_and_replay_timeouts(stage, kafka_bootstrap):
    st, store, cfg = stage
    st.run(WorkBatch(0, joined=[joined("c", 1), joined("d", 1)], embeddings=[{"m@v1": vec(1)}, {"m@v1": vec(1)}]))
    raw = RawRef("entity-updates", 0, 12, b"member:c", b"\x01", True)
    wb = WorkBatch(0, deleted=[Deleted("member:c", "member", "c", 2, [])], replay_timeouts=[
        ReplayTimeout("member:d", "member", "d", 1, ["geo"], raw, []),    # version 1 is in Redis: released
        ReplayTimeout("member:e", "member", "e", 3, ["geo"], raw, [])])   # never written: dead-lettered
    st.run(wb)
    msgs = published(cfg, kafka_bootstrap)
    assert msgs[-1]["deleted"] and msgs[-1]["entity_id"] == "c" and msgs[-1]["embeddings"] == []
    assert store.get("member", "c") == {"_v": b"2", "_deleted": b"1"}
    assert [d.raw.offset for d in wb.dead_letters] == [12] and "member:e version 3" in wb.dead_letters[0].error
