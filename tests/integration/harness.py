"""Runs the real system for end-to-end tests: standardizer processes and the `nearline run` job as
subprocesses against a real broker and Redis, an in-process update streamer, and the expected end state
computed independently (standardizers + onnxruntime run directly)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import yaml

from nearline import REPO_ROOT
from nearline.config import Config
from nearline.io import kafka_io
from nearline.io.codec import Codec
from nearline.io.embedding_messages import ensure_embedding_topic, read_message
from nearline.io.store import RedisEmbeddingStore
from nearline.marketplace.stream import UpdateStreamer, load_marketplace
from nearline.marketplace.taxonomy import Taxonomies
from nearline.registry.features import build_inputs
from nearline.registry.packages import Registry
from nearline.standardize.processors import make_processor

PROCESSORS = ["title", "skills", "company", "geo"]


@dataclass
class Harness:
    root: Path
    cfg: Config
    marketplace_dir: Path
    registry_lines: list[str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    events: list = field(default_factory=list)
    join_timeout_s: float = 60.0
    job_overrides: dict = field(default_factory=dict)
    backfill_on_register: bool = False  # the job's automatic backfill of a newly registered version

    def __post_init__(self):
        self.root.mkdir(parents=True, exist_ok=True)
        self.registry = self.root / "registry.yaml"
        self.registry.write_text("".join(f"- {line}\n" for line in self.registry_lines))
        t = self.cfg.topics
        conf = {
            "topics": {"entity_updates": t.entity_updates, "standardized_prefix": t.standardized_prefix,
                       "embeddings": t.embeddings, "dead_letter": t.dead_letter, "partitions": t.partitions,
                       "feature_snapshot": t.feature_snapshot},
            "kafka": {"bootstrap": self.cfg.kafka.bootstrap, "consumer_group": self.cfg.kafka.consumer_group},
            "redis": {"url": self.cfg.redis.url, "key_prefix": self.cfg.redis.key_prefix},
            # replay_timeout_s above a standardizer's worst recovery from a stuck group join (about
            # 2 x standardizers.rejoin_stall_s, nearline/io/group_watchdog.py) plus its start-up
            "join": {"timeout_s": self.join_timeout_s, "replay_timeout_s": 40.0},
            "job": {"metrics_port": 0, "log_every_s": 2, "registry_poll_s": 0.5, "poll_timeout_ms": 50,
                    "backfill_on_register": self.backfill_on_register},
            "standardizers": {"taxonomy_dir": str(self.marketplace_dir),
                              "group_prefix": self.cfg.standardizers.group_prefix,
                              "delays": {"skills": {"delay_ms": 5, "jitter_ms": 40}, "geo": {"jitter_ms": 20}}},
            "models": {"registry": str(self.registry)},
        }
        if self.cfg.datacenters.local:
            conf["datacenters"] = {"local": self.cfg.datacenters.local, "peers": list(self.cfg.datacenters.peers)}
        conf["job"].update(self.job_overrides)
        self.config_file = self.root / "nearline.yaml"
        self.config_file.write_text(yaml.safe_dump(conf))
        ensure_embedding_topic(self.cfg.kafka.bootstrap, self.cfg)  # log-compacted, as the service creates it
        kafka_io.ensure_topics(self.cfg.kafka.bootstrap, self.cfg.all_topics(), t.partitions)
        self.streamer = UpdateStreamer(load_marketplace(self.marketplace_dir), seed=5)
        self.codec = Codec()
        self.producer = kafka_io.make_producer(self.cfg.kafka.bootstrap)

    # ---- processes -----------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        p = subprocess.Popen([sys.executable, "-m", "nearline.cli", "--config", str(self.config_file), *args],
                             stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs[name] = p
        return p

    def start_standardizers(self, processors=PROCESSORS):
        for p in processors:
            self._spawn(f"std-{p}", ["standardize", "--processor", p])

    def wait_standardizers_assigned(self, processors=PROCESSORS, timeout: float = 90, settle_s: float = 1.0) -> None:
        """Until each standardizer's log shows a non-empty assignment not revoked since, twice ``settle_s``
        apart: a test whose joins time out in seconds must not start while a group is still forming (a
        standardizer that joins late is a missing standardizer to the job, and its outputs come too late)."""
        deadline = time.monotonic() + timeout

        def settled(p: str) -> bool:
            text = (self.root / f"std-{p}.log").read_text(errors="replace") if (self.root / f"std-{p}.log").exists() else ""
            last_assigned = text.rfind("partitions assigned [")
            return (last_assigned >= 0 and text[last_assigned:last_assigned + 22] != "partitions assigned []"
                    and text.rfind("partitions revoked") < last_assigned)

        while True:
            if all(settled(p) for p in processors):
                time.sleep(settle_s)
                if all(settled(p) for p in processors):
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"standardizers {[p for p in processors if not settled(p)]} not assigned after {timeout}s")
            time.sleep(0.2)

    def start_job(self, name: str = "job", args: tuple[str, ...] = ()):
        """`nearline run` as process ``name`` (log <root>/<name>.log); ``args``: run's options, e.g.
        ("--instance", "1", "--instances", "2") or ("--runner", "prism")."""
        return self._spawn(name, ["run", *args])

    def job_log(self, name: str = "job") -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 60, name: str = "job") -> None:
        deadline = time.monotonic() + timeout
        while text not in self.job_log(name):
            if self.procs[name].poll() is not None:
                raise AssertionError(f"{name} exited ({self.procs[name].returncode}):\n{self.job_log(name)[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in {name} log after {timeout}s:\n{self.job_log(name)[-3000:]}")
            time.sleep(0.2)

    def kill_job(self, sig=signal.SIGKILL, name: str = "job"):
        p = self.procs.pop(name)
        os.killpg(p.pid, sig)
        p.wait(timeout=30)

    def stop_all(self):
        for name, p in list(self.procs.items()):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for name, p in list(self.procs.items()):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()
        self.producer.close()  # idempotent: stop_all may be called again from a finally

    # ---- input ----------------------------------------------------------------------------------
    def stream(self, n: int, rate: float = 500.0) -> list:
        start = time.monotonic()
        futs = []
        for i, ev in enumerate(self.streamer.take(n)):
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            futs.append(self.producer.send(self.cfg.topics.entity_updates, key=ev.key.encode(),
                                           value=self.codec.encode("EntityUpdate", ev.record)))
            self.events.append(ev)
        self.producer.flush()
        for f in futs:
            f.get(timeout=30)
        return self.events[-n:]

    def produce_raw(self, topic: str, key: bytes, value: bytes) -> None:
        self.producer.send(topic, key=key, value=value).get(timeout=30)

    # ---- progress -------------------------------------------------------------------------------
    def lag(self, group: str, topics: list[str]) -> int:
        return kafka_io.group_lag(self.cfg.kafka.bootstrap, group, topics, self.cfg.topics.partitions)

    def wait_caught_up(self, timeout: float = 180, processors=PROCESSORS) -> None:
        """Until every standardizer and the job have committed everything there is to read."""
        deadline = time.monotonic() + timeout
        while True:
            lags = {p: self.lag(self.cfg.standardizers.group(p), self.cfg.update_topics()) for p in processors}
            lags["job"] = self.lag(self.cfg.kafka.consumer_group, self.cfg.input_topics())
            if not any(lags.values()):
                return
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise AssertionError(f"{name} exited with {p.returncode}:\n{(self.root / (name + '.log')).read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not caught up after {timeout}s: {lags}\n{self.job_log()[-3000:]}")
            time.sleep(0.5)

    # ---- output ---------------------------------------------------------------------------------
    def topic_records(self, topic: str) -> list[dict]:
        """Every record of the topic, decoded, in partition then offset order. A null-value record (an
        embedding topic tombstone) is ``{"tombstone": True, "deleted": True, "key", "entity_type",
        "entity_id", "version" (its header), "partial": False, "embeddings": []}``."""
        return [self.codec.decode(m.value) if m.value is not None else _tombstone_view(m, self.codec)
                for m in raw_records(self.cfg, topic)]

    def final_state(self) -> dict[str, dict | None]:
        """entity key -> last raw fields (None if deleted), from the events streamed."""
        state: dict[str, dict | None] = {}
        for ev in self.events:
            state[ev.key] = None if ev.record["op"] == "DELETE" else ev.record["fields"]
        return state

    def expected_embeddings(self, live: dict[str, dict], processors=PROCESSORS) -> dict[str, dict[str, np.ndarray]]:
        """ORT run directly on the standardized features of each live entity, for every registered model
        (features of processors not listed are left out, so the manifests' defaults apply)."""
        tax = Taxonomies.load(self.marketplace_dir / "taxonomies.json")
        procs = [make_processor(p, tax) for p in processors]
        good, bad = Registry(self.registry).load(["member", "job"])
        out: dict[str, dict[str, np.ndarray]] = {k: {} for k in live}
        for pkg in good:
            man = pkg.manifest
            sess = ort.InferenceSession(str(pkg.onnx_path), providers=["CPUExecutionProvider"])
            keys = [k for k in live if k.startswith(man.entity_type + ":")]
            rows = []
            for k in keys:
                feats = {}
                for p in procs:
                    feats.update(p.standardize(live[k]))
                for f in man.inputs:  # the manifest's declared default, stated here, not left to the code under test
                    feats.setdefault(f.name, {"ids": list(f.default_ids), "weights": None})
                rows.append(feats)
            if keys:
                emb = sess.run([man.output_name], build_inputs(man, rows))[0]
                for k, e in zip(keys, emb):
                    out[k][man.key] = e
        return out

    def stored(self, key: str) -> dict[str, bytes]:
        etype, eid = key.split(":", 1)
        return RedisEmbeddingStore(self.cfg.redis.url, self.cfg.redis.key_prefix).get(etype, eid)


def _tombstone_view(m, codec) -> dict:
    msg = read_message(m.key, m.value, m.headers, codec)
    etype, eid = msg.entity or (None, None)
    return {"tombstone": True, "deleted": True, "key": msg.key, "entity_type": etype, "entity_id": eid,
            "version": msg.version, "partial": False, "embeddings": []}


def raw_records(cfg: Config, topic: str, timeout_s: float = 30.0) -> list:
    """Every record of the topic as kafka-python ConsumerRecords (key, value: None for a tombstone,
    headers), in partition then offset order."""
    return kafka_io.read_topic(cfg.kafka.bootstrap, topic, cfg.topics.partitions, timeout_s)


# the shipped towers
SHIPPED = [str(REPO_ROOT / "models/packages/member_pyramid/v1"), str(REPO_ROOT / "models/packages/job_pyramid/v1")]


def check_live_and_deleted(h: "Harness", must_have: dict[str, set[str]]):
    """Every live entity holds every version in must_have, equal to onnxruntime on its final features; deleted ones hold none."""
    state = h.final_state()
    live = {k: f for k, f in state.items() if f is not None}
    expected = h.expected_embeddings(live)
    n_compared = 0
    for key, fields in state.items():
        stored = h.stored(key)
        vecs = {k: np.frombuffer(v, "<f4") for k, v in stored.items() if not k.startswith("_")}
        if fields is None:
            assert not vecs, f"deleted {key} still has embeddings {sorted(vecs)}"
            continue
        assert "_partial" not in stored, f"{key} holds a partial embedding"
        need = must_have[key.split(":")[0]]
        assert need <= set(vecs), f"{key} lacks {need - set(vecs)}"
        for model, v in vecs.items():
            if not np.allclose(v, expected[key][model], atol=1e-5):
                history = [(e.kind, e.record["version"]) for e in h.events if e.key == key]
                pub = sorted(m["version"] for m in h.topic_records(h.cfg.topics.embeddings)
                             if f"{m['entity_type']}:{m['entity_id']}" == key)
                joblog = "\n".join(l for l in h.job_log().splitlines() if "wait" in l or "REFUSED" in l or "registered" in l)
                raise AssertionError(f"{joblog}\n{key} {model}: stored version {stored.get('_v')} differs from onnxruntime on "
                                     f"its final features; events {history}; published versions {pub}; "
                                     f"max diff {np.abs(v - expected[key][model]).max():.3g}")
            n_compared += 1
    return n_compared
