"""The futures mepa hands out, and how engine outcomes reach them.

Every executor returns :class:`TaskFuture`, a :class:`concurrent.futures.Future`, so
``concurrent.futures.wait`` and ``as_completed`` work on every backend. The engine's own future
(loky's, a thread pool's, a Dask one, a :class:`BridgeFuture`) stays behind it, in the task's
:class:`Task` state; when it finishes, the executor's ``_settle`` unwraps the task's outcome,
waits until the events the task fired have been dispatched, then completes the user's future.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import traceback
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._worker import Worker

if TYPE_CHECKING:
    from ._base import ChunkHint

__all__ = [
    "BridgeFuture",
    "RemoteTraceback",
    "Task",
    "TaskFuture",
    "add_task_note",
    "attach_remote_traceback",
]

R = TypeVar("R")


class Task:
    """The executor's own state of one task; its :class:`TaskFuture` carries it.

    Adapter hooks (see :class:`~mepa._executors._engine.Engine`) receive the task, never the
    user's future.

    Attributes
    ----------
    worker, chunk
        As on :class:`TaskFuture`.
    hint
        The :class:`~mepa._executors._base.ChunkHint` of a ``distribute`` chunk, until
        ``_prepare_call`` consumed it.
    engine
        The engine's future once the task was submitted, until it settled.
    data
        What the engine adapter keeps for the task between ``_prepare_call`` and
        ``_task_finished`` (e.g. shared-memory leases); the adapter narrows its type.
    settled
        Set once the engine is done with the task and its outcome was handed on (or the
        future completed without reaching the engine).
    future
        A weak reference to the user's future (for engines that map it to their own).
    """

    __slots__ = ("__weakref__", "chunk", "data", "engine", "future", "hint", "settled", "worker")

    def __init__(self, worker: Worker | None = None, chunk: int | None = None) -> None:
        self.worker = worker
        self.chunk = chunk
        self.hint: ChunkHint | None = None
        self.engine: concurrent.futures.Future[Any] | None = None
        self.data: object = None
        self.settled = threading.Event()
        self.future: weakref.ReferenceType[TaskFuture[Any]] | None = None

    def describe(self) -> str:
        """Where the task ran, for error messages: ``"worker 'process-1', chunk 1"``."""
        parts = []
        if self.worker is not None:
            parts.append(f"worker {self.worker.name!r}")
        if self.chunk is not None:
            parts.append(f"chunk {self.chunk}")
        return ", ".join(parts) if parts else "the executor"


class TaskFuture(concurrent.futures.Future[R], Generic[R]):
    """A :class:`concurrent.futures.Future` that knows where its task runs.

    Attributes
    ----------
    worker
        The worker the task was submitted to, or ``None`` if the engine chose.
    chunk
        For :meth:`~mepa.Executor.distribute`, the index of the allocation chunk the task
        received; otherwise ``None``.
    """

    def __init__(self, worker: Worker | None = None, chunk: int | None = None) -> None:
        super().__init__()
        self.worker = worker
        self.chunk = chunk
        self._task = Task(worker, chunk)
        self._task.future = weakref.ref(self)

    def cancel(self) -> bool:
        """Cancel the task if the engine has not started it.

        Returns
        -------
        bool
            ``True`` if the task will not run.
        """
        engine = self._task.engine
        if engine is not None and not self.done() and not engine.cancel():
            return False
        if not super().cancel():
            return False
        notify_cancelled(self)
        return True

    def running(self) -> bool:
        """Whether the task runs now: from when the engine starts it until it is done.

        As for :class:`concurrent.futures.ProcessPoolExecutor`, a task the engine has already
        handed to a worker's queue counts as running (it can no longer be cancelled).
        """
        if super().running():
            return True
        engine = self._task.engine
        return engine is not None and not self.done() and engine.running()

    def describe(self) -> str:
        """Where the task ran, for error messages: ``"worker 'process-1', chunk 1"``."""
        return self._task.describe()


def notify_cancelled(future: concurrent.futures.Future[Any]) -> None:
    """Tell ``concurrent.futures.wait`` and ``as_completed`` that ``future`` was cancelled.

    A stdlib executor's worker does this when it takes a cancelled item off its queue; a
    mepa future has no such queue, so it is done as soon as it is cancelled.
    """
    with future._condition:
        if future._state == concurrent.futures._base.CANCELLED:
            future.set_running_or_notify_cancel()


def add_task_note(exc: BaseException, note: str) -> None:
    """Attach ``note`` to ``exc`` (``add_note`` on Python >= 3.11, ``__notes__`` before)."""
    add_note = getattr(exc, "add_note", None)
    if add_note is not None:
        add_note(note)
    else:  # pragma: no cover - Python 3.10
        notes = list(getattr(exc, "__notes__", []))
        notes.append(note)
        with contextlib.suppress(AttributeError):
            exc.__notes__ = notes  # type: ignore[attr-defined]


class BridgeFuture(concurrent.futures.Future[Any]):
    """A stdlib future completed from an engine's own future (a Dask future, a Ray object).

    An adapter whose engine has no :class:`concurrent.futures.Future` returns one of these
    from ``_engine_submit`` and completes it from the engine's callback with
    :meth:`resolve`, :meth:`reject` or :meth:`remote_cancelled`; each is a no-op once the
    future is done. Cancelling it cancels the engine's task first.

    Parameters
    ----------
    cancel_remote
        Asks the engine to cancel the task; errors it raises are ignored.
    """

    def __init__(self, cancel_remote: Callable[[], object] | None = None) -> None:
        super().__init__()
        self._cancel_remote = cancel_remote

    def cancel(self) -> bool:
        """Cancel the engine's task, then this future (``False`` once it is done)."""
        if self.cancelled():
            return True
        if self.done():
            return False
        if self._cancel_remote is not None:
            with contextlib.suppress(Exception):
                self._cancel_remote()
        return super().cancel()

    def resolve(self, value: Any) -> None:
        """The task returned ``value``."""
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            self.set_result(value)

    def reject(self, exc: BaseException, remote_traceback: Any = None) -> None:
        """The task (or the engine) raised ``exc``; see :func:`attach_remote_traceback`."""
        attach_remote_traceback(exc, remote_traceback)
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            self.set_exception(exc)

    def remote_cancelled(self) -> None:
        """The engine cancelled the task on its own (e.g. its client closed)."""
        if concurrent.futures.Future.cancel(self):
            self.set_running_or_notify_cancel()

    def resolve_from(self, read: Callable[[], Any]) -> None:
        """Complete with ``read()``'s value, or with what it raised."""
        try:
            value = read()
        except Exception as exc:  # noqa: BLE001 - the task's failure
            self.reject(exc)
        else:
            self.resolve(value)


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a remote worker, attached as its ``__cause__``.

    Shown by Python's traceback printing as the cause of the error the task raised, as
    loky and :mod:`concurrent.futures.process` do.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def attach_remote_traceback(exc: BaseException, tb: Any) -> None:
    """Set a :class:`RemoteTraceback` as ``exc.__cause__`` unless it already has a cause.

    Parameters
    ----------
    exc
        The exception a task raised, as the host received it.
    tb
        The worker's traceback: a traceback object, its formatted text, or ``None``.
    """
    if exc.__cause__ is not None or tb is None:
        return
    with contextlib.suppress(Exception):
        if isinstance(tb, str):
            text = tb
        else:
            text = "".join(traceback.format_exception(type(exc), exc, tb))
        exc.__cause__ = RemoteTraceback(f'\n"""\n{text}"""')
