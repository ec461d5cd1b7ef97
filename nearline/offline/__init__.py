"""The offline path beside the stream (backfills, rebuilds, retiring a version), as plain Python:

    scan              plan partition ranges of the feature snapshot, read a range (librdkafka)
    snapshot_columns  decode a batch of snapshot records at once into feature columns
    stage             BackfillStage: which versions each entity lacks, score, dedupe, guarded Redis write,
                      full state to the embedding topic; run_range runs one range
    producer          the backfill's acknowledged batch producer (librdkafka)
    progress          a run's counters, its outbox, the Redis keys of requested and finished backfills
    lease             one backfill of a model version at a time
    launcher          the running job's launcher of automatic backfills (a `nearline backfill` child)
    retire            retiring a registered version (registry line, Redis fields, topic message)

beam_jobs/backfill_job.py wires the stages into a Beam batch pipeline; nearline.launch starts it.
May import: ``nearline.core``, ``nearline.io``, ``nearline.registry``, ``nearline.inference``,
``nearline.stream`` (the dedupe rule is the job's).
"""
