"""The Beam graphs, and only the wiring: each DoFn holds a stage from ``nearline.stream`` or ``nearline.offline``
and delegates to it, so the FnApiRunner, Prism, Flink or Dataflow run the same plain-Python logic.

    nearline_job     the streaming job: read partition groups -> join -> score -> publish -> commit
    kafka_source     the unbounded kafka-python source (one splittable DoFn per partition group)
    backfill_job     the backfill's batch graph: one DoFn per snapshot range
    runner_patches   version-pinned fixes of the local FnApiRunner, applied only when it is the runner

May import: ``nearline.core``, ``io``, ``registry``, ``inference``, ``stream``, ``offline``, ``config``.
"""
