"""Reassembly without a copy: results adjacent in one buffer, or already in place.

::

    gather(futures) ─► pieces ─► reassembled_in_place(alloc, pieces, in_order)
                                   │ _adjacent_view: in-order, adjacent views of one buffer?
                                   ├─ in order (unshuffled, or reverse_shuffle=False)
                                   │    └─► that one view: no copy
                                   └─ shuffled ─► PlacedRows.claim: every piece unchanged and
                                                  marked? ─► the ordered copy: no copy
                                 None ─► Allocation.reassemble scatters the rows itself

On the process executor, a shuffled distribute whose output lives in shared memory plans, per
chunk, a :class:`_PlaceRows`: the worker runs the task (:class:`_Placing`), writes the result's
rows to their original positions in a second buffer, and returns a :class:`_Placed`; when it
is unpickled on the host, :func:`_mark_placed` marks the chunk in the :class:`PlacedRows`
that ``reassemble`` then claims.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from ._allocation import Allocation
    from ._chunking import ChunkSelection
    from ._segments import SegmentRef


__all__ = [
    "PlacedRows",
    "reassembled_in_place",
]


class PlacedRows:
    """A copy of a shuffled distribute's results that the workers wrote in the original order.

    On the process executor, each worker of a shuffled ``distribute`` writes its result twice:
    in chunk order into its region of one shared buffer (what ``gather`` returns, as read-only
    views), and row by row to the original positions in a second buffer, this one. When
    :meth:`Allocation.reassemble` receives those unchanged views, it returns this buffer instead
    of scattering the rows itself: the scatter ran in the workers, in parallel.

    Parameters
    ----------
    allocation
        The allocation whose chunks the workers ran.
    buffer
        The bytes of the ordered copy, ``n * row_bytes`` of them or more.
    """

    __slots__ = ("__weakref__", "_allocation", "_buffer", "_claimed", "_lock", "_marks")

    def __init__(self, allocation: Allocation, buffer: NDArray[np.uint8]) -> None:
        self._allocation = weakref.ref(allocation)
        self._buffer = buffer
        self._marks: dict[int, tuple[np.dtype[Any], tuple[int, ...], int]] = {}
        self._claimed = False
        self._lock = threading.Lock()

    def watch(self, root: NDArray[Any]) -> None:
        """Offer this copy to ``reassemble`` calls whose results are views of ``root``."""
        key = id(root)
        _PLACED[key] = self
        weakref.finalize(root, _PLACED.pop, key, None)

    def mark(self, chunk: int, piece: NDArray[Any]) -> None:
        """Record that chunk ``chunk``'s worker wrote ``piece``'s rows to the ordered copy.

        ``piece`` is the chunk's result as ``gather`` returns it; it is made read-only, so that
        the copy cannot go stale.
        """
        piece.flags.writeable = False
        with self._lock:
            self._marks[chunk] = (piece.dtype, piece.shape[1:], piece.ctypes.data)

    def claim(
        self, allocation: Allocation, view: NDArray[Any], pieces: list[NDArray[Any]]
    ) -> NDArray[Any] | None:
        """The ordered copy, once, if ``pieces`` are every chunk's unchanged marked result.

        Parameters
        ----------
        allocation
            The allocation reassembling.
        view
            The one view spanning ``pieces`` (they are adjacent, in chunk order).
        pieces
            The results, one per chunk.

        Returns
        -------
        numpy.ndarray or None
            ``None`` when any condition fails; the caller then scatters the rows itself.
        """
        n = allocation.n
        with self._lock:
            if (
                self._claimed
                or self._allocation() is not allocation
                or len(self._marks) != len(pieces)
                or len(view) != n
                or any(
                    self._marks.get(i) != (p.dtype, p.shape[1:], p.ctypes.data)
                    or p.flags.writeable
                    for i, p in enumerate(pieces)
                )
            ):
                return None
            self._claimed = True
        # The marks guarantee the row size the buffer was sized for: it holds ``view.nbytes``.
        return self._buffer[: view.nbytes].view(view.dtype).reshape(view.shape)


# id() of the region buffer of chunk-ordered results -> the ordered copy the workers wrote;
# an entry goes when its buffer is collected.
_PLACED: dict[int, PlacedRows] = {}


def _root(arr: NDArray[Any]) -> NDArray[Any]:
    """The array that owns ``arr``'s memory (the end of its chain of ``.base`` arrays)."""
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    return arr


def _adjacent_view(pieces: list[NDArray[Any]]) -> NDArray[Any] | None:
    """One view spanning ``pieces`` if they are in-order, adjacent views of one buffer."""
    first = pieces[0]
    if first.dtype.hasobject or any(
        p.dtype != first.dtype or p.shape[1:] != first.shape[1:] for p in pieces
    ):
        return None
    used = [p for p in pieces if p.size]
    if len(used) == 1 and len(used[0]) == sum(len(p) for p in pieces):
        return used[0]
    if not used or not all(p.flags.c_contiguous for p in used):
        return None
    root = _root(used[0])
    if not root.flags.c_contiguous or root.dtype.hasobject:
        return None
    pointer = used[0].ctypes.data
    for p in used:
        if _root(p) is not root or p.ctypes.data != pointer:
            return None
        pointer += p.nbytes
    base = root.ctypes.data
    begin, end = used[0].ctypes.data - base, pointer - base
    if begin < 0 or end > root.nbytes:
        return None
    rows = sum(len(p) for p in pieces)
    view = root.reshape(-1).view(np.uint8)[begin:end].view(first.dtype)
    view = view.reshape((rows, *first.shape[1:]))
    if not all(p.flags.writeable for p in used):
        view.flags.writeable = False
    return view



def reassembled_in_place(
    allocation: Allocation, pieces: list[NDArray[Any]], in_order: bool
) -> NDArray[Any] | None:
    """The reassembled array without a copy, or ``None`` if the pieces do not allow one.

    Parameters
    ----------
    allocation
        The allocation reassembling ``pieces`` (one result per chunk, rows checked).
    pieces
        The results as arrays.
    in_order
        Whether concatenating the pieces in chunk order gives the answer (an unshuffled
        allocation, or ``reverse_shuffle=False``).

    Returns
    -------
    numpy.ndarray or None
        One view spanning adjacent pieces (in order), or the copy the workers wrote in the
        original order (:class:`PlacedRows`, claimed once); ``None`` otherwise.
    """
    view = _adjacent_view(pieces)
    if view is None or in_order:
        return view
    placed = _PLACED.get(id(_root(view)))
    return None if placed is None else placed.claim(allocation, view, pieces)


# -- in the workers: each writes its result's rows to their original positions


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
        from ._segments import open_region

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

