"""Benchmark: a flood of bad input against good input, with and without the input limits (issue 13, point 7).
Run on demand, not a test:

  python bench/flood_bench.py [--flood 1000] [--good 1000] [--big-share 0.14] [--big-kb 200] [--rounds 2]

For each component the issue's flood went through, the same code runs on good input and on a flood
(about 14% of it EntityUpdates with a 200 KB raw field, the rest small bad messages: garbage bytes,
unknown entity types, negative versions, keys of other entities, NaN weights), each mode in a fresh
subprocess so RSS figures do not mix:

* standardizer: ``standardize_message`` of each of the four processors, then the dead letter it would
  publish (``encode_dead_letter``);
* job: ``JoinStage.run`` in batches of 500 (decode, checks, join), then the dead letters ``PublishStage``
  would encode.

Modes: ``limits`` is the shipped configuration (nearline.config.LimitsConfig); ``no-limits`` is the same
code with every limit set out of reach and dead letters carrying the whole original, i.e. what the
pipeline did before the limits existed. The BASELINE of each row is good-input throughput measured in
the same process: the ratio flood/good says whether bad input is processed at least as fast as good.
"Delay" is how long a good update queued behind one flood waits (flood size / flood throughput). RSS
is measured after each of ``--rounds`` floods in a row (sustained flood; distinct texts each round).
No broker or Redis: this isolates the per-message CPU and memory cost. Figures on a shared 2-core
machine are noisy (several runs differ by ~20%).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nearline.config import Config, LimitsConfig  # noqa: E402
from nearline.io.codec import Codec  # noqa: E402

C = Codec()
PROCESSORS = ["title", "skills", "company", "geo"]


def rss_mb() -> float:
    """RSS after returning freed heap to the OS (glibc malloc_trim): what the process holds, not what the
    allocator happens to cache after a burst of large messages."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def config(mode: str) -> Config:
    cfg = Config()
    if mode == "no-limits":
        big = 10**12
        cfg.limits = LimitsConfig(max_message_bytes=big, max_key_bytes=big, max_entity_id_chars=big, max_fields=big,
                                  max_field_chars=big, max_ids_per_feature=big, max_abs_weight=math.inf,
                                  dead_letter_original_bytes=big)
    return cfg


def partition_of(key: bytes, n: int) -> int:
    from kafka.partitioner.default import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % n


def big_text(rng: random.Random, kb: int, words: list[str]) -> str:
    """About kb KB of comma-separated words (delimiters too: the skills processor splits on them),
    distinct per call so no cache can help."""
    chunk = ", ".join(rng.choices(words, k=300))
    reps = kb * 1024 // (len(chunk) + 2) + 1
    return ", ".join([chunk] * reps)[: kb * 1024] + f", {rng.getrandbits(64):x}"


def good_updates(data_dir: Path, n: int) -> list[dict]:
    from nearline.marketplace.stream import UpdateStreamer, load_marketplace

    streamer = UpdateStreamer(load_marketplace(data_dir), seed=5)
    return [ev.record for ev in streamer.take(n) if ev.record["op"] == "UPSERT"]


def flood_updates(rng: random.Random, n: int, big_share: float, kb: int, words: list[str], round_no: int) -> list[bytes]:
    """Encoded bad EntityUpdates (and garbage): big_share of them carry a kb-KB raw field."""
    out = []
    for i in range(n):
        eid = f"flood{round_no}-{i}"
        base = {"entity_type": "member", "entity_id": eid, "version": 1, "op": "UPSERT", "event_time": 0, "fields": {}}
        r = rng.random()
        if r < big_share:
            t = big_text(rng, kb, words)
            field = ("title", "skills", "company", "location")[i % 4]
            out.append(C.encode("EntityUpdate", {**base, "fields": {field: t}}))
        elif r < big_share + 0.25:
            out.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))))
        elif r < big_share + 0.5:
            out.append(C.encode("EntityUpdate", {**base, "entity_type": "robot"}))
        else:
            out.append(C.encode("EntityUpdate", {**base, "version": -rng.randint(1, 10**9)}))
    return out


# ---- the standardizer ------------------------------------------------------------------------------
def run_standardizer(mode: str, data_dir: Path, args) -> dict:
    from nearline.core.validate import Limits
    from nearline.io.deadletter import encode_dead_letter
    from nearline.marketplace.taxonomy import Taxonomies
    from nearline.standardize.processors import make_processor
    from nearline.standardize.runner import standardize_message

    cfg = config(mode)
    limits = Limits.from_config(cfg)
    tax = Taxonomies.load(data_dir / "taxonomies.json")
    procs = [make_processor(p, tax) for p in PROCESSORS]
    words = list(tax.titles[1:]) + list(tax.skills[1:])
    good = [C.encode("EntityUpdate", u) for u in good_updates(data_dir, args.good)]
    rng = random.Random(7)

    def process(values) -> tuple[float, int]:
        t0, dead = time.perf_counter(), 0
        for v in values:
            for p in procs:
                try:
                    standardize_message(p, C, v, 0, limits)
                except Exception as exc:  # everything the real loop dead-letters
                    dead += 1
                    encode_dead_letter(C, original=v, key=b"k", topic="entity-updates", partition=0, offset=0,
                                       stage=f"standardize.{p.name}", error=str(exc),
                                       max_original=cfg.limits.dead_letter_original_bytes)
        return time.perf_counter() - t0, dead

    process(good[:200])  # warm the matchers' caches a little, as a running standardizer has
    good_s, _ = process(good)
    rss = [rss_mb()]
    flood_s, dead = [], 0
    for r in range(args.rounds):
        s, d = process(flood_updates(rng, args.flood, args.big_share, args.big_kb, words, r))
        flood_s.append(s)
        dead += d
        gc.collect()
        rss.append(rss_mb())
    return {"good_per_s": len(good) / good_s, "flood_per_s": args.flood / (sum(flood_s) / len(flood_s)),
            "delay_s": sum(flood_s) / len(flood_s), "rss_mb": rss, "dead_letters": dead}


# ---- the job -----------------------------------------------------------------------------------------
def run_job(mode: str, data_dir: Path, args) -> dict:
    from nearline.io.deadletter import encode_dead_letter
    from nearline.stream.pipeline import JoinStage, KafkaRecord, RecordBatch

    cfg = config(mode)
    parts = cfg.topics.partitions
    stage = JoinStage(cfg, C)
    state = stage.new_state({"member": set(PROCESSORS), "job": set(PROCESSORS)})
    rng = random.Random(9)
    offsets: dict = {}

    def rec(topic, key: bytes, value: bytes) -> KafkaRecord:
        p = partition_of(key, parts)
        off = offsets.get((topic, p), 0)
        offsets[(topic, p)] = off + 1
        return KafkaRecord(topic, p, off, key, value)

    def good_records(n):
        out = []
        for u in good_updates(data_dir, n):
            key = f"{u['entity_type']}:{u['entity_id']}".encode()
            out.append(rec(cfg.topics.entity_updates, key, C.encode("EntityUpdate", u)))
            for proc in PROCESSORS:
                feats = {f: {"ids": [rng.randint(1, 50)], "weights": None}
                         for f in {"title": ["title", "seniority"], "skills": ["skills"], "company": ["company"],
                                   "geo": ["geo"]}[proc]}
                out.append(rec(cfg.standardized_topic(proc), key, C.encode("StandardizedFeatures", {
                    "entity_type": u["entity_type"], "entity_id": u["entity_id"], "version": u["version"],
                    "processor": proc, "features": feats, "produced_at": 0})))
        return out

    def flood_records(round_no):
        out = []
        words = ["senior", "software", "engineer", "python", "kafka", "manager", "data"]
        for i, v in enumerate(flood_updates(rng, args.flood, args.big_share, args.big_kb, words, round_no)):
            key = f"member:flood{round_no}-{i}".encode()
            if i % 7 == 3:  # some with the key of another entity, some NaN weights on a standardized topic
                key = b"member:someone-else"
            if i % 11 == 5:
                v = C.encode("StandardizedFeatures", {"entity_type": "member", "entity_id": f"flood{round_no}-{i}",
                                                      "version": 1, "processor": "skills",
                                                      "features": {"skills": {"ids": [1], "weights": [math.nan]}},
                                                      "produced_at": 0})
                out.append(rec(cfg.standardized_topic("skills"), key, v))
            else:
                out.append(rec(cfg.topics.entity_updates, key, v))
        return out

    def process(records) -> float:
        t0 = time.perf_counter()
        now = 1_700_000_000.0
        for i in range(0, len(records), 500):
            now += 0.05
            wb = stage.run(state, 0, RecordBatch(records[i:i + 500], now))
            for d in wb.dead_letters:  # what PublishStage encodes for each
                r = d.raw
                encode_dead_letter(C, original=r.value, key=r.key, topic=r.topic, partition=r.partition,
                                   offset=r.offset, stage=d.stage, error=d.error,
                                   max_original=cfg.limits.dead_letter_original_bytes)
        return time.perf_counter() - t0

    good = good_records(args.good)
    process(good[:1000])
    good = good_records(args.good)
    good_s = process(good)
    rss = [rss_mb()]
    flood_s = []
    for r in range(args.rounds):
        flood_s.append(process(flood_records(r)))
        gc.collect()
        rss.append(rss_mb())
    return {"good_per_s": len(good) / good_s, "flood_per_s": args.flood / (sum(flood_s) / len(flood_s)),
            "delay_s": sum(flood_s) / len(flood_s), "rss_mb": rss, "pending_joins": len(state.join.pending)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flood", type=int, default=1000, help="bad messages per flood")
    ap.add_argument("--good", type=int, default=1000, help="good updates for the baseline")
    ap.add_argument("--big-share", type=float, default=0.14, help="share of the flood with a --big-kb raw field")
    ap.add_argument("--big-kb", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2, help="floods in a row (sustained flood, for RSS)")
    ap.add_argument("--data", default=str(ROOT / "data/marketplace"), help="generated marketplace (taxonomies.json)")
    ap.add_argument("--only", choices=["standardizer", "job"], help="run one component")
    ap.add_argument("--child", nargs=2, metavar=("COMPONENT", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    data_dir = Path(args.data)
    if not (data_dir / "taxonomies.json").exists():
        sys.exit(f"{data_dir}/taxonomies.json not found: run `nearline marketplace generate` (or pass --data)")
    if args.child:
        comp, mode = args.child
        res = (run_standardizer if comp == "standardizer" else run_job)(mode, data_dir, args)
        print(json.dumps(res))
        return
    passthrough = [f"--flood={args.flood}", f"--good={args.good}", f"--big-share={args.big_share}",
                   f"--big-kb={args.big_kb}", f"--rounds={args.rounds}", f"--data={args.data}"]
    results = {}
    for comp in ([args.only] if args.only else ["standardizer", "job"]):
        for mode in ("no-limits", "limits"):
            out = subprocess.run([sys.executable, __file__, "--child", comp, mode, *passthrough],
                                 capture_output=True, text=True, check=True)
            results[(comp, mode)] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"flood: {args.flood} bad messages ({args.big_share:.0%} with a {args.big_kb} KB raw field) x {args.rounds} "
          f"rounds; good baseline: {args.good} updates (standardizer: x4 processors; job: update + 4 features each)")
    print(f"{'component':<13}{'mode':<11}{'good msg/s':>11}{'flood msg/s':>12}{'flood/good':>11}{'delay s':>9}"
          f"{'RSS MB (start -> after each flood)':>40}")
    for (comp, mode), r in results.items():
        rss = " -> ".join(f"{x:.0f}" for x in r["rss_mb"])
        print(f"{comp:<13}{mode:<11}{r['good_per_s']:>11.0f}{r['flood_per_s']:>12.0f}"
              f"{r['flood_per_s'] / r['good_per_s']:>11.2f}{r['delay_s']:>9.2f}{rss:>40}")
    for comp in ([args.only] if args.only else ["standardizer", "job"]):
        a, b = results[(comp, "no-limits")], results[(comp, "limits")]
        print(f"{comp}: flood throughput x{b['flood_per_s'] / a['flood_per_s']:.1f} with limits; RSS growth over the "
              f"floods {a['rss_mb'][-1] - a['rss_mb'][0]:+.0f} MB without, {b['rss_mb'][-1] - b['rss_mb'][0]:+.0f} MB with")
    print("(per-message CPU and memory only: no broker or Redis; noisy on a shared machine)")


if __name__ == "__main__":
    main()
