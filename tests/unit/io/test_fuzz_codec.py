"""Property-based fuzzing (hypothesis) of the decoder and the job's input checks: whatever bytes arrive,
decoding either returns a record or raises CodecError, and JoinStage.admit either returns a message or
raises Rejected with a known reason; valid records round-trip exactly.

Each outcome is checked against what the input is, not only its type: bytes whose header is not a known
schema raise UnknownSchemaError with the exact text, a known header with a bad datum raises CodecError
"malformed <name> payload: ...", a well-formed datum decodes to exactly the record written, and
JoinStage.admit refuses with the one reason an independent model of the checks
(:func:`expected_reason`) names, and admits, unchanged, every message the model finds valid. Valid
inputs are a large share of what is generated, so a decoder or admit that refused everything fails."""

import copy
import math
import re

import fastavro.validation
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2

from nearline.config import Config
from nearline.core.validate import REASONS, Rejected
from nearline.io.codec import HEADER_LEN, MAGIC, Codec, CodecError, UnknownSchemaError
from nearline.registry.features import build_inputs
from nearline.registry.manifest import InputFeature, Manifest
from nearline.standardize.processors import PROCESSORS
from nearline.stream.pipeline import JoinStage, KafkaRecord

C = Codec()
CFG = Config()
STAGE = JoinStage(CFG, C)
FP = {name: C.store.fingerprints[name] for name in ("EntityUpdate", "StandardizedFeatures", "DeadLetter")}
NAME_OF_FP = {fp: w["name"].split(".")[-1] for fp, w in C.store.writers.items()}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INT64_MAX = 2**63 - 1
PAYLOAD_ERRORS = "EOFError|IndexError|UnicodeDecodeError"  # what fastavro raises on a truncated/garbage datum
# the codec's own refusal of a datum that decodes but leaves bytes it does not account for
TRAILING_BYTES = r"[1-9]\d* trailing bytes after the record"
TOPIC_PROCESSOR = {CFG.standardized_topic(p): p for p in CFG.standardizers.processors}
PRODUCES = {p: set(PROCESSORS[p].features) for p in CFG.standardizers.processors}

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
dead_letters = st.fixed_dictionaries({
    "original": st.binary(max_size=40), "key": st.none() | st.binary(max_size=20), "topic": text,
    "partition": st.integers(-(2**31), 2**31 - 1), "offset": longs, "stage": text, "error": text, "time": longs})
RECORDS = {"EntityUpdate": updates, "StandardizedFeatures": features, "DeadLetter": dead_letters}

# valid for JoinStage.admit by construction (the checks of nearline.core.validate, default limits)
valid_updates = st.fixed_dictionaries({
    "entity_type": st.sampled_from(["member", "job"]), "entity_id": st.text(min_size=1, max_size=40),
    "version": st.integers(0, INT64_MAX), "op": st.sampled_from(["UPSERT", "DELETE"]), "event_time": longs,
    "fields": st.dictionaries(text, text, max_size=5)})


ABOVE_LIMIT = float(np.nextafter(np.float32(CFG.limits.max_abs_weight), np.float32(np.inf)))
EDGE_WEIGHTS = [CFG.limits.max_abs_weight, -CFG.limits.max_abs_weight, ABOVE_LIMIT, -ABOVE_LIMIT, float(np.float32(1e30)),
                float("inf"), float("-inf"), float("nan")]


@st.composite
def one_feature(draw, edgy=False):
    """Valid ids and weights; ``edgy``: then often one negative id, or weights (still one per id) with one
    at or beyond the limits (NaN, infinite, just above max_abs_weight), so the id and weight checks decide."""
    ids = draw(st.lists(st.integers(0, INT64_MAX), max_size=8))
    lim = CFG.limits.max_abs_weight
    weights = draw(st.none() | st.lists(st.floats(-lim, lim, width=32), min_size=len(ids), max_size=len(ids)))
    if edgy and draw(st.booleans()):
        ids.insert(draw(st.integers(0, len(ids))), draw(st.integers(-3, -1)))
        weights = None if weights is None else weights + [1.0]
    if edgy and draw(st.booleans()) and ids:
        weights = weights or [1.0] * len(ids)
        weights[draw(st.integers(0, len(ids) - 1))] = draw(st.sampled_from(EDGE_WEIGHTS) | st.floats(width=32))
    return {"ids": ids, "weights": weights}


@st.composite
def valid_features(draw, edgy=False):
    proc = draw(st.sampled_from(CFG.standardizers.processors))
    return {"entity_type": draw(st.sampled_from(["member", "job"])), "entity_id": draw(st.text(min_size=1, max_size=40)),
            "version": draw(st.integers(0, INT64_MAX)), "processor": proc,
            "features": draw(st.dictionaries(st.sampled_from(sorted(PRODUCES[proc])), one_feature(edgy), max_size=2)),
            "produced_at": draw(longs)}


def same(a, b) -> bool:
    """Equality with NaN equal to NaN (float weights)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and a == b


def with_defaults(name: str, rec: dict) -> dict:
    """``rec`` as a reader of schema ``name`` gets it back: fields it lacks take their schema default."""
    return {f["name"]: rec[f["name"]] if f["name"] in rec else f["default"] for f in C.store.readers[name]["fields"]}


def header_verdict(data: bytes, expect: str | None) -> tuple[type | None, str]:
    """(the exception decode must raise, its exact text) for a header no reader can use, else (None, the
    writer's record name): the datum decides."""
    if len(data) >= HEADER_LEN and data[:2] == MAGIC:
        fp = bytes(data[2:HEADER_LEN])
        name = NAME_OF_FP.get(fp)
        if name is None:
            return UnknownSchemaError, f"unknown writer schema fingerprint {fp.hex()}"
        if expect is not None and name != expect:
            return CodecError, f"expected a {expect} message, got {name}"
        return None, name
    if len(data) >= 5 and data[:1] == b"\x00":
        return UnknownSchemaError, (f"not decodable as Avro here: starts with the Confluent magic byte 0 (schema id "
                                    f"{int.from_bytes(data[1:5], 'big')}), but no kafka.schema_registry_url is "
                                    f"configured to look the id up")
    return UnknownSchemaError, f"not an Avro single-object message nor Confluent-framed (starts {data[:12].hex()!r})"


def decode_checked(data: bytes, expect: str | None = None) -> dict | None:
    """C.decode(data, expect), checked: None when it raised exactly the error the bytes call for; else the
    record, which must be valid for its reader schema and survive encode -> decode unchanged."""
    kind, what = header_verdict(data, expect)
    if kind is not None:
        with pytest.raises(kind) as ei:
            C.decode(data, expect=expect)
        assert type(ei.value) is kind and str(ei.value) == what
        event(f"refused: {kind.__name__}")
        return None
    try:
        rec = C.decode(data, expect=expect)
    except CodecError as exc:
        assert type(exc) is CodecError
        assert re.fullmatch(rf"malformed {what} payload: (({PAYLOAD_ERRORS}): .*|{TRAILING_BYTES})", str(exc), re.S), str(exc)
        event("refused: malformed payload")
        return None
    event("decoded")
    name = expect or what
    assert fastavro.validation.validate(rec, C.store.readers[name], raise_errors=True)
    assert same(C.decode(C.encode(name, rec), expect=name), rec)
    return rec


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_codec_error(data):
    decode_checked(data)
    decode_checked(data, expect="EntityUpdate")


@FUZZ
@given(st.sampled_from(sorted(FP)), st.data())
def test_a_known_header_with_garbage_payload_raises_codec_error_only(name, data):
    """A known header with either a garbage payload or a well-formed datum of that schema."""
    rec = data.draw(st.none() | RECORDS[name], label="record")
    payload = data.draw(st.binary(max_size=300), label="garbage") if rec is None else C.encode(name, rec)[HEADER_LEN:]
    got = decode_checked(MAGIC + FP[name] + payload)
    if rec is not None:
        assert got is not None and same(got, with_defaults(name, rec))
    decode_checked(MAGIC + FP[name] + payload, expect="EntityUpdate")


@FUZZ
@given(updates, st.data())
def test_mutated_valid_messages_raise_codec_error_only(upd, data):
    enc = C.encode("EntityUpdate", upd)
    assert C.decode(enc, expect="EntityUpdate") == with_defaults("EntityUpdate", upd)  # round trip first
    cut = data.draw(st.integers(0, len(enc) - 1))
    assert decode_checked(enc[:cut], expect="EntityUpdate") is None  # a truncated message is never accepted
    mutated = bytearray(enc)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(enc) - 1))
        mutated[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(enc)))
    decode_checked(bytes(mutated[:cut]), expect="EntityUpdate")
    got = decode_checked(bytes(mutated), expect="EntityUpdate")
    if bytes(mutated) == enc:  # the "mutations" wrote the bytes already there
        assert got == with_defaults("EntityUpdate", upd)


@FUZZ
@given(features)
def test_valid_features_round_trip(feats):
    got = C.decode(C.encode("StandardizedFeatures", feats), expect="StandardizedFeatures")
    assert same(got, with_defaults("StandardizedFeatures", feats))  # weights are float32 already (width=32): exact, NaN included


def expected_reason(topic: str, written: tuple[str, dict] | None, key: bytes | None, partition: int) -> str | None:
    """The reason JoinStage.admit must refuse with (None: admit), from the documented checks in their
    order; ``written`` is (record name, record) of an encoded value, None for raw bytes."""
    is_update = topic == CFG.topics.entity_updates
    if written is None or written[0] != ("EntityUpdate" if is_update else "StandardizedFeatures"):
        return "undecodable"
    msg = written[1]
    if msg["entity_type"] not in CFG.entity_types:
        return "unknown_entity_type"
    if not 1 <= len(msg["entity_id"]) <= CFG.limits.max_entity_id_chars:
        return "bad_entity_id"
    if not 0 <= msg["version"] <= INT64_MAX:
        return "bad_version"
    if is_update and (len(msg["fields"]) > CFG.limits.max_fields
                      or any(len(v) > CFG.limits.max_field_chars for v in msg["fields"].values())):
        return "bad_raw_fields"
    want_key = f"{msg['entity_type']}:{msg['entity_id']}".encode()
    if key != want_key:
        return "bad_key"
    if partition != (murmur2(want_key) & 0x7FFFFFFF) % CFG.topics.partitions:
        return "wrong_partition"
    if is_update:
        return None
    proc = TOPIC_PROCESSOR.get(topic)
    if proc is not None:  # a topic of a known processor: its features only
        if msg["processor"] != proc:
            return "unknown_processor"
        if set(msg["features"]) - PRODUCES[proc]:
            return "unknown_feature"
    for f in msg["features"].values():
        if len(f["ids"]) > CFG.limits.max_ids_per_feature or not all(0 <= t <= INT64_MAX for t in f["ids"]):
            return "bad_ids"
        w = f["weights"]
        if w is not None and (len(w) != len(f["ids"]) or
                              not all(math.isfinite(x) and abs(x) <= CFG.limits.max_abs_weight for x in w)):
            return "bad_weights"
    return None


def admit_checked(topic: str, value: bytes, written: tuple[str, dict] | None, key: bytes | None,
                  partition: int) -> dict | None:
    """STAGE.admit, checked against :func:`expected_reason`: the admitted message is the record written;
    a refusal is a Rejected with exactly the expected reason."""
    want = expected_reason(topic, written, key, partition)
    try:
        msg = STAGE.admit(KafkaRecord(topic, partition, 0, key, value), topic == CFG.topics.entity_updates)
    except Rejected as exc:
        event(f"refused: {exc.reason}")
        assert exc.reason in REASONS and str(exc).startswith(exc.reason + ": ")
        assert exc.reason == want, f"refused for {exc}, expected {want or 'admission'}"
        return None
    event("admitted")
    assert want is None, f"admitted, expected a refusal for {want}"
    assert msg == with_defaults(*written)
    return msg


@st.composite
def admit_inputs(draw):
    topic = draw(st.sampled_from(CFG.input_topics()))
    kind = draw(st.sampled_from(["bytes", "update", "features", "valid update", "valid features", "edgy features"]))
    if kind == "bytes":
        value = draw(st.binary(max_size=200))
        assume(header_verdict(value, None)[0] is not None)  # not a decodable header (practically never)
        return topic, value, None, draw(st.none() | st.binary(max_size=30)), draw(st.integers(0, 3))
    if kind == "update":
        written = ("EntityUpdate", draw(updates))
    elif kind == "features":
        written = ("StandardizedFeatures", draw(features))
    elif kind == "valid update":
        written = ("EntityUpdate", draw(valid_updates))
        topic = draw(st.just(CFG.topics.entity_updates) | st.just(topic))
    else:
        written = ("StandardizedFeatures", draw(valid_features(edgy=kind == "edgy features")))
        topic = draw(st.just(CFG.standardized_topic(written[1]["processor"])) | st.just(topic))
    key = f"{written[1]['entity_type']}:{written[1]['entity_id']}".encode()
    key = draw(st.just(key) | st.just(key) | st.none() | st.binary(max_size=30))
    right = (murmur2(key) & 0x7FFFFFFF) % CFG.topics.partitions if key is not None else 0
    partition = draw(st.just(right) | st.just(right) | st.integers(0, 3))
    return topic, C.encode(*written), written, key, partition


@FUZZ
@given(admit_inputs())
def test_admit_accepts_or_rejects_with_a_reason_never_raises_otherwise(inp):
    admit_checked(*inp)


@FUZZ
@given(st.one_of(valid_updates.map(lambda u: ("EntityUpdate", u)),
                 valid_features().map(lambda f: ("StandardizedFeatures", f))))
def test_valid_messages_on_their_topic_with_their_key_are_admitted_unchanged(written):
    name, rec = written
    topic = CFG.topics.entity_updates if name == "EntityUpdate" else CFG.standardized_topic(rec["processor"])
    key = f"{rec['entity_type']}:{rec['entity_id']}".encode()
    part = (murmur2(key) & 0x7FFFFFFF) % CFG.topics.partitions
    msg = STAGE.admit(KafkaRecord(topic, part, 0, key, C.encode(name, rec)), name == "EntityUpdate")  # no Rejected
    assert msg == with_defaults(name, rec)


@FUZZ
@given(valid_features(), st.data())
def test_one_bad_id_or_weight_is_refused_with_its_reason(feats, data):
    """Valid features but for one id (negative) or one weight (NaN, infinite or beyond max_abs_weight)."""
    feats = copy.deepcopy(feats)
    name = data.draw(st.sampled_from(sorted(PRODUCES[feats["processor"]])))
    f = feats["features"].setdefault(name, {"ids": [7], "weights": None})
    if not f["ids"]:
        f["ids"].append(7)
        f["weights"] = None if f["weights"] is None else [1.0]
    pos = data.draw(st.integers(0, len(f["ids"]) - 1))
    if data.draw(st.booleans(), label="bad id"):
        bad = data.draw(st.integers(-(2**63), -1))
        f["ids"][pos] = bad
        want = f"bad_ids: feature {name}: taxonomy id {bad} is not in [0, 2**63-1]"
    else:
        limit = CFG.limits.max_abs_weight
        bad = data.draw(st.sampled_from(EDGE_WEIGHTS[2:]) | st.floats(width=32).filter(lambda w: not abs(w) <= limit))
        f["weights"] = f["weights"] or [1.0] * len(f["ids"])
        f["weights"][pos] = bad
        want = f"bad_weights: feature {name}: weight {bad!r} is not finite within +-{limit:g} (limits.max_abs_weight)"
    key = f"{feats['entity_type']}:{feats['entity_id']}".encode()
    part = (murmur2(key) & 0x7FFFFFFF) % CFG.topics.partitions
    assert expected_reason(CFG.standardized_topic(feats["processor"]), ("StandardizedFeatures", feats), key, part) == want.split(":")[0]
    with pytest.raises(Rejected) as ei:
        STAGE.admit(KafkaRecord(CFG.standardized_topic(feats["processor"]), part, 0, key,
                                C.encode("StandardizedFeatures", feats)), False)
    assert str(ei.value) == want


@FUZZ
@given(st.one_of(features, valid_features(), valid_features(edgy=True)), st.data())
def test_features_admitted_by_the_job_always_build_model_inputs(feats, data):
    """Whatever passes the job's checks can be turned into tensors (no crash later in ScoreStage)."""
    key = f"{feats['entity_type']}:{feats['entity_id']}".encode()
    part = (murmur2(key) & 0x7FFFFFFF) % CFG.topics.partitions
    topic = CFG.standardized_topic(feats["processor"]) if feats["processor"] != "x" else "std.x"
    msg = admit_checked(topic, C.encode("StandardizedFeatures", feats), ("StandardizedFeatures", feats), key, part)
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
            assert feed[f.weight_input].shape == (1, f.max_len)
            assert np.isfinite(feed[f.weight_input]).all()


def test_header_constants():
    assert HEADER_LEN == len(MAGIC) + 8
    with pytest.raises(UnknownSchemaError, match=r"^not an Avro single-object message nor Confluent-framed \(starts ''\)$"):
        C.decode(b"")
