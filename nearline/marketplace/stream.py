"""EntityUpdate events from the synthetic marketplace: creates, relevant updates, irrelevant updates, deletes.

The streamer rebuilds the marketplace from the spec saved next to the generated data (the generator is
deterministic), so its raw text uses exactly the taxonomies the standardizers loaded.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from nearline.marketplace.generate import Marketplace, MarketplaceSpec, NoisyText

KINDS = ("create", "relevant_update", "irrelevant_update", "delete")


@dataclass
class StreamMix:
    create: float = 0.45
    relevant_update: float = 0.25
    irrelevant_update: float = 0.2
    delete: float = 0.1


@dataclass
class UpdateEvent:
    kind: str
    key: str
    record: dict


@dataclass
class UpdateStreamer:
    """Generates a plausible sequence of updates; keeps per-entity version and live state."""

    mp: Marketplace
    seed: int = 11
    mix: StreamMix = field(default_factory=StreamMix)

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)
        self.text = NoisyText(self.mp.tax, self.rng, self.mp.spec.noise)
        self.versions: dict[str, int] = {}
        self.fields: dict[str, dict[str, str]] = {}
        self.live: list[str] = []
        self.live_pos: dict[str, int] = {}
        self.counts = {k: 0 for k in KINDS}
        n_m, n_j = len(self.mp.members["id"]), len(self.mp.jobs["id"])
        self.pool = [("member", i) for i in range(n_m)] + [("job", i) for i in range(n_j)]
        self.order = self.rng.permutation(len(self.pool))
        self.next_new = 0

    # version: strictly increasing per entity and across restarts of the streamer (microseconds)
    def _version(self, key: str) -> int:
        v = max(self.versions.get(key, 0) + 1, time.time_ns() // 1000)
        self.versions[key] = v
        return v

    def _add_live(self, key):
        self.live_pos[key] = len(self.live)
        self.live.append(key)

    def _remove_live(self, key):
        i = self.live_pos.pop(key)
        last = self.live.pop()
        if last != key:
            self.live[i] = last
            self.live_pos[last] = i

    def _record(self, key: str, op: str, fields: dict) -> dict:
        etype, eid = key.split(":", 1)
        return {"entity_type": etype, "entity_id": eid, "version": self._version(key), "op": op,
                "event_time": int(time.time() * 1000), "fields": fields}

    def _entity(self, key):
        etype, eid = key.split(":", 1)
        return etype, int(eid[1:])

    def next(self) -> UpdateEvent:
        m = self.mix
        r = self.rng.random() * (m.create + m.relevant_update + m.irrelevant_update + m.delete)
        can_create = self.next_new < len(self.pool)
        if (r < m.create and can_create) or not self.live:
            if not can_create:
                raise StopIteration("every entity of the marketplace was created and none is live")
            etype, i = self.pool[self.order[self.next_new]]
            self.next_new += 1
            ents = self.mp.members if etype == "member" else self.mp.jobs
            key = f"{etype}:{ents['id'][i]}"
            f = self.mp.raw_fields(etype, i, self.text)
            self.fields[key] = f
            self._add_live(key)
            kind = "create"
            rec = self._record(key, "UPSERT", dict(f))
        else:
            key = self.live[int(self.rng.integers(0, len(self.live)))]
            r -= m.create
            if r < m.relevant_update:
                kind = "relevant_update"
                etype, i = self._entity(key)
                ents = self.mp.members if etype == "member" else self.mp.jobs
                # a model-relevant change: a promotion, a move, or a new skill
                what = self.rng.integers(0, 3)
                if what == 0:
                    ents["sen"][i] = ents["sen"][i] % 5 + 1
                elif what == 1:
                    ents["geo"][i] = int(self.rng.integers(1, self.mp.tax.size("geo")))
                else:
                    ents["skills"][i, int(self.rng.integers(1, self.mp.tax.size("skills")))] ^= True
                    if not ents["skills"][i].any():
                        ents["skills"][i, 1] = True
                f = self.mp.raw_fields(etype, i, self.text)
                self.fields[key] = f
                rec = self._record(key, "UPSERT", dict(f))
            elif r < m.relevant_update + m.irrelevant_update:
                kind = "irrelevant_update"
                # same model-relevant text, only a field no model reads changes
                f = dict(self.fields[key])
                f["about"] = f"updated profile note #{int(self.rng.integers(0, 1_000_000))}"
                rec = self._record(key, "UPSERT", f)
            else:
                kind = "delete"
                self._remove_live(key)
                rec = self._record(key, "DELETE", {})
        self.counts[kind] += 1
        return UpdateEvent(kind, key, rec)

    def take(self, n: int) -> Iterator[UpdateEvent]:
        for _ in range(n):
            try:
                yield self.next()
            except StopIteration:
                return


def load_marketplace(data_dir: Path) -> Marketplace:
    summary = Path(data_dir) / "summary.json"
    if not summary.exists():
        raise FileNotFoundError(f"{summary} not found: run `nearline marketplace generate` first")
    return Marketplace(MarketplaceSpec(**json.loads(summary.read_text())["spec"]))


def publish(streamer: UpdateStreamer, producer, topic: str, codec, count: int, rate: float,
            progress: bool = True) -> dict:
    """Publish ``count`` events at ``rate`` events/s (0 = as fast as possible); returns counts by kind."""
    from tqdm import tqdm

    start = time.monotonic()
    futures = []
    with tqdm(total=count, desc="updates", disable=not progress, unit="ev", mininterval=0.5) as bar:
        for n, ev in enumerate(streamer.take(count)):
            if rate > 0:
                due = start + n / rate
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            futures.append(producer.send(topic, key=ev.key.encode(), value=codec.encode("EntityUpdate", ev.record)))
            bar.update(1)
            if len(futures) >= 5000:
                producer.flush()
                for f in futures:
                    f.get(timeout=30)
                futures.clear()
    producer.flush()
    for f in futures:
        f.get(timeout=30)
    return dict(streamer.counts)
