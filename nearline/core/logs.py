"""Logging set-up of every `nearline` process: plain text for people, or one JSON object per line for log
collectors (`--log-format json` or NEARLINE_LOG_FORMAT=json), via python-json-logger (a small, widely
used formatter; we did not want to hand-roll JSON escaping of messages and tracebacks).

Beam (at start-up) and kafka-python (under CPU load) log warnings that are normal for this service and
mean nothing to a user; they are filtered here (see QUIET, which says why each is harmless) unless --verbose is given, which shows
everything.
"""

from __future__ import annotations

import logging
import os
import re
import sys

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# (logger name prefix, message regex): the start-up warnings `nearline run` prints (seen with Beam 2.77.0),
# each harmless here. --verbose shows them.
QUIET = [
    # importing apache_beam probes for the GCP extras (BigQuery I/O; we use none of them)
    ("root", re.compile(r"apitools not found|bigquery client libraries are not available")),
    # the stateful join is keyed by the partition-group *int*: FastPrimitivesCoder is deterministic for it
    ("apache_beam.transforms.core", re.compile(r"Key coder .* with stateful DoFn may not be deterministic")),
    # kafka-python 3's I/O loop warns whenever one step takes >100 ms, which a busy 2-core machine does
    # all the time (seen by the dozen per second in `nearline demo`); our timeouts are seconds, not 100 ms
    ("kafka.net.selector", re.compile(r"ran for .* blocking the event loop")),
]


# kafka-python's own lines kept without --verbose: the ones that say what an operator must fix (a wrong SASL
# password or TLS set-up surfaces only there: bootstrap just times out); its outage chatter is dropped
KAFKA_KEEP = re.compile(r"(?i)authenticat|sasl|ssl|certificate|credential|unsupported|not authorized")


class KafkaChatterFilter(logging.Filter):
    """Drops kafka-python's records except those matching KAFKA_KEEP (connection failures during an outage:
    hundreds per outage; nearline.core.outages says when Kafka went away and came back)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("kafka") or bool(KAFKA_KEEP.search(record.getMessage()))


class StartupNoiseFilter(logging.Filter):
    """Drops the known-harmless records listed in QUIET (WARNING and below; errors always pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        msg = record.getMessage()
        return not any(record.name.startswith(prefix) and rx.search(msg) for prefix, rx in QUIET)


def json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    # time, level, logger and message under stable keys; exc_info becomes a string field
    return JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s %(process)d %(threadName)s",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                         datefmt="%Y-%m-%dT%H:%M:%S%z")


def setup(verbose: bool = False, fmt: str | None = None, stream=None) -> None:
    """Configure the root logger once per process (replacing earlier handlers)."""
    fmt = (fmt or os.environ.get("NEARLINE_LOG_FORMAT") or "text").lower()
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(json_formatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    if not verbose:
        handler.addFilter(StartupNoiseFilter())
        handler.addFilter(KafkaChatterFilter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # kafka-python logs every failed connection try of an outage at ERROR (hundreds per outage) and every
    # request at DEBUG (which also slows its network loop): from ERROR, and without -v only what KAFKA_KEEP
    # matches. The project's own outage lines (nearline.core.outages) say when Kafka went away and came back.
    logging.getLogger("kafka").setLevel(logging.WARNING if verbose else logging.ERROR)
    if not verbose:
        # Beam's INFO chatter (bundle processing, worker handlers) drowns the job's own lines
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
        # dask.distributed's cluster start/stop chatter (nanny, scheduler, worker registration) of `backfill --runner dask`
        logging.getLogger("distributed").setLevel(logging.WARNING)
    logging.captureWarnings(True)  # Python warnings go through the same handler (and format)
