"""Contexts and tokens: what a task fires through, and how its end waits for its events.

An :class:`EventContext` finds, at its first fire in a process, where its events go: the
queue of the hub when the hub lives in this process, else the process's sender of the
context's channel (:mod:`mepa._events._sender`). :func:`run_task` wraps a task and returns
the tokens the host waits for before completing the task's future::

    run_task(fn, *args)
        fn(*args) ─ ctx.fire ... ctx.fire
        flush_process()      ─► one token (hub, source, seq) per sender that sent a batch
        hub._mark()          ─► one token (hub, "", mark) per local hub that got events
        return TaskResult(value, tokens)      (or the exception, tokens attached)
                    │
    host:  hub.after(tokens, complete future)  ─► runs once every named batch is dispatched

Contexts pickle by value: the hub's process pickles them with its channel, and an event key
that would not survive pickling travels as an :class:`AliasEvent`.
"""

from __future__ import annotations

import contextvars
import logging
import os
import pickle
import threading
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, ParamSpec, TypeVar

from ._sender import BatchSender, Channel, Token, _Event, flush_process

if TYPE_CHECKING:

    from ._hub import EventHub

__all__ = [
    "AliasEvent",
    "AnonymousEvent",
    "EventContext",
    "TaskResult",
    "in_task",
    "outcome_tokens",
    "run_task",
    "unwrap_outcome",
]

P = ParamSpec("P")
T = TypeVar("T")

logger = logging.getLogger("mepa.events")

_TOKENS_ATTR = "__mepa_tokens__"

_IN_TASK: contextvars.ContextVar[bool] = contextvars.ContextVar("mepa_in_task", default=False)

# Per-process state, reset in a forked child (_after_fork_in_child).
_GENERATION = 0  # bumped after fork: cached hubs and senders of contexts become stale
_LOCAL_HUBS: weakref.WeakValueDictionary[str, EventHub] = weakref.WeakValueDictionary()
_HUBS_LOCK = threading.Lock()


def _register_hub(hub: EventHub) -> None:
    """Make ``hub`` the target of contexts fired in this process (see :meth:`EventContext.fire`)."""
    with _HUBS_LOCK:
        _LOCAL_HUBS[hub.hub_id] = hub


def _unregister_hub(hub_id: str) -> None:
    """Contexts of a closed hub drop their events from now on."""
    global _GENERATION
    with _HUBS_LOCK:
        _LOCAL_HUBS.pop(hub_id, None)
        _GENERATION += 1


def in_task() -> bool:
    """Whether the calling code runs inside :func:`run_task` (a task), not in host code.

    Returns
    -------
    bool
        ``True`` between the start and the end of a task in the current thread (or context).
    """
    return _IN_TASK.get()


# --------------------------------------------------------------------------------------------
# Contexts


class AnonymousEvent(NamedTuple):
    """Event key made by :meth:`EventHub.register`, unique within its hub."""

    hub_id: str
    number: int


class AliasEvent(NamedTuple):
    """What another process fires for an event key that does not survive pickling.

    A key that compares by identity (``object()``, an instance without ``__eq__``, NaN)
    would arrive as a new object equal to nothing the hub knows; contexts pickled by the hub
    carry this stand-in instead (see :meth:`EventHub.wire_event`).
    """

    hub_id: str
    number: int


class EventContext:
    """Handle a task fires events through; small and picklable (pickle and cloudpickle).

    In the hub's own process, :meth:`fire` puts the event on the hub's queue without pickling
    it. Anywhere else, the event goes to the process's :class:`BatchSender` for the context's
    channel. Build contexts with :meth:`EventHub.on`, :meth:`EventHub.register` or
    :meth:`EventHub.context`.

    Parameters
    ----------
    hub_id
        The id of the hub the events go to.
    event
        The event key callbacks are registered under.
    channel
        How to reach the hub from other processes; set when the hub's process pickles the
        context.
    """

    __slots__ = ("_append", "_buffer", "_channel", "_generation", "_hub_id", "_sender", "event")

    def __init__(self, hub_id: str, event: Hashable, *, channel: Channel | None = None) -> None:
        self._hub_id = hub_id
        self.event = event
        self._channel = channel
        self._append: Callable[[_Event], None] = _discard
        self._buffer: deque[_Event] | None = None
        self._sender: BatchSender | None = None
        self._generation = -1  # resolved at the first fire

    def __repr__(self) -> str:
        return f"EventContext(event={self.event!r}, hub_id={self._hub_id!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        hub = _LOCAL_HUBS.get(self._hub_id)
        if hub is None:
            return (_rebuild_context, (self._hub_id, self.event, self._channel))
        event = hub.wire_event(self.event)
        return (_rebuild_context, (self._hub_id, event, hub.remote_channel()))

    @property
    def hub_id(self) -> str:
        """The id of the hub the events go to."""
        return self._hub_id

    def fire(self, *args: Any, **kwargs: Any) -> None:
        """Have the host call every callback of the event with these arguments.

        Cheap: no pickling in the hub's process, a buffered append elsewhere. Events fired after
        the hub closed are dropped.

        Parameters
        ----------
        *args, **kwargs
            Passed to the callbacks (pickled when fired in another process).
        """
        if self._generation != _GENERATION:
            self._resolve()
        self._append((self.event, args, kwargs or None))
        buffer = self._buffer
        if buffer is not None:
            n = len(buffer)
            if n == 1 or not n & 255:
                self._sender.check(n)  # type: ignore[union-attr]

    def _resolve(self) -> None:
        """Find, in this process, the hub's queue or the sender of the context's channel."""
        self._generation = _GENERATION
        self._append = _discard
        self._buffer = self._sender = None
        hub = _LOCAL_HUBS.get(self._hub_id)
        if hub is not None:
            hub._local_used = True
            self._append = hub._put_local
        elif self._channel is not None:
            self._sender = self._channel.sender()
            self._buffer = self._sender.buffer
            self._append = self._buffer.append
        else:
            logger.debug("%r: the hub is closed or unreachable; dropping its events", self)


def _survives_pickling(event: Hashable) -> bool:
    """Whether a pickled copy of ``event`` is equal to it, with the same hash."""
    if type(event) in (str, int, bytes, AnonymousEvent):
        return True
    try:
        copy = pickle.loads(pickle.dumps(event))
        return bool(copy == event) and hash(copy) == hash(event)
    except Exception:  # noqa: BLE001 - unpicklable or odd comparisons: send an alias
        return False


def _discard(item: _Event) -> None:
    """Where the events of a context without a hub go."""


def _rebuild_context(hub_id: str, event: Hashable, channel: Channel | None) -> EventContext:
    return EventContext(hub_id, event, channel=channel)


# --------------------------------------------------------------------------------------------
# Tasks and tokens


class TaskResult(Generic[T]):
    """What :func:`run_task` returns: the task's value and the tokens of its events.

    Unpacks as ``value, tokens = result``.

    Parameters
    ----------
    value
        The task's return value.
    tokens
        Pass them to :meth:`EventHub.after` before handing ``value`` to the user.
    """

    __slots__ = ("tokens", "value")

    def __init__(self, value: T, tokens: tuple[Token, ...]) -> None:
        self.value = value
        self.tokens = tokens

    def __iter__(self) -> Iterator[Any]:
        yield self.value
        yield self.tokens

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskResult, (self.value, self.tokens))

    def __repr__(self) -> str:
        return f"TaskResult(value={self.value!r}, tokens={self.tokens!r})"


def run_task(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> TaskResult[T]:
    """Run ``fn(*args, **kwargs)`` as a task: what executors submit in place of ``fn``.

    While ``fn`` runs, :func:`in_task` is true. When it ends, pending progress updates and the
    buffers of every channel used in this process are sent, and a mark is put on every hub of
    this process that received events; their tokens come back with the value.

    Parameters
    ----------
    fn
        The user's task.
    *args, **kwargs
        Its arguments.

    Returns
    -------
    TaskResult
        ``(value, tokens)``.

    Raises
    ------
    BaseException
        Whatever ``fn`` raised, after the flush, with the tokens in its ``__mepa_tokens__``
        attribute (see :func:`outcome_tokens`).
    """
    reset = _IN_TASK.set(True)
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:
        tokens, lost = _finish_task()
        exc.__dict__[_TOKENS_ATTR] = tokens
        if lost is not None:
            _add_note(exc, str(lost))
        raise
    finally:
        _IN_TASK.reset(reset)
    tokens, lost = _finish_task()
    if lost is not None:
        lost.__dict__[_TOKENS_ATTR] = tokens
        raise lost
    return TaskResult(value, tokens)


def _finish_task() -> tuple[tuple[Token, ...], BaseException | None]:
    """Flush everything; the tokens to wait for, and the error if some events were lost."""
    tokens, failures = flush_process()
    with _HUBS_LOCK:
        hubs = list(_LOCAL_HUBS.values())
    for hub in hubs:
        if hub._local_used:
            token = hub._mark()
            if token is not None:
                tokens.append(token)
    lost: BaseException | None = None
    if failures:
        from .._errors import EventChannelError

        lost = EventChannelError(
            "events fired by this task (or by an earlier task of its process) are lost: "
            f"{'; '.join(failures)}. Later tasks connect again; if this repeats, raise the "
            "worker's open-file limit (ulimit -n) or check that the executor is still open"
        )
    return tuple(tokens), lost


def _add_note(exc: BaseException, note: str) -> None:
    add_note = getattr(exc, "add_note", None)
    if add_note is not None:
        add_note(note)


def outcome_tokens(outcome: object, *, remove: bool = False) -> tuple[Token, ...]:
    """Tokens carried by a :class:`TaskResult` or by an exception :func:`run_task` re-raised.

    Parameters
    ----------
    outcome
        The result of a future running :func:`run_task`, or the exception it raised.
    remove
        Delete the tokens from the exception (so the user does not see them).

    Returns
    -------
    tuple of Token
        Empty for anything else.
    """
    if isinstance(outcome, TaskResult):
        return outcome.tokens
    if isinstance(outcome, BaseException):
        if remove:
            return tuple(outcome.__dict__.pop(_TOKENS_ATTR, ()))
        return tuple(outcome.__dict__.get(_TOKENS_ATTR, ()))
    return ()


def unwrap_outcome(outcome: object) -> tuple[Any, tuple[Token, ...]]:
    """Split the result of a future running :func:`run_task` into value and tokens.

    Parameters
    ----------
    outcome
        A :class:`TaskResult`; anything else is taken as a value without tokens.

    Returns
    -------
    tuple
        ``(value, tokens)``.
    """
    if isinstance(outcome, TaskResult):
        return outcome.value, outcome.tokens
    return outcome, ()


# --------------------------------------------------------------------------------------------
# The hub


def _after_fork_in_child() -> None:
    global _GENERATION, _HUBS_LOCK
    _GENERATION += 1  # contexts resolve their hub or sender again at their next fire
    _LOCAL_HUBS.clear()  # the parent's hubs have no dispatcher here
    _HUBS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)

