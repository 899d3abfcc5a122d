"""The executor contract, implemented once on top of an engine's ``submit``.

From ``arrange`` to ``reassemble``, with the event path and the completion tokens::

    host                                                        worker (thread, process, Dask, Ray)
    ────                                                        ─────────────────────────────────
    data ─arrange─▶ Allocation (sizes by weight, block order: _chunking)
                      │
                      ├─distribute─▶ _plan_distribute: big data into shared memory once
                      │              (SharedMemoryTransport; None on threads and Dask)
                      │              one task per worker, Allocation argument -> chunk i
                      │                 │
                      │   submit ─▶ _prepare_call: run_task(fn, chunk i) (+ payload pickled,
                      │             arrays as handles) ─▶ _engine_submit ─▶ engine future
                      │                                                     │
                      │                                          run_task ──┤ fn(chunk i)
                      │                                                     │  ctx.fire(...) ─┐
                      │                                                     │  progress.update│
                      │   EventHub ◀── batches (unix socket, Dask topic, ◀──┼── BatchSender ◀─┘
                      │    queue        Ray actor; local: straight to queue)│   (N events,
                      │     │                                               │    T seconds)
                      │     ▼                                               │ task end: flush,
                      │   dispatcher thread ─▶ callbacks, tqdm bars         │ tokens (hub,
                      │     │                                               │ source, seq)
                      │     │                       engine future done ◀────┘ TaskResult(value,
                      │     │                          │                       tokens)
                      │     │          _settle: _decode_result, _translate_error, _task_finished
                      │     └─ after(tokens) ◀──────── _after_events(tokens, complete)
                      │          every batch named by a token dispatched ─▶ TaskFuture completes
                      │                                                          │
    result ◀─reassemble── [chunk results] ◀── gather (same structure as given) ◀─┘
      (adjacent views or the workers' ordered copy: no copy (_placement); else one scatter pass)

A task's future completes only once the host dispatched every event the task fired before
it returned (:mod:`mepa._events`: the tokens name the last batch of each source).

Subclasses adapt one engine (the caller's thread, a thread pool, loky processes, a Dask
cluster, Ray). They implement the small interface :class:`~mepa._executors._engine.Engine`
documents (``_engine_submit``, ``_engine_shutdown``, declared ``capabilities`` and ``errors``,
optionally an event channel and a few hooks); everything a user calls (``submit``, ``map``,
``distribute``, ``gather``, events, progress) is built here, so every backend behaves the same
and one contract suite tests them all.
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.thread  # its exit hook must be registered before ours (below)
import contextlib
import functools
import itertools
import math
import re
import threading
import time
import types
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, ParamSpec, TypeVar

import numpy as np

from .._allocation import Allocation, arrange, arrange_many
from .._errors import (
    ArgumentTypeError,
    BrokenExecutor,
    ErrorMap,
    ExecutorShutdownError,
    InvalidArgumentError,
    WorkerSpecError,
)
from .._tree import flatten, iter_leaves, tree_map, unflatten
from .._types import check_callable, check_timeout, parse_dtype, parse_shape
from .._worker import Worker
from ._engine import Capabilities
from ._futures import BridgeFuture, Task, TaskFuture, add_task_note

if TYPE_CHECKING:
    from typing_extensions import Self

    from .._events import Channel, EventContext, EventHub
    from .._progress import Progress

__all__ = ["DistributePlan", "Executor", "MapIterator", "SubExecutor"]

P = ParamSpec("P")
R = TypeVar("R")

WorkerPattern = str | re.Pattern[str] | Callable[[Worker], bool]


class Executor(ABC):
    """Runs tasks on a fixed set of named, weighted workers.

    An executor is a context manager; leaving the ``with`` block calls :meth:`shutdown`.
    All methods are safe to call from several threads of the host.

    Parameters
    ----------
    workers
        The workers tasks run on. Their weights decide how :meth:`arrange` splits data.
    """

    capabilities: ClassVar[Capabilities] = Capabilities()
    """What this backend can do (see :class:`~mepa._executors._engine.Capabilities`)."""

    errors: ClassVar[ErrorMap] = ErrorMap()
    """How the engine's failures become mepa's errors; the base maps nothing."""

    def __init__(self, workers: Sequence[Worker]) -> None:
        self._workers = _check_workers(workers)
        self._lock = threading.RLock()
        self._is_shutdown = False
        self._hub: EventHub | None = None
        # open bars are kept alive by the event hub; finished ones only by their users
        self._progress_bars: weakref.WeakSet[Progress] = weakref.WeakSet()
        self._pending: set[TaskFuture[Any]] = set()
        self._releaser: threading.Thread | None = None
        # What an executor dropped without shutdown() must still release (its hub, the
        # engine's parts); engines add theirs with _hold().
        self._held: dict[str, Callable[[], object]] = {}
        self._finalizer = weakref.finalize(self, _release_held, self._held)
        self._finalizer.atexit = False  # at exit, each part's own exit handling runs

    # ------------------------------------------------------------------ engine hooks

    def _hold(self, name: str, release: Callable[[], object] | None) -> None:
        """Have ``release()`` called if the executor is garbage collected without shutdown.

        One per ``name`` (a later one replaces it); ``None`` forgets it.
        """
        if release is None:
            self._held.pop(name, None)
        else:
            self._held[name] = release

    @abstractmethod
    def _engine_submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        worker: Worker | None,
    ) -> concurrent.futures.Future[Any]:
        """Start ``fn(*args, **kwargs)`` on the engine and return the engine's future."""

    @abstractmethod
    def _engine_shutdown(self, wait: bool) -> None:
        """Release the engine (threads, processes, cluster connection)."""

    def _event_channel(self, hub: EventHub) -> Channel | None:
        """The channel remote workers reach ``hub`` through; ``None`` for in-process tasks."""
        return None

    def _prepare_call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], task: Task
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """Wrap a task before it goes to the engine; the default adds the events wrapper."""
        from .._events import run_task

        if task.hint is not None:
            fn = task.hint.wrap(fn)
        return run_task, (fn, *args), kwargs

    def _settle(
        self, future: TaskFuture[Any], engine: concurrent.futures.Future[Any]
    ) -> None:
        """Complete ``future`` from the finished ``engine`` future.

        The user's future completes only after every event the task fired has been
        dispatched on the host, so nothing a task reported is missing when ``gather``
        returns.

        This runs in the engine's done-callback, where ``concurrent.futures`` would log and
        drop an exception: whatever an adapter hook raises here becomes the task's outcome
        instead (with a note naming the hook), so no path leaves ``future`` pending.
        """
        from .._events import outcome_tokens, unwrap_outcome

        task = future._task
        outcome: _Outcome
        tokens: Any = ()
        try:
            if engine.cancelled():
                outcome = _Cancelled()
            elif (exc := engine.exception()) is not None:
                tokens = outcome_tokens(exc, remove=True)
                outcome = self._failure(task, exc)
            else:
                value, tokens = unwrap_outcome(engine.result())
                try:
                    outcome = _Value(self._decode_result(task, value))
                except Exception as decode_error:  # noqa: BLE001 - it becomes the task's error
                    _note_hook(decode_error, self, "_decode_result", task)
                    outcome = self._failure(task, decode_error, noted=True)
        except Exception as exc:  # noqa: BLE001 - never leave the future pending
            outcome = _Failed(_note_hook(exc, self, "_settle", task))
        finally:
            # The engine's future refers to this one through its callback: break the cycle,
            # or results (and the shared memory under them) wait for the garbage collector.
            task.engine = None
        try:
            try:
                self._task_finished(task)
            except Exception as exc:  # noqa: BLE001 - the hook's error is the task's outcome
                outcome = _Failed(_note_hook(exc, self, "_task_finished", task))
            try:
                self._after_events(tokens, functools.partial(outcome.apply, future))
            except Exception as exc:  # noqa: BLE001 - bad tokens: fail rather than hang
                _set_exception(future, _note_hook(exc, self, "_after_events", task))
        finally:
            task.settled.set()

    def _failure(self, task: Task, exc: BaseException, *, noted: bool = False) -> _Failed:
        """The task failed with ``exc``: translated, with a note saying where."""
        try:
            translated = self._translate_error(exc, task)
        except Exception as hook_error:  # noqa: BLE001 - the hook's error is the outcome
            hook_error.__context__ = exc
            return _Failed(_note_hook(hook_error, self, "_translate_error", task))
        if not noted:
            add_task_note(translated, f"raised by a task on {task.describe()}")
        return _Failed(translated)

    def _decode_result(self, task: Task, value: Any) -> Any:
        """Turn what the engine returned into the task's result; the default keeps it."""
        return value

    def _task_finished(self, task: Task) -> None:  # noqa: B027 - optional hook
        """Release what the task held (shared memory, ...); called once per started task."""

    def _after_events(self, tokens: Any, then: Callable[[], None]) -> None:
        hub = self._hub
        if hub is None or not tokens:
            then()
        else:
            hub.after(tokens, then)

    def _translate_error(self, exc: BaseException, task: Task) -> BaseException:
        """Map an engine failure to mepa's errors with the class's :attr:`errors` map."""
        return self.errors.translate(exc, task)

    # ------------------------------------------------------------------ workers

    @property
    def workers(self) -> tuple[Worker, ...]:
        """The workers tasks run on, in order."""
        return self._workers

    def get_workers(self) -> tuple[Worker, ...]:
        """Return :attr:`workers`."""
        return self._workers

    def get_n_workers(self) -> int:
        """Number of workers."""
        return len(self._workers)

    def get_total_weights(self) -> float:
        """Sum of the workers' weights."""
        return math.fsum(w.weight for w in self._workers)

    def is_local(self) -> bool:
        """Whether every worker runs on this machine."""
        return True

    def shares_memory(self) -> bool:
        """Whether tasks see the host's memory (an array a task writes to is the host's)."""
        return self.capabilities.shares_memory

    def needs_serialization(self) -> bool:
        """Whether arguments and results are pickled on their way to and from the tasks.

        ``not shares_memory()``: ``False`` for the linear and thread executors, ``True`` for
        processes and Dask. Code that ships big objects can compress them only when this is true.
        """
        return not self.shares_memory()

    def create_shared_array(self, shape: int | tuple[int, ...], dtype: Any = float) -> Any:
        """An uninitialised array that tasks can write into, in place.

        Parameters
        ----------
        shape, dtype
            As for :func:`numpy.empty`.

        Returns
        -------
        numpy.ndarray
            On executors that share memory, a plain array; on the process executor an
            array in shared memory, passed to tasks without a copy.
        """
        return np.empty(parse_shape(shape), dtype=parse_dtype(dtype))

    def extract_by_name(self, pattern: WorkerPattern) -> SubExecutor:
        """A sub-executor over the workers whose name matches ``pattern``.

        Parameters
        ----------
        pattern
            A substring of the name, a compiled regular expression (``search``), or a
            predicate taking a :class:`~mepa.Worker`.

        Returns
        -------
        SubExecutor
            Runs on the parent's engine, pinned to the selected workers. Shutting it down
            leaves the parent running.

        Raises
        ------
        WorkerSpecError
            If no worker matches.
        """
        if isinstance(pattern, str):
            selected = [w for w in self._workers if pattern in w.name]
        elif isinstance(pattern, re.Pattern):
            selected = [w for w in self._workers if pattern.search(w.name)]
        elif callable(pattern):
            selected = [w for w in self._workers if pattern(w)]
        else:
            raise ArgumentTypeError(
                "pattern must be a str, a compiled re.Pattern or a callable taking a Worker, "
                f"got {type(pattern).__name__}: {pattern!r}; pass e.g. 'gpu' or "
                "re.compile(r'node-[0-3]$')"
            )
        if not selected:
            names = [w.name for w in self._workers]
            raise WorkerSpecError(
                f"pattern {pattern!r} matches none of the workers {names}; "
                "choose a pattern that matches at least one worker name"
            )
        return SubExecutor(self, selected)

    def _root(self) -> Executor:
        return self

    # ------------------------------------------------------------------ submit

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> TaskFuture[R]:
        """Schedule ``fn(*args, **kwargs)`` and return a future of its result.

        A future of this executor given among the arguments (also inside lists, tuples and
        dicts) stands for its result: the task starts once it is ready.

        Parameters
        ----------
        fn
            The callable to run.
        *args, **kwargs
            Its arguments.

        Returns
        -------
        TaskFuture
            A :class:`concurrent.futures.Future` of the result.

        Raises
        ------
        ExecutorShutdownError
            After :meth:`shutdown`.
        """
        return self._submit(fn, args, kwargs, None, None)

    def submit_to(
        self, worker: Worker | str, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> TaskFuture[R]:
        """Like :meth:`submit`, pinned to one worker (a :class:`Worker` or its name).

        On the local executors the workers are interchangeable slots of one pool, so the
        pin names the worker in errors and events; on Dask it places the task on that worker.
        """
        return self._submit(fn, args, kwargs, self._resolve_worker(worker), None)

    def submit_and_gather(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Submit ``fn(*args, **kwargs)`` and wait for its result."""
        result: R = self.gather(self._submit(fn, args, kwargs, None, None))
        return result

    def _resolve_worker(self, worker: Worker | str) -> Worker:
        for w in self._workers:
            if w == worker or w.name == worker:
                return w
        names = [w.name for w in self._workers]
        raise WorkerSpecError(
            f"worker must be one of this executor's workers {names}, got {worker!r}; "
            "use executor.workers to list them"
        )

    def _check_open(self) -> None:
        if self._is_shutdown:
            raise ExecutorShutdownError("cannot schedule new futures after shutdown")
        check_not_exiting()

    def _submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        worker: Worker | None, chunk: int | None, hint: Any = None,
    ) -> TaskFuture[Any]:
        self._check_open()
        check_callable("fn", fn, "pass the function first, executor.submit(fn, *args)")
        dependencies = [
            leaf for leaf in itertools.chain(iter_leaves(args), iter_leaves(kwargs))
            if isinstance(leaf, concurrent.futures.Future)
        ]
        future: TaskFuture[Any] = TaskFuture(worker, chunk)
        future._task.hint = hint
        if dependencies:
            self._submit_after(future, fn, args, kwargs, dependencies)
        else:
            self._start(future, fn, args, kwargs)
        return future

    def _start(
        self, future: TaskFuture[Any], fn: Callable[..., Any], args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        root = self._root()
        root._track(future)
        if self is not root:
            self._track(future)  # a sub-executor's shutdown waits for (or cancels) its own
        task = future._task
        hook = "_prepare_call"
        try:
            call, call_args, call_kwargs = root._prepare_call(fn, args, kwargs, task)
            task.hint = None  # consumed: the task must not keep an output buffer alive
            hook = "_engine_submit"
            engine = root._engine_submit(call, call_args, call_kwargs, task.worker)
        except ExecutorShutdownError:
            root._finish_unstarted(future)
            raise
        except Exception as exc:  # noqa: BLE001 - the engine refused the task: its error
            _note_hook(exc, root, hook, task)
            root._finish_unstarted(future)
            try:
                error = root._translate_error(exc, task)
            except Exception as hook_error:  # noqa: BLE001 - the hook's error is the outcome
                hook_error.__context__ = exc
                error = _note_hook(hook_error, root, "_translate_error", task)
            _set_exception(future, error)
            return
        task.engine = engine
        engine.add_done_callback(functools.partial(root._settle, future))

    def _finish_unstarted(self, future: TaskFuture[Any]) -> None:
        """``_task_finished`` for a task the engine never took; its error fails the future."""
        try:
            self._task_finished(future._task)
        except Exception as exc:  # noqa: BLE001 - the hook's error is the task's outcome
            _set_exception(future, _note_hook(exc, self, "_task_finished", future._task))

    def _track(self, future: TaskFuture[Any]) -> None:
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._untrack)

    def _untrack(self, future: concurrent.futures.Future[Any]) -> None:
        assert isinstance(future, TaskFuture)
        with self._lock:
            self._pending.discard(future)
        future._task.settled.set()

    def _submit_after(
        self, future: TaskFuture[Any], fn: Callable[..., Any], args: tuple[Any, ...],
        kwargs: dict[str, Any], dependencies: list[concurrent.futures.Future[Any]],
    ) -> None:
        self._root()._track(future)
        remaining = [len(dependencies)]
        lock = threading.Lock()

        def resolve(leaf: Any) -> Any:
            if isinstance(leaf, concurrent.futures.Future):
                return leaf.result()
            return leaf

        def on_done(_: concurrent.futures.Future[Any]) -> None:
            with lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
            if future.done():
                return
            for dep in dependencies:
                if dep.cancelled():
                    future.cancel()
                    return
                exc = dep.exception()
                if exc is not None:
                    _set_exception(future, exc)
                    return
            try:
                # Submitted before any shutdown: it runs, as every task submitted does.
                self._start(future, fn, tree_map(resolve, args), tree_map(resolve, kwargs))
            except Exception as exc:  # noqa: BLE001 - starting failed: the task's error
                _set_exception(future, exc)

        for dep in dependencies:
            dep.add_done_callback(on_done)

    # ------------------------------------------------------------------ gather

    def gather(
        self, futures: Any, *, timeout: float | None = None, progress: bool | dict[str, Any] = False
    ) -> Any:
        """Wait for futures and return their results in the same structure.

        Parameters
        ----------
        futures
            One future, or any nesting of lists, tuples and dicts of futures (other leaves
            pass through unchanged), or the iterator :meth:`map` returns (its results are
            collected into a list).
        timeout
            Seconds to wait in all; ``None`` waits as long as it takes.
        progress
            ``True`` (or a dict of tqdm options) shows a bar of finished tasks.

        Returns
        -------
        object
            The results, shaped like ``futures``.

        Raises
        ------
        Exception
            The first failed task's exception in the order of ``futures``, with its type and
            the remote traceback as ``__cause__``.
        TimeoutError
            If ``timeout`` passes first.
        KeyboardInterrupt
            On Ctrl-C: pending tasks are cancelled first.
        """
        self._refuse_in_callback("gather")
        timeout = check_timeout(timeout)
        if not isinstance(progress, (bool, dict)):
            raise ArgumentTypeError(
                f"progress must be a bool or a dict of tqdm options, got "
                f"{type(progress).__name__}: {progress!r}; pass True, or e.g. {{'desc': 'fit'}}"
            )
        if isinstance(futures, MapIterator):
            return futures.collect(timeout)
        leaves, spec = flatten(futures)
        for leaf in leaves:
            _check_gathered_leaf(leaf)
        pending = [f for f in leaves if isinstance(f, concurrent.futures.Future)]
        deadline = _deadline(timeout)
        try:
            if progress:
                self._wait_with_bar(pending, deadline, progress)
            results = [
                leaf.result(_remaining(deadline)) if isinstance(leaf, concurrent.futures.Future)
                else leaf
                for leaf in leaves
            ]
        except KeyboardInterrupt:
            self._interrupt(pending)
            raise
        except concurrent.futures.TimeoutError:
            raise _timeout_error(pending, timeout) from None
        return unflatten(spec, results)

    def gather_single(
        self, future: concurrent.futures.Future[R], timeout: float | None = None
    ) -> R:
        """Wait for one future and return its result (name kept from the original API)."""
        result: R = self.gather(future, timeout=timeout)
        return result

    def _wait_with_bar(
        self, pending: list[concurrent.futures.Future[Any]], deadline: float | None,
        options: bool | dict[str, Any],
    ) -> None:
        from tqdm.auto import tqdm

        kwargs: dict[str, Any] = {"desc": "tasks", "unit": "task"}
        if isinstance(options, dict):
            kwargs.update(options)
        with tqdm(total=len(pending), **kwargs) as bar:
            for _ in concurrent.futures.as_completed(pending, timeout=_remaining(deadline)):
                bar.update(1)

    def _refuse_in_callback(self, what: str) -> None:
        """Raise if called from this executor's event dispatcher (a callback) to wait there."""
        hub = self._root()._hub
        if hub is None or not hub.in_dispatcher():
            return
        from .._errors import CallbackReentryError

        raise CallbackReentryError(
            f"{what}() of an executor cannot be called from one of its event callbacks: "
            f"callbacks run in its dispatcher thread {threading.current_thread().name!r}, and "
            "tasks finish only once that thread has dispatched their events, so waiting there "
            f"would never end; call {what}() from another thread (e.g. have the callback put "
            "work on a queue the main thread reads)"
        )

    def _interrupt(self, pending: list[concurrent.futures.Future[Any]]) -> None:
        """Cancel what has not started; engines that can stop running work do so."""
        for f in pending:
            f.cancel()

    # ------------------------------------------------------------------ map

    def map(
        self, fn: Callable[..., R], *iterables: Iterable[Any], chunksize: int | None = None,
        timeout: float | None = None,
    ) -> MapIterator[R]:
        """``fn(*xs) for xs in zip(*iterables)`` in parallel: an iterator of the results, in order.

        As :meth:`concurrent.futures.Executor.map`: every item is submitted at once (in
        batches of ``chunksize``), and the iterator yields each result as soon as it and
        every result before it are in. An exception raised by ``fn`` comes out of
        ``next()`` at its item's place, after the results of the items before it; the
        tasks not yet started are then cancelled. ``list(executor.map(...))`` or
        ``executor.gather(executor.map(...))`` collects every result.

        Parameters
        ----------
        fn
            The callable applied to each item.
        *iterables
            Iterables of arguments, zipped as by :func:`map`.
        chunksize
            Items per task; ``None`` picks two batches per worker.
        timeout
            Seconds, counted from this call, that the iterator waits for results in all;
            ``None`` waits as long as it takes.

        Returns
        -------
        MapIterator
            An iterator of one result per item, in order. Closing it (``close()``, or
            dropping it) before the end cancels the tasks not yet started.

        Raises
        ------
        ExecutorShutdownError
            After :meth:`shutdown` (from this call).
        Exception
            From ``next()``: the exception ``fn`` raised for the item, with its type.
        TimeoutError
            From ``next()``: ``timeout`` passed before the next result was in.
        """
        self._refuse_in_callback("map")
        deadline = _deadline(timeout)
        items = list(zip(*iterables, strict=False))
        batches = self._submit_batches(fn, items, chunksize, _run_map_batch)
        return MapIterator(self, batches, deadline)

    def starmap(
        self, fn: Callable[..., R], iterable: Iterable[Sequence[Any]], chunksize: int | None = None,
        timeout: float | None = None,
    ) -> list[R]:
        """``[fn(*args) for args in iterable]`` in parallel: a list of the results, in order.

        Unlike :meth:`map`, waits for every result (as :meth:`multiprocessing.pool.Pool.starmap`).
        """
        self._refuse_in_callback("starmap")
        deadline = _deadline(timeout)
        batches = self._submit_batches(fn, list(iterable), chunksize, _run_map_batch)
        return list(MapIterator(self, batches, deadline))

    def map_async(
        self, fn: Callable[..., R], *iterables: Iterable[Any], chunksize: int | None = None
    ) -> list[TaskFuture[list[R]]]:
        """Submit :meth:`map`'s batches and return their futures (each gives a list).

        ``[r for batch in executor.gather(futures) for r in batch]`` is the map's result.
        """
        items = list(zip(*iterables, strict=False))
        return self._submit_batches(fn, items, chunksize, _run_star_batch)

    def _submit_batches(
        self, fn: Callable[..., R], items: list[Any], chunksize: int | None,
        runner: Callable[[Callable[..., R], list[Any]], list[R]],
    ) -> list[TaskFuture[list[R]]]:
        self._check_open()
        if chunksize is None:
            chunksize = max(1, math.ceil(len(items) / (2 * self.get_n_workers())))
        elif isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise InvalidArgumentError(
                f"chunksize must be a positive int or None, got {chunksize!r}; pass e.g. "
                "chunksize=100 items per task, or None to choose"
            )
        futures = []
        for start in range(0, len(items), chunksize):
            future: TaskFuture[list[R]] = TaskFuture()
            self._start(future, runner, (fn, items[start:start + chunksize]), {})
            futures.append(future)
        return futures

    # ------------------------------------------------------------------ arrange / distribute

    def arrange(
        self, data: Any, shuffle: Any = False, *, block_rows: int | None = None
    ) -> Allocation:
        """Split ``data`` over this executor's workers, by weight (see :func:`mepa.arrange`)."""
        return arrange(data, self._workers, shuffle=shuffle, block_rows=block_rows)

    def arrange_many(
        self, *arrays: Any, shuffle: Any = False, block_rows: int | None = None
    ) -> Allocation:
        """Split several equal-length arrays the same way (see :func:`mepa.arrange_many`)."""
        return arrange_many(*arrays, weights=self._workers, shuffle=shuffle, block_rows=block_rows)

    def distribute(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> list[TaskFuture[R]]:
        """Call ``fn`` once per worker; each :class:`~mepa.Allocation` argument becomes its chunk.

        Allocations are found among ``args`` and ``kwargs``, also inside lists, tuples and
        dicts. Every allocation must have one chunk per worker (arrange it with this
        executor).

        Returns
        -------
        list of TaskFuture
            One future per worker, in worker order: ready for
            ``alloc.reassemble(executor.gather(futures))``.
        """
        self._check_open()
        allocations = [
            leaf for leaf in itertools.chain(iter_leaves(args), iter_leaves(kwargs))
            if isinstance(leaf, Allocation)
        ]
        n = self.get_n_workers()
        for alloc in allocations:
            if len(alloc) != n:
                from .._errors import AllocationError

                raise AllocationError(
                    f"distribute needs an allocation with one chunk per worker: this executor "
                    f"has {n} workers, got an allocation of {len(alloc)} chunks; build it with "
                    "executor.arrange(data) on the same executor"
                )
        root = self._root()
        plan = root._plan_distribute(allocations) if allocations else None
        futures: list[TaskFuture[R]] = []
        try:
            for i, worker in enumerate(self._workers):
                def pick(leaf: Any, i: int = i) -> Any:
                    if isinstance(leaf, Allocation):
                        return root._chunk_argument(leaf, i, plan)
                    return leaf

                chunk_args = tree_map(pick, args) if allocations else args
                chunk_kwargs = tree_map(pick, kwargs) if allocations else kwargs
                hint = None if plan is None else plan.hint(i)
                futures.append(self._submit(fn, chunk_args, chunk_kwargs, worker, i, hint))
        finally:
            if plan is not None:
                plan.finish(futures)
        return futures

    def distribute_and_gather(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> list[R]:
        """:meth:`distribute` then :meth:`gather`."""
        results: list[R] = self.gather(self.distribute(fn, *args, **kwargs))
        return results

    def _plan_distribute(self, allocations: list[Allocation]) -> DistributePlan | None:
        """Prepare to send chunks of ``allocations``; engines may share the data first."""
        return None

    def _chunk_argument(self, alloc: Allocation, i: int, plan: DistributePlan | None) -> Any:
        """What a task receives for chunk ``i`` of ``alloc``; engines may send a lazy form."""
        return alloc[i]

    def scatter(self, data: R) -> R:
        """Place big data where tasks can read it without sending it again.

        Returns what to pass to tasks instead of ``data``. Executors that share memory
        return ``data`` itself.
        """
        return data

    # ------------------------------------------------------------------ events and progress

    def _events(self) -> EventHub:
        root = self._root()
        with root._lock:
            if root._hub is None:
                from .._events import EventHub

                root._hub = root._make_hub()
                assert isinstance(root._hub, EventHub)
                root._hold("hub", functools.partial(root._hub.close, 5.0))
            return root._hub

    def _make_hub(self) -> EventHub:
        from .._events import EventHub

        hub = EventHub()
        channel = self._event_channel(hub)
        if channel is not None:
            hub.use_channel(channel)
        return hub

    def register(self, callback: Callable[..., Any]) -> EventContext:
        """Bind ``callback`` to a new anonymous event and return its context.

        A task calls ``ctx.fire(*args, **kwargs)``; the host calls ``callback(*args, **kwargs)``
        in the executor's dispatcher thread, in the order each worker fired.
        """
        self._check_open()
        return self._events().register(callback)

    def on(self, event: Hashable, callback: Callable[..., Any]) -> EventContext:
        """Bind ``callback`` to the named ``event`` (several callbacks per event)."""
        self._check_open()
        return self._events().on(event, callback)

    def off(self, event: Any, callback: Callable[..., Any] | None = None) -> None:
        """Unbind: ``off(ctx)``, ``off(event)`` or ``off(event, callback)``."""
        self._events().off(event, callback)

    def progress(self, total: int = 0, **tqdm_kwargs: Any) -> Progress:
        """A tqdm bar on the host that tasks can update.

        Capture it in a closure or pass it as an argument; inside a task use
        ``progress.update(n)``, ``progress.iters(seq)``, ``progress.range(...)``,
        ``progress.register(n)`` or ``with progress(n): ...``.

        Parameters
        ----------
        total
            Initial total; tasks may add to it with ``register``.
        **tqdm_kwargs
            Passed to :class:`tqdm.tqdm` (``desc``, ``unit``, ``disable``, ``file`` ...).
        """
        from .._progress import Progress

        self._check_open()
        bar = Progress(self._events(), total=total, **tqdm_kwargs)
        root = self._root()
        with root._lock:
            root._progress_bars.add(bar)
        return bar

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; release the engine once the tasks in flight are done.

        As :meth:`concurrent.futures.Executor.shutdown`: the tasks already submitted, running
        or queued, still run (and their futures complete) unless ``cancel_futures`` cancels
        those not started; ``submit`` raises from now on. Calling it again is allowed: it
        cancels or waits as asked, and releases nothing twice.

        Parameters
        ----------
        wait
            Return once every task is done and the engine (threads, worker processes, the
            cluster connection) and the event dispatcher are released. ``False`` returns at
            once; they are released in the background when the last task is done (the
            interpreter waits for that before it exits).
            A task the engine lost (it reports it neither running nor done for
            :data:`STALLED_SECONDS` while no task of the executor runs or finishes) fails
            with :class:`~mepa.BrokenExecutor` rather than holding the wait forever.
        cancel_futures
            Cancel the tasks that have not started; running tasks are never interrupted.
        """
        if wait:
            self._refuse_in_callback("shutdown")
        with self._lock:
            first = not self._is_shutdown
            self._is_shutdown = True
            pending = list(self._pending)
        if cancel_futures:
            for future in pending:
                future.cancel()
        if first:
            releaser = threading.Thread(
                target=self._release, args=(pending,), name="mepa-shutdown", daemon=False
            )
            self._releaser = releaser
            if not wait:
                releaser.start()
                _RELEASERS.add(releaser)
                return
            self._release(pending)
        elif wait:
            started = self._releaser
            if started is not None and started.ident is not None:
                started.join()

    def _release(self, pending: list[TaskFuture[Any]]) -> None:
        """Wait until the engine is done with ``pending``, then release everything."""
        for future in _wait_for_engine(pending):
            _set_exception(future, _never_finished(future))
        self._engine_shutdown(True)
        with self._lock:
            bars, self._progress_bars = list(self._progress_bars), weakref.WeakSet()
            hub, self._hub = self._hub, None
        for bar in bars:
            bar.dispose()
        if hub is not None:
            hub.close()  # completes the futures still waiting for events that never came
        for future in pending:
            _set_exception(future, _forgotten(future))
        self._finalizer.detach()  # everything is released

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(wait=True)

    def __repr__(self) -> str:
        state = "shut down" if self._is_shutdown else "running"
        return f"<{type(self).__name__} {state}, {len(self._workers)} workers>"


class MapIterator(Iterator[R]):
    """The results of :meth:`Executor.map`, in order, as they arrive.

    ``next()`` waits for the next item's batch; it raises the exception ``fn`` raised for
    that item (after the results of the items before it), or :class:`TimeoutError` when the
    map's ``timeout`` has passed. After either, and after :meth:`close`, the tasks not yet
    started are cancelled and the iterator is exhausted.
    """

    def __init__(
        self, executor: Executor, batches: Sequence[TaskFuture[list[R]]],
        deadline: float | None,
    ) -> None:
        self._executor = executor
        self._batches: collections.deque[TaskFuture[list[R]]] = collections.deque(batches)
        self._ready: collections.deque[R] = collections.deque()
        self._error: BaseException | None = None
        self._deadline = deadline

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> R:
        while not self._ready:
            error, self._error = self._error, None
            if error is not None:
                raise error
            if not self._batches:
                raise StopIteration
            self._take_batch()
        return self._ready.popleft()

    def _take_batch(self) -> None:
        batch = self._batches[0]
        try:
            values = batch.result(_remaining(self._deadline))
        except KeyboardInterrupt:
            self._executor._interrupt(list(self._batches))
            self.close()
            raise
        except concurrent.futures.TimeoutError:
            self.close()
            raise
        except concurrent.futures.CancelledError as exc:
            self._error = exc
            self.close()
            return
        except Exception as exc:  # noqa: BLE001 - fn's error, raised at its item's place
            self._ready.extend(exc.__dict__.pop(_PARTIAL, ()))
            self._error = exc
            self.close()
            return
        self._batches.popleft()
        self._ready.extend(values)

    def close(self) -> None:
        """Cancel the tasks not yet started and end the iteration (the results in hand stay)."""
        batches, self._batches = self._batches, collections.deque()
        for batch in batches:
            batch.cancel()

    def collect(self, timeout: float | None = None) -> list[R]:
        """Every remaining result, as a list (what ``executor.gather`` returns for a map).

        Parameters
        ----------
        timeout
            Seconds to wait in all, besides the map's own ``timeout``; ``None`` adds no limit.
        """
        deadline = _deadline(timeout)
        if deadline is not None and (self._deadline is None or deadline < self._deadline):
            self._deadline = deadline
        return list(self)

    def __del__(self) -> None:
        # Dropped before the end: as the stdlib's iterator, stop the work nobody will read.
        with contextlib.suppress(Exception):
            self.close()


class LazyChunk:
    """A chunk argument the task itself takes from the data, where it runs.

    Gathering a shuffled chunk copies its rows; done inside the tasks, the copies of all
    chunks run in parallel instead of one after the other in the caller.
    """

    __slots__ = ()

    def resolve(self) -> Any:
        """The chunk."""
        raise NotImplementedError


class _LocalChunk(LazyChunk):
    __slots__ = ("alloc", "index")

    def __init__(self, alloc: Allocation, index: int) -> None:
        self.alloc = alloc
        self.index = index

    def resolve(self) -> Any:
        return self.alloc[self.index]


class ChunkCall:
    """Call ``fn`` with every :class:`LazyChunk` argument replaced by its chunk."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __reduce__(self) -> tuple[Any, ...]:
        return (ChunkCall, (self.fn,))

    def prepare(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """Take the chunks now: the user's function, and the arguments to call it with.

        A worker that must tell its own allocations from the user's calls this first.
        """

        def resolve(leaf: Any) -> Any:
            return leaf.resolve() if isinstance(leaf, LazyChunk) else leaf

        return self.fn, tree_map(resolve, args), tree_map(resolve, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fn, args, kwargs = self.prepare(args, kwargs)
        return fn(*args, **kwargs)


class DistributePlan:
    """What an engine prepared for one ``distribute`` call (e.g. data put in shared memory).

    :meth:`hint` is stored on chunk ``i``'s task for the engine's ``_prepare_call``;
    :meth:`finish` is called once with every future submitted, also when submitting failed.
    """

    def hint(self, i: int) -> Any:
        """Engine data for chunk ``i``'s task."""
        return None

    def finish(self, futures: Sequence[concurrent.futures.Future[Any]]) -> None:
        """Release what the plan holds once ``futures`` are done."""


class ChunkHint:
    """How chunk ``i``'s task is wrapped before it runs (see :meth:`DistributePlan.hint`)."""

    __slots__ = ()

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """The callable to run instead of ``fn``."""
        return fn


class SubExecutor(Executor):
    """Some of a parent executor's workers, on the parent's engine.

    Made by :meth:`Executor.extract_by_name`. Tasks are pinned to the selected workers;
    events and progress go through the parent. :meth:`shutdown` only stops this view.
    """

    def __init__(self, parent: Executor, workers: Sequence[Worker]) -> None:
        super().__init__(workers)
        self._parent = parent

    def _root(self) -> Executor:
        return self._parent._root()

    def _check_open(self) -> None:
        super()._check_open()
        self._parent._check_open()

    def _submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        worker: Worker | None, chunk: int | None, hint: Any = None,
    ) -> TaskFuture[Any]:
        if worker is None and len(self._workers) == 1:
            worker = self._workers[0]
        return super()._submit(fn, args, kwargs, worker, chunk, hint)

    def _start(
        self, future: TaskFuture[Any], fn: Callable[..., Any], args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._root()._start(future, fn, args, kwargs)  # the engine's own way of starting

    def _engine_submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        worker: Worker | None,
    ) -> concurrent.futures.Future[Any]:  # pragma: no cover - _start goes to the root
        return self._root()._engine_submit(fn, args, kwargs, worker)

    def _engine_shutdown(self, wait: bool) -> None:
        pass

    def is_local(self) -> bool:
        return self._root().is_local()

    def shares_memory(self) -> bool:
        return self._root().shares_memory()

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """The parent's."""
        return self._root().capabilities

    def create_shared_array(self, shape: int | tuple[int, ...], dtype: Any = float) -> Any:
        return self._root().create_shared_array(shape, dtype)

    def scatter(self, data: R) -> R:
        return self._root().scatter(data)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop this view: cancel (if asked) and wait for its own tasks; the parent runs on."""
        with self._lock:
            self._is_shutdown = True
            pending = list(self._pending)
        if cancel_futures:
            for future in pending:
                future.cancel()
        if wait:
            for future in _wait_for_engine(pending):
                _set_exception(future, _never_finished(future))


_EXITING = threading.Event()
_RELEASERS: weakref.WeakSet[threading.Thread] = weakref.WeakSet()  # of shutdown(wait=False)


def _interpreter_exiting() -> None:
    _EXITING.set()
    # What shutdown(wait=False) left to finish, finishes now: engines may need the thread
    # pools of concurrent.futures to complete their futures (distributed runs its futures'
    # callbacks in one), and those refuse work once their own exit hook, next, has run.
    for releaser in list(_RELEASERS):
        releaser.join()


# As concurrent.futures does: run when the interpreter starts to exit, before the atexit
# hooks (and before non-daemon threads are joined), so that nothing submitted from then on
# starts a worker pool the interpreter would have to wait for or leave behind. Registered
# after the hook of concurrent.futures' thread pools (imported first), so run before it.
_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(_interpreter_exiting)
else:  # pragma: no cover - the hook exists since Python 3.9
    import atexit

    atexit.register(_interpreter_exiting)


def check_not_exiting() -> None:
    """Raise once the interpreter has started to exit (no new tasks, no new worker pools).

    Raises
    ------
    ExecutorShutdownError
        From an ``atexit`` hook, or from a thread still running while the interpreter exits.
    """
    if _EXITING.is_set():
        raise ExecutorShutdownError(
            "cannot schedule new futures after interpreter shutdown: the interpreter is "
            "exiting (this runs in an atexit hook or a thread it waits for); submit the work "
            "before the main module ends"
        )


def _check_workers(workers: Sequence[Worker]) -> tuple[Worker, ...]:
    workers = tuple(workers)
    if not workers:
        raise WorkerSpecError(
            "an executor needs at least one worker, got none; pass n_workers >= 1"
        )
    for w in workers:
        if not isinstance(w, Worker):
            raise WorkerSpecError(
                f"workers must be mepa.Worker objects, got {type(w).__name__}: {w!r}"
            )
    seen: set[str] = set()
    repeated: set[str] = set()
    for w in workers:  # a set, not names.count: 100,000 workers took 97 s
        (repeated if w.name in seen else seen).add(w.name)
    duplicates = sorted(repeated)
    if duplicates:
        raise WorkerSpecError(
            f"worker names must be unique, got duplicates {duplicates}; rename the workers"
        )
    return workers


def _check_gathered_leaf(leaf: Any) -> None:
    """Refuse containers ``gather`` would pass through with futures still inside them."""
    if isinstance(leaf, (set, frozenset)) and any(
        isinstance(x, concurrent.futures.Future) for x in leaf
    ):
        raise ArgumentTypeError(
            f"futures must be a future, or lists, tuples and dicts of them, got a "
            f"{type(leaf).__name__} of {len(leaf)} futures (unordered: its results could not "
            "be matched to them); pass a list, e.g. gather(list(futures))"
        )
    if isinstance(leaf, types.GeneratorType):
        raise ArgumentTypeError(
            "futures must be a future, or lists, tuples and dicts of them, got a generator; "
            "pass a list, e.g. gather([executor.submit(...) for ...])"
        )


def _deadline(timeout: float | None) -> float | None:
    seconds = check_timeout(timeout)
    return None if seconds is None else time.monotonic() + seconds


def _release_held(held: dict[str, Callable[[], object]]) -> None:
    """Finalizer of an executor dropped without shutdown(): release what it still holds."""
    for release in list(held.values()):
        try:
            release()
        except Exception:  # a finalizer must not raise: say what failed
            import logging

            logging.getLogger("mepa").exception("releasing a dropped executor's %r", release)
    held.clear()


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def _timeout_error(
    pending: list[concurrent.futures.Future[Any]], timeout: float | None
) -> BaseException:
    """A :class:`~mepa.GatherTimeoutError` that names the tasks still unfinished."""
    from .._errors import GatherTimeoutError

    late = [f for f in pending if not f.done()]
    named = [
        f"the task on {f.describe()}" if isinstance(f, TaskFuture) else repr(f) for f in late[:8]
    ]
    if len(late) > len(named):
        named.append(f"and {len(late) - len(named)} more")
    return GatherTimeoutError(
        f"timeout={timeout!r} s passed with {len(late)} of {len(pending)} tasks unfinished: "
        f"{'; '.join(named)}; they keep running: gather them again to wait longer, cancel() "
        "those not started, or stop stuck process tasks with "
        "ProcessExecutor.terminate_workers()"
    )


def _set_result(future: TaskFuture[Any], value: Any) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        future.set_result(value)


class _Value:
    """A task's outcome on the host: its result."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def apply(self, future: TaskFuture[Any]) -> None:
        _set_result(future, self.value)


class _Failed:
    """A task's outcome on the host: an exception (the task's, or an adapter hook's)."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def apply(self, future: TaskFuture[Any]) -> None:
        _set_exception(future, self.exc)


class _Cancelled:
    """A task's outcome on the host: the engine cancelled it."""

    __slots__ = ()

    def apply(self, future: TaskFuture[Any]) -> None:
        future.cancel()


_Outcome = _Value | _Failed | _Cancelled


def _note_hook(exc: BaseException, executor: Executor, hook: str, task: Task) -> BaseException:
    """Say on ``exc`` which adapter hook raised it, for which task; return ``exc``."""
    add_task_note(
        exc,
        f"raised by the adapter hook {type(executor).__name__}.{hook} while handling the "
        f"task on {task.describe()}",
    )
    return exc


def _wait_for_engine(futures: Sequence[TaskFuture[Any]]) -> list[TaskFuture[Any]]:
    """Wait until the engine is done with every task of ``futures`` (``shutdown(wait=True)``).

    A task is done for the engine once its engine future finished and was settled; its own
    future may then still wait for the task's events, which are in transit: they get
    :data:`EVENT_GRACE` seconds in all to arrive before the engine's channel closes (the hub's
    closing then completes those futures without them). A task not yet given to the engine
    (its arguments are futures) counts once it completes or reaches the engine.

    Tasks are waited for as long as the engine works on them: as long as one of them runs
    (its engine future says so) or finishes. Once for :data:`STALLED_SECONDS` none did, the
    ones whose engine futures report neither running nor done are the engine's lost tasks:
    they are returned, not waited for forever. Only engine futures whose ``running`` is the
    stdlib's (the engine marks them running when it starts them: thread pools, loky) can look
    lost; bridge futures and futures that ask a cluster are always waited for (a task queued
    on a busy cluster is legitimately not running).

    Returns
    -------
    list of TaskFuture
        The futures of the tasks the engine forgot; empty when every task was settled.
    """
    waiting = list(futures)
    progress = time.monotonic()
    while True:
        left = [f for f in waiting if not f._task.settled.is_set()]
        now = time.monotonic()
        if len(left) < len(waiting) or any(_engine_busy(f._task) for f in left):
            progress = now
        waiting = left
        if not waiting:
            break
        if now - progress >= STALLED_SECONDS:
            return waiting
        waiting[0]._task.settled.wait(min(0.5, STALLED_SECONDS / 4))
    concurrent.futures.wait(futures, timeout=EVENT_GRACE)
    return []


def _engine_busy(task: Task) -> bool:
    """Whether the engine may still finish ``task``: it runs, settles, or cannot say."""
    engine = task.engine
    if engine is None or engine.done():  # not handed to the engine yet, or settling now
        return True
    if isinstance(engine, BridgeFuture) or type(engine).running is not _STDLIB_RUNNING:
        # A bridge, or a future that asks a cluster: a task queued there behind other
        # clients' work is legitimately not running. Only a future whose engine marks it
        # running when it starts the task (the stdlib's pools, loky) can look lost.
        return True
    return engine.running()


_STDLIB_RUNNING = concurrent.futures.Future.running


EVENT_GRACE = 30.0
"""Seconds ``shutdown(wait=True)`` waits, after the engine finished every task, for events
still in transit from workers (a channel that lost them cannot hold shutdown forever)."""

STALLED_SECONDS = 60.0
"""Seconds ``shutdown(wait=True)`` waits while none of the tasks it waits for runs or finishes;
then the tasks the engine reports neither running nor done are failed as lost."""


def _never_finished(future: TaskFuture[Any]) -> BrokenExecutor:
    return BrokenExecutor(
        f"the engine never finished the task on {future.describe()}: shutdown(wait=True) "
        f"waited {STALLED_SECONDS:g} s in which the engine reported it neither running nor "
        "done and no other task of the executor ran or finished, so the engine lost it (a "
        "bug of the executor's engine adapter); the task is failed rather than waited for "
        "forever"
    )


def _forgotten(future: TaskFuture[Any]) -> BrokenExecutor:
    return BrokenExecutor(
        f"the engine finished with the task on {future.describe()} but never delivered its "
        "outcome; the executor was shut down, so the task is failed rather than left pending"
    )


def _set_exception(future: TaskFuture[Any], exc: BaseException) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        future.set_exception(exc)


def _run_star_batch(fn: Callable[..., R], items: list[Sequence[Any]]) -> list[R]:
    return [fn(*item) for item in items]


_PARTIAL = "__mepa_partial__"
"""Attribute of an exception raised by a map batch: the results of the items before it."""


def _run_map_batch(fn: Callable[..., R], items: list[Sequence[Any]]) -> list[R]:
    results: list[R] = []
    try:
        for item in items:
            results.append(fn(*item))
    except Exception as exc:
        # Pickled with the exception (its __dict__), so the items before it are not lost.
        exc.__dict__[_PARTIAL] = results
        raise
    return results


def check_initializer(initializer: object, initargs: object) -> str:
    """Validate ``initializer=`` and ``initargs=``; return the initializer's name for errors."""
    from .._errors import ArgumentTypeError

    if initializer is not None and not callable(initializer):
        raise ArgumentTypeError(
            f"initializer must be a callable or None, got {type(initializer).__name__}: "
            f"{initializer!r}; pass a function to call in each worker before its first task"
        )
    if not isinstance(initargs, tuple):
        raise ArgumentTypeError(
            f"initargs must be a tuple, got {type(initargs).__name__}: {initargs!r}; pass "
            "the initializer's arguments as a tuple, e.g. initargs=(path,)"
        )
    return getattr(initializer, "__qualname__", None) or repr(initializer)
