"""Progress bars on the host, fed by tasks.

A :class:`Progress` owns a tqdm bar on the host and an anonymous event of the executor's
:class:`~mepa._events.EventHub`. Pickled into a task (as an argument or captured by a closure),
it becomes a proxy that sends three kinds of message through that event::

    task: update(1) x many ──► tally(1) ───────┐ taken every few 10 ms (flusher thread)
          register(n), close() ────────────────┤ and at task end (run_task)
                                               ▼
                                       ctx.fire(kind, n) ──► hub ──► Progress._on_message ──► tqdm

In a task of another process (a proxy, unpickled there), ``update`` is a tally: the C counter
of :mod:`mepa._tally` (about what a list ``append`` costs), or a pure-Python one that only
appends ``n`` to a list when the accelerator is not built. The process's flusher thread
takes and sends the tally's total while the proxy lives, and
:func:`~mepa._events.run_task` sends what is left before the task's result goes back, so no
update is lost and a loop of a million ``update(1)`` costs little more than the loop. A bar
used by a task in the host's own process (threads, the linear executor) is the host's object
itself: its ``update`` checks that it runs in a task (a context variable), adds to the same
kind of tally and has it sent within ~0.1 s. On the host, outside tasks, every method acts on
the bar at once (thread-safe).

*When the bar closes.* The bar closes when nothing holds it open any more, or at
:meth:`Progress.dispose` (executor shutdown). Holds are:

- the host's own registration, from construction (whatever ``total``) until the host calls
  :meth:`Progress.close`; ``register(n)`` on the host adds ``n`` to it (and takes it again
  after a ``close``);
- every ``register(n)`` made in a task, until the matching ``close()`` in that task;
- every ``iters``, ``range`` and ``with progress(n):`` block, on the host or in a task, until
  the block ends.

Messages that arrive after the bar closed are counted and logged, not shown.

*Who keeps a bar.* While it is open, the executor's event hub keeps it alive (a task may
update a bar the host dropped, as in ``ex.distribute(task, ex.progress(n), alloc)``). Once it
is closed or disposed, only the user's references keep it: a long-lived executor that makes a
bar per call (``map_array`` does) holds none of the finished ones.
"""

from __future__ import annotations

import builtins
import logging
import numbers
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Sized
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ._errors import ArgumentTypeError, InvalidArgumentError
from ._events import EventContext, EventHub
from ._events._context import _IN_TASK
from ._events._sender import _flush_at_task_end, _flush_soon, _poll

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._tally import Tally

__all__ = ["Progress"]

T = TypeVar("T")

logger = logging.getLogger("mepa.progress")

_UPDATE = 0
_REGISTER = 1
_CLOSE = 2
_INVALID = 3  # a task's update() got something that is not a number

# Host-side bars of this process, so that a bar unpickled where it was made is the bar itself.
_HOSTED: weakref.WeakValueDictionary[str, Progress] = weakref.WeakValueDictionary()
os.register_at_fork(after_in_child=_HOSTED.clear)


def _check_count(name: str, n: object) -> None:
    """A count of items: an int >= 0 (an :class:`~mepa.ArgumentTypeError` or
    :class:`~mepa.InvalidArgumentError` naming ``name`` otherwise)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise ArgumentTypeError(
            f"{name} must be an int number of items >= 0, got {type(n).__name__}: {n!r}; "
            f"pass e.g. {name}=len(items)"
        )
    if n < 0:
        raise InvalidArgumentError(
            f"{name} must be a number of items >= 0, got {n!r}; pass e.g. {name}=len(items)"
        )


class Progress:
    """A tqdm bar on the host that tasks update.

    Usable on the host and inside tasks (threads, loky workers; it pickles with pickle and
    cloudpickle). See the module documentation for when the bar closes.

    Parameters
    ----------
    hub
        The executor's event hub.
    total
        Initial total (the host's own share of the work).
    **tqdm_kwargs
        Passed to :class:`tqdm.auto.tqdm` (a widget in a Jupyter notebook, text elsewhere):
        ``desc``, ``unit``, ``disable``, ``file``, ...

    Examples
    --------
    >>> import io
    >>> from mepa._events import EventHub, run_task
    >>> hub = EventHub()
    >>> progress = Progress(hub, total=3, file=io.StringIO())
    >>> result = run_task(lambda: sum(progress.iters([1, 2, 3])))
    >>> hub.drain(5)
    True
    >>> progress.n, progress.total
    (3, 6)
    >>> progress.close()
    >>> progress.finished
    True
    >>> hub.close()
    """

    _bar: Any  # tqdm.tqdm on the host, None in a proxy

    def __init__(self, hub: EventHub, total: int = 0, **tqdm_kwargs: Any) -> None:
        from tqdm.auto import tqdm

        _check_count("total", total)
        self._id = uuid.uuid4().hex
        self._listener = _Listener(self)
        self._init_sending(hub.register(self._listener))
        self._hub: EventHub | None = hub
        self._lock = threading.Lock()
        self._host_holds = True
        self._holds = 0  # registrations of tasks and blocks still open
        self._finished = False
        self._late = 0
        try:
            self._bar = tqdm(total=total, **tqdm_kwargs)
        except (KeyError, TypeError) as exc:  # tqdm's TqdmKeyError: an unknown option
            hub.off(self._ctx)
            raise ArgumentTypeError(
                f"progress options must be tqdm's, got {sorted(tqdm_kwargs)} ({exc}); pass "
                "tqdm options such as desc='fit', unit='row', disable=True"
            ) from exc
        _HOSTED[self._id] = self
        hub._add_close_hook(self.dispose)
        # Once the bar is finished or disposed, nothing on the host keeps it: when the user
        # drops it, its registration goes too.
        weakref.finalize(self, _forget_registration, weakref.ref(hub), self._ctx.event).atexit = (
            False
        )

    def _init_sending(self, ctx: EventContext) -> None:
        self._ctx = ctx
        self._send_lock = threading.Lock()  # one sender at a time: messages leave in order
        self._counters: list[_Counter] = []
        self._tally = _new_tally()  # update() in a task adds here
        self._add = _adder(self._tally)
        self._scheduled = False
        self._own_holds = 0  # registrations made through this object inside tasks
        self._released = False  # a close() in a task released this object's last registration
        _flush_at_task_end(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_progress, (self._id, self._ctx))

    def __repr__(self) -> str:
        if self._bar is None:
            return f"<Progress {self._id[:8]} (in a task)>"
        state = "closed" if self._finished else "open"
        return f"<Progress {self._id[:8]} {state}, {self._bar.n}/{self._bar.total}>"

    # ------------------------------------------------------------------ host-side state

    @property
    def bar(self) -> Any:
        """The :class:`tqdm.auto.tqdm` bar (host only)."""
        if self._bar is None:
            raise RuntimeError("the tqdm bar lives on the host; a task only sends updates to it")
        return self._bar

    @property
    def n(self) -> int:
        """Updates shown so far (host only)."""
        return int(self.bar.n)

    @property
    def total(self) -> int:
        """Current total (host only)."""
        return int(self.bar.total or 0)

    @property
    def finished(self) -> bool:
        """Whether the bar has been closed (host only)."""
        self.bar  # noqa: B018 - host-only check
        return self._finished

    @property
    def disable(self) -> bool:
        """Whether this object is done reporting (a name kept from the original API).

        On the host: the bar has closed (:attr:`finished`). In a task of another process:
        this copy's ``close()`` released the last registration it made there (a new
        ``register`` clears it). Code written for the original restarts a bar when this is
        true.
        """
        if self._bar is not None:
            return self._finished
        return self._released

    @property
    def progress(self) -> Any:
        """The :class:`tqdm.tqdm` bar on the host, ``None`` in a task of another process.

        The original API's name for :attr:`bar`.
        """
        return self._bar

    def enable_local_lock(self, enable: bool) -> None:
        """Accepted for the original API; does nothing.

        The original locked a bar shared by threads only when asked; every method of this
        class is thread-safe whatever ``enable`` is.

        Parameters
        ----------
        enable
            Ignored.
        """
        if not isinstance(enable, bool):
            raise TypeError(f"enable must be a bool, got {type(enable).__name__}: {enable!r}")

    def distribute(self) -> Progress:
        """The object to hand to tasks: the bar itself (a name kept from the original API).

        A :class:`Progress` pickles into a proxy that sends to this bar, so passing it to a
        task (or capturing it in one) is all there is to do.

        Returns
        -------
        Progress
            ``self``.
        """
        return self

    def _on_host(self) -> bool:
        return self._bar is not None and not _IN_TASK.get()

    # ------------------------------------------------------------------ the API

    def update(self, n: int = 1) -> None:
        """Advance the bar by ``n``.

        On the host the bar moves at once; inside a task updates are summed and sent every
        few tens of milliseconds and at the end of the task. In a task of another process,
        ``update`` is a C counter (see the module notes): ``n`` is checked when the updates are
        added up, and a value that is not a number is logged on the host and skipped.

        Parameters
        ----------
        n
            Number of items done.
        """
        if self._bar is not None and not _IN_TASK.get():
            given: object = n  # checked at run time whatever the annotation says
            if isinstance(given, bool) or not isinstance(given, numbers.Real):
                raise ArgumentTypeError(
                    f"n must be a number of items, got {type(given).__name__}: {given!r}; "
                    "pass e.g. progress.update(1)"
                )
            self._apply(_UPDATE, n)
            return
        self._add(n)
        if not self._scheduled:  # read after the addition, see _send_pending()
            self._scheduled = True
            _flush_soon(self)

    def register(self, n: int) -> None:
        """Add ``n`` to the total; in a task, also hold the bar open until :meth:`close`.

        Parameters
        ----------
        n
            Number of items this part of the work will report, ``>= 0``.
        """
        _check_count("n", n)
        if self._on_host():
            with self._lock:
                self._host_holds = True
            self._apply(_REGISTER, n, hold=False)
            return
        with self._send_lock:
            self._send_pending()
            self._own_holds += 1
            self._released = False
            self._ctx.fire(_REGISTER, n)

    def close(self) -> None:
        """Release a hold on the bar: the host's, or in a task the last ``register`` made there.

        Pending updates are sent first. Does nothing if there is no such hold.
        """
        if self._on_host():
            with self._lock:
                self._host_holds = False
                self._finish_if_done()
            return
        with self._send_lock:
            self._send_pending()
            if self._own_holds == 0:
                return
            self._own_holds -= 1
            self._released = self._own_holds == 0
            self._ctx.fire(_CLOSE, 0)

    def flush(self) -> None:
        """Send the updates summed in this process now (normally done for you)."""
        with self._send_lock:
            self._send_pending()

    def dispose(self) -> None:
        """Close the bar now, whatever still holds it (the executor calls this at shutdown).

        In a task, only sends pending updates. Idempotent.
        """
        if self._bar is None:
            self.flush()
            return
        self.flush()
        with self._lock:
            self._host_holds = False
            self._holds = 0
            self._finish_if_done()
        hub, self._hub = self._hub, None
        if hub is not None:
            hub.off(self._ctx)
        self._listener.loosen()
        _HOSTED.pop(self._id, None)

    def iters(self, iterable: Iterable[T], total: int | None = None) -> Iterator[T]:
        """Yield the items of ``iterable``, registering their number and updating one per item.

        The registration is closed when the iteration ends (also by ``break`` or an exception).

        Parameters
        ----------
        iterable
            The items; must have a length unless ``total`` is given.
        total
            Number of items to register.

        Returns
        -------
        Iterator
            The items.
        """
        if total is None:
            if not isinstance(iterable, Sized):
                raise ArgumentTypeError(
                    f"iters() needs a sized iterable or total=..., got {type(iterable).__name__}"
                    "; pass total=the number of items"
                )
            total = len(iterable)
        _check_count("total", total)
        return self._iterate(iterable, total)

    def _iterate(self, iterable: Iterable[T], total: int) -> Iterator[T]:
        with self(total):
            if self._on_host():
                for item in iterable:
                    yield item
                    self._apply(_UPDATE, 1)
                return
            # In a task: count in a counter of this generator's own (no call per item).
            counter = self._new_counter()
            try:
                for item in iterable:
                    yield item
                    counter.done += 1
                    if not self._scheduled:
                        self._scheduled = True
                        _flush_soon(self)
            finally:
                with self._send_lock:
                    self._send_pending()
                    self._counters.remove(counter)

    def range(self, *args: int) -> Iterator[int]:
        """Like :func:`range`, with :meth:`iters` progress.

        Parameters
        ----------
        *args
            ``stop`` or ``start, stop[, step]``.

        Returns
        -------
        Iterator of int
            The numbers.
        """
        return self.iters(builtins.range(*args))

    def __call__(self, n: int) -> _Hold:
        """A block that registers ``n`` on entry and closes that registration on exit.

        Parameters
        ----------
        n
            Number of items the block will report.

        Returns
        -------
        context manager
            ``with progress(n): ...``
        """
        _check_count("n", n)
        return _Hold(self, n)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Names of the original API.
    tqdm = iters
    trange = range
    reset = register

    # ------------------------------------------------------------------ internals

    def _open(self, n: int) -> None:
        """Start an ``iters``/``range``/``with progress(n)`` block."""
        if self._on_host():
            self._apply(_REGISTER, n)
        else:
            self.register(n)

    def _release(self) -> None:
        """End the block started by :meth:`_open`."""
        if self._on_host():
            self._apply(_CLOSE, 0)
        else:
            self.close()

    def _new_counter(self) -> _Counter:
        counter = _Counter()
        with self._send_lock:
            self._counters.append(counter)
        return counter

    @property
    def pending(self) -> bool:
        """Whether a proxy holds updates not sent yet (checked by the flusher thread)."""
        return self._tally.pending

    def _send_pending(self) -> None:
        # Called with self._send_lock held. Each counter has one writer (an ``iters``
        # generator) that adds to .done and then reads ._scheduled; here ._scheduled is
        # cleared before .done is read, so an addition is either sent now or schedules a flush.
        self._scheduled = False
        n: Any = 0
        for counter in self._counters:
            done = counter.done
            n += done - counter.sent
            counter.sent = done
        n += _take_updates(self._tally, self._ctx)
        if n:
            self._ctx.fire(_UPDATE, n)

    def _on_message(self, kind: int, n: Any, count: int = 0) -> None:
        """Apply a message from a task (in the hub's dispatcher thread)."""
        if kind == _INVALID:
            logger.error(
                "progress bar %r: update() in a task got %s, which is not a number; pass the "
                "number of items done, e.g. update(1); %d such update(s) ignored",
                self._bar.desc,
                n,
                count,
            )
            return
        self._apply(kind, n)

    def _apply(self, kind: int, n: int, *, hold: bool = True) -> None:
        bar = self._bar
        with self._lock:
            if self._finished:
                self._late += 1
                if self._late == 1:
                    logger.warning(
                        "progress bar %r received a message after it closed; "
                        "close the bar only after gathering the tasks that update it",
                        bar.desc,
                    )
                return
            if kind == _UPDATE:
                if bar.total and bar.n + n >= bar.total:
                    # The last step is drawn once, when the bar closes (with the overall
                    # rate): drawn now as well, a log or a captured stream (where "\r" does
                    # not overwrite) would show the 100% line twice.
                    bar.n += n
                else:
                    bar.update(n)
            elif kind == _REGISTER:
                bar.total = (bar.total or 0) + n
                bar.refresh()
                if hold:
                    self._holds += 1
            else:
                self._holds = max(0, self._holds - 1)
                self._finish_if_done()

    def _finish_if_done(self) -> None:
        # Called with self._lock held.
        if not self._finished and not self._host_holds and self._holds == 0:
            self._finished = True
            self._bar.close()
            self._listener.loosen()  # late messages are still counted while the user holds it


class _Listener:
    """The event hub's hold on a host bar: strong while the bar can change, then weak.

    An open bar must outlive the user's reference to it (``ex.distribute(task,
    ex.progress(n), alloc)`` draws a bar that tasks update), so the hub keeps it alive. A
    finished or disposed bar is kept only by its user; messages that still come for it are
    counted as late while it lives, and dropped after.
    """

    __slots__ = ("_strong", "_weak")

    def __init__(self, progress: Progress) -> None:
        self._strong: Progress | None = progress
        self._weak = weakref.ref(progress)

    def __call__(self, kind: int, n: Any, count: int = 0) -> None:
        progress = self._strong if self._strong is not None else self._weak()
        if progress is not None:
            progress._on_message(kind, n, count)

    def loosen(self) -> None:
        """Stop keeping the bar alive."""
        self._strong = None


def _forget_registration(hub_ref: weakref.ref[EventHub], event: Hashable) -> None:
    """A host bar was collected: its hub forgets the bar's event (never blocks)."""
    hub = hub_ref()
    if hub is not None:
        hub._forget_soon(event)


class _PyTally:
    """The pure-Python tally, for when the C accelerator :mod:`mepa._tally` is not built.

    Same interface, but ``call(n=1)`` (see :func:`_adder`) adds ``n`` where the C tally has
    ``add``; :meth:`take` returns ``(total of the int updates, list of the others)`` and starts
    again; :attr:`pending`.
    """

    __slots__ = ("_updates", "call")

    def __init__(self) -> None:
        self._updates: list[Any] = []
        append = self._updates.append

        def update(n: Any = 1) -> None:
            append(n)

        self.call = update

    @property
    def pending(self) -> bool:
        return bool(self._updates)

    def take(self) -> tuple[int, list[Any]]:
        # Other threads may append meanwhile; only the caller (holding the send lock) removes.
        updates = self._updates
        ones = updates.count(1)  # the common case, counted in C without a copy
        k = len(updates)
        if ones == k:  # nothing was appended since the count (else k > ones)
            del updates[:k]
            return k, []
        taken = updates[:k]
        del updates[:k]
        return sum(v for v in taken if type(v) is int), [v for v in taken if type(v) is not int]


_CTally: type[Tally] | None
try:
    from ._tally import Tally as _CTally
except ImportError:  # built without a C compiler
    _CTally = None


def _new_tally() -> Tally | _PyTally:
    """A C tally if the accelerator is built, else a :class:`_PyTally`."""
    return _CTally() if _CTally is not None else _PyTally()


def _adder(tally: Tally | _PyTally) -> Callable[..., None]:
    """The fastest ``update(n=1)`` for ``tally``: the C tally's bound ``add``, or a closure."""
    return tally.call if isinstance(tally, _PyTally) else tally.add


def _take_updates(tally: Tally | _PyTally, ctx: EventContext) -> Any:
    """Empty a tally; the sum of its updates (values that are not numbers reported)."""
    if not tally.pending:
        return 0
    total, others = tally.take()
    if not others:
        return total
    try:
        return total + sum(others)
    except TypeError:
        good = [v for v in others if isinstance(v, numbers.Real)]
        bad = next(v for v in others if not isinstance(v, numbers.Real))
        ctx.fire(_INVALID, f"{bad!r} ({type(bad).__name__})", len(others) - len(good))
        return total + sum(good)


def _send_left_over(tally: Tally | _PyTally, ctx: EventContext) -> None:
    """When a proxy is collected (a task dropped its arguments): send its last updates."""
    n = _take_updates(tally, ctx)
    if n:
        ctx.fire(_UPDATE, n)


class _Counter:
    """Updates counted by one ``iters`` loop in a task, and how many were sent."""

    __slots__ = ("done", "sent")

    def __init__(self) -> None:
        self.done = 0
        self.sent = 0


class _Hold:
    """``with progress(n):`` registers ``n`` on entry and closes the registration on exit."""

    __slots__ = ("_n", "_progress")

    def __init__(self, progress: Progress, n: int) -> None:
        self._progress = progress
        self._n = n

    def __enter__(self) -> Progress:
        self._progress._open(self._n)
        return self._progress

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress._release()


def _rebuild_progress(progress_id: str, ctx: EventContext) -> Progress:
    hosted = _HOSTED.get(progress_id)
    if hosted is not None:
        return hosted
    proxy = Progress.__new__(Progress)
    proxy._id = progress_id
    proxy._bar = None
    proxy._hub = None
    proxy._init_sending(ctx)
    # The fast path of a task's update(n): the tally's own adder, taken by the flusher thread
    # and at the end of the task.
    vars(proxy)["update"] = proxy._add
    _poll(proxy)
    # A task may drop its arguments before it ends (and run_task flushes): the updates of a
    # collected proxy go out at once, into the buffer that run_task sends.
    weakref.finalize(proxy, _send_left_over, proxy._tally, ctx).atexit = False
    return proxy
