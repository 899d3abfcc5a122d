"""Helpers shared by the scenarios: mepa lookup, pools of each library, PID probes.

Every helper that starts a pool or a cluster takes the variant's ``ExitStack`` and registers
its shutdown there, so that the pool lives only during its variant's block (see
:mod:`benchmarks._harness`).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import _kernels as k

__all__ = [
    "REPO_ROOT",
    "SharedDask",
    "allclose_check",
    "dask_client",
    "dask_pids",
    "dask_scatter_submit_gather",
    "equal_check",
    "joblib_parallel",
    "loky_executor",
    "mepa_attr",
    "mepa_executor",
    "mepa_pids",
    "mpire_pool",
    "probe_count",
    "ray_session",
    "stop_mepa_worker_pools",
    "stop_process",
    "timed_once",
]

#: The checkout holding ``mepa/`` and ``benchmarks/``; put on ``PYTHONPATH`` for subprocesses.
REPO_ROOT = Path(__file__).resolve().parents[2]

MepaKind = str  # "process" | "process-plain-heap" | "thread" | "dask" | "ray" | "linear"


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

    Pools a mepa version keeps between process executors are stopped when the last process
    executor made here closes (see :class:`_PoolUsers`), so that no idle mepa pool outlives
    its variant's block.
    """
    if kind in ("process", "process-plain-heap"):
        cls = mepa_attr("ProcessExecutor")
        _POOL_USERS.enter(stack)  # its exit callback runs after the executor's own shutdown
        ex = cls(workers, keep_worker_heap=False) if kind == "process-plain-heap" else cls(workers)
    elif kind == "thread":
        ex = mepa_attr("ThreadExecutor")(workers)
    elif kind == "dask":
        ex = mepa_attr("DaskExecutor")(n_workers=workers)
    elif kind == "linear":
        ex = mepa_attr("LinearExecutor")()
    elif kind == "ray":  # on the group's local Ray, shared with Ray written by hand
        ex = mepa_attr("RayExecutor")(ray_session(stack, workers), n_workers=workers)
    else:
        raise ValueError(f"kind must be process, thread, dask, ray or linear, got {kind!r}")
    return stack.enter_context(ex)


def stop_mepa_worker_pools() -> None:
    """Stop the worker processes mepa keeps alive between process executors, if it does."""
    stop = getattr(importlib.import_module("mepa"), "shutdown_worker_pools", None)
    if callable(stop):
        stop()


class _PoolUsers:
    """Counts the open process executors of :func:`mepa_executor`; the last one stops the pools.

    Each process executor has its own workers, stopped by its shutdown; this also stops, at
    the end of a group, any pool a mepa version that shares pools between executors keeps
    (a group's baseline and a variant may both be mepa process executors: ``shuffled_map``,
    ``events``; stopping a shared pool at the variant's teardown would make the baseline's
    next timed call start new workers).
    """

    def __init__(self) -> None:
        self.count = 0

    def enter(self, stack: contextlib.ExitStack) -> None:
        """Count one more executor; ``stack`` counts it out when it closes."""
        self.count += 1
        stack.callback(self._exit)

    def _exit(self) -> None:
        self.count -= 1
        if self.count == 0:
            stop_mepa_worker_pools()


_POOL_USERS = _PoolUsers()


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


def stop_process(proc: Any, conn: Any) -> None:
    """Stop a ``multiprocessing`` process started by a variant: ask, wait, then terminate it."""
    with contextlib.suppress(OSError):  # it may be gone already
        conn.send(None)
    proc.join(10)
    if proc.is_alive():
        proc.terminate()
        proc.join(10)
    conn.close()


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


def dask_client(stack: contextlib.ExitStack, workers: int) -> Any:
    """A client of a new ``workers``-process ``LocalCluster`` (one thread each) closed by ``stack``.

    Each variant that needs Dask starts its own cluster (a few seconds, untimed) and closes it
    at the end of its block: an idle cluster takes about 15% of a core (heartbeats, monitors)
    from whatever is timed next to it.
    """
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    stack.callback(_quietly, cluster.close)
    client = Client(cluster, set_as_default=False)
    stack.callback(_quietly, client.close)
    return client


class _RaySession:
    """One local Ray (127.0.0.1, its own temporary directory) for the Ray variants of a group.

    Ray allows one connection per process, so mepa's ``RayExecutor`` and Ray written by hand
    share it: the first user starts it (untimed, some seconds), the last one's ``ExitStack``
    stops it. A group's baseline lives for the whole group, so one Ray serves all its pairs.
    It offers ``2 * workers`` CPUs: the executor's actors hold one each while they live, and
    the hand-written tasks (one CPU each) of the baseline timed next to them need ``workers``.
    """

    def __init__(self) -> None:
        self.users = 0
        self.address = ""
        self.temp_dir: str | None = None

    def enter(self, stack: contextlib.ExitStack, workers: int) -> str:
        if self.users == 0:
            from mepa._executors._ray import start_local_ray

            self.temp_dir = tempfile.mkdtemp(prefix="mepa-ray-bench-")
            self.users += 1  # stopped below even if it failed halfway
            stack.callback(self._exit)
            self.address = start_local_ray(2 * workers, self.temp_dir)
            return self.address
        self.users += 1
        stack.callback(self._exit)
        return self.address

    def _exit(self) -> None:
        self.users -= 1
        if self.users == 0:
            from mepa._executors._ray import stop_local_ray

            temp_dir, self.temp_dir = self.temp_dir, None
            stop_local_ray(temp_dir)


_RAY = _RaySession()


def ray_session(stack: contextlib.ExitStack, workers: int) -> str:
    """The address of the local Ray of ``workers`` CPUs this process is connected to.

    Started by its first user, stopped when the last ``stack`` using it closes.
    """
    return _RAY.enter(stack, workers)


def _quietly(close: Callable[[], object]) -> None:
    """Call ``close`` without the warnings Dask emits while a cluster shuts down."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        close()


def dask_pids(client: Any) -> Callable[[], Sequence[int]]:
    """PID probe of a Dask cluster: ``os.getpid`` on every worker."""
    return lambda: list(client.run(os.getpid).values())


def dask_scatter_submit_gather(client: Any, fn: Callable[..., Any], x: np.ndarray) -> np.ndarray:
    """``fn`` over ``x`` on a Dask cluster by hand: one chunk per worker (sorted by address),
    each scattered to its worker, a task pinned there, ``client.gather``, ``np.concatenate``.

    What a Dask user writes without mepa, and what mepa's ``distribute`` should cost at most.
    """
    addresses = sorted(client.scheduler_info(n_workers=-1)["workers"])
    parts = np.array_split(x, len(addresses))
    placed = [
        client.scatter(p, workers=[a], hash=False) for p, a in zip(parts, addresses, strict=True)
    ]
    results = [
        client.submit(fn, f, workers=[a], pure=False)
        for f, a in zip(placed, addresses, strict=True)
    ]
    return np.concatenate(client.gather(results))


class SharedDask:
    """One Dask cluster for several variants of a group, closed by the last one (or at exit).

    Starting a cluster takes seconds (untimed, but it makes the run long); variants compared
    on "the same cluster" should share one anyway. Only one variant runs on it at a time.

    Parameters
    ----------
    workers
        Single-thread worker processes.
    embedded
        ``True``: the cluster is mepa's own, ``DaskExecutor(n_workers=workers)``, and
        :meth:`executor` gives that executor. ``False``: a ``LocalCluster`` from
        :func:`dask_client`.
    """

    def __init__(self, workers: int, *, embedded: bool = False) -> None:
        self.workers = workers
        self.embedded = embedded
        self._stack = contextlib.ExitStack()
        self._executor: Any = None
        self._client: Any = None
        atexit.register(self.close)

    def _open(self, stack: contextlib.ExitStack, last: bool) -> None:
        if last:
            stack.callback(self.close)
        if self._client is None:
            if self.embedded:
                self._executor = mepa_executor(self._stack, "dask", self.workers)
                self._client = self._executor.client
            else:
                self._client = dask_client(self._stack, self.workers)

    def client(self, stack: contextlib.ExitStack, *, last: bool = False) -> Any:
        """The cluster's client (``last``: close the cluster when ``stack`` closes)."""
        self._open(stack, last)
        return self._client

    def executor(self, stack: contextlib.ExitStack, *, last: bool = False) -> Any:
        """The embedded cluster's ``DaskExecutor`` (``embedded=True`` only)."""
        if not self.embedded:
            raise ValueError("executor() needs SharedDask(..., embedded=True)")
        self._open(stack, last)
        return self._executor

    def close(self) -> None:
        self._executor = None
        self._client = None
        self._stack.close()
