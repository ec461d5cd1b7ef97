"""Downstream lift: boosted-tree rankers with sparse features alone against sparse + embedding features, and cross-task transfer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nearline.models.data import EntityTable
from nearline.models.evaluation.twotower import SIDES, Embeddings, EvalData, EvaluationError, TwoTowerModel, auc


# ---------------------------------------------------------------- (a) downstream lift
def sparse_ranker_features(tables: dict[str, EntityTable], rows: pd.DataFrame,
                           present: dict[str, set[str]]) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
    """Standardized features of each (member, job) row as a tree model sees them: single-valued
    taxonomy ids as categorical columns plus a same-value flag where both sides have the feature;
    multi-valued ones as the overlap count and each side's count. Returns (frame, categorical columns,
    column -> feature family)."""
    cols, cats, family = {}, [], {}
    mi, ji = rows.member_idx.to_numpy(), rows.job_idx.to_numpy()
    mt, jt = tables["member"], tables["job"]
    names = list(dict.fromkeys(list(mt.features) + list(jt.features)))
    for f in names:
        has = {s: f in tables[s].features and f in present[s] for s in SIDES}
        vals = {s: tables[s].features[f][idx] for s, idx in (("member", mi), ("job", ji)) if has[s]}
        width = max(v.shape[1] for v in vals.values()) if vals else 0
        if not vals:
            continue
        if width == 1:
            for s, v in vals.items():
                c = f"{s}_{f}"
                cols[c] = np.where(v[:, 0] < 0, -1, v[:, 0]).astype(np.int64)
                cats.append(c)
                family[c] = f
            if len(vals) == 2:
                c = f"same_{f}"
                cols[c] = ((vals["member"][:, 0] == vals["job"][:, 0]) & (vals["member"][:, 0] > 0)).astype(np.int8)
                family[c] = f
        else:
            for s, v in vals.items():
                c = f"{s}_{f}_count"
                cols[c] = (v >= 0).sum(1)
                family[c] = f
            if len(vals) == 2:
                m, j = vals["member"], vals["job"]
                overlap = ((m[:, :, None] == j[:, None, :]) & (m[:, :, None] >= 0)).sum((1, 2))
                cols[f"{f}_overlap"] = overlap
                family[f"{f}_overlap"] = f
    return pd.DataFrame(cols, index=rows.index), cats, family


def downstream_lift(model: TwoTowerModel, data: EvalData, emb: Embeddings | None = None, task: str = "apply",
                    folds: int = 5, seed: int = 0, rounds: int = 500) -> dict:
    """Cross-fitted LightGBM ranker on the held-out rows of ``task``: sparse features alone vs sparse +
    embedding features (Hadamard product h_0..h_{d-1} and the tower score). Folds split by member, so a
    member's rows are never in both the fold that trains and the one that is scored."""
    import lightgbm as lgb

    emb = emb or Embeddings(data)
    if task not in data.tasks:
        raise EvaluationError(f"downstream lift: no task {task!r}; have {sorted(data.tasks)}")
    et = data.tasks[task]
    rows = et.rows.reset_index(drop=True)
    y = rows.label.to_numpy().astype(np.float32)
    base, cats, family = sparse_ranker_features(data.tables, rows, et.present)
    m = emb.get(model, "member", et.present["member"])[rows.member_idx.to_numpy()]
    j = emb.get(model, "job", et.present["job"])[rows.job_idx.to_numpy()]
    had = m * j
    w, b = model.heads[task]
    ext = base.copy()
    for k in range(had.shape[1]):
        ext[f"h_{k}"] = had[:, k]
        family[f"h_{k}"] = "embedding: Hadamard product"
    ext["tower_score"] = had @ w + b
    family["tower_score"] = "embedding: tower score"
    rng = np.random.default_rng(seed)
    members = rows.member_idx.unique()
    fold_of_member = dict(zip(members, rng.permutation(len(members)) % folds))
    fold = rows.member_idx.map(fold_of_member).to_numpy()
    params = {"objective": "binary", "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 20,
              "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
              "num_threads": 1, "verbose": -1, "seed": seed, "deterministic": True, "force_row_wise": True}
    out = {}
    score_only = base.assign(tower_score=ext["tower_score"])
    for variant, X in (("sparse only", base), ("sparse + tower score", score_only), ("sparse + embedding", ext)):
        oof = np.zeros(len(rows))
        oof_shuffled = np.zeros(len(rows))
        gains = pd.Series(0.0, index=X.columns)
        fold_aucs, n_trees = [], []
        emb_cols = [c for c in X.columns if family[c].startswith("embedding")]
        cat_cols = [c for c in cats if c in X.columns]
        for k in range(folds):
            tr, te = fold != k, fold == k
            if y[tr].min() == y[tr].max() or y[te].min() == y[te].max():
                continue
            # early stopping on an inner member-disjoint slice of the training folds
            inner = tr & (fold == (k + 1) % folds)
            fit = tr & ~inner
            ds = lgb.Dataset(X[fit], y[fit], categorical_feature=cat_cols, free_raw_data=False)
            dv = lgb.Dataset(X[inner], y[inner], reference=ds, categorical_feature=cat_cols)
            booster = lgb.train(params, ds, num_boost_round=rounds, valid_sets=[dv],
                                callbacks=[lgb.early_stopping(30, verbose=False)])
            n_trees.append(booster.best_iteration or rounds)
            oof[te] = booster.predict(X[te], num_iteration=booster.best_iteration)
            fold_aucs.append(auc(y[te], oof[te]))
            gains += pd.Series(booster.feature_importance("gain", iteration=booster.best_iteration),
                               index=booster.feature_name()).reindex(X.columns).fillna(0)
            if emb_cols:  # the embedding columns shuffled together across held-out rows
                Xs = X[te].copy()
                Xs[emb_cols] = Xs[emb_cols].to_numpy()[rng.permutation(int(te.sum()))]
                oof_shuffled[te] = booster.predict(Xs, num_iteration=booster.best_iteration)
        total = gains.sum() or 1.0
        by_family = gains.groupby(pd.Series(family)).sum().reindex(sorted(set(family[c] for c in X.columns)))
        out[variant] = {"auc": auc(y, oof), "fold_auc_mean": float(np.mean(fold_aucs)) if fold_aucs else float("nan"),
                        "fold_auc_std": float(np.std(fold_aucs)) if fold_aucs else float("nan"),
                        "gain_share": {k: float(v / total) for k, v in by_family.items() if v > 0},
                        "embedding_gain_share": float(sum(v for c, v in gains.items() if family[c].startswith("embedding")) / total),
                        "embedding_permutation_drop": float(auc(y, oof) - auc(y, oof_shuffled)) if emb_cols else 0.0,
                        "trees": float(np.mean(n_trees)) if n_trees else 0.0}
    out["tower_score_auc"] = auc(y, ext["tower_score"].to_numpy())
    out["lift"] = out["sparse + embedding"]["auc"] - out["sparse only"]["auc"]
    out["lift_tower_score"] = out["sparse + tower score"]["auc"] - out["sparse only"]["auc"]
    out["n_rows"], out["positive_rate"], out["folds"], out["task"] = len(rows), float(y.mean()), folds, task
    return out


# ---------------------------------------------------------------- (b) cross-task transfer
def cross_task_transfer(models_by_head: dict[str, TwoTowerModel], data: EvalData, emb: Embeddings | None = None) -> dict:
    """AUC of each task's held-out rows (rows of the table) scored by each task's head (columns).
    ``models_by_head`` maps a head's task to the model that has it: the same multitask model for every
    task, or each task's own single-task model."""
    emb = emb or Embeddings(data)
    out = {}
    for d, et in data.tasks.items():
        y = et.rows.label.to_numpy()
        out[d] = {h: auc(y, emb.logits(model, h, et)) for h, model in models_by_head.items()
                  if h in model.heads}
    return out
