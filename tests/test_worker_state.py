"""Per-worker setup and state: built once in each worker by the initializer, reused by tasks."""

from __future__ import annotations

import collections

import numpy as np
import pytest

import mepa
from mepa import LinearExecutor, ProcessExecutor, ThreadExecutor, warm_up, worker_state

from . import state_support as support

pytestmark = pytest.mark.timeout(120)


def make(kind: str, **options: object) -> mepa.Executor:
    return {"thread": ThreadExecutor, "process": ProcessExecutor}[kind](2, **options)


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_each_worker_builds_its_state_once_and_reuses_it(kind: str) -> None:
    with make(kind, initializer=support.build, initargs=(10,)) as executor:
        started = warm_up(executor, support.identity)
        results = executor.gather([executor.submit(support.use, i) for i in range(60)])
    # the warm-up reached every worker, once each
    assert len(started) == 2
    assert len(set(started)) == 2
    tasks_per_worker = collections.Counter(who for who, _, _, _ in results)
    assert set(tasks_per_worker) <= set(started)
    # each worker built its table once (before its first task), and every task reused it
    assert {builds for _, builds, _, _ in results} == {1}
    tables = collections.defaultdict(set)
    for who, _, table, _ in results:
        tables[who].add(table)
    assert all(len(ids) == 1 for ids in tables.values())
    assert [value for _, _, _, value in results] == [(i % 10) ** 2 for i in range(60)]


def test_the_state_is_per_worker_thread() -> None:
    with ThreadExecutor(2, initializer=support.build, initargs=(3,)) as executor:
        warm_up(executor)
        builders = warm_up(executor, lambda: worker_state()["built_by"])
    assert len(set(builders)) == 2
    assert "built_by" not in worker_state()  # the caller's own dict is another one


def test_warm_up_on_the_linear_executor_runs_fn_once_in_the_caller() -> None:
    with LinearExecutor(2) as executor:
        assert warm_up(executor, support.identity) == [support.identity()]
        assert warm_up(executor) == [None]


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_a_numba_kernel_compiled_by_the_initializer_is_not_compiled_by_the_tasks(
    kind: str,
) -> None:
    pytest.importorskip("numba")
    rng = np.random.default_rng(3)
    receivers, cells, strength = rng.random((40, 3)), rng.random((30, 3)) + 2, rng.random(30)
    with make(kind, initializer=support.compile_kernel) as executor:
        # every worker compiled the kernel when it started, all at once, before any task
        assert warm_up(executor, support.signatures) == [1, 1]
        out = mepa.map_array(support.kernel_task, receivers, executor=executor,
                             reduce=list, cells=cells, strength=strength)
    for _, signatures_before, warmed in out:
        assert signatures_before == 1
        assert warmed
    joined = np.concatenate([values for values, _, _ in out])
    d = receivers[:, None, :] - cells[None, :, :]
    expected = (strength / np.einsum("rcj,rcj->rc", d, d) ** 1.5).sum(axis=1)
    assert np.allclose(joined, expected, rtol=1e-12)


def test_an_initializer_that_raises_fails_the_warm_up() -> None:
    with ThreadExecutor(2, initializer=support.build, initargs=("ten",)) as executor, \
            pytest.raises(mepa.InitializerError, match="initializer"):
        warm_up(executor)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((object(),), {}, mepa.ArgumentTypeError, "executor must be a mepa Executor"),
        (("executor", 3), {}, mepa.ArgumentTypeError, "fn must be a callable or None, got int"),
        (("executor",), {"timeout": 0}, mepa.InvalidArgumentError, "timeout must be .* got 0"),
        (("executor",), {"timeout": "1"}, mepa.InvalidArgumentError, "got '1'"),
    ],
)
def test_bad_arguments(args: tuple, kwargs: dict, error: type, match: str) -> None:
    with ThreadExecutor(1) as executor:
        args = tuple(executor if a == "executor" else a for a in args)
        with pytest.raises(error, match=match):
            warm_up(*args, **kwargs)


@pytest.mark.dask
def test_warm_up_sets_up_every_worker_of_a_dask_cluster() -> None:
    """Dask has no initializer=: warm_up(executor, setup, ...) runs it once in each worker
    (one thread each here), and the tasks reuse what it built."""
    from .executors import make_executor

    with make_executor("dask", 2) as executor:
        started = warm_up(executor, support.build, 10)
        assert started == [None, None]
        builders = warm_up(executor, lambda: worker_state()["built_by"])
        results = executor.gather([executor.submit(support.use, i) for i in range(20)])
    assert len(set(builders)) == 2
    assert {who for who, _, _, _ in results} <= set(builders)
    assert [value for _, _, _, value in results] == [(i % 10) ** 2 for i in range(20)]
