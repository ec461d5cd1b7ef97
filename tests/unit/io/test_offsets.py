from nearline.io.offsets import OffsetTracker


def test_commit_is_held_back_by_the_oldest_pending_event():
    t = OffsetTracker()
    for off in range(5):
        t.read("p0", off)
    t.done("p0", 0)
    t.done("p0", 2)
    t.done("p0", 3)
    assert t.committable() == {"p0": 1}  # offset 1 still pending
    t.mark_committed({"p0": 1})
    t.done("p0", 1)
    assert t.committable() == {"p0": 4}
    t.done("p0", 4)
    assert t.committable() == {"p0": 5}
    t.mark_committed({"p0": 5})
    assert t.committable() == {}  # nothing moved


def test_partitions_are_independent_and_duplicates_harmless():
    t = OffsetTracker()
    t.read("a", 10)
    t.read("a", 10)
    t.read("b", 3)
    t.done("b", 3)
    assert t.committable() == {"a": 10, "b": 4}
    assert t.pending_count() == 1
