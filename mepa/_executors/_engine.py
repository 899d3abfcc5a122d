"""The seam between :class:`~mepa.Executor` and an engine: what a backend implements.

A backend is a subclass of :class:`~mepa.Executor` that adapts one engine (a thread pool,
loky, a Dask client, Ray). The base class does everything users call (``submit``, ``map``,
``distribute``, ``gather``, events, progress, shutdown); the backend provides the members of
:class:`Engine` below, and nothing else is required. ::

    Executor.submit(fn, *args)
      │  Task (per-task state: worker, chunk, hint, engine future, adapter data)
      ├─ _prepare_call(fn, args, kwargs, task)   optional: wrap the call (events, shared memory)
      ├─ _engine_submit(call, args, kwargs, worker) ─▶ a concurrent.futures.Future
      │       (engines without one return a BridgeFuture and complete it from their callback)
      └─ engine future done ─▶ Executor._settle
             ├─ _decode_result(task, value)       optional
             ├─ _translate_error(exc, task)       default: the class's ``errors`` ErrorMap
             ├─ _task_finished(task)              optional: release what the task held
             └─ after the task's events were dispatched: the user's TaskFuture completes

Whatever a hook raises while a task is settled becomes that task's error, with a note naming
the hook; no future is left pending (see :meth:`Executor._settle`).

Events from remote workers reach the host through the channel :meth:`Engine._event_channel`
returns (a :class:`~mepa._events.Channel` whose receiving side calls
:meth:`~mepa._events.EventHub.deliver_bytes`). Engines whose tasks run in the host process
return ``None``: their events never leave it.

A backend also declares what it can do in :class:`Capabilities`; the contract suite (and
code that must choose) reads the declaration instead of the class name. New backends are
listed in the registry of :mod:`mepa._executors`.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from .._errors import ErrorMap
    from .._events import Channel, EventHub
    from .._worker import Worker
    from ._futures import Task

__all__ = ["Capabilities", "Engine"]


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared once per executor class.

    Parameters
    ----------
    shares_memory
        Tasks run in the host's memory: an array a task writes to is the host's array.
    shared_arrays
        :meth:`~mepa.Executor.create_shared_array` returns an array tasks write into in
        place (true where memory is shared, and on the process executor's shared memory).
    pins_tasks
        :meth:`~mepa.Executor.submit_to` (and ``distribute``) run the task on the named
        worker. Where false, a pin only names the worker in errors and events.
    scatters
        :meth:`~mepa.Executor.scatter` places data with the workers (it is not ``data``
        itself).
    kills_running
        The executor can stop a task that is already running (on Ctrl-C in ``gather``).
    writable_results
        Arrays that ``gather`` returns for ``submit`` and for an unshuffled ``distribute``
        are writable.
    asynchronous
        ``submit`` returns before the task ran (false where tasks run inside ``submit``).
    cancels_queued
        Cancelling the future of a task that has not started keeps it from running.
    """

    shares_memory: bool = False
    shared_arrays: bool = False
    pins_tasks: bool = False
    scatters: bool = False
    kills_running: bool = False
    writable_results: bool = True
    asynchronous: bool = True
    cancels_queued: bool = True


class Engine(Protocol):
    """The members a backend implements (the others have working defaults in the base).

    Required: :meth:`_engine_submit`, :meth:`_engine_shutdown`. Declared: ``capabilities``
    and ``errors``. Optional: :meth:`_event_channel`, :meth:`_prepare_call`,
    :meth:`_decode_result`, :meth:`_task_finished`, :meth:`_translate_error`.
    """

    capabilities: ClassVar[Capabilities]
    """What the backend can do."""

    errors: ClassVar[ErrorMap]
    """How the engine's failures become mepa's errors (a crashed worker, pickling)."""

    def _engine_submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        worker: Worker | None,
    ) -> concurrent.futures.Future[Any]:
        """Start ``fn(*args, **kwargs)`` (on ``worker`` if the engine pins) and return its future.

        The future must complete (or be cancelled) once the engine is done with the task;
        raising here fails the task (the engine refused it). A plain stdlib future must be
        marked running when the task starts (``set_running_or_notify_cancel``), as the
        stdlib's pools and loky do: ``shutdown(wait=True)`` takes one that stays neither
        running nor done, while no other task runs or finishes for ``STALLED_SECONDS``, for
        a task the engine lost, and fails it. Bridge futures, and futures whose ``running``
        asks a cluster, are always waited for.
        """

    def _engine_shutdown(self, wait: bool) -> None:
        """Release the engine; with ``wait``, after its running tasks finished."""

    def _event_channel(self, hub: EventHub) -> Channel | None:
        """The channel remote workers send their events through to ``hub`` (``None``: none)."""

    def _prepare_call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], task: Task
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """Wrap the call before it goes to the engine (the default adds the events wrapper)."""

    def _decode_result(self, task: Task, value: Any) -> Any:
        """Turn what the engine returned into the task's result."""

    def _task_finished(self, task: Task) -> None:
        """Release what ``task`` held; called once per task, before its future completes."""

    def _translate_error(self, exc: BaseException, task: Task) -> BaseException:
        """Map an engine failure to mepa's errors (the default applies ``errors``)."""
