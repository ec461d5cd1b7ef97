"""`nearline evaluate`: decide whether an embedding version ships, from one page.

Four evaluations of a two-tower model (a trained run or a registered member/job package pair), all on
rows the towers never trained on (the task's test rows if the split has them, else its validation rows):

* **Downstream lift** (:func:`downstream_lift`): a LightGBM ranker for one task (apply), trained with the
  sparse standardized features alone and again with features from the embeddings (the Hadamard product
  of the two embeddings and the task's tower score). Cross-fitted over K folds of the held-out rows, so
  every row is scored by a ranker that did not see it; reports both test AUCs and the share of the
  ranker's split gain the embedding features take.
* **Cross-task transfer** (:func:`cross_task_transfer`): each task's rows through every task's head, for
  the multitask model and for single-task models (same config restricted to one task, same split).
* **Feature importance** (:func:`feature_importance`): per input feature, the drop in AUC when that
  feature's values are permuted across entities; per value of a high-cardinality feature (skills,
  company), the drop when that one value is removed from every entity that has it. Permutation /
  ablation rather than gradients because it works on the exported ONNX packages (the thing that ships),
  measures the quantity we care about (held-out AUC) directly, and treats multi-valued bag features
  and single ids alike; its cost is one re-embedding of one side per probe, milliseconds here.
  Rank-vs-rank comparisons (Spearman and Kendall) between single-task and multitask towers.
* **Side by side** (``baseline``): the same numbers for a second version on the same rows.

The report (Markdown + PNG + JSON) goes to ``<run>/evaluation/``. LightGBM (PyPI ``lightgbm``) rather than
XGBoost: native categorical splits for the taxonomy ids without one-hot encoding and a small wheel.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .data import EntityTable, encode_rows
from .tower import FeatureSpec

SIDES = ("member", "job")


class EvaluationError(ValueError):
    """A problem the user can fix (missing data, unknown version); the CLI prints it on one line."""


# ---------------------------------------------------------------- the model under evaluation
@dataclass
class TwoTowerModel:
    """A member tower, a job tower and per-task Hadamard heads, behind one embedding function.

    ``embed_fn(side, feeds)`` maps a dict of input arrays (the tower's ONNX inputs) to [N, d] embeddings;
    it is an ONNX session for a registered package and the PyTorch tower for an in-memory model.
    """

    label: str
    specs: dict[str, list[FeatureSpec]]
    heads: dict[str, tuple[np.ndarray, float]]
    embed_fn: Callable[[str, dict[str, np.ndarray]], np.ndarray]
    provenance: dict = field(default_factory=dict)

    @classmethod
    def from_packages(cls, member_dir: Path, job_dir: Path) -> "TwoTowerModel":
        import onnxruntime as ort

        from nearline.registry import check_package

        sessions, specs, mans = {}, {}, {}
        for side, d in (("member", member_dir), ("job", job_dir)):
            pkg, problems = check_package(Path(d))
            if problems:
                raise EvaluationError(f"package {d} is broken: {'; '.join(problems)}")
            m = pkg.manifest
            if m.entity_type != side:
                raise EvaluationError(f"package {d} embeds {m.entity_type}s, expected a {side} tower")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            sessions[side] = ort.InferenceSession(str(pkg.onnx_path), opts, providers=["CPUExecutionProvider"])
            specs[side] = [FeatureSpec(name=f.name, standardizer=f.standardizer, vocab_size=f.vocab_size,
                                       max_len=f.max_len, weighted=f.weighted, default_ids=tuple(f.default_ids),
                                       pad_id=f.pad_id, oov_id=f.oov_id,
                                       kept_ids=tuple(f.kept_ids) if f.kept_ids is not None else None)
                           for f in m.inputs]
            mans[side] = m
        head = mans["member"].head or mans["job"].head
        if not head:
            raise EvaluationError(f"{mans['member'].key} has no scoring heads in its manifest; cannot score pairs")
        heads = {t: (np.asarray(h["w"], dtype=np.float32), float(h["b"])) for t, h in head.items()}

        def embed(side, feeds):
            s = sessions[side]
            return s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()})[0]

        label = f"{mans['member'].key} + {mans['job'].key}"
        return cls(label, specs, heads, embed, dict(mans["member"].provenance))

    @classmethod
    def from_multitask(cls, model, label: str, tasks: list[str] | None = None) -> "TwoTowerModel":
        """An in-memory :class:`models.multitask.MultitaskModel` (its first task's towers)."""
        import torch

        model.eval()
        tasks = tasks or list(model.task_modules)
        towers = {side: model.tower(side, tasks[0]) for side in SIDES}
        heads = {}
        for t in tasks:
            lin = model.modules_by_name[model.task_modules[t]["head"]].lin
            heads[t] = (lin.weight.detach().squeeze(0).numpy().astype(np.float32), float(lin.bias.detach()))

        @torch.no_grad()
        def embed(side, feeds):
            return towers[side]({k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()

        specs = {side: list(towers[side].cfg.features) for side in SIDES}
        return cls(label, specs, heads, embed)

    # -- scoring
    def embed_table(self, side: str, table: EntityTable, present: set[str],
                    override: dict[str, tuple[np.ndarray, np.ndarray | None]] | None = None) -> np.ndarray:
        feeds = entity_feeds(table, self.specs[side], present, override)
        n = len(table.ids)
        out = [self.embed_fn(side, {k: v[s: s + 8192] for k, v in feeds.items()}) for s in range(0, n, 8192)]
        return np.concatenate(out).astype(np.float32)

    def logits(self, task: str, m_emb: np.ndarray, j_emb: np.ndarray, rows: pd.DataFrame) -> np.ndarray:
        w, b = self.heads[task]
        m = m_emb[rows.member_idx.to_numpy()]
        j = j_emb[rows.job_idx.to_numpy()]
        return (m * j) @ w + b


def entity_feeds(table: EntityTable, specs: list[FeatureSpec], present: set[str],
                 override: dict[str, tuple[np.ndarray, np.ndarray | None]] | None = None) -> dict[str, np.ndarray]:
    """Tower inputs for every entity of a table, encoded exactly as at serving time. A feature the task's
    data lacks is filled with its declared default; ``override`` replaces a feature's taxonomy ids (and
    weights) for a probe."""
    n = len(table.ids)
    out = {}
    for spec in specs:
        if spec.name in present and spec.name in table.features:
            ids = table.features[spec.name]
            w = table.weights.get(spec.name)
            if override and spec.name in override:
                ids, w2 = override[spec.name]
                w = w2 if w2 is not None else w
            ids = _fit(ids, spec.max_len, -1).astype(np.int64)
            out[spec.name] = encode_rows(spec, ids)
            if spec.weighted:
                w = np.ones(ids.shape, np.float32) if w is None else _fit(w, spec.max_len, 0.0).astype(np.float32)
                out[f"{spec.name}__weight"] = np.ascontiguousarray(w)
        else:
            d = np.full((1, spec.max_len), -1, dtype=np.int64)
            d[0, : len(spec.default_ids)] = spec.default_ids[: spec.max_len]
            rows = encode_rows(spec, d)
            out[spec.name] = np.repeat(rows, n, axis=0)
            if spec.weighted:
                out[f"{spec.name}__weight"] = (out[spec.name] != spec.pad_id).astype(np.float32)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _fit(a: np.ndarray, width: int, fill) -> np.ndarray:
    if a.shape[1] >= width:
        return a[:, :width]
    return np.concatenate([a, np.full((a.shape[0], width - a.shape[1]), fill, dtype=a.dtype)], axis=1)


def auc(labels, scores) -> float:
    from .multitask import auc as _auc

    return _auc(labels, scores)


# ---------------------------------------------------------------- data under evaluation
@dataclass
class EvalTask:
    name: str
    rows: pd.DataFrame      # held-out rows (test if the split has them, else validation)
    present: dict[str, set[str]]
    split: str              # 'test' or 'val'


@dataclass
class EvalData:
    tables: dict[str, EntityTable]
    tasks: dict[str, EvalTask]
    task_data: list = field(default_factory=list)   # models.multitask.TaskData, for single-task training
    frames: dict = field(default_factory=dict)
    config: object = None

    @classmethod
    def from_config(cls, cfg, tables=None, frames=None) -> "EvalData":
        """Rebuild the run's split from its config (same seed, same rows held out)."""
        from .multitask import load_source, prepare_tasks

        if tables is None:
            tables, frames = load_source(cfg)
        tds = prepare_tasks(cfg, frames, tables)
        tasks = {}
        for td in tds:
            split = "test" if len(td.test) else "val"
            tasks[td.name] = EvalTask(td.name, getattr(td, split), td.present, split)
        return cls(tables, tasks, tds, frames, cfg)


class Embeddings:
    """Embeddings of every entity per (model, side, features present), computed once."""

    def __init__(self, data: EvalData):
        self.data, self.cache = data, {}

    def get(self, model: TwoTowerModel, side: str, present: set[str]) -> np.ndarray:
        key = (id(model), side, frozenset(present))
        if key not in self.cache:
            self.cache[key] = model.embed_table(side, self.data.tables[side], present)
        return self.cache[key]

    def logits(self, model: TwoTowerModel, head: str, task: EvalTask) -> np.ndarray:
        m = self.get(model, "member", task.present["member"])
        j = self.get(model, "job", task.present["job"])
        return model.logits(head, m, j, task.rows)


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


# ---------------------------------------------------------------- (c) feature importance
def _permuted(table: EntityTable, feat: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    perm = rng.permutation(len(table.ids))
    w = table.weights.get(feat)
    return table.features[feat][perm], (w[perm] if w is not None else None)


def _without_value(table: EntityTable, feat: str, value: int) -> tuple[np.ndarray, np.ndarray | None]:
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
            drops = [base - score(side, {f: _permuted(table, f, rng)}) for _ in range(repeats)]
            per_feature[f"{side}.{f}"] = float(np.mean(drops))
            if high_cardinality(table, f):
                used = table.features[f][et.rows[f"{side}_idx"].to_numpy()]
                vals, counts = np.unique(used[used > 0], return_counts=True)
                for v in vals[np.argsort(-counts, kind="stable")][:top_values]:
                    per_value[f"{side}.{f}={int(v)}"] = float(base - score(side, {f: _without_value(table, f, int(v))}))
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


# ---------------------------------------------------------------- single-task models
def train_single_task(data: EvalData, task: str, epochs: int | None = None, progress: bool = False) -> TwoTowerModel:
    """The run's config restricted to one task, trained on the same train/val rows (early stopping on
    val), so it never sees the held-out rows the evaluation scores."""
    import torch

    from .multitask import Trainer

    cfg = data.config.only(task)
    if epochs:
        cfg.epochs = epochs
    trainer = Trainer(cfg, data.tables, data.frames, progress=False)
    # prepare_tasks draws each task's random split from one generator in task order: restricted to one
    # task it would hold out other rows. Use the full config's rows instead.
    trainer.tasks = [td for td in data.task_data if td.name == task]
    torch.set_num_threads(1)
    res = trainer.fit()
    return TwoTowerModel.from_multitask(res.model, f"single-task {task}", [task])


# ---------------------------------------------------------------- the whole evaluation
def evaluate_models(models: dict[str, TwoTowerModel], data: EvalData, lift_task: str = "apply",
                    single_epochs: int | None = None, progress: bool = True, folds: int = 5,
                    repeats: int = 3, top_values: int = 30, singles: dict[str, TwoTowerModel] | None = None) -> dict:
    """Every evaluation for each model in ``models`` (label -> model; the first is the candidate), with
    one set of single-task models as the reference for transfer and importance ranks."""
    from tqdm import tqdm

    emb = Embeddings(data)
    tasks = list(data.tasks)
    singles = dict(singles or {})
    need = [t for t in tasks if t not in singles]
    probes = sum(n_probes(m, t, data, repeats, top_values) for m in models.values() for t in tasks if t in m.heads)
    probes += sum(n_probes(next(iter(models.values())), t, data, repeats, top_values) for t in tasks)
    bar = tqdm(total=len(need) * 40 + len(models) * 30 + probes, desc="evaluate", unit="step", disable=not progress)
    for t in need:
        bar.set_postfix_str(f"training single-task {t}")
        singles[t] = train_single_task(data, t, single_epochs)
        bar.update(40)
    out = {"tasks": {t: {"split": et.split, "rows": len(et.rows), "positive_rate": float(et.rows.label.mean())}
                     for t, et in data.tasks.items()},
           "models": {}, "single_task": {}}
    tick = bar.update
    for label, model in models.items():
        r = {}
        if lift_task in data.tasks and lift_task in model.heads:
            bar.set_postfix_str(f"{label}: downstream lift")
            r["lift"] = downstream_lift(model, data, emb, lift_task, folds=folds)
        bar.update(25)
        bar.set_postfix_str(f"{label}: transfer")
        r["transfer"] = cross_task_transfer({t: model for t in tasks if t in model.heads}, data, emb)
        r["own_auc"] = {t: r["transfer"][t].get(t) for t in tasks}
        if "true_logit" in next(iter(data.tasks.values())).rows:
            r["ceiling_auc"] = {t: auc(et.rows.label, et.rows.true_logit) for t, et in data.tasks.items()}
        bar.update(5)
        r["importance"] = {}
        for t in tasks:
            if t in model.heads:
                bar.set_postfix_str(f"{label}: importance {t}")
                r["importance"][t] = feature_importance(model, t, data, repeats, top_values, on_probe=lambda: tick(1))
        out["models"][label] = r
    s = {"transfer": cross_task_transfer(singles, data, emb), "importance": {}}
    for t in tasks:
        bar.set_postfix_str(f"single-task {t}: importance")
        s["importance"][t] = feature_importance(singles[t], t, data, repeats, top_values, on_probe=lambda: tick(1))
    out["single_task"] = s
    for label, r in out["models"].items():
        r["rank_vs_single"] = {t: {"features": rank_agreement(s["importance"][t]["features"], imp["features"]),
                                   "values": rank_agreement(s["importance"][t]["values"], imp["values"])}
                               for t, imp in r["importance"].items()}
    bar.close()
    return out


# ---------------------------------------------------------------- report
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lift(res: dict, out: Path) -> Path | None:
    labels = [k for k, r in res["models"].items() if "lift" in r]
    if not labels:
        return None
    plt = _plt()
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
    plt = _plt()
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
    plt = _plt()
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


def _f(x, nd=4):
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
        md.append(f"| {name} | {_f(x)} | {_f(y)} | {d} |")
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
        md.append(f"| {k} | " + " | ".join(_f(res["models"][k]["own_auc"].get(t)) for t in tasks) + " |")
    md.append("| single-task models | " + " | ".join(_f(res["single_task"]["transfer"][t].get(t)) for t in tasks) + " |")
    if "ceiling_auc" in res["models"][labels[0]]:
        md.append("| *true affinity (ceiling)* | " + " | ".join(_f(res["models"][labels[0]]["ceiling_auc"][t]) for t in tasks) + " |")
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
                cells = [f"{_f(l[v]['auc'])} ± {_f(l[v]['fold_auc_std'], 3)}" for v in ("sparse only", "sparse + tower score", "sparse + embedding")]
                ts, se = l["sparse + tower score"], l["sparse + embedding"]
                md.append(f"| {k} | {cells[0]} | {cells[1]} ({ts['embedding_gain_share']:.0%}, {ts['embedding_permutation_drop']:+.3f}) | "
                          f"{cells[2]} ({se['embedding_gain_share']:.0%}, {se['embedding_permutation_drop']:+.3f}) | {_f(l['tower_score_auc'])} |")
        md += ["", "(± is the std of the per-fold AUCs.)", "", "![lift](lift.png)", ""]
    md += ["## Cross-task transfer", "",
           "AUC of each task's held-out rows (row) scored through each task's head (column). Multitask: the "
           "shared towers with another task's head. Single-task: the other task's whole model.", ""]
    for title, m in [(f"multitask {k}", res["models"][k]["transfer"]) for k in labels] + \
                    [("single-task models", res["single_task"]["transfer"])]:
        md += [f"**{title}**", "", "| rows \\ head | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        md += [f"| {d} | " + " | ".join(_f(m[d].get(h)) for h in tasks) + " |" for d in tasks]
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
                      + " | ".join(_f(res['models'][k]['importance'].get(t, {}).get('features', {}).get(f)) for k in labels) + " |")
        for k in labels:
            ra = res["models"][k]["rank_vs_single"].get(t)
            if ra:
                md.append(f"\n{k} vs single-task: per feature Spearman {_f(ra['features']['spearman'], 2)}, Kendall "
                          f"{_f(ra['features']['kendall'], 2)} (n={ra['features']['n']}); per value Spearman "
                          f"{_f(ra['values']['spearman'], 2)}, Kendall {_f(ra['values']['kendall'], 2)} (n={ra['values']['n']})")
        top = sorted(res["models"][labels[0]]["importance"][t]["values"].items(), key=lambda kv: -kv[1])[:5]
        if top:
            md.append("\nMost important values (multitask): " + ", ".join(f"{_vname(res, k)} ({v:+.4f})" for k, v in top))
        stop = sorted(res["single_task"]["importance"][t]["values"].items(), key=lambda kv: -kv[1])[:5]
        if stop:
            md.append("\nMost important values (single-task): " + ", ".join(f"{_vname(res, k)} ({v:+.4f})" for k, v in stop))
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
    from .data import MARKETPLACE_FEATURES
    from nearline.marketplace.taxonomy import Taxonomies

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


def _vname(res: dict, key: str) -> str:
    name = res.get("value_names", {}).get(key)
    return f"{key.split('=')[0]}={name}" if name else key


# ---------------------------------------------------------------- resolving what to evaluate
def resolve_pair(target: str, registry_path: Path) -> tuple[Path, Path]:
    """A run folder (its packages/) or NAME@VERSION of a registered package -> (member dir, job dir).
    The partner tower is the registered package of the other entity type with the same version and
    training config."""
    from nearline.registry import Manifest, Registry

    p = Path(target)
    if p.is_dir():
        found = {}
        if (p / "summary.json").exists():  # nearline train's record says where the packages went
            for side, d in json.loads((p / "summary.json").read_text()).get("packages", {}).items():
                if (Path(d) / "manifest.json").exists():
                    found[side] = Path(d)
        for man in sorted(p.glob("packages/*/*/manifest.json")) + sorted(p.glob("*/*/manifest.json")) + sorted(p.glob("manifest.json")):
            m = json.loads(man.read_text())
            found.setdefault(m["entity_type"], man.parent)
        if "member" in found and "job" in found:
            return found["member"], found["job"]
        raise EvaluationError(f"{p} has no member and job packages (expected packages/<name>/<version>/manifest.json)")
    if "@" not in target:
        raise EvaluationError(f"{target!r} is neither a run folder nor NAME@VERSION of a registered model")
    reg = Registry(registry_path)
    mans = []
    for e in reg.entries():
        mp = reg.resolve(e) / "manifest.json"
        if mp.exists():
            mans.append((reg.resolve(e), Manifest.from_json(json.loads(mp.read_text()))))
    hit = [(d, m) for d, m in mans if m.key == target]
    if not hit:
        raise EvaluationError(f"{target} is not registered in {registry_path} (see `nearline models list`)")
    d, m = hit[0]
    other = "job" if m.entity_type == "member" else "member"
    partners = [(d2, m2) for d2, m2 in mans if m2.entity_type == other and m2.version == m.version
                and m2.provenance.get("config") == m.provenance.get("config")]
    if not partners:
        raise EvaluationError(f"no registered {other} tower with version {m.version} from the same config as {target}")
    pair = {m.entity_type: d, other: partners[0][0]}
    return pair["member"], pair["job"]


def run_evaluation(target: str, baseline: str | None = None, registry_path: Path = Path("models/registry.yaml"),
                   out_dir: Path | None = None, config_path: Path | None = None, data_dir: Path | None = None,
                   lift_task: str | None = None, single_epochs: int | None = None, progress: bool = True,
                   max_rows_per_task: int | None = None) -> Path:
    import torch

    from .multitask import TrainConfig

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    member_dir, job_dir = resolve_pair(target, registry_path)
    model = TwoTowerModel.from_packages(member_dir, job_dir)
    models = {model.label: model}
    if baseline:
        b = TwoTowerModel.from_packages(*resolve_pair(baseline, registry_path))
        if b.label == model.label:
            raise EvaluationError(f"the baseline {baseline} is the version under evaluation")
        models[b.label] = b
    cfg_path = Path(config_path) if config_path else None
    if cfg_path is None:
        cfg_name = model.provenance.get("config")
        if not cfg_name:
            raise EvaluationError(f"{model.label} does not say which training config made it; pass --train-config")
        cfg_path = Path(cfg_name)
    repo = Path(__file__).resolve().parent.parent
    if not cfg_path.exists() and not cfg_path.is_absolute() and (repo / cfg_path).exists():
        cfg_path = repo / cfg_path   # manifests name the config relative to the repository
    if not cfg_path.exists():
        raise EvaluationError(f"training config {cfg_path} not found (pass --train-config FILE)")
    cfg = TrainConfig.from_yaml(cfg_path)
    if data_dir:
        cfg.source_args = {**cfg.source_args, "data_dir": str(data_dir)}
    elif "data_dir" in cfg.source_args and not Path(cfg.source_args["data_dir"]).exists() \
            and (repo / cfg.source_args["data_dir"]).exists():
        cfg.source_args = {**cfg.source_args, "data_dir": str(repo / cfg.source_args["data_dir"])}
    if max_rows_per_task:
        cfg.max_rows_per_task = max_rows_per_task
    if model.provenance.get("split") not in (None, cfg.split):
        raise EvaluationError(f"{model.label} was trained with split {model.provenance['split']}, the config {cfg_path} "
                              f"says {cfg.split}: its held-out rows cannot be rebuilt (pass --train-config)")
    dd = cfg.source_args.get("data_dir")
    if dd and not Path(dd).exists():
        raise EvaluationError(f"training data {dd} not found: generate it (`nearline marketplace generate`) or pass --data-dir")
    data = EvalData.from_config(cfg)
    if lift_task is None:
        lift_task = "apply" if "apply" in data.tasks else next(iter(data.tasks))
    elif lift_task not in data.tasks:
        raise EvaluationError(f"--lift-task {lift_task}: the run's tasks are {', '.join(data.tasks)}")
    res = evaluate_models(models, data, lift_task, single_epochs, progress)
    res["value_names"] = value_names(cfg, res)
    res["seconds"] = time.perf_counter() - t0
    res["config"] = str(cfg_path)
    if out_dir is None:
        p = Path(target)
        out_dir = (p / "evaluation") if p.is_dir() else Path("runs") / f"evaluate-{target.replace('@', '-')}"
    return render_report(res, Path(out_dir))
