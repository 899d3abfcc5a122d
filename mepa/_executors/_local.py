"""Executors that run tasks in the host process: in the caller's thread, or in a thread pool."""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.thread
import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .._allocation import Allocation
from .._errors import InitializerError
from .._threads import check_inner_threads, run_limited
from .._worker import Worker, make_workers, physical_cores
from ._base import ChunkCall, ChunkHint, DistributePlan, Executor, _LocalChunk, check_initializer
from ._engine import Capabilities
from ._futures import Task, TaskFuture

if TYPE_CHECKING:
    from .._segments import SegmentPool
    from .._shm import OutputBuffer

# Outputs of at least this many bytes are written by the threads into one pooled buffer.
_POOLED_OUTPUT_BYTES = 1 << 20

__all__ = ["LinearExecutor", "ThreadExecutor"]


class _InProcess(Executor):
    """Executors whose tasks run in the host process, in its memory."""

    capabilities = Capabilities(shares_memory=True, shared_arrays=True)


class LinearExecutor(_InProcess):
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

    capabilities = Capabilities(shares_memory=True, shared_arrays=True, asynchronous=False)

    def __init__(self, n_workers: int | None = None) -> None:
        super().__init__(make_workers("linear", n_workers, physical_cores()))
        self._interrupted = threading.local()

    def _engine_submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        worker: Worker | None,
    ) -> concurrent.futures.Future[Any]:
        # Every outcome settles the future, as the stdlib's pools do (SystemExit included),
        # so that shutdown never waits for a future nobody will complete. A Ctrl-C also
        # belongs to the caller: _start re-raises it once the user's future is settled.
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - the future holds it; Ctrl-C re-raised
            future.set_exception(exc)
            if isinstance(exc, KeyboardInterrupt):
                self._interrupted.exc = exc
        else:
            future.set_result(result)
        return future

    def _start(
        self, future: TaskFuture[Any], fn: Callable[..., Any], args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._interrupted.exc = None
        try:
            super()._start(future, fn, args, kwargs)
        finally:
            interrupt, self._interrupted.exc = self._interrupted.exc, None
        if interrupt is not None:
            raise interrupt

    def _engine_shutdown(self, wait: bool) -> None:
        pass


class ThreadExecutor(_InProcess):
    """Runs tasks in a pool of threads of the host process.

    Best for NumPy, SciPy and other code that releases the GIL: arrays are shared, never
    copied, so even memory-bound work scales.

    Parameters
    ----------
    n_workers
        Number of threads; ``None`` means one per physical core.
    initializer, initargs
        As for :class:`concurrent.futures.ThreadPoolExecutor`: each pool thread calls
        ``initializer(*initargs)`` when it starts, before its first task (per-thread setup,
        e.g. compiling a numba kernel). If it raises, the executor is broken: the pending
        tasks and every later ``submit`` fail with :class:`~mepa.InitializerError`.
    inner_threads
        Threads a numba ``parallel=True`` function called from a task may use: each pool thread
        sets ``numba.set_num_threads(inner_threads)`` (numba's count is per thread) once numba
        is imported. 1 by default, so that ``n`` pool threads use ``n`` cores; ``None`` leaves
        numba's default (every core). ``NUMBA_NUM_THREADS`` in the environment, if set, wins.

    Notes
    -----
    Threads scale when the task spends its time in code that releases the GIL: NumPy on large
    arrays (each call on at least some 100,000 elements), numba functions compiled with
    ``nogil=True``, SciPy, most of the C and Fortran libraries. A task that makes many NumPy
    calls on small arrays, or runs Python loops, holds the GIL most of the time: its threads
    take turns and run no faster than one; use a :class:`~mepa.ProcessExecutor` for it.

    The BLAS and OpenMP thread pools are per process, not per thread, so they are not limited
    here: a task calling large matrix products on every thread may want
    ``threadpoolctl.threadpool_limits(1)`` around the parallel part.
    """

    def __init__(
        self,
        n_workers: int | None = None,
        *,
        inner_threads: int | None = 1,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        super().__init__(make_workers("thread", n_workers, physical_cores()))
        self._inner_threads = check_inner_threads(inner_threads)
        self._initializer = check_initializer(initializer, initargs)
        self._init_failures: list[BaseException] = []
        setup = None
        if initializer is not None:
            setup = functools.partial(
                _run_initializer, initializer, tuple(initargs), self._init_failures
            )
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=len(self.workers), thread_name_prefix="mepa-thread", initializer=setup
        )
        self._hold("threads", functools.partial(self._pool.shutdown, wait=False))
        self._buffers: SegmentPool | None = None
        self._buffers_lock = threading.Lock()

    def _engine_submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        worker: Worker | None,
    ) -> concurrent.futures.Future[Any]:
        return self._pool.submit(run_limited, self._inner_threads, fn, *args, **kwargs)

    def _translate_error(self, exc: BaseException, task: Task) -> BaseException:
        if isinstance(exc, concurrent.futures.thread.BrokenThreadPool):
            failures = self._init_failures
            cause = failures[0] if failures else exc
            error = InitializerError(
                f"the initializer {self._initializer} of the thread executor raised "
                f"{type(cause).__name__}: {cause}; the executor cannot run tasks. Fix the "
                "initializer (or its initargs) and create a new executor"
            )
            error.__cause__ = cause
            return error
        return super()._translate_error(exc, task)

    def _engine_shutdown(self, wait: bool) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        with self._buffers_lock:
            buffers, self._buffers = self._buffers, None
        if buffers is not None:
            buffers.close()

    def _plan_distribute(self, allocations: list[Allocation]) -> DistributePlan | None:
        return _ThreadPlan(self, allocations)

    def _chunk_argument(self, alloc: Allocation, i: int, plan: DistributePlan | None) -> Any:
        if alloc.shuffled:
            return _LocalChunk(alloc, i)  # gathered by the thread, in parallel with the others
        return alloc[i]

    def _output_buffer(self, nbytes: int) -> OutputBuffer:
        from .._segments import SegmentPool
        from .._shm import OutputBuffer

        with self._buffers_lock:
            if self._buffers is None:
                self._buffers = SegmentPool()
            buffers = self._buffers
        return OutputBuffer(buffers.lease(nbytes))


class _ThreadPlan(DistributePlan):
    """Threads take their shuffled chunks and write their results into one pooled output.

    When chunk results match the data's row shape and dtype, each thread makes its result in
    (see :mod:`mepa._regions`), or copies it into, the rows of one output buffer that sit
    where :meth:`~mepa.Allocation.reassemble` expects them (unshuffled), so reassembling
    returns that buffer without a copy. The buffer is pooled memory, already paged in, and
    returns to the pool with the last view of it.
    """

    def __init__(self, executor: ThreadExecutor, allocations: list[Allocation]) -> None:
        first = allocations[0]
        template = first.arrays[0]
        self._regions: list[np.ndarray[Any, Any] | None] = [None] * len(first)
        if (
            first.shuffled
            or template.dtype.hasobject
            or template.ndim == 0
            or isinstance(template, np.ma.MaskedArray)  # results keep their own mask
        ):
            return
        nbytes = template.nbytes
        if nbytes < _POOLED_OUTPUT_BYTES:
            return
        output = executor._output_buffer(nbytes)
        whole = output.owner[:nbytes].view(template.dtype).reshape(template.shape)
        for i, (offset, size) in enumerate(zip(first.offsets, first.sizes, strict=True)):
            self._regions[i] = whole[offset:offset + size]

    def hint(self, i: int) -> ChunkHint:
        return _ThreadHint(self._regions[i])


class _ThreadHint(ChunkHint):
    __slots__ = ("region",)

    def __init__(self, region: np.ndarray[Any, Any] | None) -> None:
        self.region = region

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        call = ChunkCall(fn)
        region = self.region
        if region is None:
            return call

        def place(*args: Any, **kwargs: Any) -> Any:
            from .._regions import occupies, region_over

            user_fn, args, kwargs = call.prepare(args, kwargs)
            handler = region_over(region)
            if handler is None:
                return _copy_to_region(user_fn(*args, **kwargs), region)
            handler.enter()  # this thread's context only
            try:
                result = user_fn(*args, **kwargs)
            finally:
                handler.exit()
            if occupies(result, handler) and result.shape == region.shape:
                # Made in place; ``region`` is the same memory, as a view of the output.
                return region if result.dtype == region.dtype else result
            if handler.taken:
                return result  # an array of the task's code lives in the region: leave it
            return _copy_to_region(result, region)

        return place


def _copy_to_region(result: Any, region: np.ndarray[Any, Any]) -> Any:
    """``region``, holding a copy of ``result`` if it has the region's shape and dtype."""
    if (
        type(result) is np.ndarray
        and result.shape == region.shape
        and result.dtype == region.dtype
        and not np.shares_memory(result, region)
    ):
        np.copyto(region, result)
        return region
    return result


def _run_initializer(
    initializer: Callable[..., object], initargs: tuple[Any, ...], failures: list[BaseException]
) -> None:
    """In a pool thread: call the initializer; keep what it raised for the host's error."""
    try:
        initializer(*initargs)
    except BaseException as exc:
        failures.append(exc)
        raise
