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
