import json
import os
import subprocess
import sys

import pytest
import redis

from nearline.config import Config, ServicesConfig
from nearline.services import LocalServices, pid_alive

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("broker", ["kafka", "noida"])
def test_up_is_idempotent_and_down_leaves_nothing(tmp_path, broker):
    cfg = Config()
    cfg.services = ServicesConfig(broker=broker, kafka_port=0, redis_port=0)
    svc = LocalServices(cfg, tmp_path)
    try:
        st1 = svc.up()
        st2 = svc.up()
        assert (st1.kafka_pid, st1.redis_pid) == (st2.kafka_pid, st2.redis_pid)  # reused, not restarted
        status = svc.status()
        assert status["kafka_up"] and status["redis_up"]
        assert status["kafka_bootstrap"] == st1.kafka_bootstrap and status["redis_url"] == st1.redis_url
        assert redis.Redis.from_url(st1.redis_url).ping()
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=st1.kafka_bootstrap)
        assert set(cfg.all_topics()) <= set(admin.list_topics())
        admin.close()
        if broker == "kafka":  # the embedding topic is created log-compacted (noida has no DescribeConfigs)
            from nearline.snapshot import cleanup_policy

            assert cleanup_policy(st1.kafka_bootstrap, cfg.topics.embeddings) == "compact"
    finally:
        stopped = svc.down()
    assert set(stopped) == {"kafka", "redis"}
    assert not pid_alive(st1.kafka_pid) and not pid_alive(st1.redis_pid)
    assert svc.read_state() is None


def test_cli_status_json_and_external_endpoints_start_nothing(tmp_path):
    env = {**os.environ, "NEARLINE_KAFKA_BOOTSTRAP": "127.0.0.1:1", "NEARLINE_REDIS_URL": "redis://127.0.0.1:1/0"}
    (tmp_path / "nearline.yaml").write_text("services:\n  state_dir: st\n")
    out = subprocess.run([sys.executable, "-m", "nearline.cli", "services", "status", "--json"], cwd=tmp_path,
                         env=env, capture_output=True, text=True)
    st = json.loads(out.stdout)
    assert st["kafka_bootstrap"] == "127.0.0.1:1" and st["redis_url"] == "redis://127.0.0.1:1/0"
    assert st["kafka_pid"] is None and st["redis_pid"] is None and not st["kafka_up"]
    assert out.returncode == 1  # nothing answers there
    assert not (tmp_path / "st").exists()


def test_kafka_down_then_up_keeps_topics_records_and_committed_offsets(tmp_path):
    from nearline import kafka_io
    from nearline.kafka_io import TopicPartition

    cfg = Config()
    cfg.services = ServicesConfig(broker="kafka", kafka_port=0, redis_port=0)
    svc = LocalServices(cfg, tmp_path)
    st = svc.up()
    try:
        p = kafka_io.make_producer(st.kafka_bootstrap)
        for i in range(50):
            p.send(cfg.topics.entity_updates, key=b"k%d" % i, value=b"v%d" % i)
        p.flush()
        p.close()
        c = kafka_io.make_consumer(st.kafka_bootstrap, "keeps")
        tp = TopicPartition(cfg.topics.entity_updates, 0)
        ends = kafka_io.end_offsets(c, [tp])
        kafka_io.commit(c, {tp: ends[tp] - 1})
        c.close(autocommit=False)
        assert svc.down() == ["kafka", "redis"]
        assert not pid_alive(st.kafka_pid)

        st2 = svc.up()
        assert st2.kafka_pid != st.kafka_pid
        c = kafka_io.make_consumer(st2.kafka_bootstrap, "keeps")
        tps = [TopicPartition(cfg.topics.entity_updates, i) for i in range(cfg.topics.partitions)]
        assert sum(kafka_io.end_offsets(c, tps).values()) == 50  # records survived
        assert c.committed(tp, timeout_ms=10_000) == ends[tp] - 1  # so did the committed offset
        c.close(autocommit=False)
    finally:
        svc.down()


def test_taken_port_and_missing_jars_are_one_clear_line(tmp_path, monkeypatch):
    import socket

    from nearline.services import ServiceError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = Config()
        cfg.services = ServicesConfig(broker="kafka", kafka_port=port, redis_port=0)
        cfg.redis.url = "redis://unused:1/0"
        with pytest.raises(ServiceError, match=f"port {port} is taken"):
            LocalServices(cfg, tmp_path / "a").up()
    monkeypatch.setenv("NEARLINE_JARS_DIR", str(tmp_path / "no-jars"))
    cfg = Config()
    cfg.services = ServicesConfig(broker="kafka", kafka_port=0, redis_port=0)
    cfg.redis.url = "redis://unused:1/0"
    with pytest.raises(ServiceError, match="python -m nearline.jars fetch"):
        LocalServices(cfg, tmp_path / "b").up()
