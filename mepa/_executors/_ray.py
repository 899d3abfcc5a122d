"""Tasks on Ray: a local Ray started on loopback, or an existing Ray cluster.

::

    host (Ray driver)                                   Ray actor, one per mepa worker
    ─────────────────                                   ──────────────────────────────
    submit(fn, *args)
      big arrays, scatter()ed data ─▶ ray.put ─▶ object store ─┐
      actor.run.remote(fn, args with slots, *object refs) ─────┴─▶ slots filled (zero copy)
                                                               run_task(fn) → ("ok", value)
                                                               or ("error", exc, traceback)
      ObjectRef.future() ─▶ BridgeFuture ◀──────────────────────── value via object store
      ctx.fire ─────────────────────────────────────────────── batch ─▶ ray.util.queue.Queue
      poller thread: Queue.get ─▶ hub.deliver_bytes ─▶ dispatcher ─▶ callbacks, progress
      future completes after the task's events are dispatched

Each mepa worker is a Ray actor (one CPU, one process): a task pinned to a worker
(``submit_to``, ``distribute``) runs in that actor, others go to the actor with the fewest
tasks in flight. A worker that dies (``os._exit``, a signal, the out-of-memory killer) fails
its tasks with :class:`~mepa.WorkerCrashedError` and is replaced on the next call.

Ray is optional (``pip install 'mepa[ray]'``) and imported only when an executor is made.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np

from .._errors import COMMON_ERRORS, ClusterSpecError, ErrorMap, ErrorRule, TaskPlace
from .._errors import WorkerCrashedError as _Crash
from .._events import Channel, EventHub, Transport
from .._tree import tree_map
from .._worker import Worker, make_workers, physical_cores
from ._base import Executor
from ._engine import Capabilities
from ._futures import BridgeFuture, Task

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


def _loopback_env() -> None:
    """Make a Ray started from this process use 127.0.0.1 only (read when Ray is imported).

    Ray otherwise replaces a loopback ``_node_ip_address`` with the machine's routable
    address and binds its servers there.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_raylet_start_wait_time_s", _STARTUP_WAIT_S)


def start_local_ray(
    n_cpus: int, temp_dir: str, object_store_memory: int | None = None
) -> str:
    """Start Ray in this process on 127.0.0.1, everything it writes under ``temp_dir``.

    No dashboard, no usage reporting, logs kept in the session directory. Returns the
    address other processes (or :class:`RayExecutor`) connect to.
    """
    _loopback_env()
    ray = _import_ray()
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
    *Workers.* Each worker is an actor with one CPU; tasks pinned to a worker
    (:meth:`submit_to`, :meth:`distribute`) run in its actor, one at a time. Unpinned tasks
    go to the worker with the fewest tasks in flight.

    *Data.* Arrays of at least :data:`PUT_BYTES`, and what :meth:`scatter` returns, travel
    through Ray's object store, once, and reach the task without a copy. Results come back
    the same way, so arrays that :meth:`gather` returns are **read-only** views of the object
    store (``capabilities.writable_results`` is false): copy one to change it.

    *Events.* Workers put batches of events on a :class:`ray.util.queue.Queue`; a thread of
    the executor takes them off and hands them to the dispatcher.

    *Crashes.* A worker process that dies fails the tasks it was running (and those queued
    on it) with :class:`~mepa.WorkerCrashedError`; the next task gets a fresh actor.

    Examples
    --------
    >>> with RayExecutor(n_workers=2) as executor:  # doctest: +SKIP
    ...     executor.submit_and_gather(pow, 2, 10)
    1024
    """

    capabilities = Capabilities(
        pins_tasks=True, scatters=True, writable_results=False, cancels_queued=False
    )
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
            _loopback_env()
            ray = _import_ray()
            self._temp_dir = tempfile.mkdtemp(prefix="mepa-ray-")
            try:
                start_local_ray(len(workers), self._temp_dir, object_store_memory)
            except BaseException:
                self._release_ray()
                raise
            self._owns_ray = True
        else:
            assert ray is not None
            if object_store_memory is not None:
                raise TypeError(
                    "object_store_memory only sizes a local Ray (address=None), got "
                    f"address={address!r}; size the cluster's object store where it starts"
                )
            if ray.is_initialized():
                connected = _gcs_address(ray)
                if connected != address:
                    raise ClusterSpecError(
                        f"this process is connected to the Ray cluster at {connected}, got "
                        f"address={address!r}; a process talks to one Ray cluster at a time"
                    )
            else:
                ray.init(address=address, configure_logging=False, log_to_driver=False)
                self._owns_ray = True
            try:
                cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
                workers = make_workers("ray", n_workers, cpus)
            except BaseException:
                self._release_ray()
                raise
        super().__init__(workers)
        self._ray = ray
        self._actor_lock = threading.Lock()
        self._actors: list[Any] = [None] * len(workers)
        self._in_flight = [0] * len(workers)
        self._poller: _QueuePoller | None = None

    # ------------------------------------------------------------------ workers

    def _actor(self, index: int) -> Any:
        """Worker ``index``'s actor, started on first use and after a crash."""
        with self._actor_lock:
            actor = self._actors[index]
            if actor is None:
                remote = self._ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)
                actor = remote(_Runner).remote()
                self._actors[index] = actor
            return actor

    def _choose(self, worker: Worker | None) -> int:
        with self._actor_lock:
            if worker is not None:
                index = self._workers.index(worker)
            else:
                index = min(range(len(self._in_flight)), key=self._in_flight.__getitem__)
            self._in_flight[index] += 1
            return index

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

    def _prepare_call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], task: Task
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        fn, args, kwargs = super()._prepare_call(fn, args, kwargs, task)
        index = self._choose(task.worker)
        task.data = index  # the worker the task runs on, until it finished
        return _OnWorker(index, fn), args, kwargs

    def _engine_submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        worker: Worker | None,
    ) -> concurrent.futures.Future[Any]:
        ray = self._ray
        if isinstance(fn, _OnWorker):
            index, fn = fn.index, fn.fn
        else:  # not prepared by this executor: count it here
            index = self._choose(worker)
        refs: list[Any] = []

        def to_slot(leaf: Any) -> Any:
            if isinstance(leaf, ray.ObjectRef):
                refs.append(leaf)
                return _Slot(len(refs) - 1)
            if type(leaf) is np.ndarray and leaf.nbytes >= PUT_BYTES and not leaf.dtype.hasobject:
                refs.append(ray.put(leaf))
                return _Slot(len(refs) - 1)
            return leaf

        call_args = tree_map(to_slot, args)
        call_kwargs = tree_map(to_slot, kwargs)
        ref = self._actor(index).run.remote(fn, call_args, call_kwargs, *refs)
        bridge = _RayBridge(lambda: ray.cancel(ref))
        ref.future().add_done_callback(bridge.complete)
        return bridge

    def _task_finished(self, task: Task) -> None:
        if isinstance(task.data, int):
            self._done_with(task.data)

    def _done_with(self, index: int) -> None:
        with self._actor_lock:
            self._in_flight[index] -= 1

    def _translate_error(self, exc: BaseException, task: Task) -> BaseException:
        error = super()._translate_error(exc, task)
        if error is not exc and isinstance(error, _Crash) and isinstance(task.data, int):
            with self._actor_lock:
                dead, self._actors[task.data] = self._actors[task.data], None
            if dead is not None:
                with contextlib.suppress(Exception):
                    self._ray.kill(dead)
        return error

    def _engine_shutdown(self, wait: bool) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.stop()
        with self._actor_lock:
            actors, self._actors = self._actors, [None] * len(self._actors)
        for actor in actors:
            if actor is not None:
                with contextlib.suppress(Exception):
                    self._ray.kill(actor)
        self._release_ray()

    def _release_ray(self) -> None:
        """Disconnect (and stop a local Ray) if the executor connected; remove its files."""
        if self._owns_ray:
            self._owns_ray = False
            with contextlib.suppress(Exception):
                _import_ray().shutdown()
        temp_dir, self._temp_dir = self._temp_dir, None
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)

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


# ---------------------------------------------------------------------- on the host


class _OnWorker:
    """A prepared call and the worker chosen for it, from ``_prepare_call`` to the engine."""

    __slots__ = ("fn", "index")

    def __init__(self, index: int, fn: Callable[..., Any]) -> None:
        self.index = index
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


class _RayBridge(BridgeFuture):
    """The stdlib future of one actor call."""

    def complete(self, outcome: concurrent.futures.Future[Any]) -> None:
        """Move the actor call's outcome here (in Ray's callback thread)."""
        try:
            reply = outcome.result()
        except concurrent.futures.CancelledError:
            self.remote_cancelled()
            return
        except Exception as exc:  # noqa: BLE001 - a dead actor, a lost object: the task fails
            if type(exc).__name__ == "TaskCancelledError":
                self.remote_cancelled()
            else:
                self.reject(exc)
            return
        if reply[0] == "ok":
            self.resolve(reply[1])
        else:
            self.reject(reply[1], reply[2])


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


