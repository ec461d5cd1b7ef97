"""Process-wide counters and gauges, logged periodically and served in Prometheus text format.

The local FnApiRunner runs the DoFns in this process, so one registry sees every stage. (On a
distributed runner, Beam's own Metrics would carry them; the names stay the same.)
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("nearline.metrics")

COUNTERS = {
    "events_read": "input messages read (all input topics)",
    "joins_completed": "joins completed with every required standardizer",
    "joins_partial": "joins that timed out and were scored with declared defaults",
    "joins_superseded": "pending joins superseded by a newer update version (not scored)",
    "joins_timed_out_dead_letter": "joins that timed out and were dead-lettered",
    "duplicates": "duplicate input messages ignored by the join",
    "replay_timeouts": "joins of messages re-read after a restart that did not complete",
    "replays_released": "of those, versions already written before the restart (released)",
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
}


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.counters = {k: 0 for k in COUNTERS}
        self.gauges: dict[tuple[str, tuple], float] = {}
        self.latencies_ms: list[float] = []  # last standardizer message -> embedding published

    def inc(self, name: str, n: int = 1) -> None:
        if n:
            with self.lock:
                self.counters[name] = self.counters.get(name, 0) + n

    def set(self, name: str, value: float, **labels) -> None:
        with self.lock:
            self.gauges[(name, tuple(sorted(labels.items())))] = value

    def observe_latency(self, values_ms: list[float]) -> None:
        with self.lock:
            self.latencies_ms.extend(values_ms)
            if len(self.latencies_ms) > 200_000:
                del self.latencies_ms[: len(self.latencies_ms) - 100_000]

    def snapshot(self) -> dict:
        with self.lock:
            return {"counters": dict(self.counters), "gauges": dict(self.gauges), "latencies": list(self.latencies_ms[-20000:])}

    def prometheus(self) -> str:
        snap = self.snapshot()
        lines = []
        for k, v in snap["counters"].items():
            lines += [f"# HELP nearline_{k}_total {COUNTERS.get(k, k)}", f"# TYPE nearline_{k}_total counter",
                      f"nearline_{k}_total {v}"]
        seen = set()
        for (name, labels), v in sorted(snap["gauges"].items()):
            if name not in seen:
                lines.append(f"# TYPE nearline_{name} gauge")
                seen.add(name)
            lab = ",".join(f'{k}="{val}"' for k, val in labels)
            lines.append(f"nearline_{name}{{{lab}}} {v}" if lab else f"nearline_{name} {v}")
        lat = sorted(snap["latencies"])
        if lat:
            lines.append("# TYPE nearline_publish_latency_ms summary")
            for q in (0.5, 0.99):
                lines.append(f'nearline_publish_latency_ms{{quantile="{q}"}} {lat[min(len(lat) - 1, int(q * len(lat)))]:.3f}')
        return "\n".join(lines) + "\n"


METRICS = Metrics()


def serve(port: int, metrics: Metrics = METRICS) -> ThreadingHTTPServer | None:
    if not port:
        return None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = metrics.prometheus().encode() if self.path.startswith("/metrics") else b"see /metrics\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    except OSError as exc:
        log.error("metrics port %d unavailable (%s); metrics only in the log", port, exc)
        return None
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics-http").start()
    return server


def start_logger(every_s: float, metrics: Metrics = METRICS, stop: threading.Event | None = None) -> threading.Thread:
    stop = stop or threading.Event()

    def loop():
        last = dict(metrics.snapshot()["counters"])
        while not stop.wait(every_s):
            cur = metrics.snapshot()
            c = cur["counters"]
            rates = {k: (c[k] - last.get(k, 0)) / every_s for k in ("events_read", "embeddings_written")}
            lags = sum(v for (n, _), v in cur["gauges"].items() if n == "partition_lag")
            log.info("read %d (%.0f/s) | joins %d complete, %d partial, %d superseded | embeddings %d computed, "
                     "%d deduped, %d written (%.0f/s) | dead letters %d | lag %d",
                     c["events_read"], rates["events_read"], c["joins_completed"], c["joins_partial"],
                     c["joins_superseded"], c["embeddings_computed"], c["embeddings_deduped"],
                     c["embeddings_written"], rates["embeddings_written"], c["dead_letters"], lags)
            last = dict(c)

    t = threading.Thread(target=loop, daemon=True, name="metrics-log")
    t.start()
    return t
