"""Reads of stored embeddings across data centers: the local DC first, the others when it is unhealthy.

A DC is unhealthy for a reader when its Redis errors or times out, or when its nearline job's heartbeat
(written by the job's Kafka source about every second, see :func:`heartbeat_key`) is older than
``stale_after_s``: a dead job leaves Redis answering with embeddings that no longer change, which is
worse than reading another DC that processes every entity too. The reader then fails over to the next DC
in its ordered list (one log line and a metric per switch), keeps probing the preferred DC every
``probe_every_s`` and fails back as soon as it is healthy again.

Reads never go back in time: the reader remembers the highest version it served per entity (bounded
LRU) and, when the DC it reads from holds an older one (a DC that is catching up after an outage),
asks the next DC, and if none has at least that version serves what it served before.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import redis

from nearline.core.metrics import METRICS
from nearline.io.store import heartbeat_key

log = logging.getLogger(__name__)
VERSION_FIELD = b"_v"


@dataclass
class Endpoint:
    name: str
    redis_url: str


class NoHealthyDataCenter(RuntimeError):
    pass


class FailoverReader:
    def __init__(self, endpoints: list[Endpoint], prefix: str = "emb", group: str = "nearline-embeddings", *,
                 timeout_s: float = 0.5, stale_after_s: float | None = 30.0, probe_every_s: float = 2.0,
                 remember: int = 100_000, metrics=METRICS):
        if not endpoints:
            raise ValueError("FailoverReader needs at least one endpoint")
        self.endpoints, self.prefix, self.group = endpoints, prefix, group
        self.stale_after_s, self.probe_every_s, self.metrics = stale_after_s, probe_every_s, metrics
        self.clients = [redis.Redis.from_url(e.redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
                        for e in endpoints]
        self.current = 0  # index of the DC reads go to
        self._next_probe = 0.0
        self._heartbeat_checked: dict[int, tuple[float, bool]] = {}
        self._served: OrderedDict[tuple[str, str], tuple[int, dict[bytes, bytes]]] = OrderedDict()
        self._remember = remember
        self.switches: list[tuple[str, str, str]] = []  # (from, to, why), in order

    # ---- health --------------------------------------------------------------------------
    def _job_alive(self, i: int) -> bool:
        """Heartbeat check, at most once a second per DC (raises redis errors like a read would)."""
        if self.stale_after_s is None:
            return True
        now = time.monotonic()
        checked = self._heartbeat_checked.get(i)
        if checked and now - checked[0] < 1.0:
            return checked[1]
        raw = self.clients[i].get(heartbeat_key(self.prefix, self.group))
        alive = raw is not None and time.time() * 1000 - int(raw) <= self.stale_after_s * 1000
        self._heartbeat_checked[i] = (now, alive)
        return alive

    def _switch(self, to: int, why: str) -> None:
        frm = self.endpoints[self.current].name
        dst = self.endpoints[to].name
        if to < self.current:
            log.warning("embedding reads fail back from %s to %s (%s)", frm, dst, why)
            self.metrics.inc("client_failbacks")
        else:
            log.warning("embedding reads fail over from %s to %s (%s)", frm, dst, why)
            self.metrics.inc("client_failovers")
        self.current = to
        self.switches.append((frm, dst, why))

    def _maybe_fail_back(self) -> None:
        if self.current == 0 or time.monotonic() < self._next_probe:
            return
        self._next_probe = time.monotonic() + self.probe_every_s
        for i in range(self.current):
            try:
                self.clients[i].ping()
                if self._job_alive(i):
                    self._switch(i, "healthy again")
                    return
            except redis.RedisError:
                continue

    # ---- reads ---------------------------------------------------------------------------
    def _read(self, i: int, key: str) -> dict[bytes, bytes]:
        if not self._job_alive(i):
            raise NoHealthyDataCenter(f"the nearline job of {self.endpoints[i].name} has not written a heartbeat "
                                      f"for more than {self.stale_after_s:g}s")
        return self.clients[i].hgetall(key)

    def get_raw(self, entity_type: str, entity_id: str) -> tuple[str, dict[bytes, bytes]]:
        """(name of the DC that answered, the stored hash) for one entity."""
        self._maybe_fail_back()
        key = f"{self.prefix}:{entity_type}:{entity_id}"
        ek = (entity_type, entity_id)
        served = self._served.get(ek)
        errors = []
        n = len(self.endpoints)
        start = self.current  # the order is fixed before the loop: a failed read below moves self.current
        for step in range(n):
            i = (start + step) % n
            try:
                raw = self._read(i, key)
            except (redis.RedisError, NoHealthyDataCenter) as exc:
                errors.append(f"{self.endpoints[i].name}: {exc}")
                if i == self.current and n > 1:
                    self._switch((i + 1) % n, str(exc).splitlines()[0][:120])
                    self._next_probe = time.monotonic() + self.probe_every_s
                continue
            version = int(raw[VERSION_FIELD]) if VERSION_FIELD in raw else -1
            if served is not None and version < served[0]:
                # this DC is behind what the caller already saw: ask the next one, else serve the old answer
                self.metrics.inc("client_older_version_avoided")
                continue
            self._remember_served(ek, version, raw)
            return self.endpoints[i].name, raw
        if served is not None:
            return "cache", served[1]
        raise NoHealthyDataCenter("no data center answered: " + "; ".join(errors))

    def _remember_served(self, ek, version: int, raw: dict) -> None:
        if version < 0:
            return
        self._served[ek] = (version, raw)
        self._served.move_to_end(ek)
        while len(self._served) > self._remember:
            self._served.popitem(last=False)

    @property
    def current_dc(self) -> str:
        return self.endpoints[self.current].name
