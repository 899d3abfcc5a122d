"""Helpers shared by the scenarios: mepa lookup, pools of each library, PID probes."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import _kernels as k

__all__ = [
    "REPO_ROOT",
    "Resources",
    "allclose_check",
    "dask_pids",
    "equal_check",
    "joblib_parallel",
    "loky_executor",
    "mepa_attr",
    "mepa_executor",
    "mepa_pids",
    "mpire_pool",
    "probe_count",
    "stop_mepa_worker_pools",
    "timed_once",
]

#: The checkout holding ``mepa/`` and ``benchmarks/``; put on ``PYTHONPATH`` for subprocesses.
REPO_ROOT = Path(__file__).resolve().parents[2]

MepaKind = str  # "process" | "process-keep-heap" | "thread" | "dask" | "linear"


def probe_count(workers: int) -> int:
    """Items of a PID probe: enough 20 ms tasks for every worker to get some."""
    return 4 * workers


def mepa_attr(name: str) -> Any:
    """``getattr(mepa, name)``; raises ImportError/AttributeError while mepa lacks it."""
    module = importlib.import_module("mepa")
    return getattr(module, name)


def mepa_executor(stack: contextlib.ExitStack, kind: MepaKind, workers: int) -> Any:
    """A mepa executor of ``kind`` with ``workers`` workers, closed by ``stack``.

    This is the one place the benchmarks construct mepa executors: if a constructor's signature
    changes, change it here.
    """
    if kind in ("process", "process-keep-heap"):
        cls = mepa_attr("ProcessExecutor")
        stack.callback(stop_mepa_worker_pools)  # runs after the executor's own shutdown
        ex = cls(workers, keep_worker_heap=True) if kind == "process-keep-heap" else cls(workers)
    elif kind == "thread":
        ex = mepa_attr("ThreadExecutor")(workers)
    elif kind == "dask":
        ex = mepa_attr("DaskExecutor")(n_workers=workers)
    elif kind == "linear":
        ex = mepa_attr("LinearExecutor")()
    else:
        raise ValueError(f"kind must be process, thread, dask or linear, got {kind!r}")
    return stack.enter_context(ex)


def stop_mepa_worker_pools() -> None:
    """Stop the worker processes mepa keeps alive between process executors, if it does."""
    stop = getattr(importlib.import_module("mepa"), "shutdown_worker_pools", None)
    if callable(stop):
        stop()


def mepa_pids(ex: Any, workers: int) -> Callable[[], Sequence[int]]:
    """PID probe of a mepa process executor (a map of :func:`~._kernels.slow_getpid`).

    ``chunksize=1`` so that the probe's tasks are not batched onto one worker.
    """
    return lambda: list(ex.map(k.slow_getpid, range(probe_count(workers)), chunksize=1))


def loky_executor(stack: contextlib.ExitStack, workers: int) -> Any:
    """``loky.get_reusable_executor(workers)``, shut down (waiting) by ``stack``."""
    import loky

    ex = loky.get_reusable_executor(max_workers=workers)
    stack.callback(ex.shutdown, wait=True)
    return ex


def joblib_parallel(stack: contextlib.ExitStack, workers: int) -> Any:
    """``joblib.Parallel(n_jobs=workers)``; its reusable loky workers are shut down by ``stack``."""
    from joblib import Parallel

    def _shutdown() -> None:
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor(max_workers=workers).shutdown(wait=True)

    stack.callback(_shutdown)
    return Parallel(n_jobs=workers)


def mpire_pool(stack: contextlib.ExitStack, workers: int) -> Any:
    """``mpire.WorkerPool(workers)`` kept alive between maps, terminated by ``stack``.

    Workers are spawned rather than forked: the benchmark process runs threads (Dask client,
    event dispatchers) that a fork would copy in an arbitrary state.
    """
    from mpire import WorkerPool

    pool = WorkerPool(n_jobs=workers, keep_alive=True, start_method="spawn")
    return stack.enter_context(pool)


def timed_once(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes (for setup-time measurements reported as notes)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def allclose_check(expected: Callable[[], np.ndarray]) -> Callable[[object], None]:
    """A result check: the output equals ``expected()`` to floating-point tolerance."""

    def _check(out: object) -> None:
        want = expected()
        got = np.asarray(out)
        if got.shape != want.shape:
            raise AssertionError(f"wrong result shape: expected {want.shape}, got {got.shape}")
        if not np.allclose(got, want):
            bad = int(np.count_nonzero(~np.isclose(got, want)))
            raise AssertionError(f"wrong result: {bad} of {want.size} elements differ")

    return _check


def equal_check(expected: object) -> Callable[[object], None]:
    """A result check: ``list(out) == expected``."""

    def _check(out: object) -> None:
        got = list(out)  # type: ignore[call-overload]
        if got != expected:
            raise AssertionError(
                f"wrong result: first items {got[:5]!r}, expected {expected!r:.60}"
            )

    return _check


class Resources:
    """Pools shared by the groups of one scenario, closed when the scenario ends.

    Only the Dask ``LocalCluster`` is shared (it takes seconds to start); everything else is
    created per group so that a failure stays local.
    """

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._client: Any = None
        self._client_error: BaseException | None = None

    def dask_client(self, workers: int) -> Any:
        """A client of a ``workers``-process ``LocalCluster`` (one thread each), created once."""
        if self._client_error is not None:
            raise RuntimeError(
                f"the shared LocalCluster failed to start: {self._client_error}"
            ) from self._client_error
        if self._client is None:
            try:
                from distributed import Client, LocalCluster

                logging.getLogger("distributed").setLevel(logging.ERROR)
                cluster = self._stack.enter_context(
                    LocalCluster(
                        n_workers=workers,
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=None,
                        silence_logs=logging.ERROR,
                    )
                )
                self._client = self._stack.enter_context(Client(cluster, set_as_default=False))
            except BaseException as exc:
                self._client_error = exc
                raise
        return self._client

    def close(self) -> None:
        """Close the shared client and cluster."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._stack.close()
        self._client = None


def dask_pids(client: Any) -> Callable[[], Sequence[int]]:
    """PID probe of a Dask cluster: ``os.getpid`` on every worker."""
    return lambda: list(client.run(os.getpid).values())
