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
