"""Shared fixtures. Integration fixtures start REAL servers (redis-server, Apache Kafka in KRaft mode,
and for the Kafka I/O tests also the noida-db emulator) on free ports with the same code as
`nearline services up`, and stop them at the end."""

from __future__ import annotations

import os
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from nearline.config import Config, ServicesConfig
from nearline.ops.services import LocalServices

# brokers the Kafka I/O tests run against; everything else runs against Apache Kafka only
BROKERS = os.environ.get("NEARLINE_TEST_BROKERS", "kafka,noida").split(",")


def _services_cfg(broker: str) -> Config:
    cfg = Config()
    cfg.services = ServicesConfig(broker=broker, kafka_port=0, redis_port=0)
    return cfg


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A private redis-server for the whole session."""
    if os.environ.get("NEARLINE_REDIS_URL"):
        yield os.environ["NEARLINE_REDIS_URL"]
        return
    cfg = _services_cfg("kafka")
    cfg.kafka.bootstrap = "unused:1"  # only Redis is started here
    svc = LocalServices(cfg, tmp_path_factory.mktemp("redis"))
    yield svc.up(create_topics=False).redis_url
    svc.down()


def _broker(tmp_path_factory, broker: str, name: str):
    """Start one broker of the given package (only the broker: Redis is someone else's), yield its address."""
    if os.environ.get("NEARLINE_KAFKA_BOOTSTRAP"):
        yield os.environ["NEARLINE_KAFKA_BOOTSTRAP"]
        return
    cfg = _services_cfg(broker)
    cfg.redis.url = "redis://unused:1/0"
    svc = LocalServices(cfg, tmp_path_factory.mktemp(name))
    yield svc.up().kafka_bootstrap
    svc.down()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory):
    """One Apache Kafka broker (KRaft, single node) for the whole session: the broker users deploy."""
    yield from _broker(tmp_path_factory, "kafka", "kafka")


@pytest.fixture(scope="session", params=BROKERS)
def any_broker_bootstrap(request, tmp_path_factory, kafka_bootstrap):
    """Apache Kafka, then the noida-db emulator (the light option must keep working for Kafka I/O)."""
    if request.param == "kafka":
        yield kafka_bootstrap
    else:
        yield from _broker(tmp_path_factory, request.param, f"kafka-{request.param}")


@pytest.fixture(scope="session")
def schema_registry_url(tmp_path_factory):
    """A real Confluent-compatible schema registry (Apicurio, in memory) for the session; its ccompat URL."""
    from nearline.ops.schema_registry_server import SchemaRegistryServer

    if os.environ.get("NEARLINE_SCHEMA_REGISTRY_URL"):
        yield os.environ["NEARLINE_SCHEMA_REGISTRY_URL"]
        return
    with SchemaRegistryServer(tmp_path_factory.mktemp("schema-registry")) as srv:
        yield srv.url


@pytest.fixture
def unique():
    """A short unique suffix so tests sharing a broker never share topics or groups."""
    return uuid.uuid4().hex[:8]


def isolated_config(bootstrap: str, redis_url: str, suffix: str, **overrides) -> Config:
    """A Config whose topics and groups are private to one test."""
    cfg = Config()
    cfg.kafka.bootstrap, cfg.redis.url = bootstrap, redis_url
    t = cfg.topics
    cfg.topics = replace(t, entity_updates=f"{t.entity_updates}-{suffix}", standardized_prefix=f"std-{suffix}.",
                         embeddings=f"{t.embeddings}-{suffix}", dead_letter=f"{t.dead_letter}-{suffix}",
                          feature_snapshot=f"{t.feature_snapshot}-{suffix}")
    cfg.kafka.consumer_group = f"nearline-{suffix}"
    cfg.standardizers.group_prefix = f"standardizer-{suffix}-"
    cfg.redis.key_prefix = f"emb-{suffix}"
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def write_config_file(path: Path, cfg: Config, **sections) -> Path:
    """A nearline.yaml for CLI subprocesses of a test: ``cfg``'s topics, broker and Redis, plus
    ``sections`` (e.g. ``models={...}``, ``standardizers={...}``), each merged over the base section."""
    import yaml

    t = cfg.topics
    conf = {"topics": {"entity_updates": t.entity_updates, "standardized_prefix": t.standardized_prefix,
                       "embeddings": t.embeddings, "dead_letter": t.dead_letter},
            "kafka": {"bootstrap": cfg.kafka.bootstrap},
            "redis": {"url": cfg.redis.url, "key_prefix": cfg.redis.key_prefix}}
    for name, section in sections.items():
        conf[name] = {**conf.get(name, {}), **section}
    path.write_text(yaml.safe_dump(conf))
    return path


@pytest.fixture(scope="session")
def marketplace_dir(tmp_path_factory) -> Path:
    """A small generated marketplace (taxonomies + tables) shared by the tests."""
    from nearline.marketplace.generate import MarketplaceSpec, generate

    out = tmp_path_factory.mktemp("marketplace")
    generate(MarketplaceSpec(members=400, jobs=200, impressions_per_member=20, inmails_per_job=4, seed=3), out,
             progress=False)
    return out
