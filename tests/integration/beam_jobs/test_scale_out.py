"""Scale-out: N job instances share the partition groups and together produce exactly what one produces;
the same job on Prism. Real broker, Redis, standardizer processes and `nearline run` processes."""

import os
import re
import signal
import threading
import time

import pytest

from tests.conftest import isolated_config
from tests.integration.harness import SHIPPED, Harness, check_live_and_deleted

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MUST_HAVE = {"member": {"member_pyramid@v1"}, "job": {"job_pyramid@v1"}}


def _dead_letters(h: Harness) -> list[dict]:
    return h.topic_records(h.cfg.topics.dead_letter)


def _wait_lag_below(h: Harness, limit: int, timeout: float) -> float:
    """Seconds until the job's committed lag is below ``limit``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if h.lag(h.cfg.kafka.consumer_group, h.cfg.input_topics()) < limit:
            return time.monotonic() - t0
        time.sleep(0.25)
    raise AssertionError(f"lag not below {limit} after {timeout}s")


def test_static_instances_split_partitions_and_survive_a_kill(tmp_path, kafka_bootstrap, redis_url, marketplace_dir,
                                                              unique):
    cfg = isolated_config(kafka_bootstrap, redis_url, unique)
    h = Harness(tmp_path / "run", cfg, marketplace_dir, SHIPPED)
    two = ("--instances", "2")
    try:
        h.start_standardizers()
        h.start_job("job0", ("--instance", "0", *two))
        h.start_job("job1", ("--instance", "1", *two))
        h.wait_log("partition group 2: reading", name="job0")
        h.wait_log("partition group 3: reading", name="job1")
        t = threading.Thread(target=h.stream, args=(2000, 300))
        t.start()
        time.sleep(3.0)  # mid-stream: joins pending, batches in flight
        h.kill_job(name="job1")
        time.sleep(2.0)  # a supervisor's restart delay; nobody reads groups 1 and 3 meanwhile
        t_restart = time.monotonic()
        h.start_job("job1", ("--instance", "1", *two))
        h.wait_log("partition group 1: reading", name="job1", timeout=60)
        t.join()
        h.wait_caught_up()
        back_s = time.monotonic() - t_restart
    finally:
        h.stop_all()
    # each instance read only its own groups (p % 2 == instance)
    for name, own, other in (("job0", (0, 2), (1, 3)), ("job1", (1, 3), (0, 2))):
        log = h.job_log(name)
        assert all(f"partition group {p}: reading" in log for p in own), name
        assert not any(f"partition group {p}: reading" in log for p in other), name
    assert back_s < 60, back_s
    _assert_exact_and_no_dead_letter(h)


def test_group_assignment_survivor_takes_over_within_30s(tmp_path, kafka_bootstrap, redis_url, marketplace_dir,
                                                         unique):
    cfg = isolated_config(kafka_bootstrap, redis_url, unique)
    h = Harness(tmp_path / "run", cfg, marketplace_dir, SHIPPED)
    grp = ("--assignment", "group")
    try:
        h.start_standardizers()
        h.start_job("job0", grp)
        h.wait_log("partition groups owned by this instance: [0, 1, 2, 3]", name="job0", timeout=90)
        h.start_job("job1", grp)
        # the group rebalances: each instance ends with a share
        h.wait_log("partition groups owned by this instance: [", name="job1", timeout=90)
        t = threading.Thread(target=h.stream, args=(2000, 300))
        t.start()
        time.sleep(3.0)
        owned_before = h.job_log("job0").count("partition groups owned by this instance")
        killed_at = time.monotonic()
        h.kill_job(name="job1")
        # the survivor is assigned every group again once the killed member's session times out
        while True:
            log = h.job_log("job0")
            lines = re.findall(r"partition groups owned by this instance: \[([0-9, ]*)\]", log)
            if len(lines) > owned_before and lines[-1] == "0, 1, 2, 3":
                break
            assert time.monotonic() - killed_at < 30, log[-2000:]
            time.sleep(0.25)
        takeover_s = time.monotonic() - killed_at
        t.join()
        h.wait_caught_up()
    finally:
        h.stop_all()
    assert takeover_s < 30
    _assert_exact_and_no_dead_letter(h)


PRISM = ("--runner", "prism")


def _stream_through_prism(h: Harness, updates: int) -> threading.Thread:
    """Standardizers and a Prism job started, ``updates`` streaming at 300/s on a thread (started)."""
    h.start_standardizers()
    h.start_job("job", PRISM)
    h.wait_log("partition group 3: reading", timeout=120)
    t = threading.Thread(target=h.stream, args=(updates, 300))
    t.start()
    return t


def _assert_exact_and_no_dead_letter(h: Harness) -> None:
    assert check_live_and_deleted(h, MUST_HAVE) > 300
    assert _dead_letters(h) == []


def test_prism_runner_end_to_end(tmp_path, kafka_bootstrap, redis_url, marketplace_dir, unique):
    """The same pipeline and stages on Beam's Prism runner: join, every registered tower, dedupe, Redis +
    topic, commit after effects; a SIGKILL mid-stream and a restart lose nothing."""
    cfg = isolated_config(kafka_bootstrap, redis_url, unique)
    h = Harness(tmp_path / "run", cfg, marketplace_dir, SHIPPED)
    try:
        t = _stream_through_prism(h, 1500)
        time.sleep(2.5)
        h.kill_job()
        h.start_job("job", PRISM)
        t.join()
        h.wait_caught_up()
        # Ctrl-C / SIGTERM to the process group reaches the Prism binary too: still a clean stop
        job = h.procs.pop("job")
        os.killpg(job.pid, signal.SIGTERM)
        assert job.wait(timeout=60) == 0, h.job_log()[-2000:]
    finally:
        h.stop_all()
    assert "runner PrismRunner" in h.job_log()
    _assert_exact_and_no_dead_letter(h)


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
                if int(stat[1]) == pid:
                    out.append((int(d), open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode()))
            except OSError:
                pass
    return out


def test_a_killed_prism_process_ends_the_job_and_a_restart_loses_nothing(tmp_path, kafka_bootstrap, redis_url,
                                                                          marketplace_dir, unique):
    """SIGKILL of the Prism runner process (not the job): the job stops with a one-line error instead of
    hanging, and a restart (what a supervisor does) resumes from the committed offsets: exact end state."""
    cfg = isolated_config(kafka_bootstrap, redis_url, unique)
    h = Harness(tmp_path / "run", cfg, marketplace_dir, SHIPPED)
    try:
        t = _stream_through_prism(h, 1200)
        time.sleep(2.0)
        job = h.procs["job"]
        [(prism_pid, _)] = [(p, cmd) for p, cmd in _children(job.pid) if "prism" in cmd.split(" ")[0]]
        os.kill(prism_pid, signal.SIGKILL)
        rc = job.wait(timeout=60)
        assert rc != 0
        last = [line for line in h.job_log().splitlines() if line.startswith("nearline: error:")]
        assert len(last) == 1, h.job_log()[-2000:]
        h.procs.pop("job")
        h.start_job("job", PRISM)
        t.join()
        h.wait_caught_up()
    finally:
        h.stop_all()
    _assert_exact_and_no_dead_letter(h)
