"""A user's own two-tower data of another shape, end to end through `run_training`: readers x articles (not
members x jobs), towers and entity types named freely, each tower with its own embedding widths (one feature
narrower still), a vocabulary that leaves some authors out (counted and reported), and both towers exported
with the task heads and registered under their entity types."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

torch = pytest.importorskip("torch")

from nearline.models.data import table_from_rows  # noqa: E402
from nearline.models.multitask import MultitaskModel, TaskConfig, TrainConfig, load_source, unified_schema  # noqa: E402
from nearline.models.sources import register_source  # noqa: E402
from nearline.models.tower import FeatureSpec  # noqa: E402
from nearline.models.train import run_training  # noqa: E402

N_READERS, N_ARTICLES, N_AUTHORS, KEPT_AUTHORS = 300, 120, 40, tuple(range(0, 25))


@register_source("readers_and_articles")
def readers_and_articles(seed: int = 0):
    """Readers (country, followed topics) and articles (section, tags, author); clicks and shares depend on
    topic overlap. Tables and columns are named by the entity types, as a user's own source would."""
    rng = np.random.default_rng(seed)
    r_topics = [rng.choice(10, size=int(rng.integers(1, 4)), replace=False).tolist() for _ in range(N_READERS)]
    a_tags = [rng.choice(10, size=int(rng.integers(1, 3)), replace=False).tolist() for _ in range(N_ARTICLES)]
    readers = table_from_rows(
        [f"r{i}" for i in range(N_READERS)],
        [{"country": {"ids": [int(rng.integers(0, 5))]}, "topics": {"ids": r_topics[i]}} for i in range(N_READERS)],
        {"country": FeatureSpec("country", "country", 5 + 2), "topics": FeatureSpec("topics", "topic", 10 + 2, max_len=3)})
    articles = table_from_rows(
        [f"a{i}" for i in range(N_ARTICLES)],
        [{"section": {"ids": [int(rng.integers(0, 4))]}, "tags": {"ids": a_tags[i]},
          "author": {"ids": [i % N_AUTHORS]}} for i in range(N_ARTICLES)],
        {"section": FeatureSpec("section", "section", 4 + 2), "tags": FeatureSpec("tags", "topic", 10 + 2, max_len=2),
         # the user keeps a vocabulary of 25 authors: the other 15 map to the OOV row
         "author": FeatureSpec("author", "author", len(KEPT_AUTHORS) + 2, kept_ids=KEPT_AUTHORS)})
    ri = rng.integers(0, N_READERS, 6000)
    ai = rng.integers(0, N_ARTICLES, 6000)
    overlap = np.array([len(set(r_topics[r]) & set(a_tags[a])) for r, a in zip(ri, ai)])
    logit = 3.0 * overlap - 2.0
    click = (rng.random(6000) < 1 / (1 + np.exp(-logit))).astype(int)
    share = ((click == 1) & (rng.random(6000) < 0.4 + 0.2 * np.minimum(overlap, 2))).astype(int)
    frame = pd.DataFrame({"reader_idx": ri, "article_idx": ai, "label": click, "true_logit": logit})
    return {"reader": readers, "article": articles}, {
        "click": frame, "share": frame[frame.label == 1].assign(label=share[click == 1]).reset_index(drop=True)}


CONFIG = {
    "source": "readers_and_articles", "seed": 3, "epochs": 6, "patience": 3, "mode": "iterative",
    "entity_types": {"member": "reader", "job": "article"},
    "model_names": {"member": "reader_tower_model", "job": "article_tower_model"},
    "architecture": {"member_tower": {"name": "reader_tower", "emb_dim": 6, "widths": [16, 32], "dim": 8},
                     "job_tower": {"name": "article_tower", "emb_dim": 12, "emb_dims": {"author": 4},
                                   "widths": [24, 32], "dim": 8},
                     "head": {"dim": 8}},
    "tasks": {"click": {"dataset": "click", "batch_size": 256, "lr": 0.01},
              "share": {"dataset": "share", "batch_size": 128, "lr": 0.01}},
}


def test_own_data_of_another_shape_trains_and_exports_under_its_own_names(tmp_path, capsys):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    summary = run_training(path, out_dir=tmp_path / "run", version="v1", progress=True)
    printed = capsys.readouterr().out

    # out-of-vocabulary authors are counted and reported, not silently mapped
    outside = sum(1 for i in range(N_ARTICLES) if i % N_AUTHORS not in KEPT_AUTHORS)
    oov = summary["out_of_vocabulary"]["job"]["author"]
    assert oov == {"values": N_ARTICLES, "oov_values": outside, "entities": N_ARTICLES, "entities_with_oov": outside}
    assert f"article.author: {outside} of {N_ARTICLES} values outside the vocabulary" in printed
    assert all(c["oov_values"] == 0 for side in ("member", "job") for f, c in summary["out_of_vocabulary"][side].items()
               if f != "author")

    # both towers exported under their own names and entity types, with both task heads
    manifests = {side: json.loads((Path(pkg) / "manifest.json").read_text()) for side, pkg in summary["packages"].items()}
    assert manifests["member"]["entity_type"] == "reader" and manifests["member"]["name"] == "reader_tower_model"
    assert manifests["job"]["entity_type"] == "article" and manifests["job"]["name"] == "article_tower_model"
    for man in manifests.values():
        assert set(man["head"]) == {"click", "share"} and len(man["head"]["click"]["w"]) == 8
    assert [i["name"] for i in manifests["job"]["inputs"]] == ["section", "tags", "author"]
    assert max(summary["parity_max_abs_diff"].values()) < 1e-5
    click = summary["best"]["metrics"]["click"]
    # topic overlap is learned through the towers: well above chance (the generator's own logit reaches ~0.80)
    assert click["auc"] > 0.65 and click["ceiling_auc"] > 0.75, click


def test_each_tower_has_its_own_embedding_widths_and_the_dims_must_agree():
    cfg = TrainConfig(**{**CONFIG, "tasks": [TaskConfig(name=n, **t) for n, t in CONFIG["tasks"].items()]})
    tables, _ = load_source(cfg)
    model = MultitaskModel(cfg, unified_schema(tables, cfg))
    reader, article = model.tower("member"), model.tower("job")
    assert {n: e.emb.embedding_dim for n, e in reader.embeddings.items()} == {"country": 6, "topics": 6}
    assert {n: e.emb.embedding_dim for n, e in article.embeddings.items()} == {"section": 12, "tags": 12, "author": 4}
    bad = TrainConfig(**{**CONFIG, "tasks": cfg.tasks,
                         "architecture": {**CONFIG["architecture"], "job_tower": {**CONFIG["architecture"]["job_tower"], "dim": 16}}})
    with pytest.raises(ValueError, match="need one dim"):
        MultitaskModel(bad, unified_schema(tables, bad))
    typo = TrainConfig(**{**CONFIG, "tasks": cfg.tasks, "architecture": {
        **CONFIG["architecture"], "job_tower": {**CONFIG["architecture"]["job_tower"], "emb_dims": {"autor": 4}}}})
    with pytest.raises(ValueError, match="emb_dims names features the job side does not have: \\['autor'\\]"):
        MultitaskModel(typo, unified_schema(tables, typo))
