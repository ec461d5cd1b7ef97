"""The embedding topic's message contract (nearline/embedding_messages.py): full-state records, null
tombstones with a version header, old (delta, deleted=true) messages still read, the topic's configs."""

import io
import json

import fastavro
import pytest

from nearline import DATA_ROOT
from nearline.codec import Codec, CodecError, schema_fingerprint
from nearline.config import Config
from nearline.embedding_messages import full_state_record, full_state_send, read_message, tombstone_send, topic_configs

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
