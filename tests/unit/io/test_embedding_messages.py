"""The embedding topic's message contract (nearline/io/embedding_messages.py): full-state records, null
tombstones with a version header, old (delta, deleted=true) messages still read, the topic's configs."""

import io
import json

import fastavro
import pytest

from nearline import DATA_ROOT
from nearline.config import Config
from nearline.io.codec import Codec, CodecError, schema_fingerprint
from nearline.io.embedding_messages import (
    full_state_record,
    full_state_send,
    read_message,
    tombstone_send,
    topic_configs,
)

CODEC = Codec()


def v1_message(rec: dict) -> bytes:
    """Bytes as the delta-era writer (schemas/history/EntityEmbeddings.v1.avsc) wrote them."""
    old = fastavro.parse_schema(json.loads((DATA_ROOT / "schemas/history/EntityEmbeddings.v1.avsc").read_text()))
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + schema_fingerprint(old))
    fastavro.schemaless_writer(buf, old, rec)
    return buf.getvalue()


def test_full_state_record_sorted_with_changed_flags_and_version_header():
    state = {"b@v1": b"\0" * 8, "a@v2": b"\1" * 4, "gone@v1": None}
    rec = full_state_record("member", "m1", 7, state, {"a@v2"}, 123, partial=True)
    assert [(e["model"], e["model_version"], e["dim"], e["changed"]) for e in rec["embeddings"]] == \
        [("a", "v2", 1, True), ("b", "v1", 2, False)]  # a None field (absent in Redis) is no entry
    assert rec["partial"] and not rec["deleted"] and all(e["produced_at"] == 123 for e in rec["embeddings"])
    topic, key, value, headers = full_state_send("t", "member:m1", rec, CODEC)
    assert (topic, key, headers) == ("t", b"member:m1", [("version", b"7")])
    msg = read_message(key, value, headers, CODEC)
    assert (msg.kind, msg.version, msg.full_state, msg.entity) == ("state", 7, True, ("member", "m1"))
    assert msg.record == rec


def test_tombstone_is_a_null_value_with_the_version_header():
    topic, key, value, headers = tombstone_send("t", "job:j:1", 9)  # ids may contain ':'
    assert value is None and headers == [("version", b"9")]
    msg = read_message(key, value, headers, CODEC)
    assert (msg.kind, msg.version, msg.entity) == ("delete", 9, ("job", "j:1"))
    assert read_message(key, None, [], CODEC).version is None


def test_old_messages_delta_merge_and_deleted_record():
    entry = {"model": "m", "model_version": "v1", "dim": 1, "vector": b"\0" * 4, "produced_at": 1}
    delta = read_message(b"member:m1", v1_message({"entity_type": "member", "entity_id": "m1", "version": 2,
                                                   "deleted": False, "partial": False, "embeddings": [entry]}), None, CODEC)
    assert delta.kind == "state" and not delta.full_state and delta.record["embeddings"][0]["changed"]
    dead = read_message(b"member:m1", v1_message({"entity_type": "member", "entity_id": "m1", "version": 3,
                                                  "deleted": True, "partial": False, "embeddings": []}), None, CODEC)
    assert (dead.kind, dead.version) == ("delete", 3)


def test_retired_notice_and_other_records():
    notice = CODEC.encode("ModelRetired", {"model": "m", "model_version": "v1", "entity_type": "member", "retired_at": 5})
    msg = read_message(b"_model:m@v1", notice, None, CODEC)
    assert msg.kind == "retired" and msg.record["model"] == "m" and msg.entity is None
    update = CODEC.encode("EntityUpdate", {"entity_type": "member", "entity_id": "m", "version": 1, "op": "UPSERT",
                                           "event_time": 0, "fields": {}})
    with pytest.raises(CodecError, match="not an EntityEmbeddings"):
        read_message(b"member:m", update, None, CODEC)
    with pytest.raises(CodecError):
        read_message(b"member:m", b"garbage", None, CODEC)


def test_topic_configs_compacted_with_the_configured_retention():
    cfg = Config()
    cfg.topics.embeddings_delete_retention_ms = 1000
    assert topic_configs(cfg) == {"cleanup.policy": "compact", "delete.retention.ms": "1000",
                                  "min.compaction.lag.ms": str(Config().topics.embeddings_min_compaction_lag_ms)}


# ---- FullStateEncoder: the same bytes as fastavro ---------------------------------------------------
def random_state(rng, n_versions: int) -> dict:
    return {f"{rng.choice(['member_pyramid', 'job_pyramid', 'm'])}@v{i}": rng.random(int(rng.integers(0, 70))).astype("<f4").tobytes()
            for i in range(n_versions)}


@pytest.mark.parametrize("seed", range(5))
def test_full_state_encoder_writes_fastavros_bytes(seed):
    import numpy as np

    from nearline.io.embedding_messages import FullStateEncoder

    rng = np.random.default_rng(seed)
    enc = FullStateEncoder(CODEC)
    assert enc.fast
    for _ in range(300):
        state = random_state(rng, int(rng.integers(0, 5)))
        if state and rng.random() < 0.2:
            state[next(iter(state))] = None  # no vector: left out, as full_state_record does
        changed = {k for k in state if rng.random() < 0.5}
        eid = "".join(rng.choice(list("abcé漢0-:"), int(rng.integers(0, 300))))
        version = int(rng.choice([0, 1, -1, 63, 64, -65, 2**31, 2**63 - 1, -2**63, int(rng.integers(0, 2**40))]))
        at = int(rng.integers(0, 2**45))
        partial = bool(rng.random() < 0.3)
        rec = full_state_record("member", eid, version, state, changed, at, partial)
        want = CODEC.encode("EntityEmbeddings", rec)
        assert enc.encode("member", eid, version, state, changed, at, partial) == want
        assert enc.encode_record(rec) == want
        assert full_state_send("t", "k", rec, CODEC)[2] == want


def test_full_state_encoder_falls_back_to_fastavro_when_the_schema_changes():
    from nearline.io.codec import SchemaStore
    from nearline.io.embedding_messages import FullStateEncoder

    schema = json.loads((DATA_ROOT / "schemas/EntityEmbeddings.avsc").read_text())
    schema["fields"].append({"name": "source", "type": "string", "default": "nearline"})
    store = SchemaStore.from_dir()
    store.add(schema)
    codec = Codec(store)
    enc = FullStateEncoder(codec)
    assert not enc.fast
    rec = full_state_record("job", "j1", 3, {"a@v1": b"\x00" * 8}, {"a@v1"}, 5)
    assert enc.encode("job", "j1", 3, {"a@v1": b"\x00" * 8}, {"a@v1"}, 5) == codec.encode("EntityEmbeddings", rec)
    assert codec.decode(enc.encode_record(rec))["source"] == "nearline"
