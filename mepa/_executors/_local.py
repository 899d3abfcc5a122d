"""Executors that run tasks in the host process: in the caller's thread, or in a thread pool."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

from .._worker import Worker, make_workers, physical_cores
from ._base import Executor

__all__ = ["LinearExecutor", "ThreadExecutor"]


class LinearExecutor(Executor):
    """Runs each task at once, in the caller's thread, in submission order.

    Meant for debugging: a breakpoint or ``pdb.pm()`` inside a task works as in plain Python,
    and the semantics (futures, events, progress, allocations) are those of every other
    executor, so the same code runs unchanged on threads, processes or Dask.

    Parameters
    ----------
    n_workers
        Number of logical workers, which decides how :meth:`arrange` splits data;
        ``None`` means one per physical core.

    Examples
    --------
    >>> with LinearExecutor(2) as executor:
    ...     executor.gather(executor.submit(pow, 2, 10))
    1024
    """

    def __init__(self, n_workers: int | None = None) -> None:
        super().__init__(make_workers("linear", n_workers, physical_cores()))

    def shares_memory(self) -> bool:
        """Tasks run in the host's memory: ``True``."""
        return True

    def _engine_submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        worker: Worker | None,
    ) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                raise
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future

    def _engine_shutdown(self, wait: bool) -> None:
        pass


class ThreadExecutor(Executor):
    """Runs tasks in a pool of threads of the host process.

    Best for NumPy, SciPy and other code that releases the GIL: arrays are shared, never
    copied, so even memory-bound work scales.

    Parameters
    ----------
    n_workers
        Number of threads; ``None`` means one per physical core.
    """

    def __init__(self, n_workers: int | None = None) -> None:
        super().__init__(make_workers("thread", n_workers, physical_cores()))
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=len(self.workers), thread_name_prefix="mepa-thread"
        )

    def shares_memory(self) -> bool:
        """Tasks run in the host's memory: ``True``."""
        return True

    def _engine_submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        worker: Worker | None,
    ) -> concurrent.futures.Future[Any]:
        return self._pool.submit(fn, *args, **kwargs)

    def _engine_shutdown(self, wait: bool) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def _interrupt(self, pending: list[concurrent.futures.Future[Any]]) -> None:
        super()._interrupt(pending)
