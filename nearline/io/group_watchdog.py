"""Detects a consumer-group member that is stuck without partitions while its group makes no progress.

Why: kafka-python 3.0.12 can leave a member of a group without partitions for minutes: a leader whose
metadata did not yet list a just-created topic's partitions assigns nothing and only reassigns at its
next metadata refresh (5 min by default), and a rejoin right after a first assignment (assigned, then
revoked 100 ms later) sometimes never completes, not even after the broker restarts (both seen in the
integration tests on Apache Kafka 4.1). The cure is to drop that consumer and join again with a new one.

Being without partitions is not wrong by itself: an extra instance of a processor (more instances than
partitions) has none, and it must not churn the group. So the watchdog acts only when the member has
had no partitions for ``stall_s`` *and* the group is not progressing: some input is uncommitted
(end offset > committed) and the committed total did not move since the previous look, ``stall_s`` ago.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

# () -> (sum of end offsets, sum of committed offsets) over the group's input partitions
OffsetTotals = Callable[[], tuple[int, int]]


@dataclass
class GroupStallWatchdog:
    stall_s: float = 30.0
    """How long a member may go without partitions before the group's progress is looked at."""
    unassigned_since: float | None = None
    last_look: float | None = None
    last_committed: int | None = field(default=None)

    def observe(self, now: float, assigned: bool, totals: OffsetTotals) -> bool:
        """Call once per poll loop. True when the consumer should be replaced (then call :meth:`reset`).

        ``totals`` is only called (it costs broker round trips) once the member has been unassigned for
        ``stall_s``, and then at most every ``stall_s``."""
        if assigned:
            self.reset()
            return False
        if self.unassigned_since is None:
            self.unassigned_since = now
            return False
        if now - self.unassigned_since < self.stall_s:
            return False
        if self.last_look is not None and now - self.last_look < self.stall_s:
            return False
        ends, committed = totals()
        previous, self.last_committed, self.last_look = self.last_committed, committed, now
        # the first look only records where the group stands; the next one, stall_s later, decides
        return previous is not None and committed == previous and ends > committed

    def reset(self) -> None:
        self.unassigned_since = self.last_look = self.last_committed = None
