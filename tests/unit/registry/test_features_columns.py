"""The columnar, vectorised tensor builder (nearline/registry/features.py) against the per-row builder it replaced,
kept here as the reference: bitwise equal tensors (dtype and shape included) and the same FeatureShapeError
texts, for the whole batch and per row, on fuzzed rows of fuzzed and shipped manifests."""

import copy
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nearline import REPO_ROOT
from nearline.registry.features import (
    FeatureColumns,
    FeatureEncoder,
    FeatureShapeError,
    build_feed,
    build_inputs,
    build_inputs_columns,
)
from nearline.registry.manifest import InputFeature, Manifest


def reference_build_inputs(manifest, rows, encoders=None):
    """The per-row builder nearline/registry/features.py had before the columnar one (verbatim)."""
    n = len(rows)
    feed = {}
    for f in manifest.inputs:
        enc = encoders[f.name] if encoders else FeatureEncoder(f)
        ids = np.full((n, f.max_len), f.pad_id, dtype=np.int64)
        w = np.zeros((n, f.max_len), dtype=np.float32) if f.weighted else None
        for i, row in enumerate(rows):
            feat = row.get(f.name)
            if feat is None:
                raw, weights = f.default_ids, None
            else:
                if not isinstance(feat, dict):
                    raise FeatureShapeError(f"feature {f.name}: must be a record with ids, got {type(feat).__name__}")
                raw, weights = feat.get("ids"), feat.get("weights")
                if not isinstance(raw, (list, tuple)):
                    raise FeatureShapeError(f"feature {f.name}: ids must be a list, got {type(raw).__name__}")
                if weights is not None:
                    if not isinstance(weights, (list, tuple)):
                        raise FeatureShapeError(f"feature {f.name}: weights must be a list or null, got {type(weights).__name__}")
                    if len(weights) != len(raw):
                        raise FeatureShapeError(f"feature {f.name}: {len(weights)} weights for {len(raw)} ids")
                    if not all(isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool)
                               for x in weights):
                        raise FeatureShapeError(f"feature {f.name}: weights must be numbers")
            r = enc.rows(raw)
            ids[i, : len(r)] = r
            if w is not None:
                w[i, : len(r)] = weights[: len(r)] if weights is not None else 1.0
        feed[f.onnx_input] = ids
        if w is not None:
            feed[f.weight_input] = w
    return feed


def assert_same_feed(got, want):
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        # bytes, not np.array_equal: NaN weights must be the same NaN
        assert got[k].tobytes() == want[k].tobytes(), (k, got[k], want[k])


def outcome(fn):
    try:
        return fn(), None
    except FeatureShapeError as exc:
        return None, str(exc)


def assert_matches_reference(man, rows):
    encoders = {f.name: FeatureEncoder(f) for f in man.inputs}
    try:
        want, want_err = reference_build_inputs(man, rows, encoders), None
    except FeatureShapeError as exc:
        want, want_err = None, str(exc)
    except OverflowError:  # a weight no float holds: the reference crashed; the new builder reports the row
        want, want_err = None, "overflow"
    got, got_err = outcome(lambda: build_inputs(man, rows, encoders))
    if want_err == "overflow":
        assert got_err is not None and "float32" in got_err
        return
    assert got_err == want_err
    if want is not None:
        assert_same_feed(got, want)
    # per row: build_feed reports exactly the rows the reference refuses alone, and the others' tensors
    feed, errors = build_feed(man, FeatureColumns.from_rows(rows), encoders)
    per_row = [outcome(lambda r=r: reference_build_inputs(man, [r], encoders)) for r in rows]
    assert errors == {i: e for i, (_, e) in enumerate(per_row) if e is not None}
    good = [i for i, (_, e) in enumerate(per_row) if e is None]
    if good:
        assert_same_feed({k: v[good] for k, v in feed.items()}, reference_build_inputs(man, [rows[i] for i in good], encoders))


# ---- fuzzed manifests and rows (as tests/unit/test_fuzz_features.py, with more edge cases) ------------

junk = st.one_of(st.none(), st.text(max_size=3), st.floats(), st.booleans(), st.lists(st.integers(), max_size=2))
ids = st.one_of(st.integers(-5, 60), st.integers(-5, 60), st.integers(min_value=2**62, max_value=2**80),
                st.just(2**63 - 1), st.just(2**63 - 3), junk)
weights_el = st.one_of(st.floats(), st.floats(width=32), st.integers(-3, 3), st.integers(2**60, 2**64), junk)


@st.composite
def manifests(draw):
    inputs = []
    for name in draw(st.lists(st.sampled_from(["title", "skills", "geo"]), min_size=1, max_size=3, unique=True)):
        vocab = draw(st.integers(1, 40))
        kept = draw(st.none() | st.lists(st.integers(0, 100), max_size=vocab + 2))  # repeats allowed: the dict's last wins
        inputs.append(InputFeature(name, "p", vocab_size=vocab, max_len=draw(st.integers(0, 6)),
                                   weighted=draw(st.booleans()), kept_ids=kept,
                                   default_ids=draw(st.lists(st.one_of(st.integers(0, 50), st.just(-1)), max_size=3))))
    return Manifest("m", "v1", "member", inputs, "embedding", 4, "0" * 64)


def feature(valid):
    if valid:
        return st.lists(st.integers(0, 120), max_size=14).flatmap(lambda xs: st.fixed_dictionaries({
            "ids": st.just(xs), "weights": st.none() | st.lists(st.floats(width=32), min_size=len(xs), max_size=len(xs))}))
    return st.fixed_dictionaries({"ids": st.one_of(st.lists(ids, max_size=10), junk),
                                  "weights": st.one_of(st.none(), st.lists(weights_el, max_size=10), junk)},
                                 optional={"x": st.none()})


def rows(valid):
    return st.dictionaries(st.sampled_from(["title", "skills", "geo", "other"]),
                           st.one_of(feature(valid), st.none()) if valid else st.one_of(feature(False), junk), max_size=4)


FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(manifests(), st.lists(st.one_of(rows(True), rows(False)), min_size=1, max_size=6))
def test_fuzzed_rows_give_the_reference_tensors_and_errors(man, batch):
    assert_matches_reference(man, batch)


def shipped(kept=False):
    out = []
    for pkg in ("member_pyramid", "job_pyramid"):
        man = Manifest.from_json(json.loads((REPO_ROOT / f"models/packages/{pkg}/v1/manifest.json").read_text()))
        if kept:  # a kept-id (high-cardinality subset) variant of the shipped manifest
            man = copy.deepcopy(man)
            for f in man.inputs:
                f.kept_ids = list(range(3, 3 * (f.vocab_size - 2), 3))[: f.vocab_size - 2]
        out.append(man)
    return out


SHIPPED = shipped() + shipped(kept=True)


@FUZZ
@given(st.sampled_from(SHIPPED), st.lists(st.one_of(rows(True), rows(True), rows(False)), min_size=1, max_size=8))
def test_shipped_manifests_give_the_reference_tensors_and_errors(man, batch):
    assert_matches_reference(man, batch)


def test_large_random_batches_of_the_shipped_manifests():
    """Bigger batches than hypothesis draws: empty ids, ids beyond max_len and beyond vocab, absent
    features, null and non-null weights, mixed in every row."""
    rng = np.random.default_rng(7)
    names = ["title", "seniority", "skills", "company", "geo"]
    batch = []
    for _ in range(3000):
        row = {}
        for name in names:
            if rng.random() < 0.15:
                continue
            k = int(rng.choice([0, 1, 2, 5, 12, 13, 40]))
            xs = rng.integers(0, 150, size=k).tolist()
            row[name] = {"ids": xs, "weights": rng.normal(size=k).astype(np.float32).tolist() if rng.random() < 0.5 else None}
        batch.append(row)
    for man in SHIPPED:
        want = reference_build_inputs(man, batch)
        assert_same_feed(build_inputs(man, batch), want)
        cols = FeatureColumns.from_rows(batch)
        assert_same_feed(build_inputs_columns(man, cols), want)
        idx = rng.permutation(len(batch))[:700]
        assert_same_feed(build_inputs_columns(man, cols.take(idx)), reference_build_inputs(man, [batch[i] for i in idx]))
        parts = FeatureColumns.concat([cols.take(np.arange(0, 1000)), FeatureColumns.from_rows(batch[1000:])])
        assert_same_feed(build_inputs_columns(man, parts), want)


def test_errors_keep_their_rows_through_take_and_concat():
    man = SHIPPED[0]
    batch = [{"title": {"ids": [1]}}, {"geo": {"ids": [-4]}}, {"skills": {"ids": [1, 2], "weights": [1.0]}}, {}]
    cols = FeatureColumns.from_rows(batch)
    assert cols.errors_for(man) == {1: "feature geo: taxonomy id -4 is not a non-negative integer",
                                    2: "feature skills: 1 weights for 2 ids"}
    assert cols.take([2, 0, 1]).errors_for(man) == {0: "feature skills: 1 weights for 2 ids",
                                                    2: "feature geo: taxonomy id -4 is not a non-negative integer"}
    both = FeatureColumns.concat([cols, FeatureColumns.from_rows(["not a map"])])
    assert set(both.errors_for(man)) == {1, 2, 4} and "must be a map" in both.errors_for(man)[4]
    with pytest.raises(FeatureShapeError, match="1 weights for 2 ids"):  # skills comes before geo in the manifest
        build_inputs_columns(man, cols)
    with pytest.raises(FeatureShapeError, match="1 weights for 2 ids"):
        reference_build_inputs(man, batch)
