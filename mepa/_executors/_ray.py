"""Tasks on Ray: a local Ray started on loopback, or an existing Ray cluster.

::

    host (Ray driver)                                   Ray actor, one per mepa worker
    ─────────────────                                   ──────────────────────────────
    submit(fn, *args)
      big arrays, scatter()ed data ─▶ ray.put ─▶ object store ─┐
      BridgeFuture queued on the host (pinned: its worker's     │
      queue; others: the shared one); cancel() here is final    │
      call thread, when the worker's actor is idle:             │
        bridge running; actor.run.remote(fn, args, *refs) ─────┴─▶ slots filled (zero copy)
                                                               run_task(fn) → ("ok", value)
                                                               or ("error", exc, traceback)
      ObjectRef.future() ─▶ call thread ─▶ BridgeFuture ◀───────── value via object store
      ctx.fire ─────────────────────────────────────────────── batch ─▶ ray.util.queue.Queue
      poller thread: Queue.get ─▶ hub.deliver_bytes ─▶ dispatcher ─▶ callbacks, progress
      future completes after the task's events are dispatched

Each mepa worker is a Ray actor (one CPU, one process) running one task at a time. Tasks wait
on the host until a worker is free, as in :class:`concurrent.futures.ProcessPoolExecutor`: a
task pinned to a worker (``submit_to``, ``distribute``) waits for that worker, the others
for any. So a task is running (``future.running()``) exactly while Ray has it, and one still
queued on the host is cancelled for sure. A worker that dies (``os._exit``, a signal, the
out-of-memory killer) fails the task it was running with :class:`~mepa.WorkerCrashedError`
and is replaced before the next one.

Ray is optional (``pip install 'mepa[ray]'``) and imported only when an executor is made.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import ipaddress
import itertools
import os
import secrets
import shutil
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import numpy as np

from .._errors import (
    COMMON_ERRORS,
    ClusterSpecError,
    ErrorMap,
    ErrorRule,
    ExecutorShutdownError,
    TaskPlace,
)
from .._errors import WorkerCrashedError as _Crash
from .._events._hub import EventHub
from .._events._sender import Channel, Transport
from .._tree import tree_map
from .._worker import Worker, make_workers, physical_cores
from ._base import Executor, check_not_exiting
from ._engine import Capabilities
from ._futures import BridgeFuture

__all__ = ["RayExecutor"]

R = TypeVar("R")

PUT_BYTES = 1 << 20
"""Arrays at least this big go to Ray's object store once instead of inside the task."""

_STARTUP_WAIT_S = "300"  # Ray's own default (30 s) fails on a loaded machine


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            f"RayExecutor needs Ray ({exc}); install it with pip install 'mepa[ray]'"
        ) from exc
    return ray


def _ray_env() -> None:
    """Settings a Ray started from this process reads from the environment (its processes too).

    No usage reporting; Ray's own default startup wait (30 s) fails on a loaded machine.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_raylet_start_wait_time_s", _STARTUP_WAIT_S)


_INIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """While Ray starts here, keep its node address the loopback one.

    Ray replaces a loopback ``_node_ip_address`` with the machine's routable address (and
    then binds its servers to all interfaces) unless ``ray_constants.ENABLE_RAY_CLUSTER``
    is false. Ray sets that constant from ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when
    it is first imported, so the environment does not help once something imported Ray:
    the constant itself is false while ``ray.init`` runs (the node keeps its address).
    """
    from ray._private import ray_constants

    with _INIT_LOCK:
        before = ray_constants.ENABLE_RAY_CLUSTER
        ray_constants.ENABLE_RAY_CLUSTER = False
        try:
            yield
        finally:
            ray_constants.ENABLE_RAY_CLUSTER = before


_saved_token_path: list[str | None] = []


def _local_token(temp_dir: str) -> None:
    """The token of a local Ray, in ``temp_dir``.

    A new local Ray turns on Ray's token authentication and, with no token given, writes
    one to ``~/.ray/auth_token``: outside the executor's directory. Here the token is a
    file in ``temp_dir`` (readable by this user only) that ``RAY_AUTH_TOKEN_PATH`` names,
    for this process and the Ray processes it starts; :func:`stop_local_ray` restores the
    variable. A token or mode the user set (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``,
    ``RAY_AUTH_MODE=disabled``) is used as it is.
    """
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token" or any(
        name in os.environ for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    ):
        return
    path = os.path.join(temp_dir, "auth_token")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(secrets.token_hex(32))
    _saved_token_path.append(os.environ.get("RAY_AUTH_TOKEN_PATH"))
    os.environ["RAY_AUTH_TOKEN_PATH"] = path
    _forget_cached_token()


def _forget_cached_token() -> None:
    with contextlib.suppress(Exception):  # older Rays have no token authentication
        from ray import _raylet

        getattr(_raylet, "AuthenticationTokenLoader").instance().reset_cache()  # noqa: B009


def start_local_ray(
    n_cpus: int, temp_dir: str, object_store_memory: int | None = None
) -> str:
    """Start Ray in this process on 127.0.0.1, everything it writes under ``temp_dir``.

    No dashboard, no usage reporting, logs kept in the session directory, its token (see
    :func:`_local_token`) too. Returns the address other processes (or
    :class:`RayExecutor`) connect to; :func:`stop_local_ray` stops it.
    """
    _ray_env()
    ray = _import_ray()
    _local_token(temp_dir)
    with _loopback_node():
        context = ray.init(
            num_cpus=n_cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=temp_dir,
            object_store_memory=object_store_memory,
            configure_logging=False,
            log_to_driver=False,
            namespace="mepa",
        )
    return str(context.address_info["address"])


def stop_local_ray(temp_dir: str | None) -> None:
    """Stop the Ray :func:`start_local_ray` started; remove ``temp_dir``, restore the env."""
    with contextlib.suppress(Exception):
        _import_ray().shutdown()
    if _saved_token_path:
        before = _saved_token_path.pop()
        if before is None:
            os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        else:
            os.environ["RAY_AUTH_TOKEN_PATH"] = before
        _forget_cached_token()
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)


# ---------------------------------------------------------------------- errors


def _worker_died(exc: BaseException) -> bool:
    from ray import exceptions

    return isinstance(
        exc,
        (exceptions.RayActorError, exceptions.WorkerCrashedError, exceptions.OutOfMemoryError),
    )


def _crashed(exc: BaseException, task: TaskPlace) -> BaseException:
    return _Crash(
        f"a Ray worker died while running the task on {task.describe()} "
        f"({type(exc).__name__}); it may have crashed, called os._exit, or been killed for "
        "using too much memory. The executor starts a fresh worker on the next call.",
        chunk=task.chunk,
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _gcs_address(ray: Any) -> str:
    return str(ray.get_runtime_context().gcs_address)


class RayExecutor(Executor):
    """Runs tasks on Ray: a local Ray of its own, or a running Ray cluster.

    Parameters
    ----------
    address
        ``None`` starts Ray in this process on 127.0.0.1 (no dashboard, its temporary
        directory created by the executor and removed by :meth:`shutdown`). A
        ``"host:port"`` address connects to a running cluster; when this process is
        already connected to that cluster, the connection is shared and left open.
    n_workers
        Number of workers (Ray actors, one CPU each); default: one per physical core for a
        local Ray, the cluster's CPUs otherwise.
    object_store_memory
        Bytes of the object store of a local Ray (``None``: Ray's default).

    Notes
    -----
    *Workers.* Each worker is an actor with one CPU that runs one task at a time. Tasks wait
    on the host until a worker is free: one pinned to a worker (:meth:`submit_to`,
    :meth:`distribute`) for that worker, the others for any. A task is running
    (``future.running()``) from when it is handed to its actor; cancelling a task that still
    waits keeps it from running (``capabilities.cancels_queued``).

    *Data.* Arrays of at least :data:`PUT_BYTES`, and what :meth:`scatter` returns, travel
    through Ray's object store, once, and reach the task without a copy. Results come back
    the same way, so arrays that :meth:`gather` returns are **read-only** views of the object
    store (``capabilities.writable_results`` is false): copy one to change it.

    *Events.* Workers put batches of events on a :class:`ray.util.queue.Queue`; a thread of
    the executor takes them off and hands them to the dispatcher.

    *Crashes.* A worker process that dies fails the task it was running with
    :class:`~mepa.WorkerCrashedError`; its next task gets a fresh actor.

    Examples
    --------
    >>> with RayExecutor(n_workers=2) as executor:  # doctest: +SKIP
    ...     executor.submit_and_gather(pow, 2, 10)
    1024
    """

    capabilities = Capabilities(pins_tasks=True, scatters=True, writable_results=False)
    errors = ErrorMap(ErrorRule(_worker_died, _crashed), COMMON_ERRORS)

    def __init__(
        self,
        address: str | None = None,
        *,
        n_workers: int | None = None,
        object_store_memory: int | None = None,
    ) -> None:
        if address is not None and (not isinstance(address, str) or not address):
            raise ClusterSpecError(
                f"address must be a Ray cluster address 'host:port' or None, got {address!r}; "
                "pass None to start a local Ray"
            )
        check_not_exiting()  # no Ray started (or connected) for an interpreter that exits
        self._temp_dir: str | None = None
        self._owns_ray = False
        ray = _import_ray() if address is not None or "ray" in sys.modules else None
        if ray is not None and address is None and ray.is_initialized():
            raise ClusterSpecError(
                "address=None starts a local Ray, but this process is already connected "
                "to Ray; pass that cluster's address to share the connection"
            )
        if address is None:
            workers = make_workers("ray", n_workers, physical_cores())
            _ray_env()
            ray = _import_ray()
            temp_dir = tempfile.mkdtemp(prefix="mepa-ray-")
            try:
                start_local_ray(len(workers), temp_dir, object_store_memory)
            except BaseException:
                stop_local_ray(temp_dir)  # also a Ray that failed halfway
                raise
            self._temp_dir = temp_dir
        else:
            assert ray is not None
            if object_store_memory is not None:
                raise ClusterSpecError(
                    "object_store_memory only sizes a local Ray (address=None), got "
                    f"object_store_memory={object_store_memory!r} with address={address!r}; "
                    "size the cluster's object store where it starts"
                )
            if ray.is_initialized():
                connected = _gcs_address(ray)
                if connected != address:
                    raise ClusterSpecError(
                        f"this process is connected to the Ray cluster at {connected}, got "
                        f"address={address!r}; a process talks to one Ray cluster at a time"
                    )
            else:
                # Ray would swap a loopback host for this machine's routable address, where
                # a loopback-only cluster (such as another RayExecutor()'s) does not listen.
                local = _is_loopback(address.rpartition(":")[0])
                with _loopback_node() if local else contextlib.nullcontext():
                    ray.init(address=address, configure_logging=False, log_to_driver=False)
                self._owns_ray = True
            try:
                cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
                workers = make_workers("ray", n_workers, cpus)
                if len(workers) > cpus:
                    # each worker is an actor holding one CPU: the others would wait forever
                    raise ClusterSpecError(
                        f"n_workers asks for {len(workers)} workers, but the Ray cluster at "
                        f"{address} has {cpus} CPUs, and each worker is an actor that holds "
                        f"one; pass n_workers={cpus} or fewer, or start more Ray nodes first"
                    )
            except BaseException:
                if self._owns_ray:
                    ray.shutdown()
                raise
        super().__init__(workers)
        self._ray = ray
        self._calls = _Calls(ray, len(workers))
        self._hold("calls", self._calls.close)
        if self._temp_dir is not None:  # dropped without shutdown(): its own Ray stops too
            self._hold("ray", functools.partial(stop_local_ray, self._temp_dir))
        self._poller: _QueuePoller | None = None

    def scatter(self, data: R) -> R:
        """Put ``data`` in Ray's object store once; pass the result to tasks in its place.

        Returns
        -------
        ray.ObjectRef
            Typed as ``data``: a task given it (also inside lists, tuples and dicts) receives
            the data, read from the object store without a copy.
        """
        self._check_open()
        return cast("R", self._ray.put(data))

    # ------------------------------------------------------------------ engine

    def _engine_submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        worker: Worker | None,
    ) -> concurrent.futures.Future[Any]:
        ray = self._ray
        refs: list[Any] = []

        def to_slot(leaf: Any) -> Any:
            if isinstance(leaf, ray.ObjectRef):
                refs.append(leaf)
                return _Slot(len(refs) - 1)
            if type(leaf) is np.ndarray and leaf.nbytes >= PUT_BYTES and not leaf.dtype.hasobject:
                refs.append(ray.put(leaf))
                return _Slot(len(refs) - 1)
            return leaf

        call = _Call(fn, tree_map(to_slot, args), tree_map(to_slot, kwargs), refs)
        self._calls.submit(call, None if worker is None else self._workers.index(worker))
        return call.bridge

    def _engine_shutdown(self, wait: bool) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.stop()
        self._calls.close()
        self._hold("calls", None)
        self._release_ray()

    def _release_ray(self) -> None:
        """Disconnect (and stop a local Ray) if the executor connected; remove its files."""
        temp_dir, self._temp_dir = self._temp_dir, None
        if temp_dir is not None:
            self._owns_ray = False
            self._hold("ray", None)
            stop_local_ray(temp_dir)
        elif self._owns_ray:
            self._owns_ray = False
            with contextlib.suppress(Exception):
                _import_ray().shutdown()

    # ------------------------------------------------------------------ events

    def _event_channel(self, hub: EventHub) -> Channel:
        from ray.util.queue import Queue

        queue = Queue(actor_options={"num_cpus": 0})
        self._poller = _QueuePoller(queue, hub.deliver_bytes)
        return RayQueueChannel(hub.hub_id, queue)

    def __repr__(self) -> str:
        state = "shut down" if self._is_shutdown else "running"
        where = "local Ray" if self._temp_dir is not None else "Ray cluster"
        return f"<RayExecutor {state}, {len(self._workers)} workers, {where}>"


# ---------------------------------------------------------------------- on the host


class _Call:
    """One task on its way to an actor: the call, the object refs it reads, its future."""

    __slots__ = ("args", "bridge", "fn", "kwargs", "refs")

    def __init__(
        self, fn: Callable[..., Any], args: Any, kwargs: Any, refs: list[Any]
    ) -> None:
        self.fn, self.args, self.kwargs, self.refs = fn, args, kwargs, refs
        self.bridge = _RayBridge()


class _Calls:
    """The host's queues of tasks and the thread that hands them to idle actors.

    One actor per worker, started on first use and after it died, runs one task at a time.
    Tasks wait here: those pinned to a worker in that worker's queue, the others in a shared
    one (a free worker takes its own first). A task leaves its queue only if its future was
    not cancelled, and is then running. Every Ray call (starting an actor, ``run.remote``,
    killing a dead actor) and every completion happens in the one thread of this object,
    never in Ray's own callback thread, and never while a lock is held.

    Parameters
    ----------
    ray
        The ``ray`` module, connected.
    n_workers
        How many actors (workers).
    """

    def __init__(self, ray: Any, n_workers: int) -> None:
        self._ray = ray
        self._actors: list[Any] = [None] * n_workers
        self._running: list[_Call | None] = [None] * n_workers  # the call each actor has
        self._pinned: list[collections.deque[_Call]] = [
            collections.deque() for _ in range(n_workers)
        ]
        self._shared: collections.deque[_Call] = collections.deque()
        self._returns: collections.deque[tuple[int, _Call, Any]] = collections.deque()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="mepa-ray-calls", daemon=True)
        self._thread.start()

    def submit(self, call: _Call, index: int | None) -> None:
        """Queue ``call`` for worker ``index`` (``None``: any worker)."""
        with self._wake:
            if self._closed:
                raise ExecutorShutdownError("cannot schedule new futures after shutdown")
            (self._shared if index is None else self._pinned[index]).append(call)
            self._wake.notify()

    def close(self) -> None:
        """Stop the thread and the actors; fail the calls still queued (none after a wait)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(30)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._closed or self._returns or self._startable()):
                    self._wake.wait()
                closed = self._closed
                returns, self._returns = self._returns, collections.deque()
                starts = [] if closed else self._take_startable()
            # In a frame of its own: kept in this one while waiting for the next, the last
            # calls would keep their arguments (and the object-store copies of their arrays)
            self._handle(returns, starts)
            del returns, starts
            if closed:
                break
        self._stop()

    def _handle(
        self, returns: collections.deque[tuple[int, _Call, Any]], starts: list[tuple[int, _Call]]
    ) -> None:
        for index, call, outcome in returns:
            self._returned(index, call, outcome)
        for index, call in starts:
            self._start(index, call)

    def _startable(self) -> bool:
        return any(
            call is None and (self._pinned[index] or self._shared)
            for index, call in enumerate(self._running)
        )

    def _take_startable(self) -> list[tuple[int, _Call]]:
        """The next call of each idle worker (its own queue first), marked running."""
        starts = []
        for index, running in enumerate(self._running):
            if running is not None:
                continue
            for queue in (self._pinned[index], self._shared):
                call = _next_live(queue)
                if call is not None:
                    self._running[index] = call
                    starts.append((index, call))
                    break
        return starts

    def _start(self, index: int, call: _Call) -> None:
        try:
            actor = self._actors[index]
            if actor is None:
                remote = self._ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)
                actor = self._actors[index] = remote(_Runner).remote()
            ref = actor.run.remote(call.fn, call.args, call.kwargs, *call.refs)
            ref.future().add_done_callback(functools.partial(self._on_return, index, call))
        except Exception as exc:  # noqa: BLE001 - Ray refused the call: the task's error
            self._returned(index, call, exc)

    def _on_return(
        self, index: int, call: _Call, outcome: concurrent.futures.Future[Any]
    ) -> None:
        """Ray's callback thread: hand the outcome to this object's thread."""
        with self._wake:
            self._returns.append((index, call, outcome))
            self._wake.notify()

    def _returned(self, index: int, call: _Call, outcome: Any) -> None:
        """The actor is done with ``call``: free it (replace it if it died), complete."""
        try:
            error = outcome if isinstance(outcome, BaseException) else outcome.exception()
            if error is not None and _worker_died(error):
                dead, self._actors[index] = self._actors[index], None
                if dead is not None:
                    with contextlib.suppress(Exception):
                        self._ray.kill(dead)
            with self._wake:
                self._running[index] = None
            if error is not None:
                call.bridge.reject(error)
            else:
                call.bridge.complete(outcome.result())
        except Exception as exc:  # noqa: BLE001 - never leave the task's future pending
            call.bridge.reject(exc)

    def _stop(self) -> None:
        """Fail what is left (after ``shutdown()``, nothing; after a drop, maybe), stop actors."""
        with self._wake:
            queued = [*self._shared, *itertools.chain.from_iterable(self._pinned)]
            self._shared.clear()
            for queue in self._pinned:
                queue.clear()
            running = [call for call in self._running if call is not None]
        for call in queued:
            if call.bridge.set_running_or_notify_cancel():
                call.bridge.reject(
                    ExecutorShutdownError("the executor shut down before the task started")
                )
        for call in running:  # its actor is stopped below: the task cannot complete
            call.bridge.reject(
                ExecutorShutdownError("the executor shut down while the task ran; it was stopped")
            )
        actors, self._actors = self._actors, [None] * len(self._actors)
        for actor in actors:
            if actor is not None:
                with contextlib.suppress(Exception):
                    self._ray.kill(actor)


def _next_live(queue: collections.deque[_Call]) -> _Call | None:
    """The first call in ``queue`` whose future was not cancelled, now running."""
    while queue:
        call = queue.popleft()
        if call.bridge.set_running_or_notify_cancel():
            return call
    return None


class _RayBridge(BridgeFuture):
    """The stdlib future of one task, running from when its actor call is made."""

    def complete(self, reply: tuple[Any, ...]) -> None:
        """The actor's reply: ``("ok", value)`` or ``("error", exc, traceback text)``."""
        if reply[0] == "ok":
            self.resolve(reply[1])
        else:
            self.reject(reply[1], reply[2])


# ---------------------------------------------------------------------- on the workers


class _Slot:
    """Where the ``i``-th object ref given to the actor goes in the arguments."""

    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Slot, (self.i,))


class _Runner:
    """The actor of one mepa worker: runs tasks, one at a time, in its own process."""

    def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        *objects: Any,
    ) -> tuple[Any, ...]:
        def fill(leaf: Any) -> Any:
            return objects[leaf.i] if isinstance(leaf, _Slot) else leaf

        try:
            return ("ok", fn(*tree_map(fill, args), **tree_map(fill, kwargs)))
        except Exception as exc:  # noqa: BLE001 - it goes back to the host
            from .._payload import sendable_exception

            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            return ("error", sendable_exception(exc), text)


# ---------------------------------------------------------------------- events


class RayQueueChannel(Channel):
    """Event channel from Ray workers to a hub: a :class:`ray.util.queue.Queue` of batches.

    Parameters
    ----------
    hub_id
        The hub's id.
    queue
        The queue the executor's poller thread reads.
    """

    def __init__(self, hub_id: str, queue: Any) -> None:
        super().__init__(hub_id)
        self.queue = queue

    def __reduce__(self) -> tuple[Any, ...]:
        return (RayQueueChannel, (self.hub_id, self.queue))

    def connect(self) -> Transport:
        """A transport that puts each batch on the queue (and waits until it is there)."""
        return _QueueTransport(self.queue)


class _QueueTransport:
    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def send_bytes(self, payload: bytes) -> None:
        try:
            self.queue.put(payload)
        except Exception as exc:  # the queue's actor is gone: the executor shut down
            raise OSError(str(exc)) from exc

    def close(self) -> None:
        pass


class _QueuePoller:
    """The host's thread that takes event batches off the queue, in order, for the hub."""

    def __init__(self, queue: Any, deliver: Callable[[bytes], None]) -> None:
        self._queue = queue
        self._deliver = deliver
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mepa-ray-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from ray.util.queue import Empty

        while not self._stopping.is_set():
            try:
                batches = [self._queue.get(block=True, timeout=0.2)]
                batches += self._queue.get_nowait_batch(self._queue.qsize())
            except Empty:
                continue
            except Exception:  # noqa: BLE001 - the queue's actor went away: stop
                return
            for payload in batches:
                with contextlib.suppress(Exception):
                    self._deliver(payload)

    def stop(self) -> None:
        """Take what is queued, stop the thread and the queue's actor."""
        self._stopping.set()
        self._thread.join(30)
        with contextlib.suppress(Exception):
            self._queue.shutdown(force=True)


