"""Property-based fuzzing (hypothesis) of the decoder and the job's input checks: whatever bytes arrive,
decoding either returns a record or raises CodecError, and JoinStage.admit either returns a message or
raises Rejected with a known reason; valid records round-trip exactly."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nearline.config import Config
from nearline.core.validate import REASONS, Rejected
from nearline.io.codec import HEADER_LEN, MAGIC, Codec, CodecError
from nearline.stream.pipeline import JoinStage, KafkaRecord

C = Codec()
CFG = Config()
STAGE = JoinStage(CFG, C)
FP = {name: C.store.fingerprints[name] for name in ("EntityUpdate", "StandardizedFeatures", "DeadLetter")}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)
text = st.text(max_size=40)
updates = st.fixed_dictionaries({
    "entity_type": st.sampled_from(["member", "job", "robot", ""]), "entity_id": text, "version": longs,
    "op": st.sampled_from(["UPSERT", "DELETE"]), "event_time": longs,
    "fields": st.dictionaries(text, text, max_size=5)})
features = st.fixed_dictionaries({
    "entity_type": st.sampled_from(["member", "job"]), "entity_id": text, "version": longs,
    "processor": st.sampled_from(["title", "skills", "company", "geo", "x"]),
    "features": st.dictionaries(st.sampled_from(["title", "seniority", "skills", "company", "geo", "salary"]),
                                st.fixed_dictionaries({"ids": st.lists(longs, max_size=8),
                                                       "weights": st.none() | st.lists(st.floats(width=32), max_size=8)}),
                                max_size=3),
    "produced_at": longs})


def decode_or_codec_error(data, expect=None):
    try:
        return C.decode(data, expect=expect)
    except CodecError:
        return None


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_codec_error(data):
    decode_or_codec_error(data)


@FUZZ
@given(st.sampled_from(sorted(FP)), st.binary(max_size=300))
def test_a_known_header_with_garbage_payload_raises_codec_error_only(name, payload):
    decode_or_codec_error(MAGIC + FP[name] + payload)
    decode_or_codec_error(MAGIC + FP[name] + payload, expect="EntityUpdate")


@FUZZ
@given(updates, st.data())
def test_mutated_valid_messages_raise_codec_error_only(upd, data):
    enc = bytearray(C.encode("EntityUpdate", upd))
    assert C.decode(bytes(enc), expect="EntityUpdate") == upd  # round trip first
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(enc) - 1))
        enc[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(enc)))
    decode_or_codec_error(bytes(enc[:cut]), expect="EntityUpdate")
    decode_or_codec_error(bytes(enc), expect="EntityUpdate")


@FUZZ
@given(features)
def test_valid_features_round_trip(feats):
    got = C.decode(C.encode("StandardizedFeatures", feats), expect="StandardizedFeatures")
    assert got.keys() == feats.keys() and got["version"] == feats["version"]
    for name, f in feats["features"].items():
        assert got["features"][name]["ids"] == f["ids"]


def admit_or_reject(topic, value, key, partition):
    try:
        return STAGE.admit(KafkaRecord(topic, partition, 0, key, value), topic == CFG.topics.entity_updates)
    except Rejected as exc:
        assert exc.reason in REASONS and str(exc).startswith(exc.reason + ": ")
        return None


@FUZZ
@given(st.sampled_from(CFG.input_topics()), st.one_of(st.binary(max_size=200), updates.map(lambda u: C.encode("EntityUpdate", u)),
                                                     features.map(lambda f: C.encode("StandardizedFeatures", f))),
       st.none() | st.binary(max_size=30), st.integers(0, 3))
def test_admit_accepts_or_rejects_with_a_reason_never_raises_otherwise(topic, value, key, partition):
    admit_or_reject(topic, value, key, partition)


@FUZZ
@given(features, st.data())
def test_features_admitted_by_the_job_always_build_model_inputs(feats, data):
    """Whatever passes the job's checks can be turned into tensors (no crash later in ScoreStage)."""
    from nearline.registry.features import build_inputs
    from nearline.registry.manifest import InputFeature, Manifest

    key = f"{feats['entity_type']}:{feats['entity_id']}".encode()
    from kafka.partitioner.default import murmur2

    part = (murmur2(key) & 0x7FFFFFFF) % CFG.topics.partitions
    msg = admit_or_reject(CFG.standardized_topic(feats["processor"]) if feats["processor"] != "x" else "std.x",
                          C.encode("StandardizedFeatures", feats), key, part)
    if msg is None:
        return
    man = Manifest("m", "v1", "member", [InputFeature(n, "p", vocab_size=data.draw(st.integers(3, 50)),
                                                      max_len=data.draw(st.integers(1, 6)), weighted=data.draw(st.booleans()))
                                         for n in ("title", "seniority", "skills", "company", "geo")],
                   "embedding", 4, "0" * 64)
    feed = build_inputs(man, [msg["features"]])
    for f in man.inputs:
        ids = feed[f.onnx_input]
        assert ids.shape == (1, f.max_len) and ids.min() >= 0 and ids.max() < f.vocab_size
        if f.weighted:
            import numpy as np

            assert np.isfinite(feed[f.weight_input]).all()


def test_header_constants():
    assert HEADER_LEN == len(MAGIC) + 8
    with pytest.raises(CodecError):
        C.decode(b"")
