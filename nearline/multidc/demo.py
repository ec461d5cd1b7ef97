"""`nearline demo --dcs N`: N local data centers side by side, MirrorMaker 2 between them.

Every DC gets its own Apache Kafka, Redis, four standardizers and nearline job; updates are produced
into each entity's home DC (a hash of its key) at the given rate, and every 2 s one line shows, per DC,
how fresh its Redis is: of the sampled updates of the last 30 s (produced in any DC), how many it serves
and the median time from produce to readable there.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import zlib
from collections import deque

from nearline.config import Config
from nearline.ops.demo import stop_processes, watch


def run_multidc_demo(cfg: Config, n_dcs: int, rate: float, duration: float | None, members: int, jobs: int) -> int:
    import os

    from nearline.io import kafka_io
    from nearline.io.codec import codec_for
    from nearline.io.store import RedisEmbeddingStore
    from nearline.marketplace.generate import generate, preset
    from nearline.marketplace.stream import UpdateStreamer, load_marketplace
    from nearline.multidc.clusters import MultiDCServices

    m = MultiDCServices(cfg, n_dcs)
    print(f"starting {n_dcs} data centers (Kafka + Redis each) and MirrorMaker 2 ...", flush=True)
    st = m.up()
    ep = st["endpoints"]
    data = cfg.path(cfg.standardizers.taxonomy_dir).resolve()
    if not (data / "summary.json").exists():
        print(f"generating the marketplace into {data} ...")
        generate(preset("demo", members=members, jobs=jobs), data)
    base = {"models": {"registry": str(cfg.path(cfg.models.registry).resolve())},
            "standardizers": {"taxonomy_dir": str(data)}, "job": {"metrics_port": cfg.job.metrics_port}}
    confs = m.write_dc_configs(ep, m.state_dir / "configs", base)
    procs: dict[str, subprocess.Popen] = {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name, conf in confs.items():
        logs = m.state_dir / name / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "nearline.cli", "--config", str(conf)]
        for p in cfg.standardizers.processors:
            procs[f"{name}/standardize-{p}"] = subprocess.Popen(cmd + ["standardize", "--processor", p], env=env,
                                                                stdout=open(logs / f"standardize-{p}.log", "ab"),
                                                                stderr=subprocess.STDOUT)
        procs[f"{name}/job"] = subprocess.Popen(cmd + ["run"], env=env, stdout=open(logs / "job.log", "ab"),
                                                stderr=subprocess.STDOUT)
    print(f"started {len(procs)} processes (logs in {m.state_dir}/<dc>/logs); streaming {rate:g} updates/s into "
          "each entity's home DC. Ctrl-C stops everything.", flush=True)

    stop = threading.Event()
    samples: deque = deque(maxlen=400)  # (key, version, produced_at monotonic, home dc)
    sent = {name: 0 for name in m.names}

    def stream():
        streamer = UpdateStreamer(load_marketplace(data), seed=int(time.time()) % 100_000)
        producers = {name: kafka_io.make_producer(ep[name]["kafka_bootstrap"], cfg.kafka.producer_linger_ms) for name in m.names}
        codec, start, i = codec_for(cfg), time.monotonic(), 0
        while not stop.is_set():
            try:
                ev = streamer.next()
            except StopIteration:
                streamer = UpdateStreamer(load_marketplace(data), seed=i)
                continue
            home = m.names[zlib.crc32(ev.key.encode()) % len(m.names)]
            producers[home].send(cfg.topics.entity_updates, key=ev.key.encode(), value=codec.encode("EntityUpdate", ev.record))
            sent[home] += 1
            if i % 20 == 0 and ev.record["op"] == "UPSERT":
                samples.append((ev.key, ev.record["version"], time.monotonic(), home))
            i += 1
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                stop.wait(wait)
        for p in producers.values():
            p.flush()
            p.close()

    stores = {name: RedisEmbeddingStore(ep[name]["redis_url"], cfg.redis.key_prefix) for name in m.names}

    seen: dict[str, dict] = {name: {} for name in m.names}  # dc -> sample index -> seconds until readable

    def freshness(name: str) -> tuple[float, int, int]:
        """Over the samples of the last 30 s: (p50 seconds from produce to readable in this DC, samples
        readable, samples taken). A sample superseded by a delete before it was ever stored never shows
        up, hence a window rather than the oldest unserved sample."""
        now = time.monotonic()
        snap = [(i, smp) for i, smp in enumerate(list(samples)) if now - smp[2] <= 30.0]
        if not snap:
            return float("nan"), 0, 0
        todo = [(i, smp) for i, smp in snap if (smp[0], smp[1]) not in seen[name]]
        try:
            pipe = stores[name].r.pipeline(transaction=False)
            for _, (key, _, _, _) in todo:
                pipe.hget(stores[name].key(*key.split(":", 1)), "_v")
            got = pipe.execute() if todo else []
        except Exception:
            return float("nan"), 0, len(snap)
        for (_, (key, version, t, _)), v in zip(todo, got):
            if v is not None and int(v) >= version:
                seen[name][(key, version)] = now - t
        lat = sorted(seen[name][(k, v)] for _, (k, v, _, _) in snap if (k, v) in seen[name])
        return (lat[len(lat) // 2] if lat else float("nan")), len(lat), len(snap)

    def report(elapsed: float) -> None:
        cols = []
        for name in m.names:
            p50, ok, n = freshness(name)
            job_log = m.state_dir / name / "logs" / "job.log"
            ready = job_log.exists() and "partition group" in job_log.read_text(errors="replace")
            cols.append(f"{name}: sent {sent[name]:5d}, serves {ok:3d}/{n:3d} updates of the last 30 s, "
                        f"p50 {p50:5.2f}s after produce{'' if ready else ' (job starting)'}")
        print(f"[{elapsed:6.0f}s] " + " | ".join(cols), flush=True)

    t = threading.Thread(target=stream, daemon=True)
    try:
        t.start()
        rc = watch(procs, duration, f"{m.state_dir}/<dc>/logs", report)
    finally:
        print("stopping ...")
        stop.set()
        t.join(timeout=10)
        stop_processes(procs)
        m.down()
        print("stopped cleanly")
    return rc
