"""Plot docs/bench-backfill.json (written by bench/backfill_bench.py --out) to docs/plots/backfill.png:
entities/s of the backfill against its baselines (onnxruntime alone, and the I/O floor: the same scan,
Redis writes and Kafka sends with no work between), and the per-stage split of the plain loop.

  python bench/backfill_plot.py [docs/bench-backfill.json] [docs/plots/backfill.png]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "bench-backfill.json"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "docs" / "plots" / "backfill.png"
    d = json.loads(src.read_text())
    runs = [k for k in ("models_1", "models_3") if k in d]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    labels = ["backfill (Beam)", "backfill, 2 workers", "plain loop", "I/O alone (floor)", "ORT + build_inputs",
              "ORT alone", "half ORT alone (target)"]
    width = 0.38
    for j, k in enumerate(runs):
        r = d[k]
        vals = [r["backfill"]["entities_per_s"], r.get("backfill_2_workers", {}).get("entities_per_s", 0),
                r["plain_loop"]["entities_per_s"], r.get("io_floor", {}).get("entities_per_s", 0),
                r["ceiling"]["ort_build_entities_per_s"], r["ceiling"]["ort_entities_per_s"],
                0.5 * r["ceiling"]["ort_entities_per_s"]]
        xs = [i + (j - 0.5) * width for i in range(len(labels))]
        ax1.bar(xs, vals, width, label=f"{k[-1]} version(s) per type")
    ax1.set_yscale("log")
    ax1.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax1.set_ylabel("entities/s (log)")
    ax1.set_title(f"{d['entities']:,} entities, batch {d['batch_size']}")
    ax1.legend()
    stages = list(d[runs[-1]]["plain_loop"]["split_us_per_entity"])
    bottom = [0.0] * len(runs)
    for st in stages:
        vals = [d[k]["plain_loop"]["split_us_per_entity"].get(st, 0.0) for k in runs]
        ax2.bar([k[-1] + " version(s)" for k in runs], vals, bottom=bottom, label=st)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax2.set_ylabel("µs per entity (plain loop)")
    ax2.set_title("where the time goes")
    ax2.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
