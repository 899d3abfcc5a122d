"""DaskExecutor on cluster objects: LocalCluster, SpecCluster, adaptive clusters, job queues."""

from __future__ import annotations

import numpy as np
import pytest

from mepa import WorkerSpecError

distributed = pytest.importorskip("distributed")

from mepa._executors._dask import DaskExecutor  # noqa: E402

pytestmark = [pytest.mark.dask, pytest.mark.timeout(180)]


IN_PROCESS = {
    "threads_per_worker": 1, "processes": False, "host": "127.0.0.1", "protocol": "tcp://",
    "dashboard_address": "127.0.0.1:0", "scheduler_kwargs": {"dashboard": False},
}


def test_a_cluster_object_is_accepted_and_left_running():
    with distributed.LocalCluster(
        n_workers=1, **IN_PROCESS) as cluster:
        with DaskExecutor(cluster) as ex:
            assert ex.submit_and_gather(pow, 2, 5) == 32
            assert len(ex.workers) == 1
        assert cluster.status.name == "running"
        with pytest.raises(TypeError, match="size or scale the cluster object itself"):
            DaskExecutor(cluster, n_workers=2)


def test_adaptive_cluster_with_minimum_zero_starts_and_scales_up():
    with distributed.LocalCluster(
        n_workers=0, **IN_PROCESS) as cluster:
        cluster.adapt(minimum=0, maximum=1, interval="200ms", wait_count=1)
        with DaskExecutor(cluster, wait_for_workers=0, timeout=60) as ex:
            assert [w.name for w in ex.workers] == ["dask-any"]
            assert ex.submit_and_gather(pow, 3, 2) == 9  # the cluster scaled up for it
            alloc = ex.arrange(np.arange(6))  # now on the real worker
            assert [w.name for w in ex.workers] != ["dask-any"]
            np.testing.assert_array_equal(
                alloc.reassemble(ex.distribute_and_gather(np.negative, alloc)), -np.arange(6)
            )


def test_wait_for_workers_times_out_with_a_message():
    with distributed.LocalCluster(
        n_workers=1, **IN_PROCESS) as cluster:
        with pytest.raises(TimeoutError, match=r"for 3 Dask workers \(wait_for_workers\), 1 "):
            DaskExecutor(cluster, wait_for_workers=3, timeout=1)
        with pytest.raises(WorkerSpecError, match="wait_for_workers must be an int >= 0"):
            DaskExecutor(cluster, wait_for_workers=-1)


def test_slurm_cluster_object_is_accepted_as_a_cluster():
    jobqueue = pytest.importorskip("dask_jobqueue")
    from mepa._executors._dask import _is_cluster

    try:
        cluster = jobqueue.SLURMCluster(
            cores=1, memory="1GB", processes=1,
            scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
        )
    except Exception as exc:  # noqa: BLE001 - construction needs no queue; report if it does
        pytest.skip(f"SLURMCluster cannot be built here: {exc}")
    try:
        assert _is_cluster(cluster)
        # no queue here: nothing joins, and wait_for_workers=0 starts anyway
        with DaskExecutor(cluster, wait_for_workers=0, timeout=30) as ex:
            assert [w.name for w in ex.workers] == ["dask-any"]
    finally:
        cluster.close()
