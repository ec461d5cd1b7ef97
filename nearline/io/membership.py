"""Partition-group ownership through Kafka's consumer-group protocol: job instances join and leave at any
time, and the broker's group coordinator decides which instance owns which partition group.

A member consumer subscribes to the entity-updates topic in its own group (``<consumer_group>.owners``) and
never reads a record: every assigned partition is paused at once, so ``poll`` only heartbeats and takes part
in rebalances. Partition p of that topic stands for partition group p (p of every co-partitioned input).
Offsets are still committed in the job's main group by the source's own, manually assigned consumers: the
owners group only decides who reads, which keeps commits free of the group generation checks (a commit
from a member that lost the partition a moment ago is still a commit of effects already written).

Each gain of a group bumps its epoch; the source then opens the group afresh from the committed offsets and
the join forgets whatever it held for it (the new owner may have processed it meanwhile).
"""

from __future__ import annotations

import logging
import threading
import time

from nearline.io import kafka_io

log = logging.getLogger(__name__)


class GroupMembership:
    """Ownership of partition groups decided by a Kafka consumer group (see the module doc).

    ``start()`` spawns a daemon thread that polls the member consumer; ``owns(p)``/``epoch(p)`` are safe to
    call from any thread. ``wait_assigned`` blocks until the first assignment (tests, start-up logs)."""

    def __init__(self, bootstrap: str, group: str, topic: str, *, session_timeout_ms: int = 10_000,
                 poll_ms: int = 200):
        self.bootstrap, self.group, self.topic = bootstrap, group, topic
        self.session_timeout_ms, self.poll_ms = session_timeout_ms, poll_ms
        self._owned: set[int] = set()
        self._epochs: dict[int, int] = {}
        self._lock = threading.Lock()
        self._assigned_once = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the Ownership contract (nearline.stream.assignment) --------------------------------------------
    def owns(self, group: int) -> bool:
        with self._lock:
            return group in self._owned

    def epoch(self, group: int) -> int:
        with self._lock:
            return self._epochs.get(group, 0)

    def owned(self) -> set[int]:
        with self._lock:
            return set(self._owned)

    # -- the member --------------------------------------------------------------------------------------
    def start(self) -> "GroupMembership":
        self._thread = threading.Thread(target=self._run, name="nearline-membership", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wait_assigned(self, timeout_s: float) -> bool:
        return self._assigned_once.wait(timeout_s)

    def _assign(self, consumer, partitions) -> None:
        gained = {tp.partition for tp in partitions}
        if partitions:
            consumer.pause(*partitions)
        with self._lock:
            for p in gained - self._owned:
                self._epochs[p] = self._epochs.get(p, 0) + 1
            self._owned = set(gained)
        self._assigned_once.set()
        log.info("partition groups owned by this instance: %s", sorted(gained))

    def _revoke(self, partitions) -> None:
        with self._lock:
            self._owned -= {tp.partition for tp in partitions}
        log.info("partition groups revoked: %s", sorted(tp.partition for tp in partitions))

    def _run(self) -> None:
        member = self

        class Listener(kafka_io.ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                member._revoke(revoked)

            def on_partitions_assigned(self, assigned):
                member._assign(consumer, assigned)

        consumer = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = kafka_io.make_consumer(self.bootstrap, self.group,
                                                      session_timeout_ms=self.session_timeout_ms)
                    consumer.subscribe([self.topic], listener=Listener())
                consumer.poll(timeout_ms=self.poll_ms, max_records=1)
                # a partition assigned between polls is paused in the listener; keep it so after a
                # rebalance of the same assignment (poll never returns records of a paused partition)
            except Exception as exc:  # the broker away: keep what we own until the group says otherwise
                log.debug("membership poll failed (%s); retrying", exc)
                time.sleep(1.0)
        if consumer is not None:
            try:
                consumer.close()
            except Exception:
                pass


_SHARED: dict[tuple[str, str, str], GroupMembership] = {}
_SHARED_LOCK = threading.Lock()


def shared_membership(bootstrap: str, group: str, topic: str) -> GroupMembership:
    """One member per process and owners group: every DoFn instance of the source (one per partition group,
    possibly on several threads) asks the same member, so a process is one member of the group."""
    key = (bootstrap, group, topic)
    with _SHARED_LOCK:
        m = _SHARED.get(key)
        if m is None:
            kafka_io.await_partitions(bootstrap, [topic])
            m = _SHARED[key] = GroupMembership(bootstrap, group, topic).start()
        return m
