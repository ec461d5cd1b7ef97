"""FailoverReader against two real Redis databases standing for two data centers."""

import time

import pytest
import redis

from nearline.consumers.failover import Endpoint, FailoverReader
from nearline.io.store import heartbeat_key

pytestmark = pytest.mark.integration


def test_a_dc_whose_job_stopped_is_skipped_on_the_very_read_that_finds_it(redis_url, unique):
    """The read that finds the local DC unhealthy must be answered by the other DC (it once moved its own
    starting point while iterating and asked the dead DC twice, never the healthy one)."""
    base = redis_url.rsplit("/", 1)[0]
    dc1, dc2 = f"{base}/1", f"{base}/2"
    prefix, group = f"fo-{unique}", "g"
    for url, heartbeat_ms in ((dc1, int(time.time() * 1000) - 60_000), (dc2, int(time.time() * 1000))):
        r = redis.Redis.from_url(url)
        r.set(heartbeat_key(prefix, group), heartbeat_ms)       # dc1's job stopped a minute ago
        r.hset(f"{prefix}:job:j1", mapping={"_v": "3", "m@v1": b"\x00" * 8})
    reader = FailoverReader([Endpoint("dc1", dc1), Endpoint("dc2", dc2)], prefix, group, stale_after_s=4)
    name, raw = reader.get_raw("job", "j1")
    assert name == "dc2" and raw[b"_v"] == b"3"
    assert [s[:2] for s in reader.switches] == [("dc1", "dc2")]
