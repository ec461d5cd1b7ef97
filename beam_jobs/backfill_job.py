"""The offline backfill as a Beam batch pipeline. This file only wires transforms; the logic is in
nearline/backfill.py (scan, version-guarded score-and-write), unit-tested without Beam.

    Create(partition ranges of the snapshot topic)
      -> ReadSnapshotRange (newest entry per entity of one partition, in batches)
      -> BackfillBatch (Redis read -> score missing versions with ORT -> Redis CAS -> full state to Kafka)

No shuffle: every entity's records are in one partition of the snapshot topic, so the newest entry per
entity is found inside one range, and the graph stays fusible (a batch is written while the next is
read; a GroupByKey would materialize every entity's features at once). Ranges are independent, so
runners with several workers read and score partitions in parallel.
"""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from nearline.codec import codec_for

log = logging.getLogger(__name__)


class ReadSnapshotRange(beam.DoFn):
    def __init__(self, bootstrap: str, batch_size: int, kafka_cfg=None, codec=None):
        self.bootstrap, self.batch_size, self.kafka_cfg = bootstrap, batch_size, kafka_cfg
        self.codec = codec  # codec_for(cfg): pickled with its cached schema-registry ids

    def setup(self):
        from nearline import kafka_io
        from nearline.backfill import RangeReader
        from nearline.codec import Codec

        if self.kafka_cfg is not None:
            kafka_io.configure_security(self.kafka_cfg)  # this DoFn may run in another process

        self.reader = RangeReader(self.bootstrap)
        self.codec = self.codec or Codec()

    def teardown(self):
        if getattr(self, "reader", None):
            self.reader.close()

    def process(self, rng):
        from nearline.backfill import batches_with_progress, decode_rows

        entries, scanned = self.reader.scan(rng, self.codec)
        first = True
        ordered = sorted(entries.values(), key=lambda e: e.offset)
        for chunk, share in batches_with_progress(ordered, self.batch_size, rng.size):
            yield (decode_rows(chunk, rng.partition, self.codec), share, scanned if first else 0)
            first = False


class BackfillBatch(beam.DoFn):
    def __init__(self, cfg, bootstrap: str, redis_url: str, chosen: list[str], progress_key: str,
                 dry_run: bool, rescore: bool):
        self.cfg, self.bootstrap, self.redis_url = cfg, bootstrap, redis_url
        self.chosen, self.progress_key, self.dry_run, self.rescore = chosen, progress_key, dry_run, rescore

    def setup(self):
        from nearline import kafka_io
        from nearline.backfill import BackfillStage, BatchProducer, RunProgress
        from nearline.registry import Registry
        from nearline.scoring import ModelSet, RegistryWatcher
        from nearline.store import RedisEmbeddingStore

        cfg = self.cfg
        kafka_io.configure_security(cfg.kafka)  # this DoFn may run in another process
        models = ModelSet(RegistryWatcher(Registry(cfg.path(cfg.models.registry)), cfg.entity_types), cfg.job.ort_threads)
        store = RedisEmbeddingStore(self.redis_url, cfg.redis.key_prefix)
        self.producer = BatchProducer(self.bootstrap)
        self.stage = BackfillStage(cfg, store, self.producer, models, set(self.chosen), rescore=self.rescore,
                                   dry_run=self.dry_run)
        self.progress = RunProgress(store.r, self.progress_key)

    def teardown(self):
        if getattr(self, "producer", None):
            self.producer.close(timeout=10)

    def process(self, element):
        rows, share, scanned = element
        counts = self.stage.run(rows)
        counts.progress, counts.scanned = share, scanned
        self.progress.add(counts)
        return []


def build(p: beam.Pipeline, cfg, bootstrap: str, redis_url: str, ranges, chosen: list[str], progress_key: str, *,
          dry_run: bool = False, rescore: bool = False, batch_size: int = 1024) -> None:
    (p
     | "SnapshotRanges" >> beam.Create(ranges)
     | "ReadSnapshotRange" >> beam.ParDo(ReadSnapshotRange(bootstrap, batch_size, cfg.kafka, codec_for(cfg)))
     | "BackfillBatch" >> beam.ParDo(BackfillBatch(cfg, bootstrap, redis_url, chosen, progress_key, dry_run, rescore)))


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
