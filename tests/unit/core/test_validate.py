"""Input checks of the job (JoinStage.admit) and the standardizers: every bad message is refused with a
readable reason code before expensive work, and good messages pass."""

import math

import pytest

from nearline.config import Config
from nearline.core.validate import INT64_MAX, REASONS, Limits, Rejected, check_features, check_key, reason_of
from nearline.io.codec import Codec
from nearline.stream.pipeline import JoinStage, KafkaRecord, RecordBatch

C = Codec()
CFG = Config()
P = CFG.topics.partitions


def partition_of(key: bytes) -> int:
    from kafka.partitioner.default import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % P


def upd_bytes(eid="m1", v=1, etype="member", op="UPSERT", fields=None):
    return C.encode("EntityUpdate", {"entity_type": etype, "entity_id": eid, "version": v, "op": op,
                                     "event_time": 0, "fields": fields or {}})


def feat_bytes(eid="m1", v=1, proc="skills", feats=None, etype="member"):
    feats = feats if feats is not None else {"skills": {"ids": [3, 4], "weights": [1.0, 0.5]}}
    return C.encode("StandardizedFeatures", {"entity_type": etype, "entity_id": eid, "version": v, "processor": proc,
                                             "features": feats, "produced_at": 0})


def record(topic, value, key=b"member:m1", partition=None, offset=0):
    if partition is None:
        partition = partition_of(key) if key else 0
    return KafkaRecord(topic, partition, offset, key, value)


def admit(rec):
    stage = JoinStage(CFG, C)
    return stage.admit(rec, rec.topic == CFG.topics.entity_updates)


def reason(rec) -> str:
    with pytest.raises(Rejected) as e:
        admit(rec)
    assert str(e.value).startswith(e.value.reason + ": ") and e.value.reason in REASONS
    return e.value.reason


UPD, SKILLS = CFG.topics.entity_updates, CFG.standardized_topic("skills")


def test_good_messages_pass():
    assert admit(record(UPD, upd_bytes()))["entity_id"] == "m1"
    assert admit(record(SKILLS, feat_bytes()))["features"]["skills"]["ids"] == [3, 4]
    assert admit(record(UPD, upd_bytes(v=INT64_MAX)))["version"] == INT64_MAX


@pytest.mark.parametrize("rec, want", [
    (record(UPD, b"\xc3\x01" + b"x" * (CFG.limits.max_message_bytes + 1)), "oversize"),
    (record(UPD, b"garbage"), "undecodable"),
    (record(UPD, feat_bytes()), "undecodable"),                              # wrong record type on the topic
    (record(UPD, upd_bytes(etype="robot"), key=b"robot:m1"), "unknown_entity_type"),
    (record(UPD, upd_bytes(), key=None, partition=0), "bad_key"),
    (record(UPD, upd_bytes(), key=b"member:m2"), "bad_key"),                 # key of another entity
    (record(UPD, upd_bytes(), key=b"member:m1", partition=(partition_of(b"member:m1") + 1) % P), "wrong_partition"),
    (record(UPD, upd_bytes(eid=""), key=b"member:"), "bad_entity_id"),
    (record(UPD, upd_bytes(eid="x" * 300), key=b"member:" + b"x" * 300), "bad_entity_id"),
    (record(UPD, upd_bytes(v=-1)), "bad_version"),
    (record(UPD, upd_bytes(fields={"title": "x" * 5000})), "bad_raw_fields"),   # as the standardizers refuse it
    (record(UPD, upd_bytes(fields={str(i): "" for i in range(100)})), "bad_raw_fields"),
    (record(SKILLS, feat_bytes(proc="title", feats={"title": {"ids": [1], "weights": None}})), "unknown_processor"),
    (record(SKILLS, feat_bytes(feats={"salary": {"ids": [1], "weights": None}})), "unknown_feature"),
    (record(SKILLS, feat_bytes(feats={"skills": {"ids": [-3], "weights": None}})), "bad_ids"),
    (record(SKILLS, feat_bytes(feats={"skills": {"ids": list(range(2000)), "weights": None}})), "bad_ids"),
    (record(SKILLS, feat_bytes(feats={"skills": {"ids": [1, 2], "weights": [1.0]}})), "bad_weights"),
    (record(SKILLS, feat_bytes(feats={"skills": {"ids": [1], "weights": [math.nan]}})), "bad_weights"),
    (record(SKILLS, feat_bytes(feats={"skills": {"ids": [1], "weights": [math.inf]}})), "bad_weights"),
    (record(SKILLS, feat_bytes(feats={"skills": {"ids": [1], "weights": [3e38]}})), "bad_weights"),
])
def test_bad_messages_are_refused_with_their_reason(rec, want):
    assert reason(rec) == want


def test_ids_beyond_int64_and_versions_are_checked_on_decoded_values():
    # Avro longs cannot carry these, but a decoder of garbage or another producer's encoder might: the
    # checks do not rely on the codec
    with pytest.raises(Rejected, match="bad_ids"):
        check_features({"entity_id": "m1", "version": 1, "processor": "skills",
                        "features": {"skills": {"ids": [2**63], "weights": None}}}, Limits())
    with pytest.raises(Rejected, match="bad_version"):
        check_features({"entity_id": "m1", "version": 2**63, "processor": "skills", "features": {}}, Limits())
    with pytest.raises(Rejected, match="bad_key"):
        check_key(b"member:m1 ", {"entity_type": "member", "entity_id": "m1"})


def test_join_stage_dead_letters_every_bad_record_with_reason_and_commits_past_it():
    stage = JoinStage(CFG, C)
    state = stage.new_state({"member": {"skills"}})
    p = partition_of(b"member:m1")
    bad = [record(UPD, b"garbage", partition=p, offset=0), record(UPD, upd_bytes(), key=b"member:zz", partition=p, offset=1)]
    wb = stage.run(state, 0, RecordBatch(bad, 1000.0))
    assert [d.reason for d in wb.dead_letters] == ["undecodable", "bad_key"]
    assert [d.error.split(":")[0] for d in wb.dead_letters] == ["undecodable", "bad_key"]
    tp = (UPD, bad[0].partition)
    assert wb.commit.get(tp) == 2  # refused records do not hold the partition back


def test_reason_of_parses_the_prefix():
    assert reason_of("oversize: message is 5 bytes") == "oversize"
    assert reason_of("something else") == "other"


def test_a_refused_standardizer_output_completes_its_join_partial_at_once():
    stage = JoinStage(CFG, C)
    state = stage.new_state({"member": {"skills", "title"}})
    key = b"member:m7"
    recs = [record(UPD, upd_bytes(eid="m7", v=3), key=key, offset=0),
            record(CFG.standardized_topic("title"), feat_bytes(eid="m7", v=3, proc="title",
                                                               feats={"title": {"ids": [1], "weights": None}}), key=key),
            record(SKILLS, feat_bytes(eid="m7", v=3, feats={"skills": {"ids": [1], "weights": [math.nan]}}), key=key)]
    wb = stage.run(state, 0, RecordBatch(recs, 1000.0))
    assert [d.reason for d in wb.dead_letters] == ["bad_weights"]
    [j] = wb.joined
    assert j.partial and j.missing == ["skills"] and not state.join.pending
    assert all(wb.commit[(r.topic, r.partition)] == r.offset + 1 for r in recs)  # nothing held back
