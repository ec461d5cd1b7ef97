"""The Confluent wire format (magic 0x00 + 4-byte big-endian schema id + Avro binary) without a server:
the registry caches are filled the way a pickled codec carries them; the registry itself is exercised
in tests/integration/test_schema_registry.py."""

import copy
import io
import json
import pickle
import socket

import fastavro
import pytest

from nearline.config import Config, ConfigError
from nearline.io.codec import (
    SCHEMAS_DIR,
    Codec,
    CodecError,
    RegistrySchemas,
    SchemaRegistryUnavailable,
    UnknownSchemaError,
    codec_for,
    subjects_for,
)

# one valid record of every message type the service writes
SAMPLES = {
    "EntityUpdate": {"entity_type": "job", "entity_id": "j1", "version": 5, "op": "UPSERT", "event_time": 1,
                     "fields": {"title": "Sr. Data Scientist"}},
    "StandardizedFeatures": {"entity_type": "member", "entity_id": "m1", "version": 2, "processor": "skills",
                             "features": {"skills": {"ids": [3, 4], "weights": [1.0, 0.5]}}, "produced_at": 9,
                             "refused": None},
    "EntityEmbeddings": {"entity_type": "member", "entity_id": "m1", "version": 2, "deleted": False, "partial": False,
                         "embeddings": [{"model": "m", "model_version": "v1", "dim": 2, "vector": b"\x01" * 8,
                                         "produced_at": 3, "changed": True}]},
    "DeadLetter": {"original": b"\x00\x01", "key": None, "topic": "t", "partition": 1, "offset": 7, "stage": "s",
                   "error": "bad", "time": 1},
    "FeatureSnapshot": {"entity_type": "job", "entity_id": "j1", "version": 5, "partial": True, "missing": ["geo"],
                        "features": {"skills": {"ids": [7], "weights": None}}, "written_at": 11},
    "ModelRetired": {"model": "job_pyramid", "model_version": "v1", "entity_type": "job", "retired_at": 12},
}


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket is closed


def known_registry(ids: dict[str, int]) -> RegistrySchemas:
    """A registry whose ids are already cached (as after start-up), at an address where nothing listens."""
    reg = RegistrySchemas(closed_port_url(), retry_s=0)
    reg.ids.update(ids)
    return reg


def test_confluent_framing_is_magic_zero_then_big_endian_id_then_the_same_avro_datum():
    single = Codec()
    conf = Codec(wire_format="confluent", registry=known_registry({"EntityUpdate": 0x01020304}))
    data = conf.encode("EntityUpdate", SAMPLES["EntityUpdate"])
    assert data[:5] == b"\x00\x01\x02\x03\x04"
    assert data[5:] == single.encode("EntityUpdate", SAMPLES["EntityUpdate"])[10:]  # only the header differs
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, single.store.readers["EntityUpdate"], SAMPLES["EntityUpdate"])
    assert data[5:] == buf.getvalue()


def test_one_codec_decodes_both_formats_by_the_first_byte():
    ids = {name: 40 + i for i, name in enumerate(SAMPLES)}
    reg = known_registry(ids)
    store = Codec().store
    for name, sid in ids.items():
        reg.writers[sid] = store.readers[name]  # what fetching the id returned
    conf = Codec(wire_format="confluent", registry=reg)
    single = Codec(registry=reg)  # a single-object writer that can read a migrated topic
    for name, rec in SAMPLES.items():
        a, b = single.encode(name, rec), conf.encode(name, rec)
        assert a[:2] == b"\xc3\x01" and b[:1] == b"\x00" and int.from_bytes(b[1:5], "big") == ids[name]
        for codec in (single, conf):
            assert codec.decode(a, expect=name) == rec
            assert codec.decode(b, expect=name) == rec


def test_writer_schema_from_the_registry_is_resolved_against_our_reader():
    v2 = copy.deepcopy(json.loads((SCHEMAS_DIR / "EntityUpdate.avsc").read_text()))
    v2["fields"].append({"name": "source", "type": ["null", "string"], "default": None})
    writer = fastavro.parse_schema(v2)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, writer, {**SAMPLES["EntityUpdate"], "source": "ats"})
    reg = known_registry({})
    reg.writers[99] = writer
    got = Codec(registry=reg).decode(b"\x00" + (99).to_bytes(4, "big") + buf.getvalue(), expect="EntityUpdate")
    assert got == SAMPLES["EntityUpdate"]  # the newer field is resolved away


def test_bad_frames_are_codec_errors_and_a_dead_registry_is_a_transient_error():
    reg = known_registry({"EntityUpdate": 3})
    reg.writers[3] = Codec().store.readers["EntityUpdate"]
    c = Codec(wire_format="confluent", registry=reg)
    good = c.encode("EntityUpdate", SAMPLES["EntityUpdate"])
    with pytest.raises(UnknownSchemaError, match="nor Confluent-framed"):
        c.decode(b"\x01" + good[1:])  # wrong magic
    with pytest.raises(UnknownSchemaError, match="nor Confluent-framed"):
        c.decode(b"\x00\x00\x01")  # shorter than the 5-byte header
    with pytest.raises(CodecError, match="malformed EntityUpdate payload"):
        c.decode(good[:8])
    with pytest.raises(CodecError, match="expected a DeadLetter message, got EntityUpdate"):
        c.decode(good, expect="DeadLetter")
    with pytest.raises(UnknownSchemaError, match="no kafka.schema_registry_url"):
        Codec().decode(good)
    # an id not cached while nothing answers: not a bad record (no dead letter) but a ConnectionError
    with pytest.raises(SchemaRegistryUnavailable, match="did not answer while fetching schema id 4") as err:
        c.decode(b"\x00\x00\x00\x00\x04" + good[5:])
    assert isinstance(err.value, ConnectionError) and not isinstance(err.value, CodecError)
    with pytest.raises(SchemaRegistryUnavailable, match="registering DeadLetter"):
        c.encode("DeadLetter", SAMPLES["DeadLetter"])


def test_pickled_codec_keeps_its_ids_but_not_its_http_client():
    reg = known_registry({"EntityUpdate": 5})
    reg.client()
    c = Codec(wire_format="confluent", registry=reg)
    back = pickle.loads(pickle.dumps(c))
    assert back.registry._client is None and back.registry.ids == {"EntityUpdate": 5}
    assert back.encode("EntityUpdate", SAMPLES["EntityUpdate"]) == c.encode("EntityUpdate", SAMPLES["EntityUpdate"])


def test_config_names_the_format_and_subjects_follow_the_topics():
    cfg = Config()
    assert cfg.kafka.wire_format == "single-object" and codec_for(cfg).wire_format == "single-object"
    cfg.kafka.wire_format = "confluent"
    with pytest.raises(ConfigError, match="needs kafka.schema_registry_url"):
        cfg.validate()
    cfg.kafka.wire_format = "avro"
    with pytest.raises(ConfigError, match="must be 'single-object' or 'confluent'"):
        cfg.validate()
    with pytest.raises(CodecError, match="needs a schema registry"):
        Codec(wire_format="confluent")
    subjects = subjects_for(Config())
    t = Config().topics
    assert subjects["EntityEmbeddings"] == [f"{t.embeddings}-value"]
    assert subjects["EntityUpdate"][0] == f"{t.entity_updates}-value"
    assert subjects["StandardizedFeatures"] == [f"{t.standardized_prefix}{p}-value" for p in Config().standardizers.processors]
    # two types share the embedding topic: the second one gets its own subject
    assert subjects["ModelRetired"] == [f"{t.embeddings}-nearline.v1.ModelRetired"]
    assert set(SAMPLES) == set(Codec().store.readers)  # every type the service writes has a sample here


def test_long_running_services_wait_out_a_registry_outage_until_a_stop_is_requested():
    import threading

    from nearline.core.lifecycle import STOP, StopRequested

    cfg = Config()
    cfg.kafka.schema_registry_url = closed_port_url()
    codec = codec_for(cfg, retry_forever=True)  # the job's and the standardizers' codec
    assert codec.registry.retry_s is None
    timer = threading.Timer(1.0, STOP.set)
    timer.start()
    try:
        with pytest.raises(StopRequested):
            codec.decode(b"\x00\x00\x00\x00\x07\x02")  # retried (refused) until the stop
    finally:
        timer.cancel()
        STOP.clear()
