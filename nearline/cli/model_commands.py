"""`nearline models register|retire`: register a version (check, add the registry line, backfill) or retire one.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from nearline.offline.lease import claim
from nearline.offline.retire import retire


# ---- CLI: register / retire ----------------------------------------------------------------------
def cli_register(cfg, args) -> int:
    from nearline.launch.backfill import run_backfill
    from nearline.offline.progress import BackfillError
    from nearline.ops.services import resolve_endpoints
    from nearline.registry.check import check_package
    from nearline.registry.packages import Registry

    if not args.target:
        print("nearline models register: give the package folder, e.g. models/packages/member_pyramid/v2", file=sys.stderr)
        return 2
    pkg, problems = check_package(Path(args.target), cfg.entity_types)
    if problems:
        print(f"nearline models register: {args.target} is not servable: " + "; ".join(problems), file=sys.stderr)
        return 1
    key = pkg.manifest.key
    reg = Registry(cfg.path(cfg.models.registry))
    line = reg.register(Path(args.target))
    print(f"registered {key}: {line} in {reg.path}")
    if args.no_backfill:
        return 0
    import redis

    bootstrap, redis_url = resolve_endpoints(cfg)
    r = redis.Redis.from_url(redis_url)
    if not claim(r, cfg.redis.key_prefix, key, f"cli-{os.getpid()}"):
        print(f"a backfill of {key} is already running (lease held, e.g. launched by the job); not starting another")
        return 0
    # one registry poll: a running job then scores the version on every update before our scan starts
    time.sleep(cfg.job.registry_poll_s + 0.5)
    try:
        res = run_backfill(cfg, bootstrap, redis_url, models=[key], progress=True)
    except BackfillError as exc:
        print(f"nearline models register: backfill: {exc}", file=sys.stderr)
        return 2
    print(res.summary_line())
    return 1 if res.counts.failed else 0


def cli_retire(cfg, args) -> int:
    from nearline.offline.progress import BackfillError
    from nearline.ops.services import resolve_endpoints

    if not args.target or "@" not in args.target:
        print("nearline models retire: give NAME@VERSION, e.g. member_pyramid@v1 (see `nearline models list`)", file=sys.stderr)
        return 2
    bootstrap, redis_url = resolve_endpoints(cfg)
    try:
        res = retire(cfg, bootstrap, redis_url, args.target, args.grace)
    except BackfillError as exc:
        print(f"nearline models retire: {exc}", file=sys.stderr)
        return 1
    print(f"retired {res['model']}: removed '{res['entry']}' from the registry, its field from {res['fields_removed']} "
          f"{res['entity_type']} hashes in Redis, ModelRetired published to {res['notices']} partitions")
    return 0
