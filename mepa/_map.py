"""``map_array``: apply a function to the rows of arrays, in parallel, in one call.

::

    arrays ──arrange──▶ Allocation ──▶ chunk 0 ─▶ fn(*chunk, **broadcast) ─▶ result 0 ─┐
     (same split for     (by worker      chunk 1 ─▶ fn(*chunk, **broadcast) ─▶ result 1 ─┤
      every array)        weight)         ...                                          │
    result ◀──────────────────────── reassemble (original row order) ◀── gather ◀──────┘

It is the pattern ``arrange → distribute → gather → reassemble`` of the executors, wrapped with
input checks, an optional progress bar of rows, and an executor made on demand.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ._allocation import ANY_LENGTH_ADVICE, Allocation, arrange, arrange_many
from ._errors import AllocationError, ArgumentTypeError
from ._executors._base import Executor
from ._types import ShuffleLike

if TYPE_CHECKING:
    from ._executors._futures import TaskFuture
    from ._progress import Progress

__all__ = ["CHUNKS_PER_WORKER", "PIECES_PER_CHUNK", "map_array"]

CHUNKS_PER_WORKER = 4
"""Chunks per worker when ``map_array`` shows a progress bar.

With one chunk per worker the bar would jump from 0 to 100% in as many steps as there are
workers, all near the end. Four chunks per worker make it move in steps of about a quarter of a
worker's share, and let the pool hand a chunk to whichever process is free, which evens out
chunks of unequal cost, for the price of four times as many task round trips (negligible for
chunks of more than a few milliseconds of work).
"""

PIECES_PER_CHUNK = 8
"""Calls of ``fn`` per chunk when ``map_array`` shows a progress bar.

A task calls ``fn`` on each piece of its chunk in turn and advances the bar after each, so
the bar moves in steps of about a 32nd of a worker's share while the chunk runs, not by whole
chunks at their end. Each call then sees an eighth of the chunk's rows: for NumPy code on
pieces of more than some 100,000 elements the cost is unchanged.
"""


def map_array(
    fn: Callable[..., Any],
    *arrays: Any,
    executor: Executor | None = None,
    shuffle: ShuffleLike = False,
    progress: bool | dict[str, Any] = False,
    block_rows: int | None = None,
    reduce: Callable[[list[Any]], Any] | None = None,
    **broadcast: Any,
) -> Any:
    """Call ``fn`` on chunks of rows of ``arrays`` in parallel and return the joined result.

    The arrays are split along axis 0, the same way for all of them, over the executor's
    workers by weight (:func:`mepa.arrange_many`). ``fn(*chunks, **broadcast)`` runs once per
    chunk, where ``chunks`` holds the same rows of every array; the results are put back in the
    original row order. ``fn`` must return one row per input row: an array, or a tuple or dict
    of arrays (the result then has the same structure), unless ``reduce`` is given.

    Parameters
    ----------
    fn
        The function to apply. It must be picklable for a process or Dask executor (module
        level functions, lambdas and closures all are, through cloudpickle).
    *arrays
        One or more arrays (or array-likes) with the same number of rows, at least 1-d.
    executor
        The executor to run on. ``None`` creates a :class:`~mepa.ProcessExecutor` with one
        process per physical core for this call and shuts it down afterwards.
    shuffle
        Shuffle the rows before splitting so that expensive rows spread over every worker:
        ``False``, ``True`` (a fixed seed), an ``int`` seed, a NumPy generator, or a
        permutation (see :func:`mepa.parse_shuffle`). The result is in the original order
        either way.
    progress
        ``True`` shows a tqdm bar of rows finished; a dict gives tqdm options as well
        (``{"file": sys.stdout, "desc": "fit"}``). With a bar the rows are split into
        :data:`CHUNKS_PER_WORKER` chunks per worker (each worker's weight repeated), submitted
        one by one, so that a free worker can take the next chunk; a task calls ``fn`` on
        :data:`PIECES_PER_CHUNK` pieces of its chunk in turn (fewer if the chunk has fewer
        rows) and the bar advances after each piece, so it moves steadily while the chunks
        run. Without a bar, each worker receives a single chunk and calls ``fn`` once (the
        fewest round trips and calls).
    block_rows
        Rows per shuffled block, as for :func:`mepa.arrange`.
    reduce
        For a ``fn`` that returns something other than one row per input row (a partial sum, a
        histogram, a misfit): ``reduce(results)`` is returned instead of the joined rows, where
        ``results`` is the list of what ``fn`` returned for each call, in row order of the
        split (calls see shuffled rows if ``shuffle`` is set; with a progress bar there are
        :data:`CHUNKS_PER_WORKER` x :data:`PIECES_PER_CHUNK` calls per worker, one per worker
        without). ``reduce=sum`` adds the partial results; ``reduce=list`` returns them.
    **broadcast
        Keyword arguments passed whole to every call of ``fn`` (parameters, lookup tables).
        A keyword that is also one of ``map_array``'s own parameters cannot be passed this
        way: bind it first with :func:`functools.partial`.

    Returns
    -------
    numpy.ndarray, or a tuple or dict of them
        The results of ``fn`` joined along axis 0, in the original row order.

    Raises
    ------
    TypeError
        ``fn`` is not callable, ``executor`` is not an executor, ``progress`` is not a bool
        or dict, or a broadcast keyword names a parameter that already receives an array.
    AllocationError
        No arrays, an argument that is not an array, arrays of different lengths, a bad
        shuffle, or results that are not one row per input row (and no ``reduce``).
    Exception
        Whatever ``fn`` raised, with the remote traceback as ``__cause__``.

    Examples
    --------
    >>> import numpy as np
    >>> from mepa import ThreadExecutor, map_array
    >>> def scale(x, y, *, factor):
    ...     return {"sum": (x + y) * factor, "diff": x - y}
    >>> with ThreadExecutor(2) as executor:
    ...     out = map_array(scale, np.arange(5), np.ones(5), executor=executor, factor=10)
    >>> out["sum"]
    array([10., 20., 30., 40., 50.])
    >>> out["diff"]
    array([-1.,  0.,  1.,  2.,  3.])

    A reduction: each chunk returns its sum of squares, ``reduce=sum`` adds them up.

    >>> def sum_of_squares(x):
    ...     return float(np.sum(x * x))
    >>> with ThreadExecutor(2) as executor:
    ...     map_array(sum_of_squares, np.arange(5), executor=executor, reduce=sum)
    30.0
    """
    _check_callable(fn)
    data = _check_arrays(arrays)
    _check_broadcast(fn, len(data), broadcast)
    bar_options = _check_progress(progress)
    if reduce is not None and not callable(reduce):
        raise ArgumentTypeError(
            f"reduce must be a callable taking the list of per-chunk results, or None, got "
            f"{type(reduce).__name__}: {reduce!r}; pass e.g. reduce=sum"
        )
    if executor is not None and not isinstance(executor, Executor):
        raise ArgumentTypeError(
            f"executor must be a mepa Executor or None, got {type(executor).__name__}: "
            f"{executor!r}; pass e.g. mepa.ThreadExecutor(4), or None for one process per "
            "physical core"
        )
    if executor is None:
        from ._executors._process import ProcessExecutor

        with ProcessExecutor() as own:
            return _run(own, fn, data, shuffle, bar_options, block_rows, reduce, broadcast)
    return _run(executor, fn, data, shuffle, bar_options, block_rows, reduce, broadcast)


# ------------------------------------------------------------------------------ running


def _run(
    executor: Executor,
    fn: Callable[..., Any],
    data: list[Any],
    shuffle: ShuffleLike,
    bar_options: dict[str, Any] | None,
    block_rows: int | None,
    reduce: Callable[[list[Any]], Any] | None,
    broadcast: dict[str, Any],
) -> Any:
    many = len(data) > 1
    if bar_options is None:
        alloc = _split(data, executor.workers, shuffle, block_rows)
        return _join(
            alloc, executor.gather(executor.distribute(_apply, fn, alloc, many, broadcast)),
            reduce,
        )

    workers = executor.workers
    n_chunks = len(workers) * CHUNKS_PER_WORKER
    rows = len(data[0])
    pieces = max(1, min(PIECES_PER_CHUNK, rows // max(1, n_chunks)))
    # chunk c is pieces c * pieces ... (c + 1) * pieces - 1, all of its worker's weight
    weights = [w for w in list(workers) * CHUNKS_PER_WORKER for _ in range(pieces)]
    alloc = _split(data, weights, shuffle, block_rows)
    options: dict[str, Any] = {"desc": "map_array", "unit": "row"}
    options.update(bar_options)
    bar = executor.progress(total=alloc.n, **options)
    futures: list[TaskFuture[list[Any]]] = []
    try:
        for c in range(n_chunks):
            parts = range(c * pieces, (c + 1) * pieces)
            futures.append(executor.submit_to(
                workers[c % len(workers)], _apply_pieces, fn,
                [(alloc[i], alloc.sizes[i]) for i in parts], many, broadcast, bar,
            ))
        results = [r for group in executor.gather(futures) for r in group]
    except KeyboardInterrupt:
        for future in futures:
            future.cancel()
        raise
    finally:
        bar.dispose()  # closed, and off the event hub: nothing else will update it
    return _join(alloc, results, reduce)


def _join(
    alloc: Allocation, results: list[Any], reduce: Callable[[list[Any]], Any] | None
) -> Any:
    """The rows back in order, or ``reduce(results)``."""
    if reduce is not None:
        return reduce(list(results))
    try:
        return alloc.reassemble(results)
    except AllocationError as exc:
        if ANY_LENGTH_ADVICE not in str(exc):
            raise
        raise AllocationError(
            str(exc).replace(
                ANY_LENGTH_ADVICE,
                "pass reduce= to combine the per-chunk results yourself (reduce=sum adds "
                "them, reduce=list returns them)",
            )
        ) from None


def _split(
    data: list[Any], weights: Any, shuffle: ShuffleLike, block_rows: int | None
) -> Allocation:
    if len(data) == 1:
        return arrange(data[0], weights, shuffle, block_rows=block_rows)
    return arrange_many(*data, weights=weights, shuffle=shuffle, block_rows=block_rows)


def _apply_pieces(
    fn: Callable[..., Any], pieces: list[tuple[Any, int]], many: bool,
    broadcast: dict[str, Any], bar: Progress,
) -> list[Any]:
    """The task with a bar: ``fn`` on each piece of a chunk, advancing the bar after each."""
    results = []
    for chunk, rows in pieces:
        results.append(_apply(fn, chunk, many, broadcast))
        bar.update(rows)
    return results


def _apply(
    fn: Callable[..., Any], chunk: Any, many: bool, broadcast: dict[str, Any]
) -> Any:
    """The task: ``fn`` on one chunk (a tuple of pieces when several arrays were given)."""
    if many:
        return fn(*chunk, **broadcast)
    return fn(chunk, **broadcast)


# ------------------------------------------------------------------------------ checks


def _check_callable(fn: object) -> None:
    if not callable(fn):
        raise ArgumentTypeError(
            f"fn must be callable, got {type(fn).__name__}: {fn!r}; pass the function first, "
            "map_array(fn, array, ...)"
        )


def _check_arrays(arrays: tuple[Any, ...]) -> list[Any]:
    if not arrays:
        raise AllocationError(
            "map_array needs at least one array after fn, got none; pass the arrays "
            "positionally, map_array(fn, x, y, ...)"
        )
    data: list[Any] = []
    for i, value in enumerate(arrays):
        if isinstance(value, Allocation):
            raise AllocationError(
                f"arrays[{i}] must be an array, got an Allocation; pass the array itself, "
                "map_array arranges it"
            )
        try:
            arr = value if isinstance(value, np.ndarray) else np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise AllocationError(
                f"arrays[{i}] must be array-like, got {type(value).__name__} that NumPy "
                f"cannot convert ({exc}); pass a NumPy array"
            ) from exc
        if arr.ndim == 0:
            raise AllocationError(
                f"arrays[{i}] must be an array with at least one dimension, got "
                f"{type(value).__name__} {_short(value)}; pass values shared by every chunk "
                "as keywords, map_array(fn, x, name=value)"
            )
        data.append(arr)
    lengths = [len(a) for a in data]
    if len(set(lengths)) > 1:
        raise AllocationError(
            f"arrays must all have the same number of rows, got lengths {lengths}; split "
            "arrays of equal length (axis 0), and pass the others as keywords"
        )
    return data


def _check_broadcast(fn: Callable[..., Any], n_arrays: int, broadcast: dict[str, Any]) -> None:
    """Fail early, on the host, if ``fn(*chunks, **broadcast)`` cannot bind."""
    if not broadcast:
        return
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins and some C functions have no signature
        return
    try:
        signature.bind(*range(n_arrays), **broadcast)
    except TypeError as exc:
        positional = [
            p.name for p in signature.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ][:n_arrays]
        clash = sorted(set(positional) & set(broadcast))
        if clash:
            raise ArgumentTypeError(
                f"broadcast keyword(s) {clash} name parameter(s) of {_name(fn)} that already "
                f"receive the array chunks {positional}; rename the keyword, or pass that value "
                "as an array instead"
            ) from exc
        raise ArgumentTypeError(
            f"{_name(fn)}{signature} cannot be called with {n_arrays} array chunk(s) and "
            f"keywords {sorted(broadcast)}: {exc}; match the arrays and keywords to its "
            "parameters"
        ) from exc


def _check_progress(progress: object) -> dict[str, Any] | None:
    if isinstance(progress, bool):
        return {} if progress else None
    if isinstance(progress, dict):
        if not all(isinstance(k, str) for k in progress):
            raise ArgumentTypeError(
                f"progress must be a bool or a dict of tqdm options with str keys, got "
                f"{progress!r}; e.g. progress={{'desc': 'fit'}}"
            )
        return dict(progress)
    raise ArgumentTypeError(
        f"progress must be a bool or a dict of tqdm options, got {type(progress).__name__}: "
        f"{progress!r}; pass True, or e.g. {{'desc': 'fit', 'file': sys.stdout}}"
    )


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
