"""The hub: the host's end of events, its queue and its dispatcher thread.

Everything reaches the dispatcher through one queue; a bound in bytes on what transports
queue, and one in events on what this process's threads fire, keep slow callbacks from
filling the host's memory::

    local ctx.fire ─ _put_local ───────────┐ (waits past MAX_LOCAL_EVENTS, not in callbacks)
    deliver(source, seq, events) ─ _admit ─┤ (waits while MAX_QUEUED_BYTES are queued)
    _mark() at task end ───────────────────┼──► queue ──► dispatcher thread
    drain() / close() ─────────────────────┘                 │ batches in seq order per source
                                                             ├─► callbacks (errors logged)
                                                             └─► _advance: waiters of after()
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import pickle
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Hashable, Iterable
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any

from .._errors import ArgumentTypeError
from ._context import (
    AliasEvent,
    AnonymousEvent,
    EventContext,
    _register_hub,
    _survives_pickling,
    _unregister_hub,
)
from ._sender import _NO_EVENT, Callback, Channel, Token, _Event, _Unpicklable
from ._socket import UnixSocketChannel, _UnixServer

if TYPE_CHECKING:
    from typing_extensions import Self


__all__ = [
    "MAX_LOCAL_EVENTS",
    "MAX_QUEUED_BYTES",
    "EventHub",
]

logger = logging.getLogger("mepa.events")

MAX_QUEUED_BYTES = 64 << 20
"""Encoded batches from worker processes waiting for the dispatcher, at most (one batch
larger than this is let through alone).

Beyond it the hub stops reading its sockets until slow callbacks catch up: the workers'
sends then block, so a slow callback slows the tasks down instead of filling the host's
memory."""
MAX_LOCAL_EVENTS = 1 << 16
"""Events fired in the hub's own process (threads, host code) waiting for the dispatcher, at most.

Beyond it a firing thread waits until the callbacks caught up with half of them (never the
dispatcher thread itself: a callback that fires goes on), so that a slow callback slows the
threads that fire down instead of filling the host's memory."""

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
        self._close_hooks: list[weakref.WeakMethod[Callable[[], object]]] = []
        self._forgotten: collections.deque[Hashable] = collections.deque()
        self._room = threading.Condition()  # bounds what transports queue (MAX_QUEUED_BYTES)
        self._queued_bytes = 0
        self._put_local = _local_putter(self)  # what contexts fired in this process call
        _register_hub(self)

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
            while self._forgotten:
                self._callbacks.pop(self._forgotten.popleft(), None)
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
            # Admit a batch only if it fits (or alone: one bigger than the bound goes through).
            while (
                self._queued_bytes
                and self._queued_bytes + size > MAX_QUEUED_BYTES
                and not self._closed
            ):
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
        _unregister_hub(self.hub_id)
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
        for hook_ref in hooks:
            hook = hook_ref()
            if hook is not None:
                _call_logged(hook)

    def _add_close_hook(self, hook: Callable[[], object]) -> None:
        """Call the bound method ``hook`` at :meth:`close`, if its object still lives then."""
        with self._lock:
            if len(self._close_hooks) >= 64:
                self._close_hooks = [ref for ref in self._close_hooks if ref() is not None]
            self._close_hooks.append(weakref.WeakMethod(hook))

    def _forget_soon(self, event: Hashable) -> None:
        """Drop the callbacks of ``event`` at the next registration.

        For finalizers, which the garbage collector may run in a thread that holds the lock:
        this never takes it.
        """
        self._forgotten.append(event)

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

    def _wait_for_room(self, limit: int) -> None:
        """Wait while more than ``limit // 2`` items are queued (a thread fired too many)."""
        dispatcher = self._dispatcher
        if dispatcher is None or threading.current_thread() is dispatcher:
            return  # nothing drains the queue, or a callback fires: waiting would deadlock
        low = limit // 2
        delay = 0.0005
        while self._queue.qsize() > low and not self._stopped and dispatcher.is_alive():
            time.sleep(delay)
            delay = min(2 * delay, 0.01)

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


def _report_unpicklable(event: str, error: str) -> None:
    logger.error("a worker could not pickle an event of %s: %s; it was dropped", event, error)


def _call_logged(fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception:
        logger.exception("%r raised", fn)


def _local_putter(hub: EventHub) -> Callable[[_Event], None]:
    """The function contexts fired in ``hub``'s process put their events with.

    One put and one size check per event; the firing thread waits only past
    :data:`MAX_LOCAL_EVENTS`. It holds the hub weakly: contexts keep it, not the hub alive.
    """
    put = hub._queue.put
    qsize = hub._queue.qsize
    limit = MAX_LOCAL_EVENTS
    ref = weakref.ref(hub)

    def put_local(item: _Event) -> None:
        put(item)
        if qsize() > limit:
            owner = ref()
            if owner is not None:
                owner._wait_for_room(limit)

    return put_local
