"""Regenerates docs/results.md and docs/plots/: single-task vs multitask, joint vs iterative.

    python -m nearline.models.results [--quick]

On the synthetic marketplace (view, apply, InMail accept; with the true-affinity ceiling AUC) and on
MovieLens-100k (rated, liked; time split). Every run uses the same framework code; single-task runs are
the same config restricted to one task.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from pathlib import Path

import torch

from nearline.models.export import export_tower
from nearline.models.multitask import Trainer, TrainConfig, load_source, plot_history

ROOT = Path(__file__).resolve().parent.parent

READING = """## Reading the numbers

* Marketplace, sparse tasks: **apply** (10% positives among views) gains from sharing the towers with the
  view task in every multitask mode (+0.028 to +0.030 AUC over single-task). **InMail accept** gains with
  iterative training (+0.015) but loses a little with joint training (-0.008 to -0.013). A plausible,
  untested reason: joint steps sum the task losses, and the view task dominates the shared gradient.
  The dense view task is flat to slightly worse under multitask training.
* All models remain well below the true-affinity ceiling on apply (0.68 vs 0.78): the towers see noisy
  standardized text, not the generator's latents, and overfit after 2-4 epochs (see the curves).
* MovieLens-100k: the two tasks share most of their signal and the user/movie features are coarse; the
  multitask variants are within +-0.005 AUC of single-task on both tasks, i.e. no measurable gain here.
* Vocabulary subsetting: on this generator the densest subgraph and "most frequent per side" cover the
  same share (within 1 point even on apply positives): members' and jobs' companies and cities are drawn
  independently, so the co-occurrence graph has no community structure for the peeling to exploit. On a
  graph with communities the greedy peeling is within 10% of the brute-force optimum and at least as good
  as frequency (tests/unit/models/test_vocab.py); its value on real data is not measured here.
* Training time per epoch is for 2 CPU threads; joint runs do one step per task per batch, so their epochs
  are longer than a single task's.
"""


def variants(cfg: TrainConfig) -> dict[str, TrainConfig]:
    out = {}
    for t in cfg.tasks:
        out[f"single: {t.name}"] = cfg.only(t.name)
    j = copy.deepcopy(cfg)
    j.mode, j.weighting = "joint", "fixed"
    out["multitask joint (fixed weights)"] = j
    u = copy.deepcopy(cfg)
    u.mode, u.weighting = "joint", "uncertainty"
    out["multitask joint (uncertainty weights)"] = u
    it = copy.deepcopy(cfg)
    it.mode = "iterative"
    out["multitask iterative"] = it
    return out


def run_dataset(name: str, cfg: TrainConfig, plots: Path, tmp: Path) -> dict:
    tables, frames = load_source(cfg)
    rows = {}
    for label, v in variants(cfg).items():
        t0 = time.perf_counter()
        print(f"== {name}: {label}", flush=True)
        res = Trainer(v, tables, frames, progress=True).fit()
        size = {}
        for side in ("member", "job"):
            p = tmp / f"{side}.onnx"
            export_tower(res.model.tower(side), p)
            size[side] = p.stat().st_size
        rows[label] = {"metrics": res.best["metrics"], "best_epoch": res.best["epoch"],
                       "epochs_run": len(res.history), "seconds_per_epoch": res.seconds_per_epoch,
                       "parameters": sum(p.numel() for p in res.model.parameters()),
                       "onnx_bytes": size, "wall_s": time.perf_counter() - t0}
        if label.startswith("multitask joint (fixed"):
            for p in plot_history(res.history, [t.name for t in v.tasks], plots):
                p.rename(plots / f"{name}_{p.name}")
    return rows


def table(name: str, rows: dict, tasks: list[str], ceiling: bool) -> str:
    head = "| run | " + " | ".join(f"{t} AUC" for t in tasks) + " | s/epoch | params | ONNX (member+job) |"
    lines = [head, "|" + "---|" * (len(tasks) + 4)]
    for label, r in rows.items():
        cells = []
        for t in tasks:
            m = r["metrics"].get(t)
            cells.append(f"{m['auc']:.4f}" if m else "")
        kb = (r["onnx_bytes"]["member"] + r["onnx_bytes"]["job"]) / 1024
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {r['seconds_per_epoch']:.1f} | {r['parameters']:,} | {kb:.0f} KiB |")
    if ceiling:
        any_row = next(iter(rows.values()))["metrics"]
        cells = []
        for t in tasks:
            for r in rows.values():
                if t in r["metrics"] and "ceiling_auc" in r["metrics"][t]:
                    cells.append(f"{r['metrics'][t]['ceiling_auc']:.4f}")
                    break
            else:
                cells.append("")
        lines.append("| *true affinity (ceiling)* | " + " | ".join(cells) + " | | | |")
    return "\n".join(lines)


def vocab_section(data_dir: Path) -> str:
    """Coverage of interactions when company / geo vocabularies are cut to n values per side."""
    from nearline.models.data import marketplace_source
    from nearline.models.vocab import cooccurrence, greedy_densest_subset, top_k_coverage

    tables, frames = marketplace_source(data_dir)
    lines = ["## High-cardinality vocabularies", "",
             "Share of view-task interactions whose member value and job value are both kept when each side",
             "keeps at most n values: greedy densest subgraph (`models/vocab.py`) vs the n most frequent values",
             "per side. Everything else maps to the OOV row. Set in a training config with",
             "`vocab_subsets: [{feature: company, dataset: view, n: 100}]`.", ""]
    for feat in ("company", "geo"):
        df = frames["view"]
        mv = tables["member"].features[feat][df.member_idx.to_numpy(), 0]
        jv = tables["job"].features[feat][df.job_idx.to_numpy(), 0]
        edges = cooccurrence(mv, jv)
        distinct = max(len(set(mv.tolist())), len(set(jv.tolist())))
        ns = [n for n in (3, 5, 10, 25, 50, 100, 200) if n < distinct] + [distinct]
        lines += [f"**{feat}** ({distinct} distinct values per side at most)", "",
                  "| n | " + " | ".join(str(n) for n in ns) + " |", "|---|" + "---|" * len(ns),
                  "| densest subgraph | " + " | ".join(f"{greedy_densest_subset(edges, n, n).covered:.1%}" for n in ns) + " |",
                  "| most frequent | " + " | ".join(f"{top_k_coverage(edges, n):.1%}" for n in ns) + " |", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small data and 2 epochs (a smoke run)")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    ap.add_argument("--skip-movielens", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    tmp = out / ".tmp"
    tmp.mkdir(exist_ok=True)
    torch.set_num_threads(2)

    data = ROOT / "data" / ("results-marketplace-quick" if args.quick else "results-marketplace")
    if not (data / "summary.json").exists():
        from nearline.marketplace.generate import MarketplaceSpec, generate

        spec = MarketplaceSpec(members=1500, jobs=800, seed=11) if args.quick else \
            MarketplaceSpec(members=12000, jobs=6000, impressions_per_member=20, inmails_per_job=4, seed=11)
        generate(spec, data)
    mcfg = TrainConfig.from_yaml(ROOT / "models/configs/marketplace.yaml")
    mcfg.source_args = {"data_dir": str(data)}
    mcfg.weight_decay = 1e-5
    if args.quick:
        mcfg.epochs = 2
    results = {"marketplace": run_dataset("marketplace", mcfg, plots, tmp)}
    if not args.skip_movielens:
        lcfg = TrainConfig.from_yaml(ROOT / "models/configs/movielens.yaml")
        if args.quick:
            lcfg.epochs, lcfg.max_rows_per_task = 2, 20000
        results["movielens"] = run_dataset("movielens", lcfg, plots, tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    summary = json.loads((data / "summary.json").read_text())
    md = [
        "# Results", "",
        "Regenerate with `python -m nearline.models.results` (about 15-25 minutes on 2 cores; `--quick` for a smoke run).",
        "Numbers are validation AUC at the best epoch (early stopping on mean AUC); every run uses the same",
        "framework code; a single-task run is the multitask config restricted to that task.", "",
        "## Synthetic job marketplace", "",
        f"{summary['members']:,} members, {summary['jobs']:,} jobs; {summary['views']:,} impressions "
        f"(view rate {summary['view_rate']:.1%}), {summary['apply_rows']:,} apply rows (views; apply rate "
        f"{summary['apply_rate_of_views']:.1%}), {summary['inmails']:,} InMails (accept rate "
        f"{summary['inmail_accept_rate']:.1%}). Random 80/20 split. The ceiling is the AUC of the generator's "
        "true logit on the same validation rows.", "",
        table("marketplace", results["marketplace"], ["view", "apply", "inmail"], True), "",
        "Learning curves of the joint multitask run: "
        + ", ".join(f"[{t}](plots/marketplace_curves_{t}.png)" for t in ("view", "apply", "inmail")), "",
    ]
    if "movielens" in results:
        md += ["## MovieLens-100k (real data)", "",
               "User tower (age bucket, gender, occupation, zip region) x movie tower (genres, decade, movie id).",
               "`rated`: each rating is a positive plus one random movie as a negative; `liked`: rating >= 4 among",
               "rated movies. Fixed time-based split: the last 20% of ratings by timestamp are validation.", "",
               table("movielens", results["movielens"], ["rated", "liked"], False), "",
               "Learning curves of the joint multitask run: "
               + ", ".join(f"[{t}](plots/movielens_curves_{t}.png)" for t in ("rated", "liked")), ""]
    md += [vocab_section(data), "", READING]
    (out / "results.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
