"""Process-wide counters, gauges and the publish-latency histogram, exposed with ``prometheus_client``
and logged periodically.

We use the official ``prometheus_client`` library rather than hand-written text: it gets HELP/TYPE,
escaping, histogram buckets, OpenMetrics negotiation and the process/platform collectors right.
Conventions (https://prometheus.io/docs/practices/naming/): every metric is prefixed ``nearline_``,
counters end in ``_total``, durations are histograms in seconds.

The stages call one small API, kept stable so that new counters merge easily:

    METRICS.inc("events_read", n)                       # a counter declared in COUNTERS
    METRICS.set("partition_lag", v, topic=t, partition=p)  # a gauge declared in GAUGES
    METRICS.observe_latency([ms, ...])                  # publish latency, milliseconds in, seconds out

A name missing from COUNTERS/GAUGES still works (it is created on first use, with a placeholder HELP),
but declare it there so the scrape documents it.

The local FnApiRunner runs the DoFns in this process, so one registry sees every stage. (On a
distributed runner, Beam's own Metrics would carry them; the names stay the same.)
"""

from __future__ import annotations

import collections
import logging
import threading
import urllib.request

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

# one counter per dead-letter reason (nearline/core/validate.py), e.g. dead_letters_oversize
from nearline.core.validate import REASONS as _DEAD_LETTER_REASONS  # noqa: E402

log = logging.getLogger("nearline.metrics")
# `_created` series double the scrape for no use here (Prometheus itself tracks counter resets)
disable_created_metrics()

PREFIX = "nearline_"

COUNTERS = {
    "events_read": "input messages read (all input topics)",
    "joins_completed": "joins completed with every required standardizer",
    "joins_partial": "joins that timed out and were scored with declared defaults",
    "joins_superseded": "pending joins superseded by a newer update version (not scored)",
    "joins_timed_out_dead_letter": "joins that timed out and were dead-lettered",
    "joins_refused_dead_letter": "joins dead-lettered at once because a standardizer refused the version "
                                 "(timeout_policy dead_letter)",
    "duplicates": "duplicate input messages ignored by the join",
    "replay_timeouts": "joins of messages re-read after a restart that did not complete",
    "replays_released": "of those, versions already written before the restart (released)",
    "replays_resolved_before_restart": "of those, fragments whose EntityUpdate was committed before the restart "
                                       "(resolved then: completed, deduped or superseded; released)",
    "fragments_superseded": "standardized features without their EntityUpdate whose entity Redis holds at a newer "
                            "version (superseded, e.g. created and deleted at once; released, not dead-lettered)",
    "stale": "input messages older than the version already joined",
    "deletes": "entity deletes applied",
    "embeddings_computed": "embeddings computed (entity x model version)",
    "embeddings_deduped": "embeddings equal to the stored one (not written)",
    "embeddings_written": "embeddings written to Redis and published",
    "embeddings_stale": "embeddings of an older update version than the stored one (not written)",
    "messages_published": "EntityEmbeddings messages published (incl. tombstones)",
    "snapshots_written": "FeatureSnapshot records (and tombstones) written to the feature snapshot topic",
    "dead_letters": "records sent to the dead-letter topic",
    "offsets_committed": "offset commits",
    "redis_retries": "Redis operations retried",
    "joins_completed_after_partial": "versions emitted partial, then completed by late messages (complete replaces partial)",
    "features_without_update": "standardized features whose EntityUpdate never came (dead-lettered, not scored)",
    "join_stalls": "gaps between batches longer than join.stall_gap_s (the job was stalled; not counted as timeout time)",
    "deletes_unknown_entity": "deletes of entities Redis holds nothing for (their marker is written and their tombstones published)",
    "redis_data_loss_detected": "times the Redis sentinel key vanished (Redis restarted empty or was flushed)",
    "models_disabled": "model versions disabled after failing at run time",
}

COUNTERS.update({f"dead_letters_{r}": f"dead letters: {text}" for r, text in _DEAD_LETTER_REASONS.items()})
COUNTERS["dead_letters_other"] = "dead letters without a classified reason"

GAUGES = {
    # name: (HELP, label names)
    "partition_lag": ("messages on an input partition not yet committed by the job (end offset - committed offset)",
                      ("topic", "partition")),
    "committed_offset": ("last offset committed by the job (next offset to read)", ("topic", "partition")),
    "pending_joins": ("entity updates waiting for standardizers, per partition group", ("group",)),
    "last_batch_timestamp_seconds": ("Unix time at which the job last took a batch (empty or not) from Kafka; "
                                     "/readyz calls the job stalled when this gets old", ()),
}

# publish latency is ~0.05-0.6 s on a small machine; the tail buckets catch join timeouts (30 s default)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)
LATENCY_HELP = ("seconds from an entity update's last standardizer message (its produced_at) to the batch "
                "that publishes its embeddings, per written entity update")


class Metrics:
    """One Prometheus registry plus a plain mirror of the values for the log line and snapshot()."""

    def __init__(self, process_metrics: bool = False):
        self.registry = CollectorRegistry(auto_describe=True)
        self.lock = threading.Lock()
        self.counters: dict[str, float] = {}
        self.gauges: dict[tuple[str, tuple], float] = {}
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=20_000)  # recent, for the log
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        self._gauge_labels: dict[str, tuple] = {}
        for name in COUNTERS:
            self._counter(name)
        for name in GAUGES:
            self._gauge(name, GAUGES[name][1])
        self.latency = Histogram(f"{PREFIX}publish_latency_seconds", LATENCY_HELP, buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        if process_metrics:
            # process_cpu_seconds_total, process_resident_memory_bytes, open fds, ...; python_info; GC
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def _counter(self, name: str) -> Counter:
        c = self._counters.get(name)
        if c is None:
            with self.lock:
                c = self._counters.get(name)
                if c is None:
                    help_ = COUNTERS.get(name) or f"{name} (declare it in nearline.metrics.COUNTERS)"
                    c = self._counters[name] = Counter(f"{PREFIX}{name}", help_, registry=self.registry)
                    self.counters.setdefault(name, 0)
        return c

    def _gauge(self, name: str, labelnames: tuple) -> Gauge:
        g = self._gauges.get(name)
        if g is None:
            with self.lock:
                g = self._gauges.get(name)
                if g is None:
                    help_ = GAUGES[name][0] if name in GAUGES else f"{name} (declare it in nearline.metrics.GAUGES)"
                    g = self._gauges[name] = Gauge(f"{PREFIX}{name}", help_, labelnames=tuple(labelnames),
                                                   registry=self.registry)
                    self._gauge_labels[name] = tuple(sorted(labelnames))
        return g

    # ---- the API the stages call ---------------------------------------------------------------
    def inc(self, name: str, n: float = 1) -> None:
        if n:
            self._counter(name).inc(n)
            with self.lock:
                self.counters[name] = self.counters.get(name, 0) + n

    def set(self, name: str, value: float, **labels) -> None:
        keys = tuple(sorted(labels))
        g = self._gauge(name, GAUGES[name][1] if name in GAUGES else keys)
        if self._gauge_labels[name] != keys:
            raise ValueError(f"gauge {name} takes labels {list(self._gauge_labels[name])}, got {list(keys)}")
        (g.labels(**{k: str(v) for k, v in labels.items()}) if labels else g).set(value)
        with self.lock:
            self.gauges[(name, tuple(sorted(labels.items())))] = value

    def observe_latency(self, values_ms: list[float]) -> None:
        if not values_ms:
            return
        for v in values_ms:
            self.latency.observe(max(0.0, v) / 1000.0)
        with self.lock:
            self.latencies_ms.extend(values_ms)

    # ---- reading ---------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        with self.lock:
            return {"counters": dict(self.counters), "gauges": dict(self.gauges), "latencies": list(self.latencies_ms)}

    def gauge_sum(self, name: str) -> float:
        with self.lock:
            return sum(v for (n, _), v in self.gauges.items() if n == name)

    def gauge_value(self, name: str, default: float | None = None) -> float | None:
        with self.lock:
            return self.gauges.get((name, ()), default)

    def prometheus(self) -> str:
        """The text exposition format, as /metrics serves it."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


METRICS = Metrics(process_metrics=True)


def start_logger(every_s: float, metrics: Metrics = METRICS, stop: threading.Event | None = None) -> threading.Thread:
    stop = stop or threading.Event()

    def loop():
        last = dict(metrics.snapshot()["counters"])
        while not stop.wait(every_s):
            c = metrics.snapshot()["counters"]
            rates = {k: (c.get(k, 0) - last.get(k, 0)) / every_s for k in ("events_read", "embeddings_written")}
            log.info("read %d (%.0f/s) | joins %d complete, %d partial, %d superseded | embeddings %d computed, "
                     "%d deduped, %d written (%.0f/s) | dead letters %d | lag %d",
                     c.get("events_read", 0), rates["events_read"], c.get("joins_completed", 0),
                     c.get("joins_partial", 0), c.get("joins_superseded", 0), c.get("embeddings_computed", 0),
                     c.get("embeddings_deduped", 0), c.get("embeddings_written", 0), rates["embeddings_written"],
                     c.get("dead_letters", 0), metrics.gauge_sum("partition_lag"))
            last = dict(c)

    t = threading.Thread(target=loop, daemon=True, name="metrics-log")
    t.start()
    return t


# ---- reading a scrape (the demo's live summary, tests) ---------------------------------------------
def parse_scrape(text: str) -> dict[str, list[tuple[dict, float]]]:
    """Sample name -> [(labels, value), ...], parsed with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict, float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def histogram_quantile(q: float, buckets: list[tuple[dict, float]]) -> float:
    """Estimate a quantile from cumulative ``_bucket`` samples, interpolating linearly inside the bucket
    (what PromQL's histogram_quantile does). NaN when the histogram is empty."""
    pts = sorted((float(lab["le"]), v) for lab, v in buckets)
    if not pts or pts[-1][1] == 0:
        return float("nan")
    rank, prev_le, prev_n = q * pts[-1][1], 0.0, 0.0
    for le, n in pts:
        if n >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_n) / (n - prev_n) if n > prev_n else 0.0)
        prev_le, prev_n = le, n
    return prev_le


def scrape(url: str, timeout_s: float = 1.0) -> dict[str, list[tuple[dict, float]]]:
    """GET a /metrics URL and parse it; {} if it does not answer."""
    try:
        return parse_scrape(urllib.request.urlopen(url, timeout=timeout_s).read().decode())
    except Exception:
        return {}
