"""The one module that talks to Redis: embeddings as one hash per entity, version-guarded writes.

Layout: hash ``<prefix>:<type>:<id>`` with one field per model version (``<model>@<version>`` ->
float32 little-endian bytes) and ``_v`` (the entity update version they came from). A delete leaves
only ``_v`` and ``_deleted=1`` (so a late, older upsert cannot resurrect the entity). Writes run as a
Lua compare-and-set on ``_v``, so an older update version never overwrites a newer one even across
job restarts or concurrent writers. Versions are compared exactly, as decimal strings (Lua numbers are
doubles, exact only below 2**53: 2**53 would have overwritten 2**53+1); the valid range is
[0, 2**63-1] (nearline.validate.VERSION_MAX), enforced here and in the job's input checks.

A delete always leaves its marker, also for an entity Redis holds nothing for (a create and delete that
came together, or a Redis emptied and rebuilt): an older upsert of it can still arrive later (a producer
retry, a mirrored or re-read message), and the marker is what refuses it.

:class:`DataLossDetector` keeps a sentinel key in Redis and notices when it disappears (Redis restarted
empty, FLUSHALL): every embedding and delete marker written before is then gone.
"""

from __future__ import annotations

import logging
import time

import redis

from nearline.core.lifecycle import retry_until_done
from nearline.core.validate import VERSION_MAX, VERSION_MIN

log = logging.getLogger(__name__)


def heartbeat_key(prefix: str, group: str) -> str:
    """Redis key the nearline job of consumer group ``group`` refreshes with its wall-clock time (ms)."""
    return f"{prefix}:_heartbeat:{group}"


VERSION_FIELD = "_v"
DELETED_FIELD = "_deleted"
PARTIAL_FIELD = "_partial"
META_FIELDS = (VERSION_FIELD, DELETED_FIELD, PARTIAL_FIELD)

# Versions travel as decimal strings without leading zeros (str(int) in Python): the longer string is
# the larger number; equal lengths compare digit by digit (bytes, since Lua's string '<' uses strcoll,
# which follows Redis's locale). No tonumber(): doubles lose precision from 2**53 on.
_VCMP = """
local function vcmp(a, b)
  if #a ~= #b then if #a < #b then return -1 else return 1 end end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then if x < y then return -1 else return 1 end end
  end
  return 0
end
"""

# ARGV: version, partial flag ("1"/"0"), field, value, ...  A partial result may replace only an older
# version or a partial one of the same version (see nearline/stream/dedupe.py).
_WRITE = _VCMP + """
local cur = redis.call('HGET', KEYS[1], '_v')
if cur then
  local c = vcmp(cur, ARGV[1])
  if c > 0 then return 0 end
  if c == 0 and ARGV[2] == '1' and redis.call('HEXISTS', KEYS[1], '_partial') == 0 then return 0 end
end
redis.call('HSET', KEYS[1], '_v', ARGV[1], unpack(ARGV, 3))
redis.call('HDEL', KEYS[1], '_deleted')
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], '_partial', '1') else redis.call('HDEL', KEYS[1], '_partial') end
return 1
"""

_DELETE = _VCMP + """
local cur = redis.call('HGET', KEYS[1], '_v')
if cur and vcmp(cur, ARGV[1]) > 0 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '_v', ARGV[1], '_deleted', '1')
return 1
"""


# The backfill's batch forms: many entities per call (one EVALSHA per batch instead of one per entity;
# the per-command cost of a pipeline was most of the backfill's Redis time). Single-node Redis only
# (the keys of one call may hash to different cluster slots), as is RedisEmbeddingStore.
# READ_MANY  ARGV: nfields, field..., then KEYS are the entities; per entity the HMGET of _v, _partial,
# fields, or 0 when the entity has no _v (no hash: a rebuild's every entity, one small reply each).
_READ_MANY = """
local n = tonumber(ARGV[1])
local fields = {'_v', '_partial'}
for j = 1, n do fields[#fields + 1] = ARGV[1 + j] end
local out = {}
for i = 1, #KEYS do
  local r = redis.call('HMGET', KEYS[i], unpack(fields))
  if r[1] then out[i] = r else out[i] = 0 end
end
return out
"""

# WRITE_STATE_MANY  KEYS[1]: the outbox set (entities written whose full state is not yet published, or
# '' for none); KEYS[2..]: entities. ARGV per entity: version, partial flag, number of fields, field,
# value, ...  The guard is _WRITE's, statement for statement; per entity the reply is 0 (refused) or the
# hash's other fields after the write (neither the fields just written nor _v/_partial, which the caller
# knows), so the caller has the full state without a second trip. A hash that holds only what was just
# written (a rebuild) answers {} without an HGETALL: HLEN tells.
_WRITE_STATE_MANY = _VCMP + """
local a = 1
local out, applied = {}, {}
for i = 2, #KEYS do
  local key, ver, partial, n = KEYS[i], ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local first, last = a + 3, a + 2 + 2 * n
  a = last + 1
  local ok = true
  local cur = redis.call('HGET', key, '_v')
  if cur then
    local c = vcmp(cur, ver)
    if c > 0 then ok = false
    elseif c == 0 and partial == '1' and redis.call('HEXISTS', key, '_partial') == 0 then ok = false end
  end
  if ok then
    local meta = 1
    if partial == '1' then
      redis.call('HSET', key, '_v', ver, '_partial', '1', unpack(ARGV, first, last))
      redis.call('HDEL', key, '_deleted')
      meta = 2
    else
      redis.call('HSET', key, '_v', ver, unpack(ARGV, first, last))
      redis.call('HDEL', key, '_deleted', '_partial')
    end
    applied[#applied + 1] = key
    local rest = {}
    if redis.call('HLEN', key) ~= n + meta then
      local written, all = {_v = true, _partial = true}, redis.call('HGETALL', key)
      for j = first, last, 2 do written[ARGV[j]] = true end
      for j = 1, #all, 2 do
        if not written[all[j]] then rest[#rest + 1] = all[j]; rest[#rest + 1] = all[j + 1] end
      end
    end
    out[i - 1] = rest
  else
    out[i - 1] = 0
  end
end
if KEYS[1] ~= '' then  -- one SADD per 1000 keys, not one per entity (unpack's stack limit is 8000)
  for j = 1, #applied, 1000 do redis.call('SADD', KEYS[1], unpack(applied, j, math.min(j + 999, #applied))) end
end
return out
"""


class RedisEmbeddingStore:
    def __init__(self, url: str, prefix: str = "emb", retry_max_s: float = 2.0):
        self.r = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self.prefix, self.retry_max_s = prefix, retry_max_s
        self._write = self.r.register_script(_WRITE)
        self._delete = self.r.register_script(_DELETE)
        self._read_many = self.r.register_script(_READ_MANY)
        self._write_state_many = self.r.register_script(_WRITE_STATE_MANY)
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
        for v in [up[2] for up in upserts] + [d[2] for d in deletes]:
            check_version(v)

        def run():
            pipe = self.r.pipeline(transaction=False)
            for up in upserts:
                t, i, version, fields = up[:4]
                partial = len(up) > 4 and up[4]
                flat = [x for kv in fields.items() for x in kv]
                self._write(keys=[self.key(t, i)], args=[str(int(version)), "1" if partial else "0", *flat], client=pipe)
            for t, i, version in deletes:
                self._delete(keys=[self.key(t, i)], args=[str(int(version))], client=pipe)
            return pipe.execute()

        if not upserts and not deletes:
            return []
        return [bool(x) for x in self._retrying("write", run)]

    def read_many(self, entities: list[tuple[str, str]], fields: list[str]) -> list[tuple[int | None, bool, dict[str, bytes | None]]]:
        """:meth:`read` with the same fields for every entity, in one script call (the backfill's read)."""
        if not entities:
            return []
        keys = [self.key(t, i) for t, i in entities]
        rows = self._retrying("read", lambda: self._read_many(keys=keys, args=[len(fields), *fields]))
        return [(None, False, dict.fromkeys(fields)) if res == 0 else (int(res[0]), res[1] is not None, dict(zip(fields, res[2:])))
                for res in rows]

    def write_state_many(self, upserts: list[tuple], outbox: str | None = None) -> list[dict[str, bytes] | None]:
        """:meth:`write`'s version-guarded upserts in one script call; for each upsert None (refused: a
        newer version is stored) or the entity's whole hash after the write (field -> bytes, the meta
        fields too). ``outbox``: a set the written entities' keys are added to in the same call."""
        if not upserts:
            return []
        keys, args, metas = [outbox or ""], [], []
        prefix = self.prefix
        for up in upserts:
            t, i, version, fields = up[:4]
            check_version(version)
            keys.append(f"{prefix}:{t}:{i}")
            v = str(int(version))
            partial = len(up) > 4 and bool(up[4])
            metas.append((v.encode(), partial))
            args += (v, "1" if partial else "0", len(fields))
            for kv in fields.items():
                args += kv
        res = self._retrying("write", lambda: self._write_state_many(keys=keys, args=args))
        out: list[dict[str, bytes] | None] = []
        for up, x, (v, partial) in zip(upserts, res, metas):
            if x == 0:
                out.append(None)
                continue
            # the fields just written (bytes, as the job's and the backfill's vectors are) + the rest
            state = {**{x[j].decode(): x[j + 1] for j in range(0, len(x), 2)}, **up[3]} if x else dict(up[3])
            state[VERSION_FIELD] = v
            if partial:
                state[PARTIAL_FIELD] = b"1"
            out.append(state)
        return out

    def get(self, entity_type: str, entity_id: str) -> dict[str, bytes]:
        return {k.decode(): v for k, v in self.r.hgetall(self.key(entity_type, entity_id)).items()}


def check_version(v) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not VERSION_MIN <= v <= VERSION_MAX:
        raise ValueError(f"version {v!r} outside the valid range [0, 2**63-1]")


class DataLossDetector:
    """Notices that Redis lost its data while the job runs (restarted empty, flushed).

    At start the job writes ``<prefix>:_sentinel`` (if absent); then, at most every ``every_s``, it
    checks the key still exists. Gone means every embedding and delete marker written before is gone
    too: that is logged as an error and counted (``redis_data_loss_detected``), and the sentinel is
    written again. Rebuilding the lost entities is the backfill's job. (A Redis emptied while the job
    was down cannot be told from a fresh one at start; the start-up log says the sentinel was created.)
    """

    def __init__(self, store: "RedisEmbeddingStore", every_s: float = 5.0, metrics=None, clock=time.monotonic):
        self.store, self.every_s, self.clock = store, every_s, clock
        self.key = f"{store.prefix}:_sentinel"
        self.metrics = metrics
        self.started: str | None = None
        self.next_check = 0.0
        self.losses = 0

    def _write(self) -> bool:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return bool(self.store._retrying("write sentinel", lambda: self.store.r.set(self.key, stamp, nx=True)))

    def check(self) -> bool:
        """True if Redis lost its data since the last check. Cheap when called often (rate-limited)."""
        now = self.clock()
        if now < self.next_check:
            return False
        self.next_check = now + self.every_s
        if self.started is None:
            created = self._write()
            self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            if created:
                log.warning("Redis sentinel %s created: a fresh Redis, or one emptied while the job was down "
                            "(then its entities need a backfill)", self.key)
            return False
        if self.store._retrying("check sentinel", lambda: self.store.r.exists(self.key)):
            return False
        self.losses += 1
        log.error("REDIS DATA LOSS: sentinel %s is gone (Redis restarted empty or was flushed); every embedding "
                  "and delete marker written before now is lost; rebuild them with a backfill", self.key)
        if self.metrics is not None:
            self.metrics.inc("redis_data_loss_detected")
        self._write()
        return True


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
