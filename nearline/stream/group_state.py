"""What the job holds per partition group (the join, the offset tracker, the batch sequencer), kept in the
process that reads the group, one lock per group.

Why not Beam state: the group's reader (its Kafka consumer) already lives in this process, and a restart
rebuilds the join by re-reading from the committed offsets (offsets are committed only after effects), so
durable state buys nothing; and Beam state read/write per batch was measured as a cost on the FnApiRunner
(pickling, the state cache's size walk) while on Prism, with bundles on several threads, a group's batches
could meet a stale copy. A lock per group makes each batch see the previous one's state, on any runner
that runs the group's reader and join in one process (FnApiRunner, Prism LOOPBACK, one instance of N).
"""

from __future__ import annotations

import threading
from typing import Callable, Hashable

from nearline.stream.pipeline import PartitionGroupState


class GroupStates:
    def __init__(self) -> None:
        self._states: dict[Hashable, PartitionGroupState] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def lock(self, group: Hashable) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(group, threading.Lock())

    def get(self, group: Hashable, new: Callable[[], PartitionGroupState]) -> PartitionGroupState:
        """The group's state (call with its lock held), made with ``new`` the first time."""
        st = self._states.get(group)
        if st is None:
            st = self._states[group] = new()
        return st

    def replace(self, group: Hashable, st: PartitionGroupState) -> None:
        self._states[group] = st


_BY_JOB: dict[str, GroupStates] = {}
_BY_JOB_LOCK = threading.Lock()


def group_states(job: str) -> GroupStates:
    """The process-wide states of one job (its consumer group), shared by every instance of the join DoFn."""
    with _BY_JOB_LOCK:
        return _BY_JOB.setdefault(job, GroupStates())
