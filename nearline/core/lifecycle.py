"""Process-wide stop request, shared by the Kafka source and every retry loop, and the one place that
says which failures are worth retrying.

`nearline run` sets STOP on the first SIGINT/SIGTERM: the source finishes its current batch and the
pipeline ends cleanly. A stage blocked retrying a dead Kafka or Redis raises StopRequested instead of
retrying forever; nothing of that batch is committed, so its input is simply re-read on the next start.
"""

from __future__ import annotations

import threading

STOP = threading.Event()


class StopRequested(RuntimeError):
    """Raised from a retry loop when a stop was requested while waiting for a dependency."""


def backoff_sleep(delay: float) -> None:
    """Sleep for a retry, but wake up and raise at once if a stop is requested."""
    if STOP.wait(delay):
        raise StopRequested("stop requested while waiting for Kafka/Redis; the batch is not committed")


class PermanentError(ValueError):
    """A failure that retrying cannot fix (the record itself is bad: too large, does not encode).
    Callers dead-letter the record with the reason and move on."""


def is_permanent(exc: BaseException) -> bool:
    """Transient or permanent? (docs/design.md, "Failure classification").

    Permanent: the record itself is refused, so sending it again fails again: Kafka's
    MessageSizeTooLarge / RecordListTooLarge / InvalidRecord / CorruptRecord (the producer raises the
    first one itself when a record exceeds ``max_request_size``), a record that does not serialize
    (TypeError/ValueError/CodecError), and :class:`PermanentError`. Everything else (connection refused,
    timeouts, leader changes, an unavailable Redis, and errors we do not know) is transient: retried
    with backoff until it succeeds or a stop is requested, which is backpressure, never a crash loop.
    """
    if isinstance(exc, PermanentError):
        return True
    try:
        from kafka import errors as kerr

        if isinstance(exc, (kerr.MessageSizeTooLargeError, kerr.RecordListTooLargeError,
                            kerr.InvalidRecordError, kerr.CorruptRecordError)):
            return True
        if isinstance(exc, kerr.KafkaError):
            return False
    except ImportError:  # pragma: no cover - kafka-python is a dependency
        pass
    return isinstance(exc, (TypeError, ValueError)) and not isinstance(exc, ConnectionError)


def retry_until_done(what: str, fn, log, *, first_delay: float = 0.2, max_delay: float = 2.0,
                     errors: tuple[type[BaseException], ...] = (Exception,), on_retry=None,
                     max_tries: int | None = None):
    """Call ``fn`` until it succeeds, logging each failure and backing off (doubling, capped) between
    tries: a dead dependency means backpressure, never a crash loop. A stop request ends the wait with
    StopRequested (nothing of the batch is committed). A permanent failure (:func:`is_permanent`) is
    raised at once, never retried; with ``max_tries`` the last transient failure is raised too.

    The back-off is capped at ``max_delay`` (2 s): a dependency that comes back is used again within that,
    and a try every 2 s costs a dead one nothing. The outage is logged once when it starts and once when
    it ends (nearline.core.outages), each try in between at DEBUG (on ``log``)."""
    from nearline.core.outages import OUTAGES, dependency_of

    delay = first_delay
    tries = 0
    dep = None
    while True:
        tries += 1
        try:
            out = fn()
        except errors as exc:
            if is_permanent(exc) or (max_tries is not None and tries >= max_tries):
                raise
            if on_retry is not None:
                on_retry()
            dep = dependency_of(exc, what)
            OUTAGES.failed(dep, what, exc, delay)
            log.debug("%s failed (%s); retrying in %.1fs, input offsets stay uncommitted", what, exc, delay)
            backoff_sleep(delay)
            delay = min(delay * 2, max_delay)
            continue
        if dep is not None:
            OUTAGES.succeeded(dep)
        return out
