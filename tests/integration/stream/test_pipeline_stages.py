"""PublishStage against real Redis and a real broker: dedupe, in-batch ordering, full-state messages,
null-value tombstones, replays."""

import numpy as np
import pytest

from nearline.io import kafka_io
from nearline.io.codec import Codec
from nearline.io.store import RedisEmbeddingStore
from nearline.stream.join import Deleted, Joined, RawRef, ReplayTimeout
from nearline.stream.pipeline import PublishStage, WorkBatch
from tests.conftest import isolated_config
from tests.integration.harness import Harness, raw_records

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
    [tomb] = [m for m in msgs if m.get("tombstone")]
    assert tomb["key"] == "member:c" and tomb["version"] == 2
    assert not any(m.get("deleted") and not m.get("tombstone") for m in msgs)  # no deleted=true records
    assert store.get("member", "c") == {"_v": b"2", "_deleted": b"1"}
    assert [d.raw.offset for d in wb.dead_letters] == [12] and "member:e version 3" in wb.dead_letters[0].error


def test_timed_out_fragments_are_dead_lettered_only_when_nothing_resolved_them(stage):
    """No false dead letters: a re-read fragment whose EntityUpdate was committed before the restart, and
    features without an update whose entity Redis holds at a newer version (a delete marker too), are
    released and counted; features without an update of an entity Redis knows nothing newer of are not."""
    st, store, cfg = stage
    st.run(WorkBatch(0, deleted=[Deleted("member:gone", "member", "gone", 9, [])]))   # never held: a marker
    raw = RawRef("std.geo", 1, 40, b"member:x", b"\x01", True)
    fresh = RawRef("std.geo", 1, 41, b"member:x", b"\x01", False)
    before = st.metrics.snapshot()["counters"]
    wb = WorkBatch(0, replay_timeouts=[
        # re-read after a restart, its update committed before it: resolved then (e.g. deduped), released
        ReplayTimeout("member:u", "member", "u", 5, ["<EntityUpdate>"], raw, []),
        # re-read, its update re-read too but a standardizer's output missing: a real problem
        ReplayTimeout("member:w", "member", "w", 5, ["geo"], raw, []),
        # features after the entity's delete (created and deleted at once): superseded by the marker
        ReplayTimeout("member:gone", "member", "gone", 8, ["<EntityUpdate>"], fresh, [], replayed=False,
                      error="features_without_update: gone"),
        # features of an entity nobody ever updated: dead-lettered
        ReplayTimeout("member:ghost", "member", "ghost", 3, ["<EntityUpdate>"], fresh, [], replayed=False,
                      error="features_without_update: ghost")])
    st.run(wb)
    assert [(d.reason, d.raw.offset) for d in wb.dead_letters] == [("replay_incomplete", 40), ("features_without_update", 41)]
    assert "member:w version 5" in wb.dead_letters[0].error and wb.dead_letters[1].error == "features_without_update: ghost"
    after = st.metrics.snapshot()["counters"]
    assert after["replays_resolved_before_restart"] - before.get("replays_resolved_before_restart", 0) == 1
    assert after["fragments_superseded"] - before.get("fragments_superseded", 0) == 1


def test_every_message_carries_the_full_state_and_marks_what_changed(stage, kafka_bootstrap):
    st, store, cfg = stage
    st.run(WorkBatch(0, joined=[joined("f", 1)], embeddings=[{"a@v1": vec(1), "b@v1": vec(2)}]))
    # only b changes: the message still carries a (from Redis), marked unchanged
    st.run(WorkBatch(0, joined=[joined("f", 2)], embeddings=[{"a@v1": vec(1), "b@v1": vec(3)}]))
    # c@v1 is registered but not scored in this batch (e.g. disabled): its stored vector is state too
    store.write([("member", "f", 2, {"c@v1": vec(7)})], [])
    wb = WorkBatch(0, joined=[joined("f", 3)], embeddings=[{"a@v1": vec(4), "b@v1": vec(3)}])
    wb.model_keys = {"member": ["a@v1", "b@v1", "c@v1"]}
    st.run(wb)
    msgs = published(cfg, kafka_bootstrap)
    entries = [{f"{e['model']}@{e['model_version']}": (e["vector"], e["changed"]) for e in m["embeddings"]} for m in msgs]
    assert [m["version"] for m in msgs] == [1, 2, 3]
    assert entries[0] == {"a@v1": (vec(1), True), "b@v1": (vec(2), True)}
    assert entries[1] == {"a@v1": (vec(1), False), "b@v1": (vec(3), True)}
    assert entries[2] == {"a@v1": (vec(4), True), "b@v1": (vec(3), False), "c@v1": (vec(7), False)}
    stored = {k: v for k, v in store.get("member", "f").items() if not k.startswith("_")}
    assert stored == {k: v for k, (v, _) in entries[-1].items()}  # the latest message == Redis's hash
    # the version header on every message, and the value is the Avro record
    assert [dict(r.headers)["version"] for r in raw_records(cfg, cfg.topics.embeddings)] == [b"1", b"2", b"3"]


def test_a_delete_is_a_null_value_with_its_version_header(stage, kafka_bootstrap):
    st, store, cfg = stage
    st.run(WorkBatch(0, joined=[joined("g", 1)], embeddings=[{"a@v1": vec(1)}]))
    st.run(WorkBatch(0, deleted=[Deleted("member:g", "member", "g", 5, [])]))
    st.run(WorkBatch(0, deleted=[Deleted("member:never", "member", "never", 1, [])]))  # unknown: a marker too
    recs = raw_records(cfg, cfg.topics.embeddings)
    assert sorted((r.key, r.value is None, dict(r.headers)["version"]) for r in recs) == \
        [(b"member:g", False, b"1"), (b"member:g", True, b"5"), (b"member:never", True, b"1")]
    assert store.get("member", "never") == {"_v": b"1", "_deleted": b"1"} and store.written_versions([("member", "never")]) == [(1, False)]
    # an upsert after the delete starts from an empty state
    st.run(WorkBatch(0, joined=[joined("g", 6)], embeddings=[{"b@v1": vec(2)}]))
    last = [m for m in published(cfg, kafka_bootstrap) if m["entity_id"] == "g"][-1]
    assert [(e["model"], e["changed"]) for e in last["embeddings"]] == [("b", True)]
