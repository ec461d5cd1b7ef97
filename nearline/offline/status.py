"""`nearline backfill --status`: the backfills running (progress, rate, time left, lease alive), requested
and finished, read from the Redis keys a run maintains (nearline.offline.progress, nearline.offline.lease).
"""

from __future__ import annotations

import json
import time

from nearline.offline.lease import lease_key
from nearline.offline.progress import RunProgress, done_key, requests_key, running_key


def backfill_status(r, prefix: str) -> dict:
    """What `nearline backfill --status` prints: every running backfill with its progress (snapshot offsets
    handled of those planned, entities, written, failed, rate) and whether its lease is still held (a run
    whose lease expired died: its request stays, and the next run or the job's launcher takes it over),
    the requested ones not running, and the finished ones."""
    now = time.time()
    running, seen = [], set()
    for k, v in sorted(r.hgetall(running_key(prefix)).items()):
        key, info = k.decode(), json.loads(v)
        counts = RunProgress(r, f"{prefix}:backfill:run:{info['run']}").read()
        elapsed = max(1e-9, now - info["started"])
        planned = max(1, info.get("planned", 0))
        rate = counts.progress / elapsed
        running.append({"model": key, "run": info["run"], "alive": bool(r.exists(lease_key(prefix, key))),
                        "progress": counts.progress, "planned": info.get("planned", 0),
                        "percent": round(100 * counts.progress / planned, 1), "entities": counts.entities,
                        "written": counts.written, "failed": counts.failed, "seconds": round(elapsed, 1),
                        "per_s": round(rate, 1),
                        "eta_s": round((planned - counts.progress) / rate, 1) if rate > 0 else None,
                        "pid": info.get("pid"), "host": info.get("host")})
        seen.add(key)
    requested = sorted(k.decode() for k in r.hkeys(requests_key(prefix)) if k.decode() not in seen)
    done = {k.decode(): json.loads(v) for k, v in r.hgetall(done_key(prefix)).items()}
    return {"running": running, "requested": requested, "done": done}
