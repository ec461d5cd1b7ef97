"""Micro-benchmark of the backfill's per-entity CPU before onnxruntime (run on demand, not a test):

  python bench/snapshot_decode_bench.py [--records 50000] [--batch-size 1024] [--repeat 3]

On N FeatureSnapshot records (random features within the shipped pyramid manifests' vocabularies, as
bench/backfill_bench.py makes them, plus ids beyond vocab and max_len), in batches of --batch-size:

1. decode: fastavro record by record (Codec.decode, what the backfill did) against decode_snapshots
   (nearline/offline/snapshot_columns.py: framing scan + one polars-avro block read + Arrow -> FeatureColumns);
2. tensors: the former per-row build_inputs loop (the tests' reference copy) on the decoded dicts, against the
   vectorised build_inputs_columns on decode_snapshots' columns (and, the job's path, from_rows + it);
3. the baseline: onnxruntime alone on the same tensors and batches (one thread).

Prints us per record (best of --repeat) and the ratios. Figures are noisy on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nearline.io.codec import Codec  # noqa: E402
from nearline.offline.snapshot_columns import _arrow_features, _framed, _read_block, decode_snapshots  # noqa: E402
from nearline.registry.features import FeatureColumns, FeatureEncoder, build_inputs_columns  # noqa: E402
from nearline.registry.manifest import Manifest  # noqa: E402

# the former per-row builder, kept as the tests' reference: the baseline
from tests.unit.registry.test_features_columns import reference_build_inputs as per_row_build_inputs  # noqa: E402

PACKAGES = ROOT / "models" / "packages"


def make_records(n: int, man: Manifest, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        feats = {}
        for f in man.inputs:
            if rng.random() < 0.05:
                continue  # absent: the manifest's defaults
            k = int(rng.integers(1, f.max_len + 3))  # sometimes beyond max_len
            ids = rng.integers(0, f.vocab_size + 5, k).tolist()  # sometimes beyond the vocabulary
            w = rng.uniform(0.2, 1.0, k).astype(np.float32).tolist() if f.weighted else None
            feats[f.name] = {"ids": ids, "weights": w}
        out.append({"entity_type": man.entity_type, "entity_id": f"{man.entity_type[0]}{i}", "version": i + 1,
                    "partial": False, "missing": [], "features": feats, "written_at": 1_700_000_000_000 + i})
    return out


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    import onnxruntime as ort

    man = Manifest.from_json(json.loads((PACKAGES / "member_pyramid/v1/manifest.json").read_text()))
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    sess = ort.InferenceSession(str(PACKAGES / "member_pyramid/v1/tower.onnx"), so, providers=["CPUExecutionProvider"])
    encoders = {f.name: FeatureEncoder(f) for f in man.inputs}
    codec = Codec()
    values = [codec.encode("FeatureSnapshot", r) for r in make_records(args.records, man)]
    bs = args.batch_size
    batches = [values[i:i + bs] for i in range(0, len(values), bs)]
    n = len(values)
    us = lambda s: s / n * 1e6  # noqa: E731

    dicts = [[codec.decode(v)["features"] for v in b] for b in batches]
    cols = [decode_snapshots(b, codec).features for b in batches]
    feeds = [build_inputs_columns(man, c, encoders) for c in cols]
    for c, d, f in zip(cols, dicts, feeds):  # the same tensors both ways, or the figures mean nothing
        want = per_row_build_inputs(man, d, encoders)
        assert all(f[k].tobytes() == want[k].tobytes() for k in want)

    t_fastavro = best(lambda: [[codec.decode(v) for v in b] for b in batches], args.repeat)
    t_columnar = best(lambda: [decode_snapshots(b, codec) for b in batches], args.repeat)
    datums = [[v[10:] for v in b] for b in batches]
    t_scan = best(lambda: [_framed(d) for d in datums], args.repeat)
    schema = codec.store.readers["FeatureSnapshot"]
    fp = codec.store.fingerprints["FeatureSnapshot"]
    tables = [_read_block(d, schema, fp) for d in datums]
    t_block = best(lambda: [_read_block(d, schema, fp) for d in datums], args.repeat)
    t_arrow = best(lambda: [_arrow_features(t.column("features")) for t in tables], args.repeat)
    t_rowloop = best(lambda: [per_row_build_inputs(man, d, encoders) for d in dicts], args.repeat)
    t_vector = best(lambda: [build_inputs_columns(man, c, encoders) for c in cols], args.repeat)
    t_fromrows = best(lambda: [build_inputs_columns(man, FeatureColumns.from_rows(d), encoders) for d in dicts], args.repeat)
    t_ort = best(lambda: [sess.run([man.output_name], f) for f in feeds], args.repeat)

    print(f"{n} FeatureSnapshot records (member_pyramid features), batches of {bs}, best of {args.repeat}; us per record")
    print(f"decode   fastavro (Codec.decode per record)      {us(t_fastavro):7.2f}")
    print(f"decode   decode_snapshots (columnar)             {us(t_columnar):7.2f}   ratio {t_fastavro / t_columnar:5.1f}x")
    print(f"           of which framing scan                 {us(t_scan):7.2f}")
    print(f"           of which polars-avro block read       {us(t_block):7.2f}")
    print(f"           of which Arrow -> FeatureColumns      {us(t_arrow):7.2f}")
    print(f"tensors  per-row build_inputs loop (former)      {us(t_rowloop):7.2f}")
    print(f"tensors  build_inputs_columns (vectorised)       {us(t_vector):7.2f}   ratio {t_rowloop / t_vector:5.1f}x")
    print(f"tensors  from_rows + build_inputs_columns (job)  {us(t_fromrows):7.2f}   ratio {t_rowloop / t_fromrows:5.1f}x")
    print(f"baseline onnxruntime alone (1 thread)            {us(t_ort):7.2f}")
    before, after = t_fastavro + t_rowloop, t_columnar + t_vector
    print(f"decode + tensors: before {us(before):.2f}, after {us(after):.2f} ({before / after:.1f}x); "
          f"onnxruntime / (decode + tensors + onnxruntime): before {t_ort / (before + t_ort):.2f}, "
          f"after {t_ort / (after + t_ort):.2f}")


if __name__ == "__main__":
    main()
