"""docker-compose.yml, the Dockerfile and deploy/ must describe the same system as nearline.yaml.

No Docker engine runs here, so the stack is NOT started by these tests. What they check instead: the
compose file validates against the Compose Specification's JSON schema (tests/fixtures/compose-spec.json,
vendored from github.com/compose-spec/compose-spec, schema/compose-spec.json at commit 170098ba, Apache
2.0), every service the system needs is there and wired (topics, ports, the config it runs with), the
files it mounts and the Dockerfile copies exist, Prometheus scrapes the job's metrics port, and every
metric the Grafana dashboard queries is one the job exports.
"""

import json
import re
import shutil
import subprocess

import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from nearline import REPO_ROOT
from nearline.config import load_config
from nearline.core.metrics import Metrics, parse_scrape
from nearline.ops import jars

COMPOSE = REPO_ROOT / "docker-compose.yml"
DEPLOY = REPO_ROOT / "deploy"


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def cfg():
    return load_config(REPO_ROOT / "nearline.yaml", env={})


@pytest.fixture(scope="module")
def container_cfg(compose):
    """The config the nearline containers run with (NEARLINE_CONFIG inside the image -> deploy/...)."""
    path = compose["services"]["nearline"]["environment"]["NEARLINE_CONFIG"]
    assert path.startswith("/app/"), path
    return load_config(REPO_ROOT / path.removeprefix("/app/"), env={})


def test_compose_validates_against_the_compose_specification(compose):
    schema = json.loads((REPO_ROOT / "tests/fixtures/compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(compose)  # the schema declares draft-07


def test_docker_compose_config_if_the_cli_has_compose(tmp_path):
    """`docker compose config` (validation without an engine) where the compose plugin is installed."""
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed here (the schema test above still ran)")
    res = subprocess.run([docker, "compose", "-f", str(COMPOSE), "--profile", "demo", "config", "-q"],
                         capture_output=True, text=True, cwd=REPO_ROOT)
    assert res.returncode == 0, res.stderr


def test_broker_redis_and_topics_match_the_config(compose, cfg):
    svcs = compose["services"]
    assert svcs["kafka"]["image"] == f"apache/kafka:{jars.KAFKA_VERSION}"  # the version the tests run
    assert "controller" in svcs["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft
    assert f"{cfg.services.kafka_port}:{cfg.services.kafka_port}" in svcs["kafka"]["ports"]
    assert svcs["redis"]["ports"][0].startswith(f"{cfg.services.redis_port}:")
    created = svcs["create-topics"]["command"][0]
    for topic in cfg.all_topics():
        assert f" {topic} " in f" {created.replace(';', ' ')} ", topic
    assert f"--partitions {cfg.topics.partitions}" in created
    for name in ("nearline", "marketplace", *(f"standardize-{p}" for p in cfg.standardizers.processors)):
        env = svcs[name]["environment"]
        assert env["NEARLINE_KAFKA_BOOTSTRAP"] == "kafka:9092" and env["NEARLINE_REDIS_URL"].startswith("redis://redis:")


def test_every_standardizer_and_the_job_run_after_topics_and_marketplace(compose, cfg):
    svcs = compose["services"]
    for p in cfg.standardizers.processors:
        s = svcs[f"standardize-{p}"]
        assert s["command"][-2:] == ["--processor", p]
        assert s["build"] == "." and s["restart"] == "unless-stopped"
    for name in [f"standardize-{p}" for p in cfg.standardizers.processors] + ["nearline"]:
        deps = svcs[name]["depends_on"]
        assert deps["create-topics"]["condition"] == "service_completed_successfully"
        assert deps["marketplace"]["condition"] == "service_completed_successfully"
    assert "nearline marketplace generate" in " ".join(svcs["marketplace"]["command"])
    assert "nearline run" in " ".join(svcs["nearline"]["command"])
    for name, s in svcs.items():  # every dependency is a service of this file
        deps = s.get("depends_on", {})
        assert set(deps) <= set(svcs), (name, deps)


def test_job_metrics_are_published_bound_and_scraped(compose, container_cfg):
    port = container_cfg.job.metrics_port
    assert port and container_cfg.job.metrics_bind == "0.0.0.0"
    assert container_cfg.base_dir == "/app"
    job = compose["services"]["nearline"]
    assert f"{port}:{port}" in job["ports"]
    assert f"127.0.0.1:{port}/readyz" in " ".join(job["healthcheck"]["test"])
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = [t for sc in prom["scrape_configs"] for st in sc["static_configs"] for t in st["targets"]]
    assert f"nearline:{port}" in targets
    assert f"EXPOSE {port}" in (REPO_ROOT / "Dockerfile").read_text()


def test_mounted_files_and_dockerfile_sources_exist(compose):
    for name, s in compose["services"].items():
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (REPO_ROOT / src).exists(), (name, src)
            else:
                assert src in compose["volumes"], (name, src)
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO_ROOT / src).exists(), line


def test_grafana_dashboard_panels_query_metrics_the_job_exports():
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/nearline.yml").read_text())["providers"][0]
    assert prov["options"]["path"] == "/var/lib/grafana/dashboards"
    dash = json.loads((DEPLOY / "grafana/dashboards/nearline.json").read_text())
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for needed in ("throughput", "lag", "latency", "dedupe", "dead letter"):
        assert needed in titles, needed
    m = Metrics(process_metrics=True)
    text = m.prometheus()
    # sample names, and the family names of labelled gauges that have no series yet
    exported = set(parse_scrape(text)) | {f.name for f in text_string_to_metric_families(text)}
    ids = set()
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == ds["uid"] and p["targets"]
        assert {"x", "y", "w", "h"} <= set(p["gridPos"])
        for t in p["targets"]:
            ids |= set(re.findall(r"\b((?:nearline|process)_[a-z_]+)\b", t["expr"]))
    missing = ids - exported
    assert not missing, f"dashboard queries metrics the job does not export: {sorted(missing)}"
    assert {"nearline_events_read_total", "nearline_partition_lag", "nearline_publish_latency_seconds_bucket",
            "nearline_embeddings_deduped_total", "nearline_dead_letters_total"} <= ids
