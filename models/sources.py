"""Data sources: the extension point for training (and evaluating) on your own data.

A *source* is a function ``source(**source_args) -> (tables, frames)``:

* ``tables``: ``{"member": EntityTable, "job": EntityTable}``, the two towers' entities (users and
  movies, members and jobs, ...) with their features, built with :func:`models.data.table_from_rows`
  from rows of ``{feature: {"ids": [taxonomy ids], "weights": [...] or None}}`` and one
  :class:`models.tower.FeatureSpec` per feature (vocab_size = number of taxonomy ids + 2 for pad/OOV;
  max_len > 1 for bag features such as skills or genres; id features are just another feature).
* ``frames``: ``{dataset name: DataFrame}``, one interaction log per task, with integer ``member_idx``
  and ``job_idx`` (row numbers in the tables), ``label`` (0/1) and optionally ``time`` (for
  ``split: {kind: time}``), ``split`` ('train' / 'val' / 'test', for ``split: {kind: column}``) and
  ``true_logit`` (a known best score, reported as the ceiling AUC).

A training config names its source by registered name (``source: marketplace``) or by import path
(``source: mypackage.mydata:load``, no registration needed); ``source_args`` are its keyword arguments.
:func:`check_source` validates what a source returns and says what is wrong, in one sentence.
:func:`movielens_protocol_source` is the worked example: MovieLens-100k on the standard protocol.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from nearline.models.data import SOURCES, EntityTable
from nearline.models.data import movielens_tables as movielens_tables
from nearline.models.data import widedeep_data_dir as widedeep_data_dir
from nearline.models.tower import FeatureSpec

Source = Callable[..., tuple[dict[str, EntityTable], dict[str, pd.DataFrame]]]


def register_source(name: str) -> Callable[[Source], Source]:
    """Decorator: make a source available to configs as ``source: <name>``."""

    def deco(fn: Source) -> Source:
        SOURCES[name] = fn
        return fn

    return deco


def resolve_source(name: str) -> Source:
    if name in SOURCES:
        return SOURCES[name]
    if ":" in name:
        mod, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"source {name!r}: cannot import {attr} from {mod} ({exc})") from None
        if not callable(fn):
            raise ValueError(f"source {name!r} is not a function")
        return fn
    raise ValueError(f"unknown source {name!r}; known: {sorted(SOURCES)}, or give module:function")


def load(name: str, entity_types: dict[str, str] | None = None, **source_args):
    """The source's tables and frames, checked. With ``entity_types`` ({"member": "reader", "job": "article"})
    a source may key its tables by those names and give ``reader_idx`` / ``article_idx`` columns: they are
    renamed to the two sides here (the first tower is the "member" side, the second the "job" side)."""
    tables, frames = resolve_source(name)(**source_args)
    tables, frames = _to_sides(tables, frames, entity_types or {})
    check_source(tables, frames)
    return tables, frames


def _to_sides(tables, frames, entity_types: dict[str, str]):
    renames = {name: side for side, name in entity_types.items() if name != side}
    if not renames or not isinstance(tables, dict):
        return tables, frames
    tables = {renames.get(k, k): v for k, v in tables.items()}
    cols = {f"{name}_{suffix}": f"{side}_{suffix}" for name, side in renames.items() for suffix in ("idx", "id")}
    return tables, {k: df.rename(columns=cols) for k, df in frames.items()}


def check_source(tables: dict, frames: dict) -> None:
    """Raise ValueError naming the first problem in a source's output."""
    for side in ("member", "job"):
        t = tables.get(side) if isinstance(tables, dict) else None
        if not isinstance(t, EntityTable):
            raise ValueError(f"a source must return tables['{side}'] as an EntityTable (models.data.table_from_rows), "
                             f"or name its tables as the config's entity_types say; got {sorted(tables or {})}")
        for f, spec in t.specs.items():
            a = t.features.get(f)
            if a is None or a.shape != (len(t.ids), spec.max_len):
                raise ValueError(f"{side} feature {f}: expected ids of shape ({len(t.ids)}, {spec.max_len}), "
                                 f"got {None if a is None else a.shape}")
            if spec.kept_ids is None and a.max(initial=-1) + 2 >= spec.vocab_size:
                raise ValueError(f"{side} feature {f}: taxonomy id {int(a.max())} needs vocab_size >= "
                                 f"{int(a.max()) + 3} (ids + pad + OOV), spec says {spec.vocab_size}")
    if not frames:
        raise ValueError("a source must return at least one interaction frame")
    for name, df in frames.items():
        for c in ("member_idx", "job_idx", "label"):
            if c not in df:
                raise ValueError(f"dataset {name}: missing column {c!r}")
        for c, side in (("member_idx", "member"), ("job_idx", "job")):
            v = df[c].dropna()
            if len(v) and (v.min() < 0 or v.max() >= len(tables[side].ids)):
                raise ValueError(f"dataset {name}: {c} outside 0..{len(tables[side].ids) - 1}")
        if not df["label"].dropna().isin([0, 1]).all():
            raise ValueError(f"dataset {name}: label must be 0 or 1")
        if "split" in df and not df["split"].isin(["train", "val", "test"]).all():
            raise ValueError(f"dataset {name}: split must be train, val or test")


# ---- the worked example: MovieLens-100k on the standard protocol ---------------------------------
def per_user_time_split(df: pd.DataFrame, user: str, time: str, test_fraction: float = 0.2,
                        val_fraction: float = 0.1) -> pd.Series:
    """Each user's last ``test_fraction`` of rows (by time) are 'test', the ``val_fraction`` before them
    'val', the rest 'train' (at least one test row per user with two or more rows)."""
    order = df.sort_values([user, time], kind="stable")
    pos = order.groupby(user).cumcount()
    n = order.groupby(user)[time].transform("size")
    n_test = np.maximum(np.round(n * test_fraction), np.where(n >= 2, 1, 0))
    n_val = np.round(n * val_fraction)
    split = np.where(pos >= n - n_test, "test", np.where(pos >= n - n_test - n_val, "val", "train"))
    return pd.Series(split, index=order.index).reindex(df.index)


def sample_unrated(users: np.ndarray, n_items: int, rated_codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One item per entry of ``users`` that the user never rated (codes are user * n_items + item)."""
    items = rng.integers(0, n_items, len(users))
    bad = np.isin(users * n_items + items, rated_codes)
    while bad.any():
        items[bad] = rng.integers(0, n_items, int(bad.sum()))
        bad = np.isin(users * n_items + items, rated_codes)
    return items


@register_source("movielens_protocol")
def movielens_protocol_source(path: str | None = None, negatives: int = 4, seed: int = 0,
                              test_fraction: float = 0.2, val_fraction: float = 0.1, user_id_feature: bool = True):
    """MovieLens-100k, standard protocol. Split per user by time: each user's last 20% of ratings are
    test, the 10% before them validation. 'rated': every rating is a positive and ``negatives`` movies
    the user never rated are sampled per rating as negatives (in the rating's split). 'liked': the
    ratings, label rating >= 4. User tower: age, gender, occupation, zip region and (by default) the user
    id; movie tower: genres, decade and the movie id."""
    base = Path(path) if path else widedeep_data_dir()
    ratings = pd.read_parquet(base / "MovieLens100k_data.parquet.brotli")
    users = pd.read_parquet(base / "MovieLens100k_users.parquet.brotli")
    items = pd.read_parquet(base / "MovieLens100k_items.parquet.brotli")
    tables, _ = movielens_tables(ratings.iloc[:0], users, items)  # the entity tables only
    utab, itab = tables["member"], tables["job"]
    if user_id_feature:
        n = len(utab.ids)
        utab.features["user"] = (np.arange(n, dtype=np.int64) + 1)[:, None]
        utab.weights["user"] = np.ones((n, 1), np.float32)
        utab.specs["user"] = FeatureSpec("user", "movielens", n + 3)
    r = ratings.rename(columns={"timestamp": "time"})
    r = r.assign(member_idx=r["user_id"].astype(str).map(utab.index).astype(np.int64),
                 job_idx=r["movie_id"].astype(str).map(itab.index).astype(np.int64))
    r["split"] = per_user_time_split(r, "member_idx", "time", test_fraction, val_fraction)
    liked = r.assign(label=(r["rating"] >= 4).astype(np.int8))
    rng = np.random.default_rng(seed)
    codes = np.unique(r.member_idx.to_numpy() * len(itab.ids) + r.job_idx.to_numpy())
    rep = r.loc[r.index.repeat(negatives)]
    neg = rep.assign(job_idx=sample_unrated(rep.member_idx.to_numpy(), len(itab.ids), codes, rng), label=0, rating=0)
    cols = ["member_idx", "job_idx", "label", "time", "split", "rating"]
    rated = pd.concat([r.assign(label=1)[cols], neg[cols]], ignore_index=True)
    rated["label"] = rated["label"].astype(np.int8)
    return tables, {"rated": rated, "liked": liked[cols].reset_index(drop=True)}


def popularity_auc(frame: pd.DataFrame) -> float:
    """AUC of the popularity baseline on a task's test rows: each movie scored by its number of positive
    train rows (the most-liked / most-rated movie first), users ignored."""
    from nearline.models.metrics import auc

    train, test = frame[frame.split == "train"], frame[frame.split == "test"]
    pop = train[train.label == 1].groupby("job_idx").size()
    return auc(test.label.to_numpy(), test.job_idx.map(pop).fillna(0).to_numpy())
