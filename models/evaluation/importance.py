"""Feature importance of a tower by permutation, and how two rankings of importance agree.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from nearline.models.data import EntityTable
from nearline.models.evaluation.twotower import SIDES, EvalData, TwoTowerModel, auc


# ---------------------------------------------------------------- (c) feature importance
def permuted(table: EntityTable, feat: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    perm = rng.permutation(len(table.ids))
    w = table.weights.get(feat)
    return table.features[feat][perm], (w[perm] if w is not None else None)


def without_value(table: EntityTable, feat: str, value: int) -> tuple[np.ndarray, np.ndarray | None]:
    ids = table.features[feat].copy()
    w = table.weights.get(feat)
    hit = ids == value
    if ids.shape[1] == 1:
        ids[hit] = 0   # a single id becomes 'unknown' (taxonomy id 0), as a missing value would be
        return ids, w
    ids[hit] = -1      # one of several values is dropped from the bag
    if w is not None:
        w = w.copy()
        w[hit] = 0.0
    return ids, w


def high_cardinality(table: EntityTable, feat: str, min_values: int = 50) -> bool:
    return table.features[feat].shape[1] > 1 or len(np.unique(table.features[feat])) >= min_values


def feature_importance(model: TwoTowerModel, task: str, data: EvalData, repeats: int = 3, top_values: int = 30,
                       seed: int = 0, on_probe: Callable[[], None] | None = None) -> dict:
    """AUC drop of ``model`` on ``task``'s held-out rows when one input feature is permuted across
    entities (mean over ``repeats`` permutations), and, for high-cardinality features, when one value
    (the ``top_values`` most frequent among the rows' entities) is removed."""
    et = data.tasks[task]
    y = et.rows.label.to_numpy()
    base_emb = {s: model.embed_table(s, data.tables[s], et.present[s]) for s in SIDES}
    base = auc(y, model.logits(task, base_emb["member"], base_emb["job"], et.rows))
    rng = np.random.default_rng(seed)
    per_feature, per_value = {}, {}

    def score(side, override):
        e = dict(base_emb)
        e[side] = model.embed_table(side, data.tables[side], et.present[side], override)
        if on_probe:
            on_probe()
        return auc(y, model.logits(task, e["member"], e["job"], et.rows))

    for side in SIDES:
        table = data.tables[side]
        for spec in model.specs[side]:
            f = spec.name
            if f not in et.present[side] or f not in table.features:
                continue  # filled with the default for this task: permuting it changes nothing
            drops = [base - score(side, {f: permuted(table, f, rng)}) for _ in range(repeats)]
            per_feature[f"{side}.{f}"] = float(np.mean(drops))
            if high_cardinality(table, f):
                used = table.features[f][et.rows[f"{side}_idx"].to_numpy()]
                vals, counts = np.unique(used[used > 0], return_counts=True)
                for v in vals[np.argsort(-counts, kind="stable")][:top_values]:
                    per_value[f"{side}.{f}={int(v)}"] = float(base - score(side, {f: without_value(table, f, int(v))}))
    return {"base_auc": base, "features": per_feature, "values": per_value, "repeats": repeats}


def n_probes(model: TwoTowerModel, task: str, data: EvalData, repeats: int = 3, top_values: int = 30) -> int:
    et, n = data.tasks[task], 0
    for side in SIDES:
        for spec in model.specs[side]:
            if spec.name in et.present[side] and spec.name in data.tables[side].features:
                n += repeats
                if high_cardinality(data.tables[side], spec.name):
                    used = data.tables[side].features[spec.name][et.rows[f"{side}_idx"].to_numpy()]
                    n += min(top_values, len(np.unique(used[used > 0])))
    return n


def rank_agreement(a: dict[str, float], b: dict[str, float]) -> dict:
    """Ranks (1 = most important) of the keys both have, and Spearman / Kendall correlations."""
    from scipy.stats import kendalltau, spearmanr

    keys = [k for k in a if k in b]
    ra = pd.Series({k: a[k] for k in keys}).rank(ascending=False, method="average")
    rb = pd.Series({k: b[k] for k in keys}).rank(ascending=False, method="average")
    if len(keys) < 3:
        return {"n": len(keys), "spearman": float("nan"), "kendall": float("nan"), "ranks": {}}
    return {"n": len(keys), "spearman": float(spearmanr(ra, rb)[0]), "kendall": float(kendalltau(ra, rb)[0]),
            "ranks": {k: [float(ra[k]), float(rb[k])] for k in keys}}
