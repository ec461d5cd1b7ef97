"""StandardizationJoin semantics as plain Python with an injectable clock."""

import itertools

import pytest

from nearline.stream.join import Deleted, JoinDeadLetter, Joined, RawRef, Released, ReplayTimeout, StandardizationJoin

REQ = {"member": {"title", "skills"}, "job": {"title"}}
_off = itertools.count()


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def raw(topic="std"):
    return RawRef(topic, 0, next(_off), b"k", b"v")


def upd(eid, v, op="UPSERT", etype="member"):
    return {"entity_type": etype, "entity_id": eid, "version": v, "op": op}, raw("updates")


def feat(eid, v, proc, ids=(1,), etype="member"):
    return {"entity_type": etype, "entity_id": eid, "version": v, "processor": proc,
            "features": {proc: {"ids": list(ids), "weights": None}}, "produced_at": 5}, raw(f"std.{proc}")


def feed(join, events):
    out = []
    for kind, (msg, r) in events:
        out += join.on_update(msg, r) if kind == "u" else join.on_features(msg, r)
    return out


def joined(out):
    return [o for o in out if isinstance(o, Joined)]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_completes_in_any_order_with_every_source(order):
    j = StandardizationJoin(REQ, clock=Clock())
    events = [("u", upd("m1", 3)), ("f", feat("m1", 3, "title", [7])), ("f", feat("m1", 3, "skills", [1, 2]))]
    out = feed(j, [events[i] for i in order])
    [done] = joined(out)
    assert (done.key, done.version, done.partial) == ("member:m1", 3, False)
    assert done.features == {"title": {"ids": [7], "weights": None}, "skills": {"ids": [1, 2], "weights": None}}
    assert len(done.sources) == 3 and not j.pending  # completed entries are freed


def test_duplicates_are_released_not_double_counted():
    j = StandardizationJoin(REQ, clock=Clock())
    out = feed(j, [("f", feat("m1", 3, "title")), ("f", feat("m1", 3, "title")), ("u", upd("m1", 3)),
                   ("u", upd("m1", 3)), ("f", feat("m1", 3, "skills"))])
    assert len(joined(out)) == 1
    assert [o.reason for o in out if isinstance(o, Released)] == ["duplicate", "duplicate"]
    # a late duplicate after completion is stale
    out = feed(j, [("f", feat("m1", 3, "skills"))])
    assert isinstance(out[0], Released) and out[0].reason == "stale"
    assert j.counters["duplicates"] == 2 and j.counters["stale"] == 1


def test_newer_version_supersedes_pending_and_older_is_stale():
    j = StandardizationJoin(REQ, clock=Clock())
    out = feed(j, [("u", upd("m1", 1)), ("f", feat("m1", 1, "title")), ("u", upd("m1", 2))])
    sup = [o for o in out if isinstance(o, Released)]
    assert sup[0].reason == "superseded" and len(sup[0].sources) == 2  # v1's offsets are released
    out = feed(j, [("f", feat("m1", 1, "skills")), ("f", feat("m1", 2, "title")), ("f", feat("m1", 2, "skills"))])
    assert out[0].reason == "stale"
    [done] = joined(out)
    assert done.version == 2
    assert j.counters["joins_superseded"] == 1 and j.counters["joins_completed"] == 1


def test_delete_supersedes_and_is_emitted_at_once():
    j = StandardizationJoin(REQ, clock=Clock())
    out = feed(j, [("u", upd("m1", 1)), ("f", feat("m1", 1, "title")), ("u", upd("m1", 2, op="DELETE"))])
    dels = [o for o in out if isinstance(o, Deleted)]
    assert len(dels) == 1 and dels[0].version == 2 and not j.pending
    # late features of the deleted version: stale
    assert feed(j, [("f", feat("m1", 1, "skills"))])[0].reason == "stale"


@pytest.mark.parametrize("policy", ["partial", "dead_letter"])
def test_timeout_policy(policy):
    clock = Clock()
    j = StandardizationJoin(REQ, timeout_s=30, policy=policy, clock=clock)
    feed(j, [("u", upd("m1", 1)), ("f", feat("m1", 1, "title"))])
    clock.t += 29
    assert j.on_tick() == []
    clock.t += 2
    [o] = j.on_tick()
    if policy == "partial":
        assert isinstance(o, Joined) and o.partial and o.missing == ["skills"]
        assert set(o.features) == {"title"}
    else:
        assert isinstance(o, JoinDeadLetter) and "missing: skills" in o.error and o.raw.topic == "updates"
    assert len(o.sources) == 2 and not j.pending


def test_state_stays_bounded():
    clock = Clock()
    j = StandardizationJoin(REQ, timeout_s=1e9, max_pending=100, remember_completed=50, clock=clock)
    for i in range(1000):
        feed(j, [("u", upd(f"m{i}", 1))])
        clock.t += 0.001
        j.on_tick()
        feed(j, [("u", upd(f"j{i}", 1, etype="job")), ("f", feat(f"j{i}", 1, "title", etype="job"))])
    assert len(j.pending) <= 100 and len(j.completed) <= 50
    assert j.counters["joins_partial"] >= 900  # the oldest were timed out early, not dropped


def test_registering_a_model_changes_what_is_required():
    j = StandardizationJoin({"member": {"title", "skills", "geo"}}, clock=Clock())
    out = feed(j, [("u", upd("m1", 1)), ("f", feat("m1", 1, "title")), ("f", feat("m1", 1, "skills"))])
    assert not joined(out)
    assert len(joined(j.set_required({"member": {"title", "skills"}}))) == 1


def test_entity_type_without_models_completes_on_its_update():
    j = StandardizationJoin({}, clock=Clock())
    assert len(joined(feed(j, [("u", upd("x", 1, etype="job"))]))) == 1


def replayed(msg_raw):
    msg, r = msg_raw
    r.replayed = True
    return msg, r


def test_a_partially_replayed_version_is_never_scored_with_defaults():
    from nearline.stream.join import ReplayTimeout

    clock = Clock()
    j = StandardizationJoin(REQ, timeout_s=30, replay_timeout_s=5, policy="partial", clock=clock)
    # after a restart only part of an already-processed version is re-read
    feed(j, [("u", replayed(upd("m1", 1))), ("f", replayed(feat("m1", 1, "title")))])
    # a live join behind it, with its full timeout
    feed(j, [("u", upd("m2", 1))])
    clock.t += 6
    out = j.on_tick()
    assert len(out) == 1 and isinstance(out[0], ReplayTimeout) and out[0].missing == ["skills"]
    assert list(j.pending) == ["member:m2"]  # the live join keeps waiting
    clock.t += 30
    [partial] = j.on_tick()
    assert isinstance(partial, Joined) and partial.partial and partial.key == "member:m2"


def test_a_replayed_join_that_gets_live_messages_completes_normally():
    clock = Clock()
    j = StandardizationJoin(REQ, timeout_s=30, replay_timeout_s=5, clock=clock)
    out = feed(j, [("u", replayed(upd("m1", 1))), ("f", feat("m1", 1, "title")), ("f", feat("m1", 1, "skills"))])
    assert len(joined(out)) == 1


def test_pickled_state_leaves_out_the_completed_cache():
    import pickle

    j = StandardizationJoin(REQ, clock=Clock())
    feed(j, [("u", upd("m1", 1)), ("f", feat("m1", 1, "title")), ("u", upd("m2", 1))])
    for i in range(1000):
        j._remember(f"member:x{i}", 1)
    back = pickle.loads(pickle.dumps(j))
    assert list(back.pending) == ["member:m1", "member:m2"] and back.pending["member:m1"].processors == {"title"}
    assert len(back.completed) == 0 and len(j.completed) == 1000


# ---- issue 13: partial never blocks complete; features without update; the job's own stalls ----------

def test_late_messages_complete_a_version_emitted_partial():
    clock = Clock()
    j = StandardizationJoin(REQ, timeout_s=30, clock=clock)
    feed(j, [("u", upd("m1", 4)), ("f", feat("m1", 4, "title"))])
    clock.t += 31
    [p] = j.on_tick()
    assert p.partial and p.missing == ["skills"] and len(p.sources) == 2
    late = feat("m1", 4, "skills", [9])
    [c] = joined(feed(j, [("f", late)]))
    assert not c.partial and c.version == 4 and set(c.features) == {"title", "skills"}
    assert c.sources == [late[1].source]  # only the late message: the others went with the partial result
    assert j.counters["joins_completed_after_partial"] == 1
    assert feed(j, [("f", feat("m1", 4, "skills"))])[0].reason == "stale"  # completed now
    assert not j.partials and not j.pending


def test_a_partial_version_open_for_late_messages_is_closed_after_another_timeout():
    clock = Clock()
    j = StandardizationJoin({"member": {"title", "skills", "geo"}}, timeout_s=30, clock=clock)
    feed(j, [("u", upd("m1", 1)), ("f", feat("m1", 1, "title"))])
    clock.t += 31
    [p1] = j.on_tick()
    feed(j, [("f", feat("m1", 1, "skills"))])  # late, but geo never comes
    clock.t += 31
    [p2] = j.on_tick()
    assert p2.partial and p2.missing == ["geo"] and set(p2.features) == {"title", "skills"} and len(p2.sources) == 1
    assert feed(j, [("f", feat("m1", 1, "geo"))])[0].reason == "stale" and not j.partials
    # a newer version ends the open partial version at once
    feed(j, [("u", upd("m2", 1))])
    clock.t += 31
    j.on_tick()
    assert "member:m2" in j.partials
    feed(j, [("u", upd("m2", 2))])
    assert "member:m2" not in j.partials and j.pending["member:m2"].version == 2


def test_open_partial_versions_are_bounded():
    clock = Clock()
    j = StandardizationJoin(REQ, timeout_s=30, remember_partial=10, clock=clock)
    for i in range(50):
        feed(j, [("u", upd(f"m{i}", 1))])
    clock.t += 31
    assert len(joined(j.on_tick())) == 50 and len(j.partials) <= 10


@pytest.mark.parametrize("policy", ["partial", "dead_letter"])
def test_features_without_an_update_are_dead_lettered_never_scored(policy):
    clock = Clock()
    j = StandardizationJoin(REQ, timeout_s=30, policy=policy, clock=clock)
    feed(j, [("f", feat("ghost", 1, "title")), ("f", feat("ghost", 1, "skills"))])
    clock.t += 31
    [o] = j.on_tick()
    # not scored; the pipeline dead-letters it unless Redis holds a newer version (superseded)
    assert isinstance(o, ReplayTimeout) and not o.replayed and o.missing[0] == "<EntityUpdate>"
    assert o.error.startswith("features_without_update: ") and len(o.sources) == 2
    assert j.counters["features_without_update"] == 1 and j.counters["joins_partial"] == 0
    # not remembered as done: an update of that version that is merely late still joins
    assert feed(j, [("u", upd("ghost", 1))]) == [] and "member:ghost" in j.pending


def test_the_jobs_own_stall_is_not_timeout_time():
    clock = Clock()
    j = StandardizationJoin(REQ, timeout_s=30, stall_gap_s=5, clock=clock)
    feed(j, [("u", upd("m1", 1)), ("f", feat("m1", 1, "title"))])
    for _ in range(20):            # 20 s of normal batches
        clock.t += 1
        assert j.on_tick() == []
    clock.t += 30                  # the job was blocked for 30 s (Redis SIGSTOP): counts as 5
    assert j.on_tick() == [] and j.counters["join_stalls"] == 1
    [c] = joined(feed(j, [("f", feat("m1", 1, "skills"))]))  # its message, read after the stall
    assert not c.partial
    # the timeout still applies in active time
    feed(j, [("u", upd("m2", 1))])
    out = []
    for _ in range(31):
        clock.t += 1
        out += j.on_tick()
    assert [(o.key, o.partial) for o in joined(out)] == [("member:m2", True)]


def test_state_pickled_by_the_previous_version_still_loads():
    import pickle

    j = StandardizationJoin(REQ, clock=None)
    d = j.__dict__.copy()
    for k in ("partials", "remember_partial", "stall_gap_s", "stalled_s", "_last_wall"):
        del d[k]
    old = StandardizationJoin.__new__(StandardizationJoin)
    old.__dict__.update(d)
    restored = pickle.loads(pickle.dumps(old))
    assert restored.partials == {} and restored.stall_gap_s == 0.0


def test_a_refused_standardizer_output_is_not_waited_for():
    clock = Clock()
    j = StandardizationJoin(REQ, timeout_s=30, clock=clock)
    bad = feat("m1", 2, "skills")
    assert j.on_refused(*bad) == []
    [p] = joined(feed(j, [("f", feat("m1", 2, "title")), ("u", upd("m1", 2))]))
    assert p.partial and p.missing == ["skills"] and bad[1].source not in p.sources and len(p.sources) == 2
    # refused output alone, no update: no second dead letter, nothing scored
    j.on_refused(*feat("m9", 1, "skills"))
    clock.t += 31
    assert [type(o).__name__ for o in j.on_tick()] == ["Released"] and not j.pending
    # the dead_letter policy dead-letters the version as soon as its update is in, without the timeout
    d = StandardizationJoin(REQ, timeout_s=30, policy="dead_letter", clock=clock)
    assert d.on_refused(*feat("m1", 1, "skills")) == []
    [dl] = feed(d, [("u", upd("m1", 1))])
    assert isinstance(dl, JoinDeadLetter) and dl.reason == "standardizer_refused" and "refused by skills" in dl.error
    assert not d.pending and not joined(feed(d, [("f", feat("m1", 1, "title"))]))  # a late output: stale


def test_a_refusal_marker_from_a_standardizer_ends_the_wait_without_a_timeout():
    """An update the standardizers cannot serve (e.g. its raw fields are missing) comes with a refusal marker
    from each of them: the version completes (partial policy) at once, nothing holds the offsets."""
    clock = Clock()
    j = StandardizationJoin(REQ, timeout_s=600, clock=clock)
    out = j.on_update(*upd("m5", 7))
    for proc in ("title", "skills"):
        msg, r = feat("m5", 7, proc)
        msg.update(features={}, refused="standardize_failed: raw field(s) ['title'] missing from the update")
        out += j.on_refused(msg, r)
    [p] = joined(out)
    assert p.partial and sorted(p.missing) == ["skills", "title"] and not j.pending


def test_replayed_fragments_without_their_update_resolve_once_the_updates_are_re_read():
    """After a restart: fragments read by the previous run wait for their update only until the reader is
    past the previous run's read marks on the update partitions; a fragment whose update is re-read joins."""
    clock = Clock()
    j = StandardizationJoin(REQ, timeout_s=60, replay_timeout_s=30, clock=clock)

    def replayed(msg_raw):
        msg, r = msg_raw
        return msg, RawRef(r.topic, r.partition, r.offset, r.key, r.value, True)

    assert j.on_features(*replayed(feat("m1", 3, "title"))) == []      # its update was committed before
    assert j.on_features(*replayed(feat("m2", 4, "title"))) == []      # its update will be re-read
    assert j.on_update(*replayed(upd("m2", 4))) == []
    assert j.on_features(*feat("m3", 5, "title")) == []                 # new since the restart: not touched
    out = j.on_updates_replayed()
    assert [(type(o).__name__, o.key, o.missing) for o in out] == [("ReplayTimeout", "member:m1", ["<EntityUpdate>", "skills"])]
    assert set(j.pending) == {"member:m2", "member:m3"}
    assert j.on_updates_replayed() == []                                 # nothing replayed-only left to look at
