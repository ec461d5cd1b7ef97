"""`nearline demo`: the whole system on local defaults, with a live summary. Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

from nearline.config import Config


def _metrics(port: int) -> dict[str, float]:
    """Sample name -> value summed over its labels, plus the p50 publish latency in ms."""
    from nearline.core.metrics import histogram_quantile, scrape

    samples = scrape(f"http://127.0.0.1:{port}/metrics")
    out = {name: sum(v for _, v in rows) for name, rows in samples.items()}
    if samples:
        out["p50_ms"] = 1000 * histogram_quantile(0.5, samples.get("nearline_publish_latency_seconds_bucket", []))
    return out


def watch(procs: dict[str, subprocess.Popen], duration: float | None, logs_hint: str,
          report: Callable[[float], None]) -> int:
    """The demos' foreground loop: ``report(elapsed_s)`` every 2 s until Ctrl-C, ``duration`` or the
    exit of one of ``procs`` (then 1, naming it and where its log is)."""
    interrupted: list = []
    old = signal.signal(signal.SIGINT, lambda *a: interrupted.append(1))
    try:
        t0 = time.monotonic()
        while not interrupted and (duration is None or time.monotonic() - t0 < duration):
            time.sleep(2.0)
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead:
                print(f"process(es) exited: {dead}; see {logs_hint}", file=sys.stderr)
                return 1
            report(time.monotonic() - t0)
        return 0
    finally:
        signal.signal(signal.SIGINT, old)


def stop_processes(procs: dict[str, subprocess.Popen], grace_s: float = 30.0) -> None:
    """SIGTERM every process at once (they stop in parallel), then wait; SIGKILL what outlives grace_s."""
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_demo(cfg: Config, config_path: str | None, rate: float, duration: float | None, members: int, jobs: int) -> int:
    from nearline.io import kafka_io
    from nearline.io.codec import codec_for
    from nearline.io.store import RedisEmbeddingStore
    from nearline.marketplace.generate import generate, preset
    from nearline.marketplace.stream import UpdateStreamer, load_marketplace
    from nearline.ops.procs import port_open
    from nearline.ops.services import LocalServices
    from nearline.registry.packages import Registry

    if cfg.job.metrics_port and port_open("127.0.0.1", cfg.job.metrics_port):
        print(f"port {cfg.job.metrics_port} (job.metrics_port) is in use, probably by another `nearline run`; "
              "stop it or set job.metrics_port in the config", file=sys.stderr)
        return 2
    svc = LocalServices(cfg)
    was_running = svc.status()
    st = svc.up()
    started_services = not (was_running["kafka_up"] and was_running["redis_up"])
    print(f"services: kafka {st.kafka_bootstrap}, redis {st.redis_url}")

    data = cfg.path(cfg.standardizers.taxonomy_dir)
    if not (data / "summary.json").exists():
        print(f"generating the marketplace into {data} ...")
        generate(preset("demo", members=members, jobs=jobs), data)
    good, bad = Registry(cfg.path(cfg.models.registry)).load(cfg.entity_types)
    for entry, problems in bad.items():
        print(f"model {entry} refused: {'; '.join(problems)}")
    if not good:
        print("no valid model is registered: train one with\n  nearline train --config models/configs/marketplace.yaml "
              "--version v1 --packages-root models/packages --register", file=sys.stderr)
        return 2
    print("models: " + ", ".join(p.manifest.key for p in good))

    logs = cfg.path(cfg.services.state_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NEARLINE_KAFKA_BOOTSTRAP": st.kafka_bootstrap,
           "NEARLINE_REDIS_URL": st.redis_url}
    base = [sys.executable, "-m", "nearline.cli"] + (["--config", config_path] if config_path else [])
    procs: dict[str, subprocess.Popen] = {}
    for p in cfg.standardizers.processors:
        procs[f"standardize-{p}"] = subprocess.Popen(base + ["standardize", "--processor", p], env=env,
                                                     stdout=open(logs / f"standardize-{p}.log", "ab"), stderr=subprocess.STDOUT)
    procs["job"] = subprocess.Popen(base + ["run"], env=env, stdout=open(logs / "job.log", "ab"), stderr=subprocess.STDOUT)
    print(f"started {len(procs)} processes (logs in {logs}); streaming {rate:g} updates/s. Ctrl-C stops everything.")

    stop = threading.Event()
    last_key = {"key": None}
    counts = {"sent": 0}

    def stream():
        streamer = UpdateStreamer(load_marketplace(data), seed=int(time.time()) % 100_000)
        producer = kafka_io.make_producer(st.kafka_bootstrap, cfg.kafka.producer_linger_ms)
        codec, start, n = codec_for(cfg), time.monotonic(), 0
        while not stop.is_set():
            try:
                ev = streamer.next()
            except StopIteration:
                streamer = UpdateStreamer(load_marketplace(data), seed=n)
                continue
            producer.send(cfg.topics.entity_updates, key=ev.key.encode(), value=codec.encode("EntityUpdate", ev.record))
            if ev.record["op"] == "UPSERT":
                last_key["key"] = ev.key
            n += 1
            counts["sent"] = n
            wait = start + n / rate - time.monotonic()
            if wait > 0:
                stop.wait(wait)
        producer.flush()
        producer.close()

    store = RedisEmbeddingStore(st.redis_url, cfg.redis.key_prefix)
    prev, prev_t = {}, time.monotonic()

    def report(elapsed: float) -> None:
        nonlocal prev, prev_t
        m = _metrics(cfg.job.metrics_port)
        now = time.monotonic()
        dt = now - prev_t

        def rate_of(k):
            return (m.get(k, 0) - prev.get(k, 0)) / dt if m else 0.0

        computed = m.get("nearline_embeddings_computed_total", 0)
        dedup = m.get("nearline_embeddings_deduped_total", 0)
        lag = m.get("nearline_partition_lag", 0)
        sample = ""
        key = last_key["key"]  # read once: the streamer thread keeps changing it
        if key:
            etype, eid = key.split(":", 1)
            got = {k: v for k, v in store.get(etype, eid).items() if not k.startswith("_")}
            if got:
                import numpy as np

                k0 = sorted(got)[0]
                vec = np.frombuffer(got[k0], "<f4")
                sample = f" | {key} {k0} [{', '.join(f'{x:+.3f}' for x in vec[:4])}, ...]"
        p50 = m.get("p50_ms", float("nan"))
        print(f"[{elapsed:6.0f}s] sent {counts['sent']} | read {rate_of('nearline_events_read_total'):6.0f}/s | "
              f"joins {rate_of('nearline_joins_completed_total'):5.0f}/s | written {rate_of('nearline_embeddings_written_total'):5.0f}/s | "
              f"dedupe {dedup / computed if computed else 0:4.0%} | lag {lag:.0f} | p50 {p50:.0f} ms | "
              f"dead letters {m.get('nearline_dead_letters_total', 0):.0f}{sample}", flush=True)
        prev, prev_t = m, now

    streamer_t = threading.Thread(target=stream, daemon=True)
    try:
        streamer_t.start()
        rc = watch(procs, duration, str(logs), report)
    finally:
        print("stopping ...")
        stop.set()
        streamer_t.join(timeout=10)
        stop_processes(procs)
        if started_services:
            svc.down()
            print("services stopped")
        print("stopped cleanly")
    return rc
