"""Allocations: data split into one chunk per worker, and put back together afterwards.

::

    arrange(data, weights, shuffle)               executor.distribute(fn, alloc)
    data -------------------> Allocation ---- chunk i = alloc[i] ----> worker i: fn(chunk i)
    (n rows, axis 0)          sizes ~ weights   (selection(i).take)           |
                              block order                                    | result i
                                                                             v
    output <------------ alloc.reassemble(results) <------------ executor.gather(futures)
    (original row order)   (selection(i).put: one pass)

:func:`arrange` splits the rows (axis 0) of an array into ``len(weights)`` chunks whose sizes
are proportional to the weights, rounded by largest remainder so that they sum to ``n`` (a
generalisation of :func:`numpy.array_split`). An executor's ``distribute`` sends chunk ``i`` to
worker ``i``; :meth:`Allocation.reassemble` writes the per-chunk results back into one array
in the original row order, whatever the shuffle.

Why shuffle, and why in blocks
------------------------------
When the cost of a row depends on where it sits (a refinement zone of a mesh, the dense end of a
sorted catalogue), contiguous chunks give some workers far more work than others. Shuffling the
rows before splitting spreads the expensive rows over every worker. A seeded shuffle permutes
*blocks* of ``block_rows`` consecutive rows rather than single rows: for 20 million rows a
row-level permutation costs about 0.8 s to generate and 0.2-0.4 s per gather (a random gather of
8-byte rows), more than many computations it is meant to balance, while permuting blocks of 64
rows costs a few milliseconds to generate and gathers at close to ``memcpy`` speed (each block
is one 512-byte copy), and still breaks up any spatial correlation longer than a block. By
default ``block_rows = max(1, min(64, n // 4096))``: data of fewer than 8192 rows is shuffled
row by row, large data in blocks of 64 rows. ``block_rows=1`` forces a row-level shuffle, and an
explicit permutation is always applied row by row.

With ``B = block_rows`` and ``nb = ceil(n / B)`` blocks, of which the last may be short, the plan
is a block ``order``: permuted position ``p`` holds row ``order[p // B] * B + p % B``. Only the
full blocks are permuted; a short last block stays last, so the formula holds everywhere. A
chunk is a run of permuted positions, so it is described by a slice of ``order`` plus the offset
of its first row in its first block (:class:`ChunkSelection`): small to pickle, and gathered with
one :func:`numpy.take` over the full blocks plus two partial copies.
"""

from __future__ import annotations

import functools
import math
import operator
import os
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._errors import AllocationError, ArgumentTypeError, ChunkIndexError
from ._tree import TreeSpec, flatten, unflatten
from ._types import (
    ParsedShuffle,
    ShuffleLike,
    WeightsLike,
    check_bool,
    parse_shuffle,
    parse_weights,
)

if TYPE_CHECKING:
    from ._plan import AllocationPlan

__all__ = [
    "Allocation",
    "ChunkSelection",
    "PlacedRows",
    "arrange",
    "arrange_many",
    "auto_block_rows",
    "chunk_sizes",
]

_MAX_AUTO_BLOCK = 64
_ROWS_PER_BLOCK_ROW = 4096
_ORDER_CACHE_SIZE = 32
# Above this many output bytes, reassemble writes the chunks from a thread pool (NumPy releases
# the GIL while copying).
# The fix named when a result does not have its chunk's rows (map_array words its own).
ANY_LENGTH_ADVICE = "pass reverse_shuffle=False to concatenate results of any length"

_PARALLEL_BYTES = 32 * 2**20


# ---------------------------------------------------------------------------------------------
# Sizes and block orders
# ---------------------------------------------------------------------------------------------


def chunk_sizes(n: int, weights: Sequence[float]) -> tuple[int, ...]:
    """Split ``n`` rows into chunks proportional to ``weights`` by largest remainder.

    Each size is the floor of its exact quota ``n * w / sum(weights)`` or one more; the rows left
    over after flooring go to the largest remainders, ties to the lowest index. The arithmetic is
    exact (floats are converted to fractions), so the sizes always sum to ``n`` and differ from
    their quotas by less than one.

    Parameters
    ----------
    n
        Number of rows, ``>= 0``.
    weights
        Finite, non-negative weights, not all zero (see :func:`~mepa.parse_weights`).

    Returns
    -------
    tuple of int
        One size per weight.

    Examples
    --------
    >>> chunk_sizes(10, [1, 1, 1])
    (4, 3, 3)
    >>> chunk_sizes(7, [2, 0, 1])
    (5, 0, 2)
    """
    fractions = [Fraction(w) for w in weights]
    denominator = math.lcm(*(f.denominator for f in fractions))
    scaled = [f.numerator * (denominator // f.denominator) for f in fractions]
    total = sum(scaled)
    floors = [n * s // total for s in scaled]
    remainders = [n * s % total for s in scaled]
    left = n - sum(floors)
    ranked = sorted(range(len(scaled)), key=lambda i: (-remainders[i], i))
    for i in ranked[:left]:
        floors[i] += 1
    return tuple(floors)


def auto_block_rows(n: int) -> int:
    """The default ``block_rows`` for ``n`` rows: ``max(1, min(64, n // 4096))``."""
    return max(1, min(_MAX_AUTO_BLOCK, n // _ROWS_PER_BLOCK_ROW))


def _n_blocks(n: int, block_rows: int) -> tuple[int, int]:
    """``(nb, nfull)``: number of blocks and of full blocks."""
    return -(-n // block_rows), n // block_rows


def _frozen(arr: NDArray[Any]) -> NDArray[Any]:
    arr.flags.writeable = False
    return arr


def _order_from_permutation(full: NDArray[np.int64], nb: int) -> NDArray[np.int64]:
    """Append the short last block (if any) to a permutation of the full blocks."""
    if len(full) == nb:
        return full.astype(np.int64, copy=False)
    order = np.empty(nb, dtype=np.int64)
    order[:-1] = full
    order[-1] = nb - 1
    return order


@functools.lru_cache(maxsize=_ORDER_CACHE_SIZE)
def _seeded_order(seed: int, nb: int, nfull: int) -> NDArray[np.int64]:
    full = np.random.default_rng(seed).permutation(nfull)
    return _frozen(_order_from_permutation(full, nb))


def _block_order(shuffle: ParsedShuffle, n: int, block_rows: int) -> NDArray[np.int64] | None:
    """The block order of a parsed shuffle, or ``None`` for no shuffle."""
    if shuffle is None:
        return None
    if isinstance(shuffle, np.ndarray):
        return shuffle
    nb, nfull = _n_blocks(n, block_rows)
    if isinstance(shuffle, int):
        return _seeded_order(shuffle, nb, nfull)
    full = np.asarray(shuffle.permutation(nfull), dtype=np.int64)
    return _frozen(_order_from_permutation(full, nb))


def _parse_block_rows(block_rows: int | None, n: int, shuffle: ParsedShuffle) -> int:
    if isinstance(shuffle, np.ndarray):
        if block_rows not in (None, 1):
            raise AllocationError(
                f"block_rows must be None or 1 with an explicit permutation, got {block_rows!r}; "
                "an explicit permutation is applied row by row, drop block_rows"
            )
        return 1
    if block_rows is None:
        return auto_block_rows(n)
    if (
        isinstance(block_rows, (bool, np.bool_))
        or not isinstance(block_rows, (int, np.integer))
        or block_rows < 1
    ):
        raise AllocationError(
            f"block_rows must be a positive int or None, got {block_rows!r}; "
            "pass None for the default, 1 for a row-level shuffle"
        )
    return int(block_rows)


def _check_order(order: NDArray[Any], n: int, block_rows: int) -> NDArray[np.int64]:
    """Validate a block order: a permutation of the blocks keeping a short last block last."""
    nb, nfull = _n_blocks(n, block_rows)
    fix = "rebuild the plan from an Allocation instead of editing it"
    if order.ndim != 1 or len(order) != nb:
        raise AllocationError(
            f"order must list the {nb} blocks of {block_rows} rows of {n} rows, "
            f"got {order.size} values; {fix}"
        )
    if nb == 0:
        return _frozen(np.zeros(0, dtype=np.int64))
    if order.dtype.kind not in "iu":
        raise AllocationError(
            f"order must hold block numbers (ints), got dtype {order.dtype}; {fix}"
        )
    if int(order.min()) < 0 or int(order.max()) >= nb:
        raise AllocationError(
            f"order must hold block numbers in range({nb}), got values from {int(order.min())} "
            f"to {int(order.max())}; {fix}"
        )
    seen = np.zeros(nb, dtype=bool)
    seen[order] = True
    if not seen.all():
        raise AllocationError(f"order must be a permutation of range({nb}), got duplicates; {fix}")
    if nfull < nb and int(order[-1]) != nb - 1:
        raise AllocationError(
            f"order must keep the short last block {nb - 1} last, got {int(order[-1])} last; {fix}"
        )
    return _frozen(np.array(order, dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# ChunkSelection
# ---------------------------------------------------------------------------------------------


class ChunkSelection:
    """The rows of one chunk: where to read them in a source, where to write results back.

    Unshuffled, a chunk is the row slice ``start:start + size``. Shuffled, it is ``size``
    consecutive rows of the concatenation of the blocks ``blocks`` (block ``b`` is rows
    ``b * block_rows`` to ``(b + 1) * block_rows``), starting ``start`` rows into the first block.

    The object is small and picklable (a block shuffle sends block numbers, not row numbers), so
    that a process executor can gather a chunk inside a worker from a shared-memory view of the
    source, and scatter the results back into a shared output.

    Parameters
    ----------
    n
        Number of rows of the arrays this selects from.
    block_rows
        Rows per block.
    blocks
        Block numbers, in order, or ``None`` for an unshuffled row slice.
    start
        First row (unshuffled) or offset into the first block (shuffled).
    size
        Number of rows.
    """

    __slots__ = ("_block_rows", "_blocks", "_n", "_size", "_start")

    _n: int
    _block_rows: int
    _blocks: NDArray[np.int64] | None
    _start: int
    _size: int

    def __init__(
        self,
        n: int,
        block_rows: int,
        blocks: NDArray[np.int64] | None,
        start: int,
        size: int,
    ) -> None:
        for name, count, low in (("n", n, 0), ("block_rows", block_rows, 1), ("start", start, 0),
                                 ("size", size, 0)):
            if isinstance(count, (bool, np.bool_)) or not isinstance(count, (int, np.integer)):
                raise ArgumentTypeError(
                    f"{name} must be an int, got {type(count).__name__}: {count!r}; build "
                    "selections with Allocation.selection"
                )
            if count < low:
                raise AllocationError(
                    f"{name} must be >= {low}, got {count}; build selections with "
                    "Allocation.selection"
                )
        if blocks is not None:
            blocks = np.asarray(blocks, dtype=np.int64)
            if blocks.flags.writeable:
                blocks = _frozen(blocks.copy())
            stop = start + size
            if not (0 <= start < max(block_rows, 1)) or (
                size and len(blocks) != -(-stop // block_rows)
            ):
                raise AllocationError(
                    f"a chunk of {size} rows starting {start} rows into blocks of {block_rows} "
                    f"rows cannot span {len(blocks)} blocks; build selections with "
                    "Allocation.selection"
                )
        elif not (start >= 0 and start + size <= n):
            raise AllocationError(
                f"rows {start}:{start + size} are outside range({n}); build selections with "
                "Allocation.selection"
            )
        for name, value in (
            ("_n", n),
            ("_block_rows", block_rows),
            ("_blocks", blocks),
            ("_start", start),
            ("_size", size),
        ):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"ChunkSelection is immutable, cannot set {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"ChunkSelection is immutable, cannot delete {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (ChunkSelection, (self._n, self._block_rows, self._blocks, self._start, self._size))

    def __repr__(self) -> str:
        if self._blocks is None:
            return f"ChunkSelection(rows={self._start}:{self._start + self._size}, n={self._n})"
        return (
            f"ChunkSelection(size={self._size}, block_rows={self._block_rows}, "
            f"blocks={len(self._blocks)}, start={self._start}, n={self._n})"
        )

    def __len__(self) -> int:
        return self._size

    @property
    def n(self) -> int:
        """Number of rows of the arrays this selects from."""
        return self._n

    @property
    def size(self) -> int:
        """Number of rows selected."""
        return self._size

    @property
    def block_rows(self) -> int:
        """Rows per block."""
        return self._block_rows

    @property
    def blocks(self) -> NDArray[np.int64] | None:
        """The block numbers (read-only), or ``None`` when unshuffled."""
        return self._blocks

    @property
    def start(self) -> int:
        """First row (unshuffled) or offset of the first row in the first block (shuffled)."""
        return self._start

    @property
    def shuffled(self) -> bool:
        """Whether the rows are read through a block order rather than as one slice."""
        return self._blocks is not None

    def rows(self) -> NDArray[np.int64]:
        """The row numbers selected, in order, as a new ``int64`` array."""
        if self._blocks is None:
            return np.arange(self._start, self._start + self._size, dtype=np.int64)
        b = self._block_rows
        if b == 1:
            return np.array(self._blocks, dtype=np.int64)
        expanded = (self._blocks[:, None] * b + np.arange(b, dtype=np.int64)).ravel()
        rows: NDArray[np.int64] = expanded[self._start : self._start + self._size].copy()
        return rows

    def _segments(self) -> Iterator[tuple[int, int, int, int]]:
        """Yield ``(kind, a, b, pos)`` runs covering the selection in order.

        ``kind`` 0: the row slice ``a:b`` goes to output rows starting at ``pos``; ``kind`` 1:
        the full blocks ``blocks[a:b]`` go to output rows starting at ``pos``.
        """
        blocks = self._blocks
        assert blocks is not None
        b, start, stop = self._block_rows, self._start, self._start + self._size
        if self._size == 0:
            return
        if len(blocks) == 1:
            first = int(blocks[0]) * b
            yield 0, first + start, first + stop, 0
            return
        pos, lo = 0, 0
        if start:
            first = int(blocks[0]) * b
            yield 0, first + start, first + b, 0
            pos, lo = b - start, 1
        hi = stop // b
        if hi > lo:
            yield 1, lo, hi, pos
            pos += (hi - lo) * b
        if stop % b:
            last = int(blocks[hi]) * b
            yield 0, last, last + stop % b, pos

    def _check_source(self, source: NDArray[Any], what: str) -> None:
        if source.ndim == 0 or len(source) != self._n:
            got = "a 0-d array" if source.ndim == 0 else f"{len(source)} rows"
            raise AllocationError(
                f"{what} must have the {self._n} rows of the arranged data, got {got}; "
                "pass an array of the same length as the data"
            )

    def take(self, source: ArrayLike, out: NDArray[Any] | None = None) -> NDArray[Any]:
        """Gather this chunk's rows of ``source``.

        Parameters
        ----------
        source
            An array with the same number of rows as the arranged data (the data itself, or a
            shared-memory view of it).
        out
            Optional C-contiguous array of shape ``(size,) + source.shape[1:]`` and the dtype of
            ``source`` to write into.

        Returns
        -------
        numpy.ndarray
            ``out`` if given; else, unshuffled, a view of ``source``; shuffled, a new array.
        """
        if isinstance(source, np.ma.MaskedArray):
            return self._take_masked(source, out)
        src = np.asarray(source)
        self._check_source(src, "source")
        shape = (self._size, *src.shape[1:])
        if out is not None and (out.shape != shape or out.dtype != src.dtype):
            raise AllocationError(
                f"out must have shape {shape} and dtype {src.dtype}, got shape {out.shape} and "
                f"dtype {out.dtype}; allocate it with np.empty({shape}, {src.dtype})"
            )
        if self._blocks is None:
            view = src[self._start : self._start + self._size]
            if out is None:
                return view
            out[...] = view
            return out
        if out is not None and not out.flags.c_contiguous:
            out[...] = self.take(src)
            return out
        result = np.empty(shape, dtype=src.dtype) if out is None else out
        if result.size == 0:
            return result
        if not src.flags.c_contiguous:
            np.take(src, self.rows(), axis=0, out=result, mode="clip")
            return result
        b = self._block_rows
        width = result.size // self._size * b
        for kind, lo, hi, pos in self._segments():
            if kind == 0:
                result[pos : pos + hi - lo] = src[lo:hi]
            else:
                nfull = self._n // b
                src2d = src[: nfull * b].reshape(nfull, width)
                dst2d = result[pos : pos + (hi - lo) * b].reshape(hi - lo, width)
                np.take(src2d, self._blocks[lo:hi], axis=0, out=dst2d, mode="clip")
        return result

    def _take_masked(
        self, source: np.ma.MaskedArray[Any, Any], out: NDArray[Any] | None
    ) -> np.ma.MaskedArray[Any, Any]:
        """:meth:`take` of a masked array: its data and its mask, the same rows of each."""
        if out is not None and not isinstance(out, np.ma.MaskedArray):
            raise AllocationError(
                f"out must be a numpy.ma.MaskedArray to take rows of a masked array, got "
                f"{type(out).__name__}; allocate it with np.ma.empty, or pass out=None"
            )
        data = self.take(source.data, None if out is None else out.data)
        mask = np.ma.getmask(source)
        if mask is np.ma.nomask:
            chunk_mask: Any = np.ma.nomask
        else:
            chunk_mask = self.take(mask, None if out is None else np.ma.getmaskarray(out))
        if out is not None:
            out.mask = chunk_mask
            return out
        # Unshuffled, data and mask are views: the chunk shares both, as a slice would.
        return np.ma.MaskedArray(
            data, mask=chunk_mask, fill_value=source.fill_value, keep_mask=False, copy=False
        )

    def put(self, dest: NDArray[Any], values: ArrayLike) -> None:
        """Write ``values``, one row per selected row in chunk order, to their rows of ``dest``.

        Parameters
        ----------
        dest
            A writeable array with the same number of rows as the arranged data.
        values
            ``size`` rows, broadcastable to ``(size,) + dest.shape[1:]``.
        """
        self._check_source(dest, "dest")
        vals = np.asarray(values)
        if vals.ndim == 0 or len(vals) != self._size:
            got = "a 0-d value" if vals.ndim == 0 else f"{len(vals)} rows"
            raise AllocationError(
                f"values must have the {self._size} rows of the chunk, got {got}; "
                "return one result row per input row"
            )
        shape = (self._size, *dest.shape[1:])
        if vals.shape != shape:
            try:
                vals = np.broadcast_to(vals, shape)
            except ValueError as exc:
                raise AllocationError(
                    f"values must have trailing shape {dest.shape[1:]}, got {vals.shape[1:]}; "
                    "return rows of the same shape as the destination's"
                ) from exc
        if self._blocks is None:
            dest[self._start : self._start + self._size] = vals
            return
        if vals.size == 0:
            return
        if not dest.flags.c_contiguous:
            dest[self.rows()] = vals
            return
        b = self._block_rows
        width = vals.size // self._size * b
        for kind, lo, hi, pos in self._segments():
            if kind == 0:
                dest[lo:hi] = vals[pos : pos + hi - lo]
            else:
                nfull = self._n // b
                dst2d = dest[: nfull * b].reshape(nfull, width)
                dst2d[self._blocks[lo:hi]] = vals[pos : pos + (hi - lo) * b].reshape(hi - lo, width)


def _check_layout(n: int, weights: Sequence[float], sizes: Sequence[int]) -> None:
    weights = parse_weights(list(weights))
    if len(sizes) != len(weights):
        raise AllocationError(
            f"sizes must have one entry per weight ({len(weights)}), got {len(sizes)}; "
            "rebuild the plan from an Allocation instead of editing it"
        )
    expected = chunk_sizes(n, weights)
    if tuple(sizes) != expected:
        raise AllocationError(
            f"sizes must be the largest-remainder split of {n} rows by the weights, "
            f"{expected}, got {tuple(sizes)}; rebuild the plan from an Allocation instead of "
            "editing it"
        )


# ---------------------------------------------------------------------------------------------
# Allocation
# ---------------------------------------------------------------------------------------------


class Allocation:
    """Data split along axis 0 into one chunk per worker, optionally shuffled.

    An immutable value; build it with :func:`arrange`, :func:`arrange_many` or
    :meth:`from_plan`. Iterating gives the chunks in worker order; ``alloc[i]`` is chunk ``i``
    (a view of the data when unshuffled; for :func:`arrange_many`, a tuple with one piece per
    array). :meth:`reassemble` puts per-chunk results back in the original row order.

    Parameters
    ----------
    arrays
        The arrays, all with the same number of rows ``n``.
    weights
        One weight per chunk.
    sizes
        Rows per chunk, the largest-remainder split of ``n`` by ``weights``.
    block_rows
        Rows per shuffled block.
    order
        The block order, or ``None`` when unshuffled.
    many
        Whether the data is a tuple of arrays (:func:`arrange_many`) rather than one array.
    """

    __slots__ = (
        "__weakref__",
        "_arrays",
        "_block_rows",
        "_many",
        "_n",
        "_offsets",
        "_order",
        "_permutation",
        "_sizes",
        "_weights",
    )

    _arrays: tuple[NDArray[Any], ...]
    _block_rows: int
    _many: bool
    _n: int
    _offsets: tuple[int, ...]
    _order: NDArray[np.int64] | None
    _permutation: NDArray[np.int64] | None
    _sizes: tuple[int, ...]
    _weights: tuple[float, ...]

    def __init__(
        self,
        arrays: Sequence[NDArray[Any]],
        *,
        weights: Sequence[float],
        sizes: Sequence[int],
        block_rows: int,
        order: NDArray[np.int64] | None,
        many: bool = False,
        _trusted: bool = False,
    ) -> None:
        arrays = _as_arrays(arrays)
        many = check_bool("many", many)
        if not many and len(arrays) != 1:
            raise AllocationError(
                f"an Allocation of one array got {len(arrays)} arrays; pass many=True"
            )
        n = len(arrays[0])
        if not _trusted:
            weights = parse_weights(list(weights))
            _check_layout(n, weights, sizes)
            block_rows = _parse_block_rows(block_rows, n, None)
            if order is not None:
                order = _check_order(np.asarray(order), n, block_rows)
        offsets = (0, *np.cumsum(sizes[:-1], dtype=np.int64).tolist())
        state: dict[str, Any] = {
            "_arrays": arrays,
            "_block_rows": int(block_rows),
            "_many": bool(many),
            "_n": n,
            "_offsets": tuple(int(o) for o in offsets),
            "_order": order,
            "_permutation": None,
            "_sizes": tuple(int(s) for s in sizes),
            "_weights": tuple(float(w) for w in weights),
        }
        for name, value in state.items():
            object.__setattr__(self, name, value)

    # -- immutability and pickling ------------------------------------------------------------

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"Allocation is immutable, cannot set {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"Allocation is immutable, cannot delete {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_allocation,
            (
                self._arrays,
                self._weights,
                self._sizes,
                self._block_rows,
                self._order,
                self._many,
            ),
        )

    def __repr__(self) -> str:
        return (
            f"Allocation(n={self._n}, sizes={self._sizes}, weights={self._weights}, "
            f"shuffled={self.shuffled}, block_rows={self._block_rows})"
        )

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_plan(cls, plan: AllocationPlan, data: Any) -> Allocation:
        """Rebuild an allocation from its :attr:`plan` and its data.

        Parameters
        ----------
        plan
            A plan, e.g. ``AllocationPlan.model_validate_json(text)``.
        data
            The array, or a ``tuple`` of arrays for an allocation made by :func:`arrange_many`
            (what :attr:`data` returns). Each must have ``plan.n`` rows.

        Raises
        ------
        AllocationError
            If the data does not have ``plan.n`` rows, or the plan is inconsistent.
        """
        from ._plan import AllocationPlan

        if not isinstance(plan, AllocationPlan):
            raise ArgumentTypeError(
                f"plan must be an AllocationPlan, got {type(plan).__name__}; pass "
                "alloc.plan, or AllocationPlan.model_validate_json(text)"
            )
        many = isinstance(data, tuple)
        arrays = _as_arrays(data if many else (data,))
        if len(arrays[0]) != plan.n:
            raise AllocationError(
                f"data must have the plan's {plan.n} rows, got {len(arrays[0])}; "
                "pass the data the plan was made for"
            )
        order = None if plan.order is None else np.asarray(plan.order, dtype=np.int64)
        return cls(
            arrays,
            weights=plan.weights,
            sizes=plan.sizes,
            block_rows=plan.block_rows,
            order=order,
            many=many,
        )

    # -- description --------------------------------------------------------------------------

    @property
    def n(self) -> int:
        """Number of rows."""
        return self._n

    @property
    def weights(self) -> tuple[float, ...]:
        """One weight per chunk."""
        return self._weights

    @property
    def sizes(self) -> tuple[int, ...]:
        """Rows per chunk; they sum to :attr:`n`."""
        return self._sizes

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start of each chunk in the (permuted) row order."""
        return self._offsets

    @property
    def block_rows(self) -> int:
        """Rows per shuffled block (1 for a row-level or explicit permutation)."""
        return self._block_rows

    @property
    def shuffled(self) -> bool:
        """Whether the rows are permuted before splitting."""
        return self._order is not None

    @property
    def n_chunks(self) -> int:
        """Number of chunks, one per weight (zero-size chunks included)."""
        return len(self._sizes)

    @property
    def arrays(self) -> tuple[NDArray[Any], ...]:
        """The arranged arrays, as a tuple (of one array for :func:`arrange`)."""
        return self._arrays

    @property
    def data(self) -> NDArray[Any] | tuple[NDArray[Any], ...]:
        """The arranged data: the array for :func:`arrange`, a tuple for :func:`arrange_many`."""
        return self._arrays if self._many else self._arrays[0]

    @property
    def permutation(self) -> NDArray[np.int64] | None:
        """Original row of each permuted position (read-only ``int64``), ``None`` if unshuffled.

        Built on first access for block shuffles, then cached.
        """
        order = self._order
        if order is None or self._block_rows == 1:
            return order
        if self._permutation is None:
            b = self._block_rows
            rows = (order[:, None] * b + np.arange(b, dtype=np.int64)).ravel()[: self._n]
            object.__setattr__(self, "_permutation", _frozen(rows))
        return self._permutation

    @property
    def plan(self) -> AllocationPlan:
        """The split and shuffle as a JSON-serialisable :class:`AllocationPlan`."""
        order = None if self._order is None else self._order.tolist()
        from ._plan import AllocationPlan

        return AllocationPlan.model_construct(
            n=self._n,
            weights=self._weights,
            sizes=self._sizes,
            block_rows=self._block_rows,
            order=order,
        )

    def _index(self, i: int) -> int:
        try:
            k = operator.index(i)
        except TypeError:
            raise ArgumentTypeError(
                f"chunk index must be an int, got {type(i).__name__}: {i!r}; use alloc[i] "
                "with an int i for chunk i"
            ) from None
        if not -self.n_chunks <= k < self.n_chunks:
            raise ChunkIndexError(
                f"chunk index must be in range({self.n_chunks}) (or negative from the end), "
                f"got {k}; this allocation has {self.n_chunks} chunks, one per worker"
            )
        return k % self.n_chunks

    def selection(self, i: int) -> ChunkSelection:
        """The rows of chunk ``i`` as a small picklable :class:`ChunkSelection`."""
        k = self._index(i)
        offset, size = self._offsets[k], self._sizes[k]
        if self._order is None:
            return ChunkSelection(self._n, self._block_rows, None, offset, size)
        b = self._block_rows
        first, end = offset // b, -(-(offset + size) // b) if size else offset // b
        return ChunkSelection(self._n, b, self._order[first:end], offset - first * b, size)

    def indices(self, i: int) -> NDArray[np.int64]:
        """The original row numbers of chunk ``i``, in chunk order (``int64``)."""
        return self.selection(i).rows()

    # -- chunks -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.n_chunks

    def __getitem__(self, i: int) -> Any:
        selection = self.selection(i)
        if self._many:
            return tuple(selection.take(a) for a in self._arrays)
        return selection.take(self._arrays[0])

    def __iter__(self) -> Iterator[Any]:
        for i in range(self.n_chunks):
            yield self[i]

    # -- reassembly ---------------------------------------------------------------------------

    def reassemble(self, results: Iterable[Any], *, reverse_shuffle: bool = True) -> Any:
        """Put one result per chunk back together, in the original row order.

        Parameters
        ----------
        results
            One result per chunk, in chunk order. A result is an array (or array-like; a
            ``list`` counts as one), or a ``tuple`` or ``dict`` of them, nested to any depth;
            every result must have the same structure. Results are reassembled leaf by leaf.
        reverse_shuffle
            If true (the default), every leaf of result ``i`` must have ``sizes[i]`` rows, one
            per input row; they are written straight to their original positions, which undoes
            the shuffle. If false, the leaves are concatenated in chunk order whatever their
            lengths (for reductions; 0-d leaves count as one row).

        Returns
        -------
        numpy.ndarray, or a tuple or dict of them
            The same structure as one result. Unshuffled results that are already adjacent,
            in-order views of one C-contiguous buffer are returned as a view of that buffer
            (no copy); shuffled results whose rows the process executor's workers already
            wrote back in place (see :class:`PlacedRows`) come back as that buffer, once;
            otherwise a new array of the results' common dtype.

        Raises
        ------
        AllocationError
            Wrong number of results, a result of the wrong length, results of different
            structures, or leaves whose trailing shapes differ.
        """
        reverse_shuffle = check_bool("reverse_shuffle", reverse_shuffle)
        if isinstance(results, (str, bytes, dict)) or not isinstance(results, Iterable):
            raise ArgumentTypeError(
                f"results must be a list of one result per chunk, got "
                f"{type(results).__name__}; pass executor.gather(futures), or a list of "
                f"{self.n_chunks} results in chunk order"
            )
        results = list(results)
        if len(results) != self.n_chunks:
            raise AllocationError(
                f"results must have one entry per chunk ({self.n_chunks}), got {len(results)}; "
                "pass the results of every chunk, in chunk order"
            )
        flat: list[list[Any]] = []
        spec: TreeSpec | None = None
        for i, result in enumerate(results):
            leaves, this = flatten(_lists_to_arrays(result))
            if spec is None:
                spec = this
            elif this != spec:
                raise AllocationError(
                    f"results[{i}] has structure {this.describe()} but results[0] has "
                    f"{spec.describe()}; return the same tuple lengths and dict keys from "
                    "every chunk"
                )
            flat.append(leaves)
        assert spec is not None
        paths = _leaf_paths(spec)
        out = [
            self._reassemble_leaf([leaves[j] for leaves in flat], paths[j], reverse_shuffle)
            for j in range(spec.n_leaves)
        ]
        return unflatten(spec, out)

    def _reassemble_leaf(self, leaves: list[Any], path: str, reverse_shuffle: bool) -> Any:
        masked = [leaf for leaf in leaves if isinstance(leaf, np.ma.MaskedArray)]
        if masked:  # the data and the mask, each reassembled as any array
            data = self._reassemble_leaf([np.ma.getdata(x) for x in leaves], path, reverse_shuffle)
            mask = self._reassemble_leaf(
                [np.ma.getmaskarray(np.asanyarray(x)) for x in leaves], path, reverse_shuffle
            )
            joined = np.ma.MaskedArray(data, mask=mask, keep_mask=False, copy=False)
            if masked[0].dtype == joined.dtype:
                joined.fill_value = masked[0].fill_value
            return joined
        pieces = [np.asarray(leaf) for leaf in leaves]
        if not reverse_shuffle:
            pieces = [p.reshape(1) if p.ndim == 0 else p for p in pieces]
        for i, piece in enumerate(pieces):
            if reverse_shuffle and (piece.ndim == 0 or len(piece) != self._sizes[i]):
                got = "a 0-d value" if piece.ndim == 0 else f"{len(piece)} rows"
                raise AllocationError(
                    f"results[{i}]{path} must have the {self._sizes[i]} rows of chunk {i}, got "
                    f"{got}; return one row per input row, or {ANY_LENGTH_ADVICE}"
                )
            if piece.shape[1:] != pieces[0].shape[1:]:
                raise AllocationError(
                    f"results[{i}]{path} has trailing shape {piece.shape[1:]} but results[0]"
                    f"{path} has {pieces[0].shape[1:]}; return rows of the same shape from "
                    "every chunk"
                )
        if all(isinstance(leaf, np.ndarray) for leaf in leaves):
            view = _adjacent_view(pieces)
            if view is not None:
                if self._order is None or not reverse_shuffle:
                    return view
                placed = _PLACED.get(id(_root(view)))
                ordered = None if placed is None else placed.claim(self, view, pieces)
                if ordered is not None:
                    return ordered
        if not reverse_shuffle:
            return np.concatenate(pieces, axis=0)
        dtype = functools.reduce(np.promote_types, [p.dtype for p in pieces])
        out = np.empty((self._n, *pieces[0].shape[1:]), dtype=dtype)
        selections = [self.selection(i) for i in range(self.n_chunks)]
        workers = min(len(pieces), os.cpu_count() or 1)
        if out.nbytes > _PARALLEL_BYTES and workers > 1:
            pairs = zip(selections, pieces, strict=True)
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for done in [pool.submit(sel.put, out, piece) for sel, piece in pairs]:
                    done.result()
        else:
            for sel, piece in zip(selections, pieces, strict=True):
                sel.put(out, piece)
        return out


def _rebuild_allocation(
    arrays: tuple[NDArray[Any], ...],
    weights: tuple[float, ...],
    sizes: tuple[int, ...],
    block_rows: int,
    order: NDArray[np.int64] | None,
    many: bool,
) -> Allocation:
    if order is not None:
        order = _frozen(order)
    return Allocation(
        arrays,
        weights=weights,
        sizes=sizes,
        block_rows=block_rows,
        order=order,
        many=many,
        _trusted=True,
    )


def _as_arrays(arrays: Sequence[Any]) -> tuple[NDArray[Any], ...]:
    """Convert and check the arrays of an allocation: at least one, not 0-d, same length."""
    if len(arrays) == 0:
        raise AllocationError(
            "arrays must hold at least one array, got none; pass the arrays to split"
        )
    out = []
    for i, data in enumerate(arrays):
        try:
            # A masked array stays one: its chunks and reassembled results keep the mask.
            arr = data if isinstance(data, np.ma.MaskedArray) else np.asarray(data)
        except (ValueError, TypeError) as exc:
            raise AllocationError(
                f"data must be array-like, got {type(data).__name__} that NumPy cannot convert "
                f"({exc}); pass a NumPy array"
            ) from exc
        if arr.ndim == 0:
            where = "data" if len(arrays) == 1 else f"arrays[{i}]"
            raise AllocationError(
                f"{where} must have at least one dimension to split along, got a 0-d array "
                f"{arr!r}; wrap it in a list or use np.atleast_1d"
            )
        out.append(arr)
    lengths = [len(a) for a in out]
    if len(set(lengths)) > 1:
        raise AllocationError(
            f"arrays must all have the same number of rows, got lengths {lengths}; "
            "split arrays of equal length (axis 0)"
        )
    return tuple(out)


def _lists_to_arrays(tree: Any) -> Any:
    """Treat lists as array-likes (leaves) while keeping tuples and dicts as structure."""
    if isinstance(tree, list):
        return np.asarray(tree)
    if isinstance(tree, dict):
        rebuilt = {k: _lists_to_arrays(v) for k, v in tree.items()}
        if type(tree) is dict:
            return rebuilt
        try:
            return type(tree)(rebuilt)
        except TypeError:
            return rebuilt
    if isinstance(tree, tuple):
        values = [_lists_to_arrays(v) for v in tree]
        if hasattr(type(tree), "_fields"):
            return type(tree)(*values)
        return type(tree)(values)
    return tree


def _leaf_paths(spec: TreeSpec, prefix: str = "") -> list[str]:
    """``["['a']", "['b'][0]"]``: how to reach each leaf of ``spec``, for error messages."""
    if spec.kind == "leaf":
        return [prefix]
    keys: Sequence[Any] = spec.keys if spec.kind == "dict" else range(len(spec.children))
    paths: list[str] = []
    for key, child in zip(keys, spec.children, strict=True):
        paths.extend(_leaf_paths(child, f"{prefix}[{key!r}]"))
    return paths


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


# ---------------------------------------------------------------------------------------------
# arrange
# ---------------------------------------------------------------------------------------------


def arrange(
    data: ArrayLike,
    weights: WeightsLike,
    shuffle: ShuffleLike = False,
    *,
    block_rows: int | None = None,
) -> Allocation:
    """Split ``data`` along axis 0 into one chunk per worker, sized by weight.

    Chunk sizes are the largest-remainder rounding of ``n * w / sum(weights)`` (see
    :func:`chunk_sizes`): they sum to ``n``, each is within one row of its exact share, and a
    worker of weight 0 (or more workers than rows) gets an empty chunk. Without a shuffle, the
    chunks are consecutive views of ``data``, as :func:`numpy.array_split` gives.

    Parameters
    ----------
    data
        A NumPy array, or anything :func:`numpy.asarray` accepts, with at least one dimension.
    weights
        A number of equal workers, one weight per worker, or a sequence of
        :class:`~mepa.Worker` (see :func:`~mepa.parse_weights`).
    shuffle
        ``False``/``None``, ``True`` (a fixed seed), an ``int`` seed, a NumPy ``Generator`` or
        ``RandomState``, or an explicit permutation of the rows (see
        :func:`~mepa.parse_shuffle`).
    block_rows
        For seeded shuffles: the rows of each block permuted as a whole. ``None`` (the default)
        picks ``max(1, min(64, n // 4096))``; ``1`` shuffles single rows.

    Returns
    -------
    Allocation

    Raises
    ------
    AllocationError
        Bad weights, a bad shuffle, a bad ``block_rows`` or 0-d data.

    Examples
    --------
    >>> import numpy as np
    >>> alloc = arrange(np.arange(10), [2, 1, 1])
    >>> alloc.sizes, alloc.offsets
    ((5, 3, 2), (0, 5, 8))
    >>> [chunk.tolist() for chunk in alloc]
    [[0, 1, 2, 3, 4], [5, 6, 7], [8, 9]]
    >>> arrange(np.arange(3), 5).sizes
    (1, 1, 1, 0, 0)
    >>> alloc = arrange(np.arange(6), 2, shuffle=[5, 4, 3, 2, 1, 0])
    >>> alloc[0], alloc[1]
    (array([5, 4, 3]), array([2, 1, 0]))
    >>> alloc.reassemble([c * 10 for c in alloc])
    array([ 0, 10, 20, 30, 40, 50])
    """
    arrays = _as_arrays((data,))
    return _arrange(arrays, weights, shuffle, block_rows, many=False)


def arrange_many(
    *arrays: ArrayLike,
    weights: WeightsLike,
    shuffle: ShuffleLike = False,
    block_rows: int | None = None,
) -> Allocation:
    """Split several arrays of the same length with one plan.

    Like :func:`arrange`, but chunk ``i`` is a tuple holding chunk ``i`` of every array, and
    :attr:`Allocation.data` is the tuple of arrays.

    Parameters
    ----------
    *arrays
        At least one array, all with the same number of rows.
    weights, shuffle, block_rows
        As for :func:`arrange`.

    Returns
    -------
    Allocation

    Examples
    --------
    >>> import numpy as np
    >>> alloc = arrange_many(np.arange(4), np.arange(4) * 2.0, weights=2)
    >>> alloc[1]
    (array([2, 3]), array([4., 6.]))
    """
    if not arrays:
        raise AllocationError(
            "arrange_many needs at least one array, got none; pass the arrays positionally, "
            "arrange_many(x, y, weights=...)"
        )
    return _arrange(_as_arrays(arrays), weights, shuffle, block_rows, many=True)


def _arrange(
    arrays: tuple[NDArray[Any], ...],
    weights: WeightsLike,
    shuffle: ShuffleLike,
    block_rows: int | None,
    *,
    many: bool,
) -> Allocation:
    n = len(arrays[0])
    parsed_weights = parse_weights(weights)
    parsed_shuffle = parse_shuffle(shuffle, n)
    b = _parse_block_rows(block_rows, n, parsed_shuffle)
    order = _block_order(parsed_shuffle, n, b)
    return Allocation(
        arrays,
        weights=parsed_weights,
        sizes=chunk_sizes(n, parsed_weights),
        block_rows=b,
        order=order,
        many=many,
        _trusted=True,
    )
