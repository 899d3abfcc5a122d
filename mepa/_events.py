"""Events: tasks call back to the host while they run.

A task holds an :class:`EventContext` and calls ``ctx.fire(*args, **kwargs)``; the host calls
every callback registered for the context's event with those arguments, in one dispatcher thread
of the :class:`EventHub`, in the order each source fired them. How an event travels depends on
where it was fired::

    same process as the hub (host code, thread and linear executors)
        ctx.fire ──► hub queue ──────────────────────────────────────┐
                                                                     ▼
    another process (loky workers; later Dask workers)        dispatcher thread ──► callbacks
        ctx.fire ──► BatchSender buffer ──► Channel transport        ▲   (registration order,
                     (one per process      (AF_UNIX connection,      │    errors logged)
                      and hub; flushed at   authkey, private dir)    │
                      N events, T seconds,        │                  │
                      task end)                   ▼                  │
                                      reader thread ──► hub.deliver(source, seq, batch)

*Sources and tokens.* Every :class:`BatchSender` is a *source* with a random id; it numbers its
batches 1, 2, 3, ... The host dispatches the batches of each source in that order (holding back
one that arrives early) and records, per source, the last batch dispatched. Events fired in the
hub's own process go straight to the hub queue; there the source is the queue itself and
:func:`run_task` appends a numbered *mark* to it.

*Nothing is lost.* Executors submit ``run_task(fn, *args)`` instead of ``fn``. When ``fn``
returns (or raises), :func:`run_task` flushes every buffer of its process, marks every hub of its
process that received local events, and returns the resulting *tokens* ``(hub_id, source_id,
seq)`` with the value in a :class:`TaskResult` (or attaches them to the exception). The host
passes them to :meth:`EventHub.after`, which completes the user's future only once the dispatcher
has dispatched every batch (or mark) they name: every event a task fired before it returned has
reached its callbacks before ``gather`` hands back that task's result.

*Transports.* A context carries a picklable :class:`Channel`; in a process without the hub,
:meth:`Channel.sender` returns the process-local :class:`BatchSender`, which buffers, numbers and
encodes batches and hands the bytes to the :class:`Transport` returned by
:meth:`Channel.connect`. The receiving side of any transport calls
:meth:`EventHub.deliver_bytes` (or :meth:`EventHub.deliver`). :class:`UnixSocketChannel` is the
transport for processes on this machine (:meth:`EventHub.process_channel`); a Dask transport
implements :meth:`Channel.connect` with ``Worker.log_event`` and feeds
``Client.subscribe_topic`` messages to :meth:`EventHub.deliver_bytes`, then installs itself with
:meth:`EventHub.use_channel`.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import heapq
import itertools
import logging
import os
import pickle
import socket
import struct
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from multiprocessing import AuthenticationError
from multiprocessing.connection import (
    Client,
    Connection,
    Pipe,
    answer_challenge,
    deliver_challenge,
    wait,
)
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, ParamSpec, Protocol, TypeVar

from ._errors import ArgumentTypeError

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._rundir import RunDir

__all__ = [
    "FLUSH_EVENTS",
    "FLUSH_SECONDS",
    "AnonymousEvent",
    "BatchSender",
    "Channel",
    "EventContext",
    "EventHub",
    "TaskResult",
    "Token",
    "Transport",
    "UnixSocketChannel",
    "in_task",
    "outcome_tokens",
    "run_task",
    "unwrap_outcome",
]

P = ParamSpec("P")
T = TypeVar("T")

logger = logging.getLogger("mepa.events")

Token = tuple[str, str, int]
"""``(hub_id, source_id, seq)``: source ``source_id`` of hub ``hub_id`` sent batch ``seq``."""

Callback = Callable[..., object]
_Event = tuple[Hashable, tuple[Any, ...], "dict[str, Any] | None"]

FLUSH_EVENTS = 2048
"""A worker sends its buffer once it holds this many events."""
FLUSH_SECONDS = 0.05
"""A worker sends its buffer once its oldest event is this old (checked every 256 fires and by
a background flusher thread)."""
MAX_QUEUED_BYTES = 64 << 20
"""Encoded batches from worker processes waiting for the dispatcher, at most (about).

Beyond it the hub stops reading its sockets until slow callbacks catch up: the workers'
sends then block, so a slow callback slows the tasks down instead of filling the host's
memory."""
DEFERRED_SECONDS = 0.1
"""Objects given to :func:`_flush_soon` (coalesced progress updates) are flushed this often."""

_TOKENS_ATTR = "__mepa_tokens__"
_LOCAL_SOURCE = ""  # source id of a hub's own queue; its seq numbers are marks

# Items of a hub's queue: an event fired in the hub's process is the plain tuple
# (event, args, kwargs_or_None); anything else is a _Control.
_BATCH = 1  # source, seq, events: a batch from a transport
_MARK = 2  # seq: end of a task in the hub's process
_CALL = 3  # payload: run it in the dispatcher (drain)
_STOP = 4


class _Control:
    __slots__ = ("kind", "payload", "seq", "size", "source")

    def __init__(
        self, kind: int, source: str = "", seq: int = 0, payload: Any = None, size: int = 0
    ) -> None:
        self.kind = kind
        self.source = source
        self.seq = seq
        self.payload = payload
        self.size = size  # bytes admitted by _admit, released once dispatched


_IN_TASK: contextvars.ContextVar[bool] = contextvars.ContextVar("mepa_in_task", default=False)

# Per-process state, reset in a forked child.
_GENERATION = 0  # bumped after fork: cached hubs and senders of contexts become stale
_LOCAL_HUBS: weakref.WeakValueDictionary[str, EventHub] = weakref.WeakValueDictionary()
_HUBS_LOCK = threading.Lock()
_SENDERS: dict[str, BatchSender] = {}
_SENDERS_LOCK = threading.Lock()


class _Flushable(Protocol):
    def flush(self) -> None: ...


class _Polled(Protocol):
    @property
    def pending(self) -> bool: ...

    def flush(self) -> None: ...


class _WeakRegistry(Generic[T]):
    """Objects held weakly; one thread may add while another lists them.

    (Listing a :class:`weakref.WeakSet` while another thread adds to it raises "Set changed size
    during iteration".) No weakref callbacks, so no lock is ever taken by the garbage
    collector: dead entries are dropped when the registry is listed.
    """

    __slots__ = ("_lock", "_refs")

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref[T]] = {}
        self._lock = threading.Lock()

    def add(self, obj: T) -> None:
        with self._lock:
            self._refs[id(obj)] = weakref.ref(obj)

    def snapshot(self) -> list[T]:
        """The objects still alive."""
        live: list[T] = []
        with self._lock:
            for key, ref in list(self._refs.items()):
                obj = ref()
                if obj is None:
                    del self._refs[key]
                else:
                    live.append(obj)
        return live

    def __bool__(self) -> bool:
        return bool(self._refs)  # may count dead entries until the next snapshot


_DEFERRED: dict[int, tuple[_Flushable, float]] = {}
_DEFERRED_LOCK = threading.Lock()
_AT_TASK_END: _WeakRegistry[_Flushable] = _WeakRegistry()
_POLLED: _WeakRegistry[_Polled] = _WeakRegistry()


def in_task() -> bool:
    """Whether the calling code runs inside :func:`run_task` (a task), not in host code.

    Returns
    -------
    bool
        ``True`` between the start and the end of a task in the current thread (or context).
    """
    return _IN_TASK.get()


# --------------------------------------------------------------------------------------------
# Channels: the seam between a context and a transport


class Transport(Protocol):
    """Process-local connection a :class:`BatchSender` writes encoded batches to."""

    def send_bytes(self, payload: bytes) -> None:
        """Send one encoded batch, for :meth:`EventHub.deliver_bytes` on the receiving side."""

    def close(self) -> None:
        """Release the connection."""


class Channel(abc.ABC):
    """Picklable description of how code in another process reaches one hub.

    Subclasses implement :meth:`connect`; everything else (buffering, numbering, encoding,
    flushing at task end, tokens) is shared and lives in :class:`BatchSender`.

    Parameters
    ----------
    hub_id
        The id of the :class:`EventHub` the channel leads to.
    """

    def __init__(self, hub_id: str) -> None:
        self.hub_id = hub_id

    @property
    def key(self) -> str:
        """Identity of the channel within a process: one :class:`BatchSender` per key."""
        return f"{type(self).__module__}.{type(self).__qualname__}:{self.hub_id}"

    def sender(self) -> BatchSender:
        """Return this process's :class:`BatchSender` for the channel, creating it once.

        Returns
        -------
        BatchSender
            Shared by every context of this channel in the process.
        """
        key = self.key
        sender = _SENDERS.get(key)
        if sender is None:
            with _SENDERS_LOCK:
                sender = _SENDERS.get(key)
                if sender is None:
                    sender = _SENDERS[key] = BatchSender(self)
        return sender

    @abc.abstractmethod
    def connect(self) -> Transport:
        """Open the process-local transport (called once per process, at the first flush).

        Returns
        -------
        Transport
            Where the process's encoded batches go.
        """


class UnixSocketChannel(Channel):
    """Channel to a hub's AF_UNIX listener, for worker processes on the same machine.

    Built by :meth:`EventHub.process_channel`; the socket lives in a private (0700) temporary
    directory and connections must prove they know the random ``authkey``.

    Parameters
    ----------
    hub_id
        The hub's id.
    address
        Path of the listening socket.
    authkey
        Shared secret of the ``multiprocessing.connection`` handshake.
    """

    def __init__(self, hub_id: str, address: str, authkey: bytes) -> None:
        super().__init__(hub_id)
        self.address = address
        self.authkey = authkey

    def __repr__(self) -> str:
        return f"UnixSocketChannel(hub_id={self.hub_id!r}, address={self.address!r})"

    def connect(self) -> Transport:
        """Connect to the hub's listener.

        Returns
        -------
        Transport
            A ``multiprocessing.connection.Connection``.
        """
        conn: Connection = Client(self.address, family="AF_UNIX", authkey=self.authkey)
        return conn


def _encode(source: str, seq: int, events: list[_Event]) -> bytes:
    """Encode a batch as ``pickle((source, seq, pickle(events)))``.

    The inner payload is pickled separately so that the host can still read the header (and
    keep the source's order) when an event cannot be unpickled there.
    """
    try:
        body = pickle.dumps(_compact(events), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - pickling raises anything; cloudpickle gets a go
        body = _encode_events_slowly(events)
    return pickle.dumps((source, seq, body), protocol=pickle.HIGHEST_PROTOCOL)


def _compact(events: list[_Event]) -> list[Any]:
    """A batch with runs of one-argument events of one event folded into value lists.

    A batch is a list whose items are ``(event, args, kwargs)`` triples or ``(event, values)``
    pairs, each value standing for an event fired with that one positional argument. Runs of
    ``ctx.fire(x)`` (the common case: progress counts, values) then cost the host a list of
    values to unpickle instead of two tuples per event, which keeps a host with many live
    objects from spending its time in garbage collections triggered by the events.
    """
    out: list[Any] = []
    run_event: object = _NO_EVENT
    values: list[Any] = []
    for item in events:
        event, args, kwargs = item
        if kwargs is None and len(args) == 1:
            if event is run_event:
                values.append(args[0])
                continue
            values = [args[0]]
            run_event = event
            out.append((event, values))
            continue
        out.append(item)
        run_event = _NO_EVENT
    return out


def _encode_events_slowly(events: list[_Event]) -> bytes:
    """Encode with cloudpickle; replace events that cannot be pickled at all by an error report."""
    import cloudpickle

    with contextlib.suppress(Exception):
        return bytes(cloudpickle.dumps(events))
    kept: list[_Event] = []
    for event in events:
        try:
            cloudpickle.dumps(event)
        except Exception as exc:  # noqa: BLE001 - reported to the host instead
            kept.append((_Unpicklable, (repr(event[0]), f"{type(exc).__name__}: {exc}"), None))
        else:
            kept.append(event)
    return bytes(cloudpickle.dumps(kept))


class _UnpicklableType:
    """Event key of the report that replaces an event a worker could not pickle."""

    def __reduce__(self) -> str:
        return "_Unpicklable"


_Unpicklable = _UnpicklableType()


class BatchSender:
    """Process-local buffer of the events fired toward one hub through one channel.

    Contexts append events to :attr:`buffer` (a deque: appends need no lock) and call
    :meth:`check` on the first event and every 256th; the buffer is sent as one batch when it
    holds :data:`FLUSH_EVENTS` events, when its oldest event is :data:`FLUSH_SECONDS` old
    (checked then and by a daemon flusher thread), and at the end of every task
    (:func:`run_task`). Batches are numbered from 1; the number of the last one sent makes the
    sender's token.

    Parameters
    ----------
    channel
        The channel to :meth:`~Channel.connect` at the first flush.
    """

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.source_id = uuid.uuid4().hex
        self.buffer: deque[_Event] = deque()
        self._lock = threading.Lock()  # one flush at a time: batches leave in order
        self._first = 0.0
        self._seq = 0
        self._transport: Transport | None = None
        self._failure: str | None = None  # why the last send failed, until a task reports it
        self._dead = False  # the hub closed its end: nothing more to send

    def add(self, event: Hashable, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> None:
        """Buffer one event (what :meth:`EventContext.fire` does, inlined).

        Parameters
        ----------
        event
            The event key.
        args, kwargs
            The callback's arguments (``kwargs`` is ``None`` when empty).
        """
        self.buffer.append((event, args, kwargs))
        n = len(self.buffer)
        if n == 1 or not n & 255:
            self.check(n)

    def check(self, n: int) -> None:
        """Note the time of a first event, or send the buffer if it is full or old enough.

        Parameters
        ----------
        n
            The buffer's length just after an append.
        """
        if n == 1:
            self._first = time.monotonic()
            _FLUSHER.poke()
        elif n >= FLUSH_EVENTS or time.monotonic() - self._first >= FLUSH_SECONDS:
            self.flush()

    @property
    def pending(self) -> int:
        """Number of events buffered and not yet sent."""
        return len(self.buffer)

    def flush(self, *, older_than: float | None = None) -> Token | None:
        """Send the buffered events, if any.

        Parameters
        ----------
        older_than
            Only send if the oldest buffered event is at least this many seconds old.

        Returns
        -------
        Token or None
            ``(hub_id, source_id, seq)`` of the last batch sent, ``None`` if none ever was.
        """
        with self._lock:
            buffer = self.buffer
            n = len(buffer)
            if n and (older_than is None or time.monotonic() - self._first >= older_than):
                # Take exactly the n oldest events: appends racing with us stay for next time.
                pop = buffer.popleft
                events = [pop() for _ in range(n)]
                self._first = time.monotonic()
                self._send_locked(events)
            if self._seq == 0:
                return None
            return (self.channel.hub_id, self.source_id, self._seq)

    def _send_locked(self, events: list[_Event]) -> None:
        if self._dead:
            return
        self._seq += 1
        payload = _encode(self.source_id, self._seq, events)
        try:
            if self._transport is None:
                self._transport = self.channel.connect()
            self._transport.send_bytes(payload)
        except (OSError, EOFError, AuthenticationError) as exc:
            # The batch is lost (no descriptor left, a broken or closed socket, the hub gone).
            # No token may name it, or the task's future would wait for it forever: go on as
            # a new source, and let the task that ends next fail with the reason.
            self._failure = (
                f"{len(events)} events for hub {self.channel.hub_id[:8]} could not be sent "
                f"from process {os.getpid()}: {type(exc).__name__}: {exc}"
            )
            self._restart_locked()

    def _restart_locked(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            with contextlib.suppress(OSError):
                transport.close()
        self.source_id = uuid.uuid4().hex
        self._seq = 0

    def take_failure(self) -> str | None:
        """Why sending failed since the last call, or ``None``; clears it.

        Returns
        -------
        str or None
            A description of the lost batch and the error.
        """
        with self._lock:
            failure, self._failure = self._failure, None
            return failure

    def stale(self) -> bool:
        """Whether the hub closed its end of the connection (it never sends anything else).

        Returns
        -------
        bool
            ``True`` once the hub stopped reading: the sender can be dropped.
        """
        poll = getattr(self._transport, "poll", None)
        if poll is None:
            return False
        try:
            return bool(poll())
        except (OSError, EOFError):
            return True

    def close(self) -> None:
        """Close the transport and drop buffered events; later events are dropped too."""
        with self._lock:
            self._dead = True
            self.buffer.clear()
            if self._transport is not None:
                with contextlib.suppress(OSError):
                    self._transport.close()
                self._transport = None


class _Flusher:
    """Daemon thread of a process that sends buffers and deferred updates that wait too long."""

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def poke(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    thread = threading.Thread(target=self._run, name="mepa-flusher", daemon=True)
                    thread.start()
                    self._thread = thread
        self._wake.set()

    def _run(self) -> None:
        tick = min(FLUSH_SECONDS, DEFERRED_SECONDS) / 2
        while True:
            if (
                not _DEFERRED
                and not _POLLED
                and not any(s.pending for s in list(_SENDERS.values()))
            ):
                self._wake.wait()
                self._wake.clear()
            time.sleep(tick)
            try:
                _flush_deferred(older_than=DEFERRED_SECONDS)
                for obj in _POLLED.snapshot():
                    if obj.pending:
                        obj.flush()
                for sender in list(_SENDERS.values()):
                    sender.flush(older_than=FLUSH_SECONDS)
            except Exception:
                logger.exception("background flush failed")


_FLUSHER = _Flusher()


def _flush_at_task_end(obj: _Flushable) -> None:
    """Have ``obj.flush()`` called at the end of every task of this process while obj lives.

    ``flush`` must wait for a flush running in another thread (hold a lock), so that what it
    sends is in the buffers before :func:`run_task` flushes them.
    """
    _AT_TASK_END.add(obj)


def _poll(obj: _Polled) -> None:
    """Have ``obj.flush()`` called by the flusher thread, whenever ``obj.pending``, while obj lives.

    For objects that gather work without calling anything per item (a progress proxy's C
    counter), so that they cannot call :func:`_flush_soon`. Keep such objects short-lived (a task's
    arguments): the flusher wakes every few tens of milliseconds while any is alive.
    """
    _POLLED.add(obj)
    _FLUSHER.poke()


def _flush_soon(obj: _Flushable) -> None:
    """Have ``obj.flush()`` called within ~:data:`DEFERRED_SECONDS` (by the flusher thread).

    The caller calls this when it goes from no pending work to some.
    """
    with _DEFERRED_LOCK:
        _DEFERRED.setdefault(id(obj), (obj, time.monotonic()))
    _FLUSHER.poke()


def _flush_deferred(older_than: float | None = None) -> None:
    now = time.monotonic()
    with _DEFERRED_LOCK:
        if older_than is None:
            due = [obj for obj, _ in _DEFERRED.values()]
            _DEFERRED.clear()
        else:
            due = [obj for obj, since in _DEFERRED.values() if now - since >= older_than]
            for obj in due:
                del _DEFERRED[id(obj)]
    for obj in due:
        obj.flush()


def _after_fork_in_child() -> None:
    global _GENERATION, _HUBS_LOCK, _SENDERS_LOCK, _DEFERRED_LOCK, _FLUSHER
    global _AT_TASK_END, _POLLED
    _GENERATION += 1
    _LOCAL_HUBS.clear()
    _SENDERS.clear()
    _DEFERRED.clear()
    _AT_TASK_END = _WeakRegistry()
    _POLLED = _WeakRegistry()
    _HUBS_LOCK = threading.Lock()
    _SENDERS_LOCK = threading.Lock()
    _DEFERRED_LOCK = threading.Lock()
    _FLUSHER = _Flusher()


os.register_at_fork(after_in_child=_after_fork_in_child)


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
            self._append = hub._queue.put
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
    _flush_deferred()
    for obj in _AT_TASK_END.snapshot():
        obj.flush()
    tokens: list[Token] = []
    failures: list[str] = []
    for key, sender in list(_SENDERS.items()):
        token = sender.flush()
        if token is not None:
            tokens.append(token)
        failure = sender.take_failure()
        if failure is not None:
            failures.append(failure)
        if sender.stale():  # its hub closed: free the socket
            with _SENDERS_LOCK:
                if _SENDERS.get(key) is sender:
                    del _SENDERS[key]
            sender.close()
    with _HUBS_LOCK:
        hubs = list(_LOCAL_HUBS.values())
    for hub in hubs:
        if hub._local_used:
            token = hub._mark()
            if token is not None:
                tokens.append(token)
    lost: BaseException | None = None
    if failures:
        from ._errors import EventChannelError

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


class _Waiter:
    __slots__ = ("fn", "pending")

    def __init__(self, fn: Callable[[], object], pending: int) -> None:
        self.fn = fn
        self.pending = pending


class EventHub:
    """Host side of events: callbacks, the dispatcher thread and the worker transport.

    One per executor. Callbacks run in the hub's dispatcher thread (a daemon started with the
    first registration), in registration order for an event, in firing order for a source.
    A callback that raises is logged to ``logging.getLogger("mepa.events")`` with its
    traceback; dispatching goes on.

    Examples
    --------
    >>> hub = EventHub()
    >>> seen = []
    >>> ctx = hub.on("tick", seen.append)
    >>> ctx.fire(1); ctx.fire(2)
    >>> hub.drain(timeout=5)
    True
    >>> seen
    [1, 2]
    >>> hub.close()
    """

    def __init__(self) -> None:
        self.hub_id = uuid.uuid4().hex
        self._queue: SimpleQueue[_Event | _Control] = SimpleQueue()
        self._callbacks: dict[Hashable, tuple[Callback, ...]] = {
            _Unpicklable: (_report_unpicklable,)
        }
        self._anonymous = itertools.count(1)
        self._wire: dict[Hashable, Hashable] = {}  # event key -> what other processes send
        self._aliases: dict[AliasEvent, Hashable] = {}  # and back
        self._alias_numbers = itertools.count(1)
        self._lock = threading.Lock()  # registrations, lifecycle, progress of sources, waiters
        self._closed = False  # no new registrations, marks or waiters
        self._stopped = False  # closed, and what the transports received is queued
        self._dispatcher: threading.Thread | None = None
        self._local_used = False  # a context fired locally: tasks of this process mark the hub
        self._marks = 0
        self._mark_lock = threading.Lock()
        # Dispatcher state: per source, the last batch dispatched and the batches held back.
        self._done: dict[str, int] = {}
        self._held: dict[str, dict[int, list[_Event]]] = {}
        self._waiting: dict[str, list[tuple[int, int, _Waiter]]] = {}
        self._waiter_ids = itertools.count()
        self._remote_channel: Channel | None = None
        self._server: _UnixServer | None = None
        self._close_hooks: list[Callable[[], object]] = []
        self._room = threading.Condition()  # bounds what transports queue (MAX_QUEUED_BYTES)
        self._queued_bytes = 0
        with _HUBS_LOCK:
            _LOCAL_HUBS[self.hub_id] = self

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<EventHub {self.hub_id[:8]} {state}, {len(self._callbacks) - 1} events>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    # registrations -----------------------------------------------------------------------

    def on(self, event: Hashable, callback: Callback) -> EventContext:
        """Call ``callback(*args, **kwargs)`` for every ``fire(*args, **kwargs)`` of ``event``.

        Parameters
        ----------
        event
            Any hashable (and, for worker processes, picklable) key.
        callback
            Called in the dispatcher thread, after the callbacks registered before it.

        Returns
        -------
        EventContext
            The context to fire ``event`` with.
        """
        if not callable(callback):
            raise ArgumentTypeError(
                f"callback must be callable, got {type(callback).__name__}: {callback!r}; pass "
                "the function the host calls with the arguments of each fire()"
            )
        try:
            hash(event)
        except TypeError as exc:
            raise ArgumentTypeError(
                f"event must be hashable, got {type(event).__name__}: {event!r}; name events "
                "with strings, numbers or tuples of them"
            ) from exc
        with self._lock:
            self._check_open()
            self._callbacks[event] = (*self._callbacks.get(event, ()), callback)
            self._ensure_dispatcher()
        return self.context(event)

    def register(self, callback: Callback) -> EventContext:
        """Register ``callback`` under a new anonymous event.

        Parameters
        ----------
        callback
            Called with the arguments of every ``fire`` of the returned context.

        Returns
        -------
        EventContext
            A context whose event (an :class:`AnonymousEvent`) no other context shares.
        """
        return self.on(AnonymousEvent(self.hub_id, next(self._anonymous)), callback)

    def off(self, ctx_or_event: EventContext | Hashable, callback: Callback | None = None) -> bool:
        """Remove callbacks: all of an event, or one.

        ``off(ctx)`` and ``off(event)`` remove every callback of the event; ``off(event, cb)``
        removes ``cb`` (each registration of it). Unknown events and callbacks are ignored.
        Removed callbacks get no event dispatched after ``off`` returns, except the rest of a
        batch being dispatched at that moment.

        Parameters
        ----------
        ctx_or_event
            A context of this hub or an event key.
        callback
            The callback to remove; ``None`` for all of them.

        Returns
        -------
        bool
            Whether anything was removed.
        """
        event = ctx_or_event.event if isinstance(ctx_or_event, EventContext) else ctx_or_event
        with self._lock:
            callbacks = self._callbacks.get(event)
            if not callbacks:
                return False
            if callback is None:
                del self._callbacks[event]
                return True
            kept = tuple(cb for cb in callbacks if cb != callback)
            if len(kept) == len(callbacks):
                return False
            if kept:
                self._callbacks[event] = kept
            else:
                del self._callbacks[event]
            return True

    def wire_event(self, event: Hashable) -> Hashable:
        """What a context pickled for another process sends for ``event``.

        The key itself when a pickled copy of it equals it (strings, numbers, tuples of
        them...); else an :class:`AliasEvent` the dispatcher maps back to the key, so that
        keys comparing by identity reach their callbacks from worker processes as they do
        from threads.
        """
        try:
            return self._wire[event]
        except KeyError:
            pass
        wire = event if _survives_pickling(event) else AliasEvent(
            self.hub_id, next(self._alias_numbers)
        )
        with self._lock:
            wire = self._wire.setdefault(event, wire)
            if isinstance(wire, AliasEvent):
                self._aliases[wire] = event
        return wire

    def _callbacks_of(self, event: Hashable) -> tuple[Callback, ...]:
        """The callbacks of ``event``, looked up again when it is an alias of a key."""
        callbacks = self._callbacks.get(event, ())
        if not callbacks and type(event) is AliasEvent:
            key = self._aliases.get(event, _NO_EVENT)
            callbacks = self._callbacks.get(key, ())
        return callbacks

    def context(self, event: Hashable) -> EventContext:
        """A context that fires ``event`` (callbacks may be registered later).

        Parameters
        ----------
        event
            The event key.

        Returns
        -------
        EventContext
            Fires to this hub.
        """
        with self._lock:
            self._ensure_dispatcher()
        return EventContext(self.hub_id, event)

    # transports --------------------------------------------------------------------------

    def process_channel(self) -> UnixSocketChannel:
        """Start (once) the AF_UNIX listener worker processes of this machine connect to.

        The socket lives in a fresh temporary directory of mode 0700, connections authenticate
        with a random 32-byte key, and a reader thread feeds their batches to the dispatcher.

        Returns
        -------
        UnixSocketChannel
            Picklable; contexts pickled by this hub carry it unless :meth:`use_channel` set
            another one.
        """
        with self._lock:
            self._check_open()
            if self._server is None:
                self._server = _UnixServer(self)
                self._ensure_dispatcher()
            return self._server.channel

    def use_channel(self, channel: Channel | None) -> None:
        """Set the channel contexts carry when pickled (``None``: the process channel).

        Parameters
        ----------
        channel
            E.g. a Dask channel whose receiving side calls :meth:`deliver_bytes`.
        """
        self._remote_channel = channel

    def remote_channel(self) -> Channel | None:
        """The channel contexts carry when pickled (``None`` once the hub is closed).

        Returns
        -------
        Channel or None
            The one set by :meth:`use_channel`, else :meth:`process_channel`.
        """
        if self._closed:
            return None
        if self._remote_channel is not None:
            return self._remote_channel
        return self.process_channel()

    def deliver(
        self, source_id: str, seq: int, events: list[_Event], *, _size: int = 0
    ) -> None:
        """Queue batch ``seq`` of source ``source_id`` for dispatch (thread-safe).

        The receiving side of every transport ends here. Batches of a source are dispatched in
        ``seq`` order starting at 1; one that arrives early waits for those before it, a
        repeated one is ignored.

        Parameters
        ----------
        source_id
            The sending :class:`BatchSender`'s id.
        seq
            The batch number.
        events
            ``(event, args, kwargs_or_None)`` triples.
        """
        with self._lock:
            stopped = self._stopped
            if not stopped:
                self._ensure_dispatcher()
        if stopped:
            self._release_room(_size)
            return
        self._queue.put(_Control(_BATCH, source_id, seq, events, _size))

    def deliver_bytes(self, payload: bytes, *, bounded: bool = False) -> None:
        """Decode a batch encoded by a :class:`BatchSender` and :meth:`deliver` it.

        Parameters
        ----------
        payload
            The bytes a transport received.
        bounded
            Wait first, while more than :data:`MAX_QUEUED_BYTES` of batches wait for the
            dispatcher (for a transport whose senders then block, as a socket's do).
        """
        size = 0
        if bounded:
            size = len(payload)
            self._admit(size)
        try:
            source_id, seq, body = pickle.loads(payload)
        except BaseException:
            self._release_room(size)
            raise
        try:
            events = pickle.loads(body)
        except Exception:
            logger.exception("cannot unpickle batch %d of source %s; dropping it", seq, source_id)
            events = []
        self.deliver(source_id, seq, events, _size=size)

    def _admit(self, size: int) -> None:
        with self._room:
            while self._queued_bytes > MAX_QUEUED_BYTES and not self._closed:
                self._room.wait(0.1)
            self._queued_bytes += size

    def _release_room(self, size: int) -> None:
        if size:
            with self._room:
                self._queued_bytes -= size
                self._room.notify_all()

    # completion --------------------------------------------------------------------------

    def after(self, tokens: Iterable[Token], fn: Callable[[], object]) -> None:
        """Call ``fn()`` once every event covered by ``tokens`` has been dispatched.

        Tokens of other hubs are ignored. ``fn`` runs at once, in the calling thread, if
        nothing is left to wait for or the hub is closed; otherwise in the dispatcher thread.
        An exception from ``fn`` is logged.

        Parameters
        ----------
        tokens
            From :func:`outcome_tokens` or :func:`unwrap_outcome`.
        fn
            Typically completes the user-visible future.
        """
        mine = [(src, seq) for hub_id, src, seq in tokens if hub_id == self.hub_id]
        with self._lock:
            needed = [(src, seq) for src, seq in mine if self._done.get(src, 0) < seq]
            if needed and not self._closed:
                waiter = _Waiter(fn, len(needed))
                for src, seq in needed:
                    heap = self._waiting.setdefault(src, [])
                    heapq.heappush(heap, (seq, next(self._waiter_ids), waiter))
                return
        _call_logged(fn)

    def in_dispatcher(self) -> bool:
        """Whether the calling thread is this hub's dispatcher (code run by a callback).

        Returns
        -------
        bool
            ``True`` inside a callback of this hub.
        """
        return threading.current_thread() is self._dispatcher

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything queued on the hub so far has been dispatched.

        Covers events fired in this process and batches already received; not events still
        in workers' buffers (use :meth:`after` with tokens for those).

        Parameters
        ----------
        timeout
            Seconds to wait at most.

        Returns
        -------
        bool
            ``False`` on timeout or if called from a callback (the dispatcher thread).
        """
        if self._closed:
            return True
        if threading.current_thread() is self._dispatcher:
            return False
        done = threading.Event()
        with self._lock:
            self._ensure_dispatcher()
        self._queue.put(_Control(_CALL, payload=done.set))
        return done.wait(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Dispatch what has arrived, then stop the threads and remove the socket directory.

        Functions waiting in :meth:`after` are called (their missing events will not come).
        Close hooks (:class:`~mepa.Progress` bars) run after the dispatch. Idempotent.

        Parameters
        ----------
        timeout
            Seconds to wait at most for each thread.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            server, self._server = self._server, None
            dispatcher = self._dispatcher
        if server is not None:
            server.stop(timeout)  # reads what is already in the sockets before returning
        # Contexts of this process drop their events from now on.
        global _GENERATION
        with _HUBS_LOCK:
            _LOCAL_HUBS.pop(self.hub_id, None)
            _GENERATION += 1
        with self._lock:
            self._stopped = True
        if dispatcher is not None:
            self._queue.put(_Control(_STOP))
            if threading.current_thread() is not dispatcher:
                dispatcher.join(timeout)
                if dispatcher.is_alive():
                    logger.warning("event dispatcher still busy after %s s", timeout)
        with self._lock:
            waiters = [w for heap in self._waiting.values() for _, _, w in heap]
            self._waiting.clear()
            hooks, self._close_hooks = self._close_hooks, []
        for fn in dict.fromkeys(w.fn for w in waiters):
            _call_logged(fn)
        for hook in hooks:
            _call_logged(hook)

    def _add_close_hook(self, hook: Callable[[], object]) -> None:
        with self._lock:
            self._close_hooks.append(hook)

    # internals ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("cannot use an event hub after close()")

    def _ensure_dispatcher(self) -> None:
        # Called with self._lock held.
        if self._dispatcher is None and not self._closed:
            self._dispatcher = threading.Thread(
                target=self._dispatch_loop, name=f"mepa-events-{self.hub_id[:8]}", daemon=True
            )
            self._dispatcher.start()

    def _mark(self) -> Token | None:
        """Queue a numbered mark; its token is done once everything queued before it is."""
        with self._mark_lock:
            if self._closed:
                return None
            self._marks += 1
            seq = self._marks
            self._queue.put(_Control(_MARK, seq=seq))
        return (self.hub_id, _LOCAL_SOURCE, seq)

    def _dispatch_loop(self) -> None:
        get = self._queue.get
        dispatch = self._dispatch
        while True:
            item = get()
            if type(item) is tuple:
                dispatch((item,))
                continue
            assert isinstance(item, _Control)
            if item.kind == _BATCH:
                try:
                    self._on_batch(item.source, item.seq, item.payload)
                finally:
                    self._release_room(item.size)
            elif item.kind == _MARK:
                self._advance(_LOCAL_SOURCE, item.seq)
            elif item.kind == _CALL:
                _call_logged(item.payload)
            else:
                return

    def _dispatch_batch(self, batch: list[Any]) -> None:
        """Dispatch a batch of triples and ``(event, values)`` runs (see :func:`_compact`)."""
        general: list[_Event] = []
        for item in batch:
            if len(item) == 3:
                general.append(item)
                continue
            if general:
                self._dispatch(general)
                general = []
            event, values = item
            callbacks = self._callbacks_of(event)
            if len(callbacks) == 1:
                single = callbacks[0]
                for value in values:
                    try:
                        single(value)
                    except Exception:
                        logger.exception("callback %r of event %r raised", single, event)
            elif callbacks:
                self._dispatch([(event, (value,), None) for value in values])
        if general:
            self._dispatch(general)

    def _dispatch(self, events: Iterable[_Event]) -> None:
        get_callbacks = self._callbacks_of
        last: object = _NO_EVENT
        callbacks: tuple[Callback, ...] = ()
        single: Callback | None = None
        for event, args, kwargs in events:
            if event is not last:  # batches hold runs of one event: look it up once per run
                callbacks = get_callbacks(event)
                single = callbacks[0] if len(callbacks) == 1 else None
                last = event
            if single is not None and kwargs is None:  # the common case, kept short
                try:
                    single(*args)
                except Exception:
                    logger.exception("callback %r of event %r raised", single, event)
                continue
            for callback in callbacks:
                try:
                    if kwargs is None:
                        callback(*args)
                    else:
                        callback(*args, **kwargs)
                except Exception:
                    logger.exception("callback %r of event %r raised", callback, event)

    def _on_batch(self, source: str, seq: int, events: list[_Event]) -> None:
        expected = self._done.get(source, 0) + 1
        if seq < expected:
            return
        if seq > expected:
            self._held.setdefault(source, {})[seq] = events
            return
        held = self._held.get(source)
        while True:
            self._dispatch_batch(events)
            self._advance(source, seq)
            if not held or seq + 1 not in held:
                break
            seq += 1
            events = held.pop(seq)
        if held is not None and not held:
            del self._held[source]

    def _advance(self, source: str, seq: int) -> None:
        ready: list[Callable[[], object]] = []
        with self._lock:
            self._done[source] = seq
            heap = self._waiting.get(source)
            while heap and heap[0][0] <= seq:
                waiter = heapq.heappop(heap)[2]
                waiter.pending -= 1
                if waiter.pending == 0:
                    ready.append(waiter.fn)
            if heap is not None and not heap:
                del self._waiting[source]
        for fn in ready:
            _call_logged(fn)


_NO_EVENT = object()


def _report_unpicklable(event: str, error: str) -> None:
    logger.error("a worker could not pickle an event of %s: %s; it was dropped", event, error)


def _call_logged(fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception:
        logger.exception("%r raised", fn)


HANDSHAKE_SECONDS = 10.0
"""A client of the event socket that has not completed the authkey handshake by then is dropped."""


class _UnixServer:
    """The hub's AF_UNIX listener, its accept thread and its reader thread.

    The acceptor only accepts: each connection proves it knows the authkey in a thread of its
    own, whose reads time out after :data:`HANDSHAKE_SECONDS` (``SO_RCVTIMEO``), so a local
    client that connects and stays silent delays nobody and holds a thread only that long.
    """

    def __init__(self, hub: EventHub) -> None:
        self._hub = hub
        from ._rundir import RunDir

        # Mode 0700, removed at stop() or exit, or by the next mepa host if this one is killed.
        rundir = RunDir("events", short=True)
        self._dir = rundir.path
        address = os.path.join(self._dir, "hub.sock")
        self._authkey = os.urandom(32)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._socket.bind(address)
            self._socket.listen(128)
        except OSError:
            self._socket.close()
            rundir.close()
            raise
        # Called by stop(), or at interpreter exit if the hub was never closed.
        self._remove = weakref.finalize(self, _remove_listener, self._socket, rundir)
        self.channel = UnixSocketChannel(hub.hub_id, address, self._authkey)
        self._stopping = False  # the acceptor exits
        self._draining = False  # the reader reads what is left and exits
        self._new: list[Connection] = []
        self._new_lock = threading.Lock()
        self._wake_r, self._wake_w = Pipe(duplex=False)
        self._name = hub.hub_id[:8]
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"mepa-accept-{self._name}", daemon=True
        )
        self._reader = threading.Thread(
            target=self._read_loop, name=f"mepa-reader-{self._name}", daemon=True
        )
        self._acceptor.start()
        self._reader.start()

    @property
    def directory(self) -> str:
        return self._dir

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self._socket.accept()
            except OSError as exc:
                if self._stopping:
                    return
                logger.warning("cannot accept a connection to the event hub: %s", exc)
                time.sleep(0.1)  # e.g. EMFILE: do not spin
                continue
            if self._stopping:
                sock.close()
                return
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(HANDSHAKE_SECONDS))
            conn = Connection(sock.detach())
            threading.Thread(
                target=self._handshake, args=(conn,), name=f"mepa-handshake-{self._name}",
                daemon=True,
            ).start()

    def _handshake(self, conn: Connection) -> None:
        try:
            deliver_challenge(conn, self._authkey)
            answer_challenge(conn, self._authkey)
            with socket.socket(fileno=conn.fileno()) as sock:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(0.0))
                finally:
                    sock.detach()  # the connection keeps the descriptor
        except (OSError, EOFError, AuthenticationError) as exc:
            conn.close()
            if not self._stopping:
                logger.warning("refused a connection to the event hub: %s", exc)
            return
        with self._new_lock:
            accepted = not self._draining
            if accepted:
                self._new.append(conn)  # stop() closes it if the reader is gone by then
        if not accepted:
            conn.close()  # the hub stopped meanwhile
            return
        with contextlib.suppress(OSError):
            self._wake_w.send_bytes(b"")

    def _read_loop(self) -> None:
        conns: list[Connection] = []
        deliver = self._hub.deliver_bytes
        while not self._draining:
            for conn in wait([self._wake_r, *conns]):
                if conn is self._wake_r:
                    self._wake_r.recv_bytes()
                    with self._new_lock:
                        conns.extend(self._new)
                        self._new.clear()
                    continue
                assert isinstance(conn, Connection)
                try:
                    deliver(conn.recv_bytes(), bounded=True)
                except (EOFError, OSError):
                    conns.remove(conn)
                    conn.close()
                except Exception:
                    logger.exception("bad message on the event channel")
        # The acceptor is gone: read what is already in the sockets, then stop.
        with self._new_lock:
            conns.extend(self._new)
            self._new.clear()
        while conns:
            ready = wait(conns, timeout=0)
            if not ready:
                break
            for conn in ready:
                assert isinstance(conn, Connection)
                try:
                    deliver(conn.recv_bytes())
                except (EOFError, OSError):
                    conns.remove(conn)
        for conn in conns:
            conn.close()

    def stop(self, timeout: float | None) -> None:
        bounded = 5.0 if timeout is None else timeout
        self._stopping = True
        # Wake the acceptor with a bare connection.
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as wake:
            wake.connect(self.channel.address)
        self._acceptor.join(bounded)
        self._draining = True
        with contextlib.suppress(OSError):
            self._wake_w.send_bytes(b"")
        self._reader.join(timeout)
        with self._new_lock:
            late, self._new = self._new, []
        for conn in late:
            conn.close()
        self._remove()
        self._wake_r.close()
        self._wake_w.close()


def _timeval(seconds: float) -> bytes:
    """``struct timeval`` for ``SO_RCVTIMEO`` (0: no timeout)."""
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1e6))


def _remove_listener(listener: socket.socket, rundir: RunDir) -> None:
    listener.close()
    rundir.close()  # and the socket file in it
