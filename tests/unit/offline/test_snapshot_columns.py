"""decode_snapshots (nearline/offline/snapshot_columns.py) against the record-by-record path it replaces in the
backfill, Codec.decode + FeatureColumns.from_rows: the same fields, the same columns (bit for bit), the same
per-row errors and the same tensors; for single-object and Confluent framing, mixed with older-schema,
foreign and corrupt records; and corrupt datums never hang or fail the batch."""

import copy
import io
import json
import re
import struct

import fastavro
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nearline.io.codec import SCHEMAS_DIR, Codec, CodecError, RegistrySchemas
from nearline.offline.snapshot_columns import SCANNED_FINGERPRINT, SCHEMA, _framed, decode_snapshots
from nearline.registry.features import FeatureColumns, build_feed
from tests.unit.registry.test_features_columns import SHIPPED, assert_same_feed

C = Codec()
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference(values, codec=C):
    """What the backfill did per record: Codec.decode, then the features dict through from_rows."""
    recs, errors = [], {}
    for i, v in enumerate(values):
        try:
            recs.append(codec.decode(v, expect=SCHEMA))
        except CodecError as exc:
            recs.append(None)
            errors[i] = str(exc)
    return recs, errors


def assert_same_columns(got: FeatureColumns, want: FeatureColumns):
    assert got.n == want.n
    names = set(got.columns) | set(want.columns)
    for name in names:
        g, w = got.column(name), want.column(name)
        for field in ("present", "offsets", "ids", "weights", "has_weights", "error_at"):
            a, b = getattr(g, field), getattr(w, field)
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), (name, field, a, b)
        assert g.errors == w.errors, name


def assert_matches_reference(values, codec=C):
    sc = decode_snapshots(values, codec)
    recs, errors = reference(values, codec)
    assert len(sc) == len(values) and set(sc.errors) == set(errors)
    for i, e in errors.items():
        assert re.sub(" at 0x[0-9a-f]+", "", e) in re.sub(" at 0x[0-9a-f]+", "", sc.errors[i])  # fastavro names its BytesIO
        assert sc.features.row_errors[i] == sc.errors[i]  # never scored with defaults
    good = [i for i in range(len(values)) if i not in errors]
    for i in good:
        r = recs[i]
        assert (sc.entity_type[i], sc.entity_id[i], sc.version[i], sc.partial[i], sc.missing[i]) == \
               (r["entity_type"], r["entity_id"], r["version"], r["partial"], r["missing"])
    assert_same_columns(sc.features.take(good), FeatureColumns.from_rows([recs[i]["features"] for i in good]))
    return sc, recs


longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)
small_ids = st.one_of(st.integers(-3, 120), st.integers(-3, 120), longs)


@st.composite
def snapshot_feature(draw):
    ids = draw(st.lists(small_ids, max_size=15))
    w = draw(st.one_of(st.none(), st.lists(st.floats(width=32), min_size=len(ids), max_size=len(ids)),
                       st.lists(st.floats(width=32), max_size=6)))  # the last: a length that does not match
    return {"ids": ids, "weights": w}


records = st.fixed_dictionaries({
    "entity_type": st.sampled_from(["member", "job", ""]), "entity_id": st.text(max_size=12), "version": longs,
    "partial": st.booleans(), "missing": st.lists(st.text(max_size=6), max_size=3),
    "features": st.dictionaries(st.sampled_from(["title", "seniority", "skills", "company", "geo", "x" * 70, "é"]),
                                snapshot_feature(), max_size=6),
    "written_at": longs})


@FUZZ
@given(st.lists(records, min_size=1, max_size=12))
def test_fuzzed_records_decode_as_codec_decode_plus_from_rows(recs):
    values = [C.encode(SCHEMA, r) for r in recs]
    sc, _ = assert_matches_reference(values)
    assert not sc.errors and sc.from_block.all()


@FUZZ
@given(st.lists(records, min_size=1, max_size=6), st.data())
def test_corrupt_datums_cost_only_their_own_row(recs, data):
    """Bytes flipped, cut or appended in some records: never an exception or a hang, and every row is what
    the record-by-record decode gives (a record, or an error)."""
    values = [bytearray(C.encode(SCHEMA, r)) for r in recs]
    for v in data.draw(st.lists(st.sampled_from(values), max_size=3)):
        how = data.draw(st.sampled_from(["flip", "cut", "append"]))
        if how == "flip" and len(v) > 10:
            v[data.draw(st.integers(10, len(v) - 1))] = data.draw(st.integers(0, 255))
        elif how == "cut" and len(v) > 10:
            del v[data.draw(st.integers(10, len(v) - 1)):]
        else:
            v.extend(data.draw(st.binary(min_size=1, max_size=4)))
    assert_matches_reference([bytes(v) for v in values])


@pytest.mark.timeout(60)  # polars-avro spins forever on a block with bytes left over: the scan must keep them out
def test_trailing_bytes_after_the_last_record_do_not_hang_the_read():
    values = [C.encode(SCHEMA, r) for r in _records(5)]
    values[-1] += b"\x00\x00"
    framed = _framed([v[10:] for v in values])
    assert framed.tolist() == [True, True, True, True, False]
    sc, _ = assert_matches_reference(values)
    assert sc.entity_id[-1] is None  # the record-by-record path refuses bytes the record does not account for


def _records(n, rng=None):
    rng = rng or np.random.default_rng(1)
    out = []
    for i in range(n):
        feats = {}
        for name in ("title", "seniority", "skills", "company", "geo"):
            if rng.random() < 0.85:
                k = int(rng.choice([0, 1, 3, 12, 20]))
                feats[name] = {"ids": rng.integers(0, 150, size=k).tolist(),
                               "weights": rng.random(k).astype(np.float32).tolist() if rng.random() < 0.5 else None}
        out.append({"entity_type": "member", "entity_id": f"m{i}", "version": i, "partial": i % 4 == 0,
                    "missing": ["geo"] if i % 4 == 0 else [], "features": feats, "written_at": 1_700_000_000_000 + i})
    return out


def _older_schema():
    """A FeatureSnapshot as an older writer might have had it: no partial/missing fields."""
    sch = json.loads((SCHEMAS_DIR / "FeatureSnapshot.avsc").read_text())
    sch["fields"] = [f for f in sch["fields"] if f["name"] not in ("partial", "missing")]
    return sch


def _codec_with_older_schema():
    store = copy.deepcopy(C.store)
    old_fp = store.add(_older_schema(), as_reader=False)
    return Codec(store), old_fp


def test_a_mixed_batch_keeps_every_record_in_its_place():
    codec, old_fp = _codec_with_older_schema()
    recs = _records(40)
    values = [codec.encode(SCHEMA, r) for r in recs]
    old = {k: v for k, v in recs[7].items() if k not in ("partial", "missing")}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, codec.store.writers[old_fp], old)
    values[7] = b"\xc3\x01" + old_fp + buf.getvalue()          # an older writer schema: resolved one by one
    values[12] = b"\xc3\x01" + b"\x01" * 8 + values[12][10:]   # an unknown fingerprint
    values[13] = b"garbage!"
    values[20] = None                                          # a value that is not bytes at all
    values[21] = codec.encode("EntityUpdate", {"entity_type": "member", "entity_id": "m21", "version": 1,
                                               "op": "UPSERT", "event_time": 0, "fields": {}})  # another type
    values[30] = values[30][:-4]                               # truncated: not framed, and fastavro fails too
    sc, refs = assert_matches_reference(values, codec)
    assert set(sc.errors) == {12, 13, 20, 21, 30} and np.flatnonzero(~sc.from_block).tolist() == [7, 12, 13, 20, 21, 30]
    assert sc.partial[7] is False and sc.missing[7] == [] and sc.entity_id[7] == "m7"  # the reader's defaults
    good = [i for i in range(40) if i not in sc.errors]
    for man in SHIPPED:
        feed, errors = build_feed(man, sc.features)
        assert set(errors) == set(sc.errors)
        want = build_feed(man, FeatureColumns.from_rows([refs[i]["features"] for i in good]))[0]
        assert_same_feed({k: v[good] for k, v in feed.items()}, want)


def test_tensors_from_decode_snapshots_are_build_inputs_of_the_decoded_dicts():
    from nearline.registry.features import build_inputs, build_inputs_columns

    recs = _records(500, np.random.default_rng(5))
    values = [C.encode(SCHEMA, r) for r in recs]
    sc = decode_snapshots(values, C)
    for man in SHIPPED:
        assert_same_feed(build_inputs_columns(man, sc.features), build_inputs(man, [C.decode(v)["features"] for v in values]))
    assert sc.from_block.all()
    sub = sc.take([499, 3, 3, 250])
    assert sub.from_block.all() and sub.entity_id == ["m499", "m3", "m3", "m250"] and sub.version == [499, 3, 3, 250]
    assert_same_feed(build_inputs_columns(SHIPPED[0], sub.features),
                     build_inputs(SHIPPED[0], [recs[i]["features"] for i in (499, 3, 3, 250)]))


def test_confluent_framing_with_a_known_id_takes_the_block_path():
    """No registry server: the ids the codec would have registered are put in its cache (RegistrySchemas
    keeps name -> id and id -> writer schema), which is all decode and encode consult once cached."""
    codec_old, old_fp = _codec_with_older_schema()
    reg = RegistrySchemas("http://127.0.0.1:9")
    reg.ids[SCHEMA] = 41
    reg.writers[41] = C.store.readers[SCHEMA]
    reg.writers[17] = codec_old.store.writers[old_fp]  # an older schema under another id
    codec = Codec(codec_old.store, wire_format="confluent", registry=reg)
    recs = _records(30)
    values = [codec.encode(SCHEMA, r) for r in recs]
    assert values[0][:5] == b"\x00" + (41).to_bytes(4, "big")
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, reg.writers[17], {k: v for k, v in recs[3].items() if k not in ("partial", "missing")})
    values[3] = b"\x00" + (17).to_bytes(4, "big") + buf.getvalue()
    values[4] = C.encode(SCHEMA, recs[4])  # single-object in a Confluent topic: also read in the block
    sc, _ = assert_matches_reference(values, codec)
    assert not sc.errors and sc.entity_id[3] == "m3" and sc.missing[3] == []
    assert np.flatnonzero(~sc.from_block).tolist() == [3]


def test_a_signaling_nan_weight_comes_back_as_the_dict_path_gives_it():
    rec = {"entity_type": "member", "entity_id": "m", "version": 1, "partial": False, "missing": [],
           "features": {"skills": {"ids": [1, 2], "weights": [0.25, 0.5]}}, "written_at": 0}
    value = C.encode(SCHEMA, rec)
    snan = struct.pack("<I", 0x7F800001)
    value = value.replace(struct.pack("<f", 0.5), snan)
    sc, _ = assert_matches_reference([value, value])
    assert sc.features.column("skills").weights.view(np.uint32)[1] == 0x7FC00001


def test_the_scan_walks_the_current_schema():
    """_Scan hard-codes FeatureSnapshot's layout: a schema change must update it (and this fingerprint)."""
    assert C.store.fingerprints[SCHEMA] == SCANNED_FINGERPRINT


def test_arrays_in_several_blocks_or_with_byte_sizes_are_read_in_the_block():
    """Avro lets a writer split an array into blocks and give a block's byte size (a negative count);
    fastavro never does, other writers may: the scan follows them."""
    rec = {"entity_type": "member", "entity_id": "m", "version": 1, "partial": False, "missing": [],
           "features": {"skills": {"ids": [5, 6], "weights": None}}, "written_at": 0}
    value = C.encode(SCHEMA, rec)
    canonical = b"\x04\x0a\x0c\x00"  # count 2, ids 5 and 6, end
    assert value.count(canonical) == 1
    variants = [value.replace(canonical, b"\x02\x0a\x02\x0c\x00"),    # two blocks of one
                value.replace(canonical, b"\x03\x04\x0a\x0c\x00"),    # count -2, 2 bytes
                value.replace(canonical, b"\x03\x06\x0a\x0c\x00")]    # a byte size that is wrong
    sc, recs = assert_matches_reference([value] + variants)
    assert all(r["features"]["skills"]["ids"] == [5, 6] for r in recs)
    assert sc.from_block.tolist() == [True, True, True, False]


def test_the_backfill_path_scores_as_the_job_path():
    """decode_snapshots -> rows of one entity type -> ModelSet.score_columns (chosen versions) gives the
    bits ModelSet.score gives on the record-by-record decoded dicts (the job's path)."""
    from nearline import REPO_ROOT
    from nearline.inference.scoring import ModelSet, RegistryWatcher
    from nearline.registry.packages import Registry

    ms = ModelSet(RegistryWatcher(Registry(REPO_ROOT / "models/registry.yaml"), ["member", "job"]))
    recs = _records(300, np.random.default_rng(9))
    for i, r in enumerate(recs):
        r["entity_type"] = "job" if i % 3 == 0 else "member"
    recs[10]["features"]["geo"] = {"ids": [-2], "weights": None}
    values = [C.encode(SCHEMA, r) for r in recs]
    values[20] = b"junk"
    sc = decode_snapshots(values, C)
    assert list(sc.errors) == [20]
    for etype, key in (("member", "member_pyramid@v1"), ("job", "job_pyramid@v1")):
        idx = [i for i in range(len(values)) if sc.entity_type[i] == etype]
        got, got_bad = ms.score_columns(etype, sc.features.take(idx), keys=[key])
        want, want_bad = ms.score(etype, [C.decode(values[i])["features"] for i in idx])
        assert got_bad == want_bad and (etype != "member" or list(got_bad) == [idx.index(10)])
        assert got[key].tobytes() == want[key].tobytes()
