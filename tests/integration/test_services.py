import json
import os
import subprocess
import sys

import pytest
import redis

from nearline.config import Config, ServicesConfig
from nearline.services import LocalServices, pid_alive

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("broker", ["noida", "tansu"])
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
