"""StandardizationJoin: the stream-stream join of an entity update with its standardizers' outputs.

Plain Python with an injectable clock, no Beam, Kafka or Redis. Per entity (``<type>:<id>``) at most one
update version is pending: the newest seen. It completes when its EntityUpdate and every standardizer
the entity type's registered models need have delivered *that* version. Messages may arrive in any
order and more than once:

* a duplicate (same processor, same version) is released at once;
* a message of an older version than the pending one, or of a version already completed, is stale;
* a message of a newer version supersedes the pending one (counted, never scored);
* a DELETE supersedes whatever is pending and is emitted at once;
* after ``timeout_s`` an incomplete join is emitted with ``partial=True`` (missing features take the
  manifest defaults) or dead-lettered, as configured;
* a partial join stays open for late messages of its version for another ``timeout_s``: if they
  complete it, the complete result is emitted (and replaces the partial one downstream), so a partial
  result never blocks the complete one of the same version; if only some arrive, it is re-emitted as
  a partial with what arrived;
* standardized features whose EntityUpdate never arrives are dead-lettered (reason
  ``features_without_update``), never scored: scoring them would invent an entity;
* time is the input's poll time minus the job's own stalls: a gap between batches longer than
  ``stall_gap_s`` (the job was blocked retrying Redis, stopped, ...) counts as only ``stall_gap_s``,
  because the messages that would complete the pending joins were waiting unread meanwhile.

Completed and superseded entries are freed; a bounded LRU remembers recently completed versions to
drop late duplicates cheaply (older ones are still refused downstream by the Redis version check).
Every output carries the ``sources`` (topic-partition, offset) of the messages it consumed, so the
caller can commit input offsets once the output's effect is written.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Hashable

Source = tuple[Hashable, int]  # (topic-partition, offset)


@dataclass
class RawRef:
    """Where a message came from, and its bytes (kept only for dead-lettering a timed-out join)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    replayed: bool = False  # read before, by a previous run of the job (offset <= its last read offset)

    @property
    def source(self) -> Source:
        return ((self.topic, self.partition), self.offset)


@dataclass
class Pending:
    key: str
    entity_type: str
    entity_id: str
    version: int
    first_seen: float
    op: str | None = None                                 # set when the EntityUpdate has arrived
    features: dict[str, dict] = field(default_factory=dict)
    processors: set[str] = field(default_factory=set)
    sources: list[Source] = field(default_factory=list)
    first_raw: RawRef | None = None
    last_produced_ms: int = 0                             # newest standardizer output (latency metric)
    replayed_only: bool = True                            # every message so far was read by a previous run
    partial_at: float | None = None                       # when it was emitted partial (then in `partials`)
    refused: set[str] = field(default_factory=set)        # processors whose output was refused (dead-lettered)


@dataclass
class Joined:
    key: str
    entity_type: str
    entity_id: str
    version: int
    features: dict[str, dict]
    partial: bool
    missing: list[str]
    sources: list[Source]
    completed_at: float
    last_produced_ms: int = 0


@dataclass
class Deleted:
    key: str
    entity_type: str
    entity_id: str
    version: int
    sources: list[Source]


@dataclass
class Released:
    """Consumed with no effect to write (duplicate, stale, superseded, nothing registered)."""

    reason: str
    sources: list[Source]


@dataclass
class ReplayTimeout:
    """A join that timed out and must not be scored: one made only of messages a previous run had read
    (``replayed``: after a restart, offsets are committed per partition, so a version already processed
    can be re-read in part and never complete), or standardized features whose EntityUpdate never came
    (``replayed`` False; ``error`` says so). The caller asks Redis: a version already written, or
    superseded by a newer one (a newer write or a delete marker), is released and counted; else it is
    dead-lettered with the reason."""

    key: str
    entity_type: str
    entity_id: str
    version: int
    missing: list[str]
    raw: RawRef
    sources: list[Source]
    replayed: bool = True
    error: str = ""


@dataclass
class JoinDeadLetter:
    raw: RawRef
    error: str
    sources: list[Source]
    reason: str = "join_timeout"  # a nearline.validate.REASONS key


Output = Joined | Deleted | Released | JoinDeadLetter | ReplayTimeout


class StandardizationJoin:
    def __init__(self, required: dict[str, set[str]], *, timeout_s: float = 30.0, policy: str = "partial",
                 max_pending: int = 200_000, remember_completed: int = 100_000,
                 replay_timeout_s: float = 10.0, clock: Callable[[], float] = time.time,
                 stall_gap_s: float = 0.0, remember_partial: int = 50_000):
        if policy not in ("partial", "dead_letter"):
            raise ValueError(f"policy must be partial or dead_letter, not {policy!r}")
        self.required = {k: set(v) for k, v in required.items()}
        self.timeout_s, self.policy, self.max_pending = timeout_s, policy, max_pending
        self.replay_timeout_s = min(replay_timeout_s, timeout_s)
        self.clock = clock
        self.saw_replayed = False
        self.now_override: float | None = None  # set per batch: time comes with the input (deterministic replay)
        self.pending: "OrderedDict[str, Pending]" = OrderedDict()  # insertion order = age order
        self.completed: "OrderedDict[str, int]" = OrderedDict()    # key -> last completed version (LRU)
        self.remember_completed = remember_completed
        # partial joins still open for their late messages (key -> entry), oldest first, bounded
        self.partials: "OrderedDict[str, Pending]" = OrderedDict()
        self.remember_partial = remember_partial
        self.stall_gap_s, self.stalled_s, self._last_wall = stall_gap_s, 0.0, None
        self.counters = {"joins_completed": 0, "joins_partial": 0, "joins_superseded": 0, "joins_timed_out_dead_letter": 0,
                         "duplicates": 0, "stale": 0, "deletes": 0, "replay_timeouts": 0,
                         "joins_completed_after_partial": 0, "features_without_update": 0, "join_stalls": 0}

    def __setstate__(self, d: dict) -> None:
        # state pickled by an older version of this class lacks the newer attributes
        d.setdefault("partials", OrderedDict())
        d.setdefault("remember_partial", 50_000)
        d.setdefault("stall_gap_s", 0.0)
        d.setdefault("stalled_s", 0.0)
        d.setdefault("_last_wall", None)
        for k in ("joins_completed_after_partial", "features_without_update", "join_stalls"):
            d["counters"].setdefault(k, 0)
        self.__dict__.update(d)

    # The completed-versions LRU is a cache, not durable state: it is left out when the join is pickled
    # into Beam state (pickling 50k entries cost 10 ms per batch) and the DoFn keeps it in memory. Losing
    # it only means a late message of a completed version waits for its timeout before it is released;
    # dedupe and ReplayTimeout keep it from ever overwriting a newer or complete embedding.
    def __getstate__(self) -> dict:
        d = self.__dict__.copy()
        d["completed"] = OrderedDict()
        return d

    def set_required(self, required: dict[str, set[str]]) -> list[Output]:
        """The registered models changed: pending joins may now be complete."""
        self.required = {k: set(v) for k, v in required.items()}
        out: list[Output] = []
        for key in list(self.pending):
            out += self._maybe_complete(self.pending[key])
        for key in list(self.partials):
            out += self._maybe_complete(self.partials[key])
        return out

    # ---- inputs ------------------------------------------------------------------------------
    def on_update(self, upd: dict, raw: RawRef) -> list[Output]:
        key, entry, out = self._locate(upd, raw)
        if entry is None:
            return out
        if entry.op is not None:
            self.counters["duplicates"] += 1
            return out + [Released("duplicate", [raw.source])]
        entry.op = upd["op"]
        entry.sources.append(raw.source)
        entry.replayed_only &= raw.replayed
        if entry.first_raw is None or entry.first_raw.topic != raw.topic:
            entry.first_raw = raw  # prefer the EntityUpdate's bytes for a dead letter
        if entry.op == "DELETE":
            # a delete needs no features: everything this version collected goes with it
            del self.pending[key]
            self._remember(key, entry.version)
            self.counters["deletes"] += 1
            return out + [Deleted(key, entry.entity_type, entry.entity_id, entry.version, entry.sources)]
        return out + self._maybe_complete(entry)

    def on_features(self, feats: dict, raw: RawRef) -> list[Output]:
        _, entry, out = self._locate(feats, raw)
        if entry is None:
            return out
        proc = feats["processor"]
        if proc in entry.processors:
            self.counters["duplicates"] += 1
            return out + [Released("duplicate", [raw.source])]
        entry.processors.add(proc)
        entry.features.update(feats["features"])
        entry.sources.append(raw.source)
        entry.replayed_only &= raw.replayed
        entry.last_produced_ms = max(entry.last_produced_ms, int(feats.get("produced_at") or 0))
        return out + self._maybe_complete(entry)

    def on_refused(self, feats: dict, raw: RawRef) -> list[Output]:
        """A standardizer's output for this version was refused: the job refused it (and dead-letters it),
        or the standardizer refused the update and said so (a StandardizedFeatures with ``refused``). The
        caller releases the message's offset. The version will never get that output, so it does not wait
        for it: under the partial policy it completes as soon as the others are in, flagged partial, the
        refused processor's features taking the manifest defaults (as after a timeout); under the
        dead_letter policy it is dead-lettered as soon as its update is in."""
        _, entry, out = self._locate(feats, raw)
        out = [o for o in out if o.sources != [raw.source]]  # the caller releases the refused message
        if entry is None or feats["processor"] in entry.processors:
            return out
        entry.processors.add(feats["processor"])
        entry.refused.add(feats["processor"])
        entry.replayed_only &= raw.replayed
        return out + self._maybe_complete(entry)

    def on_updates_replayed(self, now: float | None = None) -> list[Output]:
        """The reader has re-read every EntityUpdate the previous run had read (it is past their read
        marks). A replayed-only join still without its update will not get it: the update's offset was
        committed before the restart, i.e. its version was resolved then. Time them out now (the caller
        releases them after its Redis check) instead of holding their offsets for replay_timeout_s."""
        if not self.saw_replayed:
            return []
        now = self._now() if now is None else now
        due = [k for k, e in self.pending.items() if e.replayed_only and e.op is None]
        out = [self._timeout(self.pending.pop(k), now) for k in due]
        self.saw_replayed = any(e.replayed_only for e in self.pending.values())
        return out

    def on_tick(self, now: float | None = None) -> list[Output]:
        """Time out joins older than timeout_s (and the oldest beyond max_pending)."""
        now = self._now() if now is None else self._active(now)
        out: list[Output] = []
        while self.partials:
            key, entry = next(iter(self.partials.items()))
            if now - entry.partial_at < self.timeout_s:
                break
            del self.partials[key]
            out += self._close_partial(entry, now)
        while self.pending:
            key, entry = next(iter(self.pending.items()))
            overfull = len(self.pending) > self.max_pending
            if not overfull and now - entry.first_seen < self.replay_timeout_s:
                break
            if overfull or now - entry.first_seen >= (self.replay_timeout_s if entry.replayed_only else self.timeout_s):
                del self.pending[key]
                out.append(self._timeout(entry, now))
                continue
            # the oldest is a live join within its timeout; replayed-only joins behind it may be due
            # (they exist only for a while after a restart: skip the scan otherwise)
            if self.saw_replayed:
                due = [k for k, e in self.pending.items() if e.replayed_only and now - e.first_seen >= self.replay_timeout_s]
                for k in due:
                    out.append(self._timeout(self.pending.pop(k), now))
                self.saw_replayed = any(e.replayed_only for e in self.pending.values())
            break
        while len(self.partials) > self.remember_partial:  # bounded: the oldest close early
            out += self._close_partial(self.partials.popitem(last=False)[1], now)
        return out

    # ---- internals ---------------------------------------------------------------------------
    def _now(self) -> float:
        return self._active(self.now_override if self.now_override is not None else self.clock())

    def _active(self, wall: float) -> float:
        """Wall time minus the job's own stalls (gaps between calls longer than stall_gap_s)."""
        if self.stall_gap_s > 0 and self._last_wall is not None and wall - self._last_wall > self.stall_gap_s:
            self.stalled_s += wall - self._last_wall - self.stall_gap_s
            self.counters["join_stalls"] += 1
        if self._last_wall is None or wall > self._last_wall:
            self._last_wall = wall
        return wall - self.stalled_s

    def _locate(self, msg: dict, raw: RawRef) -> tuple[str, Pending | None, list[Output]]:
        """The pending entry this message belongs to (None if stale), and what locating it released."""
        key = f"{msg['entity_type']}:{msg['entity_id']}"
        out: list[Output] = []
        return key, self._entry_for(key, msg["entity_type"], msg["entity_id"], msg["version"], raw, out), out

    def _entry_for(self, key, etype, eid, version, raw: RawRef, out: list) -> Pending | None:
        part = self.partials.get(key)
        if part is not None:
            if version == part.version:
                return part  # a late message of a version emitted partial: it may still complete it
            if version < part.version:
                self.counters["stale"] += 1
                out.append(Released("stale", [raw.source]))
                return None
            del self.partials[key]  # a newer version: the partial one is final
            self._remember(key, part.version)
            if part.sources:
                out.append(Released("superseded", part.sources))
        done_v = self.completed.get(key)
        if done_v is not None and version <= done_v:
            self.counters["stale"] += 1
            out.append(Released("stale", [raw.source]))
            return None
        entry = self.pending.get(key)
        if entry is not None:
            if version < entry.version:
                self.counters["stale"] += 1
                out.append(Released("stale", [raw.source]))
                return None
            if version > entry.version:
                self.counters["joins_superseded"] += 1
                del self.pending[key]
                out.append(Released("superseded", entry.sources))
                entry = None
        if entry is None:
            entry = Pending(key, etype, eid, version, self._now(), first_raw=raw)
            self.pending[key] = entry
            self.saw_replayed |= raw.replayed
        return entry

    def _missing(self, entry: Pending) -> list[str]:
        need = self.required.get(entry.entity_type, set())
        missing = sorted(need - entry.processors)
        if entry.op is None:
            missing = ["<EntityUpdate>"] + missing
        return missing

    def _maybe_complete(self, entry: Pending) -> list[Output]:
        if entry.op == "UPSERT" and entry.refused and self.policy != "partial":
            # dead_letter policy: a version a standardizer refused can never complete; say so now
            self.pending.pop(entry.key, None)
            self.partials.pop(entry.key, None)
            self._remember(entry.key, entry.version)
            self.counters["joins_refused_dead_letter"] = self.counters.get("joins_refused_dead_letter", 0) + 1
            return [JoinDeadLetter(entry.first_raw, f"standardizer_refused: {entry.key} version {entry.version}: "
                                   f"refused by {', '.join(sorted(entry.refused))} (its dead letter says why)",
                                   entry.sources, reason="standardizer_refused")]
        if entry.op != "UPSERT" or self._missing(entry):
            return []
        if entry.partial_at is not None:
            del self.partials[entry.key]
            self.counters["joins_completed_after_partial"] += 1
        else:
            del self.pending[entry.key]
        self._remember(entry.key, entry.version)
        refused = sorted(getattr(entry, "refused", ()))
        self.counters["joins_partial" if refused else "joins_completed"] += 1
        return [Joined(entry.key, entry.entity_type, entry.entity_id, entry.version, entry.features, bool(refused),
                       refused, entry.sources, self._now(), entry.last_produced_ms)]

    def _timeout(self, entry: Pending, now: float) -> Output:
        missing = self._missing(entry)
        if entry.replayed_only:
            self._remember(entry.key, entry.version)
            self.counters["replay_timeouts"] += 1
            return ReplayTimeout(entry.key, entry.entity_type, entry.entity_id, entry.version, missing,
                                 entry.first_raw, entry.sources)
        if entry.op is None:
            # features with no EntityUpdate: nothing says this entity (still) exists. Not remembered, so
            # an update of this version that is merely late still starts a join of its own.
            if not entry.sources:  # only refused outputs, already dead-lettered: nothing more to say
                return Released("refused_only", [])
            self.counters["features_without_update"] += 1
            return ReplayTimeout(entry.key, entry.entity_type, entry.entity_id, entry.version, missing,
                                 entry.first_raw, entry.sources, replayed=False, error=(
                                     f"features_without_update: standardized features of {entry.key} version "
                                     f"{entry.version} ({', '.join(sorted(entry.processors))}) had no EntityUpdate "
                                     f"within {self.timeout_s:g}s"))
        if self.policy == "partial":
            self.counters["joins_partial"] += 1
            joined = Joined(entry.key, entry.entity_type, entry.entity_id, entry.version, dict(entry.features), True,
                            missing, entry.sources, now, entry.last_produced_ms)
            self._park_partial(entry, now)
            return joined
        self._remember(entry.key, entry.version)
        self.counters["joins_timed_out_dead_letter"] += 1
        return JoinDeadLetter(entry.first_raw, f"join_timeout: join of {entry.key} version {entry.version} timed out "
                              f"after {self.timeout_s:g}s; missing: {', '.join(missing)}", entry.sources)

    def _park_partial(self, entry: Pending, now: float) -> None:
        """Keep a version just emitted partial open for its late messages (their sources only: the
        ones it was emitted with are the partial result's)."""
        entry.sources, entry.partial_at, entry.first_raw = [], now, None
        self.partials[entry.key] = entry

    def _close_partial(self, entry: Pending, now: float) -> list[Output]:
        """A partial version's wait for late messages is over: if some arrived, emit it again (still
        partial, with what arrived); later messages of it are stale."""
        self._remember(entry.key, entry.version)
        if not entry.sources:
            return []
        self.counters["joins_partial"] += 1
        return [Joined(entry.key, entry.entity_type, entry.entity_id, entry.version, dict(entry.features), True,
                       self._missing(entry), entry.sources, now, entry.last_produced_ms)]

    def _remember(self, key: str, version: int) -> None:
        self.completed[key] = max(version, self.completed.get(key, version))
        self.completed.move_to_end(key)
        while len(self.completed) > self.remember_completed:
            self.completed.popitem(last=False)
