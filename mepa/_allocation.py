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

The arithmetic of a plan (sizes, block orders, which rows a chunk holds) is in
:mod:`mepa._chunking`; results that come back adjacent in one buffer, or already in original
order, are recognised by :mod:`mepa._placement` so that ``reassemble`` copies nothing.
"""

from __future__ import annotations

import functools
import operator
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._chunking import (
    ChunkSelection,
    _block_order,
    _check_layout,
    _check_order,
    _frozen,
    _parse_block_rows,
    chunk_sizes,
)
from ._errors import AllocationError, ArgumentTypeError, ChunkIndexError
from ._placement import reassembled_in_place
from ._tree import TreeSpec, flatten, unflatten
from ._types import (
    ShuffleLike,
    WeightsLike,
    check_bool,
    parse_shuffle,
    parse_weights,
)

if TYPE_CHECKING:
    from ._plan import AllocationPlan


__all__ = [
    "ANY_LENGTH_ADVICE",
    "Allocation",
    "arrange",
    "arrange_many",
]

# The fix named when a result does not have its chunk's rows (map_array words its own).
ANY_LENGTH_ADVICE = "pass reverse_shuffle=False to concatenate results of any length"

# Above this many output bytes, reassemble writes the chunks from a thread pool (NumPy releases
# the GIL while copying).
_PARALLEL_BYTES = 32 * 2**20


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
            in_place = reassembled_in_place(
                self, pieces, self._order is None or not reverse_shuffle
            )
            if in_place is not None:
                return in_place
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
