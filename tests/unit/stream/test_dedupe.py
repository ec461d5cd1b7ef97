import numpy as np

from nearline.stream.dedupe import decide, same_vector


def vec(*x):
    return np.asarray(x, dtype="<f4").tobytes()


def test_bitwise_and_tolerance():
    a, b = vec(1.0, 2.0), vec(1.0, 2.0 + 1e-6)
    assert same_vector(a, a, 0.0) and not same_vector(a, b, 0.0)
    assert same_vector(a, b, 1e-5) and not same_vector(a, vec(1.0, 2.1), 1e-5)
    assert not same_vector(None, a, 0.0) and not same_vector(vec(1.0), a, 1.0)


def test_only_changed_model_versions_are_written():
    d = decide(5, {"m@v1": vec(1, 2), "m@v2": vec(3, 4)}, 6, {"m@v1": vec(1, 2), "m@v2": vec(3, 5), "m@v3": vec(0, 0)})
    assert set(d.changed) == {"m@v2", "m@v3"} and d.unchanged == 1 and not d.stale


def test_older_version_never_overwrites_newer():
    d = decide(9, {"m@v1": vec(1, 2)}, 8, {"m@v1": vec(7, 7)})
    assert d.stale and not d.changed
    assert decide(None, {}, 1, {"m@v1": vec(1)}).changed  # nothing stored: write


def test_partial_never_replaces_a_complete_embedding_of_the_same_version():
    stored = {"m@v1": vec(1, 2)}
    assert decide(5, stored, 5, {"m@v1": vec(0, 0)}, partial=True).stale
    assert decide(5, stored, 5, {"m@v1": vec(0, 0)}, partial=True, stored_partial=True).changed
    assert decide(4, stored, 5, {"m@v1": vec(0, 0)}, partial=True).changed  # newer version: written, flagged
    assert decide(5, stored, 5, {"m@v1": vec(3, 3)}, stored_partial=True).changed  # complete upgrades partial


def test_the_complete_result_of_a_version_stored_partial_is_always_written():
    """Even when its vectors equal the partial ones: the partial flag must be cleared (issue 13)."""
    d = decide(5, {"m@v1": vec(1)}, 5, {"m@v1": vec(1)}, partial=False, stored_partial=True)
    assert d.changed == {"m@v1": vec(1)} and not d.stale
    assert decide(5, {"m@v1": vec(1)}, 5, {"m@v1": vec(1)}, partial=True, stored_partial=True).changed == {}
