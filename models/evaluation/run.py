"""Comparing a registered model version with a baseline: train what is missing, evaluate, write the report
(``nearline evaluate``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from nearline.models.evaluation.downstream import cross_task_transfer, downstream_lift
from nearline.models.evaluation.importance import feature_importance, n_probes, rank_agreement
from nearline.models.evaluation.report import render_report, value_names
from nearline.models.evaluation.twotower import Embeddings, EvalData, EvaluationError, TwoTowerModel, auc


# ---------------------------------------------------------------- single-task models
def train_single_task(data: EvalData, task: str, epochs: int | None = None, progress: bool = False) -> TwoTowerModel:
    """The run's config restricted to one task, trained on the same train/val rows (early stopping on
    val), so it never sees the held-out rows the evaluation scores."""
    import torch

    from nearline.models.multitask import Trainer

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


# ---------------------------------------------------------------- resolving what to evaluate
def resolve_pair(target: str, registry_path: Path) -> tuple[Path, Path]:
    """A run folder (its packages/) or NAME@VERSION of a registered package -> (member dir, job dir).
    The partner tower is the registered package of the other entity type with the same version and
    training config."""
    from nearline.registry.manifest import Manifest
    from nearline.registry.packages import Registry

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

    from nearline.models.multitask import TrainConfig

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
