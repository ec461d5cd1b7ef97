"""Faults only a real broker makes meaningful, against Apache Kafka: the broker SIGKILLed mid-stream and
restarted on the same data, and a consumer-group rebalance among two instances of one standardizer.
In both, the standardizers and the job ride it out on their own and the end state equals the oracle
(onnxruntime on every live entity's final standardized features; nothing partial, nothing missing)."""

import os
import signal
import threading
import time

import pytest

from nearline.config import Config, ServicesConfig
from nearline.ops.procs import free_port, pid_alive
from nearline.ops.services import LocalServices
from tests.conftest import isolated_config
from tests.helpers import make_package
from tests.integration.harness import SHIPPED, Harness, check_live_and_deleted

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE = {"member": {"member_pyramid@v1", "member_tiny@v1"}, "job": {"job_pyramid@v1", "job_tiny@v1"}}


def _tiny(tmp_path):
    return [str(make_package(tmp_path / "pk", "member_tiny", "v1", "member", seed=1)),
            str(make_package(tmp_path / "pk", "job_tiny", "v1", "job", seed=2))]


def _assert_every_entity_published(h: Harness):
    msgs = h.topic_records(h.cfg.topics.embeddings)
    published = {(f"{m['entity_type']}:{m['entity_id']}", m["version"]) for m in msgs}
    for key, fields in h.final_state().items():
        if fields is not None:
            assert (key, int(h.stored(key)["_v"])) in published, key


def test_broker_sigkill_mid_stream_and_restart_on_the_same_data(tmp_path, redis_url, marketplace_dir, unique):
    # a broker of this test's own, on a fixed port, so that it can be killed and restarted
    scfg = Config()
    scfg.services = ServicesConfig(broker="kafka", kafka_port=free_port(), redis_port=0)
    scfg.redis.url = redis_url
    svc = LocalServices(scfg, tmp_path / "svc")
    st = svc.up(create_topics=False)
    cfg = isolated_config(st.kafka_bootstrap, redis_url, unique)
    h = Harness(tmp_path / "run", cfg, marketplace_dir, SHIPPED + _tiny(tmp_path))
    try:
        h.start_standardizers()
        h.start_job()
        h.wait_log("partition group 3: reading")
        h.stream(1000, rate=500)
        time.sleep(0.5)  # standardizers and job are mid-backlog: joins pending, batches in flight
        os.kill(st.kafka_pid, signal.SIGKILL)
        t_kill = time.monotonic()
        time.sleep(8)
        st2 = svc.up(create_topics=False)  # same port, same log dir
        assert st2.kafka_bootstrap == st.kafka_bootstrap and st2.kafka_pid != st.kafka_pid
        restart_s = time.monotonic() - t_kill - 8
        h.stream(600, rate=500)  # and the stream goes on
        h.wait_caught_up(timeout=240)
        for name, p in h.procs.items():
            assert p.poll() is None, f"{name} exited ({p.returncode}) instead of riding out the broker restart"
        h.stop_all()
        assert check_live_and_deleted(h, BASE) > 400
        _assert_every_entity_published(h)
        print(f"broker restarted in {restart_s:.1f}s")
    finally:
        h.stop_all()
        svc.down()
    assert not pid_alive(st.kafka_pid)


def test_rebalance_between_two_instances_of_one_standardizer_loses_nothing(tmp_path, kafka_bootstrap, redis_url,
                                                                          marketplace_dir, unique):
    cfg = isolated_config(kafka_bootstrap, redis_url, unique)
    h = Harness(tmp_path / "run", cfg, marketplace_dir, SHIPPED + _tiny(tmp_path))
    try:
        h.start_standardizers()
        h.start_job()
        h.wait_log("partition group 3: reading")
        t = threading.Thread(target=h.stream, args=(1800, 300))
        t.start()
        time.sleep(1.5)
        second = h._spawn("std-geo-2", ["standardize", "--processor", "geo"])  # joins: partitions split
        time.sleep(2.5)
        first = h.procs.pop("std-geo")
        os.killpg(first.pid, signal.SIGKILL)  # the first instance dies: its partitions move to the second
        first.wait(timeout=30)
        t.join()
        h.wait_caught_up(timeout=240)
        assert second.poll() is None
    finally:
        h.stop_all()
    log2 = (h.root / "std-geo-2.log").read_text()
    assert "partitions assigned" in log2
    assert check_live_and_deleted(h, BASE) > 400
    _assert_every_entity_published(h)
