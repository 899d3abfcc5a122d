"""Workers, and the scheduler, that die under a DaskExecutor: real processes, killed by PID.

Each test that kills something runs on a cluster of its own
(:class:`tests.dask_cluster.DaskCluster`).
"""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest

from mepa import BrokenExecutor, WorkerCrashedError, WorkerSpecError

from .dask_cluster import DaskCluster

distributed = pytest.importorskip("distributed")

from mepa._executors._dask import DaskExecutor  # noqa: E402

pytestmark = [pytest.mark.dask, pytest.mark.timeout(180)]


def exit_with(code):
    sys.exit(code)


def sleep_then(x, seconds):
    time.sleep(seconds)
    return x


def started_then_sleep(ctx, seconds):
    ctx.fire("started")
    time.sleep(seconds)
    return "ran"


def pid_and_negate(chunk, seconds):
    time.sleep(seconds)
    return os.getpid(), -chunk


# ---------------------------------------------------------------------------- on the shared cluster


def test_sys_exit_in_a_task_is_its_systemexit(cluster):
    with DaskExecutor(cluster.address) as ex:
        future = ex.submit(exit_with, 3)
        with pytest.raises(SystemExit) as info:
            future.result(timeout=60)
        assert info.value.code == 3
        # the workers are alive and well
        assert ex.submit_and_gather(sleep_then, 7, 0) == 7
        assert len(ex.client.scheduler_info(n_workers=-1)["workers"]) == 2


def test_cancel_of_a_running_task_returns_false_and_it_runs_on(cluster):
    with DaskExecutor(cluster.address) as ex:
        started = threading.Event()
        ctx = ex.register(lambda _: started.set())
        running = ex.submit_to(ex.workers[0], started_then_sleep, ctx, 2.0)
        assert started.wait(60)
        assert running.cancel() is False
        assert not running.cancelled()
        assert running.result(timeout=60) == "ran"
        ex.off(ctx)


def test_cancel_of_a_waiting_task_returns_true(cluster):
    with DaskExecutor(cluster.address) as ex:
        blockers = [ex.submit_to(w, sleep_then, i, 2.0) for i, w in enumerate(ex.workers)]
        waiting = [ex.submit(sleep_then, "x", 0) for _ in range(6)]
        # at most a few are handed to the (busy) workers ahead of time; the last one waits
        assert waiting[-1].cancel() is True
        assert waiting[-1].cancelled()
        assert ex.gather(blockers, timeout=60) == [0, 1]


# ---------------------------------------------------------------------------- a cluster each


def test_scattered_chunk_whose_worker_dies_is_sent_again():
    with DaskCluster(n_workers=2) as cluster, DaskExecutor(cluster.address) as ex:
        data = np.arange(2 * 300_000, dtype=np.float64)  # 2.4 MB chunks: scattered
        alloc = ex.arrange(data)
        futures = ex.distribute(pid_and_negate, alloc, 2.0)
        victim = cluster.workers[0]
        time.sleep(0.5)
        cluster.stop_worker(victim, kill=True)
        results = ex.gather(futures, timeout=120)
        np.testing.assert_array_equal(alloc.reassemble([r[1] for r in results]), -data)
        assert victim.pid not in [r[0] for r in results]
        # usable at once, without refresh_workers(): the next arrange has one worker
        alloc = ex.arrange(data)
        assert len(alloc) == 1
        out = alloc.reassemble([r[1] for r in ex.distribute_and_gather(pid_and_negate, alloc, 0)])
        np.testing.assert_array_equal(out, -data)


def test_an_allocation_for_a_worker_that_left_still_runs():
    with DaskCluster(n_workers=2) as cluster, DaskExecutor(cluster.address) as ex:
        data = np.arange(2 * 300_000, dtype=np.float64)
        alloc = ex.arrange(data)
        cluster.stop_worker(cluster.workers[1], kill=True)  # before distribute: no KeyError
        results = ex.distribute_and_gather(pid_and_negate, alloc, 0)
        np.testing.assert_array_equal(alloc.reassemble([r[1] for r in results]), -data)


def test_last_worker_gone_fails_pending_tasks_after_no_worker_timeout():
    with DaskCluster(n_workers=1) as cluster, DaskExecutor(
        cluster.address, no_worker_timeout=2.0
    ) as ex:
        future = ex.submit(sleep_then, 1, 30.0)
        time.sleep(0.5)
        cluster.stop_worker(cluster.workers[0], kill=True)
        with pytest.raises(BrokenExecutor, match="no Dask worker left") as info:
            future.result(timeout=60)
        assert "no_worker_timeout" in str(info.value)


def test_scheduler_death_is_reported_at_once():
    cluster = DaskCluster(n_workers=1)
    try:
        ex = DaskExecutor(cluster.address)
        future = ex.submit(sleep_then, 1, 60.0)
        time.sleep(0.5)
        cluster._scheduler.kill()
        with pytest.raises(BrokenExecutor, match="lost the connection to the Dask scheduler"):
            future.result(timeout=30)
        ex.shutdown(wait=False)
    finally:
        cluster.close()


def test_bad_no_worker_timeout(cluster):
    with pytest.raises(ValueError, match="no_worker_timeout must be a number of seconds > 0"):
        DaskExecutor(cluster.address, no_worker_timeout=0)


def test_new_workers_get_work_at_the_next_arrange():
    with DaskCluster(n_workers=1) as cluster, DaskExecutor(cluster.address) as ex:
        assert len(ex.arrange(np.arange(10))) == 1
        late = cluster.add_worker()
        deadline = time.monotonic() + 30
        alloc = ex.arrange(np.arange(10))
        while len(alloc) < 2 and time.monotonic() < deadline:  # the event is asynchronous
            time.sleep(0.1)
            alloc = ex.arrange(np.arange(10))
        assert len(alloc) == 2
        placed = ex.distribute_and_gather(pid_and_negate, alloc, 0)
        assert late.pid in [pid for pid, _ in placed]


def test_strict_pinning_runs_on_the_worker_or_fails_typed():
    with DaskCluster(n_workers=2) as cluster, DaskExecutor(
        cluster.address, strict_pinning=True
    ) as ex:
        target = ex.workers[0]
        # the other worker is idle, yet queued tasks never leave their worker
        futures = [ex.submit_to(target, pid_and_negate, np.zeros(1), 0.3) for _ in range(4)]
        pids = {pid for pid, _ in ex.gather(futures, timeout=120)}
        (proc,) = [w for w in cluster.workers if w.address == ex.worker_address(target)]
        assert pids == {proc.pid}
        pinned = ex.submit_to(target, sleep_then, 1, 30.0)
        time.sleep(0.5)
        cluster.stop_worker(proc, kill=True)
        with pytest.raises(WorkerCrashedError, match="strict_pinning=True") as info:
            pinned.result(timeout=60)
        assert proc.address in str(info.value)


def test_a_worker_without_mepa_is_reported_at_start(tmp_path):
    shadow = tmp_path / "shadow"
    (shadow / "mepa").mkdir(parents=True)
    (shadow / "mepa" / "__init__.py").write_text("raise ImportError('no mepa on this worker')\n")
    with DaskCluster(n_workers=1) as cluster:
        bad = cluster.add_worker(env={"PYTHONPATH": str(shadow)})
        with pytest.raises(WorkerSpecError, match="1 of 2 Dask workers cannot import mepa") as info:
            DaskExecutor(cluster.address)
        assert bad.address in str(info.value)
        assert "no mepa on this worker" in str(info.value)
