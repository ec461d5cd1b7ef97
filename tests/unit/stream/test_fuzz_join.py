"""Property-based fuzzing (hypothesis) of the join: any interleaving of updates, deletes and standardizer
outputs (duplicates, reordering, late messages, stalls, versions up to 2**63-1) keeps its invariants:

* every input message is released exactly once (so every offset can eventually be committed);
* a complete join has the update and every required processor of *its* version, and is emitted at most
  once per version; versions a key completes only increase;
* nothing is scored without an EntityUpdate UPSERT of that version (no phantom entities);
* a delete is emitted only for a DELETE input; a partial result always names what it misses.
"""

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nearline.stream.join import Deleted, JoinDeadLetter, Joined, RawRef, Released, ReplayTimeout, StandardizationJoin

REQ = {"member": {"title", "skills"}, "job": {"title"}}
PROCS = ["title", "skills", "geo"]
TOP = 2**63 - 1

event = st.one_of(
    st.tuples(st.just("u"), st.sampled_from(["a", "b", "c"]), st.sampled_from([1, 2, 3, TOP - 1, TOP]),
              st.sampled_from(["UPSERT", "UPSERT", "DELETE"]), st.booleans()),
    st.tuples(st.just("f"), st.sampled_from(["a", "b", "c"]), st.sampled_from([1, 2, 3, TOP - 1, TOP]),
              st.sampled_from(PROCS), st.booleans()),
    st.tuples(st.just("r"), st.sampled_from(["a", "b", "c"]), st.sampled_from([1, 2, 3, TOP - 1, TOP]),
              st.sampled_from(PROCS), st.booleans()),                                  # an output the job refused
    st.tuples(st.just("t"), st.floats(0, 40), st.none(), st.none(), st.booleans()),   # time passes, then a tick
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event, max_size=60), st.sampled_from(["partial", "dead_letter"]), st.sampled_from([0.0, 5.0]),
       st.sampled_from(["member", "job"]), st.integers(1, 5))
def test_join_invariants(events, policy, stall_gap_s, etype, remember_partial):
    now = [1000.0]
    j = StandardizationJoin(REQ, timeout_s=30, policy=policy, replay_timeout_s=10, clock=lambda: now[0],
                            stall_gap_s=stall_gap_s, remember_partial=remember_partial, max_pending=50)
    offsets, outputs = Counter(), []
    seen_inputs: dict[tuple, set] = {}  # (key, version) -> {"UPSERT"/"DELETE"/processor}
    for n, (kind, a, b, c, replayed) in enumerate(events):
        if kind == "t":
            now[0] += a
            outputs += j.on_tick()
            continue
        eid, version = a, b
        key = f"{etype}:{eid}"
        raw = RawRef("updates" if kind == "u" else f"std.{c}", 0, n, key.encode(), b"", replayed)
        if kind == "r":  # dead-lettered and released by the caller: the join must never release it too
            msg = {"entity_type": etype, "entity_id": eid, "version": version, "processor": c}
            outputs += j.on_refused(msg, raw)
            seen_inputs.setdefault((key, version), set()).add(f"refused:{c}")
            continue
        offsets[raw.source] += 1
        if kind == "u":
            msg = {"entity_type": etype, "entity_id": eid, "version": version, "op": c}
            outputs += j.on_update(msg, raw)
        else:
            msg = {"entity_type": etype, "entity_id": eid, "version": version, "processor": c,
                   "features": {c: {"ids": [1], "weights": None}}, "produced_at": 0}
            outputs += j.on_features(msg, raw)
        seen_inputs.setdefault((key, version), set()).add(c)
    for _ in range(4):  # far in the future: every pending and open-partial join ends
        now[0] += 1.0 if stall_gap_s else 100.0
        for _ in range(200 if stall_gap_s else 1):
            now[0] += 1.0
            outputs += j.on_tick()
    assert not j.pending and not j.partials

    released = Counter()
    for o in outputs:
        for s in o.sources:
            released[s] += 1
    assert released == offsets, "every input released exactly once"

    completed: dict[str, list[int]] = {}
    for o in outputs:
        if isinstance(o, Joined):
            got = seen_inputs.get((o.key, o.version), set())
            assert "UPSERT" in got, "scored without an EntityUpdate UPSERT of its version"
            if o.partial:
                assert o.missing
            else:
                assert REQ[etype] <= got and not o.missing
                assert not any(f"refused:{p}" in got and p not in got for p in REQ[etype]), "complete despite a refusal"
                completed.setdefault(o.key, []).append(o.version)
        elif isinstance(o, Deleted):
            assert "DELETE" in seen_inputs.get((o.key, o.version), set())
        else:
            assert isinstance(o, (Released, JoinDeadLetter, ReplayTimeout))
    for key, versions in completed.items():
        assert versions == sorted(set(versions)), f"{key}: complete versions repeat or go back: {versions}"
