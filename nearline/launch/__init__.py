"""Starting Beam pipelines: the backfill driver (plan ranges, leases, passes until convergence,
progress bar, summary) over beam_jobs/backfill_job.py.

May import: everything below it (core, io, registry, inference, offline) and ``nearline.beam_jobs``. Only the
CLI imports it.
"""
