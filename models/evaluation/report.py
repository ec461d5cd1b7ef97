"""Plots and the markdown report of an evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


# ---------------------------------------------------------------- report
def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lift(res: dict, out: Path) -> Path | None:
    labels = [k for k, r in res["models"].items() if "lift" in r]
    if not labels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 1 + len(labels), figsize=(4.2 * (1 + len(labels)), 3.8))
    ax = axes[0]
    xs = np.arange(len(labels))
    for i, (variant, color) in enumerate((("sparse only", "tab:gray"), ("sparse + tower score", "tab:cyan"),
                                          ("sparse + embedding", "tab:blue"))):
        vals = [res["models"][k]["lift"][variant]["auc"] for k in labels]
        errs = [res["models"][k]["lift"][variant]["fold_auc_std"] for k in labels]
        ax.bar(xs + (i - 1) * 0.27, vals, 0.27, yerr=errs, label=variant, color=color, capsize=3)
    lo = min(res["models"][k]["lift"]["sparse only"]["auc"] for k in labels)
    ax.set_ylim(max(0.0, lo - 0.08), 1.0)
    ax.set_xticks(xs, [k.split(" + ")[0] for k in labels], fontsize=7)
    ax.set_title(f"GBDT ranker, {res['models'][labels[0]]['lift']['task']}: held-out AUC")
    ax.legend(fontsize=7)
    for ax, k in zip(axes[1:], labels):
        share = res["models"][k]["lift"]["sparse + embedding"]["gain_share"]
        items = sorted(share.items(), key=lambda kv: -kv[1])
        colors = ["tab:blue" if n.startswith("embedding: H") else "tab:cyan" if n.startswith("embedding") else None
                  for n, _ in items]
        other = plt.cm.Greys(np.linspace(0.25, 0.75, max(1, sum(c is None for c in colors))))
        it = iter(other)
        colors = [c if c is not None else next(it) for c in colors]
        ax.pie([v for _, v in items], labels=[f"{n}\n{v:.0%}" if v >= 0.04 else "" for n, v in items],
               colors=colors, textprops={"fontsize": 7}, startangle=90, counterclock=False)
        ax.set_title(f"gain share, {k.split(' + ')[0]}", fontsize=9)
    fig.tight_layout()
    p = out / "lift.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    return p


def plot_transfer(res: dict, out: Path) -> Path:
    plt = pyplot()
    mats = [(f"multitask {k.split(' + ')[0]}", r["transfer"]) for k, r in res["models"].items()]
    mats.append(("single-task models", res["single_task"]["transfer"]))
    tasks = list(res["tasks"])
    fig, axes = plt.subplots(1, len(mats), figsize=(4.2 * len(mats), 3.4))
    axes = np.atleast_1d(axes)
    for ax, (title, m) in zip(axes, mats):
        a = np.array([[m[d].get(h, np.nan) for h in tasks] for d in tasks])
        im = ax.imshow(a, vmin=0.4, vmax=max(0.9, np.nanmax(a)), cmap="viridis")
        for i in range(len(tasks)):
            for k in range(len(tasks)):
                if not np.isnan(a[i, k]):
                    ax.text(k, i, f"{a[i, k]:.3f}", ha="center", va="center", fontsize=8,
                            color="white" if a[i, k] < 0.7 else "black")
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set_yticks(range(len(tasks)), tasks)
        ax.set_xlabel("head (model) of task")
        if ax is axes[0]:
            ax.set_ylabel("held-out rows of task")
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="AUC")
    p = out / "transfer.png"
    fig.savefig(p, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return p


def plot_importance(res: dict, task: str, out: Path) -> Path:
    plt = pyplot()
    cand = next(iter(res["models"]))
    multi = res["models"][cand]["importance"][task]
    single = res["single_task"]["importance"][task]
    agree = res["models"][cand]["rank_vs_single"][task]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    feats = sorted(multi["features"], key=lambda k: -multi["features"][k])
    y = np.arange(len(feats))
    axes[0].barh(y - 0.2, [multi["features"][f] for f in feats], 0.4, label="multitask")
    axes[0].barh(y + 0.2, [single["features"].get(f, 0) for f in feats], 0.4, label=f"single-task {task}")
    axes[0].set_yticks(y, feats, fontsize=8)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("AUC drop when permuted")
    axes[0].set_title(f"{task}: feature importance")
    axes[0].legend(fontsize=7)
    for ax, kind in zip(axes[1:], ("features", "values")):
        ranks = agree[kind]["ranks"]
        if ranks:
            a = np.array(list(ranks.values()))
            ax.scatter(a[:, 0], a[:, 1], s=18)
            top = max(a.max(), 1)
            ax.plot([1, top], [1, top], color="gray", ls="--", lw=0.8)
            if kind == "features":
                for k, (r1, r2) in ranks.items():
                    ax.annotate(k, (r1, r2), fontsize=6)
        ax.set_xlabel(f"rank in single-task {task}")
        ax.set_ylabel("rank in multitask")
        ax.set_title(f"per {kind[:-1]}: Spearman {agree[kind]['spearman']:.2f}, Kendall {agree[kind]['kendall']:.2f}",
                     fontsize=9)
    fig.tight_layout()
    p = out / f"importance_{task}.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    return p


def fmt(x, nd=4):
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def decision_table(res: dict, cand: str, base: str, tasks: list[str]) -> list[str]:
    """Candidate minus baseline, for the numbers a ship / no-ship decision reads first."""
    c, b = res["models"][cand], res["models"][base]
    rows = [(f"{t} held-out AUC", c["own_auc"].get(t), b["own_auc"].get(t)) for t in tasks]
    if "lift" in c and "lift" in b:
        for v in ("sparse + tower score", "sparse + embedding"):
            rows.append((f"GBDT {c['lift']['task']} AUC, {v}", c["lift"][v]["auc"], b["lift"][v]["auc"]))
        rows.append(("embedding gain share", c["lift"]["sparse + embedding"]["embedding_gain_share"],
                     b["lift"]["sparse + embedding"]["embedding_gain_share"]))

    def off_diag(m):
        v = [m[d][h] for d in m for h in m[d] if h != d]
        return float(np.mean(v)) if v else None

    rows.append(("mean cross-task transfer AUC", off_diag(c["transfer"]), off_diag(b["transfer"])))
    md = ["## Candidate vs baseline", "", f"| | {cand.split(' + ')[0]} | {base.split(' + ')[0]} | difference |",
          "|---|---|---|---|"]
    for name, x, y in rows:
        d = f"{x - y:+.4f}" if x is not None and y is not None else ""
        md.append(f"| {name} | {fmt(x)} | {fmt(y)} | {d} |")
    return md + [""]


def render_report(res: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    plots = {"lift": plot_lift(res, out), "transfer": plot_transfer(res, out)}
    for t in res["tasks"]:
        plots[f"importance_{t}"] = plot_importance(res, t, out)
    labels = list(res["models"])
    tasks = list(res["tasks"])
    md = [f"# Evaluation: {labels[0]}", ""]
    if len(labels) > 1:
        md += [f"Baseline: **{labels[1]}**, evaluated on the same rows.", ""]
    md += ["Rows: " + ", ".join(f"{t} {v['rows']:,} {v['split']} rows ({v['positive_rate']:.1%} positive)"
                                for t, v in res["tasks"].items())
           + ". " + ("Test rows: never used to train the towers or to pick their epoch." if all(v["split"] == "test" for v in res["tasks"].values())
                     else "The run has no test split: validation rows, never trained on but used to pick the epoch "
                          "(train with a test_fraction / test split for unbiased numbers)."), "",
           "## Held-out AUC per task", "",
           "| model | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for k in labels:
        md.append(f"| {k} | " + " | ".join(fmt(res["models"][k]["own_auc"].get(t)) for t in tasks) + " |")
    md.append("| single-task models | " + " | ".join(fmt(res["single_task"]["transfer"][t].get(t)) for t in tasks) + " |")
    if "ceiling_auc" in res["models"][labels[0]]:
        md.append("| *true affinity (ceiling)* | " + " | ".join(fmt(res["models"][labels[0]]["ceiling_auc"][t]) for t in tasks) + " |")
    md.append("")
    if len(labels) > 1:
        md += decision_table(res, labels[0], labels[1], tasks)
    if plots["lift"]:
        lt = res["models"][labels[0]]["lift"]
        md += [f"## Downstream lift: a GBDT ranker for {lt['task']}", "",
               f"LightGBM on {lt['n_rows']:,} held-out {lt['task']} rows, {lt['folds']}-fold cross-fitted by member "
               "(each row scored by a ranker that did not train on it). *Sparse only*: the standardized features "
               "(single-valued taxonomy ids as categorical columns, same-value flags where both sides have the "
               "feature, overlap and counts of bag features such as skills). *+ tower score*: also the "
               "task head's logit. *+ Hadamard + score*: also the d-dimensional Hadamard product of the two "
               "embeddings. Gain share: the embedding features' share of the ranker's total split gain.", "",
               "Split gain favours continuous columns (a ranker also splits on pure-noise embeddings), so the "
               "table also gives the AUC drop when the embedding columns are shuffled across the held-out rows: "
               "read the gain share together with the lift and that drop.", "",
               "| model | sparse only AUC | + tower score AUC (gain share, shuffle drop) | + Hadamard + score AUC "
               "(gain share, shuffle drop) | tower score alone AUC |", "|---|---|---|---|---|"]
        for k in labels:
            l = res["models"][k].get("lift")
            if l:
                cells = [f"{fmt(l[v]['auc'])} ± {fmt(l[v]['fold_auc_std'], 3)}" for v in ("sparse only", "sparse + tower score", "sparse + embedding")]
                ts, se = l["sparse + tower score"], l["sparse + embedding"]
                md.append(f"| {k} | {cells[0]} | {cells[1]} ({ts['embedding_gain_share']:.0%}, {ts['embedding_permutation_drop']:+.3f}) | "
                          f"{cells[2]} ({se['embedding_gain_share']:.0%}, {se['embedding_permutation_drop']:+.3f}) | {fmt(l['tower_score_auc'])} |")
        md += ["", "(± is the std of the per-fold AUCs.)", "", "![lift](lift.png)", ""]
    md += ["## Cross-task transfer", "",
           "AUC of each task's held-out rows (row) scored through each task's head (column). Multitask: the "
           "shared towers with another task's head. Single-task: the other task's whole model.", ""]
    for title, m in [(f"multitask {k}", res["models"][k]["transfer"]) for k in labels] + \
                    [("single-task models", res["single_task"]["transfer"])]:
        md += [f"**{title}**", "", "| rows \\ head | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        md += [f"| {d} | " + " | ".join(fmt(m[d].get(h)) for h in tasks) + " |" for d in tasks]
        md.append("")
    md += ["![transfer](transfer.png)", "",
           "## Feature importance", "",
           "AUC drop on the task's held-out rows when a feature's values are permuted across entities (mean of "
           f"{res['models'][labels[0]]['importance'][tasks[0]]['repeats']} permutations), and, for high-cardinality "
           "features, when one value is removed from every entity that has it (the 30 most frequent values; "
           "`side.feature=taxonomy id`). Permutation rather than gradients: it runs on the exported ONNX towers, "
           "measures held-out AUC directly and treats bag features and single ids alike. Rank correlations "
           "compare the multitask towers' ranking with the single-task model's of the same task.", ""]
    for t in tasks:
        single = res["single_task"]["importance"][t]
        feats = sorted(single["features"], key=lambda f: -single["features"][f])
        md += [f"### {t}", "", "| feature | single-task | " + " | ".join(f"multitask {k.split(' + ')[0]}" for k in labels) + " |",
               "|---|---|" + "---|" * len(labels)]
        for f in feats:
            md.append(f"| {f} | {single['features'][f]:+.4f} | "
                      + " | ".join(fmt(res['models'][k]['importance'].get(t, {}).get('features', {}).get(f)) for k in labels) + " |")
        for k in labels:
            ra = res["models"][k]["rank_vs_single"].get(t)
            if ra:
                md.append(f"\n{k} vs single-task: per feature Spearman {fmt(ra['features']['spearman'], 2)}, Kendall "
                          f"{fmt(ra['features']['kendall'], 2)} (n={ra['features']['n']}); per value Spearman "
                          f"{fmt(ra['values']['spearman'], 2)}, Kendall {fmt(ra['values']['kendall'], 2)} (n={ra['values']['n']})")
        top = sorted(res["models"][labels[0]]["importance"][t]["values"].items(), key=lambda kv: -kv[1])[:5]
        if top:
            md.append("\nMost important values (multitask): " + ", ".join(f"{value_name(res, k)} ({v:+.4f})" for k, v in top))
        stop = sorted(res["single_task"]["importance"][t]["values"].items(), key=lambda kv: -kv[1])[:5]
        if stop:
            md.append("\nMost important values (single-task): " + ", ".join(f"{value_name(res, k)} ({v:+.4f})" for k, v in stop))
        md += ["", f"![importance {t}](importance_{t}.png)", ""]
    md += [f"_Generated by `nearline evaluate` in {res.get('seconds', 0):.0f} s._", ""]
    p = out / "report.md"
    p.write_text("\n".join(md))
    (out / "report.json").write_text(json.dumps(res, indent=1, default=float))
    return p


def value_names(cfg, res: dict) -> dict[str, str]:
    """'side.feature=id' -> the taxonomy's name of the value, where the source has names (marketplace)."""
    if cfg.source != "marketplace" or "data_dir" not in cfg.source_args:
        return {}
    from nearline.marketplace.taxonomy import Taxonomies
    from nearline.models.data import MARKETPLACE_FEATURES

    tax = Taxonomies.load(Path(cfg.source_args["data_dir"]) / "taxonomies.json")
    keys = {k for r in list(res["models"].values()) + [res["single_task"]] for imp in r["importance"].values()
            for k in imp["values"]}
    out = {}
    for k in keys:
        feat, _, v = k.split(".", 1)[1].partition("=")
        names = getattr(tax, MARKETPLACE_FEATURES[feat][1], None) if feat in MARKETPLACE_FEATURES else None
        if names and int(v) < len(names):
            out[k] = names[int(v)]
    return out


def value_name(res: dict, key: str) -> str:
    name = res.get("value_names", {}).get(key)
    return f"{key.split('=')[0]}={name}" if name else key
