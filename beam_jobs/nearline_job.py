"""The nearline embedding job as a Beam streaming pipeline. This file only wires transforms; the logic is
in nearline/stream/pipeline.py (join, score, dedupe + publish, commit), unit-tested without Beam.

    Create(partition groups) -> ReadPartitionGroups (unbounded, kafka-python)
      -> StandardizationJoinFn (stateful per group) -> ScoreEmbeddingsFn (every registered tower, ORT)
      -> PublishEmbeddingsFn (dedupe vs Redis, Kafka, Redis) -> CommitOffsetsFn

No GroupByKey/Reshuffle/Combine downstream of the unbounded source: on the FnApiRunner in streaming mode
they never emit. The graph stays fusible, so one poll's batch flows through every stage before the
next poll, and offsets are committed only after the batch's effects are written.
"""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from nearline.beam_jobs.kafka_source import ReadPartitionGroups
from nearline.config import Config

log = logging.getLogger(__name__)


def _registry(cfg: Config):
    from nearline.inference.scoring import RegistryWatcher
    from nearline.registry.packages import Registry

    return RegistryWatcher(Registry(cfg.path(cfg.models.registry)), cfg.entity_types, cfg.job.registry_poll_s)


class StandardizationJoinFn(beam.DoFn):
    """(group, RecordBatch) -> WorkBatch per batch, in poll order. The join's state is the process's, one lock
    per group (nearline.stream.group_state: why not Beam state)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def setup(self):
        from nearline.stream.group_state import group_states
        from nearline.stream.pipeline import JoinStage

        self.stage = JoinStage(self.cfg)
        self.watcher = _registry(self.cfg)
        self.watcher.poll(force=True)
        self.groups = group_states(self.cfg.kafka.consumer_group)
        log.info("join setup: waiting for %s", {t: sorted(p) for t, p in self.watcher.required().items()})

    def process(self, element):
        group, batch = element
        self.watcher.poll()
        required = self.watcher.required()
        with self.groups.lock(group):
            st = self.groups.get(group, lambda: self.stage.new_state(required))
            st, out = self.stage.run_in_order(st, group, batch, required)
            self.groups.replace(group, st)
        yield from out


class KeyedStandardizationJoinFn(StandardizationJoinFn):
    """The same join with its state in Beam's keyed state, for runners whose workers do not share the
    group's reader process: with ``job.io: beam-kafkaio`` on Flink or Dataflow, KafkaIO (Java) hands a
    partition's records to whichever Python worker the runner picks, and only the runner's keyed state
    (serialized per key, checkpointed) follows the group. Batches still go through the sequencer."""

    STATE = ReadModifyWriteStateSpec("partition_group", PickleCoder())

    def process(self, element, state=beam.DoFn.StateParam(STATE)):
        group, batch = element
        self.watcher.poll()
        required = self.watcher.required()
        st, out = self.stage.run_in_order(state.read() or self.stage.new_state(required), group, batch, required)
        state.write(st)
        yield from out


class ScoreEmbeddingsFn(beam.DoFn):
    def __init__(self, cfg: Config, bootstrap: str | None = None, redis_url: str | None = None):
        self.cfg, self.bootstrap, self.redis_url = cfg, bootstrap, redis_url

    def setup(self):
        from nearline.inference.scoring import ModelSet
        from nearline.stream.pipeline import ScoreStage

        self.stage = ScoreStage(ModelSet(_registry(self.cfg), self.cfg.job.ort_threads))
        self.backfills = None  # a newly registered version is backfilled (nearline/offline/launcher.py)
        if self.cfg.job.backfill_on_register and self.redis_url:
            from nearline.offline.launcher import BackfillLauncher

            self.backfills = BackfillLauncher(self.cfg, self.bootstrap, self.redis_url)
            self.backfills.resume(set(self.stage.models.models))

    def process(self, wb):
        before = set(self.stage.models.models)
        out = self.stage.run(wb)
        if self.backfills is not None:
            self.backfills.after_batch(before, set(self.stage.models.models))
        yield out


class PublishEmbeddingsFn(beam.DoFn):
    def __init__(self, cfg: Config, bootstrap: str, redis_url: str):
        self.cfg, self.bootstrap, self.redis_url = cfg, bootstrap, redis_url

    def setup(self):
        from nearline.io import kafka_io
        from nearline.io.snapshot import ensure_snapshot_topic
        from nearline.io.store import RedisEmbeddingStore
        from nearline.stream.pipeline import PublishStage

        kafka_io.configure_security(self.cfg.kafka)  # this DoFn may run in another process (Flink workers)
        ensure_snapshot_topic(self.bootstrap, self.cfg)  # log-compacted; auto-creation would not compact it
        from nearline.io.embedding_messages import ensure_embedding_topic

        ensure_embedding_topic(self.bootstrap, self.cfg)  # log-compacted too (full state + null tombstones)
        self.producer = kafka_io.make_producer(self.bootstrap, self.cfg.kafka.producer_linger_ms)
        self.stage = PublishStage(self.cfg, RedisEmbeddingStore(self.redis_url, self.cfg.redis.key_prefix), self.producer)

    def teardown(self):
        if getattr(self, "producer", None):
            self.producer.close(timeout=10)

    def process(self, wb):
        yield self.stage.run(wb)


class CommitOffsetsFn(beam.DoFn):
    def __init__(self, cfg: Config, bootstrap: str):
        self.cfg, self.bootstrap = cfg, bootstrap

    def setup(self):
        from nearline.io import kafka_io
        from nearline.stream.pipeline import CommitStage

        kafka_io.configure_security(self.cfg.kafka)
        self.consumer = kafka_io.make_consumer(self.bootstrap, self.cfg.kafka.consumer_group)
        self.stage = CommitStage(self.consumer)

    def teardown(self):
        if getattr(self, "consumer", None):
            self.consumer.close(autocommit=False)

    def process(self, wb):
        self.stage.run(wb)
        return []


def build(p: beam.Pipeline, cfg: Config, bootstrap: str, redis_url: str) -> None:
    from nearline.io import kafka_io

    topics = cfg.input_topics()
    if cfg.job.io == "beam-kafkaio":
        records = _read_with_kafkaio(p, cfg, bootstrap, topics)
    else:
        groups, membership = partition_groups(cfg)
        records = (p
                   | "PartitionGroups" >> beam.Create(groups)
                   | "ReadKafka" >> beam.ParDo(ReadPartitionGroups(
                       bootstrap, topics, cfg.kafka.consumer_group, redis_url, cfg.redis.key_prefix,
                       cfg.job.max_poll_records, cfg.job.poll_timeout_ms, groups=len(groups),
                       drain_budget_ms=cfg.job.drain_budget_ms, security=kafka_io.security_settings(cfg.kafka),
                       membership=membership, idle_poll_timeout_ms=cfg.job.idle_poll_timeout_ms,
                       update_topics=cfg.update_topics())))
    batches = (records
               | "StandardizationJoin" >> beam.ParDo((KeyedStandardizationJoinFn if cfg.job.io == "beam-kafkaio"
                                                      else StandardizationJoinFn)(cfg))
               | "ScoreEmbeddings" >> beam.ParDo(ScoreEmbeddingsFn(cfg, bootstrap, redis_url))
               | "PublishEmbeddings" >> beam.ParDo(PublishEmbeddingsFn(cfg, bootstrap, redis_url)))
    if cfg.job.io == "kafka-python":
        batches | "CommitOffsets" >> beam.ParDo(CommitOffsetsFn(cfg, bootstrap))


def partition_groups(cfg: Config) -> tuple[list[int], dict | None]:
    """(the partition groups this instance reads, the owners group of job.assignment 'group' or None)."""
    from nearline.stream.assignment import static_groups

    if cfg.job.assignment == "group":
        # every group gets a reader; each reads only while Kafka's group protocol assigns it here
        return list(range(cfg.topics.partitions)), {"group": f"{cfg.kafka.consumer_group}.owners",
                                                    "topic": cfg.topics.entity_updates}
    return static_groups(cfg.topics.partitions, cfg.job.instance, cfg.job.instances), None


def _read_with_kafkaio(p, cfg: Config, bootstrap: str, topics: list[str]):
    """For Flink/Dataflow: Beam's cross-language ReadFromKafka (needs Java and a job server; NOT runnable
    offline, so not exercised by the tests here). Offsets are committed by KafkaIO when a checkpoint
    finalizes; records are keyed by partition so the same stateful join applies per partition group."""
    import time

    from apache_beam.io.kafka import ReadFromKafka

    from nearline.stream.pipeline import KafkaRecord, RecordBatch

    return (p
            | "ReadFromKafka" >> ReadFromKafka(
                consumer_config={"bootstrap.servers": bootstrap, "group.id": cfg.kafka.consumer_group,
                                 "auto.offset.reset": "earliest"},
                topics=topics, with_metadata=True, commit_offset_in_finalize=True)
            | "ToRecords" >> beam.Map(lambda r: (r.partition, RecordBatch(
                [KafkaRecord(r.topic, r.partition, r.offset, r.key, r.value)], time.time()))))


def pipeline_options(cfg: Config, beam_args: list[str] | None = None) -> PipelineOptions:
    args = list(beam_args or [])
    if not any(a.startswith("--runner") for a in args):
        args.append(f"--runner={cfg.job.runner}")
    if "--streaming" not in args:
        args.append("--streaming")
    return PipelineOptions(args)


def run(cfg: Config, bootstrap: str, redis_url: str, beam_args: list[str] | None = None,
        runner: str | None = None) -> None:
    """Blocks until STOP is set (SIGINT/SIGTERM in `nearline run`) or the pipeline fails. ``runner``: the
    effective Beam runner class name when ``beam_args`` already chose it (nearline.launch.runners)."""
    if (runner or cfg.job.runner) == "FnApiRunner":
        from nearline.beam_jobs import runner_patches

        runner_patches.apply()
    # A long-running process with many long-lived objects (models, caches, pending joins): full cyclic-GC
    # passes over all of them showed up as ~10% of the job's CPU in allocation-heavy frames. Freeze what
    # exists after start-up and collect young objects less often.
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    with beam.Pipeline(options=pipeline_options(cfg, beam_args)) as p:
        build(p, cfg, bootstrap, redis_url)
