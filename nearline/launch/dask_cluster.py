"""The backfill on Dask: Beam's DaskRunner over a dask.distributed cluster, local or remote.

    nearline backfill --all --runner dask                    # a LocalCluster, one worker process per core
    nearline backfill --all --runner dask --workers 4
    nearline backfill --all --runner dask --dask-scheduler tcp://scheduler:8786   # an existing cluster

Why Dask: it installs from PyPI, runs Beam batch pipelines through Beam's own DaskRunner, and the same
cluster scales from one machine (LocalCluster) to many (dask-kubernetes, dask-jobqueue). The backfill graph
(beam_jobs/backfill_job.py) is one DoFn per snapshot range, so ranges are scored by different worker
processes in parallel; each worker opens its own Redis, Kafka and onnxruntime sessions in setup().
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

log = logging.getLogger(__name__)


class DaskUnavailable(RuntimeError):
    """dask.distributed is missing or the scheduler does not answer; the message says what to do."""


@contextmanager
def dask_beam_args(workers: int | None = None, scheduler: str | None = None):
    """Beam arguments that run a pipeline on Dask: on ``scheduler`` (an address) if given, else on a
    LocalCluster of ``workers`` processes (default: every core) started here and closed on exit."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise DaskUnavailable(f"--runner dask needs dask.distributed: pip install 'dask[distributed]' ({exc})") from None
    if scheduler:
        try:
            Client(scheduler, timeout=10).close()
        except Exception as exc:  # OSError / TimeoutError from the comm layer
            raise DaskUnavailable(f"Dask scheduler {scheduler} does not answer ({exc})") from None
        yield ["--runner=apache_beam.runners.dask.dask_runner.DaskRunner", f"--dask_client_address={scheduler}"]
        return
    n = workers or os.cpu_count() or 1
    # one thread per worker: onnxruntime and the Python stages each want a core, and processes avoid the GIL
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
    log.info("backfill on a local Dask cluster of %d worker processes (%s)", n, cluster.scheduler_address)
    try:
        yield ["--runner=apache_beam.runners.dask.dask_runner.DaskRunner", f"--dask_client_address={cluster.scheduler_address}"]
    finally:
        cluster.close()
