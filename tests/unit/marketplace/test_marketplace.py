import json

import numpy as np
import pyarrow.parquet as pq

from nearline.marketplace.generate import MarketplaceSpec, generate, read_table
from nearline.marketplace.stream import UpdateStreamer, load_marketplace


def test_generation_is_deterministic_by_seed(tmp_path):
    a = generate(MarketplaceSpec(members=300, jobs=150, seed=5), tmp_path / "a", progress=False)
    b = generate(MarketplaceSpec(members=300, jobs=150, seed=5), tmp_path / "b", progress=False)
    c = generate(MarketplaceSpec(members=300, jobs=150, seed=6), tmp_path / "c", progress=False)
    ta, tb, tc = (pq.read_table(tmp_path / x / "members.parquet") for x in "abc")
    assert ta.equals(tb) and not ta.equals(tc)
    assert pq.read_table(tmp_path / "a" / "view.parquet").equals(pq.read_table(tmp_path / "b" / "view.parquet"))
    assert a == b != c


def test_three_tasks_with_rates_and_true_logits(marketplace_dir):
    s = json.loads((marketplace_dir / "summary.json").read_text())
    assert 0.04 < s["apply_rate_of_views"] < 0.2  # "roughly 10% of views"
    for task in ("view", "apply", "inmail"):
        t = read_table(marketplace_dir, task).to_pandas()
        assert {"member_id", "job_id", "label", "true_logit"} <= set(t.columns)
        assert 0 < t["label"].mean() < 1
        # the saved latent logit must carry real signal: positives score higher on average
        assert t[t.label == 1].true_logit.mean() > t[t.label == 0].true_logit.mean()


def test_raw_text_is_noisy(marketplace_dir):
    m = read_table(marketplace_dir, "members").to_pandas()
    # the same occupation is written in several different ways
    per_occ = m.groupby("occupation")["title"].nunique()
    assert per_occ.max() >= 4


def test_avro_output(tmp_path):
    generate(MarketplaceSpec(members=50, jobs=20, seed=1), tmp_path, progress=False, fmt="avro")
    t = read_table(tmp_path, "jobs")
    assert t.num_rows == 20 and "title" in t.column_names


def test_stream_mix_versions_and_irrelevant_updates(marketplace_dir):
    s = UpdateStreamer(load_marketplace(marketplace_dir), seed=1)
    events = list(s.take(600))
    kinds = {e.kind for e in events}
    assert kinds == {"create", "relevant_update", "irrelevant_update", "delete"}
    last_version, last_fields, live = {}, {}, set()
    for e in events:
        assert e.record["version"] > last_version.get(e.key, 0)  # strictly increasing per entity
        last_version[e.key] = e.record["version"]
        if e.kind == "irrelevant_update":
            before = {k: v for k, v in last_fields[e.key].items() if k != "about"}
            assert before == {k: v for k, v in e.record["fields"].items() if k != "about"}
        if e.kind in ("create", "relevant_update"):
            assert e.key not in live or e.kind != "create"
        if e.kind == "delete":
            assert e.record["op"] == "DELETE" and e.key in live
            live.discard(e.key)
        else:
            live.add(e.key)
            last_fields[e.key] = e.record["fields"]
    assert np.mean([e.kind == "delete" for e in events]) < 0.2
