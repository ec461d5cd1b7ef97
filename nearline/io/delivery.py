"""Acknowledged Kafka sends, record by record: transient failures are retried, permanent ones returned.

Before this, a batch was sent as one unit and sent again whole on any failure. One record the broker
can never accept (a ~1 MB dead letter above the producer's ``max_request_size``) then made every try
fail, forever, and every try re-sent the batch's good records. Now each record's outcome is its own:
acknowledged records are never sent again, transient failures (broker down, leader moved, timeout)
are retried with backoff until they succeed or a stop is requested, and permanent ones
(:func:`nearline.core.lifecycle.is_permanent`) are handed back so the caller dead-letters them and moves on.
"""

from __future__ import annotations

import logging

from nearline.core.lifecycle import backoff_sleep, is_permanent
from nearline.core.outages import OUTAGES

log = logging.getLogger(__name__)


def send_acknowledged(producer, records: list[tuple[str, bytes | None, bytes]], what: str, logger=log, *,
                      first_delay: float = 0.2, max_delay: float = 2.0, ack_timeout_s: float = 30.0,
                      on_retry=None) -> list[tuple[int, BaseException]]:
    """Send ``records`` ((topic, key, value) each) until every one is acknowledged or permanently refused.

    Returns ``[(index, error)]`` of the permanently refused records (empty when all were acknowledged).
    Raises StopRequested if a stop is requested while waiting for the broker."""
    todo = list(range(len(records)))
    refused: list[tuple[int, BaseException]] = []
    delay = first_delay
    while todo:
        futures: dict[int, object] = {}
        failed: list[tuple[int, BaseException]] = []
        for i in todo:
            t, k, v = records[i][:3]
            headers = records[i][3] if len(records[i]) > 3 else None  # (topic, key, value[, headers])
            try:
                futures[i] = producer.send(t, key=k, value=v, headers=headers)
            except Exception as exc:  # the producer validates size and types synchronously
                failed.append((i, exc))
        if futures:
            try:
                producer.flush(timeout=ack_timeout_s)
            except Exception as exc:  # a flush timeout: each future below says which records it hit
                logger.debug("%s: flush: %s", what, exc)
        for i, fut in futures.items():
            try:
                fut.get(timeout=ack_timeout_s)
            except Exception as exc:
                failed.append((i, exc))
        transient = []
        for i, exc in failed:
            if is_permanent(exc) and len(failed) > 1:
                # the broker refuses a whole produce batch when one record in it is too large: a
                # record refused in company is tried once alone before it counts as refused
                exc = _alone(producer, records[i], ack_timeout_s) or None
                if exc is None:
                    continue
            (refused if is_permanent(exc) else transient).append((i, exc))
        todo = sorted(i for i, _ in transient)
        if todo:
            if on_retry is not None:
                on_retry()
            OUTAGES.failed("Kafka", what, transient[0][1], delay)  # one WARNING per outage, not per try
            logger.debug("%s: %d of %d records not acknowledged (%s); retrying those in %.1fs, input offsets stay "
                         "uncommitted", what, len(todo), len(records), transient[0][1], delay)
            backoff_sleep(delay)
            delay = min(delay * 2, max_delay)
        elif delay != first_delay:
            OUTAGES.succeeded("Kafka")
    return sorted(refused, key=lambda x: x[0])


def _alone(producer, record, ack_timeout_s: float) -> BaseException | None:
    """Send one record in a batch of its own; its error, or None if acknowledged."""
    t, k, v = record[:3]
    try:
        fut = producer.send(t, key=k, value=v, headers=record[3] if len(record) > 3 else None)
        producer.flush(timeout=ack_timeout_s)
        fut.get(timeout=ack_timeout_s)
        return None
    except Exception as exc:
        return exc
