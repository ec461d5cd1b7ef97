"""kafka.wire_format: confluent against a real schema registry (Apicurio, Confluent API) and the real
Apache Kafka broker: every message type the service writes is produced, read back with Confluent's own
AvroDeserializer + SchemaRegistryClient and with our readers; plus a topic carrying both formats
(migration) and a registry that goes down."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from nearline.io import codec as codec_mod
from nearline.io import kafka_io
from nearline.io.codec import Codec, SchemaRegistryUnavailable, codec_for
from nearline.ops.schema_registry_server import SchemaRegistryServer
from tests.conftest import isolated_config
from tests.unit.io.test_codec_confluent import SAMPLES

pytestmark = pytest.mark.integration


def topic_of(cfg, name: str) -> str:
    t = cfg.topics
    return {"EntityUpdate": t.entity_updates, "StandardizedFeatures": cfg.standardized_topic(cfg.standardizers.processors[0]),
            "EntityEmbeddings": t.embeddings, "ModelRetired": t.embeddings, "DeadLetter": t.dead_letter,
            "FeatureSnapshot": t.feature_snapshot}[name]


def read_all(bootstrap: str, topic: str, n: int, timeout_s: float = 30.0) -> list:
    c = kafka_io.make_consumer(bootstrap, None, auto_offset_reset="earliest")
    try:
        from kafka import TopicPartition

        deadline = time.monotonic() + timeout_s
        while not c.partitions_for_topic(topic) and time.monotonic() < deadline:
            time.sleep(0.1)
        c.assign([TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])])
        c.seek_to_beginning()
        got: list = []
        while len(got) < n and time.monotonic() < deadline:
            for batch in c.poll(timeout_ms=500).values():
                got.extend(batch)
        return got
    finally:
        c.close()


def confluent_cfg(bootstrap, redis_url, unique, registry_url, **kafka):
    cfg = isolated_config(bootstrap, redis_url, unique)
    cfg.kafka.schema_registry_url = registry_url
    for k, v in kafka.items():
        setattr(cfg.kafka, k, v)
    return cfg.validate()


def test_every_message_type_is_readable_by_confluents_deserializer_and_ours(kafka_bootstrap, redis_url,
                                                                            schema_registry_url, unique):
    cfg = confluent_cfg(kafka_bootstrap, redis_url, unique, schema_registry_url, wire_format="confluent")
    codec = codec_for(cfg)  # registers every schema under its subjects
    sr = SchemaRegistryClient({"url": schema_registry_url})
    subjects = set(sr.get_subjects())
    for name in SAMPLES:
        for subject in codec.subjects[name]:
            assert subject in subjects, f"{name} not registered under {subject}"
    assert f"{cfg.topics.embeddings}-value" in subjects
    producer = kafka_io.make_producer(kafka_bootstrap, 0)
    for name, rec in SAMPLES.items():
        producer.send(topic_of(cfg, name), key=name.encode(), value=codec.encode(name, rec))
    producer.flush()
    producer.close()

    confluent = AvroDeserializer(sr)
    reader = codec_for(isolated_config(kafka_bootstrap, redis_url, unique))  # single-object writer, no registry
    reader_with_registry = codec_for(confluent_cfg(kafka_bootstrap, redis_url, unique, schema_registry_url))
    assert reader.registry is None and reader_with_registry.wire_format == "single-object"
    seen = set()
    for topic in sorted({topic_of(cfg, n) for n in SAMPLES}):
        want = [n for n in SAMPLES if topic_of(cfg, n) == topic]
        for m in read_all(kafka_bootstrap, topic, len(want)):
            name = m.key.decode()
            assert m.value[:1] == b"\x00", "not Confluent-framed"
            theirs = confluent(m.value, SerializationContext(topic, MessageField.VALUE))
            assert theirs == SAMPLES[name], name
            assert reader_with_registry.decode(m.value, expect=name) == SAMPLES[name]
            seen.add(name)
    assert seen == set(SAMPLES)


def test_a_topic_with_both_formats_is_read_by_client_and_tail(kafka_bootstrap, redis_url, schema_registry_url,
                                                               unique, tmp_path):
    """Migration: old single-object messages, then Confluent-framed ones, on one embedding topic."""
    old = codec_for(isolated_config(kafka_bootstrap, redis_url, unique))
    new = codec_for(confluent_cfg(kafka_bootstrap, redis_url, unique, schema_registry_url, wire_format="confluent"))
    cfg = confluent_cfg(kafka_bootstrap, redis_url, unique, schema_registry_url)
    recs = [{**SAMPLES["EntityEmbeddings"], "entity_id": f"m{i}", "version": i} for i in range(6)]
    producer = kafka_io.make_producer(kafka_bootstrap, 0)
    for i, rec in enumerate(recs):
        producer.send(cfg.topics.embeddings, key=f"member:m{i}".encode(), partition=0,
                      value=(old if i < 3 else new).encode("EntityEmbeddings", rec))
    producer.flush()
    producer.close()
    msgs = read_all(kafka_bootstrap, cfg.topics.embeddings, len(recs))
    assert [m.value[:1] for m in msgs] == [b"\xc3"] * 3 + [b"\x00"] * 3

    from nearline.consumers.client import EmbeddingClient

    client = EmbeddingClient(cfg, kafka_bootstrap, redis_url)  # our consumer client, built from the config like in production
    assert [client.codec.decode(m.value)["entity_id"] for m in msgs] == [r["entity_id"] for r in recs]

    import subprocess
    import sys

    import yaml

    (tmp_path / "nearline.yaml").write_text(yaml.safe_dump({
        "kafka": {"bootstrap": kafka_bootstrap, "schema_registry_url": schema_registry_url},
        "redis": {"url": redis_url}, "topics": {"embeddings": cfg.topics.embeddings}}))
    res = subprocess.run([sys.executable, "-m", "nearline.cli", "--config", str(tmp_path / "nearline.yaml"), "tail",
                          "--from-beginning", "--max", str(len(recs))],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[3])
    assert res.returncode == 0, res.stderr[-800:]
    assert all(f"m{i}" in res.stdout for i in range(6)), res.stdout[-800:]
    assert "skipped" not in res.stderr, res.stderr[-500:]


def test_registry_down_known_ids_keep_working_unknown_ones_are_transient_errors(kafka_bootstrap, redis_url,
                                                                                unique, tmp_path):
    with SchemaRegistryServer(tmp_path) as srv:
        print(f"schema registry up in {srv.started_in_s:.1f}s, RSS {srv.rss_mb():.0f} MB")
        cfg = confluent_cfg(kafka_bootstrap, redis_url, unique, srv.url, wire_format="confluent",
                            schema_registry_retry_s=1.0)
        codec = codec_for(cfg)
        data = {name: codec.encode(name, rec) for name, rec in SAMPLES.items()}
        reader = codec_for(confluent_cfg(kafka_bootstrap, redis_url, unique, srv.url, schema_registry_retry_s=1.0))
        for name in SAMPLES:
            reader.decode(data[name], expect=name)  # ids fetched and cached
        url = srv.url
    # the registry is gone: everything already known still encodes and decodes
    for name, rec in SAMPLES.items():
        assert codec.encode(name, rec) == data[name]
        assert reader.decode(data[name], expect=name) == rec
    # an id nobody fetched yet: retried for schema_registry_retry_s, then a transient error naming the registry
    unseen = b"\x00" + (max(reader.registry.writers) + 1000).to_bytes(4, "big") + data["EntityUpdate"][5:]
    t0 = time.monotonic()
    with pytest.raises(SchemaRegistryUnavailable, match=url.split("//")[1]):
        reader.decode(unseen)
    assert 0.5 < time.monotonic() - t0 < 15
    # a new process (empty caches) with the registry down fails at start-up with the same one-line error
    codec_mod._REGISTRIES.clear()
    with pytest.raises(SchemaRegistryUnavailable, match="did not answer while registering"):
        codec_for(cfg)
    # ... while a process configured without a registry (single-object) does not depend on it at all
    plain = codec_for(isolated_config(kafka_bootstrap, redis_url, unique))
    assert plain.registry is None and plain.wire_format == "single-object"
    for name, rec in SAMPLES.items():
        assert plain.decode(plain.encode(name, rec), expect=name) == rec
        assert Codec().decode(plain.encode(name, rec), expect=name) == rec


def test_unknown_schema_id_on_a_live_registry_is_a_codec_error(schema_registry_url, kafka_bootstrap, redis_url, unique):
    from nearline.io.codec import UnknownSchemaError

    reader = codec_for(confluent_cfg(kafka_bootstrap, redis_url, unique, schema_registry_url))
    with pytest.raises(UnknownSchemaError, match="schema id 987654 is not in the schema registry"):
        reader.decode(b"\x00" + (987654).to_bytes(4, "big") + b"\x02")


def test_the_jobs_publish_stage_writes_confluent_framing_that_confluent_reads(kafka_bootstrap, redis_url,
                                                                              schema_registry_url, unique):
    """PublishStage (the job's write path) built from a confluent config: embeddings, tombstone marker,
    dead letter and feature snapshot all come out Confluent-framed and Confluent's deserializer reads them."""
    import numpy as np

    from nearline.io.store import RedisEmbeddingStore
    from nearline.stream.join import Deleted, Joined, RawRef, ReplayTimeout
    from nearline.stream.pipeline import PublishStage, WorkBatch

    cfg = confluent_cfg(kafka_bootstrap, redis_url, unique, schema_registry_url, wire_format="confluent")
    kafka_io.ensure_topics(kafka_bootstrap, cfg.all_topics() + [cfg.topics.feature_snapshot], 4)
    producer = kafka_io.make_producer(kafka_bootstrap)
    stage = PublishStage(cfg, RedisEmbeddingStore(redis_url, cfg.redis.key_prefix), producer)
    assert stage.codec.wire_format == "confluent"
    vec = np.asarray([1.0, 2.0], dtype="<f4").tobytes()
    stage.run(WorkBatch(0, joined=[Joined("member:a", "member", "a", 1, {}, False, [], [], 0.0)], embeddings=[{"m@v1": vec}]))
    raw = RawRef(cfg.topics.entity_updates, 0, 12, b"member:e", b"\x01", True)
    stage.run(WorkBatch(0, deleted=[Deleted("member:a", "member", "a", 2, [])],
                        replay_timeouts=[ReplayTimeout("member:e", "member", "e", 3, ["geo"], raw, [])]))
    producer.close()
    confluent = AvroDeserializer(SchemaRegistryClient({"url": schema_registry_url}))
    out = {}
    tombstones = {}
    for topic, n in ((cfg.topics.embeddings, 2), (cfg.topics.dead_letter, 1), (cfg.topics.feature_snapshot, 1)):
        got = read_all(kafka_bootstrap, topic, n)
        tombstones[topic] = [m.key for m in got if m.value is None]  # deletes: null values, no framing
        msgs = [m for m in got if m.value is not None]
        assert msgs and all(m.value[:1] == b"\x00" for m in msgs), topic
        out[topic] = [confluent(m.value, SerializationContext(topic, MessageField.VALUE)) for m in msgs]
    emb = sorted(out[cfg.topics.embeddings], key=lambda r: r["version"])
    assert [(r["version"], r["deleted"]) for r in emb] == [(1, False)]
    assert tombstones[cfg.topics.embeddings] == [b"member:a"]
    assert emb[0]["embeddings"][0]["vector"] == vec
    assert out[cfg.topics.dead_letter][0]["offset"] == 12
    assert out[cfg.topics.feature_snapshot][0]["entity_id"] == "a"
