"""DedupeEmbeddings: which model versions of an entity actually changed, against what Redis holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DedupeDecision:
    changed: dict[str, bytes]   # model key -> float32 bytes to write and publish
    unchanged: int
    stale: bool                 # the stored embedding is of a newer update version: write nothing


def same_vector(stored: bytes | None, new: bytes, tolerance: float) -> bool:
    if stored is None or len(stored) != len(new):
        return False
    if tolerance <= 0:
        return stored == new  # bitwise
    a = np.frombuffer(stored, dtype="<f4")
    b = np.frombuffer(new, dtype="<f4")
    return bool(np.max(np.abs(a - b)) <= tolerance)


def decide(stored_version: int | None, stored: dict[str, bytes | None], version: int,
           new: dict[str, bytes], tolerance: float = 0.0, *, partial: bool = False,
           stored_partial: bool = False) -> DedupeDecision:
    """An older update version never overwrites a newer one; an unchanged embedding is not written.

    A *partial* result (join timed out, defaults filled in) replaces only a strictly older version or a
    partial one: after a restart an already-written version can be re-read only in part (offsets are
    committed per partition), and its timed-out remainder must not overwrite the complete embedding.
    """
    if stored_version is not None and version < stored_version:
        return DedupeDecision({}, 0, True)
    if partial and stored_version is not None and version == stored_version and not stored_partial:
        return DedupeDecision({}, 0, True)
    if not partial and stored_partial and version == stored_version:
        # the complete result of a version stored partial: written even where equal, so that the
        # partial flag is cleared and consumers get the complete message
        return DedupeDecision(dict(new), 0, False)
    changed = {k: v for k, v in new.items() if not same_vector(stored.get(k), v, tolerance)}
    return DedupeDecision(changed, len(new) - len(changed), False)
