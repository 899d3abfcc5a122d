"""Plan arithmetic: chunk sizes, block orders and the rows each chunk holds.

::

    weights ──► chunk_sizes(n, weights) ─► sizes (largest remainder, sum n)
    shuffle ──► _block_order(shuffle, n, B) ─► order (a permutation of the full blocks)
    sizes, order ──► ChunkSelection(i): order[first block .. last block] + offset
                          │ take(data) ─► chunk i (one numpy.take over whole blocks)
                          └ put(out, result) ◄─ result i, rows back to their positions

Everything here is plain arithmetic on integers and index arrays; :class:`~mepa.Allocation`
(:mod:`mepa._allocation`) holds the data and uses it.

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
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Any, NoReturn

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._errors import AllocationError, ArgumentTypeError
from ._types import (
    ParsedShuffle,
    parse_weights,
)

__all__ = [
    "ChunkSelection",
    "auto_block_rows",
    "chunk_sizes",
]

_MAX_AUTO_BLOCK = 64
_ROWS_PER_BLOCK_ROW = 4096
_ORDER_CACHE_SIZE = 32


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

