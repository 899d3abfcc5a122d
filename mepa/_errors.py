"""Exceptions raised by mepa.

Every exception mepa raises on purpose derives from :class:`MepaError`, and also from the
built-in exception a NumPy or ``concurrent.futures`` user would expect to catch::

    MepaError
    ├── AllocationError (also ValueError)        bad weights, shuffles, data or results
    ├── WorkerSpecError (also ValueError)        bad worker counts, names or weights
    ├── ClusterSpecError (also ValueError)       a cluster address or security that cannot work
    ├── InvalidArgumentError (also ValueError)   any other parameter with an unusable value
    ├── ArgumentTypeError (also TypeError)       a parameter of the wrong type
    ├── ChunkIndexError (also IndexError)        a chunk index out of range
    ├── ExecutorShutdownError (also RuntimeError) submit after shutdown
    ├── SerializationError (also TypeError)      a task, argument or result cannot be pickled
    ├── GatherTimeoutError (also TimeoutError)   gather's timeout passed; names the tasks left
    ├── CallbackReentryError (also RuntimeError) a callback waited on its own executor
    ├── EventChannelError (also ConnectionError) a worker could not send its task's events
    └── BrokenExecutor (also concurrent.futures.BrokenExecutor)
        ├── WorkerCrashedError                   a worker process died while running a task
        └── InitializerError                     a worker's initializer raised

An exception raised *inside* a task is not wrapped: ``gather`` re-raises it with its own type,
the remote traceback attached as ``__cause__`` and a note naming the worker (and, for
:meth:`~mepa.Executor.distribute`, the chunk) that raised it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable, Iterator
from typing import NamedTuple, Protocol

__all__ = [
    "AllocationError",
    "ArgumentTypeError",
    "BrokenExecutor",
    "CallbackReentryError",
    "ChunkIndexError",
    "ClusterSpecError",
    "ErrorMap",
    "ErrorRule",
    "EventChannelError",
    "ExecutorShutdownError",
    "GatherTimeoutError",
    "InitializerError",
    "InvalidArgumentError",
    "MepaError",
    "SerializationError",
    "WorkerCrashedError",
    "WorkerSpecError",
    "is_pickling_error",
]


class MepaError(Exception):
    """Base class of every error mepa raises on purpose."""


class AllocationError(MepaError, ValueError):
    """Data, weights, a shuffle or results that cannot be allocated or reassembled."""


class WorkerSpecError(MepaError, ValueError):
    """A worker count, name or weight that does not describe a usable set of workers."""


class ClusterSpecError(MepaError, ValueError):
    """A cluster address, cluster object or security setting that cannot reach a usable cluster."""


class InvalidArgumentError(MepaError, ValueError):
    """A parameter of the public API given a value it cannot take (a NaN timeout, a size < 0)."""


class ArgumentTypeError(MepaError, TypeError):
    """A parameter of the public API given a value of the wrong type."""


class ChunkIndexError(MepaError, IndexError):
    """A chunk index outside an :class:`~mepa.Allocation`'s chunks."""


class ExecutorShutdownError(MepaError, RuntimeError):
    """A task was submitted to an executor that has been shut down."""


class SerializationError(MepaError, TypeError):
    """A task, one of its arguments or its result could not be pickled."""


class GatherTimeoutError(MepaError, TimeoutError):
    """``gather`` (or ``map``) waited ``timeout`` seconds; the message names the unfinished tasks.

    The tasks go on running: gather them again, cancel the queued ones, or stop a stuck
    process task with :meth:`~mepa.ProcessExecutor.terminate_workers`.
    """


class CallbackReentryError(MepaError, RuntimeError):
    """An event callback called a method of its own executor that waits for tasks.

    Callbacks run in the executor's dispatcher thread, and tasks finish only once that thread
    has dispatched their events: waiting there for tasks would wait forever.
    """


class EventChannelError(MepaError, ConnectionError):
    """A worker could not send the events its task fired to the host (closed socket, EPIPE,
    no file descriptor left); those events are lost and the task fails with this error.
    """


class BrokenExecutor(MepaError, concurrent.futures.BrokenExecutor):
    """The engine behind an executor failed and the pending tasks were lost."""


class InitializerError(BrokenExecutor):
    """The ``initializer`` of an executor's workers raised: the executor cannot run tasks.

    The initializer's own exception is the ``__cause__``. Pending tasks fail with this error
    and so does every later ``submit``, as with :mod:`concurrent.futures`' broken pools.
    """


class WorkerCrashedError(BrokenExecutor):
    """A worker process died while running a task.

    Parameters
    ----------
    message
        What happened, with the exit code or signal where known.
    exitcode
        The worker's exit code (negative: the signal that killed it), or ``None`` if unknown.
    chunk
        The index of the :class:`~mepa.Allocation` chunk the task was running, if any.
    """

    def __init__(
        self, message: str, *, exitcode: int | None = None, chunk: int | None = None
    ) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.chunk = chunk

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_crash, (str(self), self.exitcode, self.chunk))


def _rebuild_crash(message: str, exitcode: int | None, chunk: int | None) -> WorkerCrashedError:
    return WorkerCrashedError(message, exitcode=exitcode, chunk=chunk)


# ---------------------------------------------------------------------- the engines' error map


class TaskPlace(Protocol):
    """What an error rule may say about the task that failed (a :class:`~mepa.TaskFuture`)."""

    @property
    def chunk(self) -> int | None:
        """The allocation chunk the task received, if any."""

    def describe(self) -> str:
        """Where the task ran: ``"worker 'process-1', chunk 1"``."""


class ErrorRule(NamedTuple):
    """One line of an :class:`ErrorMap`: which engine errors, and mepa's error for them.

    Parameters
    ----------
    match
        An exception type (or a tuple of them), or a predicate on the exception.
    build
        Makes mepa's error from the engine's and the task's place; the map sets the engine's
        error as its ``__cause__``.
    """

    match: type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
    build: Callable[[BaseException, TaskPlace], BaseException]

    def matches(self, exc: BaseException) -> bool:
        """Whether ``exc`` is one of this rule's errors."""
        if isinstance(self.match, (type, tuple)):
            return isinstance(exc, self.match)
        return bool(self.match(exc))


class ErrorMap:
    """How an engine's failures become mepa's errors: the first matching rule wins.

    Every adapter translates through one of these (its own rules, then
    :data:`COMMON_ERRORS`), so that a worker death is a :class:`WorkerCrashedError` and an
    unpicklable task a :class:`SerializationError` on every backend. Errors no rule matches,
    such as those a task raised itself, pass through unchanged.

    Parameters
    ----------
    *rules
        :class:`ErrorRule` objects, or other maps whose rules come at that place.

    Examples
    --------
    >>> from mepa._executors._futures import TaskFuture
    >>> lost = ErrorRule(ConnectionResetError, lambda exc, task: WorkerCrashedError(
    ...     f"the worker of the task on {task.describe()} went away"))
    >>> errors = ErrorMap(lost, COMMON_ERRORS)
    >>> errors.translate(ConnectionResetError(), TaskFuture())
    WorkerCrashedError('the worker of the task on the executor went away')
    """

    def __init__(self, *rules: ErrorRule | ErrorMap) -> None:
        flat: list[ErrorRule] = []
        for rule in rules:
            flat.extend(rule.rules if isinstance(rule, ErrorMap) else (rule,))
        self.rules: tuple[ErrorRule, ...] = tuple(flat)

    def translate(self, exc: BaseException, task: TaskPlace) -> BaseException:
        """Mepa's error for ``exc`` (with ``exc`` as its ``__cause__``), or ``exc`` itself."""
        for rule in self.rules:
            if rule.matches(exc):
                error = rule.build(exc, task)
                if error is not exc and error.__cause__ is None:
                    error.__cause__ = exc
                return error
        return exc

    @contextlib.contextmanager
    def raising(self, task: TaskPlace) -> Iterator[None]:
        """Translate what the block raises (for engine calls made on the host)."""
        try:
            yield
        except Exception as exc:
            error = self.translate(exc, task)
            if error is exc:
                raise
            raise error from exc


def is_pickling_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception in its cause or context chain) is a pickling failure.

    Pickle raises :class:`pickle.PicklingError`, but also ``TypeError`` ("cannot pickle
    '_thread.lock' object") and ``AttributeError`` ("Can't pickle local object"); Dask says
    "Could not serialize object".
    """
    import pickle

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, pickle.PicklingError):
            return True
        text = str(current).lower()
        if isinstance(current, (TypeError, AttributeError)) and (
            "pickl" in text or "could not serialize" in text
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def _unpicklable(exc: BaseException, task: TaskPlace) -> BaseException:
    return SerializationError(
        f"the task on {task.describe()}, its arguments or its result could not be pickled: "
        f"{exc}; make sure functions, arguments and results are picklable (cloudpickle "
        "handles lambdas and closures; open files, locks, sockets and clients are not)"
    )


def _as_is(exc: BaseException, task: TaskPlace) -> BaseException:
    return exc


COMMON_ERRORS = ErrorMap(ErrorRule(MepaError, _as_is), ErrorRule(is_pickling_error, _unpicklable))
"""The rules every remote engine shares, after its own: mepa's errors stay as they are,
pickling failures become :class:`SerializationError`."""
