import copy
import json

import pytest

from nearline.io.codec import SCHEMAS_DIR, Codec, CodecError, SchemaStore, UnknownSchemaError

UPDATE = {"entity_type": "job", "entity_id": "j1", "version": 5, "op": "UPSERT", "event_time": 1,
          "fields": {"title": "Sr. Data Scientist"}}


def test_roundtrip_every_schema():
    c = Codec()
    feats = {"entity_type": "member", "entity_id": "m1", "version": 2, "processor": "skills",
             "features": {"skills": {"ids": [3, 4], "weights": [1.0, 0.5]}}, "produced_at": 9, "refused": None}
    emb = {"entity_type": "member", "entity_id": "m1", "version": 2, "deleted": False, "partial": False,
           "embeddings": [{"model": "m", "model_version": "v1", "dim": 2, "vector": b"\0" * 8, "produced_at": 3,
                           "changed": True}]}
    dl = {"original": b"\x00\x01", "key": None, "topic": "t", "partition": 1, "offset": 7, "stage": "s",
          "error": "bad", "time": 1}
    for name, rec in [("EntityUpdate", UPDATE), ("StandardizedFeatures", feats), ("EntityEmbeddings", emb), ("DeadLetter", dl)]:
        data = c.encode(name, rec)
        assert data[:2] == b"\xc3\x01"
        assert c.decode(data, expect=name) == rec


def test_old_reader_decodes_newer_writer_with_added_optional_field():
    v1 = json.loads((SCHEMAS_DIR / "EntityUpdate.avsc").read_text())
    v2 = copy.deepcopy(v1)
    v2["fields"].append({"name": "source", "type": ["null", "string"], "default": None})
    writer_store = SchemaStore()
    writer_store.add(v2)
    newer = Codec(writer_store).encode("EntityUpdate", {**UPDATE, "source": "ats"})

    old_reader = SchemaStore()
    old_reader.add(v1)                    # reader schema: v1
    old_reader.add(v2, as_reader=False)   # v2 known only as a writer schema (schemas/history/)
    decoded = Codec(old_reader).decode(newer, expect="EntityUpdate")
    assert decoded == UPDATE              # the added field is resolved away, everything else intact
    assert Codec(writer_store).decode(newer)["source"] == "ats"


def test_unknown_schema_and_garbage_raise_clear_errors():
    c = Codec()
    with pytest.raises(UnknownSchemaError, match="not an Avro single-object message"):
        c.decode(b'{"json": true}')
    with pytest.raises(UnknownSchemaError, match="unknown writer schema fingerprint"):
        c.decode(b"\xc3\x01" + b"\x99" * 8 + b"\x00")
    good = c.encode("EntityUpdate", UPDATE)
    with pytest.raises(CodecError, match="malformed EntityUpdate payload"):
        c.decode(good[:14])
    with pytest.raises(CodecError, match="expected a DeadLetter message, got EntityUpdate"):
        c.decode(good, expect="DeadLetter")
    with pytest.raises(CodecError, match="does not fit schema"):
        c.encode("EntityUpdate", {**UPDATE, "op": "MERGE"})


def test_standardized_features_written_before_refused_existed_still_decode():
    """StandardizedFeatures v1 (schemas/history) on the topic after an upgrade: read as not refused."""
    v1 = json.loads((SCHEMAS_DIR / "history" / "StandardizedFeatures.v1.avsc").read_text())
    old_writer = SchemaStore()
    old_writer.add(v1)
    rec = {"entity_type": "member", "entity_id": "m1", "version": 2, "processor": "title",
           "features": {"title": {"ids": [3], "weights": None}}, "produced_at": 9}
    data = Codec(old_writer).encode("StandardizedFeatures", rec)
    assert Codec().decode(data, expect="StandardizedFeatures") == {**rec, "refused": None}
    marker = {**rec, "features": {}, "refused": "standardize_failed: raw field(s) ['title'] missing"}
    assert Codec().decode(Codec().encode("StandardizedFeatures", marker)) == marker


def test_trailing_bytes_after_a_valid_record_are_refused():
    import pytest

    from nearline.io.codec import CodecError

    data = Codec().encode("EntityUpdate", UPDATE)
    assert Codec().decode(data) == UPDATE
    with pytest.raises(CodecError, match=r"malformed EntityUpdate payload: 7 trailing bytes after the record"):
        Codec().decode(data + b"garbage")
