"""A standardizer as its own process against a real broker: outputs, versions, dead letters, commits."""

import subprocess
import sys
import time

import pytest

from nearline.io import kafka_io
from nearline.io.codec import Codec
from nearline.io.kafka_io import TopicPartition
from nearline.marketplace.stream import UpdateStreamer, load_marketplace
from tests.conftest import isolated_config, write_config_file

pytestmark = pytest.mark.integration


def _read_all(bootstrap, topic, expect, timeout=30):
    c = kafka_io.make_consumer(bootstrap, None)
    c.assign([TopicPartition(topic, p) for p in kafka_io.partitions_of(c, topic)])
    got, deadline = [], time.monotonic() + timeout
    while len(got) < expect and time.monotonic() < deadline:
        for msgs in c.poll(200).values():
            got.extend(msgs)
    c.close()
    return got


def test_title_processor_process(kafka_bootstrap, unique, marketplace_dir, tmp_path):
    cfg = isolated_config(kafka_bootstrap, "redis://unused:1/0", unique)
    kafka_io.ensure_topics(kafka_bootstrap, cfg.all_topics(), 4)
    codec = Codec()
    streamer = UpdateStreamer(load_marketplace(marketplace_dir), seed=2)
    events = list(streamer.take(120))
    p = kafka_io.make_producer(kafka_bootstrap)
    for ev in events:
        p.send(cfg.topics.entity_updates, key=ev.key.encode(), value=codec.encode("EntityUpdate", ev.record))
    p.send(cfg.topics.entity_updates, key=b"job:bad", value=b"\x00garbage")
    p.flush()

    cfg_file = write_config_file(tmp_path / "nearline.yaml", cfg, standardizers={
        "group_prefix": cfg.standardizers.group_prefix, "taxonomy_dir": str(marketplace_dir),
        "delays": {"title": {"delay_ms": 20, "jitter_ms": 50}}})
    out = subprocess.run([sys.executable, "-m", "nearline.cli", "--config", str(cfg_file), "standardize",
                          "--processor", "title", "--idle-exit", "3"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    upserts = [e for e in events if e.record["op"] == "UPSERT"]
    outs = _read_all(kafka_bootstrap, cfg.standardized_topic("title"), len(upserts))
    assert len(outs) == len(upserts)
    decoded = {(m.key.decode(), codec.decode(m.value)["version"]) for m in outs}
    assert decoded == {(e.key, e.record["version"]) for e in upserts}  # keyed by entity, version kept
    dls = _read_all(kafka_bootstrap, cfg.topics.dead_letter, 1)
    assert len(dls) == 1
    dl = codec.decode(dls[0].value, expect="DeadLetter")
    assert dl["original"] == b"\x00garbage" and dl["stage"] == "standardize.title" and "Avro" in dl["error"]
    # everything was committed after being acknowledged: the group has no lag
    c = kafka_io.make_consumer(kafka_bootstrap, cfg.standardizers.group("title"))
    tps = [TopicPartition(cfg.topics.entity_updates, p) for p in kafka_io.partitions_of(c, cfg.topics.entity_updates)]
    committed = sum(c.committed(tp) or 0 for tp in tps)
    assert committed == len(events) + 1
    c.close()


def test_a_1mb_message_is_dead_lettered_truncated_and_the_processor_goes_on(kafka_bootstrap, unique, marketplace_dir,
                                                                            tmp_path):
    """Issue 13: a ~1 MB update used to halt the standardizer for good (its dead letter exceeded the
    producer's request size and was retried forever, re-sending the good records of its batch)."""
    cfg = isolated_config(kafka_bootstrap, "redis://unused:1/0", unique)
    kafka_io.ensure_topics(kafka_bootstrap, cfg.all_topics(), 4)
    codec = Codec()
    events = [ev for ev in UpdateStreamer(load_marketplace(marketplace_dir), seed=4).take(60)]
    def update_of(size):
        return codec.encode("EntityUpdate", {"entity_type": "member", "entity_id": "big", "version": 1, "op": "UPSERT",
                                             "event_time": 0, "fields": {"title": "e" * size}})

    # just inside the broker's default message.max.bytes (1048588 with the batch overhead), so that a
    # dead letter carrying all of it would exceed the producer's max_request_size (1048576)
    n = 1_048_400 - len(update_of(0))
    huge = update_of(n - (len(update_of(n)) - 1_048_400))
    assert len(huge) == 1_048_400
    p = kafka_io.make_producer(kafka_bootstrap, max_request_size=2_000_000)
    for i, ev in enumerate(events):
        if i == 30:
            p.send(cfg.topics.entity_updates, key=b"member:big", value=huge)
        p.send(cfg.topics.entity_updates, key=ev.key.encode(), value=codec.encode("EntityUpdate", ev.record))
    p.flush()
    p.close()
    cfg_file = write_config_file(tmp_path / "nearline.yaml", cfg, standardizers={
        "group_prefix": cfg.standardizers.group_prefix, "taxonomy_dir": str(marketplace_dir)})
    out = subprocess.run([sys.executable, "-m", "nearline.cli", "--config", str(cfg_file), "standardize",
                          "--processor", "skills", "--idle-exit", "3"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    upserts = [e for e in events if e.record["op"] == "UPSERT"]
    outs = _read_all(kafka_bootstrap, cfg.standardized_topic("skills"), len(upserts) + 1, timeout=10)
    assert sorted(m.key.decode() for m in outs) == sorted(e.key for e in upserts)  # each good one exactly once
    [dl] = [codec.decode(m.value, expect="DeadLetter") for m in _read_all(kafka_bootstrap, cfg.topics.dead_letter, 2, 10)]
    assert dl["error"].startswith("oversize: ") and "truncated" in dl["error"]
    assert dl["original"] == huge[: len(dl["original"])] and len(dl["original"]) == cfg.limits.dead_letter_original_bytes
    c = kafka_io.make_consumer(kafka_bootstrap, cfg.standardizers.group("skills"))
    tps = [TopicPartition(cfg.topics.entity_updates, p) for p in kafka_io.partitions_of(c, cfg.topics.entity_updates)]
    assert sum(c.committed(tp) or 0 for tp in tps) == len(events) + 1  # everything committed, the huge one too
    c.close()
