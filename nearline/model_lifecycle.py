"""Registering and retiring model versions, and the job's automatic backfill of a newly registered version.

Which triggers the backfill, and why: **the running job launches it.** Adding a line to
models/registry.yaml by any means (an editor, CI, `nearline models register`, `nearline train --register`)
is what registers a version, and only the job knows the moment it starts scoring the new version with
subsequent updates: from then on, every entity the job writes has it, so a backfill started right after
that moment needs only the entities written before it (plus the few batches in flight, which the
backfill's catch-up passes cover). The job does not run the backfill inside its own streaming pipeline (it
would stall live updates for minutes on big snapshots); it launches `nearline backfill --models KEY` as a
child process with the job's endpoints.

Durable and exclusive: a request is recorded in Redis (``<prefix>:backfill:requested``) and cleared only
when the backfill completes, so a job restarted after a crash (or a stop) relaunches unfinished ones. A
lease (``<prefix>:backfill:lease:<key>``, refreshed by the running backfill) makes sure only one backfill
per version runs, however many job workers notice the registration.

`nearline models register PATH` checks the package, appends the line and, unless ``--no-backfill``,
claims the backfill itself and runs it in the foreground with a progress bar (useful when the job is not
running); a running job then sees the claim and does not launch a second one.

`nearline models retire NAME@VERSION` removes the line (the job stops scoring it within
``job.registry_poll_s``), waits that long, deletes the version's field from every entity hash in Redis, and
publishes a ModelRetired notice to every partition of the embedding topic, after every embedding of that
version in the partition, so topic consumers drop it from their caches.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

LEASE_S = 60


def lease_key(prefix: str, model_key: str) -> str:
    return f"{prefix}:backfill:lease:{model_key}"


def claim(r, prefix: str, model_key: str, owner: str) -> bool:
    """Record the request (durable) and take the lease if nobody holds it. True: the caller runs it."""
    from nearline.backfill import requests_key

    r.hset(requests_key(prefix), model_key, json.dumps({"at": time.time(), "by": owner}))
    return bool(r.set(lease_key(prefix, model_key), owner, nx=True, ex=LEASE_S))


class LeaseKeeper:
    """Keeps the leases of the versions a backfill is running for, until stopped."""

    def __init__(self, r, prefix: str, keys: list[str], owner: str):
        self.r, self.prefix, self.keys, self.owner = r, prefix, keys, owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="backfill-lease")

    def _refresh(self):
        for k in self.keys:
            self.r.set(lease_key(self.prefix, k), self.owner, ex=LEASE_S)

    def _loop(self):
        while not self._stop.wait(LEASE_S / 4):
            try:
                self._refresh()
            except Exception as exc:  # Redis blip: the next refresh retries; the lease outlives a few misses
                log.warning("backfill lease refresh failed: %s", exc)

    def __enter__(self):
        self._refresh()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        for k in self.keys:
            self.r.delete(lease_key(self.prefix, k))


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
        from nearline.backfill import requests_key

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
        from nearline.backfill import done_key

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


# ---- CLI: register / retire ----------------------------------------------------------------------
def cli_register(cfg, args) -> int:
    from nearline.backfill import BackfillError, run_backfill
    from nearline.registry import Registry, check_package
    from nearline.services import resolve_endpoints

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


def remove_registry_line(registry_path: Path, model_key: str, entity_types) -> str | None:
    """Remove the line registering ``model_key`` (comments and other lines kept). Returns the entry."""
    from nearline.registry import Registry

    target = next((e for e, m in Registry(registry_path).manifests() if _key(m) == model_key), None)
    if target is None:
        return None
    lines = registry_path.read_text().splitlines(keepends=True)
    kept = [l for l in lines if l.split("#", 1)[0].strip().lstrip("-").strip().strip("'\"") != target]
    registry_path.write_text("".join(kept))
    return target


def remove_fields(r, prefix: str, entity_type: str, model_key: str, batch: int = 1000) -> int:
    """HDEL the model's field from every entity hash of the type; returns how many held it."""
    removed = 0
    pipe = r.pipeline(transaction=False)
    n = 0
    for k in r.scan_iter(match=f"{prefix}:{entity_type}:*", count=batch):
        pipe.hdel(k, model_key)
        n += 1
        if n % batch == 0:
            removed += sum(pipe.execute())
    removed += sum(pipe.execute())
    return removed


def publish_retired(cfg, bootstrap: str, model_key: str, entity_type: str) -> int:
    """A ModelRetired notice on every partition of the embedding topic; returns the partitions."""
    from nearline import kafka_io
    from nearline.codec import codec_for

    name, _, version = model_key.partition("@")
    value = codec_for(cfg).encode("ModelRetired", {"model": name, "model_version": version, "entity_type": entity_type,
                                                   "retired_at": int(time.time() * 1000)})
    producer = kafka_io.make_producer(bootstrap)
    c = kafka_io.make_consumer(bootstrap, None)
    try:
        parts = kafka_io.partitions_of(c, cfg.topics.embeddings)
        futs = [producer.send(cfg.topics.embeddings, key=f"_model:{model_key}".encode(), value=value, partition=p) for p in parts]
        producer.flush(timeout=30)
        for f in futs:
            f.get(timeout=30)
        return len(parts)
    finally:
        c.close(autocommit=False)
        producer.close(timeout=10)


def retire(cfg, bootstrap: str, redis_url: str, model_key: str, grace_s: float | None = None) -> dict:
    import redis

    from nearline.backfill import BackfillError, done_key, requests_key
    from nearline.registry import Registry

    reg_path = cfg.path(cfg.models.registry)
    reg = Registry(reg_path)
    etype = None
    for _, m in reg.manifests():
        if _key(m) == model_key:
            etype = m.get("entity_type")
    if etype is None:
        raise BackfillError(f"{model_key} is not registered in {reg_path}")
    r = redis.Redis.from_url(redis_url)
    holder = r.get(lease_key(cfg.redis.key_prefix, model_key))
    if holder is not None:
        raise BackfillError(f"a backfill of {model_key} is running ({holder.decode()}); let it finish or stop it, then retire")
    entry = remove_registry_line(reg_path, model_key, cfg.entity_types)
    if entry is None or model_key in _registered_keys(reg):
        raise BackfillError(f"could not remove the line of {model_key} from {reg_path}; edit it by hand")
    # a running job re-reads the registry every registry_poll_s; a batch scored just before may still write
    time.sleep(2 * cfg.job.registry_poll_s + 5 if grace_s is None else grace_s)
    removed = remove_fields(r, cfg.redis.key_prefix, etype, model_key)
    for k in (done_key(cfg.redis.key_prefix), requests_key(cfg.redis.key_prefix)):
        r.hdel(k, model_key)
    parts = publish_retired(cfg, bootstrap, model_key, etype)
    return {"model": model_key, "entry": entry, "entity_type": etype, "fields_removed": removed, "notices": parts}


def _key(manifest: dict) -> str:
    return f"{manifest.get('name')}@{manifest.get('version')}"


def _registered_keys(reg) -> set[str]:
    return {_key(m) for _, m in reg.manifests()}


def cli_retire(cfg, args) -> int:
    from nearline.backfill import BackfillError
    from nearline.services import resolve_endpoints

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
