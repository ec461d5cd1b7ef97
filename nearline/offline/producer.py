"""The backfill's producer, on librdkafka (confluent-kafka): security settings translated from kafka-python's, and the
batch producer that sends a batch and waits for every acknowledgement.
"""

from __future__ import annotations

import logging

from nearline.offline.progress import BackfillError

# kafka-python setting -> librdkafka property (the same TLS/SASL settings as every other client)
_RDKAFKA_SECURITY = {"security_protocol": "security.protocol", "sasl_mechanism": "sasl.mechanisms",
                     "sasl_plain_username": "sasl.username", "sasl_plain_password": "sasl.password",
                     "ssl_cafile": "ssl.ca.location", "ssl_certfile": "ssl.certificate.location",
                     "ssl_keyfile": "ssl.key.location"}


log = logging.getLogger(__name__)


def rdkafka_security(kafka_python_kw: dict) -> dict:
    """librdkafka properties for the security keyword arguments of nearline.kafka_io (configure_security)."""
    out = {}
    for k, v in kafka_python_kw.items():
        if k == "ssl_check_hostname":
            out["ssl.endpoint.identification.algorithm"] = "https" if v else "none"
        elif k in _RDKAFKA_SECURITY:
            out[_RDKAFKA_SECURITY[k]] = v
        else:
            raise BackfillError(f"Kafka security setting {k} has no librdkafka equivalent here")
    return out


class BatchProducer:
    """The backfill's Kafka producer: librdkafka (confluent-kafka), one acknowledged flush per batch.

    Why not kafka-python's KafkaProducer (the job's): the profile of a rebuild spent 30% of its time in
    kafka-python's per-record Python (partitioner, accumulator, a socket wakeup per send); librdkafka
    does that in C. The send contract is the job's: acks=all, every record of a batch acknowledged
    before the batch's Redis effects count as published, the same TLS/SASL settings
    (kafka_io.configure_security), retried with backoff on transient errors, a record the broker
    refuses as too large is permanent. Idempotence is on: librdkafka keeps per-partition order and
    drops retry duplicates (kafka-python's idempotent producer is what the job avoids, not this one)."""

    def __init__(self, bootstrap: str, linger_ms: int = 20, batch_bytes: int = 1 << 20):
        from confluent_kafka import Producer

        from nearline.io import kafka_io

        # murmur2_random: the Java client's (and kafka-python's) partitioner, so an entity's messages land
        # in the partition the job's do (librdkafka's default, CRC32, would split a key over two
        # partitions: no order between them, and compaction would keep both)
        conf = {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "partitioner": "murmur2_random",
                "linger.ms": linger_ms, "batch.size": batch_bytes, "compression.type": "none",
                "message.timeout.ms": 30_000, "queue.buffering.max.messages": 500_000,
                "queue.buffering.max.kbytes": 512 << 10, "delivery.report.only.error": True}
        conf.update(rdkafka_security(kafka_io._with_security({})))
        self._p = Producer(conf, logger=log)  # librdkafka's log lines through logging, not raw stderr

    def send_batch(self, sends) -> None:
        """Send (topic, key, value[, headers]) records and wait until the broker acknowledged all of them;
        raises if any failed (the caller retries the batch: a duplicate is harmless, a loss is not)."""
        from confluent_kafka import KafkaError, KafkaException

        from nearline.core.lifecycle import PermanentError

        failed: list = []

        def report(err, msg):  # called for failures only (delivery.report.only.error)
            failed.append(err)

        for s in sends:
            topic, key, value = s[0], s[1], s[2]
            headers = s[3] if len(s) > 3 else None
            while True:
                try:
                    self._p.produce(topic, value, key, headers=headers, on_delivery=report)
                    break
                except BufferError:  # local queue full: let librdkafka drain it
                    self._p.poll(0.05)
                except KafkaException as exc:
                    if exc.args and exc.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                        raise PermanentError(f"record for {topic} too large: {exc}") from exc
                    raise
        left = self._p.flush(60)
        if left or failed:
            err = failed[0] if failed else f"{left} records unacknowledged after 60 s"
            if failed and failed[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                raise PermanentError(f"the broker refused a record as too large: {err}")
            raise RuntimeError(f"{len(failed) or left} of {len(sends)} records not acknowledged: {err}")

    def close(self, timeout: float = 10) -> None:
        self._p.flush(timeout)
