"""Health and readiness of the nearline job, and the HTTP server that exposes them with the metrics.

    /metrics   Prometheus exposition (prometheus_client's own handler: text or OpenMetrics, gzip)
    /healthz   200 while the process runs and serves HTTP (liveness: restart me only if this fails)
    /readyz    200 only if Kafka and Redis answer, the job took a batch recently and the input lag is
               bounded; else 503. The body is JSON naming every check and why it failed.

The same reachability checks back the CLI's fail-fast start-up (`require_kafka`, `require_redis`): a dead
broker or Redis is reported in a few seconds, naming the endpoint.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import ThreadingHTTPServer
from urllib.parse import urlparse

from prometheus_client.exposition import MetricsHandler

# one counter per dead-letter reason (nearline/core/validate.py), e.g. dead_letters_oversize
from nearline.core.metrics import METRICS, Metrics

log = logging.getLogger("nearline.metrics")


class Unreachable(ConnectionError):
    """A dependency (Kafka, Redis) did not answer; the message names the endpoint and what to do."""


def _why(exc: Exception) -> str:
    text = str(exc)
    return text if text.startswith(type(exc).__name__) else f"{type(exc).__name__}: {text}"


class RefusedCredentials(Unreachable):
    """The broker answered but refused the configured SASL credentials: a config fix, not an outage."""


def kafka_problem(bootstrap: str, timeout_s: float = 3.0) -> str | None:
    """None if the broker answers a metadata request within about timeout_s, else why not. (An open
    port is not enough: Kafka listens before its controller is elected.) kafka-python's own log lines
    of a failing probe (a dozen connection errors and back-offs) are muted while it runs: the caller
    reports the outcome in one line."""
    from nearline.io.kafka_client_fixes import muted_kafka_logs

    with muted_kafka_logs():
        return _kafka_probe(bootstrap, timeout_s)


def _kafka_probe(bootstrap: str, timeout_s: float) -> str | None:
    from nearline.io.kafka_io import list_topics

    try:
        list_topics(bootstrap, timeout_s, secure=True, client_id="nearline-health")
        return None
    except Exception as exc:
        return _why(exc)


def redis_problem(url: str, timeout_s: float = 2.0) -> str | None:
    """None if Redis answers PING within timeout_s, else why not."""
    import redis

    try:
        r = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=None)
        try:
            r.ping()
        finally:
            r.close()
        return None
    except Exception as exc:
        return _why(exc)


def require_kafka(bootstrap: str, timeout_s: float = 3.0) -> None:
    from nearline.io.kafka_client_fixes import AUTH_FAILURES, refused_credentials_hint

    AUTH_FAILURES.clear()
    problem = kafka_problem(bootstrap, timeout_s)
    refused = refused_credentials_hint() if problem else ""
    if refused:
        raise RefusedCredentials(f"Kafka at {bootstrap}: {refused}; check kafka.sasl_mechanism, "
                                 "kafka.sasl_username and NEARLINE_KAFKA_SASL_PASSWORD")
    if problem:
        raise Unreachable(f"Kafka at {bootstrap} is not reachable ({problem}); start it with `nearline services up` "
                          "or point NEARLINE_KAFKA_BOOTSTRAP / kafka.bootstrap at a running broker")


def require_redis(url: str, timeout_s: float = 2.0) -> None:
    problem = redis_problem(url, timeout_s)
    if problem:
        raise Unreachable(f"Redis at {url} is not reachable ({problem}); start it with `nearline services up` "
                          "or point NEARLINE_REDIS_URL / redis.url at a running Redis")


class Readiness:
    """The job is ready when Kafka and Redis answer, it took a batch within ``max_stall_s`` and the summed
    input lag is at most ``max_lag`` (0 = not checked). Dependency checks are cached for ``cache_s`` so a
    probe every second costs nothing."""

    def __init__(self, bootstrap: str, redis_url: str, metrics=None, *, max_lag: int = 100_000,
                 max_stall_s: float = 60.0, cache_s: float = 3.0, timeout_s: float = 2.0):
        from nearline.core.metrics import METRICS

        self.bootstrap, self.redis_url = bootstrap, redis_url
        self.metrics = metrics or METRICS
        self.max_lag, self.max_stall_s, self.cache_s, self.timeout_s = max_lag, max_stall_s, cache_s, timeout_s
        self._lock = threading.Lock()
        self._deps: tuple[float, dict] | None = None

    def _dependencies(self) -> dict:
        with self._lock:
            if self._deps and time.monotonic() - self._deps[0] < self.cache_s:
                return self._deps[1]
            k, r = kafka_problem(self.bootstrap, self.timeout_s), redis_problem(self.redis_url, self.timeout_s)
            deps = {"kafka": {"ok": k is None, "endpoint": self.bootstrap, **({"error": k} if k else {})},
                    "redis": {"ok": r is None, "endpoint": self.redis_url, **({"error": r} if r else {})}}
            self._deps = (time.monotonic(), deps)
            return deps

    def check(self) -> tuple[bool, dict]:
        checks = dict(self._dependencies())
        last = self.metrics.gauge_value("last_batch_timestamp_seconds")
        if last is None:
            checks["consuming"] = {"ok": False, "error": "the job has not taken a batch from Kafka yet"}
        else:
            age = time.time() - last
            checks["consuming"] = {"ok": age <= self.max_stall_s, "last_batch_age_s": round(age, 3),
                                   "max_stall_s": self.max_stall_s}
        with self.metrics.lock:
            lags = [v for (n, _), v in self.metrics.gauges.items() if n == "partition_lag"]
        if not self.max_lag:
            checks["lag"] = {"ok": True, "lag": sum(lags) if lags else None, "max_lag": None}
        elif not lags:
            checks["lag"] = {"ok": False, "error": "input lag not measured yet", "max_lag": self.max_lag}
        else:
            checks["lag"] = {"ok": sum(lags) <= self.max_lag, "lag": sum(lags), "max_lag": self.max_lag}
        return all(c["ok"] for c in checks.values()), checks


def make_server(bind: str, port: int, registry, readiness: Readiness | None = None) -> ThreadingHTTPServer:
    class Handler(MetricsHandler):
        def do_GET(self):  # noqa: N802
            path = urlparse(self.path).path
            if path == "/metrics":
                return super().do_GET()
            if path == "/healthz":
                return self._reply(200, {"status": "ok"})
            if path == "/readyz":
                if readiness is None:
                    return self._reply(200, {"status": "ok", "checks": {}})
                try:
                    ok, checks = readiness.check()
                except Exception as exc:  # a failing check is an unready job, never a dead endpoint
                    ok, checks = False, {"readiness": {"ok": False, "error": f"{type(exc).__name__}: {exc}"}}
                return self._reply(200 if ok else 503, {"status": "ready" if ok else "not ready", "checks": checks})
            return self._reply(404, {"error": f"no such path {path!r}; try /metrics, /healthz or /readyz"})

        def _reply(self, code: int, body: dict) -> None:
            data = (json.dumps(body) + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    Handler.registry = registry
    server = ThreadingHTTPServer((bind, port), Handler)
    server.daemon_threads = True
    return server


def serve(port: int, metrics: Metrics = METRICS, bind: str = "127.0.0.1", readiness=None):
    """Serve /metrics, /healthz and /readyz on bind:port in a daemon thread; returns the server (call
    .shutdown()) or None if port is 0 or taken. ``readiness``: a nearline.health.Readiness (or anything
    with .check() -> (ok, details)); without one /readyz answers like /healthz."""
    if not port:
        return None
    from nearline.ops.health import make_server

    try:
        server = make_server(bind, port, metrics.registry, readiness)
    except OSError as exc:
        log.error("metrics port %s:%d unavailable (%s); metrics only in the log", bind, port, exc)
        return None
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics-http").start()
    return server
