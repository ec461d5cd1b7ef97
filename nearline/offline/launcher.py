"""The running job's launcher of automatic backfills: a newly registered version gets a `nearline backfill`
child process (see nearline.registry and docs/design.md).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from nearline.offline.lease import LEASE_S, claim, lease_key

log = logging.getLogger(__name__)


def child_config_file(cfg, bootstrap: str, redis_url: str, directory: Path) -> Path:
    """The job's config with its resolved endpoints, for a child process."""
    data = dataclasses.asdict(cfg)
    data["kafka"]["bootstrap"], data["redis"]["url"] = bootstrap, redis_url
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"backfill-config-{os.getpid()}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class BackfillLauncher:
    """In the job: launches `nearline backfill --models KEY` when a version starts being scored."""

    def __init__(self, cfg, bootstrap: str, redis_url: str):
        import redis

        self.cfg, self.bootstrap, self.redis_url = cfg, bootstrap, redis_url
        self.prefix = cfg.redis.key_prefix
        self.r = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
        self.dir = cfg.path(cfg.services.state_dir) / "backfill"
        self.children: list[tuple[list[str], subprocess.Popen, Path]] = []
        self.owner = f"job-{os.getpid()}"

    def resume(self, loaded: set[str]) -> None:
        """At start-up: relaunch requested backfills that never completed (the job or the backfill died)."""
        from nearline.offline.progress import requests_key

        try:
            pending = {k.decode() for k in self.r.hkeys(requests_key(self.prefix))}
        except Exception as exc:
            log.error("cannot read pending backfill requests (%s); they are retried at the next start", exc)
            return
        keys = sorted(k for k in pending & loaded if self.r.set(lease_key(self.prefix, k), self.owner, nx=True, ex=LEASE_S))
        if keys:
            log.info("resuming unfinished backfill of %s", keys)
            self.launch(keys)

    def after_batch(self, before: set[str], after: set[str]) -> None:
        from nearline.offline.progress import done_key

        added = sorted(after - before)
        mine = []
        for k in added:
            try:
                if self.r.hexists(done_key(self.prefix), k):
                    log.info("%s is registered and was already backfilled (e.g. by `nearline models register`)", k)
                elif claim(self.r, self.prefix, k, self.owner):
                    mine.append(k)
                else:
                    log.info("%s is registered; its backfill is already running elsewhere (lease held)", k)
            except Exception as exc:
                log.error("cannot request the backfill of %s (%s); run `nearline backfill --models %s`", k, exc, k)
        if mine:
            self.launch(mine)
        self.poll()

    def launch(self, keys: list[str]) -> None:
        conf = child_config_file(self.cfg, self.bootstrap, self.redis_url, self.dir)
        logfile = self.dir / f"backfill-{'+'.join(keys).replace('/', '_')}-{int(time.time())}.log"
        out = open(logfile, "ab")
        cmd = [sys.executable, "-m", "nearline.cli", "--config", str(conf), "backfill", "--models", *keys,
               "--no-progress", "--json"]
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "NEARLINE_BACKFILL_OWNER": self.owner})
        out.close()
        self.children.append((keys, p, logfile))
        log.info("newly registered %s: launched backfill pid %d (log %s)", keys, p.pid, logfile)

    def poll(self) -> None:
        still = []
        for keys, p, logfile in self.children:
            rc = p.poll()
            if rc is None:
                still.append((keys, p, logfile))
                continue
            tail = [l for l in logfile.read_text(errors="replace").splitlines() if l.startswith(("backfill of", "nearline backfill"))]
            (log.info if rc == 0 else log.error)("backfill of %s finished (exit %d): %s", keys, rc, tail[-1] if tail else f"see {logfile}")
        self.children = still
