"""GBDT leaves as tower inputs: the ids are the booster's leaves, and a tower on them learns a planted
interaction of dense columns (XOR) that no single column carries."""

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightgbm")

from nearline.models.data import table_from_rows  # noqa: E402
from nearline.models.gbdt_encoder import GBDTLeafEncoder  # noqa: E402
from nearline.models.multitask import TaskConfig, TrainConfig, Trainer  # noqa: E402
from nearline.models.tower import FeatureSpec  # noqa: E402


def dense_rows(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"a": rng.random(n), "b": rng.random(n), "noise": rng.random(n)})
    y = ((X.a > 0.5) ^ (X.b > 0.5)).to_numpy().astype(np.int8)   # XOR: no single column says anything
    return X, y


def test_leaf_ids_are_the_boosters_leaves_unique_per_tree():
    X, y = dense_rows(2000)
    enc = GBDTLeafEncoder(n_trees=12, num_leaves=8).fit(X, y)
    ids = enc.transform(X)
    leaves = enc.booster.predict(X, pred_leaf=True)
    assert ids.shape == (2000, 12)
    assert (ids == leaves + np.arange(12) * 8 + 1).all()
    for t in range(12):  # tree t's ids live in its own range
        assert ids[:, t].min() >= t * 8 + 1 and ids[:, t].max() <= (t + 1) * 8
    spec = enc.spec()
    assert spec.max_len == 12 and spec.vocab_size == 12 * 8 + 3 and ids.max() + 2 < spec.vocab_size


def test_tower_on_gbdt_leaves_learns_a_dense_interaction():
    X, y = dense_rows(5000, seed=1)
    split = np.random.default_rng(2).choice(["train", "val", "test"], len(X), p=[0.7, 0.1, 0.2])
    tr = split == "train"

    def run(with_leaves: bool) -> float:
        specs = {"noise_bucket": FeatureSpec("noise_bucket", "t", 13)}
        rows = [{"noise_bucket": {"ids": [int(v * 10) + 1]}} for v in X.noise]
        people = table_from_rows([str(i) for i in range(len(X))], rows, specs)
        if with_leaves:
            GBDTLeafEncoder(n_trees=20, num_leaves=8).fit(X[tr], y[tr]).add_to_table(people, X)
        target = table_from_rows(["t"], [{"bias": {"ids": [1]}}], {"bias": FeatureSpec("bias", "t", 4)})
        frames = {"y": pd.DataFrame({"member_idx": np.arange(len(X)), "job_idx": 0, "label": y, "split": split})}
        tower = {"emb_dim": 8, "widths": [16, 32], "dim": 8, "dropout": 0.0}
        cfg = TrainConfig(source="-", seed=3, epochs=4, patience=4, split={"kind": "column"},
                          architecture={"member_tower": {"name": "p", **tower}, "job_tower": {"name": "t", **tower},
                                        "head": {"dim": 8}},
                          tasks=[TaskConfig("y", "y", lr=0.01, batch_size=128)])
        trainer = Trainer(cfg, {"member": people, "job": target}, frames, progress=False)
        trainer.fit()
        return trainer.evaluate("test")["y"]["auc"]

    torch.set_num_threads(1)
    without, with_leaves = run(False), run(True)
    assert without < 0.6            # the noise column alone carries nothing
    assert with_leaves > 0.95       # the leaves carry the XOR the trees found on the training rows
