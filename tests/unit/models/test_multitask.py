import copy

import numpy as np
import pytest
import torch

from nearline.models.metrics import auc
from nearline.models.feature_store import FeatureStore
from nearline.models.multitask import MultitaskModel, Trainer, unified_schema
from tests.unit.models.conftest import TOWER, tiny_config


def test_auc_matches_definition():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    pairs = [(p, n) for p in s[y == 1] for n in s[y == 0]]
    assert auc(y, s) == pytest.approx(np.mean([p > n for p, n in pairs]))


def test_shared_and_task_specific_modules_are_detected(market_data):
    tables, frames = market_data
    cfg = tiny_config()
    model = MultitaskModel(cfg, unified_schema(tables, cfg))
    rep = model.sharing_report()
    assert rep["member_tower"] == {"shared": True, "tasks": ["view", "apply", "inmail"], "role": "member_tower"}
    assert rep["job_tower"]["shared"]
    assert {k for k, v in rep.items() if not v["shared"]} == {"view_head", "apply_head", "inmail_head"}
    # a task that declares its own tower (another name) gets a task-specific one
    cfg2 = copy.deepcopy(cfg)
    cfg2.tasks[2].architecture = {"member_tower": {"name": "inmail_member_tower", **TOWER}}
    rep2 = MultitaskModel(cfg2, unified_schema(tables, cfg2)).sharing_report()
    assert rep2["inmail_member_tower"]["shared"] is False and rep2["member_tower"]["tasks"] == ["view", "apply"]
    # same name, different configuration: refused, not silently merged
    cfg3 = copy.deepcopy(cfg)
    cfg3.tasks[1].architecture = {"member_tower": {"name": "member_tower", **{**TOWER, "dim": 16}}}
    with pytest.raises(ValueError, match="different configurations"):
        MultitaskModel(cfg3, unified_schema(tables, cfg3))


def test_missing_features_are_filled_with_declared_defaults(market_data):
    tables, frames = market_data
    cfg = tiny_config()
    cfg.features = {"member": {"company": {"default_ids": [0]}}}
    schema = unified_schema(tables, cfg)
    assert set(schema["member"]) == {"title", "seniority", "skills", "company", "geo"}  # the union
    store = FeatureStore(tables, schema)
    idx = torch.arange(5)
    full = store.batch("member", idx, set(schema["member"]))
    lacking = store.batch("member", idx, {"title", "seniority", "skills", "geo"})  # the InMail task's data
    assert torch.equal(full["title"], lacking["title"])
    assert (lacking["company"] == 2).all()  # default taxonomy id 0 -> row 2, for every row
    assert not (full["company"] == 2).all()


@pytest.mark.parametrize("mode,weighting,gradient", [("joint", "fixed", "sum"), ("joint", "uncertainty", "sum"),
                                                     ("iterative", "fixed", "sum"), ("joint", "fixed", "pcgrad")])
def test_training_modes_learn(market_data, mode, weighting, gradient):
    tables, frames = market_data
    res = Trainer(tiny_config(mode, weighting, epochs=3, gradient=gradient), tables, frames, progress=False).fit()
    m = res.best["metrics"]
    assert m["view"]["auc"] > 0.6, m            # real signal, not chance
    assert all(0 < v["logloss"] < 1.5 for v in m.values())
    assert len(res.history) == 3 and res.seconds_per_epoch > 0
    if weighting == "uncertainty":
        log_vars = {k: float(v) for k, v in res.model.log_vars.items()}
        assert any(abs(v) > 1e-4 for v in log_vars.values())  # the weights were learned


def test_iterative_uses_one_optimizer_per_task_at_its_learning_rate(market_data):
    tables, frames = market_data
    tr = Trainer(tiny_config("iterative"), tables, frames, progress=False)
    opts = tr._optimizers()
    assert set(opts) == {"view", "apply", "inmail"}
    assert {k: o.param_groups[0]["lr"] for k, o in opts.items()} == {"view": 0.01, "apply": 0.005, "inmail": 0.02}
    joint = Trainer(tiny_config("joint"), tables, frames, progress=False)._optimizers()["*"]
    lrs = sorted(g["lr"] for g in joint.param_groups)
    assert lrs == sorted([0.003, 0.003, 0.01, 0.005, 0.02])  # shared towers at shared_lr, heads at their task's


def test_single_task_is_the_same_code(market_data):
    tables, frames = market_data
    res = Trainer(tiny_config(tasks=("view",), epochs=2), tables, frames, progress=False).fit()
    assert set(res.best["metrics"]) == {"view"}
    assert not any(v["shared"] for v in res.sharing.values())


def test_reproducible_by_seed(market_data):
    tables, frames = market_data
    a = Trainer(tiny_config(epochs=1), tables, frames, progress=False).fit().history[0]
    b = Trainer(tiny_config(epochs=1), tables, frames, progress=False).fit().history[0]
    assert a["view/auc"] == b["view/auc"] and a["apply/train_loss"] == b["apply/train_loss"]


def test_a_task_can_train_on_a_filtered_downsampled_view_of_another_tasks_data(market_data):
    from nearline.models.multitask import TaskConfig, prepare_tasks

    tables, frames = market_data
    cfg = tiny_config(tasks=("view",))
    cfg.tasks.append(TaskConfig("apply_from_views", "view", filter="label == 1", sample=0.5))
    view, derived = prepare_tasks(cfg, frames, tables)
    n_viewed = int((frames["view"].label == 1).sum())
    assert len(derived.train) + len(derived.val) == round(n_viewed * 0.5)
    assert (derived.train.label == 1).all()
    assert len(view.train) + len(view.val) == len(frames["view"])
