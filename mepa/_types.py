"""The input forms mepa accepts, as type aliases, and one parser for each.

Weights and shuffles can each be given in several forms. They are normalised once, here, so that
the rest of mepa only ever sees ``tuple[float, ...]`` weights and a :data:`ParsedShuffle`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._errors import AllocationError, ArgumentTypeError, InvalidArgumentError
from ._worker import Worker

__all__ = [
    "DEFAULT_SEED",
    "MAX_WORKERS",
    "ArrayLike",
    "ParsedShuffle",
    "ShuffleLike",
    "WeightsLike",
    "check_bool",
    "check_callable",
    "check_timeout",
    "parse_dtype",
    "parse_shape",
    "parse_shuffle",
    "parse_weights",
]

WeightsLike: TypeAlias = int | Sequence[float] | Sequence[Worker] | NDArray[Any]
"""Weights: a number of equal workers, one weight per worker, or the workers themselves."""

ShuffleLike: TypeAlias = bool | int | np.random.Generator | np.random.RandomState | ArrayLike | None
"""A shuffle: off, on, a seed, a random generator, or an explicit permutation of the rows."""

ParsedShuffle: TypeAlias = (
    int | np.random.Generator | np.random.RandomState | NDArray[np.int64] | None
)
"""A normalised shuffle: ``None`` (off), an ``int`` seed, a generator, or a permutation."""

DEFAULT_SEED = 20240531
"""The seed ``shuffle=True`` stands for, so that shuffled runs repeat."""

MAX_WORKERS = 1 << 24
"""The most workers ``weights`` may count (an int weight stands for that many workers)."""

_MAX_ELEMENTS = 2**63 - 1  # NumPy's limit on the elements of an array
_SHOWN = 8  # how many values an error message shows before eliding the rest


def _show(values: Sequence[Any]) -> str:
    """A short ``repr`` of a list of values for error messages."""
    items = [float(v) if isinstance(v, (float, np.floating)) else v for v in values[:_SHOWN]]
    text = repr(items)
    if len(values) > _SHOWN:
        text = text[:-1] + f", ... ({len(values)} values)]"
    return text


def parse_weights(weights: WeightsLike) -> tuple[float, ...]:
    """Normalise the weights of a set of workers to a tuple of floats.

    Parameters
    ----------
    weights
        One of:

        - a positive ``int`` ``k``: ``k`` workers of equal weight;
        - a sequence or 1-d array of real numbers, one relative weight per worker;
        - a sequence of :class:`~mepa.Worker`, whose ``weight`` attributes are used.

        Weights must be finite and ``>= 0``, and not all zero. A worker of weight 0 gets no rows.

    Returns
    -------
    tuple of float
        One weight per worker, in order.

    Raises
    ------
    AllocationError
        If there are no workers, a weight is negative, NaN or infinite, every weight is zero,
        or ``weights`` is of none of the forms above (a ``bool``, a string, a 2-d array...).

    Examples
    --------
    >>> parse_weights(3)
    (1.0, 1.0, 1.0)
    >>> parse_weights([2, 1, 0])
    (2.0, 1.0, 0.0)
    >>> parse_weights([Worker("gpu-0", weight=4), Worker("cpu-0")])
    (4.0, 1.0)
    >>> parse_weights([-1.0, 2.0])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    mepa._errors.AllocationError: weights must be finite and >= 0, got [-1.0, 2.0]; ...
    """
    fix = "pass a positive int, one real weight per worker, or a sequence of Worker"
    if isinstance(weights, (bool, np.bool_)):
        raise AllocationError(
            f"weights must be an int or a sequence of weights, got {weights!r} (a bool); {fix}"
        )
    if isinstance(weights, numbers.Integral):
        k = int(weights)
        if k < 1:
            raise AllocationError(
                f"weights must be a positive number of workers, got {k} (no workers); {fix}"
            )
        if k > MAX_WORKERS:
            raise AllocationError(
                f"weights as a number of workers must be <= {MAX_WORKERS}, got {k}; "
                "pass the number of workers, not of rows"
            )
        return (1.0,) * k
    if isinstance(weights, (str, bytes, numbers.Number)) or not isinstance(
        weights, (Sequence, np.ndarray)
    ):
        raise AllocationError(
            f"weights must be an int or a sequence of weights, got {type(weights).__name__} "
            f"{weights!r}; {fix}"
        )
    if len(weights) == 0:
        raise AllocationError(
            f"weights must name at least one worker, got {weights!r} (no workers); {fix}"
        )
    if isinstance(weights, Sequence) and any(isinstance(w, Worker) for w in weights):
        if not all(isinstance(w, Worker) for w in weights):
            kinds = sorted({type(w).__name__ for w in weights})
            raise AllocationError(
                f"weights must be all Worker or all numbers, got a mix of {kinds}; {fix}"
            )
        values = [w.weight for w in weights if isinstance(w, Worker)]
        arr = np.asarray(values, dtype=np.float64)
    else:
        try:
            arr = np.asarray(weights)
        except (ValueError, TypeError) as exc:
            raise AllocationError(f"weights must be real numbers, got {weights!r}; {fix}") from exc
        if arr.ndim != 1 or arr.dtype.kind not in "iuf":
            what = f"a {arr.ndim}-d array" if arr.ndim != 1 else f"dtype {arr.dtype}"
            raise AllocationError(
                f"weights must be a 1-d sequence of real numbers, got {what}: {weights!r}; {fix}"
            )
        arr = arr.astype(np.float64)
    if not (np.isfinite(arr).all() and (arr >= 0).all()):
        raise AllocationError(
            f"weights must be finite and >= 0, got {_show(arr.tolist())}; "
            "give each worker its relative share of the rows, 0 for none"
        )
    if not (arr > 0).any():
        raise AllocationError(
            f"weights must not all be zero, got {_show(arr.tolist())}; "
            "give at least one worker a positive weight"
        )
    return tuple(float(w) for w in arr)


def parse_shuffle(shuffle: ShuffleLike, n: int) -> ParsedShuffle:
    """Normalise a shuffle of ``n`` rows.

    Parameters
    ----------
    shuffle
        One of:

        - ``False`` or ``None``: no shuffle;
        - ``True``: shuffle with the fixed seed :data:`DEFAULT_SEED`, so runs repeat;
        - an ``int`` ``>= 0``: shuffle with that seed;
        - a :class:`numpy.random.Generator` or :class:`numpy.random.RandomState`: shuffle with
          it (it is advanced, so two allocations made with it differ);
        - an array-like of ints: an explicit permutation of ``range(n)``, applied exactly (row
          ``shuffle[p]`` of the data goes to position ``p``).
    n
        Number of rows of the data.

    Returns
    -------
    None, int, Generator, RandomState or ndarray
        ``None`` for no shuffle, the seed, the generator itself, or the permutation as a
        read-only ``int64`` array.

    Raises
    ------
    AllocationError
        If the seed is negative, or the array is not a permutation of ``range(n)`` (wrong length,
        duplicates, values out of range, not integers).

    Examples
    --------
    >>> parse_shuffle(False, 10) is None
    True
    >>> parse_shuffle(True, 10) == DEFAULT_SEED
    True
    >>> parse_shuffle(7, 10)
    7
    >>> parse_shuffle([2, 0, 1], 3)
    array([2, 0, 1])
    >>> parse_shuffle([0, 0, 1], 3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    mepa._errors.AllocationError: shuffle must be a permutation of range(3), ...
    """
    if shuffle is None or shuffle is False or (isinstance(shuffle, np.bool_) and not shuffle):
        return None
    if shuffle is True or isinstance(shuffle, np.bool_):
        return DEFAULT_SEED
    if isinstance(shuffle, numbers.Integral):
        seed = int(shuffle)
        if seed < 0:
            raise AllocationError(
                f"shuffle seed must be >= 0, got {seed}; pass a non-negative int seed, True for "
                "the default seed, or False for no shuffle"
            )
        return seed
    if isinstance(shuffle, (np.random.Generator, np.random.RandomState)):
        return shuffle
    return _parse_permutation(shuffle, n)


def _parse_permutation(shuffle: Any, n: int) -> NDArray[np.int64]:
    fix = "pass a permutation of the row numbers, an int seed, True or False"
    prefix = f"shuffle must be a permutation of range({n})"
    if isinstance(shuffle, np.random.SeedSequence):
        fix = "pass np.random.default_rng(seed_sequence)"
    elif isinstance(shuffle, np.random.BitGenerator):
        fix = "pass np.random.Generator(bit_generator)"
    elif isinstance(shuffle, Iterator):
        fix = "pass list(...) of it, a permutation of the row numbers"
    if not isinstance(shuffle, (Sequence, np.ndarray)) or isinstance(shuffle, (str, bytes)):
        raise AllocationError(
            f"shuffle must be False, True, an int seed >= 0, a numpy.random.Generator or "
            f"RandomState, or a permutation of range({n}) (a sequence or 1-d array of ints); "
            f"got {type(shuffle).__name__}: {_short(shuffle)}; {fix}"
        )
    try:
        arr = np.asarray(shuffle)
    except (ValueError, TypeError) as exc:
        raise AllocationError(f"{prefix}, got {type(shuffle).__name__}; {fix}") from exc
    if arr.ndim != 1:
        raise AllocationError(f"{prefix}, got a {arr.ndim}-d array of shape {arr.shape}; {fix}")
    if len(arr) != n:
        raise AllocationError(f"{prefix}, got {len(arr)} values (wrong length); {fix}")
    if n == 0:
        return _frozen(np.zeros(0, dtype=np.int64))
    if arr.dtype.kind not in "iu":
        raise AllocationError(f"{prefix}, got values of dtype {arr.dtype} (not integers); {fix}")
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or high >= n:
        bad = low if low < 0 else high
        raise AllocationError(f"{prefix}, got value {bad} (out of range); {fix}")
    perm = np.array(arr, dtype=np.int64, copy=True)
    seen = np.zeros(n, dtype=bool)
    seen[perm] = True
    if not seen.all():
        missing = np.flatnonzero(~seen)
        raise AllocationError(
            f"{prefix}, got duplicates (rows {_show(missing.tolist())} never appear); {fix}"
        )
    return _frozen(perm)


def _frozen(arr: NDArray[np.int64]) -> NDArray[np.int64]:
    arr.flags.writeable = False
    return arr


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a bool; else :class:`~mepa.ArgumentTypeError` naming ``name``.

    A truthy string such as ``"no"`` must not pass for ``True``.

    >>> check_bool("reverse_shuffle", np.True_)
    True
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ArgumentTypeError(
        f"{name} must be True or False, got {type(value).__name__}: {_short(value)}; "
        f"pass {name}=True or {name}=False"
    )


def check_callable(name: str, value: object, fix: str) -> None:
    """Raise :class:`~mepa.ArgumentTypeError` unless ``value`` is callable."""
    if not callable(value):
        raise ArgumentTypeError(
            f"{name} must be callable, got {type(value).__name__}: {_short(value)}; {fix}"
        )


def check_timeout(timeout: object, name: str = "timeout") -> float | None:
    """A timeout in seconds: ``None`` (wait as long as it takes) or a number, not NaN.

    Negative numbers mean no wait at all, as for :mod:`concurrent.futures`.

    >>> check_timeout(None) is None
    True
    >>> check_timeout(2)
    2.0
    """
    if timeout is None:
        return None
    if isinstance(timeout, (bool, np.bool_)) or not isinstance(timeout, numbers.Real):
        raise ArgumentTypeError(
            f"{name} must be a number of seconds or None, got {type(timeout).__name__}: "
            f"{_short(timeout)}; pass e.g. {name}=30, or None to wait as long as it takes"
        )
    seconds = float(timeout)
    if math.isnan(seconds):
        raise InvalidArgumentError(
            f"{name} must be a number of seconds or None, got nan; pass e.g. {name}=30, or "
            "None to wait as long as it takes"
        )
    return seconds


def parse_shape(shape: object) -> tuple[int, ...]:
    """An array shape: an int ``>= 0`` or a sequence of them, as :func:`numpy.empty` takes.

    >>> parse_shape(3), parse_shape((2, 0))
    ((3,), (2, 0))
    """
    dims = (shape,) if isinstance(shape, numbers.Integral) else shape
    fix = "pass an int >= 0 or a tuple of them, e.g. (1000, 3)"
    if not isinstance(dims, (Sequence, np.ndarray)) or isinstance(dims, (str, bytes)):
        raise ArgumentTypeError(
            f"shape must be an int or a tuple of ints, got {type(shape).__name__}: "
            f"{_short(shape)}; {fix}"
        )
    out = []
    for d in dims:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, numbers.Integral):
            raise ArgumentTypeError(
                f"shape must be an int or a tuple of ints, got {_short(shape)} (holding "
                f"{type(d).__name__}); {fix}"
            )
        if int(d) < 0:
            raise InvalidArgumentError(f"shape must hold sizes >= 0, got {_short(shape)}; {fix}")
        out.append(int(d))
    if math.prod(out) > _MAX_ELEMENTS:
        raise InvalidArgumentError(
            f"shape must hold at most 2**63 - 1 elements, got {_short(shape)}; {fix}"
        )
    return tuple(out)


def parse_dtype(dtype: object) -> np.dtype[Any]:
    """``numpy.dtype(dtype)``, with :class:`~mepa.ArgumentTypeError` for what NumPy refuses."""
    try:
        return np.dtype(dtype)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError) as exc:
        raise ArgumentTypeError(
            f"dtype must be a NumPy dtype or something numpy.dtype accepts, got "
            f"{type(dtype).__name__}: {_short(dtype)} ({exc}); pass e.g. dtype=np.float64"
        ) from exc
