"""`nearline run` stops on SIGINT: after the current batch normally, and also while Kafka is dead."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from nearline import REPO_ROOT
from nearline.config import Config, ServicesConfig
from nearline.ops.procs import pid_alive
from nearline.ops.services import LocalServices

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def start_job(conf, log):
    return subprocess.Popen([sys.executable, "-m", "nearline.cli", "--config", str(conf), "run"],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(log, text, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def test_sigint_stops_the_job_even_with_a_dead_broker(tmp_path):
    cfg = Config()
    cfg.services = ServicesConfig(broker="kafka", kafka_port=0, redis_port=0)
    svc = LocalServices(cfg, tmp_path / "svc")
    st = svc.up()
    conf = tmp_path / "nearline.yaml"
    conf.write_text(yaml.safe_dump({"kafka": {"bootstrap": st.kafka_bootstrap}, "redis": {"url": st.redis_url},
                                    "job": {"metrics_port": 0},
                                    "models": {"registry": str(REPO_ROOT / "models/registry.yaml")}}))
    log = tmp_path / "job1.log"
    try:
        job = start_job(conf, log)
        wait_for(log, "partition group 3: reading", job)
        job.send_signal(signal.SIGINT)
        assert job.wait(timeout=30) == 0, log.read_text()[-3000:]
        assert "stopped" in log.read_text()

        log = tmp_path / "job2.log"
        job = start_job(conf, log)
        wait_for(log, "partition group 3: reading", job)
        os.kill(st.kafka_pid, signal.SIGKILL)  # the broker dies under the running job
        time.sleep(3)
        t0 = time.monotonic()
        job.send_signal(signal.SIGINT)
        assert job.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert time.monotonic() - t0 < 60
        text = log.read_text()
        # kafka-python logs connection resets with their traceback; what matters is a clean stop
        assert "KeyboardInterrupt" not in text and text.rstrip().splitlines()[-1].endswith("stopped")
    finally:
        if job.poll() is None:
            job.kill()
        svc.down()
    assert not pid_alive(st.kafka_pid)
