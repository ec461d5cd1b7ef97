"""Cross-DC staleness and the CPU cost of MirrorMaker 2 (run on demand, not a test).

  python bench/multidc_bench.py [--rate 100] [--seconds 40] [--full]

Two local DCs (`nearline services up --dcs 2` code: two Apache Kafka clusters, two Redis, MirrorMaker 2),
a standardizer and a nearline job per DC. Updates are produced into DC1 at a steady rate; for a sample
of them the bench polls both DCs' Redis and records:
  local   produce in DC1 -> embedding readable in DC1 (the BASELINE of the same run)
  cross   produce in DC1 -> embedding readable in DC2 (MirrorMaker 2 + DC2's standardizer + job)
p50/p99 of both, their ratio, and the CPU MirrorMaker 2 used during the steady window (% of one core,
and microseconds per mirrored update). Default towers read only the title standardizer's features (one
standardizer per DC keeps the 2 cores for what is measured); --full uses the shipped towers and all
four standardizers per DC. Output: stdout and docs/bench-multidc.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nearline.config import Config  # noqa: E402
from nearline.io import kafka_io  # noqa: E402
from nearline.io.codec import Codec  # noqa: E402
from nearline.io.store import RedisEmbeddingStore  # noqa: E402
from nearline.marketplace.generate import MarketplaceSpec, generate  # noqa: E402
from nearline.marketplace.stream import UpdateStreamer, load_marketplace  # noqa: E402
from nearline.multidc.clusters import MultiDCServices  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def pct(v: list[float], q: float) -> float:
    v = sorted(v)
    return v[min(len(v) - 1, int(q * (len(v) - 1)))] if v else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench-multidc.json"))
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="multidc-bench-"))
    cfg = Config()
    m = MultiDCServices(cfg, 2, tmp / "svc")
    t0 = time.monotonic()
    st = m.up()
    up_s = time.monotonic() - t0
    ep = st["endpoints"]
    data = tmp / "marketplace"
    generate(MarketplaceSpec(members=2000, jobs=1000, seed=3), data, progress=False)
    if a.full:
        registry, procs_needed = ROOT / "models" / "registry.yaml", cfg.standardizers.processors
    else:
        from tests.helpers import FEATURES, make_package

        title = {k: v for k, v in FEATURES.items() if v[0] == "title"}
        lines = [make_package(tmp / "pk", "member_tt", "v1", "member", seed=1, features=title),
                 make_package(tmp / "pk", "job_tt", "v1", "job", seed=2, features=title)]
        registry = tmp / "registry.yaml"
        registry.write_text("".join(f"- {p}\n" for p in lines))
        procs_needed = ["title"]
    base = {"models": {"registry": str(registry)}, "standardizers": {"taxonomy_dir": str(data)},
            "job": {"metrics_port": 0, "poll_timeout_ms": 50}}
    confs = m.write_dc_configs(ep, tmp / "configs", base)
    procs = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name, conf in confs.items():
        cmd = [sys.executable, "-m", "nearline.cli", "--config", str(conf)]
        for p in procs_needed:
            procs.append(subprocess.Popen(cmd + ["standardize", "--processor", p], env=env,
                                          stdout=open(tmp / f"{name}-{p}.log", "ab"), stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen(cmd + ["run"], env=env, stdout=open(tmp / f"{name}-job.log", "ab"),
                                      stderr=subprocess.STDOUT))
    stores = {n: RedisEmbeddingStore(ep[n]["redis_url"], cfg.redis.key_prefix) for n in m.names}
    lat = {"local": [], "cross": []}
    try:
        deadline = time.monotonic() + 180
        while not all("partition group" in (tmp / f"{n}-job.log").read_text(errors="replace") for n in m.names):
            if time.monotonic() > deadline:
                raise SystemExit("the jobs did not start within 180 s")
            time.sleep(0.5)
        streamer = UpdateStreamer(load_marketplace(data), seed=11)
        streamer.mix.delete = 0.0
        producer = kafka_io.make_producer(ep["dc1"]["kafka_bootstrap"])
        codec = Codec()

        def sample(key, version, t_sent):
            etype, eid = key.split(":", 1)
            todo = {"local": "dc1", "cross": "dc2"}
            while todo and time.monotonic() - t_sent < 60:
                for kind, dc in list(todo.items()):
                    try:
                        v = stores[dc].r.hget(stores[dc].key(etype, eid), "_v")
                    except Exception:  # the bench is tearing down
                        return
                    if v is not None and int(v) >= version:
                        lat[kind].append(time.monotonic() - t_sent)
                        del todo[kind]
                time.sleep(0.005)

        # warm-up: 5 s of traffic not measured
        n, start = 0, time.monotonic()
        mm_cpu0 = t_cpu0 = None
        while time.monotonic() - start < a.seconds + 5:
            ev = streamer.next()
            t_sent = time.monotonic()
            producer.send(cfg.topics.entity_updates, key=ev.key.encode(), value=codec.encode("EntityUpdate", ev.record))
            n += 1
            if mm_cpu0 is None and t_sent - start >= 5:
                mm_cpu0, t_cpu0, n0 = cpu_seconds(st["mirrormaker_pid"]), time.monotonic(), n
            if mm_cpu0 is not None and n % 10 == 0 and ev.record["op"] == "UPSERT":
                producer.flush()
                threading.Thread(target=sample, args=(ev.key, ev.record["version"], t_sent), daemon=True).start()
            wait = start + n / a.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        producer.flush()
        mm_cpu = cpu_seconds(st["mirrormaker_pid"]) - mm_cpu0
        window = time.monotonic() - t_cpu0
        mirrored = n - n0
        time.sleep(5)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        m.down()
    res = {"rate": a.rate, "seconds": a.seconds, "full": a.full, "services_up_s": round(up_s, 1),
           "samples": {k: len(v) for k, v in lat.items()}}
    for k, v in lat.items():
        res[f"{k}_p50_s"], res[f"{k}_p99_s"] = round(statistics.median(v), 3) if v else None, round(pct(v, 0.99), 3)
    res["ratio_cross_over_local_p50"] = round(res["cross_p50_s"] / res["local_p50_s"], 2) if lat["local"] and lat["cross"] else None
    res["mirrormaker_cpu_pct_of_core"] = round(100 * mm_cpu / window, 1)
    res["mirrormaker_cpu_us_per_update"] = round(1e6 * mm_cpu / max(1, mirrored), 1)
    print(yaml.safe_dump(res, sort_keys=False))
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
