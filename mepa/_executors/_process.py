"""Processes on loky's reusable executor, with big arrays in shared memory.

::

    host                                           loky worker process
    ────                                           ───────────────────
    submit(fn, big_array)
      └─ args: arrays >= threshold ─▶ pooled shared-memory segment (one copy, reused)
      └─ cloudpickle(fn, handles) ─────────────▶  attach segment, view (no copy)
                                                  fn(view) -> result
      ◀──────────── handles of result segments ── big result arrays → shared memory
      view of the segment (no copy); the segment is freed with the last view
    distribute(fn, alloc)
      └─ alloc's data ─▶ pooled segment, once ─▶  take own chunk (view, or gather of blocks)
                                                  fn(chunk) -> result, made in its region of
                                                  one output buffer (else copied there); if
                                                  shuffled, also put its rows back in place in
                                                  an ordered buffer
      reassemble: the output (unshuffled) or the ordered buffer (shuffled), no copy
    events: ctx.fire ─ batched ─▶ private AF_UNIX socket (authkey) ─▶ dispatcher thread

Tasks are pickled with cloudpickle, so lambdas and closures defined in ``__main__`` work.
"""

from __future__ import annotations

import concurrent.futures
import re
import threading
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._allocation import Allocation, ChunkSelection, PlacedRows
from .._errors import SerializationError, WorkerCrashedError
from .._heap import run_kept, worker_env
from .._payload import REGION_HELD, SharedResult, dumps_shared, loads_result, run_payload
from .._shm import (
    DEFAULT_THRESHOLD,
    Lease,
    OutputBuffer,
    SegmentPool,
    SegmentRef,
    SharedArray,
    open_region,
)
from .._worker import Worker, make_workers, physical_cores
from ._base import ChunkCall, ChunkHint, DistributePlan, Executor, LazyChunk
from ._futures import TaskFuture

__all__ = ["ProcessExecutor"]

_IDLE_TIMEOUT = 60.0


class ProcessExecutor(Executor):
    """Runs tasks in loky worker processes, reused between executors.

    Parameters
    ----------
    n_workers
        Number of worker processes; ``None`` means one per physical core.
    shared_memory_threshold
        NumPy arrays of at least this many bytes (arguments, chunks and results) travel
        through shared memory instead of being pickled; ``None`` turns this off.
    keep_worker_heap
        Let worker processes reuse the memory they free instead of returning it to the system
        at once (glibc ``malloc`` settings in the workers' environment; a no-op elsewhere).
        NumPy allocates every large temporary afresh; returned to the system, its pages fault
        in and are zeroed again for the next one, which can cost as much as the arithmetic.
        A worker keeps at most 512 MiB free (an eighth of the machine's memory per worker, if
        less), and returns what it holds when a task leaves more than that and after
        10 seconds without work. ``False`` keeps the allocator's defaults.
        Executors with different settings use separate worker pools.

    Notes
    -----
    mepa keeps one loky pool per interpreter and reuses it between executors of the same
    size, so a new ``ProcessExecutor`` starts its first task without spawning processes when
    such a pool is alive. :meth:`shutdown` waits for this executor's tasks; idle worker
    processes exit after a minute, or at once with ``shutdown(wait=False)`` or
    :func:`mepa.shutdown_worker_pools`.

    A worker that dies (a crash, ``os._exit``, the out-of-memory killer) fails the tasks
    it took down with :class:`~mepa.WorkerCrashedError`; the next call starts fresh
    workers.

    In a ``distribute`` over a shuffled allocation, each worker also writes its result's rows
    back to their original positions, so that ``reassemble`` copies nothing; the results
    ``gather`` returns for it are read-only views (copy one to change it, and ``reassemble``
    then puts the rows in place itself).
    """

    def __init__(
        self,
        n_workers: int | None = None,
        *,
        shared_memory_threshold: int | None = DEFAULT_THRESHOLD,
        keep_worker_heap: bool = True,
    ) -> None:
        super().__init__(make_workers("process", n_workers, physical_cores()))
        if shared_memory_threshold is not None and (
            isinstance(shared_memory_threshold, bool)
            or not isinstance(shared_memory_threshold, int)
            or shared_memory_threshold < 0
        ):
            raise ValueError(
                "shared_memory_threshold must be a number of bytes >= 0 or None, got "
                f"{shared_memory_threshold!r}"
            )
        self._threshold = shared_memory_threshold
        if not isinstance(keep_worker_heap, bool):
            raise TypeError(f"keep_worker_heap must be a bool, got {keep_worker_heap!r}")
        self._keep_heap = keep_worker_heap
        self._engine_lock = threading.Lock()
        self._engine: Any = None
        self._segments: SegmentPool | None = None

    # -- shared memory

    def _pool(self) -> SegmentPool:
        with self._engine_lock:
            if self._segments is None:
                self._segments = SegmentPool()
            return self._segments

    def create_shared_array(self, shape: int | tuple[int, ...], dtype: Any = float) -> Any:
        """An uninitialised array in shared memory that tasks write into, in place.

        Passing it (or any view of it) to a task sends a handle, never a copy. Its memory
        returns to the executor's pool when the array and its views are garbage collected.
        """
        self._check_open()
        return self._pool().empty(shape, np.dtype(dtype))

    def scatter(self, data: Any) -> Any:
        """Put a big array in shared memory once; pass the returned array to many tasks.

        Arrays below the threshold, and other objects, are returned unchanged.
        """
        self._check_open()
        if (
            self._threshold is not None
            and isinstance(data, np.ndarray)
            and type(data) is np.ndarray
            and data.dtype != object
            and data.nbytes >= self._threshold
        ):
            shared = self._pool().empty(data.shape, data.dtype)
            np.copyto(shared, data)
            return shared
        return data

    def _prepare_call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        future: TaskFuture[Any],
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        from .._events import run_task

        if self._threshold is None:
            return run_kept, (run_task, fn, *args), kwargs
        hint: _ChunkHint | None = future._hint
        slot: SegmentRef | None = None
        output: OutputBuffer | None = None
        if hint is not None:
            fn = hint.wrap(fn)
            slot, output = hint.slot, hint.output
        pool = self._pool()
        payload, leases = dumps_shared((fn, args, kwargs), pool, self._threshold)
        future._transport = (leases, output)
        return run_kept, (run_task, run_payload, payload, pool.prefix, self._threshold, slot), {}

    def _decode_result(self, future: TaskFuture[Any], value: Any) -> Any:
        transport = future._transport
        if not isinstance(value, SharedResult) or transport is None:
            return value
        _, output = transport
        if value.held:
            self._retire(output)
        return loads_result(value.payload, output)

    def _retire(self, output: OutputBuffer | None) -> None:
        """A worker's array still uses ``output``: never hand its segment out again."""
        segments = self._segments
        if output is not None and segments is not None:
            segments.retire(output.name)

    def _task_finished(self, future: TaskFuture[Any]) -> None:
        transport, future._transport = future._transport, None
        if transport is not None:
            leases, _ = transport
            for lease in leases:
                lease.release()

    def _plan_distribute(self, allocations: list[Allocation]) -> DistributePlan | None:
        if self._threshold is None:
            return None
        big = [a for a in allocations if sum(x.nbytes for x in a.arrays) >= self._threshold]
        if not big:
            return None
        return _SharedPlan(self._pool(), big, self._threshold)

    def _chunk_argument(self, alloc: Allocation, i: int, plan: DistributePlan | None) -> Any:
        if isinstance(plan, _SharedPlan):
            sources = plan.sources.get(id(alloc))
            if sources is not None:
                return _SharedChunk(sources, alloc.selection(i), len(alloc.arrays) > 1)
        return alloc[i]

    # -- engine

    def _loky(self) -> Any:
        with self._engine_lock:
            engine = self._engine
            if engine is None or _is_broken(engine):
                engine = _POOLS.acquire(self, len(self.workers), self._keep_heap)
                self._engine = engine
            return engine

    def _engine_submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        worker: Worker | None,
    ) -> concurrent.futures.Future[Any]:
        return self._loky().submit(fn, *args, **kwargs)  # type: ignore[no-any-return]

    def _engine_shutdown(self, wait: bool) -> None:
        with self._engine_lock:
            engine, self._engine = self._engine, None
            segments, self._segments = self._segments, None
        _POOLS.release(self, engine, kill=not wait)
        if segments is not None:
            segments.close()

    def _interrupt(self, pending: list[concurrent.futures.Future[Any]]) -> None:
        super()._interrupt(pending)
        with self._engine_lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            _POOLS.discard(engine)

    def _make_hub(self) -> Any:
        hub = super()._make_hub()
        hub.process_channel()
        return hub

    def _translate_error(self, exc: BaseException, future: TaskFuture[Any]) -> BaseException:
        from loky.process_executor import TerminatedWorkerError

        if isinstance(exc, TerminatedWorkerError):
            codes = re.search(r"exit codes of the workers are \{(.*?)\}", str(exc))
            exitcode = _first_exit_code(codes.group(1)) if codes else None
            what = f" (exit codes: {codes.group(1)})" if codes else ""
            crash = WorkerCrashedError(
                f"a worker process died while running the task on {future.describe()}{what}; "
                "it may have crashed, called os._exit, or been killed for using too much "
                "memory. The executor starts fresh workers on the next call.",
                exitcode=exitcode,
                chunk=future.chunk,
            )
            crash.__cause__ = exc
            segments = self._segments
            if segments is not None:
                segments.cleanup_leftovers()
            return crash
        if exc.__dict__.pop(REGION_HELD, False) and future._transport is not None:
            self._retire(future._transport[1])
        if _is_pickling_error(exc):
            error = SerializationError(
                f"the task on {future.describe()} or its result could not be pickled: {exc}; "
                "make sure functions, arguments and results are picklable (cloudpickle "
                "handles lambdas and closures; open files, locks and sockets are not)"
            )
            error.__cause__ = exc
            return error
        return exc


class _PoolCache:
    """One loky pool per interpreter, shared by the process executors that fit it.

    Starting worker processes (and importing NumPy in them) takes a good fraction of a
    second, so a pool outlives the executors that used it; its workers exit after
    ``_IDLE_TIMEOUT`` seconds without work and come back on demand. An executor that needs
    another worker count while the shared pool is in use by others gets a pool of its own.
    Unlike ``loky.get_reusable_executor``, the pool is shared by every thread of the host.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shared: Any = None
        self._size: tuple[int, tuple[tuple[str, str], ...]] = (0, ())
        self._users: set[int] = set()
        self._private: dict[int, Any] = {}

    def acquire(self, user: object, n_workers: int, keep_heap: bool = True) -> Any:
        import loky

        env = tuple(sorted(worker_env(n_workers).items())) if keep_heap else ()
        with self._lock:
            if self._shared is not None and _is_broken(self._shared):
                self._shared = None
            if self._shared is not None and self._size == (n_workers, env):
                self._users.add(id(user))
                return self._shared
            if self._shared is None or not (self._users - {id(user)}):
                if self._shared is not None:
                    self._shared.shutdown(wait=False, kill_workers=True)
                self._shared = _new_pool(loky, n_workers, env)
                self._size = (n_workers, env)
                self._users = {id(user)}
                return self._shared
            pool = _new_pool(loky, n_workers, env)
            self._private[id(user)] = pool
            return pool

    def release(self, user: object, engine: Any, kill: bool) -> None:
        with self._lock:
            self._users.discard(id(user))
            private = self._private.pop(id(user), None)
            if kill and engine is not None and engine is self._shared:
                self._shared = None
        if private is not None:
            private.shutdown(wait=not kill, kill_workers=kill)
        elif kill and engine is not None:
            engine.shutdown(wait=False, kill_workers=True)

    def discard(self, engine: Any) -> None:
        """Stop ``engine``'s workers now (Ctrl-C); the next call starts fresh ones."""
        with self._lock:
            if engine is self._shared:
                self._shared = None
            for key, pool in list(self._private.items()):
                if pool is engine:
                    del self._private[key]
        engine.shutdown(wait=False, kill_workers=True)

    def shutdown(self) -> None:
        """Stop every pool and its workers (used by tests and at exit)."""
        with self._lock:
            pools = [self._shared, *self._private.values()]
            self._shared = None
            self._users.clear()
            self._private.clear()
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=True, kill_workers=True)


def _new_pool(loky: Any, n_workers: int, env: tuple[tuple[str, str], ...]) -> Any:
    return loky.ProcessPoolExecutor(
        max_workers=n_workers, timeout=_IDLE_TIMEOUT, env=dict(env) or None
    )


_POOLS = _PoolCache()


def shutdown_worker_pools() -> None:
    """Stop the worker processes kept for reuse between process executors."""
    _POOLS.shutdown()


def _is_broken(engine: Any) -> bool:
    flags = getattr(engine, "_flags", None)
    return flags is None or bool(flags.broken) or bool(flags.shutdown)


class _ChunkHint(ChunkHint):
    """Chunk ``i``'s part of a shared distribute: where its result should go."""

    __slots__ = ("output", "placement", "slot")

    def __init__(
        self,
        output: OutputBuffer | None,
        slot: SegmentRef | None,
        placement: _PlaceRows | None = None,
    ) -> None:
        self.output = output
        self.slot = slot
        self.placement = placement

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Take the chunk in the worker; then, if planned, put the result's rows in place."""
        call = ChunkCall(fn)
        return call if self.placement is None else _Placing(call, self.placement)


class _SharedPlan(DistributePlan):
    """A distribute whose big allocations were copied once into shared memory.

    Every worker then takes its own chunk from the shared source (a view when unshuffled,
    its gather of blocks when shuffled), in parallel, and makes its result in (or copies it
    into) the region of one shared output buffer where its rows sit (see
    :mod:`mepa._regions`), so that unshuffled results come back as
    adjacent views that :meth:`~mepa.Allocation.reassemble` returns without a copy. When the
    first allocation is shuffled, each worker also writes its result's rows to their original
    positions in a second buffer (a :class:`~mepa._allocation.PlacedRows`), which
    ``reassemble`` then returns: the scatter runs in the workers, not on the host.
    """

    def __init__(self, pool: SegmentPool, allocations: list[Allocation], threshold: int) -> None:
        self.sources: dict[int, tuple[SharedArray, ...]] = {}
        self._leases: list[Lease] = []
        try:
            for alloc in allocations:
                if id(alloc) in self.sources:
                    continue
                handles = []
                for array in alloc.arrays:
                    handle = pool.lookup(array)
                    if handle is None:
                        handle = pool.share(array)
                    assert handle.lease is not None
                    self._leases.append(handle.lease)
                    handles.append(handle)
                self.sources[id(alloc)] = tuple(handles)
        except BaseException:
            self._release()
            raise
        first = allocations[0]
        template = first.arrays[0]
        row_bytes = template.dtype.itemsize * int(np.prod(template.shape[1:], dtype=np.int64))
        self._output: OutputBuffer | None = None
        self._regions: list[SegmentRef | None] = [None] * len(first)
        self._placements: list[_PlaceRows | None] = [None] * len(first)
        total = first.n * row_bytes
        if row_bytes and total >= threshold and template.dtype != object:
            self._output = OutputBuffer(pool.lease(total))
            for i, (offset, size) in enumerate(zip(first.offsets, first.sizes, strict=True)):
                self._regions[i] = self._output.region(offset * row_bytes, size * row_bytes)
            if first.shuffled:
                self._plan_placement(pool, first, total, row_bytes)

    def _plan_placement(
        self, pool: SegmentPool, alloc: Allocation, total: int, row_bytes: int
    ) -> None:
        assert self._output is not None
        ordered = OutputBuffer(pool.lease(total))
        placed = PlacedRows(alloc, ordered.owner)
        placed.watch(self._output.owner)
        token = uuid.uuid4().hex
        _PLACEMENTS[token] = placed
        target = ordered.region(0, total)
        for i in range(len(alloc)):
            self._placements[i] = _PlaceRows(target, alloc.selection(i), row_bytes, token, i)

    def hint(self, i: int) -> _ChunkHint:
        return _ChunkHint(self._output, self._regions[i], self._placements[i])

    def finish(self, futures: Sequence[concurrent.futures.Future[Any]]) -> None:
        self._output = None  # the futures' hints keep it alive while needed
        if not futures:
            self._release()
            return
        remaining = [len(futures)]
        lock = threading.Lock()

        def done(_: concurrent.futures.Future[Any]) -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                self._release()

        for future in futures:
            future.add_done_callback(done)

    def _release(self) -> None:
        leases, self._leases = self._leases, []
        for lease in leases:
            lease.release()


class _SharedChunk(LazyChunk):
    """A chunk to take, in the worker, from allocation data in shared memory."""

    __slots__ = ("many", "selection", "sources")

    def __init__(
        self, sources: tuple[SharedArray, ...], selection: ChunkSelection, many: bool
    ) -> None:
        self.sources = sources
        self.selection = selection
        self.many = many

    def __reduce__(self) -> tuple[Any, ...]:
        return (_SharedChunk, (self.sources, self.selection, self.many))

    def resolve(self) -> Any:
        pieces = tuple(self.selection.take(source.open()) for source in self.sources)
        return pieces if self.many else pieces[0]


# Ordered copies waiting for the results of their tasks, by token (see _Placed).
_PLACEMENTS: weakref.WeakValueDictionary[str, PlacedRows] = weakref.WeakValueDictionary()


class _PlaceRows:
    """In the worker: write a chunk's result's rows to their original positions.

    The result must have one row per input row and the row size the plan sized the ordered
    copy for; anything else is returned as it is (``reassemble`` then scatters on the host).
    """

    __slots__ = ("chunk", "row_bytes", "selection", "target", "token")

    def __init__(
        self, target: SegmentRef, selection: ChunkSelection, row_bytes: int, token: str, chunk: int
    ) -> None:
        self.target = target
        self.selection = selection
        self.row_bytes = row_bytes
        self.token = token
        self.chunk = chunk

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _PlaceRows,
            (self.target, self.selection, self.row_bytes, self.token, self.chunk),
        )

    def place(self, result: Any) -> Any:
        """Write ``result``'s rows in place if it fits; return what the host should receive."""
        if (
            type(result) is not np.ndarray
            or result.ndim == 0
            or result.dtype.hasobject
            or len(result) != self.selection.size
            or result.dtype.itemsize * int(np.prod(result.shape[1:], dtype=np.int64))
            != self.row_bytes
        ):
            return result
        n = self.selection.n
        buffer = open_region(self.target)
        rows = buffer[: n * self.row_bytes].view(result.dtype).reshape((n, *result.shape[1:]))
        self.selection.put(rows, result)
        return _Placed(result, self.token, self.chunk)


class _Placing:
    """The callable a worker runs for a chunk whose rows it also puts back in place."""

    __slots__ = ("fn", "placement")

    def __init__(self, fn: Callable[..., Any], placement: _PlaceRows) -> None:
        self.fn = fn
        self.placement = placement

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Placing, (self.fn, self.placement))

    def prepare(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """As :meth:`ChunkCall.prepare`, the rows still put in place after the call."""
        prepare = getattr(self.fn, "prepare", None)
        if prepare is None:
            return self, args, kwargs
        fn, args, kwargs = prepare(args, kwargs)
        return _Placing(fn, self.placement), args, kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.placement.place(self.fn(*args, **kwargs))


class _Placed:
    """A result whose rows the worker wrote to the ordered copy; unpickles to the array."""

    __slots__ = ("array", "chunk", "token")

    #: Where the result array is, for a worker whose result may already be in its slot.
    result_field = "array"

    def __init__(self, array: Any, token: str, chunk: int) -> None:
        self.array = array
        self.token = token
        self.chunk = chunk

    def __reduce__(self) -> tuple[Any, ...]:
        return (_mark_placed, (self.array, self.token, self.chunk))


def _mark_placed(array: Any, token: str, chunk: int) -> Any:
    """On the host: tell the ordered copy that chunk ``chunk`` is in; return the result."""
    placed = _PLACEMENTS.get(token)
    if placed is not None and isinstance(array, np.ndarray):
        placed.mark(chunk, array)
    return array


def _first_exit_code(text: str) -> int | None:
    match = re.search(r"-?\d+", text)
    return int(match.group(0)) if match else None


def _is_pickling_error(exc: BaseException) -> bool:
    import pickle

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, pickle.PicklingError):
            return True
        text = str(current)
        if "pickl" in text.lower() and isinstance(current, (TypeError, AttributeError)):
            return True
        current = current.__cause__ or current.__context__
    return False
