"""The evaluations of `nearline evaluate` on small planted data, and the command on a trained run."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("lightgbm")

from nearline.models.data import table_from_rows  # noqa: E402
from nearline.models.evaluation.downstream import cross_task_transfer, downstream_lift
from nearline.models.evaluation.importance import feature_importance, rank_agreement
from nearline.models.evaluation.twotower import Embeddings, EvalData, TwoTowerModel
from nearline.models.multitask import TaskConfig, TrainConfig, Trainer  # noqa: E402
from nearline.models.tower import FeatureSpec  # noqa: E402

TOWER = {"emb_dim": 8, "widths": [16, 32], "dim": 8, "dropout": 0.0, "norm": "layer"}


def planted_source(n_members=300, n_jobs=200, n_rows=6000, seed=0):
    """Members and jobs with a color, a size and noise features. Task 'color': label = the colors match
    (planted); task 'size': label = the sizes match. Noise features carry nothing."""
    rng = np.random.default_rng(seed)
    specs = {"color": FeatureSpec("color", "test", 8), "size": FeatureSpec("size", "test", 7),
             "noise": FeatureSpec("noise", "test", 12), "tags": FeatureSpec("tags", "test", 22, max_len=3, weighted=True)}
    tables, attrs = {}, {}
    for side, n in (("member", n_members), ("job", n_jobs)):
        color, size, noise = rng.integers(1, 6, n), rng.integers(1, 5, n), rng.integers(1, 10, n)
        rows = [{"color": {"ids": [int(c)]}, "size": {"ids": [int(s)]}, "noise": {"ids": [int(z)]},
                 "tags": {"ids": rng.choice(np.arange(1, 20), 3, replace=False).tolist()}}
                for c, s, z in zip(color, size, noise)]
        tables[side] = table_from_rows([f"{side[0]}{i}" for i in range(n)], rows, specs)
        attrs[side] = {"color": color, "size": size}
    frames = {}
    for task in ("color", "size"):
        m, j = rng.integers(0, n_members, n_rows), rng.integers(0, n_jobs, n_rows)
        match = attrs["member"][task][m] == attrs["job"][task][j]
        p = np.where(match, 0.85, 0.1)
        frames[task] = pd.DataFrame({"member_idx": m, "job_idx": j, "label": (rng.random(n_rows) < p).astype(np.int8),
                                     "split": rng.choice(["train", "val", "test"], n_rows, p=[0.6, 0.15, 0.25])})
    return tables, frames


def planted_config(tasks=("color", "size"), epochs=6):
    return TrainConfig(source="planted", seed=2, epochs=epochs, patience=3, split={"kind": "column"},
                       architecture={"member_tower": {"name": "member_tower", **TOWER},
                                     "job_tower": {"name": "job_tower", **TOWER}, "head": {"dim": 8}},
                       tasks=[TaskConfig(t, t, lr=0.01, batch_size=128) for t in tasks])


@pytest.fixture(scope="module")
def planted():
    torch.set_num_threads(1)
    tables, frames = planted_source()
    cfg = planted_config()
    res = Trainer(cfg, tables, frames, progress=False).fit()
    data = EvalData.from_config(cfg, tables, frames)
    return TwoTowerModel.from_multitask(res.model, "planted multitask"), data, res


def test_held_out_rows_are_the_test_split(planted):
    model, data, res = planted
    assert data.tasks["color"].split == "test"
    td = next(t for t in res.tasks if t.name == "color")
    n_test = int((planted_source()[1]["color"].split == "test").sum())
    assert len(data.tasks["color"].rows) == len(td.test) == n_test > 1000
    assert len(td.train) + len(td.val) + len(td.test) == 6000


def test_planted_feature_ranks_first(planted):
    model, data, _ = planted
    imp = feature_importance(model, "color", data, repeats=2, top_values=5)
    assert imp["base_auc"] > 0.75  # the planted ceiling is about 0.82
    ranked = sorted(imp["features"], key=lambda f: -imp["features"][f])
    assert set(ranked[:2]) == {"member.color", "job.color"}, imp["features"]
    # the planted feature's drop dwarfs every noise feature's
    assert min(imp["features"]["member.color"], imp["features"]["job.color"]) > 0.2
    for f in ("member.noise", "job.noise", "member.tags", "job.tags"):
        assert abs(imp["features"][f]) < 0.03, (f, imp["features"][f])
    # per-value ablation of the bag feature 'tags' (3 values, max_len 3): values carry nothing
    assert any(k.startswith("member.tags=") for k in imp["values"])
    assert max(abs(v) for k, v in imp["values"].items() if ".tags=" in k) < 0.02


def test_cross_task_transfer_is_high_on_the_diagonal_only(planted):
    model, data, _ = planted
    t = cross_task_transfer({"color": model, "size": model}, data)
    assert t["color"]["color"] > 0.75 and t["size"]["size"] > 0.75
    # the color head scores size rows (and vice versa) no better than chance: the tasks share nothing
    assert abs(t["size"]["color"] - 0.5) < 0.08 and abs(t["color"]["size"] - 0.5) < 0.08, t


def test_rank_agreement():
    a = {"x": 0.3, "y": 0.2, "z": 0.1, "w": 0.0}
    same = rank_agreement(a, {"x": 3.0, "y": 2.0, "z": 1.0, "w": 0.5})
    rev = rank_agreement(a, {"x": 0.0, "y": 0.1, "z": 0.2, "w": 0.3})
    assert same["spearman"] == pytest.approx(1.0) and rev["kendall"] == pytest.approx(-1.0)
    assert same["ranks"]["x"] == [1.0, 1.0]


def test_embedding_from_the_label_signal_takes_most_of_the_gain():
    """Labels come from a latent affinity the sparse features do not see; embeddings that carry the
    latent must lift the ranker's AUC and take most of its split gain."""
    tables, frames = planted_source(n_rows=4000, seed=5)
    rng = np.random.default_rng(1)
    lat = {"member": rng.normal(size=(300, 4)).astype(np.float32), "job": rng.normal(size=(200, 4)).astype(np.float32)}
    df = frames["color"]
    logit = 2.5 * (lat["member"][df.member_idx] * lat["job"][df.job_idx]).sum(1) - 1.5
    frames = {"apply": df.assign(label=(rng.random(len(df)) < 1 / (1 + np.exp(-logit))).astype(np.int8))}
    cfg = planted_config(tasks=("apply",))
    data = EvalData.from_config(cfg, tables, frames)
    specs = {s: list(tables[s].specs.values()) for s in ("member", "job")}

    def embed(side, feeds):  # the latent of each entity, found by its row in the table
        n = len(feeds["color"])
        return lat[side][:n]

    model = TwoTowerModel("latent", specs, {"apply": (np.ones(4, np.float32), 0.0)}, embed)
    lift = downstream_lift(model, data, Embeddings(data), "apply", folds=4)
    assert lift["sparse only"]["auc"] < 0.6          # the sparse features carry no signal here
    assert lift["sparse + embedding"]["auc"] > lift["sparse only"]["auc"] + 0.15
    assert lift["sparse + embedding"]["embedding_gain_share"] > 0.6
    assert lift["sparse + embedding"]["embedding_permutation_drop"] > 0.15
    assert lift["sparse + tower score"]["gain_share"]["embedding: tower score"] > 0.5
    assert lift["tower_score_auc"] > 0.8


def test_sparse_features_win_when_the_label_is_in_them():
    """The converse: label = colors match, embeddings are noise: the ranker gets its AUC from the sparse
    same_color flag and gives the embedding features little gain."""
    tables, frames = planted_source(n_rows=4000, seed=6)
    frames = {"apply": frames["color"]}
    data = EvalData.from_config(planted_config(tasks=("apply",)), tables, frames)
    noise = {"member": np.random.default_rng(2).normal(size=(300, 4)).astype(np.float32),
             "job": np.random.default_rng(3).normal(size=(200, 4)).astype(np.float32)}
    specs = {s: list(tables[s].specs.values()) for s in ("member", "job")}
    model = TwoTowerModel("noise", specs, {"apply": (np.ones(4, np.float32), 0.0)},
                          lambda side, feeds: noise[side][: len(feeds["color"])])
    lift = downstream_lift(model, data, Embeddings(data), "apply", folds=4)
    assert lift["sparse only"]["auc"] > 0.8
    with_emb = lift["sparse + embedding"]
    assert max(with_emb["gain_share"], key=with_emb["gain_share"].get) == "color", with_emb["gain_share"]
    assert with_emb["auc"] < lift["sparse only"]["auc"] + 0.01           # noise does not help
    assert abs(with_emb["embedding_permutation_drop"]) < 0.02, with_emb   # and shuffling it costs nothing


def test_evaluate_cli_on_a_trained_run_with_a_baseline(marketplace_dir, tmp_path):
    cfg = {"source": "marketplace", "source_args": {"data_dir": str(marketplace_dir)}, "seed": 3, "epochs": 2,
           "max_rows_per_task": 3000,
           "split": {"kind": "random", "val_fraction": 0.15, "test_fraction": 0.25},
           "architecture": {"member_tower": {"name": "member_tower", **TOWER},
                            "job_tower": {"name": "job_tower", **TOWER}, "head": {"dim": 8}},
           "tasks": {"view": {"dataset": "view", "batch_size": 256}, "apply": {"dataset": "apply", "batch_size": 128}}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (tmp_path / "nearline.yaml").write_text(yaml.safe_dump({"models": {"registry": str(tmp_path / "registry.yaml")}}))
    run = [sys.executable, "-m", "nearline.cli", "--config", str(tmp_path / "nearline.yaml")]
    # the two versions are trained in-process (`nearline train` itself is tested in test_train_cli.py)
    from nearline.models.train import run_training
    from nearline.registry.packages import Registry

    for version, epochs in (("v1", 1), ("v2", 2)):
        cfg["epochs"] = epochs
        (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        run_training(tmp_path / "train.yaml", tmp_path / f"run-{version}", version, Registry(tmp_path / "registry.yaml"),
                     progress=False)
    out = subprocess.run(run + ["evaluate", str(tmp_path / "run-v2"), "--baseline", "member_pyramid@v1",
                                "--single-task-epochs", "1"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    ev = tmp_path / "run-v2" / "evaluation"
    assert f"report: {ev / 'report.md'}" in out.stdout and "evaluate:" in out.stderr  # the tqdm bar
    md = (ev / "report.md").read_text()
    for section in ("Downstream lift", "Cross-task transfer", "Feature importance", "Baseline: **member_pyramid@v1",
                    "Candidate vs baseline"):
        assert section in md
    for png in ("lift.png", "transfer.png", "importance_view.png", "importance_apply.png"):
        assert (ev / png).stat().st_size > 5000
    res = json.loads((ev / "report.json").read_text())
    assert list(res["models"]) == ["member_pyramid@v2 + job_pyramid@v2", "member_pyramid@v1 + job_pyramid@v1"]
    assert res["tasks"]["apply"]["split"] == "test"
    # the ONNX towers + manifest heads reproduce what training measured on the same test rows
    summary = json.loads((tmp_path / "run-v2" / "summary.json").read_text())
    for t in ("view", "apply"):
        assert res["models"]["member_pyramid@v2 + job_pyramid@v2"]["own_auc"][t] == \
            pytest.approx(summary["test_metrics"][t]["auc"], abs=1e-4)
    for label, r in res["models"].items():   # the same numbers for both versions, on the same rows
        assert set(r["importance"]) == {"view", "apply"} and set(r["transfer"]) == {"view", "apply"}
        assert r["lift"]["n_rows"] == res["tasks"]["apply"]["rows"]
    bad = subprocess.run(run + ["evaluate", "member_pyramid@v9"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not registered" in bad.stderr
    # a config whose split differs from the one the model was trained with cannot rebuild its held-out rows
    from nearline.models.evaluation.run import run_evaluation
    from nearline.models.evaluation.twotower import EvaluationError

    cfg["split"] = {"kind": "random", "val_fraction": 0.2}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(EvaluationError, match="trained with split"):
        run_evaluation(str(tmp_path / "run-v2"), config_path=tmp_path / "other.yaml", progress=False)
