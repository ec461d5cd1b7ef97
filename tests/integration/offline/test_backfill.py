"""Backfill and rebuild on a real Apache Kafka broker and Redis, through the real Beam batch pipeline.

The snapshot is produced by the job's own stages (ScoreStage + PublishStage, the code `nearline run`
runs), from synthetic joined features; expectations are computed independently with onnxruntime."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from nearline.inference.scoring import ModelSet, RegistryWatcher
from nearline.io import kafka_io
from nearline.io.codec import Codec
from nearline.io.snapshot import ensure_snapshot_topic
from nearline.io.store import RedisEmbeddingStore
from nearline.launch.backfill import run_backfill
from nearline.offline.progress import done_key, outbox_key, requests_key
from nearline.offline.scan import SnapshotChunk, plan_ranges, scan_range
from nearline.offline.stage import BackfillStage
from nearline.offline.status import backfill_status
from nearline.registry.features import build_inputs
from nearline.registry.packages import Registry
from nearline.stream.join import Deleted, Joined
from nearline.stream.pipeline import PublishStage, ScoreStage, WorkBatch
from tests.conftest import isolated_config
from tests.helpers import FEATURES, make_package
from tests.integration.harness import Harness

pytestmark = pytest.mark.integration


def random_features(rng, partial: bool):
    feats = {}
    for name, (_, vocab, max_len, weighted) in FEATURES.items():
        if partial and name == "geo":
            continue
        n = int(rng.integers(1, max_len + 2)) if max_len > 1 else 1
        ids = [int(x) for x in rng.integers(0, vocab + 4, size=n)]  # some beyond the vocabulary: OOV
        w = [float(np.float32(x)) for x in rng.uniform(0.1, 1.0, size=n)] if weighted else None
        feats[name] = {"ids": ids, "weights": w}
    return feats


class World:
    """Registry + job stages on a private config; ``push`` runs versions through Score and Publish."""

    def __init__(self, root: Path, cfg, models: list[str]):
        self.root, self.cfg = root, cfg
        self.registry = root / "registry.yaml"
        self.registry.write_text("".join(f"- {m}\n" for m in models))
        cfg.models.registry = str(self.registry)
        cfg.job.registry_poll_s = 0.0
        cfg.job.backfill_on_register = False
        kafka_io.ensure_topics(cfg.kafka.bootstrap, cfg.all_topics(), cfg.topics.partitions)
        ensure_snapshot_topic(cfg.kafka.bootstrap, cfg)
        self.store = RedisEmbeddingStore(cfg.redis.url, cfg.redis.key_prefix)
        self.producer = kafka_io.make_producer(cfg.kafka.bootstrap)
        self.models = ModelSet(RegistryWatcher(Registry(self.registry), cfg.entity_types, 0.0))
        self.score, self.publish = ScoreStage(self.models), PublishStage(cfg, self.store, self.producer)
        self.final: dict[str, tuple[int, dict | None, bool]] = {}  # key -> (version, features or None, partial)

    def push(self, items):
        """items: (type, id, version, features | None for a delete, partial)."""
        wb = WorkBatch(0)
        for etype, eid, v, feats, partial in items:
            key = f"{etype}:{eid}"
            if feats is None:
                wb.deleted.append(Deleted(key, etype, eid, v, []))
            else:
                wb.joined.append(Joined(key, etype, eid, v, feats, partial, ["geo"] if partial else [], [], 0.0))
            self.final[key] = (v, feats, partial)
        self.publish.run(self.score.run(wb))

    def populate(self, n_members: int, n_jobs: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        ents = [("member", f"m{i}") for i in range(n_members)] + [("job", f"j{i}") for i in range(n_jobs)]
        batch = []
        for round_ in range(3):
            for etype, eid in ents:
                r = rng.random()
                if round_ > 0 and r < 0.3:
                    continue  # not every entity is updated every round
                if round_ == 2 and r < 0.36:
                    batch.append((etype, eid, 10 * round_ + 1, None, False))  # a delete
                    continue
                if round_ == 2 and r < 0.45 and self.final.get(f"{etype}:{eid}", (0, None))[1] is not None:
                    # an irrelevant update: same features, newer version (the job dedupes it, _v stays)
                    _, feats, partial = self.final[f"{etype}:{eid}"]
                    batch.append((etype, eid, 10 * round_ + 1, feats, partial))
                    continue
                batch.append((etype, eid, 10 * round_ + 1, random_features(rng, partial=r > 0.93), r > 0.93))
                if len(batch) >= 300:
                    self.push(batch)
                    batch = []
            if batch:
                self.push(batch)
                batch = []

    def live(self):
        return {k: (v, f, p) for k, (v, f, p) in self.final.items() if f is not None}

    def expected(self, model_key: str) -> dict[str, np.ndarray]:
        """onnxruntime directly on each live entity's final features (features left out by a partial join
        take the manifest's declared defaults, stated here)."""
        good, _ = Registry(self.registry).load()
        pkg = next(p for p in good if p.manifest.key == model_key)
        man = pkg.manifest
        sess = ort.InferenceSession(str(pkg.onnx_path), providers=["CPUExecutionProvider"])
        keys = [k for k in self.live() if k.startswith(man.entity_type + ":")]
        rows = []
        for k in keys:
            feats = dict(self.final[k][1])
            for f in man.inputs:
                feats.setdefault(f.name, {"ids": list(f.default_ids), "weights": None})
            rows.append(feats)
        emb = sess.run([man.output_name], build_inputs(man, rows))[0]
        return dict(zip(keys, emb))

    def hashes(self) -> dict[str, dict[bytes, bytes]]:
        r = self.store.r
        out = {}
        for k in r.scan_iter(match=f"{self.cfg.redis.key_prefix}:*:*", count=1000):
            kk = k.decode()
            if ":backfill:" in kk or ":readmarks:" in kk:
                continue
            out[kk] = r.hgetall(k)
        return out

    def wipe(self):
        r = self.store.r
        keys = list(r.scan_iter(match=f"{self.cfg.redis.key_prefix}:*", count=1000))
        if keys:
            r.delete(*keys)
        assert not self.hashes()

    def close(self):
        self.producer.close()


@pytest.fixture
def world(tmp_path, kafka_bootstrap, redis_url, unique):
    cfg = isolated_config(kafka_bootstrap, redis_url, unique)
    pk = tmp_path / "pk"
    models = [str(make_package(pk, "member_tiny", "v1", "member", seed=1)),
              str(make_package(pk, "job_tiny", "v1", "job", seed=2))]
    w = World(tmp_path, cfg, models)
    w.pk = pk
    yield w
    w.close()


def register(w: World, name: str, version: str, etype: str, seed: int) -> str:
    pkg = make_package(w.pk, name, version, etype, seed=seed, dim=16)
    with open(w.registry, "a") as fh:
        fh.write(f"- {pkg}\n")
    return f"{name}@{version}"


def test_rebuild_after_wipe_restores_every_embedding_bitwise(world):
    w = world
    w.populate(300, 150)
    before = w.hashes()
    live = w.live()
    assert len(live) > 200 and any(p for _, _, p in live.values())
    w.wipe()
    # bad input in the snapshot: dead-lettered with the reason, the rest proceeds
    w.producer.send(w.cfg.topics.feature_snapshot, key=b"member:garbage", value=b"\x00not avro",
                    headers=[("version", b"3")]).get(timeout=30)
    res = run_backfill(w.cfg, w.cfg.kafka.bootstrap, w.cfg.redis.url, all_models=True, progress=True, batch_size=64)
    after = w.hashes()
    c = res.counts
    assert c.failed == 1 and c.skipped_newer == 0
    dls = [d for d in _reader(w).topic_records(w.cfg.topics.dead_letter) if d["stage"] == "nearline.backfill"]
    assert len(dls) == 1 and dls[0]["original"] == b"\x00not avro" and "member:garbage undecodable" in dls[0]["error"]
    n_live_emb = 0
    for key, h in before.items():
        etype_id = key.split(":", 1)[1]
        got = after.get(key)
        if b"_deleted" in h:
            # the rebuild restores every delete marker the snapshot holds, with its version: a replayed
            # older upsert of the entity is then refused as before the wipe
            assert got == h, key
            continue
        assert got is not None, f"{key} not rebuilt"
        emb_before = {f: v for f, v in h.items() if not f.startswith(b"_")}
        emb_after = {f: v for f, v in got.items() if not f.startswith(b"_")}
        assert emb_after == emb_before, f"{key}: rebuilt embeddings differ bitwise"
        n_live_emb += len(emb_before)
        # _v: the newest version the job processed (an irrelevant update leaves Redis behind the snapshot)
        assert int(got[b"_v"]) == live[etype_id][0] >= int(h[b"_v"]), key
        assert (b"_partial" in got) == live[etype_id][2] == (b"_partial" in h), key
    assert set(after) == set(before)
    assert c.written == n_live_emb and c.tombstones == sum(b"_deleted" in h for h in before.values()) > 0
    assert res.passes == 1
    # the rebuilt embeddings are also onnxruntime on the final features (independent of the job)
    for model in ("member_tiny@v1", "job_tiny@v1"):
        for key, vec in w.expected(model).items():
            stored = np.frombuffer(w.store.get(*key.split(":", 1))[model], "<f4")
            assert np.array_equal(stored, vec), (key, model)


def test_backfill_of_a_new_version_reaches_every_live_entity_and_is_idempotent(world):
    w = world
    w.populate(250, 100, seed=1)
    new = register(w, "member_tiny", "v2", "member", seed=9)
    before = w.hashes()
    dry = run_backfill(w.cfg, w.cfg.kafka.bootstrap, w.cfg.redis.url, models=[new], dry_run=True, progress=False)
    assert w.hashes() == before, "a dry run wrote something"
    live_members = [k for k in w.live() if k.startswith("member:")]
    assert dry.counts.would_score == len(live_members) and dry.counts.written == 0

    seen = []

    def status_mid_run(n):  # what `nearline backfill --status` shows while the run is on (after its pass n)
        seen.append(backfill_status(w.store.r, w.cfg.redis.key_prefix))

    res = run_backfill(w.cfg, w.cfg.kafka.bootstrap, w.cfg.redis.url, models=[new], progress=False, batch_size=100,
                       after_pass=status_mid_run)
    assert res.counts.written == len(live_members) and res.counts.failed == 0
    [run] = seen[0]["running"]
    assert run["model"] == new and run["alive"] and run["percent"] == 100.0 and run["planned"] == run["progress"] > 0
    assert run["written"] == len(live_members) and run["failed"] == 0 and run["per_s"] > 0
    st = backfill_status(w.store.r, w.cfg.redis.key_prefix)
    assert st["running"] == [] and st["done"][new]["written"] == len(live_members)
    expected = w.expected(new)
    after = w.hashes()
    for key in live_members:
        h = w.store.get(*key.split(":", 1))
        assert np.array_equal(np.frombuffer(h[new], "<f4"), expected[key]), key
        old = before[f"{w.cfg.redis.key_prefix}:{key}"]
        assert {f: v for f, v in after[f"{w.cfg.redis.key_prefix}:{key}"].items() if f != new.encode() and f != b"_v"} == \
               {f: v for f, v in old.items() if f != b"_v"}, f"{key}: backfill touched other versions"
    for key, h in after.items():
        if key.split(":")[1] == "job" or b"_deleted" in h:
            assert new.encode() not in h
    # published: one message per entity, its full state (every version it holds, as in Redis after the write)
    msgs = [m for m in _reader(w).topic_records(w.cfg.topics.embeddings)
            if any(e["model_version"] == "v2" for e in m["embeddings"])]
    assert len(msgs) == len(live_members)
    for m in msgs:
        h = w.store.get(m["entity_type"], m["entity_id"])
        assert {f"{e['model']}@{e['model_version']}": e["vector"] for e in m["embeddings"]} == \
               {f: v for f, v in h.items() if not f.startswith("_")}, m["entity_id"]
        assert m["version"] == int(h["_v"]) and not m["deleted"]
    assert not w.store.r.exists(outbox_key(w.cfg.redis.key_prefix)), "acknowledged states left in the outbox"
    # idempotent: a rerun writes nothing and finds everything in place
    again = run_backfill(w.cfg, w.cfg.kafka.bootstrap, w.cfg.redis.url, models=[new], progress=False)
    assert again.counts.written == 0 and again.counts.deduped == len(live_members)
    assert w.store.r.hget(done_key(w.cfg.redis.key_prefix), new) is not None
    assert w.store.r.hget(requests_key(w.cfg.redis.key_prefix), new) is None


def _reader(w: World):
    h = Harness.__new__(Harness)
    h.cfg, h.codec = w.cfg, Codec()
    return h


def test_backfill_never_regresses_an_entity_the_job_updates_meanwhile(world):
    """Forces the interleaving: between the backfill's Redis read and its write, the job's PublishStage
    writes a newer version of some entities of the batch. The Lua CAS refuses the older backfill write."""
    w = world
    w.populate(60, 10, seed=2)
    new = register(w, "member_tiny", "v2", "member", seed=9)
    w.models.refresh(force=True)  # the job now scores the new version too
    c = kafka_io.make_consumer(w.cfg.kafka.bootstrap, None)
    entries = []
    for rng in plan_ranges(c, w.cfg.topics.feature_snapshot, [0, 1, 2, 3]):
        found, _ = scan_range(c, rng)
        entries += [e for e in found.values() if e.key.startswith("member:") and not e.deleted]
    c.close()
    chunk = SnapshotChunk.from_entries(entries, 0)
    raced = [k.partition(":")[2] for k in chunk.keys[:5]]
    rng = np.random.default_rng(5)

    def job_writes_newer(_chunk, upserts):
        assert any(u[1] in raced for u in upserts)
        w.push([("member", eid, 1000, random_features(rng, False), False) for eid in raced])

    stage = BackfillStage(w.cfg, w.store, w.producer, ModelSet(RegistryWatcher(Registry(w.registry), w.cfg.entity_types, 0)),
                          {new}, before_write=job_writes_newer)
    counts = stage.run(chunk)
    assert counts.skipped_newer == len(raced)
    assert counts.written == len(chunk) - len(raced)
    expected = w.expected(new)
    for key, version in zip(chunk.keys, chunk.versions):
        eid = key.partition(":")[2]
        h = w.store.get("member", eid)
        want_v = 1000 if eid in raced else version
        assert int(h["_v"]) == want_v, eid
        assert np.array_equal(np.frombuffer(h[new], "<f4"), expected[key]), eid  # the job's v1000 for raced
        assert np.array_equal(np.frombuffer(h["member_tiny@v1"], "<f4"), w.expected("member_tiny@v1")[key])


def test_killed_backfill_reruns_to_completion(world, tmp_path):
    w = world
    w.populate(1500, 10, seed=3)
    new = register(w, "member_tiny", "v2", "member", seed=9)
    conf = tmp_path / "cli.yaml"
    t = w.cfg.topics
    conf.write_text(yaml.safe_dump({
        "topics": {"entity_updates": t.entity_updates, "standardized_prefix": t.standardized_prefix,
                   "embeddings": t.embeddings, "dead_letter": t.dead_letter, "feature_snapshot": t.feature_snapshot},
        "kafka": {"bootstrap": w.cfg.kafka.bootstrap}, "redis": {"url": w.cfg.redis.url, "key_prefix": w.cfg.redis.key_prefix},
        "models": {"registry": str(w.registry)}}))
    live_members = [k for k in w.live() if k.startswith("member:")]
    cmd = [sys.executable, "-m", "nearline.cli", "--config", str(conf), "backfill", "--models", new, "--batch-size", "4",
           "--no-progress", "--json"]
    log = open(tmp_path / "bf1.log", "wb")
    # small batches, and the first run at the lowest CPU priority, so that this test's poll sees it mid-way
    # even on a loaded machine (in a CI run beside a training job it once finished all 1,410 between two polls)
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                         preexec_fn=lambda: os.nice(19))

    def have():
        return sum(1 for k in live_members if w.store.r.hexists(f"{w.cfg.redis.key_prefix}:{k}", new))

    deadline = time.monotonic() + 120
    while have() < 8:
        assert p.poll() is None, (tmp_path / "bf1.log").read_text()
        assert time.monotonic() < deadline, (tmp_path / "bf1.log").read_text()
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    done_before = have()
    assert 0 < done_before < len(live_members), "kill the backfill mid-way"
    assert w.store.r.hget(requests_key(w.cfg.redis.key_prefix), new) is not None, "the unfinished request is recorded"

    every = run_backfill(w.cfg, w.cfg.kafka.bootstrap, w.cfg.redis.url, models=[new], dry_run=True, progress=False)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["written"] == len(live_members) - done_before and summary["failed"] == 0
    # what the killed run had finished is not redone: the rerun resumed each partition where it had written
    # everything (only the batch in flight at the kill may be found again, deduped)
    assert summary["entities"] < every.counts.entities and summary["deduped"] < done_before, (summary, done_before)
    assert "resuming the backfill" in out.stderr, out.stderr
    assert "backfill of member_tiny@v2" in out.stdout
    expected = w.expected(new)
    for k in live_members:
        assert np.array_equal(np.frombuffer(w.store.get(*k.split(":", 1))[new], "<f4"), expected[k]), k
    assert w.store.r.hget(requests_key(w.cfg.redis.key_prefix), new) is None
    # nothing lost on the topic either: a state written to Redis just before the kill was published by
    # the rerun (the outbox); every member's newest message is its full state in Redis
    latest = {}
    for m in _reader(w).topic_records(w.cfg.topics.embeddings):
        if "entity_type" in m:
            latest[f"{m['entity_type']}:{m['entity_id']}"] = m
    for k in live_members:
        h = w.store.get(*k.split(":", 1))
        assert {f"{e['model']}@{e['model_version']}": e["vector"] for e in latest[k]["embeddings"]} == \
               {f: v for f, v in h.items() if not f.startswith("_")}, k
    assert not w.store.r.exists(outbox_key(w.cfg.redis.key_prefix))


def test_retire_removes_the_version_everywhere(world, tmp_path):
    from nearline.consumers.client import EmbeddingClient
    from nearline.offline.retire import retire

    w = world
    w.populate(80, 20, seed=4)
    new = register(w, "member_tiny", "v2", "member", seed=9)
    run_backfill(w.cfg, w.cfg.kafka.bootstrap, w.cfg.redis.url, models=[new], progress=False)
    client = EmbeddingClient(w.cfg, w.cfg.kafka.bootstrap, w.cfg.redis.url)
    for m in _reader(w).topic_records(w.cfg.topics.embeddings):
        if "retired_at" not in m:
            client.apply(m)
    assert any(new in c["vectors"] for c in client.cache.values())
    n_with = sum(new.encode() in h for h in w.hashes().values())
    assert n_with > 40
    from nearline.offline.lease import lease_key
    from nearline.offline.progress import BackfillError

    w.store.r.set(lease_key(w.cfg.redis.key_prefix, new), "backfill-elsewhere", ex=30)
    with pytest.raises(BackfillError, match="is running"):
        retire(w.cfg, w.cfg.kafka.bootstrap, w.cfg.redis.url, new, grace_s=0)
    w.store.r.delete(lease_key(w.cfg.redis.key_prefix, new))
    assert new in {p.manifest.key for p in Registry(w.registry).load()[0]}
    res = retire(w.cfg, w.cfg.kafka.bootstrap, w.cfg.redis.url, new, grace_s=0)
    assert res["fields_removed"] == n_with and res["notices"] == w.cfg.topics.partitions
    assert not any(new.encode() in h for h in w.hashes().values())
    assert all(b"member_tiny@v1" in h for k, h in w.hashes().items() if ":member:" in k and b"_deleted" not in h)
    assert new not in {p.manifest.key for p in Registry(w.registry).load()[0]}
    assert len(Registry(w.registry).entries()) == 2
    notices = [m for m in _reader(w).topic_records(w.cfg.topics.embeddings) if "retired_at" in m]
    assert len(notices) == w.cfg.topics.partitions and notices[0]["model"] == "member_tiny"
    client.retire(notices[0])
    assert not any(new in c["vectors"] for c in client.cache.values())


def test_snapshot_topic_is_log_compacted(kafka_bootstrap, redis_url, unique):
    from nearline.io.snapshot import cleanup_policy

    cfg = isolated_config(kafka_bootstrap, redis_url, unique)
    ensure_snapshot_topic(kafka_bootstrap, cfg)
    assert cleanup_policy(kafka_bootstrap, cfg.topics.feature_snapshot) == "compact"
    # created by someone else with the delete policy (e.g. broker auto-creation): switched to compact
    cfg.topics.feature_snapshot += "-auto"
    kafka_io.ensure_topics(kafka_bootstrap, [cfg.topics.feature_snapshot], 4)
    assert cleanup_policy(kafka_bootstrap, cfg.topics.feature_snapshot) == "delete"
    ensure_snapshot_topic(kafka_bootstrap, cfg)
    assert cleanup_policy(kafka_bootstrap, cfg.topics.feature_snapshot) == "compact"


def test_models_register_cli_appends_the_line_and_backfills(world, tmp_path):
    w = world
    w.populate(120, 10, seed=6)
    pkg = make_package(w.pk, "member_tiny", "v3", "member", seed=11, dim=4)
    t = w.cfg.topics
    conf = tmp_path / "cli.yaml"
    conf.write_text(yaml.safe_dump({
        "topics": {"entity_updates": t.entity_updates, "standardized_prefix": t.standardized_prefix,
                   "embeddings": t.embeddings, "dead_letter": t.dead_letter, "feature_snapshot": t.feature_snapshot},
        "kafka": {"bootstrap": w.cfg.kafka.bootstrap}, "redis": {"url": w.cfg.redis.url, "key_prefix": w.cfg.redis.key_prefix},
        "job": {"registry_poll_s": 0.1}, "models": {"registry": str(w.registry)}}))
    cli = [sys.executable, "-m", "nearline.cli", "--config", str(conf), "models"]
    out = subprocess.run(cli + ["register", str(pkg)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "registered member_tiny@v3" in out.stdout and "backfill of member_tiny@v3" in out.stdout
    assert "- pk/member_tiny/v3\n" in w.registry.read_text()  # relative to the registry file
    expected = w.expected("member_tiny@v3")
    assert len(expected) > 50
    for k, vec in expected.items():
        assert np.array_equal(np.frombuffer(w.store.get(*k.split(":", 1))["member_tiny@v3"], "<f4"), vec), k
    bad = subprocess.run(cli + ["retire", "nope@v1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "nope@v1 is not registered" in bad.stderr
    out = subprocess.run(cli + ["retire", "member_tiny@v3", "--grace", "0"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "retired member_tiny@v3" in out.stdout, out.stdout + out.stderr
    assert not any(b"member_tiny@v3" in h for h in w.hashes().values())


def test_job_relaunches_an_unfinished_backfill_at_start(world, tmp_path):
    """The job (its BackfillLauncher) finds a request that never completed (the backfill died, no lease)
    and launches it again; it runs to completion in a child process."""
    from nearline.offline.launcher import BackfillLauncher
    from nearline.offline.lease import claim, lease_key

    w = world
    w.populate(150, 10, seed=7)
    new = register(w, "member_tiny", "v2", "member", seed=9)
    assert claim(w.store.r, w.cfg.redis.key_prefix, new, "job-that-died")
    w.store.r.delete(lease_key(w.cfg.redis.key_prefix, new))  # its lease expired
    w.cfg.services.state_dir = str(tmp_path / "state")
    launcher = BackfillLauncher(w.cfg, w.cfg.kafka.bootstrap, w.cfg.redis.url)
    launcher.resume({new, "member_tiny@v1"})
    assert [k for k, _, _ in launcher.children] == [[new]]
    _, child, logfile = launcher.children[0]
    assert child.wait(timeout=300) == 0, logfile.read_text()[-3000:]
    launcher.poll()
    assert not launcher.children
    assert w.store.r.hget(done_key(w.cfg.redis.key_prefix), new) is not None
    assert w.store.r.hget(requests_key(w.cfg.redis.key_prefix), new) is None
    for k, vec in w.expected(new).items():
        assert np.array_equal(np.frombuffer(w.store.get(*k.split(":", 1))[new], "<f4"), vec), k
    # a second start finds nothing to resume, and a version already backfilled is not launched again
    launcher.resume({new})
    launcher.after_batch(set(), {new})
    assert not launcher.children


def test_catch_up_pass_covers_what_a_job_without_the_version_wrote_meanwhile(world):
    """During pass 1 a job that has not loaded the new version yet writes newer versions of some members
    (Redis then holds a newer version without the field, so pass 1's write is refused or skipped). Pass 2
    reads what was appended meanwhile and adds the field at the newer version."""
    w = world
    w.populate(120, 10, seed=8)
    old_registry = w.registry.read_text()
    new = register(w, "member_tiny", "v2", "member", seed=9)
    stale_reg = w.root / "registry-before.yaml"
    stale_reg.write_text(old_registry)
    old_job = ScoreStage(ModelSet(RegistryWatcher(Registry(stale_reg), w.cfg.entity_types, 1e9)))
    members = [k.split(":", 1)[1] for k in w.live() if k.startswith("member:")][:6]
    rng = np.random.default_rng(3)

    def job_writes_without_the_new_version(n):
        if n == 1:
            wb = WorkBatch(0)
            for eid in members:
                feats = random_features(rng, False)
                wb.joined.append(Joined(f"member:{eid}", "member", eid, 5000, feats, False, [], [], 0.0))
                w.final[f"member:{eid}"] = (5000, feats, False)
            w.publish.run(old_job.run(wb))
            # the job wrote v5000 without the new version: the field pass 1 wrote is from the older features
            assert all(int(w.store.get("member", eid)["_v"]) == 5000 for eid in members)

    res = run_backfill(w.cfg, w.cfg.kafka.bootstrap, w.cfg.redis.url, models=[new], progress=False,
                       after_pass=job_writes_without_the_new_version)
    assert res.passes == 2 and res.counts.failed == 0
    expected = w.expected(new)
    for key, vec in expected.items():
        h = w.store.get(*key.split(":", 1))
        assert np.array_equal(np.frombuffer(h[new], "<f4"), vec), key
    for eid in members:
        assert w.store.get("member", eid)["_v"] == b"5000"


def test_a_version_disabled_mid_backfill_fails_its_entities_and_writes_nothing_for_them(world):
    """A registered version that onnxruntime fails on every row (a manifest overstating its title
    vocabulary: the graph's table is smaller) is disabled by ModelSet after 3 batches; the backfill goes
    on, counts the rest as failed, and never writes a hash without the version's vector."""
    from nearline.offline.progress import BackfillCounts
    from nearline.offline.stage import batches_with_progress
    from nearline.registry.features import FeatureEncoder

    w = world
    rng = np.random.default_rng(11)
    items = []
    for i in range(30):
        feats = random_features(rng, False)
        feats["title"] = {"ids": [500], "weights": None}  # OOV for a correct manifest, beyond the table for the broken one
        items.append(("member", f"b{i}", 5, feats, False))
    w.push(items)
    new = register(w, "member_bad", "v1", "member", seed=12)
    models = ModelSet(RegistryWatcher(Registry(w.registry), w.cfg.entity_types, 0))
    m = models.models[new]
    title = next(f for f in m.package.manifest.inputs if f.name == "title")
    title.vocab_size = 10_000
    m.encoders["title"] = FeatureEncoder(title)
    c = kafka_io.make_consumer(w.cfg.kafka.bootstrap, None)
    entries = []
    for rng_ in plan_ranges(c, w.cfg.topics.feature_snapshot, [0, 1, 2, 3]):
        found, _ = scan_range(c, rng_)
        entries += [e for e in found.values() if e.key.startswith("member:b")]
    c.close()
    chunk = SnapshotChunk.from_entries(entries, 0)
    stage = BackfillStage(w.cfg, w.store, w.producer, models, {new})
    total = BackfillCounts()
    for batch, _ in batches_with_progress(chunk, 5, len(chunk)):
        total.add(stage.run(batch))
    assert new in models.disabled
    assert (total.failed, total.written, len(chunk)) == (30, 0, 30)
    hashes = w.hashes()
    assert len([k for k in hashes if ":member:b" in k]) == 30
    assert not any(new.encode() in h for h in hashes.values())
