import pytest

from nearline import REPO_ROOT
from nearline.config import ConfigError, load_config


def test_repo_config_loads_and_names_topics():
    cfg = load_config(REPO_ROOT / "nearline.yaml", env={})
    assert cfg.topics.entity_updates in cfg.input_topics()
    assert cfg.standardized_topic("geo") == "standardized.geo"
    assert cfg.path(cfg.models.registry) == REPO_ROOT / "models" / "registry.yaml"


def test_env_overrides(tmp_path):
    cfg = load_config(REPO_ROOT / "nearline.yaml",
                      env={"NEARLINE_KAFKA_BOOTSTRAP": "k1:9092,k2:9092", "NEARLINE_REDIS_URL": "redis://r:1/2"})
    assert cfg.kafka.bootstrap == "k1:9092,k2:9092" and cfg.redis.url == "redis://r:1/2"


def test_unknown_keys_and_bad_values_are_errors(tmp_path):
    p = tmp_path / "n.yaml"
    p.write_text("join:\n  timeout_sec: 3\n")
    with pytest.raises(ConfigError, match="unknown key.*timeout_sec"):
        load_config(p, env={})
    p.write_text("join:\n  timeout_policy: drop\n")
    with pytest.raises(ConfigError, match="timeout_policy"):
        load_config(p, env={})
    p.write_text("topics:\n  partitions: four\n")
    with pytest.raises(ConfigError, match="expected int"):
        load_config(p, env={})
