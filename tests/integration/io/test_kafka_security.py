"""TLS and SASL (PLAIN, SCRAM-SHA-256) for every Kafka client, against the local Apache Kafka with its
secure listeners on (services.kafka_secure_listeners): the kafka_io clients in-process, and a CLI
process (a producer) and a standardizer process (consumer group, producer, commits) configured by file."""

import logging
import re
import subprocess
import sys
import time

import pytest
import yaml
from kafka.errors import KafkaTimeoutError

from nearline.config import Config, KafkaConfig, ServicesConfig
from nearline.io import kafka_io
from nearline.io.codec import Codec
from nearline.io.kafka_io import TopicPartition
from nearline.ops.services import LocalServices

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory):
    cfg = Config()
    cfg.services = ServicesConfig(broker="kafka", kafka_port=0, redis_port=0, kafka_secure_listeners=True)
    cfg.redis.url = "redis://unused:1/0"
    svc = LocalServices(cfg, tmp_path_factory.mktemp("secure-kafka"))
    st = svc.up(create_topics=False)
    yield st
    kafka_io.configure_security(KafkaConfig())
    svc.down()


def _kafka_cfg(st, protocol, mechanism, password=None) -> tuple[str, KafkaConfig]:
    bootstrap = st.kafka_sasl_ssl_bootstrap if protocol == "SASL_SSL" else st.kafka_sasl_bootstrap
    return bootstrap, KafkaConfig(bootstrap=bootstrap, security_protocol=protocol, sasl_mechanism=mechanism,
                                  sasl_username=st.kafka_sasl_user, sasl_password=password or st.kafka_sasl_password,
                                  ssl_cafile=st.kafka_ca_file if protocol == "SASL_SSL" else "")


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_clients_produce_and_consume_over_sasl_and_tls(secure_broker, protocol, mechanism, unique):
    bootstrap, kc = _kafka_cfg(secure_broker, protocol, mechanism)
    kafka_io.configure_security(kc)
    try:
        topic = f"sec-{unique}"
        assert kafka_io.ensure_topics(bootstrap, [topic], 2) == [topic]
        p = kafka_io.make_producer(bootstrap)
        for i in range(20):
            p.send(topic, key=b"k%d" % i, value=b"v%d" % i)
        p.flush()
        p.close()
        c = kafka_io.make_consumer(bootstrap, f"g-{unique}")
        tps = [TopicPartition(topic, i) for i in range(2)]
        c.assign(tps)
        got, deadline = [], time.monotonic() + 20
        while len(got) < 20 and time.monotonic() < deadline:
            for msgs in c.poll(200).values():
                got += msgs
        assert sorted(m.value for m in got) == sorted(b"v%d" % i for i in range(20))
        kafka_io.commit(c, {tps[0]: 1}, timeout_ms=10_000)
        assert c.committed(tps[0], timeout_ms=10_000) == 1
        c.close(autocommit=False)
    finally:
        kafka_io.configure_security(KafkaConfig())


def test_a_wrong_password_fails_fast(secure_broker, caplog):
    """kafka-python 3.0.12 does not raise the broker's SaslAuthenticationFailedError from a client's
    bootstrap: it logs it, retries, and raises KafkaTimeoutError when the bootstrap time is up (so does
    ensure_topics, after its timeout_s). The log is what tells a wrong password from an unreachable broker:
    either the broker's answer or, when the answer is lost with the close (a loaded machine, as in CI), the
    close during the SASL exchange (nearline.io.kafka_client_fixes); both as SaslAuthenticationFailedError."""
    bootstrap, good = _kafka_cfg(secure_broker, "SASL_SSL", "SCRAM-SHA-256")
    kafka_io.configure_security(good)
    try:
        assert kafka_io.list_topics(bootstrap, 10.0, secure=True) is not None  # the right password gets in
    finally:
        kafka_io.configure_security(KafkaConfig())
    bootstrap, kc = _kafka_cfg(secure_broker, "SASL_SSL", "SCRAM-SHA-256", password="wrong")
    kafka_io.configure_security(kc)
    caplog.set_level(logging.WARNING, logger="kafka")
    try:
        t0 = time.monotonic()
        with pytest.raises(KafkaTimeoutError, match=f"^KafkaTimeoutError: Unable to bootstrap from {re.escape(bootstrap)}$"):
            kafka_io.ensure_topics(bootstrap, ["never"], 1, timeout_s=5)
        assert time.monotonic() - t0 < 30
    finally:
        kafka_io.configure_security(KafkaConfig())
    refused = [r.getMessage() for r in caplog.records if r.name.startswith("kafka.")
               and "SaslAuthenticationFailedError" in r.getMessage()]
    assert any("invalid credentials with SASL mechanism SCRAM-SHA-256" in m
               or "closed the connection during SASL SCRAM-SHA-256 authentication" in m for m in refused), \
        [r.getMessage() for r in caplog.records][-10:]


def test_a_wrong_password_is_one_cli_line_naming_the_refusal(secure_broker, tmp_path, unique):
    """The CLI's error for a wrong password names the broker's refusal and the settings to check, in one line,
    instead of the bare bootstrap time-out that an unreachable broker also gives."""
    bootstrap, kc = _kafka_cfg(secure_broker, "SASL_SSL", "SCRAM-SHA-256")
    conf = {"kafka": {"bootstrap": bootstrap, "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
                      "sasl_username": kc.sasl_username, "ssl_cafile": kc.ssl_cafile},
            "redis": {"url": "redis://unused:1/0"},
            "topics": {"entity_updates": f"upd-{unique}", "standardized_prefix": f"std-{unique}."},
            "standardizers": {"group_prefix": f"standardizer-{unique}-"}}
    path = tmp_path / "nearline.yaml"
    path.write_text(yaml.safe_dump(conf))
    env = {"NEARLINE_KAFKA_SASL_PASSWORD": "wrong", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "nearline.cli", "--config", str(path), "standardize",
                          "--processor", "title", "--max-messages", "1"],
                         capture_output=True, text=True, env=env, timeout=180)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert lines[-1].startswith(f"nearline: error: Kafka at {bootstrap}: the broker refused the credentials"), lines[-3:]
    assert "SaslAuthenticationFailedError" in lines[-1] and "SCRAM-SHA-256" in lines[-1], lines[-1]
    assert "NEARLINE_KAFKA_SASL_PASSWORD" in lines[-1]


def test_cli_and_standardizer_processes_use_the_configured_security(secure_broker, tmp_path, marketplace_dir, unique):
    bootstrap, kc = _kafka_cfg(secure_broker, "SASL_SSL", "SCRAM-SHA-256")
    conf = {"kafka": {"bootstrap": bootstrap, "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
                      "sasl_username": kc.sasl_username, "ssl_cafile": kc.ssl_cafile},
            "redis": {"url": "redis://unused:1/0"},
            "topics": {"entity_updates": f"upd-{unique}", "standardized_prefix": f"std-{unique}."},
            "standardizers": {"taxonomy_dir": str(marketplace_dir), "group_prefix": f"standardizer-{unique}-"}}
    path = tmp_path / "nearline.yaml"
    path.write_text(yaml.safe_dump(conf))
    env = {"NEARLINE_KAFKA_SASL_PASSWORD": kc.sasl_password, "PATH": "/usr/bin:/bin"}
    kafka_io.configure_security(kc)
    try:
        kafka_io.ensure_topics(bootstrap, [f"upd-{unique}", f"std-{unique}.title", "dead-letter"], 4)
        base = [sys.executable, "-m", "nearline.cli", "--config", str(path)]
        out = subprocess.run(base + ["marketplace", "stream", "--out", str(marketplace_dir), "--count", "60", "--rate", "0"],
                             capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        std = subprocess.run(base + ["standardize", "--processor", "title", "--max-messages", "60"],
                             capture_output=True, text=True, env=env, timeout=120)
        assert std.returncode == 0, std.stderr[-2000:]
        c = kafka_io.make_consumer(bootstrap, None)
        tps = [TopicPartition(f"std-{unique}.title", i) for i in range(4)]
        c.assign(tps)
        c.seek_to_beginning()
        got, deadline = [], time.monotonic() + 20
        while time.monotonic() < deadline and len(got) < 40:
            for msgs in c.poll(200).values():
                got += msgs
        c.close()
        codec = Codec()
        assert len(got) >= 40 and all(codec.decode(m.value)["processor"] == "title" for m in got)
        committed = kafka_io.group_lag(bootstrap, f"standardizer-{unique}-title", [f"upd-{unique}"], 4)
        assert committed == 0  # the standardizer committed all it read, over SASL_SSL
    finally:
        kafka_io.configure_security(KafkaConfig())
