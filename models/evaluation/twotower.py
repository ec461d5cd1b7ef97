"""A two-tower model to evaluate (from ONNX packages or a trained MultitaskModel), and the evaluation data it is scored on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from nearline.models.data import EntityTable, encode_rows
from nearline.models.tower import FeatureSpec

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

        from nearline.registry.check import check_package

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
            ids = fit_width(ids, spec.max_len, -1).astype(np.int64)
            out[spec.name] = encode_rows(spec, ids)
            if spec.weighted:
                w = np.ones(ids.shape, np.float32) if w is None else fit_width(w, spec.max_len, 0.0).astype(np.float32)
                out[f"{spec.name}__weight"] = np.ascontiguousarray(w)
        else:
            d = np.full((1, spec.max_len), -1, dtype=np.int64)
            d[0, : len(spec.default_ids)] = spec.default_ids[: spec.max_len]
            rows = encode_rows(spec, d)
            out[spec.name] = np.repeat(rows, n, axis=0)
            if spec.weighted:
                out[f"{spec.name}__weight"] = (out[spec.name] != spec.pad_id).astype(np.float32)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def fit_width(a: np.ndarray, width: int, fill) -> np.ndarray:
    if a.shape[1] >= width:
        return a[:, :width]
    return np.concatenate([a, np.full((a.shape[0], width - a.shape[1]), fill, dtype=a.dtype)], axis=1)


def auc(labels, scores) -> float:
    from nearline.models.metrics import auc as _auc

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
        from nearline.models.multitask import load_source, prepare_tasks

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
