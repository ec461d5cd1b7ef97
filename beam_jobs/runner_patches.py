"""Version-pinned fixes for Python's FnApiRunner (Beam 2.77.0) when it runs an unbounded streaming job.

The FnApiRunner was built for finite pipelines. Running forever exposes one leak, fixed here:

* After every bundle, ``FnApiRunner.run_stages`` folds the bundle's monitoring infos into the running
  total with ``monitoring_infos.consolidate``, a *generator* over ``itertools.chain(new, previous)``.
  Nothing consumes it until the pipeline ends, so each bundle wraps the previous generator and keeps its
  protos alive: memory grows without bound (about 0.8 MiB/s at our bundle rate) and the final
  consolidation would recurse through the whole chain. The patch consolidates eagerly into a list, whose
  size is bounded by the number of distinct metrics.

A second one is a cost, not a leak: ``StateCache.put`` sizes every cached state value with
``objsize.get_deep_size``, which rebuilds an exclude set over all loaded modules' globals on every call
(about 3 ms, 9% of the job's CPU at 300 updates/s, even for our state holder that declares no
referents). The patch sizes values made only of ``CacheAware`` objects that declare no referents
shallowly, and leaves every other value to the original function.

Applied only to the exact Beam version it was written against; any other version logs a warning and runs
unpatched (re-check the runner before bumping the pin in pyproject.toml).
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)

PATCHED_FOR = "2.77.0"
_applied = False


def eager_consolidate(metrics):
    from apache_beam.metrics.monitoring_infos import consolidate

    return list(consolidate(metrics))


def make_shallow_sizer(original):
    from apache_beam.runners.worker.statecache import CacheAware

    def get_deep_size(*objs):
        items = []
        for o in objs:
            items.extend(o if isinstance(o, (list, tuple)) else [o])
        if items and all(isinstance(i, CacheAware) and not i.get_referents_for_cache() for i in items):
            return sum(sys.getsizeof(i) for i in items) + sum(sys.getsizeof(o) for o in objs)
        return original(*objs)

    get_deep_size.original = original
    return get_deep_size


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
    from apache_beam.runners.worker import statecache

    statecache.get_deep_size = make_shallow_sizer(statecache.get_deep_size)
    _applied = True
    return True
