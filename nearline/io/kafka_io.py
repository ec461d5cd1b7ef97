"""The one module that talks to Kafka (kafka-python 3.0.12). Swapping the client touches only here.
"""

from __future__ import annotations

import time
from typing import Iterable

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from nearline.core.lifecycle import backoff_sleep
from nearline.io import kafka_client_fixes

kafka_client_fixes.apply()
kafka_client_fixes.install_auth_failure_recorder()

# Security settings (TLS, SASL) every client of this process gets: set once from the config by
# configure_security() (the CLI does it at start-up; Beam DoFns again in setup(), since on a
# distributed runner they run in other processes). One place, so no client is forgotten.
_SECURITY: dict = {}


def security_settings(kafka_cfg) -> dict:
    """kafka-python keyword arguments for a KafkaConfig's security fields."""
    out: dict = {}
    proto = getattr(kafka_cfg, "security_protocol", "PLAINTEXT") or "PLAINTEXT"
    if proto == "PLAINTEXT":
        return out
    out["security_protocol"] = proto
    if proto.startswith("SASL_"):
        out.update(sasl_mechanism=kafka_cfg.sasl_mechanism, sasl_plain_username=kafka_cfg.sasl_username,
                   sasl_plain_password=kafka_cfg.sasl_password)
    if proto in ("SSL", "SASL_SSL"):
        out["ssl_check_hostname"] = kafka_cfg.ssl_check_hostname
        for key, val in (("ssl_cafile", kafka_cfg.ssl_cafile), ("ssl_certfile", kafka_cfg.ssl_certfile),
                         ("ssl_keyfile", kafka_cfg.ssl_keyfile)):
            if val:
                out[key] = val
    return out


def configure_security(kafka_cfg) -> None:
    """Make every client this process creates from now on use the config's TLS/SASL settings (and its
    consumers the configured long-poll wait)."""
    _SECURITY.clear()
    _SECURITY.update(security_settings(kafka_cfg))
    _FETCH_MAX_WAIT_MS[0] = getattr(kafka_cfg, "fetch_max_wait_ms", _FETCH_MAX_WAIT_MS[0])


_FETCH_MAX_WAIT_MS = [500]


def _with_security(kw: dict) -> dict:
    return {**_SECURITY, **kw}


def list_topics(bootstrap: str, timeout_s: float = 2.0, *, secure: bool, client_id: str = "nearline-probe") -> set[str]:
    """The topic names a broker lists: one metadata round trip, for probes (an open port is not enough:
    Kafka listens before its controller has elected itself). ``secure`` applies the configured TLS/SASL
    settings (a production cluster); False talks plaintext (the brokers `nearline services` starts).
    Raises whatever the client raises when the broker does not answer within ``timeout_s``."""
    from kafka import KafkaAdminClient

    ms = int(timeout_s * 1000)
    kw = dict(bootstrap_servers=bootstrap, request_timeout_ms=ms, bootstrap_timeout_ms=ms, client_id=client_id)
    admin = KafkaAdminClient(**(_with_security(kw) if secure else kw))
    try:
        return set(admin.list_topics())
    finally:
        try:
            admin.close()
        except Exception:  # closing a client whose broker vanished must not hide the answer
            pass


def read_topic(bootstrap: str, topic: str, partitions: int, timeout_s: float | None = 30.0) -> list:
    """Every record of the topic up to its current end offsets, as kafka-python ConsumerRecords (value
    None for a tombstone), in partition then offset order: for tests, benchmarks and tools, not the hot
    path. Stops early after ``timeout_s`` (None: no limit)."""
    c = make_consumer(bootstrap, None)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        c.seek_to_beginning()
        ends = end_offsets(c, tps)
        out: list = []
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while any(c.position(tp) < ends[tp] for tp in tps) and (deadline is None or time.monotonic() < deadline):
            for msgs in c.poll(200).values():
                out += msgs
    finally:
        c.close()
    return sorted(out, key=lambda r: (r.partition, r.offset))


__all__ = ["TopicPartition", "ConsumerRebalanceListener", "ensure_topics", "make_producer", "make_consumer", "commit", "KafkaError"]


def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int, replication: int = 1,
                  timeout_s: float = 20.0, topic_configs: dict[str, str] | None = None) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created. ``topic_configs`` (e.g.
    {"cleanup.policy": "compact"}) applies to the topics this call creates."""
    topics = list(topics)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(**_with_security(dict(
                bootstrap_servers=bootstrap, request_timeout_ms=5000,
                bootstrap_timeout_ms=int(1000 * min(5.0, max(0.5, deadline - time.monotonic()))))))
            break
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            backoff_sleep(0.1)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            try:
                admin.create_topics([NewTopic(t, partitions, replication, topic_configs=dict(topic_configs or {}))
                                     for t in missing])
            except TopicAlreadyExistsError:
                pass
        # metadata can lag the create; wait until every topic is visible
        while not set(topics) <= set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise KafkaError(f"topics not visible after create: {sorted(set(topics) - set(admin.list_topics()))}")
            backoff_sleep(0.1)
        return missing
    finally:
        admin.close()


def delete_topics(bootstrap: str, topics: Iterable[str]) -> None:
    admin = KafkaAdminClient(**_with_security(dict(bootstrap_servers=bootstrap)))
    try:
        existing = set(admin.list_topics())
        victims = [t for t in topics if t in existing]
        if victims:
            admin.delete_topics(victims)
    finally:
        admin.close()


def make_producer(bootstrap: str, linger_ms: int = 5, **kw) -> KafkaProducer:
    # acks=all + flush before committing input offsets: an acknowledged send is durable on the broker.
    # Idempotence off: kafka-python 3.0.12's idempotent producer turns one record the broker refuses as
    # too large into a fatal error and then fails every later send of the process (tested in
    # tests/integration/test_reliability.py). Order still holds (one request in flight); a retried send
    # may be duplicated, which every consumer already tolerates (keep the highest version).
    kw.setdefault("enable_idempotence", False)
    return KafkaProducer(**_with_security(dict(bootstrap_servers=bootstrap, acks="all", linger_ms=linger_ms,
                                               retries=5, max_in_flight_requests_per_connection=1, **kw)))


def make_consumer(bootstrap: str, group: str | None, *, session_timeout_ms: int = 6000,
                  heartbeat_interval_ms: int = 1000, fetch_max_wait_ms: int | None = None, **kw) -> KafkaConsumer:
    # auto-commit is off everywhere: offsets are committed only after their effects are written.
    # fetch_max_wait_ms (kafka.fetch_max_wait_ms): the broker holds an empty fetch this long and answers as
    # soon as data arrives; a short wait only turns idle consumers into busy loops (measured in the config doc)
    if fetch_max_wait_ms is None:
        fetch_max_wait_ms = _FETCH_MAX_WAIT_MS[0]
    kw.setdefault("auto_offset_reset", "earliest")
    return KafkaConsumer(**_with_security(dict(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                               session_timeout_ms=session_timeout_ms,
                                               heartbeat_interval_ms=heartbeat_interval_ms,
                                               fetch_max_wait_ms=fetch_max_wait_ms, **kw)))


def commit(consumer: KafkaConsumer, offsets: dict[TopicPartition, int], timeout_ms: int | None = None) -> None:
    """Commit 'next offset to read' per partition (Kafka's convention). With ``timeout_ms`` a commit that
    cannot complete (broker down) raises KafkaTimeoutError instead of blocking."""
    if offsets:
        consumer.commit({tp: OffsetAndMetadata(off, None, -1) for tp, off in offsets.items()}, timeout_ms=timeout_ms)


def partitions_of(consumer: KafkaConsumer, topic: str, timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return sorted(parts)
        if time.monotonic() > deadline:
            raise KafkaError(f"topic {topic!r} has no partitions (does it exist?)")
        time.sleep(0.1)


def await_partitions(bootstrap: str, topics: list[str], timeout_s: float = 15.0) -> list[str]:
    """Wait until the broker lists each topic's partitions, asked by a group-less consumer (a group
    member's own metadata stays untouched); returns the topics that still list none. Call it before a
    group subscribe: kafka-python 3.0.12 assigns nothing to a member that joins while a just-created
    topic's partitions are unknown to the group leader, until its next metadata refresh (5 min)."""
    probe = make_consumer(bootstrap, None)
    missing = []
    try:
        for topic in topics:
            try:
                partitions_of(probe, topic, timeout_s=timeout_s)
            except KafkaError:
                missing.append(topic)
    finally:
        probe.close()
    return missing


class NotCopartitioned(RuntimeError):
    """Input topics with different partition counts: an entity's update and its features could land in
    different partition groups, and no instance would see both."""


def check_copartitioned(bootstrap: str, topics: list[str], expected: int, timeout_s: float = 15.0) -> None:
    """Every input topic has ``expected`` partitions (topics.partitions), or NotCopartitioned says which differ
    and what to do. The join relies on it: partition p of every input topic is one partition group."""
    probe = make_consumer(bootstrap, None)
    try:
        counts = {t: len(partitions_of(probe, t, timeout_s=timeout_s)) for t in topics}
    finally:
        probe.close()
    wrong = {t: n for t, n in counts.items() if n != expected}
    if wrong:
        raise NotCopartitioned(
            f"input topics must all have topics.partitions={expected} partitions (co-partitioned by entity), but "
            + ", ".join(f"{t} has {n}" for t, n in sorted(wrong.items()))
            + ": recreate them, or add partitions to match (kafka-topics --alter --partitions), then restart "
              "every producer so that keys hash the same way")


def end_offsets(consumer: KafkaConsumer, tps: list[TopicPartition], attempts: int = 20,
                timeout_ms: int = 10_000) -> dict[TopicPartition, int]:
    """consumer.end_offsets, with a timeout (without one kafka-python blocks forever while the broker is
    down) and retried: kafka-python 3.0.12 sometimes answers for only some partitions and raises KeyError
    (seen right after assign() while leader metadata is still loading)."""
    for i in range(attempts):
        try:
            return consumer.end_offsets(tps, timeout_ms=timeout_ms)
        except KeyError:
            if i == attempts - 1:
                raise
            time.sleep(0.1)
    return {}


def group_lag(bootstrap: str, group: str, topics: list[str], partitions: int) -> int:
    """Messages not yet committed by a consumer group over the given topics (end offset - committed)."""
    c = make_consumer(bootstrap, group)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        ends = end_offsets(c, tps)
        return sum(ends[tp] - (c.committed(tp, timeout_ms=10_000) or 0) for tp in tps)
    finally:
        c.close(autocommit=False)
