"""A config-driven multitask training framework for two-tower models.

* Tasks declare their dataset (or a filtered / down-sampled view of another task's), label, loss,
  loss weight, learning rate, batch size, the features they have, and their architecture.
* Features are unified into one input schema per side; a feature a task lacks is filled with the
  declared default ids. The unified schema is what the exported manifests describe.
* Modules with the same name and the same configuration across tasks are one shared module; the rest
  are task-specific. :meth:`MultitaskModel.sharing_report` says which is which.
* Joint training (one optimizer, combined batches, weighted or learned-uncertainty-weighted sum of task
  losses) and iterative training (tasks take turns, each with its own optimizer and learning rate).
  Single-task training is the same code with one task.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn

from nearline.models.data import EntityTable
from nearline.models.feature_store import SIDES, FeatureStore
from nearline.models.metrics import auc, log_loss
from nearline.models.task_balancing import GRADIENTS
from nearline.models.task_balancing import backward as joint_backward
from nearline.models.task_balancing import task_loss
from nearline.models.tower import FeatureSpec, HadamardHead, PyramidTower, TowerConfig


# ---------------------------------------------------------------- config
@dataclass
class TaskConfig:
    name: str
    dataset: str
    """Dataset of the source, or another task's dataset name to take a view of."""
    label: str = "label"
    loss: str = "bce"
    """'bce' (log loss) or 'focal' (focal loss, gamma 2) for very sparse labels."""
    loss_weight: float = 1.0
    lr: float = 3e-3
    batch_size: int = 512
    filter: str | None = None
    """Optional pandas query on the dataset, e.g. 'label == 1' or 'time < 880000000'."""
    sample: float | None = None
    """Optional down-sampling fraction of the (filtered) dataset."""
    features: dict[str, list[str]] | None = None
    """Features this task's data has, per side; missing ones are filled with defaults. None = all."""
    architecture: dict[str, dict] = field(default_factory=dict)
    """member_tower / job_tower / head: {name: ..., **config}. Same name + same config = shared."""


@dataclass
class TrainConfig:
    source: str = "marketplace"
    source_args: dict = field(default_factory=dict)
    seed: int = 7
    mode: str = "joint"
    """'joint' or 'iterative'."""
    weighting: str = "fixed"
    """Joint mode: 'fixed' (loss_weight per task) or 'uncertainty' (learned, Kendall et al. 2018)."""
    share_embeddings: bool = False
    """Towers of the same side declared under different names (task-specific towers) share their feature
    embedding tables: a shared bottom with task-specific dense layers (against negative transfer)."""
    gradient: str = "sum"
    """Joint mode: 'sum' of the weighted task losses, or 'pcgrad' (gradient surgery on the shared modules,
    Yu et al. 2020; models/task_balancing.py)."""
    shared_lr: float = 3e-3
    """Joint mode: learning rate of the shared modules (task-specific ones use their task's lr)."""
    weight_decay: float = 0.0
    """L2 penalty (Adam weight_decay) on every parameter."""
    epochs: int = 10
    patience: int = 3
    """Early stopping: epochs without a better mean validation AUC."""
    split: dict = field(default_factory=lambda: {"kind": "random", "val_fraction": 0.2})
    """{'kind': 'random', 'val_fraction': f[, 'test_fraction': t]}, {'kind': 'time', 'quantile': q[,
    'test_quantile': q2]} (needs a 'time' column; rows after q2 are test) or {'kind': 'column'}: the
    source's own 'split' column (train / val / test), e.g. a per-user time split. Early stopping uses val;
    test rows are never seen in training (models/evaluation/ and models/results.py report them)."""
    features: dict[str, dict[str, dict]] = field(default_factory=dict)
    """Per side, overrides of the source's feature specs (max_len, default_ids, kept_ids, ...)."""
    architecture: dict[str, dict] = field(default_factory=dict)
    """Defaults merged into every task's architecture."""
    tasks: list[TaskConfig] = field(default_factory=list)
    model_names: dict[str, str] = field(default_factory=lambda: {"member": "member_pyramid", "job": "job_pyramid"})
    """Registered model name of each exported tower."""
    entity_types: dict[str, str] = field(default_factory=lambda: {"member": "member", "job": "job"})
    """Entity type of each side's tower (the first tower is the "member" side, the second the "job" side),
    e.g. {member: user, job: movie}: written into the exported manifests (the nearline config's
    entity_types must list them), and the names a source may key its tables and columns by."""
    max_rows_per_task: int | None = None
    """Cap on rows per task (quick runs, tests)."""
    vocab_subsets: list[dict] = field(default_factory=list)
    """High-cardinality features to subset, e.g. [{feature: company, dataset: view, n: 100}]: the n member
    values and n job values that keep the most interactions (greedy densest subgraph, models/vocab.py);
    the rest map to OOV."""

    @classmethod
    def from_yaml(cls, path: Path) -> "TrainConfig":
        raw = yaml.safe_load(Path(path).read_text())
        tasks = [TaskConfig(name=n, **t) for n, t in raw.pop("tasks").items()]
        cfg = cls(**raw, tasks=tasks)
        cfg.entity_types = {**{s: s for s in SIDES}, **cfg.entity_types}
        if set(cfg.entity_types) != set(SIDES) or len(set(cfg.entity_types.values())) != 2:
            raise ValueError(f"entity_types maps the two sides {SIDES} to two different names, not {cfg.entity_types}")
        if cfg.mode not in ("joint", "iterative"):
            raise ValueError(f"mode must be joint or iterative, not {cfg.mode!r}")
        if cfg.weighting not in ("fixed", "uncertainty"):
            raise ValueError(f"weighting must be fixed or uncertainty, not {cfg.weighting!r}")
        if cfg.gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {GRADIENTS}, not {cfg.gradient!r}")
        return cfg

    def only(self, *task_names: str) -> "TrainConfig":
        """The same config restricted to some tasks (single-task baselines use the same code)."""
        c = copy.deepcopy(self)
        c.tasks = [t for t in c.tasks if t.name in task_names]
        return c


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---------------------------------------------------------------- data
@dataclass
class TaskData:
    name: str
    train: pd.DataFrame
    val: pd.DataFrame
    present: dict[str, set[str]]  # side -> features the task's data has
    test: pd.DataFrame = field(default_factory=pd.DataFrame)  # held out from training and early stopping


def unified_schema(tables: dict[str, EntityTable], cfg: TrainConfig) -> dict[str, dict[str, FeatureSpec]]:
    schema = {}
    for side in SIDES:
        specs = {}
        used = set()
        for t in cfg.tasks:
            used |= set((t.features or {}).get(side, tables[side].specs.keys()))
        for name in tables[side].specs:
            if name not in used:
                continue
            s = tables[side].specs[name]
            over = cfg.features.get(side, {}).get(name, {})
            if over:
                over = {k: tuple(v) if isinstance(v, list) else v for k, v in over.items()}
                s = FeatureSpec(**{**s.__dict__, **over})
            specs[name] = s
        schema[side] = specs
    return schema


def prepare_tasks(cfg: TrainConfig, frames: dict[str, pd.DataFrame], tables: dict[str, EntityTable]) -> list[TaskData]:
    out = []
    rng = np.random.default_rng(cfg.seed)
    for t in cfg.tasks:
        if t.dataset not in frames:
            raise ValueError(f"task {t.name}: unknown dataset {t.dataset!r}; have {sorted(frames)}")
        df = frames[t.dataset]
        if t.filter:
            df = df.query(t.filter)
        if t.sample:
            df = df.sample(frac=t.sample, random_state=cfg.seed)
        df = df.dropna(subset=["member_idx", "job_idx"])
        df = df.assign(label=df[t.label].astype(np.float32), member_idx=df.member_idx.astype(np.int64),
                       job_idx=df.job_idx.astype(np.int64))
        if cfg.max_rows_per_task and len(df) > cfg.max_rows_per_task:
            df = df.sample(n=cfg.max_rows_per_task, random_state=cfg.seed)
        split = cfg.split
        test = df.iloc[:0]
        if split.get("kind") == "time":
            cut = df["time"].quantile(split.get("quantile", 0.8))
            if "test_quantile" in split:
                tcut = df["time"].quantile(split["test_quantile"])
                test, df = df[df.time > tcut], df[df.time <= tcut]
            train, val = df[df.time <= cut], df[df.time > cut]
        elif split.get("kind") == "column":
            if "split" not in df:
                raise ValueError(f"task {t.name}: split kind 'column' needs a 'split' column (train/val/test) in the data")
            train, val, test = df[df.split == "train"], df[df.split == "val"], df[df.split == "test"]
        else:
            u = rng.random(len(df))
            vf, tf = split.get("val_fraction", 0.2), split.get("test_fraction", 0.0)
            train, val, test = df[u >= vf + tf], df[u < vf], df[(u >= vf) & (u < vf + tf)]
        present = {side: set((t.features or {}).get(side, tables[side].specs.keys())) for side in SIDES}
        out.append(TaskData(t.name, train.reset_index(drop=True), val.reset_index(drop=True), present,
                            test.reset_index(drop=True)))
    return out


def apply_vocab_subsets(cfg: TrainConfig, tables: dict[str, EntityTable], frames: dict[str, pd.DataFrame],
                        schema: dict[str, dict[str, FeatureSpec]]) -> dict:
    """Restrict the configured features to their densest co-occurring values; returns a coverage report."""
    from nearline.models.vocab import cooccurrence, coverage_curve, greedy_densest_subset, top_k_coverage

    report = {}
    for sub in cfg.vocab_subsets:
        feat, n = sub["feature"], int(sub["n"])
        df = frames[sub.get("dataset", cfg.tasks[0].dataset)].dropna(subset=["member_idx", "job_idx"])
        if sub.get("positives_only"):
            df = df[df.label == 1]
        mv = tables["member"].features[feat][df.member_idx.astype(int).to_numpy(), 0]
        jv = tables["job"].features[feat][df.job_idx.astype(int).to_numpy(), 0]
        edges = cooccurrence(mv, jv)
        chosen = greedy_densest_subset(edges, n, n)
        for side, ids in (("member", chosen.member_ids), ("job", chosen.job_ids)):
            spec = schema[side][feat]
            schema[side][feat] = FeatureSpec(**{**spec.__dict__, "kept_ids": tuple(int(i) for i in ids),
                                                "vocab_size": len(ids) + 2})
        distinct = max(len({a for a, _ in edges}), len({b for _, b in edges}))
        ns = sorted({k for k in (5, 10, 25, 50, 100, 200, 500, n, distinct) if k <= distinct})
        report[feat] = {"n": n, "covered": chosen.covered, "distinct_values": distinct,
                        "curve": [{"n": k, "densest": c, "top_frequent": top_k_coverage(edges, k)}
                                  for k, c in coverage_curve(edges, ns)]}
    return report


# ---------------------------------------------------------------- model
class MultitaskModel(nn.Module):
    def __init__(self, cfg: TrainConfig, schema: dict[str, dict[str, FeatureSpec]]):
        super().__init__()
        self.cfg = cfg
        self.modules_by_name = nn.ModuleDict()
        self.declared: dict[str, dict] = {}
        self.users: dict[str, list[str]] = {}
        self.task_modules: dict[str, dict[str, str]] = {}
        for t in cfg.tasks:
            arch = _merge(cfg.architecture, t.architecture)
            arch.setdefault("head", {})
            arch["head"].setdefault("name", f"{t.name}_head")
            roles = {}
            for role in ("member_tower", "job_tower", "head"):
                if role not in arch:
                    raise ValueError(f"task {t.name}: architecture needs {role}")
                decl = dict(arch[role])
                name = decl.pop("name", role)
                key = json.dumps({"role": role, **decl}, sort_keys=True)
                if name in self.declared and self.declared[name]["key"] != key:
                    raise ValueError(f"module {name!r} is declared with different configurations in tasks "
                                     f"{self.users[name]} and {t.name}: give one of them another name")
                if name not in self.declared:
                    self.declared[name] = {"key": key, "role": role, "config": decl}
                    self.modules_by_name[name] = self._build(role, decl, schema)
                    self.users[name] = []
                self.users[name].append(t.name)
                roles[role] = name
            self.task_modules[t.name] = roles
            dims = {role: int(self.declared[roles[role]]["config"].get("dim", 0)) for role in roles}
            if len(set(dims.values())) != 1:
                raise ValueError(f"task {t.name}: the head multiplies the two towers' embeddings element-wise, so "
                                 f"member_tower, job_tower and head need one dim; got {dims}")
        # keys are prefixed: a task named e.g. "apply" would clash with nn.Module attributes
        self.log_vars = nn.ParameterDict({f"task_{t.name}": nn.Parameter(torch.zeros(())) for t in cfg.tasks})
        self.shared_embeddings = self._tie_embeddings() if cfg.share_embeddings else {}

    def _tie_embeddings(self) -> dict[str, list[str]]:
        """The towers of one side use the first such tower's embedding tables (same module objects)."""
        tied = {}
        for side in SIDES:
            towers = [n for n, d in self.declared.items() if d["role"] == f"{side}_tower"]
            first = self.modules_by_name[towers[0]]
            for name in towers[1:]:
                tower = self.modules_by_name[name]
                for feat, emb in first.embeddings.items():
                    if feat in tower.embeddings and tower.embeddings[feat].emb.weight.shape == emb.emb.weight.shape:
                        tower.embeddings[feat] = emb
                tied.setdefault(towers[0], [towers[0]]).append(name)
        return tied

    @staticmethod
    def _build(role: str, decl: dict, schema) -> nn.Module:
        if role == "head":
            return HadamardHead(int(decl["dim"]))
        side = role.split("_")[0]
        unknown = set(decl.get("emb_dims", {})) - set(schema[side])
        if unknown:
            raise ValueError(f"{role} emb_dims names features the {side} side does not have: {sorted(unknown)}")
        tc = TowerConfig(features=tuple(schema[side].values()), emb_dim=int(decl.get("emb_dim", 16)),
                         emb_dims={k: int(v) for k, v in decl.get("emb_dims", {}).items()},
                         widths=tuple(decl.get("widths", (64, 128, 256))), dim=int(decl["dim"]),
                         dropout=float(decl.get("dropout", 0.1)), norm=decl.get("norm", "layer"),
                         l2_normalize=bool(decl.get("l2_normalize", False)))
        return PyramidTower(tc)

    def sharing_report(self) -> dict[str, dict]:
        tied = {n: towers for towers in self.shared_embeddings.values() for n in towers}
        return {name: {"shared": len(users) > 1, "tasks": users, "role": self.declared[name]["role"],
                       **({"embeddings_shared_with": [t for t in tied[name] if t != name]} if name in tied else {})}
                for name, users in self.users.items()}

    def tower(self, side: str, task: str | None = None) -> PyramidTower:
        task = task or self.cfg.tasks[0].name
        return self.modules_by_name[self.task_modules[task][f"{side}_tower"]]

    def forward(self, task: str, member: dict, job: dict) -> torch.Tensor:
        r = self.task_modules[task]
        m = self.modules_by_name[r["member_tower"]](member)
        j = self.modules_by_name[r["job_tower"]](job)
        return self.modules_by_name[r["head"]](m, j)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters more than one task trains: shared modules, and embedding tables tied across towers."""
        shared = {id(p): p for p in self.params_of([n for n, users in self.users.items() if len(users) > 1])}
        for first in self.shared_embeddings:
            shared.update({id(p): p for p in self.modules_by_name[first].embeddings.parameters()})
        return list(shared.values())

    def params_of(self, names) -> list[nn.Parameter]:
        return list({id(p): p for n in names for p in self.modules_by_name[n].parameters()}.values())


# ---------------------------------------------------------------- training
@dataclass
class TrainResult:
    model: MultitaskModel
    schema: dict[str, dict[str, FeatureSpec]]
    history: list[dict]
    best: dict
    sharing: dict
    seconds_per_epoch: float
    tasks: list[TaskData]
    store: FeatureStore
    vocab_report: dict = field(default_factory=dict)


class Trainer:
    def __init__(self, cfg: TrainConfig, tables: dict[str, EntityTable], frames: dict[str, pd.DataFrame],
                 out_dir: Path | None = None, progress: bool = True):
        self.cfg, self.out_dir, self.progress = cfg, out_dir, progress
        torch.manual_seed(cfg.seed)
        self.tasks = prepare_tasks(cfg, frames, tables)
        self.schema = unified_schema(tables, cfg)
        self.vocab_report = apply_vocab_subsets(cfg, tables, frames, self.schema)
        self.store = FeatureStore(tables, self.schema)
        self.model = MultitaskModel(cfg, self.schema)
        self.tcfg = {t.name: t for t in cfg.tasks}

    def _batches(self, td: TaskData, gen: torch.Generator):
        n, bs = len(td.train), self.tcfg[td.name].batch_size
        order = torch.randperm(n, generator=gen)
        m = torch.from_numpy(td.train.member_idx.to_numpy())
        j = torch.from_numpy(td.train.job_idx.to_numpy())
        y = torch.from_numpy(td.train.label.to_numpy())
        for s in range(0, n, bs):
            idx = order[s: s + bs]
            yield m[idx], j[idx], y[idx]

    def _loss(self, td: TaskData, batch) -> torch.Tensor:
        m, j, y = batch
        logits = self.model(td.name, self.store.batch("member", m, td.present["member"]),
                            self.store.batch("job", j, td.present["job"]))
        return task_loss(self.tcfg[td.name].loss, logits, y)

    def _optimizers(self):
        cfg, model = self.cfg, self.model
        if cfg.mode == "joint":
            groups, seen = [], set()
            tied = {id(p) for t in model.shared_embeddings for p in model.modules_by_name[t].embeddings.parameters()}
            for name, users in model.users.items():
                lr = cfg.shared_lr if len(users) > 1 else self.tcfg[users[0]].lr
                own = [p for p in model.modules_by_name[name].parameters() if id(p) not in seen | tied]
                seen |= {id(p) for p in own}
                groups.append({"params": own, "lr": lr})
            if tied:  # embedding tables tied across task-specific towers: shared, at the shared rate
                groups.append({"params": [p for p in model.parameters() if id(p) in tied], "lr": cfg.shared_lr})
            if cfg.weighting == "uncertainty":
                groups.append({"params": list(model.log_vars.parameters()), "lr": cfg.shared_lr})
            return {"*": torch.optim.Adam(groups, weight_decay=cfg.weight_decay)}
        # iterative: every task its own optimizer over the modules it uses, at its own learning rate
        return {t.name: torch.optim.Adam(model.params_of(model.task_modules[t.name].values()), lr=t.lr,
                                         weight_decay=cfg.weight_decay)
                for t in cfg.tasks}

    @torch.no_grad()
    def evaluate(self, split: str = "val") -> dict[str, dict]:
        """AUC and log loss per task on its 'val' (early stopping) or 'test' rows."""
        self.model.eval()
        out = {}
        for td in self.tasks:
            rows = getattr(td, split)
            logits = []
            for s in range(0, len(rows), 8192):
                part = rows.iloc[s: s + 8192]
                m = torch.from_numpy(part.member_idx.to_numpy())
                j = torch.from_numpy(part.job_idx.to_numpy())
                logits.append(self.model(td.name, self.store.batch("member", m, td.present["member"]),
                                         self.store.batch("job", j, td.present["job"])).numpy())
            lg = np.concatenate(logits) if logits else np.zeros(0)
            y = rows.label.to_numpy()
            out[td.name] = {"auc": auc(y, lg), "logloss": log_loss(y, lg), f"n_{split}": len(y)}
            if "true_logit" in rows:
                out[td.name]["ceiling_auc"] = auc(y, rows.true_logit.to_numpy())
        self.model.train()
        return out

    def fit(self) -> TrainResult:
        from tqdm import tqdm

        cfg, model = self.cfg, self.model
        opts = self._optimizers()
        gen = torch.Generator().manual_seed(cfg.seed)
        history, best, best_state, bad_epochs = [], {"score": -1.0}, None, 0
        epoch_times = []
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            losses = {t.name: [] for t in self.tasks}
            if cfg.mode == "joint":
                iters = {td.name: self._batches(td, gen) for td in self.tasks}
                steps = max(math.ceil(len(td.train) / self.tcfg[td.name].batch_size) for td in self.tasks)
                bar = tqdm(range(steps), desc=f"epoch {epoch}/{cfg.epochs} joint", disable=not self.progress, leave=False)
                shared = model.shared_parameters()
                for _ in bar:
                    weighted = []
                    for td in self.tasks:
                        try:
                            b = next(iters[td.name])
                        except StopIteration:  # smaller tasks cycle within the epoch
                            iters[td.name] = self._batches(td, gen)
                            b = next(iters[td.name])
                        loss = self._loss(td, b)
                        losses[td.name].append(loss.item())
                        if cfg.weighting == "uncertainty":
                            s = model.log_vars[f"task_{td.name}"]
                            weighted.append(torch.exp(-s) * loss + s)
                        else:
                            weighted.append(self.tcfg[td.name].loss_weight * loss)
                    opts["*"].zero_grad()
                    joint_backward(cfg.gradient, weighted, shared, gen)
                    opts["*"].step()
            else:
                schedule = []
                for td in self.tasks:
                    schedule += [td.name] * math.ceil(len(td.train) / self.tcfg[td.name].batch_size)
                order = torch.randperm(len(schedule), generator=gen).tolist()
                iters = {td.name: self._batches(td, gen) for td in self.tasks}
                by_name = {td.name: td for td in self.tasks}
                bar = tqdm(order, desc=f"epoch {epoch}/{cfg.epochs} iterative", disable=not self.progress, leave=False)
                for k in bar:
                    name = schedule[k]
                    loss = self._loss(by_name[name], next(iters[name])) * self.tcfg[name].loss_weight
                    opts[name].zero_grad()
                    loss.backward()
                    opts[name].step()
                    losses[name].append(loss.item() / self.tcfg[name].loss_weight)
            epoch_times.append(time.perf_counter() - t0)
            metrics = self.evaluate()
            score = float(np.nanmean([m["auc"] for m in metrics.values()]))
            row = {"epoch": epoch, "seconds": epoch_times[-1], "score": score,
                   **{f"{n}/train_loss": float(np.mean(v)) for n, v in losses.items()},
                   **{f"{n}/{k}": v for n, m in metrics.items() for k, v in m.items()}}
            history.append(row)
            if self.progress:
                print(f"epoch {epoch}: " + "  ".join(
                    f"{n} auc={m['auc']:.4f} logloss={m['logloss']:.4f}" for n, m in metrics.items())
                    + f"  ({epoch_times[-1]:.1f}s)", flush=True)
            if score > best["score"]:
                best = {"score": score, "epoch": epoch, "metrics": metrics}
                best_state = copy.deepcopy(model.state_dict())
                bad_epochs = 0
                if self.out_dir:
                    self.out_dir.mkdir(parents=True, exist_ok=True)
                    torch.save(best_state, self.out_dir / "checkpoint.pt")
            else:
                bad_epochs += 1
                if bad_epochs >= cfg.patience:
                    if self.progress:
                        print(f"early stop: no better mean AUC for {cfg.patience} epochs (best epoch {best['epoch']})")
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        return TrainResult(model, self.schema, history, best, model.sharing_report(),
                           float(np.mean(epoch_times)), self.tasks, self.store, self.vocab_report)


def load_source(cfg: TrainConfig):
    """The config's source (a registered name or module:function, see models/sources.py), checked."""
    from nearline.models.sources import load

    return load(cfg.source, entity_types=cfg.entity_types, **cfg.source_args)
