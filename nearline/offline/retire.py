"""Retiring a registered version: its registry line removed, its fields removed from Redis, and a message on
the embedding topic that says it is gone.
"""

from __future__ import annotations

import time
from pathlib import Path

from nearline.offline.lease import lease_key


def remove_registry_line(registry_path: Path, model_key: str, entity_types) -> str | None:
    """Remove the line registering ``model_key`` (comments and other lines kept). Returns the entry."""
    from nearline.registry.packages import Registry

    target = next((e for e, m in Registry(registry_path).manifests() if model_key_of(m) == model_key), None)
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
    from nearline.io import kafka_io
    from nearline.io.codec import codec_for

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

    from nearline.offline.progress import BackfillError, done_key, requests_key
    from nearline.registry.packages import Registry

    reg_path = cfg.path(cfg.models.registry)
    reg = Registry(reg_path)
    etype = None
    for _, m in reg.manifests():
        if model_key_of(m) == model_key:
            etype = m.get("entity_type")
    if etype is None:
        raise BackfillError(f"{model_key} is not registered in {reg_path}")
    r = redis.Redis.from_url(redis_url)
    holder = r.get(lease_key(cfg.redis.key_prefix, model_key))
    if holder is not None:
        raise BackfillError(f"a backfill of {model_key} is running ({holder.decode()}); let it finish or stop it, then retire")
    entry = remove_registry_line(reg_path, model_key, cfg.entity_types)
    if entry is None or model_key in registered_keys(reg):
        raise BackfillError(f"could not remove the line of {model_key} from {reg_path}; edit it by hand")
    # a running job re-reads the registry every registry_poll_s; a batch scored just before may still write
    time.sleep(2 * cfg.job.registry_poll_s + 5 if grace_s is None else grace_s)
    removed = remove_fields(r, cfg.redis.key_prefix, etype, model_key)
    for k in (done_key(cfg.redis.key_prefix), requests_key(cfg.redis.key_prefix)):
        r.hdel(k, model_key)
    parts = publish_retired(cfg, bootstrap, model_key, etype)
    return {"model": model_key, "entry": entry, "entity_type": etype, "fields_removed": removed, "notices": parts}


def model_key_of(manifest: dict) -> str:
    return f"{manifest.get('name')}@{manifest.get('version')}"


def registered_keys(reg) -> set[str]:
    return {model_key_of(m) for _, m in reg.manifests()}
