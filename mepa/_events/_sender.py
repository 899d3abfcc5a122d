"""Senders: how events fired in a process without the hub leave it.

One :class:`BatchSender` per process and :class:`Channel` buffers, numbers and encodes the
events that contexts append, and writes each batch to the channel's :class:`Transport`::

    ctx.fire ──► sender.buffer (deque) ──► flush ──► _encode(source, seq, events) ──► transport
                    │                        ▲
                    └─ 1st / every 256th ────┤ full (FLUSH_EVENTS) or old (FLUSH_SECONDS)
                       fire: check()         ├─ flusher thread (every ~25 ms while pending)
                                             └─ flush_process() at the end of every task

The flusher thread also sends progress updates that asked to be flushed soon
(:func:`_flush_soon`) or polled (:func:`_poll`). After ``fork`` the child drops the parent's
senders, registries, locks and flusher (:func:`_after_fork_in_child`): a child starts with
no connection and connects at its first flush.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import pickle
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from multiprocessing import AuthenticationError
from typing import Any, Generic, Protocol, TypeVar

__all__ = [
    "DEFERRED_SECONDS",
    "FLUSH_EVENTS",
    "FLUSH_SECONDS",
    "BatchSender",
    "Channel",
    "Token",
    "Transport",
]

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
DEFERRED_SECONDS = 0.1
"""Objects given to :func:`_flush_soon` (coalesced progress updates) are flushed this often."""

# Per-process state, reset in a forked child (_after_fork_in_child).
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
        self.source_tag = ""  # kept at the head of every source id (a Dask task's attempt)
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
        self.source_id = self.source_tag + uuid.uuid4().hex
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


def flush_process() -> tuple[list[Token], list[str]]:
    """Send everything this process holds for any hub: what :func:`run_task` does at task end.

    Deferred updates first, then the objects of :func:`_flush_at_task_end`, then every
    sender's buffer. Senders whose hub closed its end are dropped (their sockets closed).

    Returns
    -------
    tokens : list of Token
        The token of every sender that ever sent a batch.
    failures : list of str
        Why batches were lost since the last call, one line per sender that lost some.
    """
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
    return tokens, failures

def _after_fork_in_child() -> None:
    global _SENDERS_LOCK, _DEFERRED_LOCK, _FLUSHER, _AT_TASK_END, _POLLED
    _SENDERS.clear()  # the parent's connections and buffers are not this process's
    _DEFERRED.clear()
    _AT_TASK_END = _WeakRegistry()
    _POLLED = _WeakRegistry()
    _SENDERS_LOCK = threading.Lock()  # perhaps held by a thread that does not exist here
    _DEFERRED_LOCK = threading.Lock()
    _FLUSHER = _Flusher()  # its thread was not forked


os.register_at_fork(after_in_child=_after_fork_in_child)


_NO_EVENT = object()
