import json

import numpy as np
import onnxruntime as ort
import pytest

from nearline import REPO_ROOT
from nearline.inference.scoring import ModelSet, RegistryWatcher, run_rows
from nearline.registry.features import build_inputs
from nearline.registry.manifest import Manifest
from nearline.registry.packages import Registry
from tests.helpers import make_package


def test_an_embedding_does_not_depend_on_its_batch():
    """Bitwise dedupe relies on it: the same entity scored alone or with others gives the same bits."""
    pkg = REPO_ROOT / "models/packages/member_pyramid/v1"
    man = Manifest.from_json(json.loads((pkg / "manifest.json").read_text()))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(pkg / "tower.onnx"), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    rows = [{f.name: {"ids": rng.integers(0, 20, size=f.max_len).tolist(), "weights": None} for f in man.inputs}
            for _ in range(40)]
    batch = run_rows(sess, "embedding", build_inputs(man, rows))
    for i in (0, 17, 39):
        alone = run_rows(sess, "embedding", build_inputs(man, [rows[i]]))
        assert alone.tobytes() == batch[i:i + 1].tobytes()


def test_modelset_scores_every_model_of_the_type_and_isolates_bad_rows(tmp_path):
    reg = Registry(tmp_path / "registry.yaml")
    reg.register(make_package(tmp_path, "m_a", "v1", "member", seed=1))
    reg.register(make_package(tmp_path, "m_b", "v1", "member", seed=2, dim=4))
    reg.register(make_package(tmp_path, "j_a", "v1", "job", seed=3))
    ms = ModelSet(RegistryWatcher(reg, ["member", "job"]))
    good = {"title": {"ids": [1], "weights": None}}
    bad = {"skills": {"ids": [1, 2], "weights": [1.0]}}
    scores, errors = ms.score("member", [good, bad, good])
    assert set(scores) == {"m_a@v1", "m_b@v1"} and scores["m_b@v1"].shape == (3, 4)
    assert list(errors) == [1] and "1 weights for 2 ids" in errors[1]
    assert np.isnan(scores["m_a@v1"][1]).all() and np.array_equal(scores["m_a@v1"][0], scores["m_a@v1"][2])


# ---- issue 13: a model failing at run time never stops the job; every embedding is finite ------------

def _modelset(tmp_path):
    from nearline.core.metrics import Metrics

    reg = Registry(tmp_path / "registry.yaml")
    reg.register(make_package(tmp_path, "m_a", "v1", "member", seed=1))
    reg.register(make_package(tmp_path, "m_b", "v1", "member", seed=2))
    metrics = Metrics()
    return ModelSet(RegistryWatcher(reg, ["member"]), metrics=metrics), metrics


def _break_vocab(ms, key):
    """A model whose manifest overstates the title vocabulary (as one registered before the probe
    check existed): real onnxruntime fails on ids beyond the graph's table."""
    from nearline.registry.features import FeatureEncoder

    m = ms.models[key]
    f = next(f for f in m.package.manifest.inputs if f.name == "title")
    f.vocab_size = 1000
    m.encoders["title"] = FeatureEncoder(f)


def test_a_model_failing_on_some_rows_dead_letters_those_rows_only(tmp_path):
    ms, _ = _modelset(tmp_path)
    _break_vocab(ms, "m_a@v1")
    ok, boom = {"title": {"ids": [3], "weights": None}}, {"title": {"ids": [500], "weights": None}}
    scores, errors = ms.score("member", [ok, boom, ok])
    assert list(errors) == [1] and errors[1].startswith("model_failed: m_a@v1 failed when run")
    assert np.isfinite(scores["m_a@v1"][[0, 2]]).all() and np.isfinite(scores["m_b@v1"][[0, 2]]).all()
    assert "m_a@v1" not in ms.disabled


def test_a_model_failing_on_every_row_is_disabled_with_an_alert(tmp_path, caplog):
    ms, metrics = _modelset(tmp_path)
    _break_vocab(ms, "m_a@v1")
    boom = {"title": {"ids": [500], "weights": None}}
    for _ in range(3):
        _, errors = ms.score("member", [boom, boom])
        assert set(errors) == {0, 1}
    assert "m_a@v1" in ms.disabled and metrics.snapshot()["counters"]["models_disabled"] == 1
    assert any("ALERT" in r.message and "m_a@v1" in r.message for r in caplog.records)
    scores, errors = ms.score("member", [{"title": {"ids": [3], "weights": None}}])
    assert set(scores) == {"m_b@v1"} and not errors  # the other model keeps serving


def test_non_finite_embeddings_are_reported_never_returned(tmp_path):
    ms, _ = _modelset(tmp_path)
    huge = {"skills": {"ids": [3, 4, 5, 6], "weights": [3e38, -3e38, 3e38, -3e38]}}
    ok = {"title": {"ids": [3], "weights": None}}
    _, errors = ms.score("member", [ok, huge])
    assert list(errors) == [1] and errors[1].startswith("non_finite_embedding: ")


# ---- the columnar entry point the backfill shares with the job ---------------------------------------

def _reference_score(ms, entity_type, rows, keys=None):
    """ModelSet.score's former contract, model by model and row by row: a row that does not fit or fails
    is reported once (first model that refuses it) and not run by the later models."""
    from nearline.registry.features import FeatureShapeError

    models = [ms.models[k] for k in keys] if keys is not None else ms.for_type(entity_type)
    out, bad = {}, {}
    for m in models:
        if m.package.manifest.entity_type != entity_type or m.key in ms.disabled:
            continue
        man = m.package.manifest
        full = np.full((len(rows), man.output_dim), np.nan, dtype=np.float32)
        for i, row in enumerate(rows):
            if i in bad:
                continue
            try:
                feed = build_inputs(man, [row], m.encoders)
            except FeatureShapeError as exc:
                bad[i] = f"features_do_not_fit: features do not fit {man.key}: {exc}"
                continue
            full[i] = run_rows(m.session, man.output_name, feed)[0]
        out[m.key] = full
    return out, bad


def test_score_columns_is_score_and_keys_restrict_the_models(tmp_path):
    from nearline.registry.features import FeatureColumns

    reg = Registry(tmp_path / "registry.yaml")
    for name, seed in (("m_a", 1), ("m_b", 2)):
        reg.register(make_package(tmp_path, name, "v1", "member", seed=seed))
    reg.register(make_package(tmp_path, "m_a", "v2", "member", seed=5))
    reg.register(make_package(tmp_path, "j_a", "v1", "job", seed=3))
    ms = ModelSet(RegistryWatcher(reg, ["member", "job"]))
    rng = np.random.default_rng(3)
    rows = [{"title": {"ids": rng.integers(0, 30, size=int(rng.integers(0, 3))).tolist(), "weights": None},
             "skills": {"ids": [1, 2, 3], "weights": [0.5, 1.0, 2.0]}} for _ in range(30)]
    rows[4] = {"skills": {"ids": [1, 2], "weights": [1.0]}}
    rows[9] = {"geo": {"ids": [-1], "weights": None}}
    rows[11] = {}  # every feature absent: the declared defaults
    want, want_bad = _reference_score(ms, "member", rows)
    got, got_bad = ms.score("member", rows)
    assert got_bad == want_bad and set(got_bad) == {4, 9}
    assert list(got) == list(want) == ["m_a@v1", "m_b@v1", "m_a@v2"]
    for k in want:
        assert got[k].tobytes() == want[k].tobytes()  # bitwise, NaN rows included
    cols = FeatureColumns.from_rows(rows)
    only, only_bad = ms.score_columns("member", cols, keys=["m_a@v2", "m_a@v1"])
    assert list(only) == ["m_a@v2", "m_a@v1"] and only_bad == {
        i: e.replace("m_a@v1", "m_a@v2") for i, e in want_bad.items()}  # the first model that refuses names itself
    assert all(only[k].tobytes() == want[k].tobytes() for k in only)
    sub, sub_bad = ms.score_columns("member", cols.take([9, 0, 1]), keys=["m_b@v1"])
    assert list(sub_bad) == [0] and sub["m_b@v1"][1:].tobytes() == want["m_b@v1"][[0, 1]].tobytes()
    one, _ = ms.score_columns("member", cols.take([5]), keys=["m_b@v1"])  # a lone row: the batch-of-two path
    assert one["m_b@v1"].tobytes() == want["m_b@v1"][5:6].tobytes()
    assert ms.score_columns("member", cols, keys=["j_a@v1"]) == ({}, {})  # another type's model: nothing
    with pytest.raises(KeyError, match="nope@v1"):
        ms.score_columns("member", cols, keys=["nope@v1"])
