"""docker-compose.yml must describe the same system as nearline.yaml (topics and ports)."""

import yaml

from nearline import REPO_ROOT
from nearline.config import load_config


def test_compose_parses_and_matches_config():
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    cfg = load_config(REPO_ROOT / "nearline.yaml", env={})
    svcs = compose["services"]
    assert {"kafka", "redis", "nearline"} <= set(svcs)
    assert "apache/kafka" in svcs["kafka"]["image"]
    assert "KRaft" in (REPO_ROOT / "docker-compose.yml").read_text() or "controller" in svcs["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert f"{cfg.services.kafka_port}:{cfg.services.kafka_port}" in svcs["kafka"]["ports"]
    assert svcs["redis"]["ports"][0].startswith(f"{cfg.services.redis_port}:")
    created = svcs["create-topics"]["command"][0]
    for topic in cfg.all_topics():
        assert f" {topic} " in f" {created.replace(';', ' ')} ", topic
    assert f"--partitions {cfg.topics.partitions}" in created
    env = svcs["nearline"]["environment"]
    assert "NEARLINE_KAFKA_BOOTSTRAP" in env and "NEARLINE_REDIS_URL" in env
