"""Process-wide stop request, shared by the Kafka source and every retry loop.

`nearline run` sets STOP on the first SIGINT/SIGTERM: the source finishes its current batch and the
pipeline ends cleanly. A stage blocked retrying a dead Kafka or Redis raises StopRequested instead of
retrying forever; nothing of that batch is committed, so its input is simply re-read on the next start.
"""

from __future__ import annotations

import threading
import time

STOP = threading.Event()


class StopRequested(RuntimeError):
    """Raised from a retry loop when a stop was requested while waiting for a dependency."""


def backoff_sleep(delay: float) -> None:
    """Sleep for a retry, but wake up and raise at once if a stop is requested."""
    if STOP.wait(delay):
        raise StopRequested("stop requested while waiting for Kafka/Redis; the batch is not committed")


def retry_until_done(what: str, fn, log, *, first_delay: float = 0.2, max_delay: float = 30.0,
                     errors: tuple[type[BaseException], ...] = (Exception,), on_retry=None):
    """Call ``fn`` until it succeeds, logging each failure and backing off (doubling, capped) between
    tries: a dead dependency means backpressure, never a crash loop. A stop request ends the wait with
    StopRequested (nothing of the batch is committed)."""
    delay = first_delay
    while True:
        try:
            return fn()
        except errors as exc:
            if on_retry is not None:
                on_retry()
            log.error("%s failed (%s); retrying in %.1fs, input offsets stay uncommitted", what, exc, delay)
            backoff_sleep(delay)
            delay = min(delay * 2, max_delay)
