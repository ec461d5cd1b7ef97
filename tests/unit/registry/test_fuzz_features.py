"""Property-based fuzzing (hypothesis) of the feature builder: for any manifest and any rows (missing
features, junk ids, huge or negative ids, NaN/huge weights, wrong types), build_inputs either raises
FeatureShapeError (the row is dead-lettered) or returns exactly the tensors the manifest describes, with
every id a row of its table."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nearline.registry.features import FeatureEncoder, FeatureShapeError, build_inputs
from nearline.registry.manifest import InputFeature, Manifest

junk = st.one_of(st.none(), st.text(max_size=3), st.floats(), st.booleans(), st.lists(st.integers(), max_size=2))
ids = st.one_of(st.integers(-5, 60), st.integers(min_value=2**62, max_value=2**80), junk)


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


feature = st.fixed_dictionaries({"ids": st.one_of(st.lists(ids, max_size=10), junk),
                                 "weights": st.one_of(st.none(), st.lists(st.one_of(st.floats(), junk), max_size=10), junk)})
row = st.dictionaries(st.sampled_from(["title", "skills", "geo", "other"]), feature, max_size=4)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests(), st.lists(row, min_size=1, max_size=4))
def test_build_inputs_returns_valid_tensors_or_feature_shape_error(man, rows):
    try:
        feed = build_inputs(man, rows, {f.name: FeatureEncoder(f) for f in man.inputs})
    except FeatureShapeError:
        return
    expected = {f.onnx_input for f in man.inputs} | {f.weight_input for f in man.inputs if f.weighted}
    assert set(feed) == expected
    for f in man.inputs:
        x = feed[f.onnx_input]
        assert x.dtype == np.int64 and x.shape == (len(rows), f.max_len)
        assert x.min() >= 0 and x.max() < f.vocab_size
        if f.weighted:
            w = feed[f.weight_input]
            assert w.dtype == np.float32 and w.shape == (len(rows), f.max_len)
