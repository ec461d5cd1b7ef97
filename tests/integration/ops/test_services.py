import json
import os
import subprocess
import sys

import pytest
import redis

from nearline.config import Config, ServicesConfig
from nearline.ops.procs import pid_alive
from nearline.ops.services import LocalServices

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
            from nearline.io.snapshot import cleanup_policy

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
    from nearline.io import kafka_io
    from nearline.io.kafka_io import TopicPartition

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

    from nearline.ops.procs import ServiceError

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
    with pytest.raises(ServiceError, match="python -m nearline.ops.jars fetch"):
        LocalServices(cfg, tmp_path / "b").up()


def test_services_up_starts_a_local_schema_registry_that_confluent_mode_uses(tmp_path, kafka_bootstrap, redis_url):
    """services.schema_registry: `services up` starts Apicurio beside the (here external) Kafka and Redis,
    reuses it on a second up, shows it in status, and a command's config with an empty
    kafka.schema_registry_url gets its URL from resolve_endpoints: Confluent framing with real ids."""
    from nearline.io.codec import codec_for
    from nearline.io.embedding_messages import full_state_record
    from nearline.ops.procs import ServiceError
    from nearline.ops.services import resolve_endpoints

    def config(state_dir):
        cfg = Config()
        cfg.kafka.bootstrap, cfg.redis.url, cfg.kafka.wire_format = kafka_bootstrap, redis_url, "confluent"
        cfg.services = ServicesConfig(schema_registry=True, state_dir=str(state_dir))
        return cfg.validate()  # confluent without a URL is accepted when the local registry provides it

    with pytest.raises(ServiceError, match="no local schema registry runs"):
        resolve_endpoints(config(tmp_path / "nothing-started"))
    cfg = config(tmp_path)
    svc = LocalServices(cfg, tmp_path)
    try:
        st = svc.up(create_topics=False)
        assert st.schema_registry_url and pid_alive(st.schema_registry_pid) and "schema-registry" in st.started
        assert svc.up(create_topics=False).schema_registry_pid == st.schema_registry_pid  # reused, not restarted
        status = svc.status()
        assert status["schema_registry_up"] and status["schema_registry_url"] == st.schema_registry_url
        child = config(tmp_path)  # what a `nearline` command loads
        resolve_endpoints(child)
        assert child.kafka.schema_registry_url == st.schema_registry_url
        codec = codec_for(child)
        data = codec.encode("EntityEmbeddings", full_state_record("member", "m1", 3, {"a@v1": b"\x00" * 8}, {"a@v1"}, 0))
        assert data[:1] == b"\x00" and codec.decode(data)["entity_id"] == "m1"
    finally:
        stopped = svc.down()
    assert "schema-registry" in stopped and not pid_alive(st.schema_registry_pid)
