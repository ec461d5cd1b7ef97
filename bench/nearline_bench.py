"""Benchmark of the nearline job (run on demand, not a test):

  python bench/nearline_bench.py [--entities 20000] [--backlog 20000] [--rate 300] [--seconds 30]

1. Backlog throughput: N entity updates are standardized first, then the Beam job (`nearline run`, a
   subprocess) consumes the backlog from scratch; sustained entity updates/s = N / time to commit all.
   The BASELINE, measured in the same run on the same backlog, is the same stages (JoinStage, ScoreStage,
   PublishStage, CommitStage) in a plain Python loop over one kafka-python consumer: the ratio is what
   Beam's runner costs.
2. Steady state: updates streamed at --rate for --seconds through the standardizers and the job;
   latency from the last standardizer message of an update to its published embedding (p50/p99), peak
   RSS of the job and its growth.
3 registered model versions per entity type (the shipped pyramid towers under three versions).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nearline.config import Config, ServicesConfig  # noqa: E402
from nearline.io import kafka_io  # noqa: E402
from nearline.io.codec import Codec  # noqa: E402
from nearline.io.kafka_io import TopicPartition  # noqa: E402
from nearline.marketplace.generate import MarketplaceSpec, generate  # noqa: E402
from nearline.marketplace.stream import UpdateStreamer, load_marketplace  # noqa: E402
from nearline.ops.services import LocalServices  # noqa: E402

PROCS = ["title", "skills", "company", "geo"]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def make_registry(tmp: Path) -> Path:
    lines = []
    for side in ("member", "job"):
        src = ROOT / "models" / "packages" / f"{side}_pyramid" / "v1"
        for v in ("v1", "v2", "v3"):
            dst = tmp / "packages" / f"{side}_pyramid" / v
            shutil.copytree(src, dst)
            man = json.loads((dst / "manifest.json").read_text())
            man["version"] = v
            (dst / "manifest.json").write_text(json.dumps(man))
            lines.append(f"- {dst}")
    reg = tmp / "registry.yaml"
    reg.write_text("\n".join(lines) + "\n")
    return reg


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="nearline-bench-"))
        cfg = Config()
        cfg.services = ServicesConfig(broker=args.broker, kafka_port=0, redis_port=0)
        self.svc = LocalServices(cfg, self.tmp / "services")
        st = self.svc.up()
        cfg.kafka.bootstrap, cfg.redis.url = st.kafka_bootstrap, st.redis_url
        self.cfg = cfg
        self.data = self.tmp / "marketplace"
        generate(MarketplaceSpec(members=args.entities * 2 // 3, jobs=args.entities // 3, seed=7), self.data, progress=False)
        self.registry = make_registry(self.tmp)
        self.procs: dict[str, subprocess.Popen] = {}
        self.codec = Codec()

    def config_file(self, name: str, cfg: Config) -> Path:
        t = cfg.topics
        conf = {"topics": {"entity_updates": t.entity_updates, "standardized_prefix": t.standardized_prefix,
                           "embeddings": t.embeddings, "dead_letter": t.dead_letter},
                "kafka": {"bootstrap": cfg.kafka.bootstrap, "consumer_group": cfg.kafka.consumer_group},
                "redis": {"url": cfg.redis.url, "key_prefix": cfg.redis.key_prefix},
                "job": {"metrics_port": 0, "log_every_s": 5},
                "standardizers": {"taxonomy_dir": str(self.data)}, "models": {"registry": str(self.registry)}}
        p = self.tmp / f"{name}.yaml"
        p.write_text(yaml.safe_dump(conf))
        return p

    def spawn(self, name, conf: Path, args):
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "nearline.cli", "--config", str(conf), *args],
                                            stdout=open(self.tmp / f"{name}.log", "ab"), stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        return self.procs[name]

    def stop(self, name, sig=signal.SIGTERM):
        p = self.procs.pop(name)
        os.killpg(p.pid, sig)
        p.wait(timeout=60)

    def lag(self, group: str, topics: list[str]) -> int:
        return kafka_io.group_lag(self.cfg.kafka.bootstrap, group, topics, self.cfg.topics.partitions)

    def wait_zero_lag(self, group, topics, timeout=900, pid=None, rss=None) -> float:
        t0 = time.monotonic()
        while self.lag(group, topics):
            if pid and rss is not None:
                rss.append(rss_mb(pid))
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{group} still lagging after {timeout}s")
            time.sleep(0.25)
        return time.monotonic() - t0

    def produce(self, topic, n, rate=0.0, streamer=None):
        streamer = streamer or UpdateStreamer(load_marketplace(self.data), seed=3)
        prod = kafka_io.make_producer(self.cfg.kafka.bootstrap)
        t0 = time.monotonic()
        for i, ev in enumerate(streamer.take(n)):
            if rate:
                w = t0 + i / rate - time.monotonic()
                if w > 0:
                    time.sleep(w)
            prod.send(topic, key=ev.key.encode(), value=self.codec.encode("EntityUpdate", ev.record))
        prod.flush()
        prod.close()
        return streamer

    def latencies(self, cfg: Config, since_ms: int) -> np.ndarray:
        def read(topic):
            return [self.codec.decode(m.value)  # not tombstones
                    for m in kafka_io.read_topic(cfg.kafka.bootstrap, topic, cfg.topics.partitions, None)
                    if m.value is not None]
        last_std = {}
        for p in PROCS:
            for r in read(cfg.standardized_topic(p)):
                k = (r["entity_type"], r["entity_id"], r["version"])
                last_std[k] = max(last_std.get(k, 0), r["produced_at"])
        lat = [r["embeddings"][0]["produced_at"] - last_std[(r["entity_type"], r["entity_id"], r["version"])]
               for r in read(cfg.topics.embeddings)
               if r["embeddings"] and (r["entity_type"], r["entity_id"], r["version"]) in last_std
               and last_std[(r["entity_type"], r["entity_id"], r["version"])] >= since_ms]
        return np.asarray(lat, dtype=float)

    def baseline(self, cfg: Config, n_updates: int) -> float:
        """The same stages, no Beam: one consumer over every input partition, one batch per poll."""
        from nearline.inference.scoring import ModelSet, RegistryWatcher
        from nearline.io.store import RedisEmbeddingStore
        from nearline.registry.packages import Registry
        from nearline.stream.pipeline import CommitStage, JoinStage, KafkaRecord, PublishStage, RecordBatch, ScoreStage

        watcher = RegistryWatcher(Registry(self.registry), cfg.entity_types)
        models = ModelSet(watcher)
        join = JoinStage(cfg)
        state = join.new_state(watcher.required())
        score = ScoreStage(models)
        prod = kafka_io.make_producer(cfg.kafka.bootstrap)
        publish = PublishStage(cfg, RedisEmbeddingStore(cfg.redis.url, cfg.redis.key_prefix), prod)
        committer = kafka_io.make_consumer(cfg.kafka.bootstrap, cfg.kafka.consumer_group)
        commit = CommitStage(committer)
        import gc  # the same process settings as `nearline run` (beam_jobs/nearline_job.run), for a fair ratio

        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        c = kafka_io.make_consumer(cfg.kafka.bootstrap, cfg.kafka.consumer_group, max_poll_records=1000)
        c.assign([TopicPartition(t, p) for t in cfg.input_topics() for p in range(cfg.topics.partitions)])
        c.seek_to_beginning()
        t0 = time.monotonic()
        idle = 0
        while idle < 3:
            polled = c.poll(timeout_ms=200, max_records=1000)
            recs = [KafkaRecord(m.topic, m.partition, m.offset, m.key, m.value) for ms in polled.values() for m in ms]
            if not recs:
                idle += 1
                continue
            idle = 0
            commit.run(publish.run(score.run(join.run(state, 0, RecordBatch(recs, time.time()), watcher.required()))))
        elapsed = time.monotonic() - t0 - 3 * 0.2
        c.close()
        committer.close()
        prod.close()
        return n_updates / elapsed

    def run(self):
        a = self.args
        cfg = self.cfg
        kafka_io.ensure_topics(cfg.kafka.bootstrap, cfg.all_topics(), cfg.topics.partitions)
        std_conf = self.config_file("std", cfg)
        for p in PROCS:
            self.spawn(f"std-{p}", std_conf, ["standardize", "--processor", p])
        print(f"[1] backlog: producing {a.backlog} entity updates and standardizing them ...", flush=True)
        self.produce(cfg.topics.entity_updates, a.backlog)
        for p in PROCS:
            self.wait_zero_lag(cfg.standardizers.group(p), [cfg.topics.entity_updates])
        n_inputs = a.backlog * (1 + len(PROCS))

        # the Beam job over the backlog
        job_cfg = replace(cfg)
        job_conf = self.config_file("job", job_cfg)
        t_start = time.monotonic()
        job = self.spawn("job", job_conf, ["run"])
        rss = []
        # start-up (imports, pipeline construction, model loading) is reported apart from throughput:
        # the clock starts when the first partition group begins reading
        while "partition group 0: reading" not in (self.tmp / "job.log").read_text(errors="replace"):
            if job.poll() is not None:
                raise RuntimeError((self.tmp / "job.log").read_text()[-2000:])
            time.sleep(0.05)
        startup_s = time.monotonic() - t_start
        job_s = self.wait_zero_lag(cfg.kafka.consumer_group, cfg.input_topics(), pid=job.pid, rss=rss)
        beam_rate = a.backlog / job_s
        print(f"    Beam job: start-up {startup_s:.1f}s, then {a.backlog} updates ({n_inputs} input messages) in "
              f"{job_s:.1f}s = {beam_rate:.0f} updates/s", flush=True)

        # baseline: same stages, no Beam, same backlog, its own group / Redis prefix / output topics
        base_cfg = Config()
        base_cfg.kafka.bootstrap, base_cfg.redis.url = cfg.kafka.bootstrap, cfg.redis.url
        base_cfg.kafka.consumer_group = "bench-baseline"
        base_cfg.redis.key_prefix = "bench-baseline"
        base_cfg.topics = replace(cfg.topics, embeddings="bench-baseline-embeddings", dead_letter="bench-baseline-dl")
        kafka_io.ensure_topics(cfg.kafka.bootstrap, base_cfg.all_topics(), cfg.topics.partitions)
        base_rate = self.baseline(base_cfg, a.backlog)
        print(f"    baseline (same stages, plain loop, no Beam): {base_rate:.0f} updates/s", flush=True)

        # steady state
        print(f"[2] steady state: {a.rate:g} updates/s for {a.seconds:g}s ...", flush=True)
        since = int(time.time() * 1000)
        rss_steady = []
        stop = threading.Event()

        def sample():
            while not stop.wait(0.5):
                rss_steady.append((time.monotonic(), rss_mb(job.pid)))

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        self.produce(cfg.topics.entity_updates, int(a.rate * a.seconds), rate=a.rate,
                     streamer=UpdateStreamer(load_marketplace(self.data), seed=99))
        self.wait_zero_lag(cfg.kafka.consumer_group, cfg.input_topics())
        stop.set()
        th.join()
        lat = self.latencies(cfg, since)
        t = np.array([x[0] for x in rss_steady])
        r = np.array([x[1] for x in rss_steady])
        slope = float(np.polyfit(t - t[0], r, 1)[0]) if len(t) > 3 else float("nan")
        res = {
            "broker": a.broker, "models_per_entity_type": 3, "backlog_updates": a.backlog,
            "beam_startup_s": round(startup_s, 1), "beam_updates_per_s": round(beam_rate), "baseline_updates_per_s": round(base_rate),
            "beam_to_baseline_ratio": round(beam_rate / base_rate, 3),
            "steady_rate": a.rate, "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
            "latency_ms_p99": round(float(np.percentile(lat, 99)), 1) if len(lat) else None, "latency_samples": int(len(lat)),
            "job_peak_rss_mb": round(max(rss + [x for x in r]), 1), "job_rss_growth_mb_per_min_steady": round(slope * 60, 2),
        }
        print(json.dumps(res, indent=2))
        return res

    def close(self):
        for name in list(self.procs):
            try:
                self.stop(name)
            except Exception:
                pass
        self.svc.down()
        shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entities", type=int, default=20000)
    ap.add_argument("--backlog", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--broker", choices=["kafka", "noida"], default="kafka")
    ap.add_argument("--out", help="also write the JSON result here")
    args = ap.parse_args()
    b = Bench(args)
    try:
        res = b.run()
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2))
    finally:
        b.close()


if __name__ == "__main__":
    main()
