"""The shared-memory transport: big arrays of tasks and results, for any local engine.

:class:`SharedMemoryTransport` is what an engine whose workers are processes on this machine
uses around its own submit (today :class:`~mepa.ProcessExecutor`)::

    engine._prepare_call(fn, args, kwargs, task)
        call, task.data = transport.encode(fn, args, kwargs, task.hint)
            pickle once (mepa._payload); arrays >= threshold -> leased segments -> handles
        submit call ──────────────────────────────────────────►  run_payload(payload, ...)
                                                                  fn(views) -> result
    engine._decode_result(task, value)  ◄── SharedResult ─────  big arrays -> slot / segments
        transport.decode(task.data, value)   (views, no copy; segments still held retired)
    engine._translate_error(exc, task)
        transport.failed(task.data, exc)     (same, for a task that raised)
    engine._task_finished(task)
        transport.release(task.data)         (argument leases back to the pool)

    distribute: transport.plan_distribute(allocations) copies big allocations into shared
    memory once; chunk_argument(alloc, i, plan) is a lazy chunk each worker takes itself; the
    plan's hints give each chunk's result a region of one output buffer (and, when shuffled,
    a place in an ordered copy: :mod:`mepa._placement`).
"""

from __future__ import annotations

import concurrent.futures
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._allocation import Allocation
from .._chunking import ChunkSelection
from .._errors import ArgumentTypeError, InvalidArgumentError
from .._payload import (
    INPUTS_KEPT,
    REGION_HELD,
    SharedResult,
    dumps_shared,
    loads_result,
    run_payload,
)
from .._placement import _PLACEMENTS, PlacedRows, _PlaceRows, _Placing
from .._segments import Lease, SegmentPool, SegmentRef, SharedArray
from .._shm import OutputBuffer
from .._types import parse_dtype, parse_shape
from ._base import ChunkCall, ChunkHint, DistributePlan, LazyChunk

__all__ = ["SharedMemoryTransport", "TaskArrays"]


class TaskArrays:
    """A task's shared-memory leases (its big arguments) and its planned output buffer.

    What :meth:`SharedMemoryTransport.encode` returns with the call; the engine keeps it
    with the task.
    """

    __slots__ = ("leases", "output")

    def __init__(self, leases: list[Lease], output: OutputBuffer | None) -> None:
        self.leases = leases
        self.output = output



class SharedMemoryTransport:
    """Big NumPy arrays of tasks and results through shared memory, for any local engine.

    An engine whose workers run on this machine (separate processes) submits, instead of
    ``fn(*args, **kwargs)``, the call :meth:`encode` returns; it passes what the worker
    returned to :meth:`decode`, the error it raised to :meth:`failed`, and calls
    :meth:`release` once the task is settled. The transport owns the host's
    :class:`~mepa._segments.SegmentPool` (created at first use, closed by :meth:`close`).

    Parameters
    ----------
    threshold
        NumPy arrays of at least this many bytes travel through shared memory; ``None``
        turns the transport off (everything is pickled). Validated as the executors'
        ``shared_memory_threshold``.
    """

    def __init__(self, threshold: int | None) -> None:
        fix = "pass a number of bytes such as 1 << 20 (the default), or None to pickle arrays"
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, int)
        ):
            raise ArgumentTypeError(
                "shared_memory_threshold must be an int number of bytes >= 0 or None, got "
                f"{type(threshold).__name__}: {threshold!r}; {fix}"
            )
        if threshold is not None and threshold < 0:
            raise InvalidArgumentError(
                "shared_memory_threshold must be a number of bytes >= 0 or None, got "
                f"{threshold!r}; {fix}"
            )
        self.threshold = threshold
        self._lock = threading.Lock()
        self._segments: SegmentPool | None = None

    def pool(self) -> SegmentPool:
        """The host's segment pool, created at the first call (and again after :meth:`close`).

        Returns
        -------
        SegmentPool
            Where arguments, output buffers and shared arrays are leased.
        """
        with self._lock:
            if self._segments is None:
                self._segments = SegmentPool()
            return self._segments

    def empty(self, shape: Any, dtype: Any) -> Any:
        """An uninitialised array in shared memory (what ``create_shared_array`` returns).

        Parameters
        ----------
        shape, dtype
            As for :func:`numpy.empty`.

        Returns
        -------
        numpy.ndarray
            Backed by a pooled segment, returned to the pool when it and its views die.
        """
        return self.pool().empty(parse_shape(shape), parse_dtype(dtype))

    def scatter(self, data: Any) -> Any:
        """``data`` copied into shared memory once if it is a big plain array, else itself.

        Parameters
        ----------
        data
            Anything.

        Returns
        -------
        Any
            An array in shared memory, or ``data`` unchanged.
        """
        if (
            self.threshold is not None
            and isinstance(data, np.ndarray)
            and type(data) is np.ndarray
            and data.dtype != object
            and data.nbytes >= self.threshold
        ):
            shared = self.pool().empty(data.shape, data.dtype)
            np.copyto(shared, data)
            return shared
        return data

    def encode(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        hint: ChunkHint | None,
    ) -> tuple[tuple[Any, ...], TaskArrays] | None:
        """Pickle a task once, its big arrays replaced by handles.

        Parameters
        ----------
        fn, args, kwargs
            The task (``fn`` already wrapped by the engine as it needs).
        hint
            The task's part of a distribute (:meth:`plan_distribute`), or ``None``.

        Returns
        -------
        tuple or None
            ``(call, arrays)``: the worker runs ``call[0](*call[1:])``
            (:func:`~mepa._payload.run_payload`); ``arrays`` goes to :meth:`decode`,
            :meth:`failed` and :meth:`release`. ``None`` when the transport is off.
        """
        if self.threshold is None:
            return None
        slot: SegmentRef | None = None
        output: OutputBuffer | None = None
        if hint is not None:
            fn = hint.wrap(fn)
            if isinstance(hint, _ChunkHint):
                slot, output = hint.slot, hint.output
        pool = self.pool()
        payload, leases = dumps_shared((fn, args, kwargs), pool, self.threshold)
        call = (run_payload, payload, pool.prefix, self.threshold, slot)
        return call, TaskArrays(leases, output)

    def decode(self, arrays: object, value: Any) -> Any:
        """The task's result: the worker's value with its arrays mapped (no copy).

        Parameters
        ----------
        arrays
            What :meth:`encode` returned for the task (anything else: ``value`` is returned).
        value
            What the worker returned.

        Returns
        -------
        Any
            The user's result.
        """
        if not isinstance(value, SharedResult) or not isinstance(arrays, TaskArrays):
            return value
        if value.held:
            self._retire(arrays.output)
        self._retire_inputs(value.kept)
        return loads_result(value.payload, arrays.output)

    def failed(self, arrays: object, exc: BaseException) -> None:
        """Note what the task's code kept of its segments before raising ``exc``.

        Parameters
        ----------
        arrays
            What :meth:`encode` returned for the task.
        exc
            The exception the worker raised; the transport's marks are removed from it.
        """
        if exc.__dict__.pop(REGION_HELD, False) and isinstance(arrays, TaskArrays):
            self._retire(arrays.output)
        self._retire_inputs(exc.__dict__.pop(INPUTS_KEPT, ()))

    def _retire(self, output: OutputBuffer | None) -> None:
        """A worker's array still uses ``output``: never hand its segment out again."""
        segments = self._segments
        if output is not None and segments is not None:
            segments.retire(output.name)

    def _retire_inputs(self, names: Sequence[str]) -> None:
        """The task's code kept views of these input segments: never hand them out again."""
        segments = self._segments
        if segments is not None:
            for name in names:
                segments.retire(name)

    @staticmethod
    def release(arrays: object) -> None:
        """Return the task's argument leases to the pool (the task is settled).

        Parameters
        ----------
        arrays
            What :meth:`encode` returned for the task.
        """
        if isinstance(arrays, TaskArrays):
            for lease in arrays.leases:
                lease.release()

    def worker_died(self) -> None:
        """Unlink the result segments that dead workers made and never delivered."""
        segments = self._segments
        if segments is not None:
            segments.cleanup_leftovers()

    def plan_distribute(self, allocations: list[Allocation]) -> DistributePlan | None:
        """Copy the big allocations into shared memory once, and plan the results' places.

        Parameters
        ----------
        allocations
            The allocations of a ``distribute``.

        Returns
        -------
        DistributePlan or None
            ``None`` when no allocation is big enough (or shareable).
        """
        if self.threshold is None:
            return None
        big = [
            a for a in allocations
            if sum(x.nbytes for x in a.arrays) >= self.threshold and _shareable(a)
        ]
        if not big:
            return None
        return _SharedPlan(self.pool(), big, self.threshold)

    @staticmethod
    def chunk_argument(alloc: Allocation, i: int, plan: DistributePlan | None) -> Any:
        """Chunk ``i`` of ``alloc``, as a worker takes it from shared memory if planned.

        Parameters
        ----------
        alloc, i
            The allocation and the chunk.
        plan
            What :meth:`plan_distribute` returned.

        Returns
        -------
        Any
            A lazy chunk the worker resolves, or the chunk itself.
        """
        if isinstance(plan, _SharedPlan):
            sources = plan.sources.get(id(alloc))
            if sources is not None:
                return _SharedChunk(sources, alloc.selection(i), len(alloc.arrays) > 1)
        return alloc[i]

    def close(self) -> None:
        """Close the pool: unlink its segments (arrays still in use stay readable)."""
        with self._lock:
            segments, self._segments = self._segments, None
        if segments is not None:
            segments.close()


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
        # The results gather returns are views of a read-only buffer: they cannot be made
        # writeable again, so the ordered copy cannot go stale behind reassemble's back.
        writable: Any = self._output.owner
        self._output.owner = np.frombuffer(memoryview(writable).toreadonly(), np.uint8)
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



def _shareable(alloc: Allocation) -> bool:
    """Whether the workers can take ``alloc``'s chunks from a copy of it in shared memory.

    Arrays of Python objects (``object`` dtype, strings of NumPy's ``StringDType``) cannot
    live there, and masked arrays would lose their mask: their chunks are pickled instead.
    """
    return all(
        type(array) is np.ndarray and not array.dtype.hasobject for array in alloc.arrays
    )

