"""Which input offsets may be committed: only those whose every earlier event has had its effect written.

Plain Python, shared by the standardizers (delayed outputs) and the nearline job (events waiting in the
join). Per partition we keep the set of offsets read but not yet done; the committable position is the
smallest pending offset, or one past the highest done offset when nothing is pending.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from typing import Hashable


class OffsetTracker:
    def __init__(self) -> None:
        self._pending: dict[Hashable, set[int]] = defaultdict(set)
        self._heaps: dict[Hashable, list[int]] = defaultdict(list)
        self._high: dict[Hashable, int] = {}  # highest offset seen per partition
        self._committed: dict[Hashable, int] = {}

    def read(self, tp: Hashable, offset: int) -> None:
        """An event was read and its effect is not written yet."""
        if offset in self._pending[tp]:
            return
        self._pending[tp].add(offset)
        heapq.heappush(self._heaps[tp], offset)
        if offset > self._high.get(tp, -1):
            self._high[tp] = offset

    def done(self, tp: Hashable, offset: int) -> None:
        """The event's effect is written (or it was dead-lettered, or needs no effect)."""
        self._pending[tp].discard(offset)
        if offset > self._high.get(tp, -1):
            self._high[tp] = offset

    def high(self, tp: Hashable) -> int:
        """Highest offset read in the partition (-1 if none)."""
        return self._high.get(tp, -1)

    def pending_count(self) -> int:
        return sum(len(s) for s in self._pending.values())

    def committable(self) -> dict[Hashable, int]:
        """Next offset to read per partition, for partitions whose position moved since the last call."""
        out = {}
        for tp, high in self._high.items():
            heap, pend = self._heaps[tp], self._pending[tp]
            while heap and heap[0] not in pend:  # lazy deletion of done offsets
                heapq.heappop(heap)
            pos = heap[0] if heap else high + 1
            if pos > self._committed.get(tp, -1):
                out[tp] = pos
        return out

    def mark_committed(self, offsets: dict[Hashable, int]) -> None:
        for tp, pos in offsets.items():
            self._committed[tp] = max(pos, self._committed.get(tp, -1))

    def first_pending(self, tp: Hashable) -> int | None:
        """The smallest offset read but not yet done in the partition (None if nothing is pending)."""
        heap, pend = self._heaps.get(tp, []), self._pending.get(tp, set())
        while heap and heap[0] not in pend:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def forget(self, tps) -> None:
        """Drop all knowledge of these partitions (revoked in a rebalance): their new owner re-reads from
        the committed offset, so nothing pending here may be committed by us later."""
        for tp in tps:
            for d in (self._pending, self._heaps, self._high, self._committed):
                d.pop(tp, None)
