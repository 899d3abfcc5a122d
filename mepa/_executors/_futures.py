"""The futures mepa hands out, and how engine outcomes reach them.

Every executor returns :class:`TaskFuture`, a :class:`concurrent.futures.Future`, so
``concurrent.futures.wait`` and ``as_completed`` work on every backend. The engine's own future
(loky's, a thread pool's, a Dask one) stays behind it; when it finishes, :func:`settle` unwraps
the task's outcome, waits until the events the task fired have been dispatched, then completes
the user's future.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .._worker import Worker

__all__ = ["TaskFuture", "add_task_note", "chain_cancel"]

R = TypeVar("R")


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
        self._engine_cancel: Callable[[], bool] | None = None
        self._hint: Any = None
        self._transport: Any = None
        # Set once the engine is done with the task (its outcome settled) or the future is.
        self._settled = threading.Event()

    def cancel(self) -> bool:
        """Cancel the task if the engine has not started it.

        Returns
        -------
        bool
            ``True`` if the task will not run.
        """
        engine_cancel = self._engine_cancel
        if engine_cancel is not None and not self.done() and not engine_cancel():
            return False
        return super().cancel()

    def describe(self) -> str:
        """Where the task ran, for error messages: ``"worker 'process-1', chunk 1"``."""
        parts = []
        if self.worker is not None:
            parts.append(f"worker {self.worker.name!r}")
        if self.chunk is not None:
            parts.append(f"chunk {self.chunk}")
        return ", ".join(parts) if parts else "the executor"


def chain_cancel(future: TaskFuture[Any], engine: concurrent.futures.Future[Any]) -> None:
    """Make cancelling ``future`` cancel ``engine``."""
    future._engine_cancel = engine.cancel


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
