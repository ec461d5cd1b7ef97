"""One WARNING when a dependency goes away and one INFO when it is back, per process: how long it lasted and
how many operations were retried meanwhile. Every retry in between is DEBUG.

Why: a broker outage used to write one ERROR line per failed try of every retry loop (hundreds per outage
in the job's log, dozens in each standardizer's), burying the project's own lines. The retry loops
(nearline.core.lifecycle.retry_until_done, nearline.io.delivery.send_acknowledged) report here instead.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("nearline.outage")


def dependency_of(exc: BaseException, what: str = "") -> str:
    """'Kafka', 'Redis' or 'schema registry' from the failure (the exception's module), else ``what``."""
    mod = type(exc).__module__ or ""
    if mod.startswith("kafka") or mod.startswith("confluent_kafka") or "Kafka" in what:
        return "Kafka"
    if mod.startswith("redis") or what.startswith("Redis"):
        return "Redis"
    if "schema registry" in what.lower():
        return "schema registry"
    return what or type(exc).__name__


class Outages:
    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self._down: dict[str, dict] = {}
        self._lock = threading.Lock()

    def failed(self, dependency: str, what: str, exc: BaseException, retry_in_s: float) -> None:
        with self._lock:
            o = self._down.get(dependency)
            if o is None:
                self._down[dependency] = {"since": self.clock(), "retries": 1, "ops": {what}}
                log.warning("%s unavailable (%s: %s): retrying %s until it answers; input offsets stay uncommitted",
                            dependency, type(exc).__name__, exc, what)
                return
            o["retries"] += 1
            o["ops"].add(what)
        log.debug("%s still unavailable (%s); retrying %s in %.1fs", dependency, exc, what, retry_in_s)

    def succeeded(self, dependency: str) -> None:
        if dependency not in self._down:  # the common case, without the lock
            return
        with self._lock:
            o = self._down.pop(dependency, None)
        if o is not None:
            ops = sorted(o["ops"])
            log.info("%s back after %.1fs: %d retries of %s", dependency, self.clock() - o["since"], o["retries"],
                     ", ".join(ops[:3]) + (f" and {len(ops) - 3} more" if len(ops) > 3 else ""))

    def down(self) -> dict[str, float]:
        """dependency -> seconds it has been down."""
        with self._lock:
            return {d: self.clock() - o["since"] for d, o in self._down.items()}


OUTAGES = Outages()
