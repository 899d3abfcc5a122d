"""The API of ``metalpy.mepa`` (metalpy 0.2) on mepa: code written for it runs unchanged.

::

    import mepa.compat.metalpy
    mepa.compat.metalpy.install()    # ``import metalpy.mepa`` (and its submodules) now gives this

    from metalpy.mepa import ProcessExecutor    # the original's names, call forms and meanings

Every name the original exported from ``metalpy.mepa`` and its submodules (``executor``,
``worker``, ``worker_context``, ``parallel_progress``, ``task_allocator``, ``utils``, ...) is
here, each a thin layer over mepa's own objects:

- the executors are mepa's (:class:`mepa.LinearExecutor`, ...; ``isinstance`` holds), with the
  original's calls on top: ``submit(fn, ..., worker=w)`` pins, ``map`` takes ``worker=`` and
  ``workers=``, ``map_async`` returns one future per item, ``arrange`` returns the original's
  stateful allocator, ``extract_by_name`` matches as the original did, the constructors take
  ``n_units=`` and the workers have the original's names (``local-0``, ``thread-0``,
  ``proc-0``);
- :class:`ParallelProgress` is a :class:`mepa.Progress`; the contexts returned by ``register``
  and ``on`` are :class:`mepa.EventContext` objects;
- :class:`Worker` is a :class:`mepa.Worker` whose weight can be changed;
- :class:`Executor` is the original's abstract base: a subclass written to its abstract
  methods (``do_submit``, ``get_workers``, ``get_worker_context``, ``receive_events``, and
  ``_gather_single`` or ``_gather``) gets every call above.

Where mepa deliberately behaves differently (chunk sizes, who shuts a Dask cluster down, when a
bar closes, ...), mepa's own API keeps its behaviour and this module has the original's; the
documentation page "Coming from metalpy.mepa" lists each difference.
"""

from __future__ import annotations

import abc
import builtins
import concurrent.futures
import contextlib
import functools
import itertools
import multiprocessing
import re
import sys
import threading
import traceback
import types
import warnings
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar

import numpy as np

from .._errors import AllocationError, WorkerSpecError
from .._events import EventContext, EventHub
from .._executors._base import Executor as _MepaExecutor
from .._executors._dask import DaskExecutor as _MepaDaskExecutor
from .._executors._local import LinearExecutor as _MepaLinearExecutor
from .._executors._local import ThreadExecutor as _MepaThreadExecutor
from .._executors._process import ProcessExecutor as _MepaProcessExecutor
from .._progress import _REGISTER, Progress
from .._worker import Worker as _MepaWorker
from .._worker import physical_cores

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "BoundTaskAllocator",
    "BoundWorkerContext",
    "DaskExecutor",
    "Executor",
    "IndexedBoundWorkerContext",
    "LazyEvaluator",
    "LinearExecutor",
    "MultiTaskAllocator",
    "OutputArray",
    "ParallelProgress",
    "ProcessExecutor",
    "QueueLikeWorkerContext",
    "ShuffleChoice",
    "SingleTaskAllocator",
    "SubExecutor",
    "TaskAllocator",
    "ThreadExecutor",
    "WeightsType",
    "Worker",
    "WorkerContext",
    "check_workers",
    "exception_caught",
    "extract_weights",
    "install",
    "is_main_thread_of_main_process",
    "is_serial",
    "structured_traverse",
    "traverse_args",
    "uninstall",
]

T = TypeVar("T")

_GROUP_INDEX = re.compile(r"^(?P<group>.+)-(?P<index>\d+)$")


# ---------------------------------------------------------------------------------------------
# utils
# ---------------------------------------------------------------------------------------------


def traverse_args(
    args: Iterable[Any], kwargs: dict[str, Any], func: Callable[[Any], Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Apply ``func`` to every positional and keyword argument (not into containers)."""
    return [func(a) for a in args], {k: func(v) for k, v in kwargs.items()}


def structured_traverse(struct: Any, func: Callable[[Any], Any]) -> Any:
    """Apply ``func`` to the leaves of nested lists and dicts, keeping the structure.

    As in the original, only ``list`` and ``dict`` are containers (a tuple is a leaf).

    Examples
    --------
    >>> structured_traverse({"a": [1, (2, 3)]}, lambda x: x * 2)
    {'a': [2, (2, 3, 2, 3)]}
    """
    if isinstance(struct, dict):
        return {key: structured_traverse(value, func) for key, value in struct.items()}
    if isinstance(struct, list):
        return [structured_traverse(value, func) for value in struct]
    return func(struct)


def exception_caught(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``func``, printing the traceback of an exception before it propagates."""
    try:
        return func(*args, **kwargs)
    except BaseException:
        traceback.print_exc()
        raise


def is_main_thread_of_main_process() -> bool:
    """Whether the caller runs in the main thread of a process that has no parent process."""
    return (
        threading.current_thread() is threading.main_thread()
        and multiprocessing.parent_process() is None
    )


def is_serial() -> bool:
    """The original's test for "not inside a parallel worker": the main thread of the main process.

    Tasks of the linear executor run in the caller's thread, so there it is true, as it was in
    the original.
    """
    return is_main_thread_of_main_process()


class OutputArray(Protocol):
    """What ``create_shared_array`` returns: something indexed like a NumPy array."""

    def __setitem__(self, key: Any, value: Any) -> None: ...

    def __getitem__(self, key: Any) -> Any: ...


def check_workers(worker: Any, workers: Iterable[Any] | None) -> list[Any] | None:
    """The original's merge of ``worker=`` and ``workers=`` into one list (or ``None``)."""
    if workers is None:
        return None if worker is None else [worker]
    return list(workers)


# ---------------------------------------------------------------------------------------------
# Worker
# ---------------------------------------------------------------------------------------------


class Worker(_MepaWorker):
    """A :class:`mepa.Worker` with the original's constructor and a weight that can be changed.

    Parameters
    ----------
    name
        ``"{group}-{id}"``, e.g. ``"proc-0"``.
    weight
        The worker's share of the rows in ``arrange``; assign ``worker.weight = w`` to change
        it (checked: finite and ``>= 0``). The executor's next ``arrange`` uses it.
    verbose
        Print the original's warning when the name is not of the form ``"{group}-{id}"``.

    Notes
    -----
    Two workers are equal when their names are: a worker is known by its name within an
    executor, whatever its weight (hashing follows the name, so a changed weight does not
    move it in a set).
    """

    def __init__(self, name: str, weight: float = 1, verbose: bool = True) -> None:
        super().__init__(name, weight)
        if verbose and not _GROUP_INDEX.match(name):
            print(
                "WARNING: worker's name must follow the format '{group name}-{in-group id}', "
                "and in-group id is assumed to start from zero, if not, something may go wrong."
            )

    def __setattr__(self, key: str, value: Any) -> None:
        if key != "weight":
            raise AttributeError(
                f"a Worker's {key} cannot change, got an assignment of {value!r}; only "
                "worker.weight can be assigned (create a new Worker for another name)"
            )
        checked = _MepaWorker(self.name, value)  # raises WorkerSpecError for a bad weight
        object.__setattr__(self, "weight", checked.weight)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _MepaWorker):
            return self.name == other.name
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"Worker(name={self.name}, weight={self.weight})"

    @property
    def id(self) -> int:
        """The in-group id (the original's attribute name for :attr:`index`)."""
        return self.index


def _as_compat_workers(workers: Iterable[_MepaWorker]) -> tuple[Worker, ...]:
    return tuple(
        w if isinstance(w, Worker) else Worker(w.name, w.weight, verbose=False) for w in workers
    )


# ---------------------------------------------------------------------------------------------
# Worker contexts
# ---------------------------------------------------------------------------------------------


class WorkerContext(abc.ABC):
    """Sends events from tasks to the host: ``ctx.fire(event, *args, **kwargs)``."""

    @abc.abstractmethod
    def fire(self, event: Any, *args: Any, **kwargs: Any) -> None:
        """Have the host call the callbacks of ``event`` with these arguments."""

    def bind(self, event: Any, idx: int | None = None) -> BoundWorkerContext:
        """A context that fires ``event`` (with ``idx``: an indexed one, as ``on`` returns)."""
        if idx is None:
            return BoundWorkerContext(self, event)
        return IndexedBoundWorkerContext(self, event, idx=idx)


class BoundWorkerContext:
    """A :class:`WorkerContext` bound to one event: ``fire(*args, **kwargs)``."""

    def __init__(self, context: WorkerContext, event: Any) -> None:
        self.context = context
        self.event = event

    def fire(self, *args: Any, **kwargs: Any) -> None:
        """Fire the bound event."""
        self.context.fire(self.event, *args, **kwargs)


class IndexedBoundWorkerContext(BoundWorkerContext):
    """A bound context that also knows which callback of its event it was made for."""

    def __init__(self, context: WorkerContext, event: Any, idx: int | None = None) -> None:
        super().__init__(context, event)
        self.idx = idx

    def __getstate__(self) -> dict[str, Any]:
        return {"context": self.context, "event": self.event}


class QueueLikeWorkerContext(WorkerContext):
    """Fires by putting ``(event, (args, kwargs))`` on a queue the host reads."""

    def __init__(self, queue: Any = None) -> None:
        self.queue = queue

    def fire(self, event: Any, *args: Any, **kwargs: Any) -> None:
        """Put the event on the queue."""
        self.queue.put((event, (args, kwargs)))


class _HubWorkerContext(WorkerContext):
    """Fires any named event of a mepa :class:`~mepa._events.EventHub`, from anywhere."""

    def __init__(self, template: EventContext) -> None:
        self._template = template
        self._contexts: dict[Any, EventContext] = {}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_HubWorkerContext, (self._template,))

    def fire(self, event: Any, *args: Any, **kwargs: Any) -> None:
        ctx = self._contexts.get(event)
        if ctx is None:
            template = self._template
            ctx = EventContext(template.hub_id, event, channel=template._channel)
            self._contexts[event] = ctx
        ctx.fire(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------


class ParallelProgress(Progress):
    """The original's parallel bar: a :class:`mepa.Progress` with the original's lifetime.

    Parameters
    ----------
    executor
        The executor whose tasks update the bar.
    total
        The creator's own share of the work. As in the original, a bar made with ``total > 0``
        stays open until the creator calls :meth:`close`; a bar made with ``total=0`` is held
        open only by the tasks' ``register`` (or ``with progress(n)``, ``iters``, ``range``)
        and closes by itself when a ``gather`` returns with every registration closed and no
        task of the executor running. (The original closed it at the first moment no
        registration was open, so a task that registered later lost its updates.) A
        :class:`mepa.Progress` made by mepa's own ``executor.progress()`` always waits for the
        creator's ``close``.
    **kwargs
        Passed to :class:`tqdm.tqdm`.
    """

    def __init__(self, executor: Any, *, total: int = 0, **kwargs: Any) -> None:
        if executor is None:
            raise TypeError(
                "ParallelProgress needs the executor whose tasks update it, got None; the "
                "copies tasks use are made for you when the bar is passed to them"
            )
        self.executor = executor
        self._seen_register = False
        self._task_held = total == 0
        super().__init__(executor._events(), total=total, **kwargs)
        if self._task_held:
            with self._lock:
                self._host_holds = False
            watch = getattr(executor, "_watch_bar", None)
            if watch is not None:
                watch(self)

    def _apply(self, kind: int, n: int, *, hold: bool = True) -> None:
        if kind == _REGISTER:
            self._seen_register = True
        super()._apply(kind, n, hold=hold)

    def _finish_if_done(self, *, gathered: bool = False) -> None:
        # Called with self._lock held. A bar held by tasks only closes at the end of a gather
        # (``gathered``): a task submitted later may not have registered yet when the others'
        # registrations close.
        if self._task_held and not self._host_holds and not self._finished:
            busy = getattr(self.executor, "_compat_busy", None)
            if not gathered or not self._seen_register or (busy is not None and busy()):
                return
        super()._finish_if_done()

    def _check_done(self) -> None:
        """Close the bar if no task holds it and none is running (a ``gather`` returned)."""
        with self._lock:
            self._finish_if_done(gathered=True)


# ---------------------------------------------------------------------------------------------
# Allocators
# ---------------------------------------------------------------------------------------------

ShuffleChoice: TypeAlias = (
    "bool | int | np.random.RandomState | np.random.Generator | np.ndarray[Any, Any]"
)
"""The shuffles the original's allocators take."""
WeightsType: TypeAlias = "Iterable[_MepaWorker | float] | Executor"
"""The weights the original's allocators take: an executor, workers or numbers."""


def extract_weights(weights: Any) -> Any:
    """Weights of an executor's workers, of a list of workers or numbers, or of one of them."""
    if isinstance(weights, (Executor, _MepaExecutor)):
        weights = weights.get_workers()
    if isinstance(weights, Iterable):
        return [_extract_weight(w) for w in weights]
    return _extract_weight(weights)


def _extract_weight(weight: Any) -> Any:
    return weight.weight if isinstance(weight, _MepaWorker) else weight


def _shuffle_mask(shuffle: Any, n: int) -> np.ndarray[Any, Any] | None:
    if shuffle is None or shuffle is False:
        return None
    if isinstance(shuffle, np.ndarray) and shuffle.dtype != np.bool_:
        if len(shuffle) != n:
            raise AllocationError(
                f"shuffle must be a permutation of the {n} rows when given as an array, got "
                f"{len(shuffle)} values; pass a permutation of range({n}), a seed or True"
            )
        return shuffle
    if shuffle is True:
        shuffle = 0  # the original's seed for shuffle=True
    if isinstance(shuffle, (int, np.integer)):
        rng: Any = np.random.RandomState(int(shuffle))
    elif isinstance(shuffle, (np.random.RandomState, np.random.Generator)):
        rng = shuffle
    else:
        raise AllocationError(
            f"shuffle must be a bool, an int seed, a RandomState or Generator, or a "
            f"permutation array, got {type(shuffle).__name__}: {shuffle!r}"
        )
    mask = np.arange(n)
    rng.shuffle(mask)
    return mask


class TaskAllocator(abc.ABC):
    """The original's allocator interface: hands out consecutive slices of the data."""

    @abc.abstractmethod
    def slice(self, n_slices: float = 1) -> Any:
        """The next ``n_slices / total`` of the data."""

    @abc.abstractmethod
    def assign(self, worker_or_weight: _MepaWorker | float) -> Any:
        """The next slice for a worker (its weight) or a weight."""

    @abc.abstractmethod
    def iter(self, var_inp: Any) -> Iterator[Any]:
        """One slice per weight (of an executor, workers or numbers)."""

    @property
    @abc.abstractmethod
    def finished(self) -> bool:
        """Whether every row has been handed out."""

    @abc.abstractmethod
    def inverse_shuffle(self, *data: Any) -> Any:
        """Undo the shuffle of whole-length data."""

    @abc.abstractmethod
    def reassemble(self, *data: Any, reverse_shuffle: bool = True) -> Any:
        """Concatenate per-slice results and undo the shuffle."""

    @abc.abstractmethod
    def __getitem__(self, item: int) -> Any: ...


class SingleTaskAllocator(TaskAllocator):
    """Hands out slices of one sequence, in order, as the original did.

    A slice of weight ``w`` is the next ``ceil(len(data) * w / total)`` rows (the original's
    rounding: early slices may be one row longer than their share, and the last ones shorter;
    mepa's own :func:`mepa.arrange` rounds by largest remainder instead). A Python list is
    handed out as lists, an array as arrays.

    Parameters
    ----------
    data
        A sequence supporting ``len`` and slicing (a NumPy array, a list, ...).
    total
        The sum of the weights the slices will be asked with; default ``len(data)``.
    shuffle
        ``False``; ``True`` (seed 0, as the original); an int seed; a ``RandomState`` or
        ``Generator``; or a permutation array of the rows.
    """

    def __init__(self, data: Any, *, total: float | None = None, shuffle: Any = False) -> None:
        self.data = data
        self.total = len(data) if total is None else total
        self.base_index = 0
        self.shuffle_mask = _shuffle_mask(shuffle, len(data))

    def slice(self, n_slices: float = 1) -> Any:
        end = self.base_index + int(np.ceil(len(self.data) * n_slices / self.total))
        start, self.base_index = self.base_index, end
        if self.shuffle_mask is None:
            return self.data[start:end]
        rows = self.shuffle_mask[start:end]
        if isinstance(self.data, list):
            return [self.data[i] for i in rows]
        return self.data[rows]

    def assign(self, worker_or_weight: _MepaWorker | float) -> Any:
        return self.slice(_extract_weight(worker_or_weight))

    def iter(self, var_inp: Any) -> Iterator[Any]:
        for weight in extract_weights(var_inp):
            yield self.assign(weight)

    @property
    def finished(self) -> bool:
        return self.base_index >= len(self.data)

    def inverse_shuffle(self, *data: Any) -> Any:
        (whole,) = _one("inverse_shuffle", data)
        if self.shuffle_mask is None:
            return whole
        inverse = np.empty_like(self.shuffle_mask)
        inverse[self.shuffle_mask] = np.arange(len(self.shuffle_mask))
        return np.asarray(whole)[inverse]

    def reassemble(self, *data: Any, reverse_shuffle: bool = True) -> Any:
        (pieces,) = _one("reassemble", data)
        whole = np.concatenate(pieces, axis=0)
        return self.inverse_shuffle(whole) if reverse_shuffle else whole

    def __getitem__(self, item: int) -> SingleTaskAllocator:
        if item > 0:
            warnings.warn(
                f"Trying to access single allocator with index {item}, got self anyway.",
                stacklevel=2,
            )
        return self


def _one(method: str, data: tuple[Any, ...]) -> tuple[Any]:
    if len(data) != 1:
        raise AllocationError(
            f"SingleTaskAllocator.{method} takes one data argument, got {len(data)}; the "
            "allocator of arrange_many(a, b) takes one per array"
        )
    return (data[0],)


class MultiTaskAllocator(TaskAllocator):
    """Slices several sequences of the same length together (the same shuffle for all)."""

    def __init__(self, *data_list: Any, total: float | None = None, shuffle: Any = False) -> None:
        if isinstance(shuffle, (np.random.RandomState, np.random.Generator)):
            shuffle = _shuffle_mask(shuffle, len(data_list[0]))  # one permutation for all
        self.allocators = [
            SingleTaskAllocator(data, total=total, shuffle=shuffle) for data in data_list
        ]

    def slice(self, n_slices: float = 1) -> list[Any]:
        return [a.slice(n_slices) for a in self.allocators]

    def assign(self, worker_or_weight: _MepaWorker | float) -> list[Any]:
        return [a.assign(worker_or_weight) for a in self.allocators]

    def iter(self, var_inp: Any) -> Iterator[tuple[Any, ...]]:
        yield from zip(*(a.iter(var_inp) for a in self.allocators), strict=False)

    @property
    def finished(self) -> bool:
        return any(a.finished for a in self.allocators)

    def shuffle_masks(self) -> list[Any]:
        """The permutation of each sequence (``None`` when unshuffled)."""
        return [a.shuffle_mask for a in self.allocators]

    def inverse_shuffle(self, *data_list: Any) -> list[Any]:
        return [a.inverse_shuffle(d) for d, a in zip(data_list, self.allocators, strict=False)]

    def reassemble(self, *data_list: Any, reverse_shuffle: bool = True) -> list[Any]:
        if len(data_list) != len(self.allocators):
            raise AllocationError(
                f"reassemble takes one list of results per arranged array "
                f"({len(self.allocators)}), got {len(data_list)}; call "
                "alloc.reassemble(results_of_a, results_of_b, ...)"
            )
        return [
            a.reassemble(d, reverse_shuffle=reverse_shuffle)
            for d, a in zip(data_list, self.allocators, strict=True)
        ]

    def __getitem__(self, item: int) -> SingleTaskAllocator:
        return self.allocators[item]


class BoundTaskAllocator(TaskAllocator):
    """An allocator with the weights it will be sliced by; iterating gives one slice per weight."""

    def __init__(self, allocator: TaskAllocator, weights: Any) -> None:
        self.allocator = allocator
        self.weights = extract_weights(weights)

    @staticmethod
    def arrange(data: Any, *, weights: Any, shuffle: Any = False) -> BoundTaskAllocator:
        """Slice ``data`` by ``weights``."""
        weights = extract_weights(weights)
        return BoundTaskAllocator(
            SingleTaskAllocator(data, total=sum(weights), shuffle=shuffle), weights=weights
        )

    @staticmethod
    def arrange_many(*data_list: Any, weights: Any, shuffle: Any = False) -> BoundTaskAllocator:
        """Slice several sequences together by ``weights``."""
        weights = extract_weights(weights)
        return BoundTaskAllocator(
            MultiTaskAllocator(*data_list, total=sum(weights), shuffle=shuffle), weights=weights
        )

    def slice(self, n_slices: float = 1) -> Any:
        return self.allocator.slice(n_slices)

    def assign(self, worker_or_weight: _MepaWorker | float) -> Any:
        return self.allocator.assign(worker_or_weight)

    def iter(self, var_inp: Any) -> Iterator[Any]:
        yield from self.allocator.iter(var_inp)

    @property
    def finished(self) -> bool:
        return self.allocator.finished

    def inverse_shuffle(self, *data: Any) -> Any:
        return self.allocator.inverse_shuffle(*data)

    def reassemble(self, *data_list: Any, reverse_shuffle: bool = True) -> Any:
        return self.allocator.reassemble(*data_list, reverse_shuffle=reverse_shuffle)

    def __iter__(self) -> Iterator[Any]:
        yield from self.allocator.iter(self.weights)

    def __getitem__(self, item: int) -> Any:
        return self.allocator[item]


# ---------------------------------------------------------------------------------------------
# Lazy results (the original linear executor's futures)
# ---------------------------------------------------------------------------------------------


class LazyEvaluator(concurrent.futures.Future[Any]):
    """``func(*args, **kwargs)``, computed the first time its result is asked for.

    A :class:`concurrent.futures.Future` (so ``gather``, ``wait`` and ``as_completed`` take
    it); ``get()`` and ``result()`` run the call once, in the caller's thread, and keep the
    result (or the exception). The linear executor of this module returns these, so its tasks
    run when they are gathered, as in the original.
    """

    def __init__(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self._start_lock = threading.Lock()
        self._started = False

    def _run(self) -> None:
        with self._start_lock:
            if self._started:
                return
            self._started = True
        if not self.set_running_or_notify_cancel():
            return
        try:
            value = self.func(*self.args, **self.kwargs)
        except BaseException as exc:
            self.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self.set_result(value)

    def result(self, timeout: float | None = None) -> Any:
        self._run()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._run()
        return super().exception(timeout)

    def get(self) -> Any:
        """The result, computed now if it was not yet."""
        return self.result()

    def __getitem__(self, key: str) -> Any:
        return self.kwargs[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.kwargs[key] = value


def _start_lazy(tree: Any) -> None:
    """Start the lazy tasks among ``tree``'s leaves (a task waits for the futures it is given)."""
    from .._tree import iter_leaves

    for leaf in iter_leaves(tree):
        if isinstance(leaf, LazyEvaluator):
            leaf.exception()


# ---------------------------------------------------------------------------------------------
# The original's executor calls
# ---------------------------------------------------------------------------------------------


def _star_call(func: Callable[..., T], args: Sequence[Any]) -> T:
    return func(*args)


class _OriginalCalls:
    """The original's user-facing calls, built on ``do_submit``, ``gather`` and ``get_workers``."""

    get_workers: Callable[[], Collection[_MepaWorker]]
    gather: Callable[..., Any]
    do_submit: Callable[..., Any]

    def submit(
        self, func: Callable[..., Any], *args: Any, worker: Any = None, workers: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Schedule ``func(*args, **kwargs)``; ``worker=w`` or ``workers=[...]`` pins it.

        ``worker`` and ``workers`` are this call's own keywords, as in the original: they are
        never passed on to ``func``. To call a function that takes an argument named
        ``worker``, bind it first (``functools.partial(func, worker=...)``) or use
        :meth:`mepa.Executor.submit`, which passes every keyword on.
        """
        return self.do_submit(func, *args, workers=check_workers(worker, workers), **kwargs)

    def submit_and_gather(
        self, func: Callable[..., Any], *args: Any, worker: Any = None, workers: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Submit, then gather the result."""
        return self.gather(self.submit(func, *args, worker=worker, workers=workers, **kwargs))

    def distribute(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """One task per worker, pinned to it; every allocator argument gives that worker's slice.

        Allocators are found among the arguments and inside lists and dicts (as the original).
        """
        futures = []
        for w in self.get_workers():
            def pick(p: Any, w: Any = w) -> Any:
                return p.assign(w) if isinstance(p, TaskAllocator) else p

            futures.append(
                self.submit(
                    func, *structured_traverse(list(args), pick),
                    **structured_traverse(kwargs, pick), worker=w,
                )
            )
        return futures

    def distribute_and_gather(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Distribute, then gather the results."""
        return self.gather(self.distribute(func, *args, **kwargs))

    def map_async(
        self, func: Callable[..., Any], *iterables: Iterable[Any], worker: Any = None,
        workers: Any = None, chunksize: int | None = None,
    ) -> list[Any]:
        """One future per item; ``gather`` of them is the flat list of results.

        With ``worker=`` or ``workers=``, item ``i`` is pinned to
        ``workers[(i // chunksize) % len(workers)]`` (``chunksize`` defaults to the number of
        workers), as in the original.
        """
        pins = check_workers(worker, workers)
        if pins is None:
            pins = list(self.get_workers())
        n = len(pins)
        if chunksize is None:
            chunksize = n
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be a positive int or None, got {chunksize!r}")
        return [
            self.do_submit(func, *item, workers=[pins[(i // chunksize) % n]] if n else None)
            for i, item in enumerate(zip(*iterables, strict=False))
        ]

    def map(
        self, func: Callable[..., Any], *iterables: Iterable[Any], worker: Any = None,
        workers: Any = None, chunksize: int | None = None,
    ) -> list[Any]:
        """``[func(*xs) for xs in zip(*iterables)]`` in parallel, as a list."""
        return list(self.gather(self.map_async(
            func, *iterables, worker=worker, workers=workers, chunksize=chunksize
        )))

    def starmap(
        self, func: Callable[..., Any], iterables: Iterable[Sequence[Any]], worker: Any = None,
        workers: Any = None, chunksize: int | None = None,
    ) -> list[Any]:
        """``[func(*args) for args in iterables]`` in parallel, as a list."""
        return self.map(
            functools.partial(_star_call, func), iterables, worker=worker, workers=workers,
            chunksize=chunksize,
        )

    def starmap_async(
        self, func: Callable[..., Any], iterables: Iterable[Sequence[Any]], worker: Any = None,
        workers: Any = None, chunksize: int | None = None,
    ) -> list[Any]:
        """Like :meth:`map_async`, each item being a whole argument tuple."""
        return self.map_async(
            functools.partial(_star_call, func), iterables, worker=worker, workers=workers,
            chunksize=chunksize,
        )

    def extract_by_name(self, pat: Any) -> SubExecutor:
        """A sub-executor of the workers that match ``pat``, as the original matched.

        A string matches names containing it; a compiled regular expression matches from the
        start of the name (``re.Pattern.match``); a callable is a predicate on the worker;
        anything else (e.g. a :class:`Worker`) matches workers equal to it. No match gives a
        sub-executor without workers, not an error.
        """
        if isinstance(pat, str):
            chosen = [w for w in self.get_workers() if pat in w.name]
        elif isinstance(pat, re.Pattern):
            chosen = [w for w in self.get_workers() if pat.match(w.name)]
        elif callable(pat):
            chosen = [w for w in self.get_workers() if pat(w)]
        else:
            chosen = [w for w in self.get_workers() if pat == w]
        return SubExecutor(parent=self, workers=chosen)

    def arrange(self, data: Any, shuffle: Any = False) -> BoundTaskAllocator:
        """Slice ``data`` by the workers' weights (the original's allocator and rounding)."""
        return BoundTaskAllocator.arrange(data, weights=self.get_workers(), shuffle=shuffle)

    def arrange_many(self, *data_list: Any, shuffle: Any = False) -> BoundTaskAllocator:
        """Slice several sequences together; ``alloc.reassemble(res_a, res_b)`` undoes it."""
        return BoundTaskAllocator.arrange_many(
            *data_list, weights=self.get_workers(), shuffle=shuffle
        )

    def get_n_workers(self) -> int:
        """Number of workers."""
        return len(self.get_workers())

    def get_total_weights(self) -> float:
        """Sum of the workers' weights."""
        return builtins.sum(w.weight for w in self.get_workers())

    def _watch_bar(self, bar: ParallelProgress) -> None:
        """Close ``bar`` (held by tasks only) at the end of a gather that leaves it unheld."""
        self.__dict__.setdefault("_compat_bars", weakref.WeakSet()).add(bar)

    def _close_idle_bars(self) -> None:
        for bar in list(self.__dict__.get("_compat_bars", ())):
            bar._check_done()

    def _pick(self, workers: Any) -> _MepaWorker | None:
        """The worker a task pinned to ``workers`` runs on (round robin among several)."""
        if workers is None:
            return None
        pins = list(workers)
        if not pins:
            return None
        mine = {w.name: w for w in self.get_workers()}
        resolved = []
        for pin in pins:
            name = pin.name if isinstance(pin, _MepaWorker) else pin
            if not isinstance(name, str) or name not in mine:
                raise WorkerSpecError(
                    f"worker=/workers= pin a task to this executor's workers {sorted(mine)}, "
                    f"got {pin!r}; pass a Worker of executor.get_workers() (or its name). "
                    "To give your function an argument named 'worker', bind it with "
                    "functools.partial(fn, worker=...) or use mepa's own Executor.submit"
                )
            resolved.append(mine[name])
        if len(resolved) == 1:
            return resolved[0]
        counter = self.__dict__.setdefault("_pin_counter", itertools.count())
        picked: _MepaWorker = resolved[next(counter) % len(resolved)]
        return picked


# ---------------------------------------------------------------------------------------------
# The abstract executor (for subclasses written to the original)
# ---------------------------------------------------------------------------------------------


class Executor(_OriginalCalls, abc.ABC):
    """The original's abstract executor.

    The executors of this module (:class:`LinearExecutor`, ...) are registered as its
    subclasses, so ``isinstance(executor, Executor)`` holds for them. A subclass written to
    the original implements ``do_submit(func, *args, workers=None, **kwargs)`` (returning a
    future-like object), ``get_workers()``, ``get_worker_context()``,
    ``receive_events(timeout)`` (a generator of ``(event, (args, kwargs))``, ``(None, None)``
    when idle) and ``_gather_single(future)`` or ``_gather(futures)``; it gets every call of
    the original: ``submit``, ``map``, ``distribute``, ``arrange``, ``gather``, ``on``,
    ``register``, ``progress``, ...

    Parameters
    ----------
    event_interval
        Seconds ``receive_events`` may wait for an event.
    """

    def __init__(self, event_interval: float = 0.5) -> None:
        self.event_interval = event_interval
        self._running = False
        self._event_monitor_thread: threading.Thread | None = None
        self._event_handlers: dict[Any, list[Callable[..., Any] | None]] = {}
        self._anonymous = itertools.count()
        self._hub: EventHub | None = None

    @abc.abstractmethod
    def do_submit(
        self, func: Callable[..., Any], *args: Any, workers: Any = None, **kwargs: Any
    ) -> Any:
        """Start ``func(*args, **kwargs)`` (on one of ``workers`` if given); return a future."""

    @abc.abstractmethod
    def get_workers(self) -> Collection[_MepaWorker]:
        """The workers."""

    @abc.abstractmethod
    def get_worker_context(self) -> WorkerContext:
        """The context tasks fire events through."""

    @abc.abstractmethod
    def receive_events(self, timeout: float) -> Iterator[tuple[Any, Any]]:
        """Yield ``(event, (args, kwargs))`` fired by tasks, ``(None, None)`` when idle."""

    def is_local(self) -> bool:
        """Whether every worker runs on this machine (the original's default: ``False``)."""
        return False

    def shares_memory(self) -> bool:
        """Whether tasks see the host's memory (default ``False``)."""
        return False

    def needs_serialization(self) -> bool:
        """``not shares_memory()``."""
        return not self.shares_memory()

    def create_shared_array(self, shape: Any, dtype: Any) -> Any:
        """An uninitialised array tasks can write into, or ``None`` without shared memory."""
        return np.empty(shape, dtype=dtype) if self.shares_memory() else None

    def scatter(self, data: T) -> T:
        """Big data to pass to tasks (``data`` itself here)."""
        return data

    def gather(self, futures: Any) -> Any:
        """Results of a future, or of lists and dicts of futures, in the same structure."""
        try:
            with self.monitor_events():
                return self._gather(futures)
        finally:
            self._close_idle_bars()

    def gather_single(self, future: Any) -> Any:
        """The result of one future."""
        try:
            with self.monitor_events():
                return self._gather_single(future)
        finally:
            self._close_idle_bars()

    def _gather(self, futures: Any) -> Any:
        return structured_traverse(futures, self._gather_single)

    def _gather_single(self, future: Any) -> Any:
        return self._gather(future)

    # -- events, as the original dispatched them

    def on(self, event: Any, callback: Callable[..., Any]) -> IndexedBoundWorkerContext:
        """Call ``callback`` for every ``event`` a task fires; returns the bound context."""
        callbacks = self._event_handlers.setdefault(event, [])
        callbacks.append(callback)
        return IndexedBoundWorkerContext(self.get_worker_context(), event, idx=len(callbacks) - 1)

    def register(self, callback: Callable[..., Any]) -> BoundWorkerContext:
        """Bind ``callback`` to a new anonymous event; returns the bound context."""
        return self.on(("__anonymous__", next(self._anonymous)), callback)

    def off(self, event: Any, callback: Callable[..., Any] | None = None) -> None:
        """Remove a callback (by its bound context, or by event and callback) or an event."""
        if isinstance(event, BoundWorkerContext):
            key, idx = event.event, getattr(event, "idx", None)
        else:
            key, idx = event, None
        callbacks = self._event_handlers.get(key)
        if callbacks is None:
            return
        if idx is None and callback is not None and callback in callbacks:
            idx = callbacks.index(callback)
        if idx is None:
            del self._event_handlers[key]
            return
        callbacks[idx] = None
        while callbacks and callbacks[-1] is None:
            callbacks.pop()
        if not callbacks:
            del self._event_handlers[key]

    def dispatch_event(self, event: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Call the callbacks of ``event``."""
        for listener in list(self._event_handlers.get(event, ())):
            if listener is not None:
                listener(*args, **kwargs)

    def monitor(self) -> None:
        """Dispatch events until the monitoring stops (the monitor thread's loop).

        Once stopped, events already received are still dispatched until ``receive_events``
        reports none (the original stopped after the next one, leaving the rest queued).
        """
        for event, msg in self.receive_events(self.event_interval):
            if event is not None:
                args, kwargs = msg
                self.dispatch_event(event, args, kwargs)
            elif not self._running:
                return

    def check_if_events_thread_are_required(self) -> bool:
        """Whether any callback is registered."""
        return bool(self._event_handlers)

    @contextlib.contextmanager
    def monitor_events(self) -> Iterator[None]:
        """Dispatch events in a thread while the block runs (``gather`` does this)."""
        if self._running:
            yield
            return
        self._running = True
        thread = None
        if self.check_if_events_thread_are_required():
            thread = threading.Thread(target=self.monitor, daemon=True)
            thread.start()
        self._event_monitor_thread = thread
        try:
            yield
        finally:
            self._running = False
            if thread is not None:
                thread.join()

    def _events(self) -> EventHub:
        if self._hub is None:
            self._hub = EventHub()
        return self._hub

    def progress(self, total: int = 0, **kwargs: Any) -> ParallelProgress:
        """A parallel bar tasks update (see :class:`ParallelProgress`).

        Tasks of a subclass running in other processes of this machine reach it through
        mepa's event hub; updates are sent every few tens of milliseconds.
        """
        return ParallelProgress(self, total=total, **kwargs)

    def shutdown(self, wait: bool = True) -> None:
        """Release what the executor holds."""
        hub, self._hub = self._hub, None
        if hub is not None:
            hub.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(wait=True)


class SubExecutor(Executor):
    """Some of a parent executor's workers (made by ``extract_by_name``); may have none."""

    def __init__(self, parent: Any, workers: Iterable[_MepaWorker]) -> None:
        super().__init__()
        self.parent = parent
        self.workers = list(workers)

    def do_submit(
        self, func: Callable[..., Any], *args: Any, workers: Any = None, **kwargs: Any
    ) -> Any:
        if workers is not None:
            outside = [w for w in workers if w not in self.workers]
            if outside:
                warnings.warn(
                    f"Unexpected workers found: {outside}; pinning anyway", stacklevel=3
                )
        else:
            workers = self.workers
        return self.parent.do_submit(func, *args, workers=workers, **kwargs)

    def get_workers(self) -> list[_MepaWorker]:
        return self.workers

    def is_local(self) -> bool:
        return bool(self.parent.is_local())

    def shares_memory(self) -> bool:
        return bool(self.parent.shares_memory())

    def create_shared_array(self, shape: Any, dtype: Any) -> Any:
        return self.parent.create_shared_array(shape, dtype)

    def gather(self, futures: Any) -> Any:
        return self.parent.gather(futures)

    def scatter(self, data: T) -> T:
        return self.parent.scatter(data)  # type: ignore[no-any-return]

    def get_worker_context(self) -> WorkerContext:
        return self.parent.get_worker_context()  # type: ignore[no-any-return]

    def receive_events(self, timeout: float) -> Iterator[tuple[Any, Any]]:
        return self.parent.receive_events(timeout)  # type: ignore[no-any-return]

    def on(self, event: Any, callback: Callable[..., Any]) -> Any:
        return self.parent.on(event, callback)

    def register(self, callback: Callable[..., Any]) -> Any:
        return self.parent.register(callback)

    def off(self, event: Any, callback: Callable[..., Any] | None = None) -> None:
        self.parent.off(event, callback)

    def progress(self, total: int = 0, **kwargs: Any) -> ParallelProgress:
        return self.parent.progress(total=total, **kwargs)  # type: ignore[no-any-return]

    def shutdown(self, wait: bool = True) -> None:
        """Leaves the parent running."""


# ---------------------------------------------------------------------------------------------
# mepa's executors with the original's calls
# ---------------------------------------------------------------------------------------------


class _OnMepa(_OriginalCalls):
    """The original's calls on a mepa executor (mixed in before the mepa class)."""

    def _compat_init(self: Any, prefix: str | None) -> None:
        if prefix is not None:
            self._workers = tuple(
                Worker(f"{prefix}-{i}", 1, verbose=False) for i in range(len(self._workers))
            )
        else:
            self._workers = _as_compat_workers(self._workers)

    def do_submit(
        self: Any, func: Callable[..., Any], *args: Any, workers: Any = None, **kwargs: Any
    ) -> Any:
        """Start a task on the mepa engine, pinned to ``workers`` if given."""
        pin = self._pick(workers)
        if pin is None:
            future = _MepaExecutor.submit(self, func, *args, **kwargs)
        else:
            future = _MepaExecutor.submit_to(self, pin, func, *args, **kwargs)
        return self._track_task(future)

    def _track_task(self: Any, future: Any) -> Any:
        """Count ``future`` as running until it is done (bars held by tasks wait for it)."""
        with self._lock:
            self.__dict__.setdefault("_compat_tasks", set()).add(future)
        future.add_done_callback(self._task_done)
        return future

    def _task_done(self: Any, future: Any) -> None:
        with self._lock:
            self._compat_tasks.discard(future)

    def _compat_busy(self: Any) -> bool:
        with self._lock:
            tasks = list(self.__dict__.get("_compat_tasks", ()))
        return any(not f.done() for f in tasks)

    def gather(
        self: Any, futures: Any, *, timeout: float | None = None, progress: Any = False
    ) -> Any:
        """Results in the structure of ``futures`` (see :meth:`mepa.Executor.gather`).

        When it returns, bars held by tasks only (:class:`ParallelProgress` made with
        ``total=0``) close if no task holds them any more and none is running.
        """
        try:
            return _MepaExecutor.gather(
                self, futures, timeout=timeout, progress=progress
            )
        finally:
            self._close_idle_bars()

    def get_workers(self: Any) -> list[Worker]:
        """The workers, as a list (as the original returned them)."""
        return list(self._workers)

    def get_worker_context(self: Any) -> WorkerContext:
        """A context firing any named event: ``ctx.fire(event, *args)``."""
        return _HubWorkerContext(self._events().context(("__compat__", "template")))

    def receive_events(self, timeout: float) -> Iterator[tuple[Any, Any]]:
        """mepa's hub dispatches events itself: nothing to receive here."""
        return iter(())

    def dispatch_event(self: Any, event: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Have the dispatcher call the callbacks of ``event`` (soon, in its thread)."""
        self._events().context(event).fire(*args, **kwargs)

    def check_if_events_thread_are_required(self) -> bool:
        """``False``: mepa's hub has its own dispatcher thread."""
        return False

    @contextlib.contextmanager
    def monitor_events(self) -> Iterator[None]:
        """Accepted for the original API: events are dispatched all the time."""
        yield

    def progress(self: Any, total: int = 0, **kwargs: Any) -> ParallelProgress:
        """A :class:`ParallelProgress` (the original's lifetime; see there)."""
        self._check_open()
        return ParallelProgress(self, total=total, **kwargs)


def _units(n_units: int | None) -> int:
    return physical_cores() if n_units is None else n_units


class LinearExecutor(_OnMepa, _MepaLinearExecutor):  # type: ignore[misc]
    """:class:`mepa.LinearExecutor` with the original's calls; tasks run when gathered.

    As in the original, ``submit`` returns a :class:`LazyEvaluator`: the task runs, in the
    caller's thread, when its result is first asked for (by ``gather`` or ``result()``); a task
    never gathered never runs. Workers are ``local-0``, ``local-1``, ...

    Parameters
    ----------
    n_units
        Number of workers (which decides how ``arrange`` slices); default one per physical
        core.
    """

    def __init__(self, n_units: int | None = None) -> None:
        _MepaLinearExecutor.__init__(self, _units(n_units))
        self._compat_init("local")

    def do_submit(
        self, func: Callable[..., Any], *args: Any, workers: Any = None, **kwargs: Any
    ) -> LazyEvaluator:
        """A task that runs when its result is asked for."""
        self._check_open()
        pin = self._pick(workers)

        def run() -> Any:
            _start_lazy((args, kwargs))
            if pin is None:
                future = _MepaExecutor.submit(self, func, *args, **kwargs)
            else:
                future = _MepaExecutor.submit_to(self, pin, func, *args, **kwargs)
            return future.result()

        lazy = LazyEvaluator(run)
        self._track_task(lazy)
        return lazy


class ThreadExecutor(_OnMepa, _MepaThreadExecutor):  # type: ignore[misc]
    """:class:`mepa.ThreadExecutor` with the original's calls; workers ``thread-0``, ...

    Parameters
    ----------
    n_units
        Number of threads; default one per physical core.
    """

    def __init__(self, n_units: int | None = None) -> None:
        _MepaThreadExecutor.__init__(self, _units(n_units))
        self._compat_init("thread")


class ProcessExecutor(_OnMepa, _MepaProcessExecutor):  # type: ignore[misc]
    """:class:`mepa.ProcessExecutor` with the original's calls; workers ``proc-0``, ...

    ``shares_memory()`` is ``True``, as the original answered (arrays from
    ``create_shared_array`` are shared with the workers), and ``needs_serialization()`` is
    ``True``. mepa's own ProcessExecutor answers ``shares_memory() == False``: a task's
    arguments are copies.

    Parameters
    ----------
    n_units
        Number of worker processes; default one per physical core.
    """

    def __init__(self, n_units: int | None = None) -> None:
        _MepaProcessExecutor.__init__(self, _units(n_units))
        self._compat_init("proc")

    def shares_memory(self) -> bool:
        """``True``, as the original answered."""
        return True

    def needs_serialization(self) -> bool:
        """``True``: arguments and results are pickled."""
        return True


class DaskExecutor(_OnMepa, _MepaDaskExecutor):  # type: ignore[misc]
    """:class:`mepa.DaskExecutor` with the original's constructor, calls and shutdown.

    Parameters
    ----------
    scheduler_addr
        The scheduler's address, ``"tcp://host:port"`` (or ``None`` for an embedded cluster,
        a mepa addition).
    extra_paths, excludes, upload_modules
        As for :class:`mepa.DaskExecutor` (``excludes`` names modules).
    shutdown_cluster
        As in the original, :meth:`shutdown` shuts the cluster down (scheduler and workers)
        when connected to ``scheduler_addr``; pass ``False`` to leave it running, which is
        what mepa's own DaskExecutor always does.
    """

    def __init__(
        self, scheduler_addr: str | None = None, extra_paths: Iterable[str] | None = None,
        excludes: Iterable[str] | None = None, upload_modules: bool = True, *,
        shutdown_cluster: bool = True,
    ) -> None:
        _MepaDaskExecutor.__init__(
            self, scheduler_addr, upload_modules=upload_modules,
            extra_paths=extra_paths or (), excludes=excludes or (),
        )
        self._compat_init(None)
        self._shutdown_address = (
            self._scheduler_address if shutdown_cluster and scheduler_addr is not None else None
        )

    def refresh_workers(self) -> tuple[_MepaWorker, ...]:
        """Read the cluster's workers again (as :class:`Worker`)."""
        _MepaDaskExecutor.refresh_workers(self)
        with self._lock:
            self._workers = _as_compat_workers(self._workers)
            return tuple(self._workers)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the executor and, as the original did, the cluster it connected to."""
        _MepaDaskExecutor.shutdown(self, wait, cancel_futures=cancel_futures)
        address, self._shutdown_address = self._shutdown_address, None
        if address is not None:
            import distributed

            client_type: Any = distributed.Client
            with client_type(address, timeout=30, set_as_default=False) as client:
                client.shutdown()


for _cls in (LinearExecutor, ThreadExecutor, ProcessExecutor, DaskExecutor):
    abc.ABCMeta.register(Executor, _cls)  # Executor.register is the original's event method
del _cls


# ---------------------------------------------------------------------------------------------
# import metalpy.mepa
# ---------------------------------------------------------------------------------------------

_SUBMODULES = (
    "dask_executor",
    "dask_helper",
    "executor",
    "lazy_evaluator",
    "linear_executor",
    "parallel_progress",
    "pool_executor",
    "process_executor",
    "queue_like_worker_context",
    "shared_array",
    "sub_executor",
    "task_allocator",
    "thread_executor",
    "utils",
    "worker",
    "worker_context",
)
_ROOT = "metalpy.mepa"
_saved: dict[str, types.ModuleType | None] = {}


def install() -> None:
    """Make ``import metalpy.mepa`` (and each of its submodules) resolve to this module.

    After ``mepa.compat.metalpy.install()``, metalpy's own code, and scripts written for
    ``metalpy.mepa``, run on mepa unchanged. Call it before importing the rest of metalpy
    (modules that imported ``metalpy.mepa`` earlier keep what they got). If metalpy is not
    installed, a ``metalpy`` package holding only ``mepa`` stands in for it. Idempotent;
    :func:`uninstall` undoes it.

    Only this process is affected: worker processes that import metalpy's modules to run a
    task import the original ``metalpy.mepa`` there, which is harmless (what tasks receive
    are mepa's objects).
    """
    if sys.modules.get(_ROOT) is not None and getattr(sys.modules[_ROOT], "__mepa_compat__", False):
        return
    names = [_ROOT, *(f"{_ROOT}.{s}" for s in _SUBMODULES)]
    _saved.clear()
    _saved.update({name: sys.modules.get(name) for name in [*names, "metalpy"]})
    try:
        import metalpy as parent  # type: ignore[import-not-found]
    except ImportError:
        parent = types.ModuleType("metalpy", "Stand-in for metalpy: only metalpy.mepa (mepa).")
        parent.__path__ = []
        sys.modules["metalpy"] = parent
    this = sys.modules[__name__]
    public = {name: getattr(this, name) for name in __all__}
    root = _alias(_ROOT, public)
    root.__path__ = []
    for sub in _SUBMODULES:
        setattr(root, sub, _alias(f"{_ROOT}.{sub}", public))
    parent.mepa = root


def _alias(name: str, public: dict[str, Any]) -> types.ModuleType:
    module = types.ModuleType(name, f"{name}: provided by mepa.compat.metalpy")
    module.__dict__.update(public)
    module.__mepa_compat__ = 1  # type: ignore[attr-defined]
    sys.modules[name] = module
    return module


def uninstall() -> None:
    """Undo :func:`install`: ``metalpy.mepa`` imports the original again."""
    if not _saved:
        return
    for name, module in _saved.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module
    parent = sys.modules.get("metalpy")
    if parent is not None:
        original = _saved.get(_ROOT)
        if original is None:
            with contextlib.suppress(AttributeError):
                delattr(parent, "mepa")
        else:
            parent.mepa = original  # type: ignore[attr-defined]
    _saved.clear()
