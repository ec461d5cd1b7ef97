"""Version-pinned fixes for Python's FnApiRunner (Beam 2.77.0) when it runs an unbounded streaming job.

The FnApiRunner was built for finite pipelines. Running forever exposes one leak, fixed here:

* After every bundle, ``FnApiRunner.run_stages`` folds the bundle's monitoring infos into the running
  total with ``monitoring_infos.consolidate``, a *generator* over ``itertools.chain(new, previous)``.
  Nothing consumes it until the pipeline ends, so each bundle wraps the previous generator and keeps its
  protos alive: memory grows without bound (about 0.8 MiB/s at our bundle rate) and the final
  consolidation would recurse through the whole chain. The patch consolidates eagerly into a list, whose
  size is bounded by the number of distinct metrics.

(The job keeps no Beam state, so the state cache's sizing cost that an earlier patch worked around no
longer arises: see nearline/stream/group_state.py.)

Applied only to the exact Beam version it was written against; any other version logs a warning and runs
unpatched (re-check the runner before bumping the pin in pyproject.toml).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

PATCHED_FOR = "2.77.0"
_applied = False


def eager_consolidate(metrics):
    from apache_beam.metrics.monitoring_infos import consolidate

    return list(consolidate(metrics))


def apply() -> bool:
    global _applied
    import apache_beam
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    if _applied:
        return True
    if apache_beam.__version__ != PATCHED_FOR:
        log.warning("Beam %s is not %s: FnApiRunner streaming patches NOT applied (memory may grow)",
                    apache_beam.__version__, PATCHED_FOR)
        return False
    fn_runner.consolidate_monitoring_infos = eager_consolidate
    _applied = True
    return True
