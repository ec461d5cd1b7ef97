"""Property-based fuzzing (hypothesis) of the feature builder: for any manifest and any rows (missing
features, junk ids, huge or negative ids, NaN/huge weights, wrong types), build_inputs either raises
FeatureShapeError (the row is dead-lettered) or returns exactly the tensors the manifest describes, with
every id a row of its table.

Both outcomes are checked against an independent model of the rules (:func:`expected_error`,
:func:`expected_feed`): a row is refused exactly when the model says so, with the model's message, and
accepted rows give the model's tensors bit for bit. Inputs valid by construction (ids non-negative
integers, weights finite and one per id) must always be accepted, so a builder that refused everything
fails these tests."""

import math

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nearline.registry.features import FeatureEncoder, FeatureShapeError, build_inputs
from nearline.registry.manifest import InputFeature, Manifest

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOAT32_MAX = float(np.finfo(np.float32).max)

junk = st.one_of(st.none(), st.text(max_size=3), st.floats(), st.booleans(), st.lists(st.integers(), max_size=2))
ids = st.one_of(st.integers(-5, 60), st.integers(min_value=2**62, max_value=2**80), junk)
valid_ids = st.one_of(st.integers(0, 60), st.integers(min_value=2**62, max_value=2**80))  # beyond int64 too: OOV


@st.composite
def manifests(draw):
    inputs = []
    for name in draw(st.lists(st.sampled_from(["title", "skills", "geo"]), min_size=1, max_size=3, unique=True)):
        vocab = draw(st.integers(3, 40))
        kept = draw(st.none() | st.lists(st.integers(0, 100), max_size=vocab - 2, unique=True))
        inputs.append(InputFeature(name, "p", vocab_size=vocab, max_len=draw(st.integers(1, 6)),
                                   weighted=draw(st.booleans()), kept_ids=kept,
                                   default_ids=draw(st.lists(st.integers(0, 50), min_size=1, max_size=3))))
    return Manifest("m", "v1", "member", inputs, "embedding", 4, "0" * 64)


@st.composite
def valid_feature(draw):
    """{ids, weights} that fits any manifest: non-negative integer ids, null or finite weights, one per id."""
    got = draw(st.lists(valid_ids, max_size=10))
    finite = st.one_of(st.floats(-FLOAT32_MAX, FLOAT32_MAX, allow_nan=False), st.integers(-1000, 1000))
    weights = draw(st.none() | st.lists(finite, min_size=len(got), max_size=len(got)))
    return {"ids": got, "weights": weights}


fuzzed_feature = st.fixed_dictionaries({"ids": st.one_of(st.lists(ids, max_size=10), junk),
                                        "weights": st.one_of(st.none(), st.lists(st.one_of(st.floats(), junk), max_size=10), junk)})
feature = st.one_of(valid_feature(), fuzzed_feature)
row = st.dictionaries(st.sampled_from(["title", "skills", "geo", "other"]), st.none() | feature, max_size=4)
valid_row = st.dictionaries(st.sampled_from(["title", "skills", "geo"]), st.none() | valid_feature(), max_size=3)


def _is_id(t) -> bool:
    return isinstance(t, int) and not isinstance(t, bool) and t >= 0


def feature_error(f: InputFeature, feat: dict) -> str | None:
    """Why one present feature does not fit ``f`` (the documented checks, in their order), or None."""
    raw, weights = feat.get("ids"), feat.get("weights")
    if not isinstance(raw, (list, tuple)):
        return f"feature {f.name}: ids must be a list, got {type(raw).__name__}"
    if weights is not None:
        if not isinstance(weights, (list, tuple)):
            return f"feature {f.name}: weights must be a list or null, got {type(weights).__name__}"
        if len(weights) != len(raw):
            return f"feature {f.name}: {len(weights)} weights for {len(raw)} ids"
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
            return f"feature {f.name}: weights must be numbers"
        try:
            [float(w) for w in weights]
        except OverflowError:  # an int beyond any float
            return f"feature {f.name}: weights must be numbers a float32 can hold"
    for t in raw[: f.max_len]:  # ids beyond max_len are dropped unchecked
        if not _is_id(t):
            return f"feature {f.name}: taxonomy id {t!r} is not a non-negative integer"
    return None


def expected_error(man: Manifest, rows: list[dict]) -> str | None:
    """The FeatureShapeError text build_inputs must raise: the first feature in manifest order that does
    not fit, its first row; features the manifest does not use are ignored."""
    for f in man.inputs:
        for r in rows:
            feat = r.get(f.name)
            if feat is not None:
                err = feature_error(f, feat)
                if err is not None:
                    return err
    return None


def table_row(f: InputFeature, t: int) -> int:
    if f.kept_ids is not None:
        r = {k: i + 2 for i, k in enumerate(f.kept_ids)}.get(t, f.oov_id)
    else:
        r = t + 2
    return r if r < f.vocab_size else f.oov_id


def expected_feed(man: Manifest, rows: list[dict]) -> dict[str, np.ndarray]:
    """The tensors of valid rows, row by row: first max_len ids mapped to table rows, padded; an absent
    feature gets the manifest's default_ids with weight 1.0; null weights are 1.0 per id."""
    feed = {}
    for f in man.inputs:
        x = np.full((len(rows), f.max_len), f.pad_id, dtype=np.int64)
        w = np.zeros((len(rows), f.max_len), dtype=np.float32)
        for i, r in enumerate(rows):
            feat = r.get(f.name)
            got = f.default_ids if feat is None else feat["ids"]
            got = got[: f.max_len]
            x[i, : len(got)] = [table_row(f, t) for t in got]
            weights = None if feat is None else feat["weights"]
            w[i, : len(got)] = 1.0 if weights is None else np.array(weights[: f.max_len], dtype=np.float32)
        feed[f.onnx_input] = x
        if f.weighted:
            feed[f.weight_input] = w
    return feed


def assert_feed(man: Manifest, rows: list[dict], feed: dict[str, np.ndarray]) -> None:
    expected = {f.onnx_input for f in man.inputs} | {f.weight_input for f in man.inputs if f.weighted}
    assert set(feed) == expected
    want = expected_feed(man, rows)
    for f in man.inputs:
        x = feed[f.onnx_input]
        assert x.dtype == np.int64 and x.shape == (len(rows), f.max_len)
        assert x.min() >= 0 and x.max() < f.vocab_size
        np.testing.assert_array_equal(x, want[f.onnx_input], err_msg=f.name)
        if f.weighted:
            w = feed[f.weight_input]
            assert w.dtype == np.float32 and w.shape == (len(rows), f.max_len)
            np.testing.assert_array_equal(w, want[f.weight_input], err_msg=f.weight_input)


@FUZZ
@given(manifests(), st.lists(row, min_size=1, max_size=4))
def test_build_inputs_returns_valid_tensors_or_feature_shape_error(man, rows):
    want_error = expected_error(man, rows)
    try:
        feed = build_inputs(man, rows, {f.name: FeatureEncoder(f) for f in man.inputs})
    except FeatureShapeError as exc:
        event("rejected")
        assert type(exc) is FeatureShapeError
        assert want_error is not None, f"valid rows refused: {exc}"
        assert str(exc) == want_error
        return
    event("accepted")
    assert want_error is None, f"accepted, but should raise FeatureShapeError({want_error!r})"
    assert_feed(man, rows, feed)


@FUZZ
@given(manifests(), st.lists(valid_row, min_size=1, max_size=4))
def test_valid_rows_are_always_accepted_with_finite_tensors_of_the_declared_shape(man, rows):
    feed = build_inputs(man, rows)  # no FeatureShapeError allowed
    assert_feed(man, rows, feed)
    for f in man.inputs:
        if f.weighted:
            assert np.isfinite(feed[f.weight_input]).all()


def test_the_model_of_the_rules_refuses_and_accepts():
    """The oracle above is not vacuous: it accepts valid rows and names each kind of refusal."""
    f = InputFeature("title", "p", vocab_size=10, max_len=2, weighted=True)
    man = Manifest("m", "v1", "member", [f], "embedding", 4, "0" * 64)
    ok = [{"title": {"ids": [1, 2**70, -1], "weights": None}}]  # -1 beyond max_len: dropped unchecked
    assert expected_error(man, ok) is None
    assert_feed(man, ok, build_inputs(man, ok))
    assert build_inputs(man, ok)["title"].tolist() == [[3, f.oov_id]]
    for feat, text in [({"ids": "x"}, "ids must be a list, got str"),
                       ({"ids": [1], "weights": 1.0}, "weights must be a list or null, got float"),
                       ({"ids": [1], "weights": [1.0, 2.0]}, "2 weights for 1 ids"),
                       ({"ids": [1], "weights": [True]}, "weights must be numbers"),
                       ({"ids": [1], "weights": [2**1100]}, "weights must be numbers a float32 can hold"),
                       ({"ids": [1, -3]}, "taxonomy id -3 is not a non-negative integer"),
                       ({"ids": [math.nan]}, "taxonomy id nan is not a non-negative integer")]:
        assert expected_error(man, [{"title": feat}]) == f"feature title: {text}"
        try:
            build_inputs(man, [{"title": feat}])
        except FeatureShapeError as exc:
            assert str(exc) == f"feature title: {text}"
        else:
            raise AssertionError(f"{feat} accepted")
