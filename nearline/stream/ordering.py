"""BatchSequencer: a partition group's batches, handed to the join in the order they were polled.

The join and the offset tracker need a group's batches in poll order: the tracker may only advance a
partition's commit position over offsets it has seen, and a batch processed before an earlier one would
let it skip that earlier one's offsets. Beam does not promise element order, and runners that run bundles
in parallel (Prism, Flink) do reorder; the local FnApiRunner happens not to. So the source numbers each
group's batches (``seq``, from 0 at each ``epoch``: a new reader of the group, after a start or a
reassignment) and the join releases them strictly in that order, holding early arrivals back.

Plain Python with explicit state (it lives in the join's Beam state beside the join itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class BatchSequencer:
    epoch: int = -1
    next_seq: int = 0
    held: dict[int, Any] = field(default_factory=dict)   # seq -> batch that arrived early

    def offer(self, batch) -> tuple[list, bool]:
        """(the batches now ready, in order; whether a new epoch began, i.e. whatever the join held for
        the group belongs to an older reader and must be dropped). A batch of an older epoch is dropped:
        its records are re-read by the newer reader from the committed offsets."""
        new_epoch = batch.epoch > self.epoch
        if new_epoch:
            self.epoch, self.next_seq = batch.epoch, 0
            self.held = {s: b for s, b in self.held.items() if b.epoch == batch.epoch}
        elif batch.epoch < self.epoch:
            return [], False
        self.held[batch.seq] = batch
        ready = []
        while self.next_seq in self.held:
            ready.append(self.held.pop(self.next_seq))
            self.next_seq += 1
        return ready, new_epoch and self.epoch > 0
