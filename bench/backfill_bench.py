"""Benchmark of `nearline backfill` (run on demand, not a test):

  python bench/backfill_bench.py [--entities 20000] [--batch-size 1024] [--scale 0]

1. A private Apache Kafka + Redis; a feature snapshot of N entities (2/3 members, 1/3 jobs; random
   taxonomy ids within each manifest's vocabulary, weighted skills) written to the compacted topic.
2. For 1 and 3 model versions per entity type (the shipped pyramid towers registered under v1..v3): Redis
   wiped, then `nearline backfill --models ...` (the CLI, a subprocess, Beam FnApiRunner) writes every
   embedding; entities/s from its own summary (scan + score + Kafka + Redis, process start excluded) and
   the process's wall time and peak RSS.
3. Baselines, measured in the same run on the same rows and the same batches (the same partition
   chunks of --batch-size, split by entity type, as the backfill's stage makes them): onnxruntime alone
   (session.run on pre-built tensors, same thread count), and onnxruntime + build_inputs.
   Ratio = backfill entities/s / ceiling entities/s (target >= 0.5). Also the same stages (scan +
   BackfillStage) in a plain Python loop without Beam: what the runner costs. And the I/O floor: the
   snapshot scan, the Redis writes and the Kafka sends of the same entities with no work between
   (io_floor), and the CPU the backfill, Redis and the broker each spent per entity during the run: on
   one machine the servers share the backfill's cores, which onnxruntime alone does not pay for.
4. --scale N: an N-entity snapshot (streamed in chunks: wall time, and this process's peak RSS), then
   `nearline backfill --all` (3 versions per type) on it with its progress bar: wall time, peak RSS.

Figures are noisy on a shared 2-core machine (other processes compete for the cores); say so when quoting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from nearline_bench import make_registry  # noqa: E402

from nearline.config import Config, ServicesConfig  # noqa: E402
from nearline.inference.scoring import run_rows  # noqa: E402
from nearline.io import kafka_io  # noqa: E402
from nearline.io.codec import Codec  # noqa: E402
from nearline.io.snapshot import PARTIAL_HEADER, SCHEMA, VERSION_HEADER, ensure_snapshot_topic  # noqa: E402
from nearline.offline.scan import RangeReader, plan_ranges  # noqa: E402
from nearline.offline.stage import batches_with_progress  # noqa: E402
from nearline.ops.services import LocalServices  # noqa: E402
from nearline.registry.packages import Registry  # noqa: E402


def random_features(rng, manifest) -> dict:
    feats = {}
    for f in manifest.inputs:
        n = int(rng.integers(1, f.max_len + 1))
        pool = f.kept_ids if f.kept_ids else None
        hi = f.vocab_size - 2
        ids = [int(pool[i]) for i in rng.integers(0, len(pool), n)] if pool else [int(x) for x in rng.integers(0, hi, n)]
        w = [float(np.float32(x)) for x in rng.uniform(0.2, 1.0, n)] if f.weighted else None
        feats[f.name] = {"ids": ids, "weights": w}
    return feats


def populate(cfg: Config, registry: Path, n: int, seed: int = 1, progress: bool = False) -> dict:
    """Write an n-entity snapshot, streamed in chunks (memory stays flat at any n); its wall time and the
    peak RSS of this process so far."""
    import resource

    from tqdm import tqdm

    from nearline.offline.producer import BatchProducer

    good, _ = Registry(registry).load()
    man = {p.manifest.entity_type: p.manifest for p in good if p.manifest.version == "v1"}
    rng = np.random.default_rng(seed)
    codec = Codec()
    prod = BatchProducer(cfg.kafka.bootstrap)
    t0 = time.monotonic()
    chunk = []
    with tqdm(total=n, desc="snapshot", unit="entity", disable=not progress, mininterval=2, smoothing=0.1) as bar:
        for i in range(n):
            etype, eid = ("member", f"m{i}") if i % 3 else ("job", f"j{i}")
            rec = {"entity_type": etype, "entity_id": eid, "version": 1000 + i, "partial": False, "missing": [],
                   "features": random_features(rng, man[etype]), "written_at": 0}
            chunk.append((cfg.topics.feature_snapshot, f"{etype}:{eid}".encode(), codec.encode(SCHEMA, rec),
                          [(VERSION_HEADER, str(rec["version"]).encode()), (PARTIAL_HEADER, b"0")]))  # the job's headers
            if len(chunk) >= 20000:
                prod.send_batch(chunk)
                bar.update(len(chunk))
                chunk = []
        prod.send_batch(chunk)
        bar.update(len(chunk))
    prod.close()
    dt = time.monotonic() - t0
    print(f"snapshot: {n} entities written in {dt:.1f}s", flush=True)
    return {"entities": n, "wall_s": dt, "peak_rss_mb_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def ceiling(cfg: Config, registry: Path, keys: list[str], batch_size: int, ort_threads: int) -> dict:
    """onnxruntime alone on the backfill's own batches (pre-built tensors), and with the tensor build."""
    import onnxruntime as ort

    from nearline.offline.snapshot_columns import decode_snapshots
    from nearline.registry.features import FeatureEncoder, build_feed

    good, _ = Registry(registry).load()
    pk = {p.manifest.key: p for p in good if p.manifest.key in keys}
    sessions = {}
    for k, p in pk.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = ort_threads, 1, 3
        sessions[k] = ort.InferenceSession(str(p.onnx_path), so, providers=["CPUExecutionProvider"])
    encoders = {k: {f.name: FeatureEncoder(f) for f in p.manifest.inputs} for k, p in pk.items()}
    c = kafka_io.make_consumer(cfg.kafka.bootstrap, None)
    reader = RangeReader(cfg.kafka.bootstrap)
    codec = Codec()
    batches = []  # (model key, feed)
    n_entities = 0
    t_build = 0.0
    for rng in plan_ranges(c, cfg.topics.feature_snapshot, sorted(c.partitions_for_topic(cfg.topics.feature_snapshot))):
        chunk = reader.scan(rng, codec)
        for batch, _ in batches_with_progress(chunk, batch_size, rng.size):
            n_entities += len(batch)
            for etype in ("member", "job"):
                idx = [i for i, k in enumerate(batch.keys) if k.startswith(etype + ":")]
                if not idx:
                    continue
                cols = decode_snapshots([batch.values[i] for i in idx], codec).features
                feeds = {}  # as ModelSet.score_columns: versions with the same inputs share one build
                for k, p in pk.items():
                    if p.manifest.entity_type == etype:
                        t = time.perf_counter()
                        sig = repr(p.manifest.inputs)
                        if sig not in feeds:
                            feeds[sig] = build_feed(p.manifest, cols, encoders[k])[0]
                        t_build += time.perf_counter() - t
                        batches.append((k, feeds[sig]))
    c.close()
    reader.close()
    t = time.perf_counter()
    for k, feed in batches:
        run_rows(sessions[k], pk[k].manifest.output_name, feed)
    t_ort = time.perf_counter() - t
    return {"entities": n_entities, "ort_calls": len(batches), "ort_s": t_ort, "build_s": t_build,
            "ort_entities_per_s": n_entities / t_ort, "ort_build_entities_per_s": n_entities / (t_ort + t_build)}


def io_floor(cfg: Config, registry: Path, keys: list[str], batch_size: int) -> dict:
    """What moving the backfill's bytes costs on this machine, with no work between: the snapshot scan
    (RangeReader.scan), then for the same entities and batches the Redis writes (write_state_many of
    vectors of the towers' widths, into a wiped Redis, as a rebuild) and the Kafka sends of full-state
    messages of those sizes (BatchProducer). Every backfill does at least this, so backfill/ORT-alone
    cannot exceed io_floor/ORT-alone here, whatever the Python costs."""
    from nearline.io.embedding_messages import state_encoder
    from nearline.io.store import RedisEmbeddingStore
    from nearline.offline.producer import BatchProducer

    good, _ = Registry(registry).load()
    dims = {p.manifest.key: p.manifest.output_dim for p in good if p.manifest.key in keys}
    by_type: dict[str, list[str]] = {}
    for p in sorted(good, key=lambda p: p.manifest.key):
        if p.manifest.key in dims:
            by_type.setdefault(p.manifest.entity_type, []).append(p.manifest.key)
    c = kafka_io.make_consumer(cfg.kafka.bootstrap, None)
    reader = RangeReader(cfg.kafka.bootstrap)
    t = time.perf_counter()
    chunks = [reader.scan(rng) for rng in plan_ranges(c, cfg.topics.feature_snapshot,
                                                      sorted(c.partitions_for_topic(cfg.topics.feature_snapshot)))]
    t_scan = time.perf_counter() - t
    c.close()
    reader.close()
    rng = np.random.default_rng(3)
    codec = Codec()
    enc = state_encoder(codec)
    writes, sends = [], []  # per batch, built before the clock starts
    for chunk in chunks:
        for batch, _ in batches_with_progress(chunk, batch_size, 0):
            ups, msgs = [], []
            for key, v in zip(batch.keys, batch.versions):
                etype, _, eid = key.partition(":")
                vecs = {k: rng.random(dims[k], dtype=np.float32).tobytes() for k in by_type.get(etype, [])}
                ups.append((etype, eid, v, vecs, False))
                msgs.append((cfg.topics.embeddings, key.encode(), enc.encode(etype, eid, v, vecs, vecs, 0), [("version", str(v).encode())]))
            writes.append(ups)
            sends.append(msgs)
    store = RedisEmbeddingStore(cfg.redis.url, cfg.redis.key_prefix)
    t = time.perf_counter()
    for ups in writes:
        store.write_state_many(ups, f"{cfg.redis.key_prefix}:bench:outbox")
    t_redis = time.perf_counter() - t
    prod = BatchProducer(cfg.kafka.bootstrap)
    t = time.perf_counter()
    for msgs in sends:
        prod.send_batch(msgs)
    t_kafka = time.perf_counter() - t
    prod.close()
    n = sum(len(ch) for ch in chunks)
    total = t_scan + t_redis + t_kafka
    return {"entities": n, "scan_s": t_scan, "redis_write_s": t_redis, "kafka_send_s": t_kafka, "total_s": total,
            "entities_per_s": n / total}


class StageTimer:
    """Wall time per stage of the plain loop: each named function is wrapped (in this bench process only)
    with a perf_counter; nested stages are subtracted from their parents, so the shares add up."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._stack: list[float] = []

    def wrap(self, name: str, fn):
        def timed(*a, **kw):
            self._stack.append(0.0)
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                dt = time.perf_counter() - t
                inner = self._stack.pop()
                self.seconds[name] = self.seconds.get(name, 0.0) + dt - inner
                if self._stack:
                    self._stack[-1] += dt
        return timed


def plain_loop(cfg: Config, registry: Path, keys: list[str], batch_size: int, split: bool = False) -> dict:
    """The same stages (nearline.offline.stage.run_range: scan, BackfillStage) in this process without Beam:
    what the runner costs. ``split``: also the wall time per stage (StageTimer), with the commit of a
    batch run inline (not overlapped with the next batch's scoring), so that the shares add up."""
    import nearline.inference.scoring as scoring
    import nearline.offline.snapshot_columns as snapshot_columns
    import nearline.offline.stage as backfill_stage
    from nearline.inference.scoring import ModelSet, RegistryWatcher
    from nearline.io.store import RedisEmbeddingStore
    from nearline.offline.producer import BatchProducer
    from nearline.offline.progress import RunProgress
    from nearline.offline.stage import BackfillStage, run_range

    cfg.models.registry = str(registry)
    store = RedisEmbeddingStore(cfg.redis.url, cfg.redis.key_prefix)
    prod = BatchProducer(cfg.kafka.bootstrap)  # the backfill's own producer
    stage = BackfillStage(cfg, store, prod, ModelSet(RegistryWatcher(Registry(registry), cfg.entity_types, 0),
                                                     cfg.job.ort_threads), set(keys))
    c = kafka_io.make_consumer(cfg.kafka.bootstrap, None)
    reader = RangeReader(cfg.kafka.bootstrap)
    progress = RunProgress(store.r, f"{cfg.redis.key_prefix}:bench:{time.monotonic_ns()}")
    codec = Codec()
    timer, saved = StageTimer(), []
    if split:
        reader.scan = timer.wrap("kafka_scan", reader.scan)
        stage.prepare = timer.wrap("other_python", stage.prepare)
        stage.commit = timer.wrap("other_python", stage.commit)
        stage.encoder.encode = timer.wrap("avro_encode", stage.encoder.encode)
        store.read_many = timer.wrap("redis_read", store.read_many)
        store.write_state_many = timer.wrap("redis_write", store.write_state_many)
        prod.send_batch = timer.wrap("kafka_produce", prod.send_batch)
        for mod, name, label in ((snapshot_columns, "decode_snapshots", "avro_decode"), (scoring, "build_feed", "build_inputs"),
                                 (scoring, "run_rows", "onnxruntime"), (backfill_stage, "decide", "dedupe")):
            saved.append((mod, name, getattr(mod, name)))
            setattr(mod, name, timer.wrap(label, getattr(mod, name)))
    t0 = time.monotonic()
    try:
        for rng in plan_ranges(c, cfg.topics.feature_snapshot, sorted(c.partitions_for_topic(cfg.topics.feature_snapshot))):
            if split:  # inline, so that nested timings subtract correctly
                chunk = reader.scan(rng, codec)
                for batch, share in batches_with_progress(chunk, batch_size, rng.size):
                    counts = stage.run(batch)
                    counts.progress, counts.scanned = share, chunk.scanned
                    progress.add(counts)
            else:
                run_range(reader, stage, progress, rng, batch_size, codec)
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
    dt = time.monotonic() - t0
    total = progress.read()
    store.r.delete(progress.key)
    c.close()
    reader.close()
    prod.close()
    out = {"seconds": dt, "entities": total.entities, "written": total.written, "entities_per_s": total.entities / dt}
    if split:
        out["split_s"] = dict(sorted(timer.seconds.items(), key=lambda kv: -kv[1]))
        out["split_us_per_entity"] = {k: 1e6 * v / max(1, total.entities) for k, v in out["split_s"].items()}
    return out


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds a process has used (Linux /proc), 0 if unknown."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run_cli(conf: Path, models: list[str] | None, batch_size: int, log: Path, beam_args: list[str],
            progress: bool = False, servers: dict[str, int] | None = None) -> dict:
    """One `nearline backfill` process. ``servers`` (name -> pid): their CPU during the run is reported
    per entity beside the backfill's own, since on one machine they share its cores."""
    servers = servers or {}
    cpu0 = {n: cpu_s(p) for n, p in servers.items()}
    args = ["--all"] if models is None else ["--models", *models]
    cmd = [sys.executable, "-m", "nearline.cli", "--config", str(conf), "backfill", *args, "--batch-size", str(batch_size),
           *([] if progress else ["--no-progress"]), "--json", *(["--", *beam_args] if beam_args else [])]
    t0 = time.monotonic()
    with open(log, "wb") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    text = log.read_text(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"backfill failed:\n{text[-3000:]}")
    summary = json.loads([line for line in text.splitlines() if line.startswith("{")][-1])
    n = max(1, summary["entities"])
    cpu = {"backfill": ru.ru_utime + ru.ru_stime, **{name: cpu_s(pid) - cpu0[name] for name, pid in servers.items()}}
    return {**summary, "wall_s": wall, "peak_rss_mb": ru.ru_maxrss / 1024,
            "entities_per_s": summary["entities"] / summary["seconds"],
            "cpu_us_per_entity": {name: 1e6 * v / n for name, v in cpu.items()}}


def wipe(redis_url: str, prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=f"{prefix}:*", count=5000))
    for i in range(0, len(keys), 5000):
        r.delete(*keys[i:i + 5000])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entities", type=int, default=20000)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--scale", type=int, default=0, help="also a --all run on a snapshot of this many entities")
    ap.add_argument("--out", help="write the figures as JSON here")
    ap.add_argument("--two-workers", action="store_true",
                    help="also run each backfill with Beam's multi-process FnApiRunner on 2 workers (both cores)")
    ap.add_argument("beam_args", nargs="*", help="Beam options for the backfill after --, e.g. -- --direct_num_workers=2")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="nearline-backfill-bench-"))
    cfg = Config()
    cfg.services = ServicesConfig(broker="kafka", kafka_port=0, redis_port=0)
    svc = LocalServices(cfg, tmp / "services")
    results: dict = {"entities": args.entities, "batch_size": args.batch_size, "cpus": os.cpu_count(), "beam_args": args.beam_args,
                     "loadavg_start": os.getloadavg()[0]}
    try:
        st = svc.up()
        cfg.kafka.bootstrap, cfg.redis.url = st.kafka_bootstrap, st.redis_url
        servers = {"redis": st.redis_pid, "kafka": st.kafka_pid}
        registry = make_registry(tmp)
        conf = tmp / "nearline.yaml"
        conf.write_text(yaml.safe_dump({"kafka": {"bootstrap": cfg.kafka.bootstrap}, "redis": {"url": cfg.redis.url},
                                        "models": {"registry": str(registry)}}))
        kafka_io.ensure_topics(cfg.kafka.bootstrap, cfg.all_topics(), cfg.topics.partitions)
        ensure_snapshot_topic(cfg.kafka.bootstrap, cfg)
        populate(cfg, registry, args.entities)
        # warm-up, not measured: the first pass over a fresh broker and Redis ran ~30% slower in every
        # configuration (page cache, Redis allocations), which would favour whichever run came second
        plain_loop(cfg, registry, [f"{side}_pyramid@v1" for side in ("member", "job")], args.batch_size)
        wipe(cfg.redis.url, cfg.redis.key_prefix)
        for k in (1, 3):
            models = [f"{side}_pyramid@v{i}" for side in ("member", "job") for i in range(1, k + 1)]
            wipe(cfg.redis.url, cfg.redis.key_prefix)
            bf = run_cli(conf, models, args.batch_size, tmp / f"backfill-{k}.log", args.beam_args, servers=servers)
            wipe(cfg.redis.url, cfg.redis.key_prefix)
            if args.two_workers:
                bf2 = run_cli(conf, models, args.batch_size, tmp / f"backfill-{k}-2w.log",
                              [*args.beam_args, "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
                              servers=servers)
                wipe(cfg.redis.url, cfg.redis.key_prefix)
            loop = plain_loop(cfg, registry, models, args.batch_size)
            assert loop["written"] == bf["written"], (loop, bf)
            wipe(cfg.redis.url, cfg.redis.key_prefix)
            split = plain_loop(cfg, registry, models, args.batch_size, split=True)
            loop["split_s"], loop["split_us_per_entity"] = split["split_s"], split["split_us_per_entity"]
            print(f"{k} version(s)/type, plain loop, wall time per stage (us/entity): " +
                  ", ".join(f"{n} {v:.1f}" for n, v in split["split_us_per_entity"].items()), flush=True)
            ceil = ceiling(cfg, registry, models, args.batch_size, cfg.job.ort_threads)
            wipe(cfg.redis.url, cfg.redis.key_prefix)
            floor = io_floor(cfg, registry, models, args.batch_size)
            wipe(cfg.redis.url, cfg.redis.key_prefix)
            results[f"models_{k}"] = {"backfill": bf, "ceiling": ceil, "plain_loop": loop, "io_floor": floor,
                                      "io_floor_vs_ort": floor["entities_per_s"] / ceil["ort_entities_per_s"],
                                      "ratio_vs_io_floor": bf["entities_per_s"] / floor["entities_per_s"],
                                      "ratio_vs_plain_loop": bf["entities_per_s"] / loop["entities_per_s"],
                                      "ratio_vs_ort": bf["entities_per_s"] / ceil["ort_entities_per_s"],
                                      "ratio_vs_ort_build": bf["entities_per_s"] / ceil["ort_build_entities_per_s"]}
            if args.two_workers:
                results[f"models_{k}"].update(backfill_2_workers=bf2,
                                              ratio_2_workers_vs_ort=bf2["entities_per_s"] / ceil["ort_entities_per_s"])
                print(f"{k} version(s)/type, 2 Beam workers: {bf2['entities_per_s']:,.0f} entities/s "
                      f"(ratio vs ORT alone {bf2['entities_per_s'] / ceil['ort_entities_per_s']:.2f})", flush=True)
            print(f"{k} version(s)/type: backfill {bf['entities_per_s']:,.0f} entities/s (wall {bf['wall_s']:.1f}s, "
                  f"peak RSS {bf['peak_rss_mb']:.0f} MB, written {bf['written']}) | onnxruntime alone "
                  f"{ceil['ort_entities_per_s']:,.0f}/s, with build_inputs {ceil['ort_build_entities_per_s']:,.0f}/s, "
                  f"same stages in a plain loop {loop['entities_per_s']:,.0f}/s | "
                  f"ratio {results[f'models_{k}']['ratio_vs_ort']:.2f} (vs ORT+build {results[f'models_{k}']['ratio_vs_ort_build']:.2f})",
                  flush=True)
            print(f"{k} version(s)/type: I/O alone (scan {floor['scan_s']:.2f}s + Redis writes {floor['redis_write_s']:.2f}s + "
                  f"Kafka sends {floor['kafka_send_s']:.2f}s) {floor['entities_per_s']:,.0f} entities/s = "
                  f"{results[f'models_{k}']['io_floor_vs_ort']:.2f} of onnxruntime alone; backfill = "
                  f"{results[f'models_{k}']['ratio_vs_io_floor']:.2f} of it | CPU us/entity during the backfill: " +
                  ", ".join(f"{n} {v:.1f}" for n, v in bf["cpu_us_per_entity"].items()), flush=True)
        if args.scale:
            cfg.topics.feature_snapshot = "feature-snapshot-scale"
            conf.write_text(yaml.safe_dump({"kafka": {"bootstrap": cfg.kafka.bootstrap}, "redis": {"url": cfg.redis.url},
                                            "topics": {"feature_snapshot": cfg.topics.feature_snapshot},
                                            "models": {"registry": str(registry)}}))
            ensure_snapshot_topic(cfg.kafka.bootstrap, cfg)
            gen = populate(cfg, registry, args.scale, seed=2, progress=True)
            wipe(cfg.redis.url, cfg.redis.key_prefix)
            log = tmp / "backfill-scale.log"
            print(f"scale backfill running; its progress bar: tail -f {log}", flush=True)
            bf = run_cli(conf, None, args.batch_size, log, args.beam_args, progress=True, servers=servers)
            results["scale"] = {"entities": args.scale, "snapshot_fill": gen, "backfill": bf}
            print(f"scale: {args.scale:,} entities: snapshot fill {gen['wall_s']:.0f}s (bench process peak RSS "
                  f"{gen['peak_rss_mb_so_far']:.0f} MB); backfill 3 versions/type (--all): wall {bf['wall_s']:.0f}s, "
                  f"{bf['entities_per_s']:,.0f} entities/s, peak RSS {bf['peak_rss_mb']:.0f} MB, written {bf['written']}",
                  flush=True)
        results["loadavg_end"] = os.getloadavg()[0]
        print(json.dumps(results, indent=2, default=float))
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2, default=float))
    finally:
        svc.down()


if __name__ == "__main__":
    main()
