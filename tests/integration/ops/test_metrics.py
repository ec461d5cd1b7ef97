"""/metrics, /healthz and /readyz: scraped over HTTP and parsed with prometheus_client's parser, from an
in-process server and from a real `nearline run` job."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from nearline import REPO_ROOT
from nearline.core.metrics import COUNTERS, GAUGES, Metrics, histogram_quantile, parse_scrape
from nearline.io import kafka_io
from nearline.io.codec import Codec
from nearline.ops.health import Readiness, serve
from nearline.ops.procs import free_port
from tests.conftest import isolated_config

pytestmark = pytest.mark.integration


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def assert_well_formed(text: str) -> dict:
    """Every family has HELP and TYPE lines, and the parser accepts the whole scrape."""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    helps = {ln.split()[2] for ln in text.splitlines() if ln.startswith("# HELP ")}
    types = {ln.split()[2]: ln.split()[3] for ln in text.splitlines() if ln.startswith("# TYPE ")}
    for name, fam in families.items():
        exposed = name + "_total" if fam.type == "counter" else name
        assert exposed in helps or name in helps, f"no HELP for {name}"
        assert types.get(exposed, types.get(name)) == fam.type, f"no/wrong TYPE for {name}"
        assert fam.documentation, f"empty HELP for {name}"
    return families


def test_scrape_has_help_type_units_histogram_and_process_metrics():
    m = Metrics(process_metrics=True)
    m.inc("events_read", 7)
    m.set("partition_lag", 3, topic="t", partition=1)
    m.set("partition_lag", 4, topic="t", partition=2)
    m.observe_latency([40.0, 80.0, 120.0, 900.0])  # milliseconds in
    port = free_port()
    server = serve(port, m)
    try:
        status, text = http_get(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.shutdown()
    assert status == 200
    fams = assert_well_formed(text)
    for name in COUNTERS:
        assert fams[f"nearline_{name}"].type == "counter"
    for name in GAUGES:
        assert fams[f"nearline_{name}"].type == "gauge"
    samples = parse_scrape(text)
    assert samples["nearline_events_read_total"] == [({}, 7.0)]
    assert sorted(v for _, v in samples["nearline_partition_lag"]) == [3.0, 4.0]
    # the latency is a histogram in seconds (base unit)
    assert fams["nearline_publish_latency_seconds"].type == "histogram"
    assert samples["nearline_publish_latency_seconds_count"] == [({}, 4.0)]
    assert samples["nearline_publish_latency_seconds_sum"][0][1] == pytest.approx(1.14)
    buckets = samples["nearline_publish_latency_seconds_bucket"]
    le = {lab["le"]: v for lab, v in buckets}
    assert le["0.05"] == 1 and le["0.1"] == 2 and le["0.15"] == 3 and le["+Inf"] == 4
    assert 0.075 < histogram_quantile(0.5, buckets) <= 0.1
    # process metrics from prometheus_client's collectors
    assert samples["process_resident_memory_bytes"][0][1] > 1e6
    assert "process_cpu_seconds_total" in samples and "python_info" in samples


def test_a_counter_added_elsewhere_still_scrapes_with_help():
    m = Metrics()
    m.inc("something_new", 2)  # another module's counter not (yet) declared in COUNTERS
    fams = assert_well_formed(m.prometheus())
    assert fams["nearline_something_new"].type == "counter"
    with pytest.raises(ValueError, match="labels"):
        m.set("partition_lag", 1, topic="t")  # a missing label is an error, not a silent new series


def test_healthz_readyz_reflect_real_state(kafka_bootstrap, redis_url):
    m = Metrics()
    port = free_port()
    ready = Readiness(kafka_bootstrap, redis_url, m, max_lag=10, max_stall_s=5, cache_s=0)
    server = serve(port, m, readiness=ready)
    base = f"http://127.0.0.1:{port}"
    try:
        assert http_get(base + "/healthz")[0] == 200
        assert http_get(base + "/nope")[0] == 404
        status, body = http_get(base + "/readyz")
        checks = json.loads(body)["checks"]
        # Kafka and Redis answer, but the job has not taken a batch and its lag is not measured
        assert status == 503 and checks["kafka"]["ok"] and checks["redis"]["ok"]
        assert not checks["consuming"]["ok"] and not checks["lag"]["ok"]
        m.set("last_batch_timestamp_seconds", time.time())
        m.set("partition_lag", 3, topic="t", partition=0)
        status, body = http_get(base + "/readyz")
        assert status == 200, body
        m.set("partition_lag", 30, topic="t", partition=0)  # lag beyond ready_max_lag
        status, body = http_get(base + "/readyz")
        assert status == 503 and json.loads(body)["checks"]["lag"] == {"ok": False, "lag": 30, "max_lag": 10}
        m.set("partition_lag", 0, topic="t", partition=0)
        m.set("last_batch_timestamp_seconds", time.time() - 60)  # stalled
        status, body = http_get(base + "/readyz")
        assert status == 503 and not json.loads(body)["checks"]["consuming"]["ok"]
    finally:
        server.shutdown()


def test_readyz_names_a_dead_broker_and_redis():
    m = Metrics()
    m.set("last_batch_timestamp_seconds", time.time())
    m.set("partition_lag", 0, topic="t", partition=0)
    dead_kafka, dead_redis = f"127.0.0.1:{free_port()}", f"redis://127.0.0.1:{free_port()}/0"
    port = free_port()
    server = serve(port, m, readiness=Readiness(dead_kafka, dead_redis, m, timeout_s=1))
    try:
        t0 = time.monotonic()
        status, body = http_get(f"http://127.0.0.1:{port}/readyz")
        assert time.monotonic() - t0 < 5
    finally:
        server.shutdown()
    checks = json.loads(body)["checks"]
    assert status == 503
    assert checks["kafka"] == {"ok": False, "endpoint": dead_kafka, "error": checks["kafka"]["error"]}
    assert not checks["redis"]["ok"] and checks["redis"]["endpoint"] == dead_redis
    assert checks["consuming"]["ok"] and checks["lag"]["ok"]


@pytest.mark.slow
def test_running_job_serves_metrics_and_readiness(kafka_bootstrap, redis_url, unique, tmp_path):
    cfg = isolated_config(kafka_bootstrap, redis_url, unique)
    kafka_io.ensure_topics(kafka_bootstrap, cfg.all_topics(), cfg.topics.partitions)
    port = free_port()
    t = cfg.topics
    conf = tmp_path / "nearline.yaml"
    conf.write_text(yaml.safe_dump({
        "topics": {"entity_updates": t.entity_updates, "standardized_prefix": t.standardized_prefix,
                   "embeddings": t.embeddings, "dead_letter": t.dead_letter},
        "kafka": {"bootstrap": kafka_bootstrap, "consumer_group": cfg.kafka.consumer_group},
        "redis": {"url": redis_url, "key_prefix": cfg.redis.key_prefix},
        "job": {"metrics_port": port, "log_every_s": 2},
        "models": {"registry": str(REPO_ROOT / "models/registry.yaml")}}))
    log = tmp_path / "job.log"
    job = subprocess.Popen([sys.executable, "-m", "nearline.cli", "--log-format", "json", "--config", str(conf), "run"],
                           stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and status != 200:
            assert job.poll() is None, log.read_text()[-3000:]
            try:
                status, body = http_get(base + "/readyz")
            except OSError:
                status = None
            time.sleep(0.5)
        assert status == 200, body
        assert http_get(base + "/healthz")[0] == 200
        # two records the job must dead-letter (not Avro): the counters move in the scrape
        prod = kafka_io.make_producer(kafka_bootstrap)
        for i in range(2):
            prod.send(t.entity_updates, key=f"member:x{i}".encode(), value=b"not avro")
        prod.send(t.entity_updates, key=b"member:m1", value=Codec().encode("EntityUpdate", {
            "entity_type": "member", "entity_id": "m1", "version": 1, "op": "UPSERT", "event_time": 0,
            "fields": {"title": "engineer"}}))
        prod.flush()
        prod.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            samples = parse_scrape(http_get(base + "/metrics")[1])
            if samples["nearline_dead_letters_total"][0][1] >= 2 and samples["nearline_events_read_total"][0][1] >= 3:
                break
            time.sleep(0.5)
        status, text = http_get(base + "/metrics")
        fams = assert_well_formed(text)
        samples = parse_scrape(text)
        assert samples["nearline_dead_letters_total"][0][1] == 2
        assert samples["nearline_events_read_total"][0][1] == 3
        lags = {(lab["topic"], lab["partition"]) for lab, _ in samples["nearline_partition_lag"]}
        assert {(topic, str(p)) for topic in cfg.input_topics() for p in range(cfg.topics.partitions)} <= lags
        assert fams["nearline_publish_latency_seconds"].type == "histogram"
        assert samples["process_resident_memory_bytes"][0][1] > 50e6
        assert samples["nearline_last_batch_timestamp_seconds"][0][1] > time.time() - 30
    finally:
        job.send_signal(signal.SIGINT)
        try:
            job.wait(timeout=60)
        except subprocess.TimeoutExpired:
            job.kill()
            job.wait()
    text = log.read_text()
    # --log-format json: every line the job wrote is one JSON object (nothing bypasses the handler)
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert records[-1]["message"] == "stopped" and not any("exc_info" in r for r in records), text[-3000:]
    # Beam's start-up noise is filtered: nothing but the job's own lines warns at start-up
    assert "apitools" not in text and "may not be deterministic" not in text, text[-3000:]
    warnings = [r for r in records if r["level"] == "WARNING"]
    assert sum(r["logger"] == "nearline.stream.pipeline" and "dead letter" in r["message"] for r in warnings) == 2
    assert not [r for r in warnings if r["logger"] == "root" or r["logger"].startswith("apache_beam")], warnings
