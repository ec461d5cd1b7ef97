import itertools

import apache_beam
from apache_beam.metrics import monitoring_infos
from apache_beam.runners.portability.fn_api_runner import fn_runner

from nearline.beam_jobs import runner_patches


def _counter(n):
    return monitoring_infos.int64_user_counter("ns", "events", n, ptransform="step")


def test_patch_keeps_a_flat_bounded_list_of_metrics():
    assert apache_beam.__version__ == runner_patches.PATCHED_FOR  # the pin and the patch move together
    assert runner_patches.apply()
    assert fn_runner.consolidate_monitoring_infos is runner_patches.eager_consolidate
    total = []
    for i in range(2000):  # what run_stages does after each bundle
        total = fn_runner.consolidate_monitoring_infos(itertools.chain([_counter(1)], total))
    assert isinstance(total, list) and len(total) == 1  # no generator chain, one merged counter
    assert monitoring_infos.extract_counter_value(total[0]) == 2000


def test_state_cache_sizes_holders_shallowly_and_the_rest_as_before():
    from apache_beam.runners.worker import statecache

    from nearline.beam_jobs.nearline_job import GroupStateHolder

    assert runner_patches.apply()
    sizer = statecache.get_deep_size
    assert hasattr(sizer, "original")
    big = {i: str(i) for i in range(20000)}
    held = [GroupStateHolder(big)]
    assert sizer(held) < 1000                         # not walked: the holder declares no referents
    assert sizer([big]) == sizer.original([big]) > 500_000  # anything else: measured as before
