"""The one module that talks to Redis: embeddings as one hash per entity, version-guarded writes.

Layout: hash ``<prefix>:<type>:<id>`` with one field per model version (``<model>@<version>`` ->
float32 little-endian bytes) and ``_v`` (the entity update version they came from). A delete leaves
only ``_v`` and ``_deleted=1`` (so a late, older upsert cannot resurrect the entity). Writes run as a
Lua compare-and-set on ``_v``, so an older update version never overwrites a newer one even across
job restarts or concurrent writers. Versions must stay below 2**53 (Lua numbers are doubles).
"""

from __future__ import annotations

import logging
import time

import redis

log = logging.getLogger(__name__)

VERSION_FIELD = "_v"
DELETED_FIELD = "_deleted"

_WRITE = """
local cur = redis.call('HGET', KEYS[1], '_v')
if cur and tonumber(cur) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], '_v', ARGV[1], unpack(ARGV, 2))
redis.call('HDEL', KEYS[1], '_deleted')
return 1
"""

_DELETE = """
local cur = redis.call('HGET', KEYS[1], '_v')
if cur and tonumber(cur) > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '_v', ARGV[1], '_deleted', '1')
return 1
"""


class RedisEmbeddingStore:
    def __init__(self, url: str, prefix: str = "emb", retry_max_s: float = 30.0):
        self.r = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self.prefix, self.retry_max_s = prefix, retry_max_s
        self._write = self.r.register_script(_WRITE)
        self._delete = self.r.register_script(_DELETE)
        self.retries = 0

    def key(self, entity_type: str, entity_id: str) -> str:
        return f"{self.prefix}:{entity_type}:{entity_id}"

    def _retrying(self, what: str, fn):
        """Retry while Redis is unreachable, with capped backoff: backpressure, never a crash loop."""
        delay = 0.1
        while True:
            try:
                return fn()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.retries += 1
                log.error("Redis %s failed (%s); retrying in %.1fs, input offsets stay uncommitted", what, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)

    def read(self, entities: list[tuple[str, str]], fields: list[list[str]]) -> list[tuple[int | None, dict[str, bytes | None]]]:
        """For each entity: (stored version or None, {field: bytes or None}). One pipelined round trip."""
        def run():
            pipe = self.r.pipeline(transaction=False)
            for (t, i), fs in zip(entities, fields):
                pipe.hmget(self.key(t, i), [VERSION_FIELD, *fs])
            return pipe.execute()

        rows = self._retrying("read", run) if entities else []
        out = []
        for res, fs in zip(rows, fields):
            v = int(res[0]) if res[0] is not None else None
            out.append((v, dict(zip(fs, res[1:]))))
        return out

    def write(self, upserts: list[tuple[str, str, int, dict[str, bytes]]], deletes: list[tuple[str, str, int]]) -> list[bool]:
        """Version-guarded writes, pipelined; returns for each upsert then each delete whether it applied."""
        def run():
            pipe = self.r.pipeline(transaction=False)
            for t, i, version, fields in upserts:
                flat = [x for kv in fields.items() for x in kv]
                self._write(keys=[self.key(t, i)], args=[version, *flat], client=pipe)
            for t, i, version in deletes:
                self._delete(keys=[self.key(t, i)], args=[version], client=pipe)
            return pipe.execute()

        if not upserts and not deletes:
            return []
        return [bool(x) for x in self._retrying("write", run)]

    def get(self, entity_type: str, entity_id: str) -> dict[str, bytes]:
        return {k.decode(): v for k, v in self.r.hgetall(self.key(entity_type, entity_id)).items()}
