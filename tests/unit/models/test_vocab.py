import itertools

import numpy as np

from nearline.models.vocab import cooccurrence, coverage_curve, greedy_densest_subset, top_k_coverage


def brute_force(edges, n):
    ms = sorted({a for a, _ in edges})
    js = sorted({b for _, b in edges})
    total = sum(edges.values())
    best = 0.0
    for km in itertools.combinations(ms, min(n, len(ms))):
        for kj in itertools.combinations(js, min(n, len(js))):
            best = max(best, sum(w for (a, b), w in edges.items() if a in km and b in kj) / total)
    return best


def test_budget_is_respected_and_coverage_is_exact():
    rng = np.random.default_rng(0)
    edges = cooccurrence(rng.integers(0, 30, 2000), rng.integers(0, 25, 2000))
    s = greedy_densest_subset(edges, 10, 8)
    assert len(s.member_ids) <= 10 and len(s.job_ids) <= 8
    kept = sum(w for (a, b), w in edges.items() if a in s.member_ids and b in s.job_ids)
    assert abs(s.covered - kept / sum(edges.values())) < 1e-9


def test_close_to_optimal_on_small_graphs_and_monotone():
    rng = np.random.default_rng(1)
    # two communities: members 0-3 interact with jobs 0-3, members 4-7 with jobs 4-7, plus noise
    m = np.concatenate([rng.integers(0, 4, 500), rng.integers(4, 8, 300), rng.integers(0, 8, 50)])
    j = np.concatenate([rng.integers(0, 4, 500), rng.integers(4, 8, 300), rng.integers(0, 8, 50)])
    edges = cooccurrence(m, j)
    for n in (2, 4):
        assert greedy_densest_subset(edges, n, n).covered >= 0.9 * brute_force(edges, n)
    curve = coverage_curve(edges, [1, 2, 4, 8])
    covs = [c for _, c in curve]
    assert covs == sorted(covs) and covs[-1] == 1.0
    # on community structure the dense subgraph does at least as well as "most frequent per side"
    assert greedy_densest_subset(edges, 4, 4).covered >= top_k_coverage(edges, 4) - 1e-9


def test_training_with_a_subset_vocabulary_exports_a_servable_map(market_data, tmp_path):
    import json

    import torch

    from nearline.models.export import export_package, parity
    from nearline.models.multitask import Trainer
    from nearline.registry.features import build_inputs
    from nearline.registry.manifest import Manifest
    from tests.unit.models.conftest import tiny_config

    tables, frames = market_data
    cfg = tiny_config(epochs=1, vocab_subsets=[{"feature": "company", "dataset": "view", "n": 10}])
    res = Trainer(cfg, tables, frames, progress=False).fit()
    rep = res.vocab_report["company"]
    assert 0 < rep["covered"] < 1 and rep["curve"][-1]["densest"] == 1.0
    spec = res.schema["member"]["company"]
    assert len(spec.kept_ids) <= 10 and spec.vocab_size == len(spec.kept_ids) + 2
    pkg = export_package(res.model.tower("member"), tmp_path, "m", "v1", "member", {})
    man = Manifest.from_json(json.loads((pkg / "manifest.json").read_text()))
    comp = next(f for f in man.inputs if f.name == "company")
    assert comp.kept_ids == list(spec.kept_ids)
    kept, dropped = spec.kept_ids[0], max(spec.kept_ids) + 1
    feed = build_inputs(man, [{"company": {"ids": [kept]}}, {"company": {"ids": [dropped]}}])
    assert feed["company"][:, 0].tolist() == [2, 1]  # first kept id -> row 2; any other -> OOV
    idx = torch.arange(20)
    feeds = {k: v.contiguous() for k, v in res.store.batch("member", idx, set(res.schema["member"])).items()}
    assert parity(res.model.tower("member"), pkg, feeds) < 1e-5
