"""End to end: the real job (`nearline run`) with standardizer processes; a version registered while updates
stream reaches every live entity through the job-launched backfill; then Redis is wiped and
`nearline backfill --all` rebuilds it bitwise."""

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import redis

from nearline.offline.progress import done_key
from tests.conftest import isolated_config
from tests.helpers import make_package
from tests.integration.harness import Harness

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_registered_version_reaches_every_live_entity_then_rebuild(tmp_path, kafka_bootstrap, redis_url,
                                                                    marketplace_dir, unique):
    cfg = isolated_config(kafka_bootstrap, redis_url, unique)
    pk = tmp_path / "pk"
    models = [str(make_package(pk, "member_tiny", "v1", "member", seed=1)),
              str(make_package(pk, "job_tiny", "v1", "job", seed=2))]
    h = Harness(tmp_path / "run", cfg, marketplace_dir, models, backfill_on_register=True)
    new = "member_tiny@v2"
    try:
        h.start_standardizers()
        h.start_job()
        h.wait_log("partition group 3: reading")
        h.stream(1200, rate=600)
        h.wait_caught_up()
        # register while updates stream: the job scores them with v2 and launches the backfill
        t = threading.Thread(target=h.stream, args=(400, 100))
        t.start()
        time.sleep(1.0)
        pkg = make_package(pk, "member_tiny", "v2", "member", seed=3)
        with open(h.registry, "a") as fh:
            fh.write(f"- {pkg}\n")
        h.wait_log("launched backfill pid", timeout=30)
        t.join()
        h.wait_caught_up()
        deadline = time.monotonic() + 120
        r = redis.Redis.from_url(redis_url)
        while r.hget(done_key(cfg.redis.key_prefix), new) is None:
            assert time.monotonic() < deadline, h.job_log()[-3000:]
            time.sleep(0.5)
        h.wait_log(f"backfill of ['{new}'] finished (exit 0)", timeout=30)
        done = json.loads(r.hget(done_key(cfg.redis.key_prefix), new))
        assert done["written"] > 50 and done["failed"] == 0, done  # entities not updated since registration
        assert h.procs["job"].poll() is None
    finally:
        h.stop_all()

    state = h.final_state()
    live = {k: f for k, f in state.items() if f is not None}
    expected = h.expected_embeddings(live)
    members = [k for k in live if k.startswith("member:")]
    assert len(members) > 200
    before = {}
    for key in state:
        stored = h.stored(key)
        before[key] = stored
        if key in live and key.startswith("member:"):
            assert new in stored, f"{key} never got {new}"
            assert np.array_equal(np.frombuffer(stored[new], "<f4"), expected[key][new]), key
        if key not in live:
            assert new not in stored

    # Redis loses everything; the topics keep it: rebuild with the CLI, in this process and then on a local
    # Dask cluster of two worker processes; each time the same state, bitwise, delete markers included
    for runner in (["--runner", "local"], ["--runner", "dask", "--workers", "2"]):
        keys = list(r.scan_iter(match=f"{cfg.redis.key_prefix}:*"))
        r.delete(*keys)
        out = subprocess.run([sys.executable, "-m", "nearline.cli", "--config", str(h.config_file), "backfill", "--all",
                              "--no-progress", *runner], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "backfill of job_tiny@v1, member_tiny@v1, member_tiny@v2" in out.stdout, out.stdout
        for key in state:
            got = h.stored(key)
            emb = {k: v for k, v in got.items() if not k.startswith("_")}
            assert emb == {k: v for k, v in before[key].items() if not k.startswith("_")}, f"{runner}: {key} differs"
            assert ("_deleted" in got) == ("_deleted" in before[key]), (runner, key)
            if before[key]:
                assert int(got["_v"]) >= int(before[key]["_v"]), (runner, key)
