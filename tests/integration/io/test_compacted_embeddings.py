"""The embedding topic is log-compacted: updates and deletes streamed through the standardizers and the
job (`nearline run`), a model version retired mid-stream, the broker made to compact the topic, then fresh
consumers (EmbeddingClient, and a plain kafka-python consumer keeping only the latest value per key)
rebuild exactly the state Redis holds; deletes are real null values and deleted entities end absent."""

import time

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from nearline import REPO_ROOT
from nearline.consumers.client import EmbeddingClient
from nearline.io import kafka_io
from nearline.io.codec import Codec
from nearline.io.embedding_messages import VERSION_HEADER
from nearline.io.snapshot import cleanup_policy
from nearline.io.store import META_FIELDS
from nearline.offline.retire import retire
from tests.conftest import isolated_config
from tests.helpers import FEATURES, make_package
from tests.integration.harness import Harness, raw_records

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHIPPED = [str(REPO_ROOT / "models/packages/member_pyramid/v1"), str(REPO_ROOT / "models/packages/job_pyramid/v1")]
CODEC = Codec()


def read_topic(cfg) -> list:
    """Every record of the embedding topic (kafka-python ConsumerRecords), partition by partition."""
    return raw_records(cfg, cfg.topics.embeddings, timeout_s=60)


def latest_value_view(records) -> dict[str, tuple[int, dict[str, bytes]]]:
    """What a table-style consumer builds: the latest value per key (a null value: no entity), then each
    ModelRetired notice (key '_model:<model>@<version>') drops its version from the entities whose
    latest message came before it in the same partition."""
    latest = {}
    for r in records:
        latest[(r.partition, r.key)] = r  # an entity's key is in one partition; a notice is in each
    notices = [(r, CODEC.decode(r.value)) for (_, k), r in latest.items() if k.startswith(b"_model:")]
    view = {}
    for (_, k), r in latest.items():
        if k.startswith(b"_model:") or r.value is None:
            continue
        rec = CODEC.decode(r.value, expect="EntityEmbeddings")
        assert int(dict(r.headers)[VERSION_HEADER]) == rec["version"]
        vecs = {f"{e['model']}@{e['model_version']}": e["vector"] for e in rec["embeddings"]}
        for n, notice in notices:
            if n.partition == r.partition and n.offset > r.offset and notice["entity_type"] == rec["entity_type"]:
                vecs.pop(f"{notice['model']}@{notice['model_version']}", None)
        view[k.decode()] = (rec["version"], vecs)
    return view


def redis_view(h: Harness, keys) -> dict[str, tuple[int, dict[str, bytes]]]:
    out = {}
    for key in keys:
        stored = h.stored(key)
        vecs = {k: v for k, v in stored.items() if k not in META_FIELDS}
        if vecs:
            out[key] = (int(stored["_v"]), vecs)
    return out


def client_view(cfg) -> dict[str, tuple[int, dict[str, bytes]]]:
    with EmbeddingClient(cfg, cfg.kafka.bootstrap, cfg.redis.url) as client:
        client.subscribe()
        assert client.wait_until_caught_up(timeout=60)
        assert client.subscription_stats["poison"] == 0
        return {f"{t}:{i}": (c["version"], {k: v.tobytes() for k, v in c["vectors"].items()})
                for (t, i), c in client.cache.entries.items() if not c["deleted"]}


def force_compaction(cfg) -> None:
    """Small segments, no minimum lag, any dirty ratio: the broker's cleaner compacts every closed
    segment at its next pass (log.cleaner.backoff.ms, 15 s by default). Tombstones are kept a day."""
    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka.bootstrap, request_timeout_ms=10_000)
    try:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, cfg.topics.embeddings, {
            "cleanup.policy": "compact", "segment.ms": "500", "min.cleanable.dirty.ratio": "0.01",
            "min.compaction.lag.ms": "0", "delete.retention.ms": "86400000"})])
    finally:
        admin.close()


def assert_same(views: dict[str, dict], redis: dict, keys) -> None:
    for name, view in views.items():
        extra = set(view) - set(redis)
        assert not extra, f"{name}: entities Redis does not hold (deleted or never written): {sorted(extra)[:5]}"
        for key in keys:
            if key not in redis:
                continue
            assert key in view, f"{name}: {key} is missing (Redis holds version {redis[key][0]})"
            assert view[key][0] == redis[key][0], f"{name}: {key} version {view[key][0]}, Redis {redis[key][0]}"
            assert view[key][1] == redis[key][1], \
                f"{name}: {key} has {sorted(view[key][1])}, Redis {sorted(redis[key][1])} (or other bytes)"


def test_fresh_consumers_of_the_compacted_topic_rebuild_redis(tmp_path, kafka_bootstrap, redis_url, marketplace_dir,
                                                              unique):
    cfg = isolated_config(kafka_bootstrap, redis_url, unique)
    tiny = str(make_package(tmp_path / "pk", "member_tiny", "v1", "member", seed=1))
    # towers that read only geo: an update that changes another feature leaves their embedding unchanged,
    # so a message carrying only what changed (a delta) would lose them at compaction
    geo_only = [str(make_package(tmp_path / "pk", f"{t}_geo", "v1", t, seed=s, features={"geo": FEATURES["geo"]}))
                for t, s in (("member", 2), ("job", 3))]
    h = Harness(tmp_path / "run", cfg, marketplace_dir, SHIPPED + [tiny] + geo_only)
    cfg.models.registry = str(h.registry)  # for retire(), which edits the job's registry
    assert cleanup_policy(kafka_bootstrap, cfg.topics.embeddings) == "compact"  # created compacted
    try:
        h.start_standardizers()
        h.start_job()
        h.wait_log("partition group 3: reading")
        h.stream(400, rate=500)  # mostly creates
        h.wait_caught_up()
        # retired while the job runs: its field leaves every hash; a notice goes to every partition
        res = retire(cfg, kafka_bootstrap, redis_url, "member_tiny@v1", grace_s=3.0)
        assert res["fields_removed"] > 20 and res["notices"] == cfg.topics.partitions
        force_compaction(cfg)
        # then mostly updates and deletes of the same entities: many versions per key to compact away
        mix = h.streamer.mix
        mix.create, mix.relevant_update, mix.irrelevant_update, mix.delete = 0.2, 0.5, 0.15, 0.15
        for _ in range(4):
            h.stream(100, rate=500)
            time.sleep(0.6)  # past segment.ms: the next append rolls the segment
        h.wait_caught_up()
    finally:
        h.stop_all()

    keys = list(h.final_state())
    redis = redis_view(h, keys)
    deleted = [k for k, f in h.final_state().items() if f is None and h.stored(k)]
    assert len(redis) > 60 and len(deleted) > 20, (len(redis), len(deleted))
    assert not any("member_tiny@v1" in v for _, v in redis.values())

    before = read_topic(cfg)  # possibly compacted in part already: the cleaner runs on its own schedule
    carried_tiny = [r for r in before if r.value is not None and not r.key.startswith(b"_model:")
                    and b"member_tiny" in r.value]
    assert len(carried_tiny) > 5  # messages before the retirement carried it: the notices must remove it
    unchanged = [e for r in before if r.value is not None and not r.key.startswith(b"_model:")
                 for e in CODEC.decode(r.value)["embeddings"] if not e["changed"]]
    assert len(unchanged) > 20 and {e["model"] for e in unchanged} >= {"member_geo", "job_geo"}
    # whatever has been compacted yet, the newest message per key is the entity's whole state
    assert_same({"latest value per key (first read)": latest_value_view(before)}, redis, keys)

    # wait until the cleaner has compacted every partition: offsets missing (records removed because a
    # later record has the same key) on each
    deadline = time.monotonic() + 120
    while True:
        after = read_topic(cfg)
        ends = {p: 1 + max(r.offset for r in after if r.partition == p) for p in range(cfg.topics.partitions)}
        removed = {p: ends[p] - sum(1 for r in after if r.partition == p) for p in ends}
        if all(removed.values()):
            break
        assert time.monotonic() < deadline, f"the topic was not compacted in 120 s: removed {removed} of {ends}"
        time.sleep(3)
    assert sum(removed.values()) > 50, removed  # many superseded versions are gone

    # deletes: real null values with the version header, kept by compaction (delete.retention.ms)
    tombstones = [r for r in after if r.value is None]
    assert tombstones and all(int(dict(r.headers)[VERSION_HEADER]) > 0 for r in tombstones)
    last = {r.key: r for r in after}
    for key in deleted:
        assert last[key.encode()].value is None, f"deleted {key}: its latest record is not a tombstone"
    # the retirement notices survive compaction: their own keys, one per partition
    assert sorted(r.partition for r in after if r.key == b"_model:member_tiny@v1") == list(range(cfg.topics.partitions))

    views = {"latest value per key (compacted)": latest_value_view(after), "EmbeddingClient": client_view(cfg)}
    assert_same(views, redis, keys)
    for name, view in views.items():
        assert not set(deleted) & set(view), name
        assert len(view) == len(redis), (name, len(view), len(redis))


def topic_config(bootstrap, topic, names):
    from nearline.io.snapshot import _find_value

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {n: None for n in names})],
                                     config_filter="all")
    finally:
        admin.close()
    return {n: _find_value(res, n) for n in names}


@pytest.mark.parametrize("pre_existing", [False, True])
def test_embedding_topic_is_created_compacted_or_switched(kafka_bootstrap, redis_url, unique, pre_existing):
    from nearline.io.embedding_messages import ensure_embedding_topic

    cfg = isolated_config(kafka_bootstrap, redis_url, unique)
    cfg.topics.embeddings_delete_retention_ms, cfg.topics.embeddings_min_compaction_lag_ms = 123_000, 4_000
    if pre_existing:  # e.g. created by an older version with the broker's default delete policy
        kafka_io.ensure_topics(kafka_bootstrap, [cfg.topics.embeddings], cfg.topics.partitions)
        assert cleanup_policy(kafka_bootstrap, cfg.topics.embeddings) == "delete"
    assert ensure_embedding_topic(kafka_bootstrap, cfg) is (not pre_existing)
    deadline = time.monotonic() + 20  # an altered config reaches DescribeConfigs within moments
    while True:
        got = topic_config(kafka_bootstrap, cfg.topics.embeddings,
                           ["cleanup.policy", "delete.retention.ms", "min.compaction.lag.ms"])
        if got["cleanup.policy"] == "compact" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got == {"cleanup.policy": "compact", "delete.retention.ms": "123000", "min.compaction.lag.ms": "4000"}
    assert ensure_embedding_topic(kafka_bootstrap, cfg) is False  # idempotent
