import shutil
import subprocess
import threading
import time

import numpy as np
import pytest
import redis

from nearline.io.store import ReadMarks, RedisEmbeddingStore
from nearline.ops.procs import free_port

pytestmark = pytest.mark.integration


def vec(*x):
    return np.asarray(x, dtype="<f4").tobytes()


def test_version_guarded_writes_and_tombstones(redis_url, unique):
    s = RedisEmbeddingStore(redis_url, f"t-{unique}")
    assert s.write([("job", "1", 5, {"m@v1": vec(1, 2)})], []) == [True]
    assert s.write([("job", "1", 4, {"m@v1": vec(9, 9)})], []) == [False]  # older never overwrites newer
    assert s.get("job", "1") == {"_v": b"5", "m@v1": vec(1, 2)}
    [(v, partial, f)] = s.read([("job", "1")], [["m@v1", "m@v2"]])
    assert v == 5 and not partial and f == {"m@v1": vec(1, 2), "m@v2": None}
    assert s.write([], [("job", "1", 6)]) == [True]
    assert s.get("job", "1") == {"_v": b"6", "_deleted": b"1"}
    assert s.write([("job", "1", 5, {"m@v1": vec(1, 2)})], []) == [False]  # no resurrection by a late upsert
    assert s.write([("job", "1", 7, {"m@v1": vec(3, 3)})], []) == [True]
    assert s.get("job", "1") == {"_v": b"7", "m@v1": vec(3, 3)}
    # microsecond versions (~1.7e15) compare exactly in Lua doubles
    big = time.time_ns() // 1000
    assert s.write([("job", "2", big, {"m@v1": vec(1)})], []) == [True]
    assert s.write([("job", "2", big - 1, {"m@v1": vec(2)})], []) == [False]


def test_partial_writes_are_strict_and_flagged(redis_url, unique):
    s = RedisEmbeddingStore(redis_url, f"p-{unique}")
    assert s.write([("job", "1", 5, {"m@v1": vec(1)})], []) == [True]
    assert s.write([("job", "1", 5, {"m@v1": vec(0)}, True)], []) == [False]  # partial over complete, same version
    assert s.write([("job", "1", 6, {"m@v1": vec(0)}, True)], []) == [True]   # partial of a newer version
    assert s.written_versions([("job", "1")]) == [(6, True)]
    assert s.write([("job", "1", 6, {"m@v1": vec(2)})], []) == [True]         # the complete join upgrades it
    assert s.written_versions([("job", "1")]) == [(6, False)]


def test_dead_redis_is_retried_not_crashed(tmp_path):
    port = free_port()
    cmd = [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    s = RedisEmbeddingStore(url, "dead", retry_max_s=0.5)
    proc.terminate()
    proc.wait()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("ok", s.write([("job", "1", 1, {"m@v1": vec(1)})], [])))
    t.start()
    time.sleep(1.5)
    assert t.is_alive() and s.retries >= 1  # blocked and retrying: backpressure, not a crash
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        t.join(timeout=20)
        assert result["ok"] == [True]
        assert s.get("job", "1")["m@v1"] == vec(1)
    finally:
        proc.terminate()
        proc.wait()


def test_read_marks_roundtrip(redis_url, unique):
    marks = ReadMarks(RedisEmbeddingStore(redis_url, f"rm-{unique}"), "g1")
    assert marks.load() == {}
    marks.save({("entity-updates", 0): 41, ("standardized.geo", 3): 7})
    marks.save({("entity-updates", 0): 42})
    assert marks.load() == {("entity-updates", 0): 42, ("standardized.geo", 3): 7}
