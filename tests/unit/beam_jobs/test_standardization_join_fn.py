"""StandardizationJoinFn in a Beam pipeline fed by TestStream (DirectRunner): order, duplicates,
supersede, timeout and delete, with the join's clock injected through each batch's poll time."""

import pytest

pytest.importorskip("apache_beam")

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream

TestStream.__test__ = False  # not a pytest class
from apache_beam.testing.util import assert_that, equal_to
from kafka.partitioner.default import murmur2

from nearline.beam_jobs.nearline_job import KeyedStandardizationJoinFn, StandardizationJoinFn
from nearline.config import Config
from nearline.io.codec import Codec
from nearline.registry.packages import Registry
from nearline.stream.pipeline import KafkaRecord, RecordBatch
from tests.helpers import make_package

C = Codec()
T0 = 1_700_000_000.0


def cfg_with_models(tmp_path, timeout_s=30.0, policy="partial") -> Config:
    reg = Registry(tmp_path / "registry.yaml")
    feats = {"title": ("title", 24, 1, False), "skills": ("skills", 80, 8, True)}
    reg.register(make_package(tmp_path, "member_tiny", "v1", "member", features=feats))
    cfg = Config()
    cfg.models.registry = str(reg.path)
    cfg.join.timeout_s, cfg.join.timeout_policy = timeout_s, policy
    cfg.join.stall_gap_s = 0.0  # each batch below stands for many idle polls: no gap between them is a stall
    cfg.kafka.consumer_group = f"join-{tmp_path.name}"  # the join's state is per process and job
    return cfg


def numbered(batches):
    """The source numbers each group's batches in poll order."""
    for i, b in enumerate(batches):
        b.seq = i
    return batches


class Feed:
    def __init__(self):
        self.offsets = {}

    def rec(self, topic, value, key=b"junk"):
        # the job checks that a key is the payload's entity and hashes to the partition it came from
        part = (murmur2(key) & 0x7FFFFFFF) % Config().topics.partitions
        off = self.offsets.get((topic, part), 0)
        self.offsets[(topic, part)] = off + 1
        return KafkaRecord(topic, part, off, key, value)

    def upd(self, eid, v, op="UPSERT", etype="member"):
        return self.rec("entity-updates", C.encode("EntityUpdate", {
            "entity_type": etype, "entity_id": eid, "version": v, "op": op, "event_time": 0, "fields": {}}),
            f"{etype}:{eid}".encode())

    def feat(self, eid, v, proc, etype="member"):
        return self.rec(f"standardized.{proc}", C.encode("StandardizedFeatures", {
            "entity_type": etype, "entity_id": eid, "version": v, "processor": proc,
            "features": {proc: {"ids": [3], "weights": None}}, "produced_at": 0}), f"{etype}:{eid}".encode())


def summarize(wb):
    out = [("joined", j.key, j.version, j.partial) for j in wb.joined]
    out += [("deleted", d.key, d.version) for d in wb.deleted]
    out += [("dead_letter", d.stage) for d in wb.dead_letters]
    return out


JOIN_FNS = [StandardizationJoinFn, KeyedStandardizationJoinFn]  # process state / Beam keyed state


@pytest.fixture(params=JOIN_FNS, ids=["process_state", "keyed_state"])
def join_fn(request):
    return request.param


def check(cfg, batches, expected, order=None, join_fn=StandardizationJoinFn):
    batches = numbered(batches)
    stream = TestStream()
    for b in (batches if order is None else [batches[i] for i in order]):
        stream = stream.add_elements([(0, b)])
    opts = PipelineOptions()
    opts.view_as(StandardOptions).streaming = True
    with beam.Pipeline(runner="DirectRunner", options=opts) as p:
        out = p | stream.advance_watermark_to_infinity() | beam.ParDo(join_fn(cfg)) | beam.FlatMap(summarize)
        assert_that(out, equal_to(expected))


def test_order_duplicates_supersede_delete(tmp_path, join_fn):
    f = Feed()
    batches = [
        # m1: features before the update, a duplicate, then complete
        RecordBatch([f.feat("m1", 1, "skills"), f.feat("m1", 1, "skills"), f.upd("m1", 1)], T0),
        RecordBatch([f.feat("m1", 1, "title")], T0 + 1),
        # m2: v1 pending, v2 supersedes it; late v1 features are stale; v2 completes
        RecordBatch([f.upd("m2", 1), f.feat("m2", 1, "title"), f.upd("m2", 2)], T0 + 2),
        RecordBatch([f.feat("m2", 1, "skills"), f.feat("m2", 2, "title"), f.feat("m2", 2, "skills")], T0 + 3),
        # m3: delete supersedes a pending upsert
        RecordBatch([f.upd("m3", 1), f.upd("m3", 2, op="DELETE")], T0 + 4),
        # garbage and an unknown entity type are dead-lettered, the job goes on
        RecordBatch([f.rec("entity-updates", b"junk"), f.upd("c1", 1, etype="company")], T0 + 5),
    ]
    check(cfg_with_models(tmp_path), batches, [
        ("joined", "member:m1", 1, False), ("joined", "member:m2", 2, False), ("deleted", "member:m3", 2),
        ("dead_letter", "nearline.decode"), ("dead_letter", "nearline.validate")], join_fn=join_fn)


@pytest.mark.parametrize("policy,expected", [
    ("partial", [("joined", "member:m9", 1, True)]),
    ("dead_letter", [("dead_letter", "nearline.join")])])
def test_timeout_policy_driven_by_batch_time(tmp_path, policy, expected, join_fn):
    f = Feed()
    batches = [RecordBatch([f.upd("m9", 1), f.feat("m9", 1, "title")], T0),
               RecordBatch([], T0 + 10),   # an idle poll: not yet timed out
               RecordBatch([], T0 + 31)]   # past the 30 s timeout
    check(cfg_with_models(tmp_path, policy=policy), batches, expected, join_fn=join_fn)


def test_batches_delivered_out_of_order_are_joined_in_poll_order(tmp_path, join_fn):
    """Runners may reorder elements (Prism, Flink): the result must be the in-order one."""
    f = Feed()
    batches = [RecordBatch([f.feat("m1", 1, "skills"), f.upd("m1", 1)], T0),
               RecordBatch([f.feat("m1", 1, "title"), f.upd("m1", 2)], T0 + 1),
               RecordBatch([f.feat("m1", 2, "title"), f.feat("m1", 2, "skills")], T0 + 2)]
    check(cfg_with_models(tmp_path), batches, [("joined", "member:m1", 1, False), ("joined", "member:m1", 2, False)],
          order=[2, 0, 1], join_fn=join_fn)
