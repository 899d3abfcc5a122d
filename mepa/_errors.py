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
        └── WorkerCrashedError                   a worker process died while running a task

An exception raised *inside* a task is not wrapped: ``gather`` re-raises it with its own type,
the remote traceback attached as ``__cause__`` and a note naming the worker (and, for
:meth:`~mepa.Executor.distribute`, the chunk) that raised it.
"""

from __future__ import annotations

import concurrent.futures

__all__ = [
    "AllocationError",
    "ArgumentTypeError",
    "BrokenExecutor",
    "CallbackReentryError",
    "ChunkIndexError",
    "ClusterSpecError",
    "EventChannelError",
    "ExecutorShutdownError",
    "GatherTimeoutError",
    "InvalidArgumentError",
    "MepaError",
    "SerializationError",
    "WorkerCrashedError",
    "WorkerSpecError",
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
