"""Arrays to handles and back: the array side of the shared-memory transport.

Large arrays cross the process boundary through POSIX shared memory (segments of
:mod:`mepa._segments`) instead of being pickled through a pipe. Only a small
:class:`~mepa._segments.SharedArray` handle (segment name, offset, shape, dtype, strides) is
pickled::

    host                                         worker (any local process)
    ----                                         --------------------------
    encode_args(args, pool)
      array in a leased segment? -> handle, no copy
      other large array -> copy into a pooled
                           segment -> handle
    submit(run_shared, fn, handles, slot) ---->  decode_args: attach once per process,
                                                 ndarray views (no copy)
                                                 result = fn(*args, **kwargs)
                                                 encode_result: copy large arrays into the
                                                 result slot if they fit, else into new
                                                 segments named <prefix>-w<pid>-<random>
    decode_result(result, pool, slot)  <-------  handles
      slot      -> view of the pooled segment, back to the pool when the arrays die
      new segs  -> map, unlink the name at once, unmapped when the arrays die
    on completion: release the argument leases

The executors pickle tasks with :mod:`mepa._payload`, whose pickler calls
:func:`argument_sharer` and :func:`result_placer` for each array it meets; the host's side of
a task's life is :class:`~mepa._executors._shared.SharedMemoryTransport`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ._segments import (
    _ALIGN,
    DEFAULT_THRESHOLD,
    WORKER_CACHE_BYTES,
    Kind,
    Lease,
    NDArray,
    SegmentPool,
    SegmentRef,
    SharedArray,
    _attach,
    _create_unique,
    _is_candidate,
    _open,
    _owned_view,
    _populate,
    _view,
    trim_attached,
    unlink,
)
from ._tree import tree_map

__all__ = [
    "OutputBuffer",
    "ResultTaker",
    "argument_sharer",
    "decode_args",
    "decode_result",
    "encode_args",
    "encode_result",
    "result_placer",
    "run_shared",
    "shared_nbytes",
]

# -- arguments, host -> worker -----------------------------------------------------------------


def encode_args(
    tree: Any, pool: SegmentPool, threshold: int = DEFAULT_THRESHOLD
) -> tuple[Any, list[Lease]]:
    """Replace the large arrays of ``tree`` by :class:`SharedArray` handles.

    Arrays that already live in the pool (:meth:`SegmentPool.empty`, views of it, results
    decoded into a result slot) are sent without a copy, whatever their size, so that tasks
    write into them in place; other arrays of at least ``threshold`` bytes are copied into a
    leased segment; everything else is left as it is.

    Returns
    -------
    encoded, leases
        The tree to pickle, and the leases to release when the task's future is done.
    """
    leases: list[Lease] = []
    share = argument_sharer(pool, threshold, leases)

    def encode(leaf: Any) -> Any:
        if isinstance(leaf, SharedArray):
            return leaf
        handle = share(leaf)
        return leaf if handle is None else handle

    try:
        encoded = tree_map(encode, tree)
    except BaseException:
        for lease in leases:
            lease.release()
        raise
    return encoded, leases


def argument_sharer(
    pool: SegmentPool, threshold: int, leases: list[Lease]
) -> Callable[[Any], SharedArray | None]:
    """What to send for an argument: a handle (its lease added to ``leases``) or ``None``."""

    def share(leaf: Any) -> SharedArray | None:
        if not _is_candidate(leaf, 1):
            return None
        handle = pool.lookup(leaf)  # in place, whatever its size
        if handle is None:
            if leaf.nbytes < threshold:
                return None
            handle = pool.share(leaf)
        assert handle.lease is not None
        leases.append(handle.lease)
        return handle

    return share


def decode_args(tree: Any) -> Any:
    """In the worker: replace :class:`SharedArray` handles by views of their segments."""

    def decode(leaf: Any) -> Any:
        return leaf.open() if isinstance(leaf, SharedArray) else leaf

    return tree_map(decode, tree)


# -- results, worker -> host -------------------------------------------------------------------

def encode_result(
    tree: Any,
    prefix: str,
    threshold: int = DEFAULT_THRESHOLD,
    slot: SegmentRef | None = None,
) -> Any:
    """In the worker: put the large arrays of a result in shared memory, return handles.

    Arrays go into the result ``slot`` the host offered while they fit (no page faults: the
    slot is an already populated pool segment), the others into new segments named
    ``<prefix>-w<pid>-<random>``. The worker keeps no tracker registration nor mapping of them:
    the host takes them over in :func:`decode_result`, or removes them with
    :meth:`SegmentPool.cleanup_leftovers` if this worker dies first.
    """
    created: list[str] = []
    place = result_placer(prefix, threshold, slot, created)

    def encode(leaf: Any) -> Any:
        handle = place(leaf)
        return leaf if handle is None else handle

    try:
        return tree_map(encode, tree)
    except BaseException:
        for name in created:
            unlink(name)
        raise


def result_placer(
    prefix: str, threshold: int, slot: SegmentRef | None, created: list[str]
) -> Callable[[Any], SharedArray | None]:
    """In the worker: where a result array goes (slot or new segment), or ``None`` to pickle."""
    used = 0

    def place(leaf: Any) -> SharedArray | None:
        nonlocal used
        if not _is_candidate(leaf, threshold):
            return None
        array: NDArray = leaf
        if slot is not None:
            start = -(-used // _ALIGN) * _ALIGN
            if start + array.nbytes <= slot.size:
                used = start + array.nbytes
                start += slot.offset
                entry = _attach(slot.name)
                _populate(entry.mapping, start, start + array.nbytes)
                return _copy_into(entry.base, start, array, slot.name, "pool")
        name, mapping = _create_unique(f"{prefix}-w{os.getpid()}-", array.nbytes)
        created.append(name)
        try:
            return _copy_into(np.frombuffer(mapping, np.uint8), 0, array, name, "result")
        finally:
            del mapping

    return place


def _copy_into(buffer: NDArray, offset: int, array: NDArray, name: str, kind: Kind) -> SharedArray:
    """Copy ``array`` C-ordered into ``buffer`` at ``offset``; the handle to the copy."""
    target = buffer[offset : offset + array.nbytes].view(array.dtype).reshape(array.shape)
    np.copyto(target, array, casting="no")
    return SharedArray(name, offset, array.shape, array.dtype, target.strides, True, kind)


class OutputBuffer:
    """One pooled segment shared out as result slots, one region per task.

    ``distribute`` offers chunk ``i`` the region where its rows sit in the output, so results
    that fit come back as adjacent views of one buffer, which
    :meth:`~mepa.Allocation.reassemble` returns without a copy. The segment returns to the
    pool when the last view of it is collected.
    """

    __slots__ = ("name", "owner", "size")

    def __init__(self, lease: Lease) -> None:
        self.name = lease.name
        self.size = lease.nbytes
        self.owner = _owned_view(lease.transfer(), lease.nbytes)

    def region(self, offset: int, size: int) -> SegmentRef:
        """The slot of ``size`` bytes from byte ``offset``."""
        return SegmentRef(self.name, size, offset)


def decode_result(
    tree: Any, pool: SegmentPool, slot: Lease | OutputBuffer | None = None
) -> Any:
    """On the host: replace the handles of a task's result by arrays, taking ownership.

    A worker segment is mapped, its name unlinked at once, and unmapped when the last array
    using it is collected. Arrays in the result ``slot`` are views of the pool's segment; the
    slot's lease passes to them (the segment returns to the pool when they are all
    collected). A :class:`Lease` slot is consumed either way: do not reuse it; an
    :class:`OutputBuffer` is shared by the tasks it serves.
    """
    pending = [leaf.name for leaf in _handles(tree) if leaf.kind == "result"]
    take = ResultTaker(slot)

    def decode(leaf: Any) -> Any:
        return take(leaf) if isinstance(leaf, SharedArray) else leaf

    try:
        return tree_map(decode, tree)
    finally:
        for name in pending:
            unlink(name)
        take.done()


class ResultTaker:
    """On the host: turn result handles into arrays that own their segment."""

    def __init__(self, slot: Lease | OutputBuffer | None) -> None:
        self.slot = slot
        self.owner: NDArray | None = slot.owner if isinstance(slot, OutputBuffer) else None
        self.seen: list[str] = []

    def __call__(self, leaf: SharedArray) -> NDArray:
        slot = self.slot
        if leaf.kind == "result":
            self.seen.append(leaf.name)
            mapping = _open(leaf.name)
            unlink(leaf.name)
            _populate(mapping, 0, len(mapping))
            return _view(np.frombuffer(mapping, np.uint8), leaf)
        if slot is not None and leaf.name == slot.name:
            if self.owner is None:
                assert isinstance(slot, Lease)
                self.owner = _owned_view(slot.transfer(), slot.size)
            return _view(self.owner, leaf)
        return leaf.open()

    def done(self) -> None:
        if isinstance(self.slot, Lease):
            self.slot.release()


def shared_nbytes(tree: Any) -> int:
    """Bytes a result slot needs to hold the shared arrays of an encoded result.

    The executor can size the slot it offers the next task of the same function with it.
    """
    used = 0
    for handle in _handles(tree):
        used = -(-used // _ALIGN) * _ALIGN + handle.nbytes
    return used


def _handles(tree: Any) -> list[SharedArray]:
    found: list[SharedArray] = []

    def visit(leaf: Any) -> Any:
        if isinstance(leaf, SharedArray):
            found.append(leaf)
        return leaf

    tree_map(visit, tree)
    return found


def run_shared(
    fn: Callable[..., Any],
    encoded_args: Any,
    encoded_kwargs: Any,
    prefix: str,
    threshold: int = DEFAULT_THRESHOLD,
    slot: SegmentRef | None = None,
) -> Any:
    """The loky task: decode the arguments, call ``fn``, encode its result.

    Parameters
    ----------
    fn
        The user's function.
    encoded_args, encoded_kwargs
        From :func:`encode_args` (a tuple and a dict).
    prefix
        The host pool's :attr:`SegmentPool.prefix`, for result segments.
    threshold
        Result arrays of at least this many bytes go through shared memory.
    slot
        A result slot offered by the host (:attr:`Lease.ref`), or ``None``.
    """
    try:
        return _call(fn, encoded_args, encoded_kwargs, prefix, threshold, slot)
    finally:
        trim_attached(WORKER_CACHE_BYTES)  # after the views of the arguments are gone


def _call(
    fn: Callable[..., Any],
    encoded_args: Any,
    encoded_kwargs: Any,
    prefix: str,
    threshold: int,
    slot: SegmentRef | None,
) -> Any:
    args = decode_args(encoded_args)
    kwargs = decode_args(encoded_kwargs)
    result = fn(*args, **kwargs)
    del args, kwargs
    return encode_result(result, prefix, threshold, slot)
