"""Pure parts of the backfill (no servers): the snapshot record format, the newest-entry fold, progress
shares, registry line removal, the child config round trip."""

from collections import namedtuple

import pytest

from nearline.config import Config, load_config
from nearline.io.codec import Codec
from nearline.io.snapshot import SCHEMA, header_version, latest_per_key, snapshot_send, tombstone_send
from nearline.launch.backfill import resolve_models
from nearline.offline.launcher import child_config_file
from nearline.offline.progress import BackfillCounts, BackfillError
from nearline.offline.retire import remove_registry_line
from nearline.offline.scan import SnapshotChunk
from nearline.offline.stage import batches_with_progress
from nearline.stream.join import Joined
from tests.helpers import make_package

Rec = namedtuple("Rec", "key value headers offset")


def joined(eid, version, feats, partial=False):
    return Joined(f"member:{eid}", "member", eid, version, feats, partial, ["geo"] if partial else [], [], 0.0)


FEATS = {"title": {"ids": [3], "weights": None}, "skills": {"ids": [4, 9], "weights": [0.5, 0.25]}}


def test_snapshot_record_round_trips_the_joined_features_exactly():
    codec = Codec()
    topic, key, value, headers = snapshot_send("snap", joined("m1", 7, FEATS, partial=True), codec, now_ms=5)
    assert (topic, key, header_version(headers)) == ("snap", b"member:m1", 7)
    rec = codec.decode(value, expect=SCHEMA)
    assert rec["features"] == FEATS and rec["version"] == 7 and rec["partial"] and rec["missing"] == ["geo"]
    t = tombstone_send("snap", "member:m1", 8)
    assert t[2] is None and header_version(t[3]) == 8


def test_newest_version_per_key_wins_tombstones_included():
    codec = Codec()
    v = {n: snapshot_send("s", joined("a", n, FEATS), codec)[2] for n in (1, 2, 3)}
    recs = [Rec(b"member:a", v[1], [("version", b"1")], 0), Rec(b"member:b", v[2], [("version", b"2")], 1),
            Rec(b"member:a", v[3], [("version", b"3")], 2),
            Rec(b"member:a", v[2], [("version", b"2")], 3),          # a replayed older version: never wins
            Rec(b"member:b", None, [("version", b"5")], 4),          # b deleted
            Rec(b"member:c", v[1], [], 5)]                           # no header: decoded for the version
    out, n = latest_per_key(recs, codec)
    assert n == 6
    assert (out["member:a"].version, out["member:a"].offset) == (3, 2)
    assert out["member:b"].deleted and out["member:b"].version == 5
    assert out["member:c"].version == 1
    chunk = SnapshotChunk.from_entries(out.values(), 0, n)
    assert list(zip(chunk.keys, chunk.versions, chunk.offsets)) == [("member:a", 3, 2), ("member:b", 5, 4), ("member:c", 1, 5)]
    assert chunk.values[1] is None and chunk.values[0] == v[3] and chunk.as_entries() == out
    sliced = chunk[1:]
    assert sliced.keys == ["member:b", "member:c"] and sliced.scanned == 0 and len(chunk[0:0]) == 0
    with_header = latest_per_key([Rec(b"member:d", v[1], snapshot_send("s", joined("d", 1, FEATS), codec)[3], 7)])[0]
    assert SnapshotChunk.from_entries(with_header.values(), 1).partial == [False]  # decided without decoding


@pytest.mark.parametrize("n,size,span", [(10, 3, 25), (0, 4, 7), (5, 10, 5), (1000, 64, 1000)])
def test_progress_shares_sum_to_the_range_span(n, size, span):
    out = list(batches_with_progress(list(range(n)), size, span))
    assert sum(s for _, s in out) == span
    assert [x for b, _ in out for x in b] == list(range(n))
    assert all(len(b) <= size for b, _ in out)


def test_counts_add():
    a = BackfillCounts(written=2, deduped=1)
    a.add(BackfillCounts(written=3, failed=1))
    assert (a.written, a.deduped, a.failed) == (5, 1, 1)


def test_remove_registry_line_keeps_comments_and_other_lines(tmp_path):
    a = make_package(tmp_path / "pk", "member_tiny", "v1", "member", seed=1)
    b = make_package(tmp_path / "pk", "member_tiny", "v2", "member", seed=2)
    reg = tmp_path / "registry.yaml"
    reg.write_text(f"# registered versions\n- {a}\n- {b}  # the new one\n")
    assert remove_registry_line(reg, "member_tiny@v2", ["member"]) == str(b)
    assert reg.read_text() == f"# registered versions\n- {a}\n"
    assert remove_registry_line(reg, "member_tiny@v9", ["member"]) is None


def test_unknown_versions_are_one_clear_error(tmp_path):
    a = make_package(tmp_path / "pk", "member_tiny", "v1", "member", seed=1)
    cfg = Config()
    cfg.models.registry = str(tmp_path / "registry.yaml")
    (tmp_path / "registry.yaml").write_text(f"- {a}\n")
    with pytest.raises(BackfillError, match="not registered .*member_tiny@v7.*registered: member_tiny@v1"):
        resolve_models(cfg, ["member_tiny@v7"], False)
    with pytest.raises(BackfillError, match="--models NAME@VERSION"):
        resolve_models(cfg, None, False)
    _, chosen = resolve_models(cfg, None, True)
    assert chosen == ["member_tiny@v1"]


def test_child_config_keeps_the_jobs_settings_and_endpoints(tmp_path):
    cfg = Config()
    cfg.topics.feature_snapshot = "snap-x"
    cfg.job.registry_poll_s = 0.5
    path = child_config_file(cfg, "broker:1", "redis://r:2/0", tmp_path)
    back = load_config(path, env={})
    assert back.topics.feature_snapshot == "snap-x" and back.job.registry_poll_s == 0.5
    assert (back.kafka.bootstrap, back.redis.url) == ("broker:1", "redis://r:2/0")


def test_backfill_pipeline_is_batch_on_the_jobs_runner():
    from nearline.beam_jobs.backfill_job import pipeline_options

    cfg = Config()
    opts = pipeline_options(cfg, ["--streaming", "--direct_num_workers=2"]).get_all_options()
    assert opts["runner"] == "FnApiRunner" and not opts["streaming"] and opts["direct_num_workers"] == 2
    assert pipeline_options(cfg, ["--runner=FlinkRunner"]).get_all_options()["runner"] == "FlinkRunner"


def test_librdkafka_gets_the_same_security_settings_as_kafka_python():
    from nearline.config import KafkaConfig
    from nearline.io.kafka_io import security_settings
    from nearline.offline.producer import rdkafka_security

    k = KafkaConfig()
    k.security_protocol, k.sasl_mechanism, k.sasl_username, k.sasl_password = "SASL_SSL", "SCRAM-SHA-512", "u", "p"
    k.ssl_cafile, k.ssl_check_hostname = "/ca.pem", False
    assert rdkafka_security(security_settings(k)) == {
        "security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "u",
        "sasl.password": "p", "ssl.ca.location": "/ca.pem", "ssl.endpoint.identification.algorithm": "none"}
    assert rdkafka_security(security_settings(KafkaConfig())) == {}
    with pytest.raises(BackfillError, match="no librdkafka equivalent"):
        rdkafka_security({"ssl_crlfile": "/x"})
