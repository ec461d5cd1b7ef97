"""Consumers of the embeddings: the Python client (Redis, topic subscription with a cache, Hadamard
scoring), `nearline get`, `nearline tail`. (The Prometheus endpoint: test_metrics.py; more of the
client: test_client.py.)"""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from nearline import REPO_ROOT
from nearline.consumers.client import EmbeddingClient
from nearline.io import kafka_io
from nearline.io.store import RedisEmbeddingStore
from nearline.stream.join import Deleted, Joined
from nearline.stream.pipeline import PublishStage, WorkBatch
from tests.conftest import isolated_config, write_config_file

pytestmark = pytest.mark.integration


def joined(etype, eid, version):
    return Joined(f"{etype}:{eid}", etype, eid, version, {}, False, [], [], 0.0)


@pytest.fixture
def published(kafka_bootstrap, redis_url, unique, tmp_path):
    cfg = isolated_config(kafka_bootstrap, redis_url, unique)
    cfg.models.registry = str(REPO_ROOT / "models/registry.yaml")
    kafka_io.ensure_topics(kafka_bootstrap, cfg.all_topics(), 4)
    prod = kafka_io.make_producer(kafka_bootstrap)
    stage = PublishStage(cfg, RedisEmbeddingStore(redis_url, cfg.redis.key_prefix), prod)
    rng = np.random.default_rng(0)
    vecs = {"m1": rng.normal(size=32).astype("<f4"), "j1": rng.normal(size=32).astype("<f4"),
            "j2": rng.normal(size=32).astype("<f4")}
    stage.run(WorkBatch(0, joined=[joined("member", "m1", 1), joined("job", "j1", 1), joined("job", "j2", 1)],
                        embeddings=[{"member_pyramid@v1": vecs["m1"].tobytes()}, {"job_pyramid@v1": vecs["j1"].tobytes()},
                                    {"job_pyramid@v1": vecs["j2"].tobytes()}]))
    stage.run(WorkBatch(0, deleted=[Deleted("job:j2", "job", "j2", 2, [])]))
    prod.close()
    conf = write_config_file(tmp_path / "nearline.yaml", cfg, models={"registry": str(REPO_ROOT / "models/registry.yaml")})
    return cfg, conf, vecs


def test_client_get_subscribe_and_score(published):
    cfg, conf, vecs = published
    client = EmbeddingClient.from_config(conf)
    assert np.array_equal(client.get("member", "m1")["member_pyramid@v1"], vecs["m1"])
    assert client.get("job", "j2") == {}  # deleted
    client.subscribe()
    try:
        deadline = time.monotonic() + 20
        while not (client.cached("job", "j1") and ("job", "j2") in client.cache) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert np.array_equal(client.cached("job", "j1")["job_pyramid@v1"], vecs["j1"])
        assert client.cache[("job", "j2")]["deleted"] and client.cached("job", "j2") == {}
    finally:
        client.close()
    w, b = client.head("member_pyramid@v1", "apply")
    s = client.score("member_pyramid@v1", "job_pyramid@v1", "m1", ["j1", "j2", "nope"], task="apply")
    expected = 1 / (1 + np.exp(-(np.dot(w, vecs["m1"] * vecs["j1"]) + b)))
    assert s[0] == pytest.approx(expected, rel=1e-5) and np.isnan(s[1]) and np.isnan(s[2])


def test_cli_get_and_tail(published):
    cfg, conf, vecs = published
    run = [sys.executable, "-m", "nearline.cli", "--config", str(conf)]
    out = subprocess.run(run + ["get", "member", "m1"], capture_output=True, text=True, timeout=60)
    rec = json.loads(out.stdout)
    assert out.returncode == 0 and rec["version"] == 1
    assert np.allclose(rec["embeddings"]["member_pyramid@v1"], vecs["m1"], atol=1e-5)
    assert subprocess.run(run + ["get", "job", "missing"], capture_output=True, timeout=60).returncode == 1
    out = subprocess.run(run + ["tail", "--from-beginning", "--max", "4"], capture_output=True, text=True, timeout=60)
    recs = [json.loads(line) for line in out.stdout.splitlines()]
    ids = {r["entity_id"] if "entity_id" in r else r["key"].split(":", 1)[1] for r in recs}
    assert len(recs) == 4 and ids == {"m1", "j1", "j2"}
    [tomb] = [r for r in recs if r.get("tombstone")]  # the delete: a null value, printed with its header's version
    assert tomb["key"] == "job:j2" and tomb["version"] == 2
    assert not any(r.get("deleted") for r in recs)

