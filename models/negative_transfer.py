"""Which framework options beat the best single-task model on *both* MovieLens-100k tasks.

    python -m nearline.models.negative_transfer [--seeds 7,8,9] [--variants NAME ...] [--render-only]

Every variant is the shipped MovieLens config (models/configs/movielens.yaml) with a few overrides, trained to
convergence (at most 25 epochs, early stopping with patience 3 on the validation rows) and reported as TEST
AUC at the chosen epoch; one split per seed shared by every variant, as in models/results.py. Each finished run
is appended to docs/negative_transfer.jsonl (a re-run skips what is there, so the study can be extended a
variant at a time), and docs/negative_transfer.md plus a bar chart are rendered from that file.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nearline.models.multitask import TrainConfig, Trainer, load_source, prepare_tasks

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "models/configs/movielens.yaml"
TASKS = ("rated", "liked")
COMMON = {"epochs": 25, "patience": 3}

WIDER = {"architecture": {"member_tower": {"name": "user_tower", "emb_dim": 32, "widths": [64, 128, 256], "dim": 64,
                                           "dropout": 0.2, "norm": "layer"},
                          "job_tower": {"name": "movie_tower", "emb_dim": 32, "widths": [64, 128, 256], "dim": 64,
                                        "dropout": 0.2, "norm": "layer"},
                          "head": {"dim": 64}}}
LIKED_OWN_TOWERS = {"member_tower": {"name": "liked_user_tower"}, "job_tower": {"name": "liked_movie_tower"}}
# name -> (what it is, overrides): "only" restricts to tasks; "task.<t>.<field>" sets a task's field
VARIANTS: dict[str, tuple[str, dict]] = {
    "single: rated": ("single-task baseline", {"only": ["rated"]}),
    "single: liked": ("single-task baseline", {"only": ["liked"]}),
    "single: rated, wider towers": ("single-task, 2x embedding and output widths", {"only": ["rated"], **WIDER}),
    "single: liked, wider towers": ("single-task, 2x embedding and output widths", {"only": ["liked"], **WIDER}),
    "joint, fixed weights": ("one optimizer, summed losses", {"mode": "joint"}),
    "joint, uncertainty weights": ("learned task weights (Kendall et al. 2018)", {"mode": "joint", "weighting": "uncertainty"}),
    "joint, PCGrad": ("gradient surgery on the shared towers (Yu et al. 2020)", {"mode": "joint", "gradient": "pcgrad"}),
    "iterative": ("tasks take turns, each its own optimizer and learning rate", {"mode": "iterative"}),
    "iterative, liked weight 0.5": ("per-task loss weight", {"mode": "iterative", "task.liked.loss_weight": 0.5}),
    "iterative, liked weight 2": ("per-task loss weight", {"mode": "iterative", "task.liked.loss_weight": 2.0}),
    "iterative, shared embeddings only": (
        "shared bottom: one embedding table per feature, each task its own dense tower layers",
        {"mode": "iterative", "share_embeddings": True, "task.liked.architecture": LIKED_OWN_TOWERS}),
    "iterative, wider towers": ("iterative, 2x embedding and output widths", {"mode": "iterative", **WIDER}),
    "joint, shared embeddings only": (
        "the same shared bottom, one optimizer",
        {"mode": "joint", "share_embeddings": True, "task.liked.architecture": LIKED_OWN_TOWERS}),
}


READING = """## Reading the table

* The issue's bar (a configuration beating the best single-task model by >= 0.005 test AUC on *both* tasks)
  is **not met**. Iterative training gains on both, but on rated by half the margin: +0.0024 (3 seeds, std
  0.0006), with liked +0.025. The shared bottom (iterative, shared embeddings only) is the best on rated,
  +0.0033, and gives up some of liked's gain (+0.016).
* Joint training loses on rated whatever is done to the combination of the task gradients: fixed weights
  -0.011, learned uncertainty weights -0.005, PCGrad -0.013, a shared bottom -0.005 (one seed each, since
  each is already far below the bar). Iterative training, where each task's step uses its own Adam state,
  is what avoids the interference here; the task-gradient remedies do not recover it in joint mode.
* Capacity is not the limit: 2x wider towers change neither the single-task models (rated 0.8453 vs 0.8452)
  nor the iterative one (+0.0019). Down- or up-weighting the liked task (0.5, 2) moves rated by < 0.002.
* The single-task baselines are trained the same way (to convergence, same rows, same early stopping); with
  the short 5-epoch runs of docs/results.md the multitask gain on rated looked like +0.001, and the baselines
  were still improving.
"""


def configure(base: TrainConfig, overrides: dict) -> TrainConfig:
    cfg = copy.deepcopy(base)
    for key, value in {**COMMON, **overrides}.items():
        if key == "only":
            cfg = cfg.only(*value)
        elif key.startswith("task."):
            _, task, attr = key.split(".")
            setattr(next(t for t in cfg.tasks if t.name == task), attr, value)
        else:
            setattr(cfg, key, value)
    return cfg


def run(variants: list[str], seeds: list[int], log: Path) -> None:
    done = {(r["variant"], r["seed"]) for r in read(log)}
    todo = [(v, s) for s in seeds for v in variants if (v, s) not in done]
    if not todo:
        return
    base = TrainConfig.from_yaml(CONFIG)
    tables, frames = load_source(base)
    splits: dict[int, list] = {}
    for variant, seed in tqdm(todo, desc="runs", unit="run"):
        seeded = copy.deepcopy(base)
        seeded.seed = seed
        if seed not in splits:  # one split per seed: every variant trains and is tested on the same rows
            splits[seed] = prepare_tasks(seeded, frames, tables)
        cfg = configure(seeded, VARIANTS[variant][1])
        t0 = time.perf_counter()
        trainer = Trainer(cfg, tables, frames, progress=False)
        trainer.tasks = [td for td in splits[seed] if td.name in {t.name for t in cfg.tasks}]
        res = trainer.fit()
        test = trainer.evaluate("test")
        row = {"variant": variant, "seed": seed, "test_auc": {t: m["auc"] for t, m in test.items()},
               "best_epoch": res.best["epoch"], "epochs_run": len(res.history),
               "seconds": round(time.perf_counter() - t0, 1)}
        tqdm.write(json.dumps(row))
        with log.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


def read(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def summarize(rows: list[dict]) -> dict[str, dict]:
    """variant -> {task: (mean, std, n)}, seeds: list}, over the seeds every variant has."""
    out: dict[str, dict] = {}
    for r in rows:
        v = out.setdefault(r["variant"], {"seeds": [], "epochs": [], "auc": {}})
        v["seeds"].append(r["seed"])
        v["epochs"].append(r["best_epoch"])
        for t, a in r["test_auc"].items():
            v["auc"].setdefault(t, []).append(a)
    return out


def render(log: Path, out_md: Path, plot: Path) -> str:
    summary = summarize(read(log))
    # the best single-task model of each task among the single-task variants run
    best_single = {t: max(float(np.mean(v["auc"][t])) for n, v in summary.items() if n.startswith(f"single: {t}"))
                   for t in TASKS if any(n.startswith(f"single: {t}") for n in summary)}
    lines = ["# Negative transfer on MovieLens-100k: which options gain on both tasks", "",
             "Regenerate with `python -m nearline.models.negative_transfer` (runs are cached in "
             "docs/negative_transfer.jsonl; about 4 minutes per multitask run on one thread). The shipped "
             "MovieLens config (models/configs/movielens.yaml) trained to convergence: at most 25 epochs, early "
             "stopping with patience 3 on the validation rows, TEST AUC at the chosen epoch (per-user time split, "
             "as in docs/results.md), mean ± std over the seeds listed. Δ is against the best single-task "
             "variant of that task (mean over its seeds), trained the same way on the same rows.", "",
             "| variant | what it is | rated test AUC | Δ rated | liked test AUC | Δ liked | seeds | chosen epochs |",
             "|---|---|---|---|---|---|---|---|"]
    for name, (what, _) in VARIANTS.items():
        if name not in summary:
            continue
        s = summary[name]
        cells = []
        for t in TASKS:
            vals = s["auc"].get(t)
            if not vals:
                cells += ["", ""]
                continue
            m = float(np.mean(vals))
            cells.append(f"{m:.4f} ± {np.std(vals):.4f}" if len(vals) > 1 else f"{m:.4f} (one seed)")
            cells.append(f"{m - best_single[t]:+.4f}" if t in best_single and not name.startswith("single") else "")
        lines.append(f"| {name} | {what} | " + " | ".join(cells)
                     + f" | {', '.join(map(str, s['seeds']))} | {', '.join(map(str, s['epochs']))} |")
    _plot(summary, best_single, plot)
    lines += ["", f"![test AUC per variant]({plot.relative_to(out_md.parent)})", "", READING]
    out_md.write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def _plot(summary: dict, best_single: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in VARIANTS if n in summary and not n.startswith("single")]
    fig, axes = plt.subplots(1, len(TASKS), figsize=(11, 3.8))
    for ax, t in zip(axes, TASKS):
        deltas = [float(np.mean(summary[n]["auc"][t])) - best_single.get(t, np.nan) for n in names]
        errs = [float(np.std(summary[n]["auc"][t])) for n in names]
        ax.barh(names, deltas, xerr=errs, color=["tab:green" if d >= 0.005 else "tab:gray" for d in deltas])
        ax.axvline(0.005, color="tab:red", ls="--", lw=1)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(f"{t}: test AUC minus single-task")
        ax.xaxis.set_major_locator(plt.MaxNLocator(5))
        ax.invert_yaxis()
    for ax in axes[1:]:
        ax.set_yticklabels([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="7,8,9")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one thread: on a shared 2-core machine more threads spin on each other
    log = ROOT / "docs/negative_transfer.jsonl"
    if not args.render_only:
        run(args.variants, [int(s) for s in args.seeds.split(",")], log)
    print(render(log, ROOT / "docs/negative_transfer.md", ROOT / "docs/plots/negative_transfer.png"))


if __name__ == "__main__":
    main()
