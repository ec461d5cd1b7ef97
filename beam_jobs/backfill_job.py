"""The offline backfill as a Beam batch pipeline. This file only wires transforms; the logic is in
nearline/offline/stage.py (scan, version-guarded score-and-write), unit-tested without Beam.

    Create(partition ranges of the snapshot topic)
      -> BackfillRange (nearline.backfill.run_range: newest entry per entity of one range -> batches:
         Redis read -> score missing versions with ORT -> Redis CAS -> full state to Kafka; counters to
         the run's progress hash)

One DoFn per range, no PCollection of entities: every entity's records are in one partition of the
snapshot topic, so the newest entry per entity is found inside one range and nothing needs a shuffle.
An earlier graph passed each batch of decoded rows from a read DoFn to a write DoFn: the runner
sized (encoded) those elements for its metrics and doubled the backfill's time. Ranges are
independent, so runners with several workers read and score partitions in parallel.
"""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from nearline.io.codec import codec_for

log = logging.getLogger(__name__)


class BackfillRange(beam.DoFn):
    def __init__(self, cfg, bootstrap: str, redis_url: str, chosen: list[str], progress_key: str,
                 dry_run: bool, rescore: bool, batch_size: int, codec=None, resume: bool = False):
        self.cfg, self.bootstrap, self.redis_url = cfg, bootstrap, redis_url
        self.chosen, self.progress_key, self.dry_run, self.rescore = chosen, progress_key, dry_run, rescore
        self.batch_size = batch_size
        self.codec = codec  # codec_for(cfg): pickled with its cached schema-registry ids
        self.resume = resume  # record how far each partition is done (nearline.offline.progress.ResumePoints)

    def setup(self):
        from nearline.inference.scoring import ModelSet, RegistryWatcher
        from nearline.io import kafka_io
        from nearline.io.store import RedisEmbeddingStore
        from nearline.offline.producer import BatchProducer
        from nearline.offline.progress import ResumePoints, RunProgress
        from nearline.offline.scan import RangeReader
        from nearline.offline.stage import BackfillStage
        from nearline.registry.packages import Registry

        cfg = self.cfg
        kafka_io.configure_security(cfg.kafka)  # this DoFn may run in another process
        self.codec = self.codec or codec_for(cfg)
        self.reader = RangeReader(self.bootstrap)
        models = ModelSet(RegistryWatcher(Registry(cfg.path(cfg.models.registry)), cfg.entity_types), cfg.job.ort_threads)
        store = RedisEmbeddingStore(self.redis_url, cfg.redis.key_prefix)
        self.producer = BatchProducer(self.bootstrap)
        self.stage = BackfillStage(cfg, store, self.producer, models, set(self.chosen), rescore=self.rescore,
                                   dry_run=self.dry_run, codec=self.codec)
        self.progress = RunProgress(store.r, self.progress_key)
        self.resume_points = ResumePoints(store.r, cfg.redis.key_prefix, self.chosen) if self.resume else None

    def teardown(self):
        if getattr(self, "reader", None):
            self.reader.close()
        if getattr(self, "producer", None):
            self.producer.close(timeout=10)

    def process(self, rng):
        from nearline.offline.stage import run_range

        run_range(self.reader, self.stage, self.progress, rng, self.batch_size, self.codec, self.resume_points)
        return []


def build(p: beam.Pipeline, cfg, bootstrap: str, redis_url: str, ranges, chosen: list[str], progress_key: str, *,
          dry_run: bool = False, rescore: bool = False, batch_size: int = 1024) -> None:
    (p
     | "SnapshotRanges" >> beam.Create(ranges)
     | "BackfillRange" >> beam.ParDo(BackfillRange(cfg, bootstrap, redis_url, chosen, progress_key, dry_run, rescore,
                                                   batch_size, codec_for(cfg), resume=not dry_run)))


def pipeline_options(cfg, beam_args: list[str] | None = None) -> PipelineOptions:
    args = [a for a in (beam_args or []) if a != "--streaming"]  # a bounded read: batch mode
    if not any(a.startswith("--runner") for a in args):
        args.append(f"--runner={cfg.job.runner}")
    return PipelineOptions(args)


def run(cfg, bootstrap: str, redis_url: str, ranges, chosen: list[str], progress_key: str, *, dry_run: bool = False,
        rescore: bool = False, batch_size: int = 1024, beam_args: list[str] | None = None) -> None:
    with beam.Pipeline(options=pipeline_options(cfg, beam_args)) as p:
        build(p, cfg, bootstrap, redis_url, ranges, chosen, progress_key, dry_run=dry_run, rescore=rescore,
              batch_size=batch_size)
