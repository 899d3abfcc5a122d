"""What only the Dask executor does, against real schedulers and workers.

The clusters come from :mod:`tests.dask_cluster`: subprocesses on 127.0.0.1, each in a directory
of its own, so the functions of this module reach the workers only by code shipping.
"""

from __future__ import annotations

import importlib
import io
import operator
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from mepa import SerializationError, WorkerCrashedError, WorkerSpecError

from .dask_cluster import DaskCluster

distributed = pytest.importorskip("distributed")

from mepa._dask_shipping import LocalModules  # noqa: E402
from mepa._executors._dask import DaskExecutor, RemoteTraceback  # noqa: E402

pytestmark = [pytest.mark.dask, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def executor(cluster):
    with DaskExecutor(cluster.address) as ex:
        yield ex


class Point:
    def __init__(self, x):
        self.x = x


class TaskFailed(Exception):
    pass


def make_point(x):
    return Point(x)


def raise_custom(message):
    raise TaskFailed(message)


def where_am_i(_=None):
    return distributed.get_worker().address


def chunk_where(chunk):
    return distributed.get_worker().address, len(chunk)


def fire_many(ctx, tag, n):
    for i in range(n):
        ctx.fire(tag, i)
    return n


def count_through(progress, chunk):
    return np.asarray([x + 1 for x in progress.iters(chunk)])


def tell_pid_then_sleep(ctx, seconds):
    ctx.fire(os.getpid())
    time.sleep(seconds)
    return os.getpid()


def kill_own_worker_on_first_chunk(chunk):
    if chunk[0] == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return chunk


def slow(x, delay):
    time.sleep(delay)
    return x


# ---------------------------------------------------------------------------- construction


def test_import_mepa_does_not_import_distributed():
    code = "import sys, mepa; assert 'distributed' not in sys.modules; mepa.DaskExecutor"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bad_arguments(cluster):
    with pytest.raises(TypeError, match="only size the embedded cluster"):
        DaskExecutor(cluster.address, n_workers=2)
    with pytest.raises(TypeError, match=r"a cluster object .* or None, got int: 42"):
        DaskExecutor(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected keyword"):
        DaskExecutor(cluster.address, nworkers=2)  # type: ignore[call-arg]
    with pytest.raises(WorkerSpecError, match="n_workers must be a positive int"):
        DaskExecutor(n_workers=0)


def test_workers_come_from_the_scheduler(executor, cluster):
    assert [w.name for w in executor.workers] == ["127.0.0.1-0", "127.0.0.1-1"]
    assert {executor.worker_address(w) for w in executor.workers} == {
        w.address for w in cluster.workers
    }
    assert executor.is_local()
    assert not executor.shares_memory()
    with pytest.raises(NotImplementedError, match="no memory shared"):
        executor.create_shared_array(4)


def test_shutdown_leaves_an_external_cluster_and_client_running(cluster):
    with DaskExecutor(cluster.address) as ex:
        assert ex.submit_and_gather(operator.add, 1, 2) == 3
    client = distributed.Client(cluster.address, set_as_default=False)
    try:
        with DaskExecutor(client) as ex:
            assert ex.submit_and_gather(operator.mul, 2, 3) == 6
        assert client.status == "running"
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2
        assert client.submit(operator.add, 2, 2).result(timeout=30) == 4
    finally:
        client.close()


# ---------------------------------------------------------------------------- results, errors


def test_classes_and_exceptions_of_shipped_modules_keep_their_identity(executor):
    point = executor.submit_and_gather(make_point, 3)
    assert isinstance(point, Point)
    assert point.x == 3
    with pytest.raises(TaskFailed, match="custom") as info:
        executor.submit_and_gather(raise_custom, "custom")
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "raise_custom" in str(info.value.__cause__)


def test_unpicklable_task_is_a_serialization_error(executor):
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="could not be pickled"):
        executor.submit_and_gather(operator.truth, lock)


def test_future_arguments_are_resolved_on_the_workers(executor):
    first = executor.submit(slow, np.arange(5), 0.5)
    second = executor.submit(np.sum, first)
    # ``second`` went to Dask at once, with ``first``'s Dask future as its argument
    assert second in executor._dask_futures
    assert not first.done()
    assert executor.gather(second, timeout=30) == 10


def test_scatter_and_big_arguments_stay_off_the_graph(executor):
    big = np.ones(400_000)  # 3.2 MB: scattered, no "large graph" warning (warnings are errors)
    handle = executor.scatter(big)
    assert isinstance(handle, distributed.Future)
    assert executor.gather([executor.submit(np.sum, handle), executor.submit(np.sum, big)]) == [
        400_000.0, 400_000.0
    ]
    alloc = executor.arrange(np.arange(600_000.0), shuffle=True)
    out = alloc.reassemble(executor.distribute_and_gather(np.negative, alloc))
    np.testing.assert_array_equal(out, -np.arange(600_000.0))


def test_upload_modules_false_needs_importable_code(cluster, tmp_path, monkeypatch):
    (tmp_path / "only_here.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    only_here = importlib.import_module("only_here")
    try:
        with DaskExecutor(cluster.address, upload_modules=False) as ex, pytest.raises(
            ModuleNotFoundError, match="only_here"
        ):
            ex.submit_and_gather(only_here.double, 2)
        with DaskExecutor(cluster.address) as ex:
            assert ex.submit_and_gather(only_here.double, 2) == 4
    finally:
        sys.modules.pop("only_here", None)


def test_local_modules_skips_system_venvs_mepa_and_excludes(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text("X = 1\n")
    (tmp_path / "not_mine.py").write_text("X = 2\n")
    venv = tmp_path / ".venv"
    (venv / "lib").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr\n")
    (venv / "lib" / "in_venv.py").write_text("X = 3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(venv / "lib"))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        for name in ("mine", "not_mine", "in_venv"):
            importlib.import_module(name)
        names = LocalModules(excludes=["not_mine"]).names()
        assert "mine" in names
        assert not {"not_mine", "in_venv", "os", "numpy", "mepa", "distributed"} & set(names)
        assert not any(n.startswith("mepa.") for n in names)
    finally:
        for name in ("mine", "not_mine", "in_venv"):
            sys.modules.pop(name, None)


# ---------------------------------------------------------------------------- events, progress


def test_events_from_two_workers_arrive_exactly_and_in_order(executor):
    seen: dict[str, list[int]] = {}

    def record(tag, i):
        seen.setdefault(tag, []).append(i)

    ctx = executor.register(record)
    futures = [executor.submit_to(w, fire_many, ctx, w.name, 10_000) for w in executor.workers]
    assert executor.gather(futures, timeout=60) == [10_000, 10_000]
    # nothing is lost: every event is dispatched before gather returns, in per-worker order
    assert sorted(seen) == sorted(w.name for w in executor.workers)
    for values in seen.values():
        assert values == list(range(10_000))
    executor.off(ctx)


def fire_then_fail(ctx, n):
    for i in range(n):
        ctx.fire(i)
    raise TaskFailed("after firing")


def fire_once_then_sleep(ctx, seconds):
    ctx.fire("early")
    time.sleep(seconds)
    return "done"


def test_events_of_a_failed_task_arrive_before_its_error(executor):
    seen: list[int] = []
    ctx = executor.register(seen.append)
    with pytest.raises(TaskFailed, match="after firing"):
        executor.submit_and_gather(fire_then_fail, ctx, 5_000)
    assert seen == list(range(5_000))
    executor.off(ctx)


def test_events_flow_while_the_task_runs(executor):
    seen: list[str] = []
    ctx = executor.register(seen.append)
    future = executor.submit(fire_once_then_sleep, ctx, 3.0)
    deadline = time.monotonic() + 2.5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.02)
    assert seen == ["early"]  # sent by the worker's background flush, not at task end
    assert not future.done()
    assert future.result(timeout=30) == "done"
    executor.off(ctx)


def test_progress_bar_fed_from_workers_reaches_its_total(executor):
    stream = io.StringIO()
    progress = executor.progress(file=stream, mininterval=0)
    data = np.arange(40)
    alloc = executor.arrange(data, shuffle=True)
    result = alloc.reassemble(executor.gather(executor.distribute(count_through, progress, alloc)))
    np.testing.assert_array_equal(result, data + 1)
    assert progress.n == progress.total == 40
    progress.close()
    assert "40/40" in stream.getvalue()


# ---------------------------------------------------------------------------- map throughput


def test_map_batches_tiny_tasks(executor):
    # Throughput against client.map is measured in benchmarks/ (scenario "dispatch"); here,
    # without timings, that 10,000 items travel as a handful of tasks, in order.
    batches = executor.map_async(operator.neg, range(10_000))
    assert len(batches) <= 4 * executor.get_n_workers()
    results = [r for batch in executor.gather(batches, timeout=60) for r in batch]
    assert results == [-i for i in range(10_000)]


# ---------------------------------------------------------------------------- a cluster of its own


@pytest.fixture(scope="module")
def own_cluster():
    cluster = DaskCluster(n_workers=0)
    try:
        cluster.add_worker(nthreads=2)
        cluster.add_worker(nthreads=1, name="gpu-3")
        yield cluster
    finally:
        cluster.close()


def test_weights_follow_threads_and_distribute_pins_chunks(own_cluster):
    # one result per chunk (not per row): the 2-thread worker's chunk is not split
    with DaskExecutor(own_cluster.address, split_threads=False) as ex:
        assert [(w.name, w.weight) for w in ex.workers] == [
            ("gpu-3", 1.0), ("127.0.0.1-0", 2.0)
        ]
        alloc = ex.arrange(np.arange(30))
        assert [len(alloc[i]) for i in range(2)] == [10, 20]
        placed = ex.distribute_and_gather(chunk_where, alloc)
        assert placed == [(ex.worker_address(w), n) for w, n in zip(ex.workers, [10, 20])]


def test_late_worker_runs_shipped_code_and_a_killed_worker_is_retried(own_cluster, tmp_path,
                                                                      monkeypatch):
    (tmp_path / "late_code.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    late_code = importlib.import_module("late_code")
    try:
        with DaskExecutor(own_cluster.address, extra_paths=[tmp_path]) as ex:
            assert len(ex.workers) == 2
            late = own_cluster.add_worker(nthreads=1)
            workers = ex.refresh_workers()
            assert len(workers) == 3
            (new,) = [w for w in workers if ex.worker_address(w) == late.address]
            future = ex.submit_to(new, late_code.triple, 5)
            assert future.result(timeout=30) == 15
            assert ex.submit_to(new, where_am_i).result(timeout=30) == late.address

            # A worker killed mid-task: the scheduler retries the task elsewhere
            # (allowed-failures defaults to 3) and it completes.
            pids: list[int] = []
            ctx = ex.register(pids.append)
            long_task = ex.submit_to(new, tell_pid_then_sleep, ctx, 1.0)
            deadline = time.monotonic() + 30
            while not pids and time.monotonic() < deadline:
                time.sleep(0.02)
            assert pids == [late.pid]
            own_cluster.stop_worker(late, kill=True)
            assert late.proc.returncode == -signal.SIGKILL
            assert long_task.result(timeout=60) not in (late.pid, os.getpid())
    finally:
        sys.modules.pop("late_code", None)


# ---------------------------------------------------------------------------- embedded clusters


def test_embedded_cluster_crash_is_a_typed_error_and_is_owned():
    dask = pytest.importorskip("dask")
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        ex = DaskExecutor(n_workers=1)
    try:
        cluster = ex.cluster
        assert cluster is not None
        assert ex.client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert [w.name for w in ex.workers] == ["dask-0"]
        futures = ex.distribute(kill_own_worker_on_first_chunk, ex.arrange(np.arange(4)))
        with pytest.raises(WorkerCrashedError, match="Dask worker died") as info:
            ex.gather(futures, timeout=60)
        assert info.value.chunk == 0
        assert isinstance(info.value.__cause__, distributed.scheduler.KilledWorker)
    finally:
        ex.shutdown()
    assert ex.cluster is None
    assert cluster.status.name == "closed"


def test_embedded_tls_cluster():
    pytest.importorskip("cryptography", reason="Security.temporary() needs cryptography")
    from distributed.security import Security

    with DaskExecutor(n_workers=1, security=Security.temporary()) as ex:
        assert ex.client.scheduler.address.startswith("tls://127.0.0.1:")
        seen: list[int] = []
        ctx = ex.register(seen.append)
        assert ex.submit_and_gather(fire_many_plain, ctx, 100) == 100
        assert seen == list(range(100))


def fire_many_plain(ctx, n):
    for i in range(n):
        ctx.fire(i)
    return n


def test_a_task_result_travels_as_dask_sends_its_value_not_as_one_pickle():
    from distributed.protocol import deserialize, serialize

    from mepa._events._context import TaskResult

    value = (np.arange(1 << 17, dtype=np.float64), {"n": 3})
    tokens = (("source", 7),)
    header, frames = serialize(TaskResult(value, tokens))
    assert header["serializer"] == "dask"  # pickled whole, the array went in the pickle stream
    sizes = [memoryview(frame).nbytes for frame in frames]
    assert value[0].nbytes in sizes  # the array is a frame of its own, not copied into another
    back = deserialize(header, frames)
    assert isinstance(back, TaskResult)
    np.testing.assert_array_equal(back.value[0], value[0])
    assert back.value[1] == {"n": 3}
    assert back.tokens == tokens


def held_keys(executor, expected, timeout=30):
    """This client's live keys (but code bundles), once they are ``expected`` or at timeout.

    A dropped Dask future releases its key on the client's event loop, a moment later.
    """
    import gc

    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        held = sorted(
            str(key).rsplit("-", 1)[0] for key in list(executor.client.futures)
            if not str(key).startswith("mepa-code")
        )
        if held == expected or time.monotonic() > deadline:
            return held
        time.sleep(0.05)


def test_results_leave_the_cluster_once_their_futures_are_dropped(executor):
    held_keys(executor, [])  # what earlier tests left is released
    alloc = executor.arrange(np.arange(400_000.0))  # chunks above SCATTER_BYTES: scattered
    for _ in range(3):
        result = alloc.reassemble(executor.gather(executor.distribute(np.negative, alloc)))
        np.testing.assert_array_equal(result, -np.arange(400_000.0))
    kept = executor.submit(np.ones, 4)
    assert executor.gather(kept, timeout=60).sum() == 4
    # the cluster keeps what a live future needs (to pass it to a next task): `kept`'s result
    assert held_keys(executor, ["ones"]) == ["ones"]
    del kept
    assert held_keys(executor, []) == []
