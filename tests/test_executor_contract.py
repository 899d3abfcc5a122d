"""One contract, every executor: the behaviour users rely on, run against each backend."""

from __future__ import annotations

import concurrent.futures
import gc
import operator
import os
import re
import textwrap
import threading
import time

import numpy as np
import pytest

import mepa
from mepa import AllocationError, ExecutorShutdownError, Worker, WorkerSpecError
from mepa._executors import BACKENDS

from .executors import EXECUTOR_KINDS, TEST_CLUSTERS, make_executor
from .scripts import run_python

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(params=EXECUTOR_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def executor(kind: str):
    with make_executor(kind, 2) as ex:
        yield ex


def square(x):
    return x * x


def fail_with(message):
    raise KeyError(message)


def slow_identity(x, delay=0.2):
    time.sleep(delay)
    return x


def sin_cos(chunk):
    return np.sin(chunk) ** 2 + np.cos(chunk)


def chunk_summary(chunk, scale=1):
    return {"twice": chunk * 2 * scale, "rows": np.full(len(chunk), len(chunk))}


def add_pair(pair, offset=0):
    a, b = pair
    return a + b + offset


# ---------------------------------------------------------------------------- submit / gather


def test_submit_returns_stdlib_future(executor):
    future = executor.submit(operator.add, 2, 3)
    assert isinstance(future, concurrent.futures.Future)
    assert isinstance(future, mepa.TaskFuture)
    assert future.result(timeout=30) == 5


def test_seed_submit_and_gather_dict(executor):
    futures = {
        "add": executor.submit(operator.add, 2, 1),
        "mul": executor.submit(operator.mul, 2, 1),
        "div": executor.submit(operator.truediv, 2, 1),
    }
    assert executor.gather(futures) == {"add": 3, "mul": 2, "div": 2.0}


def test_gather_keeps_any_nesting(executor):
    f = [executor.submit(square, i) for i in range(4)]
    structure = {"a": f[0], "b": [f[1], (f[2], {"c": f[3]})], "plain": "kept"}
    assert executor.gather(structure) == {"a": 0, "b": [1, (4, {"c": 9})], "plain": "kept"}
    assert executor.gather(f[3]) == 9
    assert executor.gather([]) == []


def test_concurrent_futures_wait_and_as_completed(executor):
    futures = [executor.submit(square, i) for i in range(6)]
    _, not_done = concurrent.futures.wait(futures, timeout=30)
    assert not not_done
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures)) == [
        i * i for i in range(6)
    ]


def test_future_argument_stands_for_its_result(executor):
    first = executor.submit(slow_identity, 20, 0.05)
    second = executor.submit(operator.add, first, 1)
    nested = executor.submit(sum, [first, second])
    assert executor.gather([first, second, nested], timeout=30) == [20, 21, 41]


def test_failed_dependency_fails_the_dependent(executor):
    bad = executor.submit(fail_with, "upstream")
    dependent = executor.submit(operator.add, bad, 1)
    with pytest.raises(KeyError, match="upstream"):
        executor.gather(dependent, timeout=30)


def test_task_exception_keeps_type_and_says_where(executor):
    future = executor.submit(fail_with, "boom")
    with pytest.raises(KeyError, match="boom") as info:
        executor.gather(future, timeout=30)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "raised by a task on" in notes


def test_distribute_exception_names_the_chunk(executor):
    alloc = executor.arrange(np.arange(10))

    def fail_on_second(chunk):
        if chunk[0] != 0:
            raise ValueError(f"bad chunk starting at {chunk[0]}")
        return chunk

    futures = executor.distribute(fail_on_second, alloc)
    assert futures[0].result(timeout=30) is not None
    with pytest.raises(ValueError, match="bad chunk starting at 5") as info:
        executor.gather(futures, timeout=30)
    assert "chunk 1" in "\n".join(info.value.__notes__)


def test_gather_timeout(executor):
    if not executor.capabilities.asynchronous:
        pytest.skip("this executor runs each task inside submit")
    future = executor.submit(slow_identity, 1, 2.0)
    with pytest.raises(TimeoutError):
        executor.gather(future, timeout=0.05)
    assert executor.gather(future, timeout=30) == 1


def test_gather_progress_bar_counts_tasks(executor, capsys):
    futures = [executor.submit(square, i) for i in range(5)]
    import io

    stream = io.StringIO()
    assert executor.gather(futures, progress={"file": stream, "mininterval": 0}) == [
        0, 1, 4, 9, 16
    ]
    assert "5/5" in stream.getvalue()


class NeedsTwoArguments(Exception):
    """Its pickle calls ``__init__`` with one argument: it cannot be loaded again."""

    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")


class HoldsALock(Exception):
    """An attribute that cannot be pickled at all."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


def raise_needs_two():
    raise NeedsTwoArguments("left", "right")


def raise_holds_a_lock():
    raise HoldsALock("locked state")


@pytest.mark.parametrize(
    ("raiser", "error_type", "message"),
    [
        (raise_needs_two, NeedsTwoArguments, "left and right"),
        (raise_holds_a_lock, HoldsALock, "locked state"),
    ],
)
def test_unpicklable_task_exception_arrives_typed(executor, kind, raiser, error_type, message):
    bystanders = [executor.submit(slow_identity, i, 0.05) for i in range(4)]
    failing = executor.submit(raiser)
    if executor.shares_memory():  # nothing to send: the exception itself arrives
        with pytest.raises(error_type, match=message):
            executor.gather(failing, timeout=60)
    else:
        with pytest.raises(mepa.SerializationError) as info:
            executor.gather(failing, timeout=60)
        text = str(info.value)
        assert error_type.__qualname__ in text
        assert message in text
        assert "cannot be sent to the host" in text
    # no worker was lost: the other tasks, and the next ones, run as usual
    assert executor.gather(bystanders, timeout=60) == [0, 1, 2, 3]
    assert list(executor.map(square, range(4))) == [0, 1, 4, 9]


# ---------------------------------------------------------------------------- map


def test_map_in_order(executor):
    assert list(executor.map(square, range(50))) == [i * i for i in range(50)]
    assert list(executor.map(operator.add, range(5), range(10, 15), chunksize=2)) == [
        10, 12, 14, 16, 18
    ]
    assert list(executor.map(square, [])) == []


def test_map_returns_an_iterator(executor):
    results = executor.map(square, range(5), chunksize=2)
    assert iter(results) is results
    assert next(results) == 0
    assert list(results) == [1, 4, 9, 16]
    with pytest.raises(StopIteration):
        next(results)


def test_gather_of_a_map_collects_its_results(executor):
    assert executor.gather(executor.map(square, range(7))) == [i * i for i in range(7)]


def divide(a, b):
    return a / b


@pytest.mark.parametrize("chunksize", [1, 4])
def test_map_exception_comes_from_next_after_the_results_before_it(executor, chunksize):
    results = executor.map(divide, [1, 2, 3, 4], [1, 2, 0, 4], chunksize=chunksize)
    assert next(results) == 1.0
    assert next(results) == 1.0
    with pytest.raises(ZeroDivisionError):
        next(results)
    with pytest.raises(StopIteration):  # as the stdlib's: over after the error
        next(results)


def gated(i, gate, waiting):
    """Return ``i``; an item in ``waiting`` first marks that it started, then waits for ``gate``.

    The wait is bounded, so that a test of an executor that fails to be lazy fails instead of
    hanging.
    """
    if i in waiting:
        (gate.parent / f"started-{i}").touch()
        deadline = time.monotonic() + 20
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    return i


def gated_map(executor, tmp_path, n, **options):
    gate = tmp_path / "open"
    waiting = frozenset(range(1, n))  # the first item returns at once, the others wait
    return gate, executor.map(gated, range(n), [gate] * n, [waiting] * n, chunksize=1, **options)


NOT_LAZY = "the linear executor runs every task inside map(): no result is outstanding"


def test_map_yields_each_result_as_it_arrives(executor, kind, tmp_path):
    if kind == "linear":
        pytest.skip(NOT_LAZY)
    gate, results = gated_map(executor, tmp_path, 4)
    assert next(results) == 0  # while the other items still wait
    assert not gate.exists()
    gate.touch()
    assert list(results) == [1, 2, 3]


@pytest.mark.parametrize("how", ["timeout", "close", "drop"])
def test_map_cancels_outstanding_tasks_when_stopped(executor, kind, tmp_path, how):
    if kind == "linear":
        pytest.skip(NOT_LAZY)
    if not executor.capabilities.cancels_queued:
        pytest.skip(f"{type(executor).__name__} may still run a task cancelled while queued")
    executor.gather(executor.submit(square, 1), timeout=60)  # workers up before the clock
    n = 12
    gate, results = gated_map(executor, tmp_path, n, timeout=3.0 if how == "timeout" else None)
    assert next(results) == 0
    if how == "timeout":
        with pytest.raises(concurrent.futures.TimeoutError):
            next(results)
        with pytest.raises(StopIteration):  # over after the timeout
            next(results)
    elif how == "close":
        results.close()
        with pytest.raises(StopIteration):
            next(results)
    else:
        del results
        gc.collect()
    gate.touch()
    executor.shutdown(wait=True)
    # The workers took only the first items (two running, a few queued in the engine); the
    # others were cancelled before they started.
    started = [i for i in range(n) if (tmp_path / f"started-{i}").exists()]
    assert 1 in started
    assert len(started) <= n // 2, started


def test_starmap_in_order(executor):
    assert executor.starmap(operator.mul, [(i, 2) for i in range(7)], chunksize=3) == [
        2 * i for i in range(7)
    ]


def test_map_async_batches(executor):
    futures = executor.map_async(square, range(10), chunksize=4)
    assert len(futures) == 3
    assert [r for batch in executor.gather(futures) for r in batch] == [i * i for i in range(10)]


@pytest.mark.parametrize("chunksize", [0, -1, 1.5, True])
def test_map_rejects_bad_chunksize(executor, chunksize):
    with pytest.raises(ValueError, match="chunksize must be a positive int"):
        executor.map(square, range(3), chunksize=chunksize)


# ---------------------------------------------------------------------------- distribute


@pytest.mark.parametrize("shuffle", [False, True, 7])
def test_arrange_distribute_reassemble(executor, shuffle):
    data = np.linspace(-3, 3, 1001)
    alloc = executor.arrange(data, shuffle=shuffle)
    assert len(alloc) == executor.get_n_workers()
    futures = executor.distribute(sin_cos, alloc)
    assert len(futures) == executor.get_n_workers()
    np.testing.assert_allclose(alloc.reassemble(executor.gather(futures)), sin_cos(data))


def test_distribute_structured_results_and_kwargs(executor):
    data = np.arange(11.0)
    alloc = executor.arrange(data, shuffle=True)
    result = alloc.reassemble(executor.distribute_and_gather(chunk_summary, alloc, scale=3))
    np.testing.assert_array_equal(result["twice"], data * 6)
    assert set(result) == {"twice", "rows"}


def test_distribute_finds_allocations_inside_containers(executor):
    a = np.arange(9)
    b = np.arange(100, 109)
    alloc_a = executor.arrange(a)
    alloc_b = executor.arrange(b)
    futures = executor.distribute(add_pair, (alloc_a, alloc_b), offset=1)
    np.testing.assert_array_equal(alloc_a.reassemble(executor.gather(futures)), a + b + 1)


def test_distribute_arrange_many(executor):
    a, b = np.arange(12), np.arange(12) * 10
    alloc = executor.arrange_many(a, b, shuffle=True)
    futures = executor.distribute(add_pair, alloc)
    np.testing.assert_array_equal(alloc.reassemble(executor.gather(futures)), a + b)


def test_distribute_rejects_foreign_allocation(executor):
    alloc = mepa.arrange(np.arange(10), weights=3)
    with pytest.raises(AllocationError, match="has 2 workers, got an allocation of 3"):
        executor.distribute(sin_cos, alloc)


def test_distribute_without_allocation_runs_once_per_worker(executor):
    assert executor.distribute_and_gather(operator.add, 1, 2) == [3, 3]


# ---------------------------------------------------------------------------- workers


def test_workers_and_weights(executor, kind):
    workers = executor.workers
    assert executor.get_workers() == workers
    assert executor.get_n_workers() == 2
    assert executor.get_total_weights() == 2.0
    assert all(isinstance(w, Worker) for w in workers)
    assert [w.index for w in workers] == [0, 1]
    assert executor.is_local()


def test_extract_by_name(executor):
    first = executor.workers[0].name
    for pattern in (first, re.compile(re.escape(first) + "$"), lambda w: w.name == first):
        sub = executor.extract_by_name(pattern)
        assert [w.name for w in sub.workers] == [first]
        alloc = sub.arrange(np.arange(5))
        assert len(alloc) == 1
        assert sub.gather(sub.distribute(square, alloc))[0].tolist() == [0, 1, 4, 9, 16]
        sub.shutdown()
    # the parent still runs after its sub-executor shut down
    assert executor.submit_and_gather(square, 3) == 9
    with pytest.raises(WorkerSpecError, match="matches none of the workers"):
        executor.extract_by_name("no-such-worker")


def test_submit_to_pins_and_validates(executor):
    worker = executor.workers[1]
    future = executor.submit_to(worker.name, square, 4)
    assert future.worker == worker
    assert future.result(timeout=30) == 16
    with pytest.raises(WorkerSpecError, match="one of this executor's workers"):
        executor.submit_to("elsewhere-9", square, 1)


def test_create_shared_array_is_written_in_place(executor):
    if not executor.capabilities.shared_arrays:
        pytest.skip(
            f"{type(executor).__name__} shares no memory with its workers; its "
            "create_shared_array raises NotImplementedError"
        )
    out = executor.create_shared_array((10,), np.float64)
    out[:] = 0

    def fill(target, start, stop):
        target[start:stop] = np.arange(start, stop)

    executor.gather([executor.submit(fill, out, 0, 5), executor.submit(fill, out, 5, 10)])
    np.testing.assert_array_equal(out, np.arange(10.0))


def where_am_i(_=None):
    import os
    import socket

    return socket.gethostname(), os.getpid()


def test_submit_to_runs_on_the_named_worker(executor):
    if not executor.capabilities.pins_tasks:
        pytest.skip(f"{type(executor).__name__} does not pin tasks to workers (pins_tasks)")
    places = {
        w.name: set(executor.gather([executor.submit_to(w, where_am_i) for _ in range(3)],
                                    timeout=60))
        for w in executor.workers
    }
    # every task pinned to a worker ran in that worker's process, and the workers differ
    assert all(len(seen) == 1 for seen in places.values()), places
    assert len({next(iter(seen)) for seen in places.values()}) == len(places), places


def test_gathered_results_are_writable_where_declared(executor):
    if not executor.capabilities.writable_results:
        pytest.skip(f"{type(executor).__name__} documents read-only results")
    small = executor.submit(np.ones, 10)
    big = executor.submit(np.ones, 1 << 18)
    data = np.arange(1 << 18, dtype=np.float64)
    chunks = executor.gather(executor.distribute(np.negative, executor.arrange(data)), timeout=60)
    for result in [*executor.gather([small, big], timeout=60), *chunks]:
        assert result.flags.writeable
        result[0] = 7.0
        assert result[0] == 7.0


# ---------------------------------------------------------------------------- lifecycle


def test_shutdown_is_idempotent_and_final(kind):
    ex = make_executor(kind, 2)
    assert ex.submit_and_gather(square, 2) == 4
    ex.shutdown()
    ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(square, 1)
    with pytest.raises(ExecutorShutdownError):
        ex.map(square, [1])


def test_shutdown_waits_for_running_tasks(kind):
    with make_executor(kind, 2) as ex:
        futures = [ex.submit(slow_identity, i, 0.1) for i in range(3)]
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [0, 1, 2]


def wait_for_markers(tmp_path, count, limit=60.0):
    """Wait until ``count`` gated tasks have started (bounded)."""
    deadline = time.monotonic() + limit
    while len(list(tmp_path.glob("started-*"))) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(list(tmp_path.glob("started-*"))) >= count


def submit_gated(ex, tmp_path, n):
    gate = tmp_path / "open"
    waiting = frozenset(range(n))
    return gate, [ex.submit(gated, i, gate, waiting) for i in range(n)]


NOTHING_IN_FLIGHT = "the linear executor runs each task inside submit: nothing is in flight"


def test_shutdown_without_wait_lets_running_and_queued_tasks_finish(kind, tmp_path):
    if kind == "linear":
        pytest.skip(NOTHING_IN_FLIGHT)
    ex = make_executor(kind, 2)
    gate, futures = submit_gated(ex, tmp_path, 6)
    wait_for_markers(tmp_path, 2)
    ex.shutdown(wait=False)
    assert not all(f.done() for f in futures)  # it returned without waiting
    with pytest.raises(ExecutorShutdownError, match="after shutdown"):
        ex.submit(square, 1)
    threading.Timer(0.2, gate.touch).start()
    ex.shutdown(wait=True)  # called again: now waits
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == list(range(6))


@pytest.mark.parametrize("wait", [True, False])
def test_shutdown_cancel_futures_cancels_what_has_not_started(kind, tmp_path, wait):
    if kind == "linear":
        pytest.skip(NOTHING_IN_FLIGHT)
    if not BACKENDS[kind].capabilities.cancels_queued:
        pytest.skip(f"the {kind} backend may still run a task cancelled while queued")
    ex = make_executor(kind, 2)
    n = 10
    gate, futures = submit_gated(ex, tmp_path, n)
    wait_for_markers(tmp_path, 2)
    running = [i for i in range(n) if (tmp_path / f"started-{i}").exists()]
    threading.Timer(0.2, gate.touch).start()
    ex.shutdown(wait=wait, cancel_futures=True)
    ex.shutdown(wait=True)
    for i, future in enumerate(futures):
        assert future.done()
        if future.cancelled():
            assert not (tmp_path / f"started-{i}").exists(), f"cancelled task {i} ran"
        else:
            assert future.result() == i
    assert all(not futures[i].cancelled() for i in running)  # running tasks are never cancelled
    assert futures[-1].cancelled()


def test_running_while_the_task_runs_and_cancel_refuses_it(executor, kind, tmp_path):
    if kind == "linear":
        pytest.skip(NOTHING_IN_FLIGHT)
    gate = tmp_path / "open"
    future = executor.submit(gated, 1, gate, frozenset({1}))
    wait_for_markers(tmp_path, 1)
    assert future.running()
    assert not future.cancel()  # a running task cannot be cancelled
    assert not future.cancelled()
    gate.touch()
    assert future.result(timeout=60) == 1
    assert not future.running()


def test_cancelled_futures_are_done_for_wait_and_as_completed(executor, kind, tmp_path):
    if kind == "linear":
        pytest.skip(NOTHING_IN_FLIGHT)
    gate, futures = submit_gated(executor, tmp_path, 8)
    wait_for_markers(tmp_path, 2)
    cancelled = [f for f in futures if f.cancel()]
    assert cancelled
    _, not_done = concurrent.futures.wait(cancelled, timeout=30)
    assert not not_done
    assert set(concurrent.futures.as_completed(cancelled, timeout=30)) == set(cancelled)
    gate.touch()


INITIALIZED: dict[str, object] = {}


def remember(key, value):
    INITIALIZED[key] = value


def read_initialized(key):
    return INITIALIZED.get(key)


def failing_initializer(message):
    raise ValueError(message)


def test_thread_initializer_runs_in_each_thread_before_tasks():
    key = f"thread-{time.monotonic()}"
    with mepa.ThreadExecutor(2, initializer=remember, initargs=(key, "set up")) as ex:
        assert ex.gather([ex.submit(read_initialized, key) for _ in range(4)]) == ["set up"] * 4


def test_failing_thread_initializer_breaks_the_executor_with_a_typed_error():
    with mepa.ThreadExecutor(2, initializer=failing_initializer, initargs=("no GPU",)) as ex:
        futures = [ex.submit(square, i) for i in range(3)]
        for future in futures:
            with pytest.raises(mepa.InitializerError, match="no GPU") as info:
                future.result(timeout=60)
            assert isinstance(info.value, concurrent.futures.BrokenExecutor)
            assert isinstance(info.value, mepa.BrokenExecutor)
            assert isinstance(info.value.__cause__, ValueError)
        with pytest.raises(mepa.InitializerError, match="failing_initializer"):
            ex.submit_and_gather(square, 1)


def test_process_initializer_runs_in_each_worker_before_tasks():
    with mepa.ProcessExecutor(2, initializer=remember, initargs=("proc", os.getpid())) as ex:
        assert ex.gather([ex.submit(read_initialized, "proc") for _ in range(4)]) == [
            os.getpid()
        ] * 4


def test_failing_process_initializer_breaks_the_executor_with_a_typed_error():
    with mepa.ProcessExecutor(2, initializer=failing_initializer, initargs=("no GPU",)) as ex:
        future = ex.submit(square, 3)
        with pytest.raises(mepa.InitializerError, match="no GPU") as info:
            future.result(timeout=60)
        assert isinstance(info.value, mepa.BrokenExecutor)
        assert "failing_initializer" in str(info.value)
        with pytest.raises(mepa.InitializerError, match="no GPU"):
            ex.submit_and_gather(square, 1)


@pytest.mark.parametrize(
    ("options", "match"),
    [({"initializer": 3}, "initializer must be a callable"),
     ({"initializer": remember, "initargs": ["a", 1]}, "initargs must be a tuple")],
)
@pytest.mark.parametrize("cls", [mepa.ThreadExecutor, mepa.ProcessExecutor])
def test_bad_initializer_is_refused(cls, options, match):
    with pytest.raises(mepa.ArgumentTypeError, match=match):
        cls(2, **options)


def test_bad_construction():
    with pytest.raises(WorkerSpecError, match="n_workers must be a positive int"):
        mepa.ThreadExecutor(0)
    with pytest.raises(WorkerSpecError, match="n_workers must be a positive int"):
        mepa.LinearExecutor(-2)


def test_submit_rejects_non_callable(executor):
    with pytest.raises(TypeError, match="fn must be callable"):
        executor.submit(42)


def test_thread_safety_of_submit(executor):
    results = []
    lock = threading.Lock()

    def client(offset):
        values = executor.gather([executor.submit(square, offset + i) for i in range(10)])
        with lock:
            results.extend(values)

    threads = [threading.Thread(target=client, args=(k * 10,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == sorted(i * i for i in range(30))


# ---------------------------------------------------------------------------- events and progress

N_FIRES = 100_000


def fire_many(ctx, worker_id, n):
    for i in range(n):
        ctx.fire(worker_id, i)
    return worker_id


def test_every_event_arrives_in_order_before_gather_returns(executor):
    seen = {0: [], 1: []}

    def record(worker_id, i):
        seen[worker_id].append(i)

    ctx = executor.register(record)
    futures = [executor.submit_to(w, fire_many, ctx, k, N_FIRES) for k, w in
               enumerate(executor.workers)]
    assert executor.gather(futures, timeout=120) == [0, 1]
    # nothing is lost, nothing arrives late: counted the moment gather returns
    assert len(seen[0]) == len(seen[1]) == N_FIRES
    assert seen[0] == list(range(N_FIRES))
    assert seen[1] == list(range(N_FIRES))


def fire_then_fail(ctx, n):
    for i in range(n):
        ctx.fire(i)
    raise RuntimeError("after firing")


def test_events_of_a_failed_task_arrive_before_its_error(executor):
    got = []
    ctx = executor.register(got.append)
    with pytest.raises(RuntimeError, match="after firing"):
        executor.gather(executor.submit(fire_then_fail, ctx, 500), timeout=60)
    assert got == list(range(500))


def test_a_raising_callback_loses_nothing(executor, caplog):
    got = []

    def picky(i):
        if i % 100 == 0:
            raise ValueError(f"callback rejects {i}")
        got.append(i)

    ctx = executor.register(picky)
    executor.gather(executor.submit(fire_many_single, ctx, 1_000), timeout=60)
    assert got == [i for i in range(1_000) if i % 100]
    assert "callback rejects 500" in caplog.text


def fire_many_single(ctx, n):
    for i in range(n):
        ctx.fire(i)


def test_named_events_and_off(executor):
    a, b = [], []
    ctx = executor.on("step", a.append)
    executor.on("step", b.append)
    executor.gather(executor.submit(fire_many_single, ctx, 10), timeout=60)
    assert a == b == list(range(10))
    executor.off("step", b.append)
    executor.gather(executor.submit(fire_many_single, ctx, 3), timeout=60)
    assert a == [*range(10), *range(3)]
    assert b == list(range(10))


def count_with_progress(progress, chunk):
    out = []
    for value in progress.iters(chunk):
        out.append(value + 1)
    return np.asarray(out)


def test_progress_bar_fed_by_tasks_reaches_its_total(executor):
    import io

    stream = io.StringIO()
    progress = executor.progress(file=stream, mininterval=0, desc="rows")
    data = np.arange(5_000)
    alloc = executor.arrange(data, shuffle=True)
    futures = executor.distribute(count_with_progress, progress, alloc)
    result = alloc.reassemble(executor.gather(futures, timeout=120))
    np.testing.assert_array_equal(result, data + 1)
    assert progress.n == progress.total == 5_000
    progress.close()
    assert "5000/5000" in stream.getvalue()


def test_bars_that_finished_are_not_kept_by_the_executor(executor):
    import gc
    import io
    import weakref

    refs = []
    for _ in range(3):
        closed = executor.progress(total=4, file=io.StringIO())
        executor.gather(executor.submit(update_many, closed, 4), timeout=60)
        closed.close()  # finished: the tasks' updates counted, the host's hold released
        disposed = executor.progress(file=io.StringIO())
        disposed.dispose()
        refs += [weakref.ref(closed), weakref.ref(disposed)]
        assert closed.n == 4
        del closed, disposed
    data = np.arange(1_000.0)
    for _ in range(3):  # map_array makes a bar of its own for each call
        np.testing.assert_array_equal(
            mepa.map_array(np.sqrt, data, executor=executor, progress={"file": io.StringIO()}),
            np.sqrt(data),
        )
    gc.collect()
    assert [ref() for ref in refs] == [None] * len(refs)
    assert list(executor._progress_bars) == []
    open_bar = executor.progress(file=io.StringIO())  # still open: kept, tasks may update it
    assert list(executor._progress_bars) == [open_bar]
    open_bar.close()


def update_many(progress, n):
    for _ in range(n):
        progress.update(1)
    return n


def test_sequential_tasks_drop_no_update(executor):
    import io

    stream = io.StringIO()
    progress = executor.progress(total=3 * 20_000, file=stream, mininterval=0)
    for _ in range(3):  # one task finishes before the next starts
        executor.gather(executor.submit(update_many, progress, 20_000), timeout=60)
    assert progress.n == 60_000
    progress.close()
    assert "60000/60000" in stream.getvalue()


# ------------------------------------------------------------------------ in a fresh interpreter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(kind, tmp_path, body):
    """Run ``body`` in a new interpreter where ``build()`` makes an executor of ``kind``.

    Backends with a test cluster (Dask, Ray) connect to the session's: the script starts no
    cluster processes of its own.
    """
    cluster = TEST_CLUSTERS.get(kind)
    address = None if cluster is None else cluster[0](2)
    head = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {REPO!r})
        import mepa
        from mepa._executors import BACKENDS

        KIND = {kind!r}
        REMOTE = BACKENDS[KIND].remote

        def build():
            if {address!r} is None:
                return BACKENDS[KIND].create(2)
            n_workers = None if KIND == "dask" else 2
            return BACKENDS[KIND].load()({address!r}, n_workers=n_workers)
        """
    )
    proc = run_python(head + textwrap.dedent(body), tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


ATEXIT_SCRIPT = """
import atexit
import psutil

early = build()

def at_exit():
    makers = [("early", lambda: early)]
    if not REMOTE:
        makers.append(("late", build))
    for name, make in makers:
        ex = make()
        for call in ("submit", "map"):
            try:
                getattr(ex, call)(pow, *([2, 3] if call == "submit" else [[2], [3]]))
                print(name, call, "accepted")
            except RuntimeError as exc:
                print(name, call, "refused:", exc)
    print("worker processes", len(psutil.Process().children(recursive=True)))

atexit.register(at_exit)
print("main ends")
"""


def test_submit_from_atexit_is_refused_without_starting_workers(kind, tmp_path):
    out = run_script(kind, tmp_path, ATEXIT_SCRIPT)
    assert "main ends" in out
    assert "accepted" not in out, out
    from mepa._executors import BACKENDS

    # an executor of a cluster backend cannot even be made at exit: only 2 calls are reached
    assert out.count("refused: cannot schedule new futures after interpreter shutdown") == (
        2 if BACKENDS[kind].remote else 4
    ), out
    assert "worker processes 0" in out


CTRL_C_SCRIPT = """
import concurrent.futures, os, pathlib, signal, threading, time

HERE = pathlib.Path(__file__).parent
GATE = HERE / "open"

def gated(i):
    (HERE / f"started-{i}").touch()
    deadline = time.monotonic() + 30
    while not GATE.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return i

ex = build()
futures = [ex.submit(gated, i) for i in range(6)]
deadline = time.monotonic() + 60
while time.monotonic() < deadline and not all(
    (HERE / f"started-{i}").exists() for i in (0, 1)
):
    time.sleep(0.01)
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    ex.gather(futures, timeout=60)
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted")
GATE.touch()
try:
    ex.gather(futures, timeout=60)
    print("again: results")
except concurrent.futures.CancelledError:
    print("again: CancelledError")
except BaseException as exc:
    print("again:", type(exc).__name__, exc)
outcomes = []
for f in futures:
    try:
        f.result(timeout=60)
        outcomes.append("result")
    except concurrent.futures.CancelledError:
        outcomes.append("cancelled")
    except BaseException as exc:
        outcomes.append(type(exc).__name__)
print("outcomes", sorted(set(outcomes)))
ex.shutdown()
"""


def test_gather_after_ctrl_c_raises_cancelled_error(kind, tmp_path):
    if kind == "linear":
        pytest.skip("the linear executor runs each task inside submit: gather has nothing to "
                    "interrupt")
    out = run_script(kind, tmp_path, CTRL_C_SCRIPT)
    assert "interrupted" in out, out
    # the tasks not started were cancelled; those the engine stopped too; the others finished
    assert "again: CancelledError" in out, out
    outcomes = out.split("outcomes")[1].strip()
    assert outcomes in ("['cancelled']", "['cancelled', 'result']"), out
