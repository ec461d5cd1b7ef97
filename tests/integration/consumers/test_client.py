"""EmbeddingClient against a real broker and Redis: poison records, broadcast vs consumer-group caches,
readiness, lifecycle, and score() reusing its validated models; `nearline tail` / `get` edge cases."""

import subprocess
import sys
import time

import numpy as np
import pytest

from nearline import REPO_ROOT
from nearline.consumers.client import EmbeddingClient
from nearline.io import kafka_io
from nearline.io.codec import Codec
from nearline.io.embedding_messages import full_state_record, full_state_send, tombstone_send
from nearline.io.store import RedisEmbeddingStore
from nearline.registry import packages as registry
from tests.conftest import isolated_config, write_config_file

pytestmark = pytest.mark.integration

CODEC = Codec()


def embeddings_record(etype, eid, version, vec):
    state = {f"{etype}_pyramid@v1": np.asarray(vec, "<f4").tobytes()}
    return CODEC.encode("EntityEmbeddings", full_state_record(etype, eid, version, state, state, 0))


@pytest.fixture
def env(kafka_bootstrap, redis_url, unique, tmp_path):
    cfg = isolated_config(kafka_bootstrap, redis_url, unique)
    cfg.models.registry = str(REPO_ROOT / "models/registry.yaml")
    kafka_io.ensure_topics(kafka_bootstrap, cfg.all_topics(), cfg.topics.partitions)
    prod = kafka_io.make_producer(kafka_bootstrap)
    conf = write_config_file(tmp_path / "nearline.yaml", cfg, models={"registry": str(REPO_ROOT / "models/registry.yaml")})
    yield cfg, prod, conf
    prod.close()


def client_of(cfg):
    return EmbeddingClient(cfg, cfg.kafka.bootstrap, cfg.redis.url)


def publish_jobs(cfg, prod, n, version=1):
    for i in range(n):
        prod.send(cfg.topics.embeddings, key=f"job:j{i}".encode(), value=embeddings_record("job", f"j{i}", version, [i, 1.0]))
    prod.flush()


def test_poison_records_are_skipped_counted_and_later_records_applied(env):
    cfg, prod, _ = env
    topic = cfg.topics.embeddings
    # all in one partition, so the good records come after the poison in the same stream
    prod.send(topic, partition=0, key=b"job:a", value=embeddings_record("job", "a", 1, [1, 2]))
    prod.send(topic, partition=0, key=b"job:x", value=b"definitely not avro")
    prod.send(topic, partition=0, key=b"member:m", value=CODEC.encode("EntityUpdate", {
        "entity_type": "member", "entity_id": "m", "version": 1, "op": "UPSERT", "event_time": 0, "fields": {}}))
    prod.send(topic, partition=0, key=b"job:b", value=embeddings_record("job", "b", 1, [3, 4]))
    prod.flush()
    with client_of(cfg) as client:
        client.subscribe()
        assert client.wait_until_caught_up(timeout=30)
        assert np.array_equal(client.cached("job", "a")["job_pyramid@v1"], [1, 2])
        assert np.array_equal(client.cached("job", "b")["job_pyramid@v1"], [3, 4])
        assert client.subscription_stats["poison"] == 2 and client.subscription_stats["applied"] == 2
        # the subscriber lives on: a later record still reaches the cache
        prod.send(topic, partition=0, key=b"job:a", value=embeddings_record("job", "a", 2, [5, 6]))
        prod.flush()
        assert client.wait_until_caught_up(timeout=30)
        assert np.array_equal(client.cached("job", "a")["job_pyramid@v1"], [5, 6])


def test_broadcast_mode_every_replica_caches_every_entity(env):
    cfg, prod, _ = env
    publish_jobs(cfg, prod, 40)
    replicas = [client_of(cfg), client_of(cfg)]
    try:
        for c in replicas:
            c.subscribe(group="my-ranker")  # the README's call: broadcast by default
        for c in replicas:
            assert c.wait_until_caught_up(timeout=30)
            assert len(c.cache) == 40 and all(c.cached("job", f"j{i}") for i in range(40))
    finally:
        for c in replicas:
            c.close()


def test_group_mode_splits_partitions_between_replicas(env, unique):
    cfg, prod, _ = env
    publish_jobs(cfg, prod, 40)
    a, b = client_of(cfg), client_of(cfg)
    try:
        a.subscribe(group=f"rankers-{unique}", mode="group")
        b.subscribe(group=f"rankers-{unique}", mode="group")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ka, kb = set(a.cache.entries), set(b.cache.entries)
            if ka and kb and not ka & kb and len(ka | kb) == 40:
                break
            time.sleep(0.2)
        ka, kb = set(a.cache.entries), set(b.cache.entries)
        assert ka and kb and not ka & kb and len(ka | kb) == 40, (len(ka), len(kb))
    finally:
        a.close()
        b.close()


def test_lifecycle_context_manager_and_resubscribe(env):
    cfg, prod, _ = env
    publish_jobs(cfg, prod, 5)
    client = client_of(cfg)
    with pytest.raises(RuntimeError, match="not subscribed"):
        client.wait_until_caught_up(1)
    with pytest.raises(ValueError, match="group"):
        client.subscribe(mode="group")
    with client:
        client.subscribe()
        with pytest.raises(RuntimeError, match="already subscribed"):
            client.subscribe()
        assert client.wait_until_caught_up(timeout=30) and len(client.cache) == 5
        first = client._subscriber
    assert not first.is_alive()  # __exit__ closed it
    with pytest.raises(RuntimeError, match="closed"):
        client.wait_until_caught_up(1)
    publish_jobs(cfg, prod, 7, version=2)
    client.subscribe()  # after close(): a new subscription
    try:
        assert client.wait_until_caught_up(timeout=30)
        assert len(client.cache) == 7 and client.cache[("job", "j6")]["version"] == 2
    finally:
        client.close()


def test_score_validates_the_registry_once(env, monkeypatch):
    cfg, prod, _ = env
    rng = np.random.default_rng(1)
    m, j = rng.normal(size=32).astype("<f4"), rng.normal(size=32).astype("<f4")
    store = RedisEmbeddingStore(cfg.redis.url, cfg.redis.key_prefix)
    store.write([("member", "m1", 1, {"member_pyramid@v1": m.tobytes()}), ("job", "j1", 1, {"job_pyramid@v1": j.tobytes()})], [])
    calls = []
    real = registry.check_package
    monkeypatch.setattr(registry, "check_package", lambda *a, **k: calls.append(a) or real(*a, **k))
    with client_of(cfg) as client:
        scores = [client.score("member_pyramid@v1", "job_pyramid@v1", "m1", ["j1", "nope"], task="apply") for _ in range(3)]
        w, b = client.head("member_pyramid@v1", "apply")
    n_registered = len(registry.Registry(REPO_ROOT / "models/registry.yaml").entries())
    assert len(calls) == n_registered  # each package validated (ONNX session built) once, not per call
    expected = 1 / (1 + np.exp(-(np.dot(w, m * j) + b)))
    for s in scores:
        assert s[0] == pytest.approx(expected, rel=1e-5) and np.isnan(s[1])


def test_tail_prints_exactly_max_records_and_survives_poison(env):
    cfg, prod, conf = env
    prod.send(cfg.topics.embeddings, partition=0, key=b"job:x", value=b"garbage")
    publish_jobs(cfg, prod, 30)
    run = [sys.executable, "-m", "nearline.cli", "--config", str(conf), "tail", "--from-beginning"]
    out = subprocess.run(run + ["--max", "3"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 3, out.stdout[-2000:] + out.stderr[-2000:]
    out = subprocess.run(run + ["--max", "30"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 30, out.stderr[-2000:]
    assert "skipped" in out.stderr and "Traceback" not in out.stderr


def test_get_of_an_unknown_entity_says_so(env):
    cfg, _, conf = env
    out = subprocess.run([sys.executable, "-m", "nearline.cli", "--config", str(conf), "get", "job", "missing"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "no embeddings for job:missing" in out.stderr and cfg.redis.url in out.stderr


def test_cache_full_state_replaces_tombstones_delete_and_versions_guard(env):
    """The subscriber's cache against records on the real topic: a full-state message replaces the
    entity's set (a version absent from it is removed), a null value deletes (its version from the
    header), an older message never wins, a delta written before full state still merges."""
    import io
    import json

    import fastavro

    from nearline import DATA_ROOT
    from nearline.io.codec import schema_fingerprint

    cfg, prod, _ = env
    topic = cfg.topics.embeddings
    a, b = np.asarray([1, 2], "<f4").tobytes(), np.asarray([3, 4], "<f4").tobytes()

    def send(rec_send):
        t, k, v, headers = rec_send
        prod.send(t, partition=0, key=k, value=v, headers=headers)

    send(full_state_send(topic, "job:x", full_state_record("job", "x", 1, {"m@v1": a, "n@v1": b}, {"m@v1"}, 0), CODEC))
    send(full_state_send(topic, "job:x", full_state_record("job", "x", 2, {"m@v1": b}, {"m@v1"}, 0), CODEC))  # n retired
    send(full_state_send(topic, "job:y", full_state_record("job", "y", 3, {"m@v1": a}, {"m@v1"}, 0), CODEC))
    send(tombstone_send(topic, "job:y", 4))
    send(full_state_send(topic, "job:y", full_state_record("job", "y", 3, {"m@v1": b}, {"m@v1"}, 0), CODEC))  # older
    send(full_state_send(topic, "job:z", full_state_record("job", "z", 9, {"m@v1": a}, {"m@v1"}, 0), CODEC))
    send(tombstone_send(topic, "job:z", 8))  # older than the state: ignored
    # a delta of the old schema (schemas/history): merged into the cached set, not replacing it
    old = fastavro.parse_schema(json.loads((DATA_ROOT / "schemas/history/EntityEmbeddings.v1.avsc").read_text()))
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + schema_fingerprint(old))
    fastavro.schemaless_writer(buf, old, {"entity_type": "job", "entity_id": "z", "version": 10, "deleted": False,
                                          "partial": False, "embeddings": [{"model": "n", "model_version": "v1", "dim": 2,
                                                                            "vector": b, "produced_at": 0}]})
    prod.send(topic, partition=0, key=b"job:z", value=buf.getvalue())
    prod.send(topic, partition=0, key=b"garbage-key", value=None)  # a tombstone not of an entity key: poison
    prod.flush()
    with client_of(cfg) as client:
        client.subscribe()
        assert client.wait_until_caught_up(timeout=30)
        assert {k: v.tobytes() for k, v in client.cached("job", "x").items()} == {"m@v1": b}
        assert ("job", "y") in client.cache and client.cache[("job", "y")]["deleted"] and client.cached("job", "y") == {}
        assert client.cache[("job", "y")]["version"] == 4
        assert {k: v.tobytes() for k, v in client.cached("job", "z").items()} == {"m@v1": a, "n@v1": b}
        assert client.subscription_stats["poison"] == 1
