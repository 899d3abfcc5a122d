"""The original ``metalpy.mepa`` call forms on ``mepa.compat.metalpy``, one test per form.

Each test states what the original (metalpy 0.2) did and checks the compat layer does it; none
needs metalpy installed (``tests/test_metalpy_integration.py`` runs metalpy itself).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import io
import operator
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mepa
from mepa import WorkerSpecError
from mepa.compat import metalpy as compat

# Every name metalpy 0.2 (its own code, the SimPEG layer included) imports, by module.
ORIGINAL_NAMES = {
    "metalpy.mepa": [
        "Executor", "Worker", "WorkerContext", "BoundWorkerContext",
        "IndexedBoundWorkerContext", "QueueLikeWorkerContext", "ParallelProgress",
        "MultiTaskAllocator", "SingleTaskAllocator", "LazyEvaluator", "LinearExecutor",
        "ProcessExecutor", "DaskExecutor", "ThreadExecutor",
    ],
    "metalpy.mepa.executor": ["Executor", "check_workers"],
    "metalpy.mepa.worker": ["Worker"],
    "metalpy.mepa.utils": [
        "is_serial", "structured_traverse", "traverse_args", "exception_caught",
        "is_main_thread_of_main_process", "OutputArray",
    ],
    "metalpy.mepa.parallel_progress": ["ParallelProgress"],
    "metalpy.mepa.worker_context": [
        "WorkerContext", "BoundWorkerContext", "IndexedBoundWorkerContext",
    ],
    "metalpy.mepa.task_allocator": [
        "TaskAllocator", "SingleTaskAllocator", "MultiTaskAllocator", "BoundTaskAllocator",
        "ShuffleChoice", "WeightsType", "extract_weights",
    ],
    "metalpy.mepa.lazy_evaluator": ["LazyEvaluator"],
    "metalpy.mepa.queue_like_worker_context": ["QueueLikeWorkerContext"],
    "metalpy.mepa.linear_executor": ["LinearExecutor"],
    "metalpy.mepa.thread_executor": ["ThreadExecutor"],
    "metalpy.mepa.process_executor": ["ProcessExecutor"],
    "metalpy.mepa.dask_executor": ["DaskExecutor"],
    "metalpy.mepa.sub_executor": ["SubExecutor"],
}


def _installed_for_the_session() -> bool:
    """Whether install() is in force already (tests/test_metalpy_integration.py, with metalpy)."""
    return bool(getattr(sys.modules.get("metalpy.mepa"), "__mepa_compat__", False))


@pytest.fixture
def installed() -> Iterator[None]:
    if _installed_for_the_session():
        yield
        return
    compat.install()
    try:
        yield
    finally:
        compat.uninstall()


@pytest.fixture
def threads() -> Iterator[compat.ThreadExecutor]:
    with compat.ThreadExecutor(2) as executor:
        yield executor


def _wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _kwargs(**kwargs: Any) -> dict[str, Any]:
    return kwargs


def _where(_: Any = None) -> str:
    return threading.current_thread().name


# ------------------------------------------------------------------------- import metalpy.mepa


def test_install_makes_metalpy_mepa_and_its_submodules_resolve(installed: None) -> None:
    for module_name, names in ORIGINAL_NAMES.items():
        module = importlib.import_module(module_name)
        for name in names:
            assert getattr(module, name) is getattr(compat, name), (module_name, name)
    import metalpy.mepa.executor  # the attribute path works too

    assert metalpy.mepa.executor.Executor is compat.Executor  # type: ignore[attr-defined]


def test_uninstall_forgets_the_alias() -> None:
    if _installed_for_the_session() or importlib.util.find_spec("metalpy") is not None:
        pytest.skip("metalpy is installed: the metalpy integration tests keep install() in force")
    compat.install()
    compat.install()  # idempotent
    compat.uninstall()
    assert "metalpy.mepa" not in sys.modules
    with pytest.raises(ImportError):
        importlib.import_module("metalpy.mepa")


def test_seed_readme_example_runs_on_the_alias(installed: None) -> None:
    from metalpy.mepa import ThreadExecutor  # type: ignore[import-not-found]

    with ThreadExecutor(3) as executor:
        futures = {
            "add": executor.submit(operator.add, 2, 1),
            "mul": executor.submit(operator.mul, 2, 1),
        }
        assert executor.gather(futures) == {"add": 3, "mul": 2}


# ------------------------------------------------------------------------- members of mepa's API


def test_needs_serialization_on_mepa_executors() -> None:
    with mepa.LinearExecutor(1) as linear, mepa.ThreadExecutor(1) as thread:
        assert linear.needs_serialization() is False
        assert thread.needs_serialization() is False
        assert linear.extract_by_name("linear").needs_serialization() is False
    process = mepa.ProcessExecutor(1)
    try:
        assert process.needs_serialization() is True
        assert process.shares_memory() is False  # mepa's own answer
    finally:
        process.shutdown()


def test_progress_members_of_the_original() -> None:
    with mepa.ThreadExecutor(2) as executor:
        bar = executor.progress(total=2, file=io.StringIO())
        assert bar.progress is bar.bar
        assert bar.distribute() is bar
        bar.enable_local_lock(False)  # accepted: the bar is always thread-safe
        with pytest.raises(TypeError, match="enable must be a bool"):
            bar.enable_local_lock("no")  # type: ignore[arg-type]
        assert bar.disable is False
        bar.update(2)
        bar.close()
        assert bar.disable is True


def test_progress_disable_in_a_task_of_another_process() -> None:
    def task(bar: mepa.Progress) -> tuple[bool, bool, Any]:
        bar.register(3)
        before = bar.disable
        bar.update(3)
        bar.close()
        return before, bar.disable, bar.progress

    with mepa.ProcessExecutor(1) as executor:
        bar = executor.progress(file=io.StringIO())
        assert executor.gather(executor.submit(task, bar)) == (False, True, None)
        assert bar.n == 3


# ------------------------------------------------------------------------- submit and pinning


def test_submit_worker_pins_and_is_not_passed_to_the_function(
    threads: compat.ThreadExecutor,
) -> None:
    w = threads.get_workers()[1]
    future = threads.submit(_kwargs, a=1, worker=w)
    assert threads.gather(future) == {"a": 1}
    assert future.worker == w


def test_submit_workers_list_pins_round_robin(threads: compat.ThreadExecutor) -> None:
    a, b = threads.get_workers()
    assert threads.submit(_kwargs, workers=[b]).worker == b
    pinned = [threads.submit(_kwargs, workers=[a, b]).worker for _ in range(4)]
    assert pinned == [a, b, a, b]
    assert threads.submit(_kwargs, worker="thread-0").worker == a  # a name works too


def test_submit_worker_that_is_not_a_worker_says_how_to_pass_an_argument(
    threads: compat.ThreadExecutor,
) -> None:
    with pytest.raises(WorkerSpecError, match=r"functools\.partial") as info:
        threads.submit(_kwargs, worker=3)
    assert isinstance(info.value, ValueError)
    assert "got 3" in str(info.value)
    bound = functools.partial(_kwargs, worker=3)
    assert threads.submit_and_gather(bound) == {"worker": 3}


def test_map_with_worker_pins_every_item(threads: compat.ThreadExecutor) -> None:
    w = threads.get_workers()[0]
    futures = threads.map_async(operator.add, [1, 2, 3], [4, 5, 6], worker=w)
    assert [f.worker for f in futures] == [w, w, w]
    result = threads.map(operator.add, [1, 2, 3], [4, 5, 6], worker=w)
    assert result == [5, 7, 9]
    assert isinstance(result, list)


def test_map_async_default_spreads_items_in_chunks_over_workers(
    threads: compat.ThreadExecutor,
) -> None:
    a, b = threads.get_workers()
    futures = threads.map_async(operator.neg, range(6), chunksize=2)
    assert [f.worker for f in futures] == [a, a, b, b, a, a]


def test_gather_of_map_async_is_a_flat_list(threads: compat.ThreadExecutor) -> None:
    futures = threads.map_async(operator.mul, range(7), range(7))
    assert len(futures) == 7
    assert threads.gather(futures) == [i * i for i in range(7)]


def test_starmap_and_starmap_async(threads: compat.ThreadExecutor) -> None:
    pairs = [(1, 4), (2, 5), (3, 6)]
    assert threads.starmap(operator.add, pairs) == [5, 7, 9]
    futures = threads.starmap_async(operator.add, pairs, worker=threads.get_workers()[1])
    assert threads.gather(futures) == [5, 7, 9]


# ------------------------------------------------------------------------- allocators


def test_arrange_slices_with_the_original_rounding(threads: compat.ThreadExecutor) -> None:
    with compat.ThreadExecutor(3) as executor:
        alloc = executor.arrange(np.arange(10))
        assert [len(c) for c in alloc] == [4, 4, 2]  # ceil(10/3) per worker, the rest last
    assert mepa.arrange(np.arange(10), 3).sizes == (4, 3, 3)  # mepa: largest remainder


def test_arrange_distribute_reassemble_with_shuffle(threads: compat.ThreadExecutor) -> None:
    data = np.arange(25) * 3
    alloc = threads.arrange(data, shuffle=True)
    futures = threads.distribute(operator.neg, alloc)
    assert [f.worker for f in futures] == threads.get_workers()
    np.testing.assert_array_equal(alloc.reassemble(threads.gather(futures)), -data)
    assert alloc.finished


def test_arrange_shuffle_true_is_the_original_seed_zero() -> None:
    alloc = compat.SingleTaskAllocator(np.arange(20), shuffle=True)
    expected = np.arange(20)
    np.random.RandomState(0).shuffle(expected)
    np.testing.assert_array_equal(alloc.shuffle_mask, expected)


def test_arrange_many_and_reassemble_of_each_result_list(
    threads: compat.ThreadExecutor,
) -> None:
    a, b = np.arange(9), np.arange(9) * 10.0
    alloc = threads.arrange_many(a, b, shuffle=3)

    def task(pair: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        x, y = pair
        return x + 1, y * 2

    results = threads.gather(threads.distribute(task, alloc))
    res_a, res_b = alloc.reassemble([r[0] for r in results], [r[1] for r in results])
    np.testing.assert_array_equal(res_a, a + 1)
    np.testing.assert_array_equal(res_b, b * 2)


def test_arrange_many_iterates_tuples_of_slices() -> None:
    with compat.ThreadExecutor(3) as executor:
        chunks = list(executor.arrange_many(np.arange(7), np.arange(7, 14)))
    assert [(x.tolist(), y.tolist()) for x, y in chunks] == [
        ([0, 1, 2], [7, 8, 9]), ([3, 4, 5], [10, 11, 12]), ([6], [13]),
    ]


def test_allocator_completeness_with_float_weights() -> None:
    # metalpy's own tests/test_allocator.py
    weights = [0.91, 0.4826, 0.11, 0.6739, 0.759, 0.0001]
    alloc = compat.SingleTaskAllocator(np.arange(100), total=sum(weights))
    for w in weights:
        alloc.slice(w)
    assert alloc.finished


def test_allocator_assign_slice_iter_finished_inverse_shuffle() -> None:
    workers = [compat.Worker("w-0", 2), compat.Worker("w-1", 1)]
    alloc = compat.SingleTaskAllocator(np.arange(6), total=3, shuffle=np.array([5, 4, 3, 2, 1, 0]))
    assert alloc.assign(workers[0]).tolist() == [5, 4, 3, 2]
    assert not alloc.finished
    assert alloc.slice(1).tolist() == [1, 0]
    assert alloc.finished
    np.testing.assert_array_equal(alloc.inverse_shuffle(np.array([5, 4, 3, 2, 1, 0])), range(6))
    again = compat.SingleTaskAllocator(np.arange(6), total=3)
    assert [c.tolist() for c in again.iter(workers)] == [[0, 1, 2, 3], [4, 5]]
    with pytest.raises(mepa.AllocationError, match="one data argument"):
        again.reassemble([1], [2])


def test_arrange_of_a_list_hands_lists_to_tasks(threads: compat.ThreadExecutor) -> None:
    names = ["a", "b", "c", "d", "e"]
    alloc = threads.arrange(names)
    got = threads.gather(threads.distribute(lambda part: (type(part), part), alloc))
    assert [t for t, _ in got] == [list, list]
    assert [p for _, p in got] == [["a", "b", "c"], ["d", "e"]]
    shuffled = threads.gather(
        threads.distribute(lambda part: part, threads.arrange(names, shuffle=1))
    )
    assert all(isinstance(p, list) for p in shuffled)
    assert sorted(shuffled[0] + shuffled[1]) == names


# ------------------------------------------------------------------------- workers


def test_worker_constructor_verbose_and_settable_weight(capsys: pytest.CaptureFixture[str]) -> None:
    compat.Worker("oddname", 2)
    assert "WARNING: worker's name must follow" in capsys.readouterr().out
    w = compat.Worker("oddname", 2, verbose=False)
    assert capsys.readouterr().out == ""
    assert (w.get_name(), w.get_weight(), w.get_group(), w.get_in_group_id()) == (
        "oddname", 2.0, "oddname", 0,
    )
    assert compat.Worker("gpu-node-3", verbose=False).id == 3
    w.weight = 5
    assert w.weight == 5.0
    with pytest.raises(WorkerSpecError, match="finite and >= 0"):
        w.weight = -1
    with pytest.raises(AttributeError, match=r"only worker\.weight can be assigned"):
        w.name = "other"  # type: ignore[misc]


def test_changed_weight_changes_the_next_arrange() -> None:
    with compat.LinearExecutor(2) as executor:
        executor.get_workers()[0].weight = 3
        assert [len(c) for c in executor.arrange(np.arange(8))] == [6, 2]


def test_get_workers_is_a_list_with_the_original_names() -> None:
    with compat.LinearExecutor(2) as linear, compat.ThreadExecutor(n_units=2) as thread:
        assert [w.name for w in linear.get_workers()] == ["local-0", "local-1"]
        assert [w.name for w in thread.get_workers()] == ["thread-0", "thread-1"]
        assert isinstance(linear.get_workers(), list)
        assert all(isinstance(w, compat.Worker) for w in linear.get_workers())
    process = compat.ProcessExecutor(n_units=2)
    try:
        assert [w.name for w in process.get_workers()] == ["proc-0", "proc-1"]
    finally:
        process.shutdown()


def test_extract_by_name_matches_as_the_original() -> None:
    with compat.LinearExecutor(3) as executor:
        assert len(executor.extract_by_name("local").get_workers()) == 3
        assert executor.extract_by_name(re.compile("ocal")).get_workers() == []  # match, not search
        assert len(executor.extract_by_name(re.compile(r"local-[01]")).get_workers()) == 2
        empty = executor.extract_by_name("gpu")  # no error
        assert empty.get_workers() == []
        assert empty.distribute(operator.neg, 1) == []
        one = executor.get_workers()[2]
        sub = executor.extract_by_name(compat.Worker("local-2", verbose=False))
        assert sub.get_workers() == [one]
        assert executor.extract_by_name(lambda w: w.id == 1).get_workers()[0].name == "local-1"
        assert sub.gather(sub.distribute(_where, sub.arrange(np.arange(4)))) == ["MainThread"]


# ------------------------------------------------------------------------- executors


def test_linear_executor_runs_tasks_when_gathered() -> None:
    ran: list[int] = []
    with compat.LinearExecutor(2) as executor:
        first = executor.submit(ran.append, 1)
        executor.submit(ran.append, 2)  # never gathered: never runs
        assert ran == []
        assert isinstance(first, compat.LazyEvaluator)
        executor.gather(first)
        assert ran == [1]
        chained = executor.submit(operator.add, executor.submit(operator.mul, 2, 3), 1)
        assert executor.gather(chained) == 7
    assert ran == [1]


def test_lazy_evaluator() -> None:
    calls: list[int] = []

    def f(a: int, b: int = 0) -> int:
        calls.append(a)
        return a + b

    lazy = compat.LazyEvaluator(f, 1, b=2)
    assert lazy["b"] == 2
    lazy["b"] = 3
    assert (lazy.get(), lazy.result(), calls) == (4, 4, [1])


def test_constructor_keywords_n_units() -> None:
    with compat.LinearExecutor(n_units=3) as linear, compat.ThreadExecutor(n_units=1) as thread:
        assert (linear.get_n_workers(), thread.get_n_workers()) == (3, 1)
        assert isinstance(linear, mepa.LinearExecutor)
        assert isinstance(linear, compat.Executor)


def test_process_executor_shares_memory_as_the_original_answered() -> None:
    with compat.ProcessExecutor(n_units=2) as executor:
        assert executor.shares_memory() is True
        assert executor.needs_serialization() is True
        out = executor.create_shared_array((4,), np.float64)

        def fill(i: int) -> None:
            out[i] = i * 1.5

        executor.gather(executor.map(fill, range(4)))
        np.testing.assert_array_equal(out, np.arange(4) * 1.5)


class _QueueExecutor(compat.Executor):
    """An executor written to the original's abstract methods: threads and a queue."""

    def __init__(self) -> None:
        super().__init__(event_interval=0.05)
        self.workers = [compat.Worker("mine-0"), compat.Worker("mine-1")]
        self.queue: queue.Queue[Any] = queue.Queue()
        self.pool = threading.BoundedSemaphore(8)
        self.pinned: list[Any] = []

    def do_submit(self, func: Any, *args: Any, workers: Any = None, **kwargs: Any) -> Any:
        self.pinned.append(workers)
        return compat.LazyEvaluator(func, *args, **kwargs)

    def get_workers(self) -> list[compat.Worker]:
        return self.workers

    def _gather_single(self, future: Any) -> Any:
        return future.result()

    def get_worker_context(self) -> compat.WorkerContext:
        return compat.QueueLikeWorkerContext(self.queue)

    def receive_events(self, timeout: float) -> Iterator[tuple[Any, Any]]:
        while True:
            try:
                yield self.queue.get(True, timeout)
            except queue.Empty:
                yield None, None


def test_executor_subclass_written_to_the_original_abstract_methods() -> None:
    with _QueueExecutor() as executor:
        assert executor.map(operator.add, [1, 2], [3, 4]) == [4, 6]
        alloc = executor.arrange(np.arange(6))
        result = alloc.reassemble(executor.gather(executor.distribute(operator.neg, alloc)))
        np.testing.assert_array_equal(result, -np.arange(6))
        assert executor.pinned[-2:] == [[w] for w in executor.workers]
        got: list[int] = []
        ctx = executor.register(got.append)
        executor.gather([executor.submit(ctx.fire, 5), executor.submit(ctx.fire, 6)])
        assert _wait_for(lambda: sorted(got) == [5, 6])
        executor.off(ctx)
        assert executor.check_if_events_thread_are_required() is False


def test_worker_context_fires_named_events_from_threads_and_processes() -> None:
    for kind in (compat.ThreadExecutor, compat.ProcessExecutor):
        with kind(n_units=2) as executor:
            got: list[tuple[str, int]] = []
            bound = executor.on("found", lambda x: got.append(("on", x)))
            assert bound.event == "found"
            ctx = executor.get_worker_context()
            executor.gather([executor.submit(ctx.fire, "found", i) for i in range(3)])
            executor.gather(executor.submit(ctx.bind("found").fire, 9))
            assert sorted(got) == [("on", 0), ("on", 1), ("on", 2), ("on", 9)], kind


def test_original_event_methods_on_mepa_executors(threads: compat.ThreadExecutor) -> None:
    got: list[Any] = []
    threads.on("e", lambda *a, **k: got.append((a, k)))
    with threads.monitor_events():
        threads.dispatch_event("e", (1,), {"k": 2})
    assert _wait_for(lambda: got == [((1,), {"k": 2})])
    assert threads.check_if_events_thread_are_required() is False
    assert list(threads.receive_events(0.01)) == []


def test_bound_worker_contexts() -> None:
    fired: list[Any] = []

    class Recorder(compat.WorkerContext):
        def fire(self, event: Any, *args: Any, **kwargs: Any) -> None:
            fired.append((event, args, kwargs))

    indexed = Recorder().bind("e", 2)
    assert isinstance(indexed, compat.IndexedBoundWorkerContext)
    assert indexed.idx == 2
    indexed.fire(1, k=2)
    assert fired == [("e", (1,), {"k": 2})]
    assert "idx" not in indexed.__getstate__()


# ------------------------------------------------------------------------- progress


def test_progress_registered_only_by_tasks_closes_when_they_finish(
    threads: compat.ThreadExecutor,
) -> None:
    bar = threads.progress(file=io.StringIO())
    assert isinstance(bar, compat.ParallelProgress)
    assert isinstance(bar, mepa.Progress)

    def task(n: int) -> None:
        bar.reset(n)  # the original's name for register
        for _ in range(n):
            bar.update(1)
        bar.close()

    first = threads.submit(task, 3)
    first.result()  # its registration is closed, and no other task is running
    assert not bar.finished  # the original closed here, and lost what the next task reported
    second = threads.submit(task, 4)
    threads.gather([first, second])
    assert bar.finished
    assert (bar.n, bar.total) == (7, 7)
    assert bar.disable


def test_progress_of_mepa_waits_for_the_creator() -> None:
    with mepa.ThreadExecutor(2) as executor:
        bar = executor.progress(file=io.StringIO())

        def task() -> None:
            with bar(2):
                bar.update(2)

        executor.gather([executor.submit(task) for _ in range(2)])
        assert not bar.finished
        bar.close()
        assert bar.finished


def test_progress_with_a_total_closes_when_the_creator_closes(
    threads: compat.ThreadExecutor,
) -> None:
    bar = threads.progress(total=4, file=io.StringIO())
    threads.gather(threads.distribute(lambda: bar.update(2)))
    assert not bar.finished
    bar.close()
    assert bar.finished
    assert bar.n == 4


def test_progress_iters_in_a_linear_task() -> None:
    with compat.LinearExecutor(2) as executor:
        bar = executor.progress(file=io.StringIO())
        alloc = executor.arrange(np.arange(10))
        result = executor.gather(executor.distribute(lambda c: list(bar.iters(c)), alloc))
        assert sum(len(r) for r in result) == 10
        assert bar.finished
        assert bar.n == 10


# ------------------------------------------------------------------------- utils


def test_utils_of_the_original(threads: compat.ThreadExecutor) -> None:
    assert compat.structured_traverse({"a": [1, (2,)]}, str) == {"a": ["1", "(2,)"]}
    assert compat.traverse_args([1], {"k": 2}, operator.neg) == ([-1], {"k": -2})
    assert compat.check_workers(None, None) is None
    assert compat.check_workers(1, None) == [1]
    assert compat.is_serial() is True
    assert threads.submit_and_gather(compat.is_serial) is False
    w = compat.Worker("a-0")
    assert compat.extract_weights([w, 2.0]) == [1.0, 2.0]
    assert compat.extract_weights(threads) == [1.0, 1.0]


@pytest.mark.dask
@pytest.mark.timeout(240)
def test_dask_executor_scheduler_addr_and_original_shutdown() -> None:
    from .dask_cluster import DaskCluster

    with DaskCluster(n_workers=1) as cluster:
        executor = compat.DaskExecutor(scheduler_addr=cluster.address, shutdown_cluster=False)
        assert executor.submit_and_gather(operator.add, 1, 2, worker=executor.get_workers()[0]) == 3
        executor.shutdown()
        assert cluster._scheduler is not None
        assert cluster._scheduler.poll() is None

        with compat.DaskExecutor(cluster.address) as executor:
            assert executor.map(operator.neg, [1, 2]) == [-1, -2]
            assert executor.needs_serialization()
            assert not executor.shares_memory()
        # As the original's client.shutdown(): the scheduler it connected to exits.
        cluster._scheduler.wait(60)
        assert cluster._scheduler.returncode is not None


# ------------------------------------------------------------------------- the seed README


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("name", "stream", "expected"),
    [("seed_parallel_utility.py", "stderr", "20/20")],  # its bar is made with total=0
)
def test_seed_readme_examples_with_their_metalpy_imports(
    name: str, stream: str, expected: str, tmp_path: Path
) -> None:
    """The seed README's examples as written there (``from metalpy.mepa import ...``)."""
    root = Path(__file__).resolve().parent.parent
    code = (root / "examples" / name).read_text()
    assert "from mepa import" in code
    script = tmp_path / name
    script.write_text(
        "import mepa.compat.metalpy\nmepa.compat.metalpy.install()\n"
        + code.replace("from mepa import", "from metalpy.mepa import")
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=150, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert expected in getattr(proc, stream), (proc.stdout[-500:], proc.stderr[-500:])
