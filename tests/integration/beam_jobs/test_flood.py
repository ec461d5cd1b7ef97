"""A flood of updates the standardizers refuse does not hold the job's commits for the join timeout."""

import time

import pytest

from nearline.io.codec import Codec
from tests.conftest import isolated_config
from tests.integration.harness import SHIPPED, Harness, check_live_and_deleted

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_refused_updates_are_resolved_at_once_not_after_the_join_timeout(tmp_path, kafka_bootstrap, redis_url,
                                                                        marketplace_dir, unique):
    cfg = isolated_config(kafka_bootstrap, redis_url, unique)
    h = Harness(tmp_path / "run", cfg, marketplace_dir, SHIPPED)   # join timeout 60 s
    codec = Codec()
    try:
        h.start_standardizers()
        h.wait_standardizers_assigned()
        h.start_job()
        h.wait_log("partition group 3: reading")
        h.stream(300, rate=300)
        base = int(time.time() * 1e6)
        for i in range(60):  # valid updates with no raw fields: every standardizer refuses them
            h.produce_raw(cfg.topics.entity_updates, f"member:flood{i}".encode(), codec.encode("EntityUpdate", {
                "entity_type": "member", "entity_id": f"flood{i}", "version": base + i, "op": "UPSERT",
                "event_time": 0, "fields": {}}))
        last_good = time.monotonic()
        h.stream(100, rate=300)
        h.wait_caught_up(timeout=30)  # was: the join timeout (60 s) before the refused versions let go
        cleared_s = time.monotonic() - last_good
    finally:
        h.stop_all()
    assert cleared_s < 30
    dls = h.topic_records(cfg.topics.dead_letter)
    refused = [d for d in dls if d["error"].startswith("standardize_failed")]
    assert len(refused) == 60 * 4 and len(dls) == len(refused)   # each standardizer's own, nothing else
    # scored at once from the manifests' defaults, flagged partial (the partial policy's rule for a version a
    # standardizer cannot serve); the good entities exact
    flood = h.stored("member:flood0")
    assert flood.get("_partial") == b"1" and int(flood["_v"]) == base
    assert check_live_and_deleted(h, {"member": {"member_pyramid@v1"}, "job": {"job_pyramid@v1"}}) > 100
