"""Which partition groups a job instance owns, when N instances share the input partitions.

Every input topic (entity updates, mirrored updates, each standardizer's output) is keyed by entity and has
the same partition count, so partition p of every input topic holds everything about the entities hashed
to p: a *partition group*. The join never needs data from another group, so instances can split the groups
between them with no shuffle (co-partitioning, as in Kafka Streams and Samza).

Two ways to assign, both plain here:

* static (``--instance I --instances N``, a Kubernetes StatefulSet): instance I owns the groups p with
  ``p % N == I``. A killed instance is restarted by its supervisor and resumes its own groups from the
  committed offsets; nobody else reads them meanwhile.
* group (``--assignment group``): Kafka's consumer-group protocol decides (nearline.io.membership); instances
  join and leave at any time, and the owner of a group changes on a rebalance. The new owner starts the
  group afresh from the committed offsets (``Ownership.epoch`` tells the source that it must).
"""

from __future__ import annotations

import os
import re
from typing import Protocol


class AssignmentError(ValueError):
    """An instance/instances pair that cannot work; the message says what to change."""


def static_groups(partitions: int, instance: int, instances: int) -> list[int]:
    """The partition groups instance ``instance`` of ``instances`` owns: every p with p % instances == instance."""
    if instances < 1:
        raise AssignmentError(f"--instances must be at least 1, not {instances}")
    if not 0 <= instance < instances:
        raise AssignmentError(f"--instance must be in 0..{instances - 1} (instances: {instances}), not {instance}")
    if instances > partitions:
        raise AssignmentError(f"{instances} instances but only {partitions} partitions per input topic: instances "
                              f"{list(range(partitions, instances))} would own nothing; use at most {partitions} "
                              f"instances or more partitions (topics.partitions)")
    return [p for p in range(partitions) if p % instances == instance]


def instance_from_hostname(hostname: str | None = None) -> int:
    """A StatefulSet pod's ordinal: ``nearline-job-2`` -> 2 (for ``--instance auto``)."""
    name = hostname if hostname is not None else os.environ.get("HOSTNAME", "")
    m = re.search(r"-(\d+)$", name)
    if not m:
        raise AssignmentError(f"--instance auto needs a host name ending in -<ordinal> (a StatefulSet pod), "
                              f"not {name!r}: pass --instance N")
    return int(m.group(1))


class Ownership(Protocol):
    """What the source asks, before each poll of group p: do I own it, and since which (re)assignment."""

    def owns(self, group: int) -> bool: ...

    def epoch(self, group: int) -> int: ...


class StaticOwnership:
    """Owns a fixed list of groups, forever (epoch 0)."""

    def __init__(self, groups: list[int]):
        self.groups = set(groups)

    def owns(self, group: int) -> bool:
        return group in self.groups

    def epoch(self, group: int) -> int:
        return 0
