"""The one module that talks to Redis: embeddings as one hash per entity, version-guarded writes.

Layout: hash ``<prefix>:<type>:<id>`` with one field per model version (``<model>@<version>`` ->
float32 little-endian bytes) and ``_v`` (the entity update version they came from). A delete leaves
only ``_v`` and ``_deleted=1`` (so a late, older upsert cannot resurrect the entity). Writes run as a
Lua compare-and-set on ``_v``, so an older update version never overwrites a newer one even across
job restarts or concurrent writers. Versions must stay below 2**53 (Lua numbers are doubles).
"""

from __future__ import annotations

import logging

import redis

from nearline.lifecycle import retry_until_done

log = logging.getLogger(__name__)

VERSION_FIELD = "_v"
DELETED_FIELD = "_deleted"
PARTIAL_FIELD = "_partial"
META_FIELDS = (VERSION_FIELD, DELETED_FIELD, PARTIAL_FIELD)

# ARGV: version, partial flag ("1"/"0"), field, value, ...  A partial result may replace only an older
# version or a partial one of the same version (see nearline/dedupe.py).
_WRITE = """
local cur = redis.call('HGET', KEYS[1], '_v')
if cur then
  local c, v = tonumber(cur), tonumber(ARGV[1])
  if c > v then return 0 end
  if c == v and ARGV[2] == '1' and redis.call('HEXISTS', KEYS[1], '_partial') == 0 then return 0 end
end
redis.call('HSET', KEYS[1], '_v', ARGV[1], unpack(ARGV, 3))
redis.call('HDEL', KEYS[1], '_deleted')
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], '_partial', '1') else redis.call('HDEL', KEYS[1], '_partial') end
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
        def count():
            self.retries += 1

        return retry_until_done(f"Redis {what}", fn, log, first_delay=0.1, max_delay=self.retry_max_s,
                                errors=(redis.ConnectionError, redis.TimeoutError), on_retry=count)

    def read(self, entities: list[tuple[str, str]], fields: list[list[str]]) -> list[tuple[int | None, bool, dict[str, bytes | None]]]:
        """For each entity: (stored version or None, stored is partial, {field: bytes or None}).
        One pipelined round trip."""
        def run():
            pipe = self.r.pipeline(transaction=False)
            for (t, i), fs in zip(entities, fields):
                pipe.hmget(self.key(t, i), [VERSION_FIELD, PARTIAL_FIELD, *fs])
            return pipe.execute()

        rows = self._retrying("read", run) if entities else []
        out = []
        for res, fs in zip(rows, fields):
            v = int(res[0]) if res[0] is not None else None
            out.append((v, res[1] is not None, dict(zip(fs, res[2:]))))
        return out

    def written_versions(self, entities: list[tuple[str, str]]) -> list[tuple[int | None, bool]]:
        """(stored version or None, stored is partial) per entity, one pipelined round trip."""
        return [(v, p) for v, p, _ in self.read(entities, [[] for _ in entities])]

    def write(self, upserts: list[tuple], deletes: list[tuple[str, str, int]]) -> list[bool]:
        """Version-guarded writes, pipelined; returns for each upsert then each delete whether it applied.
        upserts: (type, id, version, {field: bytes}[, partial])."""
        def run():
            pipe = self.r.pipeline(transaction=False)
            for up in upserts:
                t, i, version, fields = up[:4]
                partial = len(up) > 4 and up[4]
                flat = [x for kv in fields.items() for x in kv]
                self._write(keys=[self.key(t, i)], args=[version, "1" if partial else "0", *flat], client=pipe)
            for t, i, version in deletes:
                self._delete(keys=[self.key(t, i)], args=[version], client=pipe)
            return pipe.execute()

        if not upserts and not deletes:
            return []
        return [bool(x) for x in self._retrying("write", run)]

    def get(self, entity_type: str, entity_id: str) -> dict[str, bytes]:
        return {k.decode(): v for k, v in self.r.hgetall(self.key(entity_type, entity_id)).items()}


class ReadMarks:
    """The highest input offset the job has read, per partition, recorded *before* a batch is processed.

    After a restart, records at or below the mark are replays. Offsets are committed per partition, so a
    version already processed can be re-read in part; the join must know which messages are replays so
    that such a fragment is never scored with defaults (see nearline.join.ReplayTimeout). Kept in Redis,
    not in Kafka commit metadata: some brokers drop commit metadata, and commits come after effects,
    which is too late to cover the batch being processed when the job dies.
    """

    def __init__(self, store: RedisEmbeddingStore, group: str):
        self.store, self.key = store, f"{store.prefix}:readmarks:{group}"

    def load(self) -> dict[tuple[str, int], int]:
        raw = self.store._retrying("read marks", lambda: self.store.r.hgetall(self.key))
        out = {}
        for k, v in raw.items():
            topic, _, part = k.decode().rpartition(":")
            out[(topic, int(part))] = int(v)
        return out

    def save(self, marks: dict[tuple[str, int], int]) -> None:
        if marks:
            mapping = {f"{t}:{p}": off for (t, p), off in marks.items()}
            self.store._retrying("write read marks", lambda: self.store.r.hset(self.key, mapping=mapping))
