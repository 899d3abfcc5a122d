"""Per-worker state: build something once in each worker, reuse it in every task.

What a worker loads, compiles or opens once and keeps for its later tasks (a mesh, a lookup
table, a JIT-compiled kernel, an open file) lives in :func:`worker_state`, a dict of the
worker's own; the executor's ``initializer=`` fills it when the worker starts, and
:func:`warm_up` returns once every worker has, so that no timed or interactive work pays for it::

    Executor(n, initializer=setup) ─▶ each worker, as it starts: setup() ─▶ worker_state()[...]
    warm_up(executor) ─▶ one task per worker, held until all n run at once ─▶ returns
    tasks ─▶ worker_state()[...]                (built once per worker, reused by every task)

A worker is a process of a :class:`~mepa.ProcessExecutor` (its tasks run in its main thread), a
thread of a :class:`~mepa.ThreadExecutor`, a thread of a Dask worker, or the caller's thread
for a :class:`~mepa.LinearExecutor`: the dict is per thread. These are the roles of mpire's
``worker_state`` and ``worker_init``, and of a Dask worker plugin's ``setup``.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from ._errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["warm_up", "worker_state"]

_local = threading.local()

# How often a warm-up task looks whether the others have started (seconds).
_POLL = 0.002


def worker_state() -> dict[str, Any]:
    """The calling worker's own dict, kept from one of its tasks to the next.

    Fill it in the executor's ``initializer=`` (called once in each worker when it starts,
    before its first task) and read it in the tasks: what the initializer put there is built
    once per worker and reused by every task that worker runs.

    Returns
    -------
    dict
        The same dict for every call in the same worker (process of a
        :class:`~mepa.ProcessExecutor`; thread of a :class:`~mepa.ThreadExecutor` or of a Dask
        worker; the caller's thread for a :class:`~mepa.LinearExecutor`), a different one in
        every other worker.

    Notes
    -----
    On a :class:`~mepa.ThreadExecutor` every thread has its own dict, so a mesh stored there is
    loaded once per thread; something all threads may share (read-only) can live in a
    module-level cache instead (:func:`functools.cache`), loaded once per process.

    Examples
    --------
    >>> from mepa import ThreadExecutor, warm_up, worker_state
    >>> def setup(scale):
    ...     worker_state()["table"] = [scale * i for i in range(4)]   # once per worker
    >>> def task(i):
    ...     return worker_state()["table"][i]                        # reused by every task
    >>> with ThreadExecutor(2, initializer=setup, initargs=(10,)) as executor:
    ...     _ = warm_up(executor)
    ...     executor.gather([executor.submit(task, i) for i in range(4)])
    [0, 10, 20, 30]
    """
    state: dict[str, Any] | None = getattr(_local, "state", None)
    if state is None:
        state = _local.state = {}
    return state


def warm_up(
    executor: Any,
    fn: Callable[..., Any] | None = None,
    *args: Any,
    timeout: float = 120.0,
    **kwargs: Any,
) -> list[Any]:
    """Start every worker of ``executor``, and run ``fn(*args, **kwargs)`` once in each.

    One task per worker is submitted, and each waits until all of them have started before it
    calls ``fn``: so every worker takes exactly one (a free worker cannot take a second while
    its first waits), every worker has run its ``initializer=`` when this returns, and the
    workers run their initializers and ``fn`` at the same time. Call it after creating the
    executor and before timed or interactive work, so that starting processes, importing,
    loading meshes and JIT-compiling (numba compiles a kernel on its first call in each
    process) happen there, in parallel, and not in the first tasks.

    Parameters
    ----------
    executor
        A mepa executor. Its workers must share the host's temporary directory, where the
        tasks meet: threads, processes, or a Dask cluster on the host's machine. On Dask (whose
        ``initializer=`` runs once per worker process, not per thread) pass the setup as
        ``fn``: it runs in one thread of each Dask worker.
    fn
        Called once in each worker after its initializer, e.g. a small call of each kernel
        to compile it; ``None`` only starts the workers and runs their initializers.
    *args, **kwargs
        Arguments of ``fn``.
    timeout
        Seconds to wait for all workers to start, > 0.

    Returns
    -------
    list
        What ``fn`` returned in each worker (``None`` each without ``fn``), one item per
        worker, in no particular order. On a :class:`~mepa.LinearExecutor` (which runs its
        tasks one by one in the caller's thread) ``fn`` runs once: one item.

    Raises
    ------
    ArgumentTypeError
        ``executor`` is not an executor, or ``fn`` is not callable.
    InvalidArgumentError
        ``timeout`` is not a number > 0.
    TimeoutError
        Not all workers started within ``timeout``: the executor runs fewer tasks at once than
        it has workers, or they cannot see the host's temporary directory.
    InitializerError
        A worker's initializer raised.
    """
    from ._executors._base import Executor
    from ._executors._local import LinearExecutor

    if not isinstance(executor, Executor):
        raise ArgumentTypeError(
            f"executor must be a mepa Executor, got {type(executor).__name__}: {executor!r}; "
            "pass the executor to warm up, e.g. warm_up(mepa.ProcessExecutor(2))"
        )
    if fn is not None and not callable(fn):
        raise ArgumentTypeError(
            f"fn must be a callable or None, got {type(fn).__name__}: {fn!r}; pass the "
            "function to run once in each worker"
        )
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
        timeout > 0 and math.isfinite(timeout)
    ):
        raise InvalidArgumentError(
            f"timeout must be a finite number of seconds > 0, got {timeout!r}; e.g. "
            "timeout=120"
        )
    task = fn if fn is not None else _nothing
    if isinstance(executor, LinearExecutor):
        return [executor.gather(executor.submit(task, *args, **kwargs))]
    n = len(executor.workers)
    meeting = tempfile.mkdtemp(prefix="mepa-warm-up-")
    try:
        futures = [
            executor.submit(_meet, meeting, n, timeout, task, args, kwargs) for _ in range(n)
        ]
        results: list[Any] = executor.gather(futures, timeout=timeout + 30.0)
        return results
    finally:
        shutil.rmtree(meeting, ignore_errors=True)


def _nothing() -> None:
    return None


def _meet(
    meeting: str, n: int, timeout: float, fn: Callable[..., Any], args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """In a worker: say "here", wait until ``n`` workers have, then call ``fn``."""
    here = os.path.join(meeting, f"{os.getpid()}-{threading.get_ident()}")
    with open(here, "w"):
        pass
    deadline = time.monotonic() + timeout
    while (arrived := len(os.listdir(meeting))) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"warm_up: {arrived} of {n} workers started within timeout={timeout:g} s; the "
                "executor runs fewer tasks at once than it has workers, or its workers do not "
                f"share this machine's temporary directory ({meeting}); raise timeout, or call "
                "fn in the tasks themselves"
            )
        time.sleep(_POLL)
    return fn(*args, **kwargs)
