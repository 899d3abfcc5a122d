"""Tasks on a Dask cluster: an existing scheduler, a client, or an embedded ``LocalCluster``.

::

    host                                  scheduler                      Dask worker
    ────                                  ─────────                      ───────────
    submit(fn, *args)
      user's modules by value ─┐
      futures ─▶ Slot(i)       ├─▶ payload bytes
      big arrays ─▶ scatter ───┘
      client.submit(run_shipped, payload, *dask_futures,
                    workers=[address], allow_other_workers=True)  (when pinned)
                                          unpickles run_shipped + bytes
                                                                     run_shipped → run_task(fn)
                                                                     ctx.fire ─▶ BatchSender
                                          ◀── worker.log_event(topic, batch bytes)
      client.subscribe_topic(topic) ◀──────── event
        └─ hub.deliver_bytes ─▶ dispatcher thread ─▶ callbacks, progress bars
      Dask future done ─▶ stdlib future (after the task's events are dispatched)

The Dask side of mepa is a thin adapter: the base :class:`~mepa.Executor` does ``map``
batching, ``distribute``, ``gather``, events and progress; this module turns a call into a Dask
task, a Dask future into a :class:`concurrent.futures.Future`, and worker events into
``log_event`` messages. Code shipping lives in :mod:`mepa._dask_shipping`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import queue
import re
import secrets
import socket
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

import distributed
import numpy as np

from .._dask_shipping import (
    LocalModules,
    Slot,
    TaskExit,
    dumps_shipped,
    main_script,
    run_shipped,
)
from .._errors import (
    COMMON_ERRORS,
    BrokenExecutor,
    ClusterSpecError,
    SerializationError,
    WorkerCrashedError,
    WorkerSpecError,
)
from .._events import Channel, EventHub, Transport
from .._threads import thread_env
from .._tree import tree_map
from .._worker import Worker, physical_cores
from ._base import Executor, check_not_exiting
from ._engine import Capabilities
from ._futures import RemoteTraceback, Task, TaskFuture, add_task_note, attach_remote_traceback

if TYPE_CHECKING:
    from distributed.deploy.cluster import Cluster
    from distributed.security import Security

__all__ = ["DaskChannel", "DaskExecutor", "RemoteTraceback"]

R = TypeVar("R")

logger = logging.getLogger("mepa.dask")

SCATTER_BYTES = 1 << 20
"""Arrays (and distribute chunks) at least this big are scattered to the cluster instead of
travelling inside the task through the scheduler."""

RELAUNCHES = 3
"""How often a task whose scattered input died with its worker is launched again."""

_CLIENT: Any = distributed.Client  # distributed's annotations are partial

_PROTOCOL = re.compile(r"^[a-z][a-z0-9+.-]*://")


class DaskExecutor(Executor):
    """Runs tasks on the workers of a Dask cluster.

    Parameters
    ----------
    address
        ``"tcp://host:port"`` or ``"tls://host:port"`` of a running scheduler; an existing
        :class:`distributed.Client` (left open by :meth:`shutdown`); a cluster object
        (``LocalCluster``, ``SpecCluster``, dask-jobqueue's ``SLURMCluster``, ..., left
        running by :meth:`shutdown`); or ``None`` to start an
        embedded :class:`distributed.LocalCluster` of worker processes on 127.0.0.1, without
        dashboard, owned and closed by the executor.
    n_workers, threads_per_worker
        Size of the embedded cluster (default: one single-thread worker per physical core).
        Only with ``address=None``. Its workers get one OpenMP, BLAS, numexpr and numba thread
        per worker thread (``NUMBA_NUM_THREADS=1`` and the like, see
        :class:`~mepa.ProcessExecutor`'s ``inner_threads``); for workers started by hand, set
        them in ``distributed.nanny.pre-spawn-environ``.
    security
        A :class:`distributed.security.Security` for TLS, e.g. ``Security.temporary()`` for an
        embedded cluster, or one built from certificate files for a ``tls://`` scheduler.
    upload_modules
        Ship the user's own modules with every task (see Notes). ``False`` sends tasks with
        plain cloudpickle: functions must then be importable on the scheduler and workers.
    extra_paths
        More directories whose modules are shipped, besides the working directory.
    excludes
        Module names never shipped (a name covers its submodules), e.g. a package that is
        installed on the cluster but imported from a checkout on the host.
    timeout
        Seconds to wait for the connection and for a first worker.
    wait_for_workers
        Workers to wait for (up to ``timeout`` seconds) before the constructor returns, e.g.
        the node count of queued batch jobs. ``0`` starts at once, also on an adaptive cluster
        that has no worker yet: tasks then wait for the cluster to scale up.
    strict_pinning
        ``False`` (default): a pinned task (:meth:`submit_to`, :meth:`distribute`) prefers its
        worker, and Dask may run it elsewhere (a busy worker's queue is stolen from; a worker
        that left is replaced). ``True``: it runs on its worker only, and fails with
        :class:`~mepa.WorkerCrashedError` if that worker leaves first.
    no_worker_timeout
        Seconds the cluster may have no worker at all while tasks are pending; then those
        tasks fail with :class:`~mepa.BrokenExecutor` saying that no worker is left. Raise it
        for job queues that take long to replace workers.

    Notes
    -----
    *Workers.* The executor's workers are the cluster's, read again by :meth:`arrange` when
    the scheduler reported workers joining or leaving, in a stable order, each weighted by its
    number of threads: a 4-thread worker gets twice the rows of a 2-thread one. A worker named
    with an integer ``n`` (``LocalCluster``) becomes ``dask-n``; a name like ``gpu-3`` is
    kept; a worker named by its address becomes ``{host}-{k}``, numbered per host. Pinned tasks
    (:meth:`submit_to`, :meth:`distribute`) ask for their worker with
    ``allow_other_workers=True``, so a task never hangs on a worker that left.

    *Failures.* A task whose scattered input died with its worker is launched again with the
    host's copy (up to :data:`RELAUNCHES` times), then fails with
    :class:`~mepa.WorkerCrashedError`; pending tasks fail with :class:`~mepa.BrokenExecutor`
    at once when the scheduler is lost, and after ``no_worker_timeout`` seconds without any
    worker. ``sys.exit()`` in a task sets :class:`SystemExit` on its future. Results are fetched
    by the executor's own threads, in parallel, never on Dask's callback thread.

    *Code shipping.* Modules imported from the working directory or ``extra_paths`` (never the
    standard library, ``site-packages``, a virtual environment or mepa) are pickled by value
    into every task, which Dask sees as a mepa function and a ``bytes`` payload. The scheduler
    thus needs only mepa, workers that join later get the code with their first task, and edits
    between runs are picked up. Limits: classes sent by value are rebuilt on the worker (results
    come back as the host's class, but ``isinstance`` on the worker against a class imported
    there differently is false); module-level state is sent as it was at submit time and a
    task's changes to it stay on its worker; extension modules of the project cannot be
    shipped; futures nested inside arbitrary objects (not lists, tuples or dicts) are not
    resolved by Dask. Arguments travel through the scheduler inside the payload: NumPy arrays
    of at least :data:`SCATTER_BYTES` are scattered automatically, other big data should go
    through :meth:`scatter`.

    *Events.* Workers send batches of events with ``Worker.log_event`` on a topic of their own;
    the executor subscribes with ``Client.subscribe_topic`` and hands each batch to the hub's
    dispatcher thread (callbacks never run on the client's event loop). Every event a task fired
    before it returned is dispatched before its future completes. The scheduler keeps the last
    batches of each topic (``distributed.admin.low-level-log-length``), so fire small messages.

    *Memory.* Workers do not share the host's memory: :meth:`shares_memory` is ``False`` and
    :meth:`create_shared_array` raises; return results from tasks instead.

    Examples
    --------
    >>> with DaskExecutor("tcp://127.0.0.1:8786") as executor:  # doctest: +SKIP
    ...     executor.submit_and_gather(pow, 2, 10)
    1024
    """

    capabilities = Capabilities(pins_tasks=True, scatters=True)

    def __init__(
        self,
        address: str | distributed.Client | Cluster | None = None,
        *,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        security: Security | None = None,
        upload_modules: bool = True,
        extra_paths: Iterable[str | os.PathLike[str]] = (),
        excludes: Iterable[str] = (),
        timeout: float = 30.0,
        wait_for_workers: int = 1,
        no_worker_timeout: float = 60.0,
        strict_pinning: bool = False,
    ) -> None:
        self._cluster: distributed.LocalCluster | None = None
        self._owns_client = True
        client: Any  # distributed's annotations are partial: keep the client loose
        if isinstance(address, distributed.Client):
            if security is not None or n_workers is not None or threads_per_worker is not None:
                raise TypeError(
                    "security, n_workers and threads_per_worker do not apply to an existing "
                    "Client; configure the Client (or the cluster) itself"
                )
            client = address
            self._owns_client = False
        elif isinstance(address, str):
            if n_workers is not None or threads_per_worker is not None:
                raise TypeError(
                    "n_workers and threads_per_worker only size the embedded cluster "
                    f"(address=None), got address={address!r}; size a running cluster with "
                    "its own dask worker commands"
                )
            if not address:
                raise ValueError(
                    "address must be 'tcp://host:port' or 'tls://host:port', got ''; "
                    "pass None to start an embedded cluster"
                )
            if address.startswith("tls://") and security is None:
                raise ClusterSpecError(
                    f"address {address!r} asks for TLS but security is None; pass "
                    "security=distributed.security.Security(tls_ca_file=..., "
                    "tls_client_cert=..., tls_client_key=..., require_encryption=True) with "
                    "the certificates the scheduler trusts"
                )
            client = _CLIENT(address, security=security, timeout=timeout, set_as_default=False)
        elif _is_cluster(address):
            if n_workers is not None or threads_per_worker is not None:
                raise TypeError(
                    "n_workers and threads_per_worker only size the embedded cluster "
                    f"(address=None), got a {type(address).__name__}; size or scale the "
                    "cluster object itself (cluster.scale(n) or cluster.adapt(...))"
                )
            client = _CLIENT(address, security=security, timeout=timeout, set_as_default=False)
        elif address is None:
            check_not_exiting()  # never start a cluster while the interpreter exits
            self._cluster = _start_local_cluster(n_workers, threads_per_worker, security)
            try:
                client = _CLIENT(
                    self._cluster, security=security, timeout=timeout, set_as_default=False
                )
            except BaseException:
                self._cluster.close()
                raise
        else:
            raise TypeError(
                "address must be a scheduler address such as 'tcp://host:port', a "
                "distributed.Client, a cluster object (LocalCluster, SpecCluster, "
                f"dask-jobqueue's SLURMCluster, ...) or None, got {type(address).__name__}: "
                f"{address!r}"
            )
        self._client: Any = client
        try:
            if isinstance(wait_for_workers, bool) or not isinstance(wait_for_workers, int) \
                    or wait_for_workers < 0:
                raise WorkerSpecError(
                    f"wait_for_workers must be an int >= 0, got {wait_for_workers!r}; pass 0 "
                    "to start without waiting (an adaptive cluster with minimum 0)"
                )
            info = self._client.scheduler_info(n_workers=-1)
            if len(info.get("workers", {})) < wait_for_workers:
                try:
                    self._client.wait_for_workers(wait_for_workers, timeout=timeout)
                except TimeoutError as exc:
                    have = len(self._client.scheduler_info(n_workers=-1).get("workers", {}))
                    raise TimeoutError(
                        f"waited {timeout:g} s (timeout) for {wait_for_workers} Dask workers "
                        f"(wait_for_workers), {have} joined the scheduler at "
                        f"{self._client.scheduler.address}; start more workers, raise timeout, "
                        "or pass wait_for_workers=0 to start with the workers there are"
                    ) from exc
            self._scheduler_address = str(self._client.scheduler.address)
            workers, self._addresses, self._hosts = _read_workers(
                self._client, allow_none=wait_for_workers == 0
            )
            super().__init__(workers)
        except BaseException:
            self._close_owned()
            raise
        try:
            _check_mepa_on_workers(self._client)
        except BaseException:
            self._close_owned()
            raise
        self._modules = LocalModules(extra_paths, excludes) if upload_modules else None
        self._dask_futures: weakref.WeakKeyDictionary[TaskFuture[Any], Any] = (
            weakref.WeakKeyDictionary()
        )
        self._dask_lock = threading.Lock()
        self._topics: list[str] = []
        self._rejected = 0
        self._no_worker_timeout = _positive("no_worker_timeout", no_worker_timeout)
        self._strict = bool(strict_pinning)
        self._live: set[str] = set(self._addresses.values()) - {_PENDING_WORKER}
        self._changed = False
        self._running: set[_DaskTask] = set()
        self._broken: BaseException | None = None
        self._fetcher = _Fetcher(max_threads=max(4, min(16, 2 * len(self._workers))))
        self._stopping = threading.Event()
        self._client.subscribe_topic("all", self._on_cluster_event)
        self._monitor = threading.Thread(
            target=self._watch, name="mepa-dask-monitor", daemon=True
        )
        self._monitor.start()

    # ------------------------------------------------------------------ cluster

    @property
    def client(self) -> distributed.Client:
        """The :class:`distributed.Client` tasks go through."""
        return cast("distributed.Client", self._client)

    @property
    def cluster(self) -> distributed.LocalCluster | None:
        """The embedded cluster the executor owns, or ``None`` when connected to another."""
        return self._cluster

    def worker_address(self, worker: Worker | str) -> str:
        """The Dask address of one of this executor's workers (a :class:`Worker` or its name)."""
        return self._addresses[self._resolve_worker(worker).name]

    def refresh_workers(self) -> tuple[Worker, ...]:
        """Read the cluster's workers again (after workers joined or left).

        Allocations arranged before no longer match if the workers changed; arrange again.
        Sub-executors made earlier keep their workers.

        Returns
        -------
        tuple of Worker
            The new :attr:`workers`.
        """
        self._check_open()
        self._changed = False
        workers, addresses, hosts = _read_workers(self._client)
        with self._lock:
            self._workers = workers
            self._addresses = addresses
            self._hosts = hosts
            self._live.update(addresses.values())
        return workers

    def _follow_cluster(self) -> None:
        """Read the workers again if the scheduler reported some joining or leaving."""
        if self._changed or _PENDING_WORKER in self._addresses:
            with contextlib.suppress(WorkerSpecError):  # none yet: keep what there is
                self.refresh_workers()

    def arrange(self, data: Any, shuffle: Any = False, *, block_rows: int | None = None) -> Any:
        """Split ``data`` over the cluster's workers of now, by threads (see :func:`mepa.arrange`).

        Workers that joined or left since the last call are taken into account first.
        """
        self._follow_cluster()
        return super().arrange(data, shuffle, block_rows=block_rows)

    def arrange_many(
        self, *arrays: Any, shuffle: Any = False, block_rows: int | None = None
    ) -> Any:
        """Split several equal-length arrays the same way, over the cluster's workers of now."""
        self._follow_cluster()
        return super().arrange_many(*arrays, shuffle=shuffle, block_rows=block_rows)

    def is_local(self) -> bool:
        """Whether every worker runs on this machine (judged by the workers' host addresses)."""
        local = _local_hosts()
        return all(_is_local_host(host, local) for host in self._hosts.values())

    def create_shared_array(self, shape: int | tuple[int, ...], dtype: Any = float) -> Any:
        """Not available on Dask: workers do not share the host's memory.

        Raises
        ------
        NotImplementedError
            Always; return results from tasks and put them together with
            ``alloc.reassemble(executor.gather(futures))`` instead.
        """
        raise NotImplementedError(
            "DaskExecutor has no memory shared with its workers (shares_memory() is False), "
            "so tasks cannot write into a host array; return the results from the tasks and "
            "combine them with alloc.reassemble(executor.gather(futures))"
        )

    def scatter(self, data: R) -> R:
        """Place ``data`` on the cluster once; pass the result to tasks in its place.

        Returns
        -------
        distributed.Future
            Typed as ``data``: a task given it (also inside lists, tuples and dicts) receives
            the data, resolved on the worker, without it passing through the host again.
        """
        self._check_open()
        future = self._client.scatter([data], hash=False)[0]
        return cast("R", future)

    # ------------------------------------------------------------------ engine

    def _submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        worker: Worker | None, chunk: int | None, hint: Any = None,
    ) -> TaskFuture[Any]:
        # A future of this executor stands for its result: give Dask its own future, so the
        # value is resolved on the worker and never travels back through the host.
        if self._dask_futures:
            args = tree_map(self._as_dask_future, args)
            kwargs = tree_map(self._as_dask_future, kwargs)
        return super()._submit(fn, args, kwargs, worker, chunk, hint)

    def _as_dask_future(self, leaf: Any) -> Any:
        if isinstance(leaf, TaskFuture):
            with self._dask_lock:
                task = self._dask_futures.get(leaf)
            return leaf if task is None else task.dask_future
        return leaf

    def _prepare_call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], task: Task
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        # Packing happens in _engine_submit, where a failure fails the future.
        future = None if task.future is None else task.future()
        return run_shipped, (_Call(fn, args, kwargs, future),), {}

    def _engine_submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        worker: Worker | None,
    ) -> concurrent.futures.Future[Any]:
        if len(args) == 1 and not kwargs and isinstance(args[0], _Call):
            call = args[0]
        else:
            call = _Call(fn, args, kwargs, None)
        sources: list[Any] = []

        def to_slot(leaf: Any) -> Any:
            if isinstance(leaf, TaskFuture):
                leaf = self._as_dask_future(leaf)
            if isinstance(leaf, distributed.Future) or (
                isinstance(leaf, np.ndarray) and leaf.nbytes >= SCATTER_BYTES
            ):
                sources.append(leaf)
                return Slot(len(sources) - 1)
            return leaf

        task_args = tree_map(to_slot, call.args)
        task_kwargs = tree_map(to_slot, call.kwargs)
        names = self._modules.names() if self._modules is not None else ()
        try:
            payload = dumps_shipped((call.fn, task_args, task_kwargs), names)
        except Exception as exc:
            error = SerializationError(
                f"the task {_funcname(call.fn)} or its arguments could not be pickled: {exc}; "
                "make sure functions and arguments are picklable (cloudpickle handles lambdas "
                "and closures; open files, locks, sockets and clients are not)"
            )
            raise error from exc
        address = None if worker is None else self._addresses.get(worker.name)
        task = _DaskTask(self, _funcname(call.fn), payload, sources, address)
        task.launch()
        if call.future is not None:
            with self._dask_lock:
                self._dask_futures[call.future] = task
        return task

    def _scatter_to(self, values: list[Any], address: str | None) -> list[Any]:
        """Scatter ``values`` to ``address`` (anywhere if it is ``None`` or has left)."""
        if address is not None and address in self._live:
            try:
                return list(self._client.scatter(values, workers=[address], hash=False))
            except (KeyError, ValueError):  # the worker left since the list was read
                self._live.discard(address)
        return list(self._client.scatter(values, hash=False))

    def _pin(self, address: str | None) -> dict[str, Any]:
        if address is None or address == _PENDING_WORKER:
            return {}
        if self._strict:
            if address not in self._live:
                raise _PinnedWorkerLeft(address)
            return {"workers": [address], "allow_other_workers": False}
        if address not in self._live:
            return {}
        return {"workers": [address], "allow_other_workers": True}

    def _on_cluster_event(self, event: tuple[float, Any]) -> None:
        # On the client's loop: the scheduler's "all" topic (anyone may write to it, so it
        # only steers where data is pinned; failures are decided on the scheduler's word).
        msg = event[1]
        if not isinstance(msg, dict) or not isinstance(msg.get("worker"), str):
            return
        if msg.get("action") == "add-worker":
            self._live.add(msg["worker"])
            self._changed = True
        elif msg.get("action") == "remove-worker":
            self._live.discard(msg["worker"])
            self._changed = True

    def _watch(self) -> None:
        """Fail pending tasks when the scheduler is gone, or no worker is left for too long."""
        empty_since: float | None = None
        while not self._stopping.wait(0.2):
            status = self._client.status
            if status != "running":
                if not self._stopping.is_set() and status in ("connecting", "closed", "failed"):
                    self._break(BrokenExecutor(
                        f"lost the connection to the Dask scheduler at "
                        f"{self._scheduler_address} (the client is {status!r}): the scheduler "
                        "stopped or the network failed, and the tasks not finished are lost; "
                        "start the scheduler again and make a new DaskExecutor"
                    ))
                return
            if self._strict:
                for task in list(self._running):
                    if task.address is not None and task.address != _PENDING_WORKER \
                            and task.address not in self._live:
                        task.fail(_PinnedWorkerLeft(task.address))
            if not self._running or self._live:
                empty_since = None
                continue
            now = time.monotonic()
            if empty_since is None:
                empty_since = now
            elif now - empty_since >= self._no_worker_timeout:
                empty_since = None
                with contextlib.suppress(Exception):
                    if self._client.scheduler_info(n_workers=-1).get("workers"):
                        continue  # the scheduler has workers: the events were wrong
                    self._fail_running(BrokenExecutor(
                        f"no Dask worker left on the scheduler at {self._scheduler_address} "
                        f"for {self._no_worker_timeout:g} s (no_worker_timeout); start workers "
                        f"with 'dask worker {self._scheduler_address}' and submit again"
                    ))

    def _break(self, exc: BaseException) -> None:
        self._broken = exc
        self._fail_running(exc)

    def _fail_running(self, exc: BaseException) -> None:
        for task in list(self._running):
            task.fail(exc)

    def _is_executing(self, key: str) -> bool:
        """Whether a worker runs the task ``key`` now (asks the scheduler, then that worker)."""
        try:
            processing = self._client.processing()
            where = [address for address, keys in processing.items() if key in keys]
            if not where:
                return False
            answers = self._client.run(_is_executing, key, workers=where, nanny=False)
        except Exception:  # noqa: BLE001 - cannot tell: the task may run, say so
            return True
        return any(answers.values())

    def _engine_shutdown(self, wait: bool) -> None:
        self._stopping.set()
        self._fetcher.stop()
        with contextlib.suppress(Exception):
            self._client.unsubscribe_topic("all")
        topics, self._topics = self._topics, []
        for topic in topics:
            with contextlib.suppress(Exception):
                self._client.unsubscribe_topic(topic)
        self._close_owned()

    def _close_owned(self) -> None:
        """Close the Client and the cluster the executor created; never anyone else's."""
        if self._owns_client:
            with contextlib.suppress(Exception):
                self._client.close()
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()

    def _translate_error(self, exc: BaseException, future: Task) -> BaseException:
        from distributed.scheduler import KilledWorker

        if isinstance(exc, KilledWorker):
            crash = WorkerCrashedError(
                f"a Dask worker died while running the task on {future.describe()} ({exc}); "
                "the scheduler stops retrying a task after "
                "'distributed.scheduler.allowed-failures' worker deaths. Look for memory "
                "limits or crashes in the worker logs.",
                chunk=future.chunk,
            )
            crash.__cause__ = exc
            return crash
        if isinstance(exc, _InputLost):
            where = "a worker that left" if exc.address is None else f"worker {exc.address}"
            crash = WorkerCrashedError(
                f"the data of the task on {future.describe()} was lost {exc.attempts} times: "
                f"it was scattered to {where}, which died before the task read it; the task "
                "was launched again with the host's copy each time. Look for memory limits or "
                "crashes in the worker logs.",
                chunk=future.chunk,
            )
            return crash
        if isinstance(exc, _PinnedWorkerLeft):
            return WorkerCrashedError(
                f"the task on {future.describe()} was pinned to Dask worker {exc.address} "
                "(strict_pinning=True), which left the cluster before the task finished; "
                "arrange again to use the workers there are now, or pass strict_pinning=False "
                "to let other workers take over",
                chunk=future.chunk,
            )
        if isinstance(exc, TaskExit):
            out = SystemExit(exc.code)
            out.__dict__.update(exc.__dict__)
            return out
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            hint = self._missing_module_hint(exc.name)
            if hint:
                add_task_note(exc, hint)
            return exc
        return COMMON_ERRORS.translate(exc, future)

    def _missing_module_hint(self, name: str) -> str:
        """What to do about a module the host imported but a worker cannot (or ``""``)."""
        top = name.split(".")[0]
        module = sys.modules.get(name) or sys.modules.get(top)
        file = getattr(module, "__file__", None)
        if module is None or not file:
            return ""
        if not str(file).endswith(".py") or _has_extension(module):
            return (
                f"the host imports {name!r} from {file}, which is (or contains) a compiled "
                "extension module: extensions cannot be shipped with the task, so install "
                f"the package on every Dask worker (and the scheduler), e.g. 'pip install "
                f"{top}' in their environment"
            )
        return (
            f"the host imports {name!r} from {file}, which is not shipped (only modules under "
            "the working directory, the script's directory and extra_paths are): pass "
            "extra_paths=[its directory], or install it on every Dask worker"
        )

    # ------------------------------------------------------------------ events

    @property
    def rejected_events(self) -> int:
        """Messages on the executor's event topics dropped unread: not signed by its tasks.

        Any client of the scheduler can write to any topic; a message whose signature does not
        match the executor's secret is never unpickled (see Notes of :class:`DaskExecutor`).
        """
        return self._rejected

    def _event_channel(self, hub: EventHub) -> DaskChannel:
        channel = DaskChannel(hub.hub_id, f"mepa-events-{hub.hub_id}", secrets.token_bytes(32))
        deliver = hub.deliver_bytes

        def on_event(event: tuple[float, Any]) -> None:
            # Runs on the client's event loop: only check, decode and queue for the dispatcher.
            payload = channel.open(event[1])
            if payload is None:
                self._reject(channel.topic)
                return
            try:
                deliver(payload)
            except Exception:
                logger.exception("bad event batch on %s", channel.topic)

        self._client.subscribe_topic(channel.topic, on_event)
        self._topics.append(channel.topic)
        return channel

    def _reject(self, topic: str) -> None:
        self._rejected += 1  # only the client's event loop counts
        log = logger.warning if self._rejected == 1 else logger.debug
        log(
            "dropped a message on %s that no task of this executor signed (%d so far): another "
            "client of the scheduler is writing to the executor's event topic",
            topic, self._rejected,
        )

    def __repr__(self) -> str:
        state = "shut down" if self._is_shutdown else "running"
        where = "embedded cluster at " if self._cluster is not None else ""
        return (
            f"<DaskExecutor {state}, {len(self._workers)} workers, "
            f"{where}{self._scheduler_address}>"
        )


# ---------------------------------------------------------------------- calls and futures


class _Call:
    """A task on its way from ``_prepare_call`` to ``_engine_submit``."""

    __slots__ = ("args", "fn", "future", "kwargs")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        future: TaskFuture[Any] | None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.future = future


class _DaskTask(concurrent.futures.Future[Any]):
    """The stdlib future of one task on Dask, across its attempts.

    An attempt is one Dask future. Host arrays of the task are kept until it ends: when a
    worker holding a scattered input dies, Dask cancels the task (the data cannot be
    recomputed), and the task is launched again with the arrays scattered anew, up to
    :data:`RELAUNCHES` times. Results are fetched by the executor's fetch threads, never on
    Dask's callback thread.
    """

    def __init__(
        self, executor: DaskExecutor, name: str, payload: bytes, sources: list[Any],
        address: str | None,
    ) -> None:
        super().__init__()
        self._executor = executor
        self.name = name
        self.payload = payload
        self.sources: list[Any] | None = sources
        self.address = address
        self.attempts = 0
        self.dask_future: Any = None
        self._values: list[Any] = []
        self._user_cancelled = False

    def launch(self) -> None:
        """Start an attempt: scatter the host arrays, submit the payload."""
        ex = self._executor
        sources = self.sources or []
        values = list(sources)
        host = [i for i, v in enumerate(sources) if isinstance(v, np.ndarray)]
        if host:
            placed = ex._scatter_to([sources[i] for i in host], self.address)
            for i, future in zip(host, placed, strict=True):
                values[i] = future
        self.attempts += 1
        dask_future = ex._client.submit(
            run_shipped, self.payload, *values,
            key=f"{self.name}-{uuid.uuid4().hex}", pure=False, **ex._pin(self.address),
        )
        self._values = values
        self.dask_future = dask_future
        ex._running.add(self)
        dask_future.add_done_callback(self._on_dask_done)

    def _on_dask_done(self, dask_future: Any) -> None:
        # Dask's callback thread: hand over, never fetch here.
        if dask_future is self.dask_future:
            self._executor._fetcher.put(self)

    def complete(self) -> None:
        """Move the finished attempt's outcome here, or start another (on a fetch thread)."""
        if self.done():
            return
        ex = self._executor
        dask_future = self.dask_future
        try:
            status = dask_future.status
            if status == "finished":
                try:
                    value = dask_future.result()
                except concurrent.futures.CancelledError:
                    status = "lost"  # the worker holding the result died before the fetch
                else:
                    self._finish(value=value)
                    return
            if status == "error":
                exc = dask_future.exception()
                attach_remote_traceback(exc, dask_future.traceback())
                self._finish(exc=exc)
                return
        except Exception as exc:  # noqa: BLE001 - lost results, a closed client: the task fails
            self._finish(exc=ex._broken or exc)
            return
        # cancelled or lost: by the user, by shutdown, or because its input's worker died
        if self._user_cancelled or ex._is_shutdown:
            self._finish(cancel=True)
        elif ex._broken is not None:
            self._finish(exc=ex._broken)
        elif self.attempts > RELAUNCHES or self.sources is None:
            self._finish(exc=_InputLost(self.address, self.attempts))
        else:
            logger.info("the data of %s was lost with its worker; launching it again", self.name)
            try:
                self.launch()
            except Exception as exc:  # noqa: BLE001 - no worker to scatter to, a closed client
                self._finish(exc=ex._broken or exc)

    def fail(self, exc: BaseException) -> None:
        """Fail the task from outside (the scheduler or every worker is gone)."""
        self._finish(exc=exc)
        with contextlib.suppress(Exception):
            self.dask_future.cancel()

    def _finish(
        self, *, value: Any = None, exc: BaseException | None = None, cancel: bool = False
    ) -> None:
        self._executor._running.discard(self)
        self.sources = None
        self._values = []
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            if cancel:
                if concurrent.futures.Future.cancel(self):
                    self.set_running_or_notify_cancel()
            elif exc is not None:
                self.set_exception(exc)
            else:
                self.set_result(value)

    def running(self) -> bool:
        """Whether a worker runs the task now (asks the cluster)."""
        if self.done() or self.dask_future is None:
            return False
        return self._executor._is_executing(self.dask_future.key)

    def cancel(self) -> bool:
        """Cancel the task unless a worker runs it (then it runs on: ``False``)."""
        if self.done():
            return self.cancelled()
        if self._executor._is_executing(self.dask_future.key):
            return False
        self._user_cancelled = True
        with contextlib.suppress(Exception):
            self.dask_future.cancel()
        return super().cancel()


class _InputLost(Exception):
    """The worker holding a task's scattered input died, every time the task was launched."""

    def __init__(self, address: str | None, attempts: int) -> None:
        super().__init__(address, attempts)
        self.address = address
        self.attempts = attempts


class _PinnedWorkerLeft(Exception):
    """The worker a strictly pinned task must run on is gone."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.address = address


class _Fetcher:
    """Daemon threads that complete finished tasks (fetch results) in parallel.

    Dask runs done-callbacks on one process-wide thread: a result fetched there blocks every
    other Dask future of the process. The threads are daemons, so a fetch that never ends
    cannot hold up interpreter exit.
    """

    def __init__(self, max_threads: int) -> None:
        self._queue: queue.SimpleQueue[_DaskTask | None] = queue.SimpleQueue()
        self._max = max_threads
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()

    def put(self, task: _DaskTask) -> None:
        with self._lock:
            if self._idle == 0 and len(self._threads) < self._max:
                thread = threading.Thread(
                    target=self._run, name=f"mepa-dask-fetch-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                self._idle += 1
                thread.start()
            self._idle -= 1
        self._queue.put(task)

    def _run(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            try:
                task.complete()
            except BaseException:  # never lose the thread
                logger.exception("completing %s failed", task.name)
            finally:
                with self._lock:
                    self._idle += 1

    def stop(self) -> None:
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(None)


def _is_executing(key: str, dask_worker: Any = None) -> bool:
    """Worker side: whether the task ``key`` is running on this worker."""
    state = dask_worker.state.tasks.get(key) if dask_worker is not None else None
    return state is not None and state.state in ("executing", "long-running")


# ---------------------------------------------------------------------- events on workers


class DaskChannel(Channel):
    """Event channel from Dask workers to a hub: ``Worker.log_event`` on a topic of the hub.

    Every batch is sent signed: an HMAC-SHA256 of the encoded batch under ``secret``, then the
    batch. The secret travels to the workers inside the task payloads (in the pickled
    channel), never on the topic; the host checks the signature before it unpickles anything.

    Parameters
    ----------
    hub_id
        The hub's id.
    topic
        The Dask event topic the executor subscribed to.
    secret
        The key of the signatures, random per hub.
    """

    def __init__(self, hub_id: str, topic: str, secret: bytes) -> None:
        super().__init__(hub_id)
        self.topic = topic
        self.secret = secret

    def seal(self, payload: bytes) -> bytes:
        """The message for ``payload``: its signature, then ``payload``."""
        return hmac.digest(self.secret, payload, hashlib.sha256) + payload

    def open(self, message: object) -> bytes | None:
        """The payload of a sealed ``message``, or ``None`` if it is not one of this channel's.

        Parameters
        ----------
        message
            What arrived on the topic: anything a client of the scheduler logged.
        """
        if not isinstance(message, bytes | bytearray | memoryview):
            return None
        data = bytes(message)
        if len(data) <= _MAC_SIZE:
            return None
        expected = hmac.digest(self.secret, data[_MAC_SIZE:], hashlib.sha256)
        if not hmac.compare_digest(expected, data[:_MAC_SIZE]):
            return None
        return data[_MAC_SIZE:]

    def __repr__(self) -> str:
        return f"DaskChannel(hub_id={self.hub_id!r}, topic={self.topic!r})"

    def sender(self) -> Any:
        # Called at a context's first fire, in the task's thread: note the worker, so a flush
        # from the background flusher thread can still reach it.
        _note_worker()
        return super().sender()

    def connect(self) -> Transport:
        """The process-local transport: this worker's ``log_event``."""
        return _LogEventTransport(self)


_MAC_SIZE = hashlib.sha256().digest_size

_WORKER: weakref.ReferenceType[distributed.Worker] | None = None


def _note_worker() -> None:
    global _WORKER
    with contextlib.suppress(ValueError):
        _WORKER = weakref.ref(distributed.get_worker())


def _current_worker() -> distributed.Worker:
    with contextlib.suppress(ValueError):
        return distributed.get_worker()
    worker = _WORKER() if _WORKER is not None else None
    if worker is None:
        worker = next(iter(distributed.Worker._instances), None)
    if worker is None:
        raise OSError("no Dask worker in this process to send events through")
    return worker


class _LogEventTransport:
    def __init__(self, channel: DaskChannel) -> None:
        self.channel = channel

    def send_bytes(self, payload: bytes) -> None:
        try:
            _current_worker().log_event(self.channel.topic, self.channel.seal(payload))
        except RuntimeError as exc:  # the worker's loop is closing
            raise OSError(str(exc)) from exc

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------- helpers


def _has_extension(module: Any) -> bool:
    """Whether a package directory holds compiled extension modules."""
    paths = getattr(module, "__path__", None) or ()
    suffixes = (".so", ".pyd")
    for path in paths:
        with contextlib.suppress(OSError):
            for _root, _dirs, files in os.walk(path):
                if any(f.endswith(suffixes) for f in files):
                    return True
    return False


def _check_mepa_on_workers(client: Any) -> None:
    """Raise :class:`WorkerSpecError` naming the workers that cannot import mepa."""
    if not client.scheduler_info(n_workers=-1).get("workers"):
        return
    # exec is a builtin: the workers need nothing of mepa's to run the check itself.
    answers = client.run(exec, "import mepa._dask_shipping", on_error="return", nanny=False)
    broken = {address: a for address, a in answers.items() if isinstance(a, BaseException)}
    if broken:
        shown = "; ".join(f"{address}: {type(a).__name__}: {a}" for address, a in broken.items())
        raise WorkerSpecError(
            f"{len(broken)} of {len(answers)} Dask workers cannot import mepa ({shown}); they "
            "would fail every task given to them: install mepa (the host has "
            f"{_mepa_version()}) in the workers' environment, or stop those workers"
        )


def _mepa_version() -> str:
    from .. import __version__

    return f"mepa {__version__}"


def _check_main_can_spawn() -> None:
    """Refuse, in one sentence, to start worker processes that would fail to import __main__."""
    import ast

    main = sys.modules.get("__main__")
    if getattr(main, "__file__", None) is None and sys.argv and sys.argv[0] == "-":
        raise ClusterSpecError(
            "DaskExecutor() cannot start its embedded cluster from a script read from stdin: "
            "its worker processes import the main script again, so save it to a file and run "
            "that, or connect to a running scheduler with DaskExecutor('tcp://host:port')"
        )
    script = main_script()
    if script is None:
        return
    try:
        tree = ast.parse(script.read_bytes())
    except (OSError, SyntaxError, ValueError):
        return
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) \
                and "__name__" in ast.unparse(node.test):
            return
    raise ClusterSpecError(
        f"DaskExecutor() cannot start its embedded cluster from {script.name}, which has no "
        'if __name__ == "__main__": block: its worker processes import the script again and '
        "would start clusters of their own, so put the code that creates the executor under "
        'if __name__ == "__main__":'
    )


def _start_local_cluster(
    n_workers: int | None, threads_per_worker: int | None, security: Security | None
) -> distributed.LocalCluster:
    for name, value in (("n_workers", n_workers), ("threads_per_worker", threads_per_worker)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise WorkerSpecError(
                f"{name} must be a positive int or None, got {value!r}; pass None for the "
                "default (one single-thread worker per physical core)"
            )
    _check_main_can_spawn()
    protocol = "tls://" if security is not None and security.require_encryption else None
    local_cluster: Any = distributed.LocalCluster
    cluster: distributed.LocalCluster = local_cluster(
        n_workers=physical_cores() if n_workers is None else n_workers,
        threads_per_worker=1 if threads_per_worker is None else threads_per_worker,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",  # the scheduler's HTTP routes, on loopback
        scheduler_kwargs={"dashboard": False},
        security=security,
        protocol=protocol,
        silence_logs=logging.ERROR,
        env=thread_env(1),  # one OpenMP/BLAS/numba thread per worker thread, as on processes
    )
    return cluster


_PENDING_WORKER = "pending"
"""Address of the stand-in worker of a cluster that has none yet (wait_for_workers=0)."""


def _is_cluster(obj: object) -> bool:
    """Whether ``obj`` is a Dask cluster object (``distributed.deploy.Cluster`` or alike)."""
    from distributed.deploy.cluster import Cluster

    return isinstance(obj, Cluster) or (
        not isinstance(obj, str) and isinstance(getattr(obj, "scheduler_address", None), str)
        and callable(getattr(obj, "scale", None))
    )


def _read_workers(
    client: Any, *, allow_none: bool = False
) -> tuple[tuple[Worker, ...], dict[str, str], dict[str, str]]:
    """The cluster's workers as mepa workers, their addresses and hosts, by mepa name.

    With ``allow_none`` a cluster without workers gets one stand-in worker, ``dask-any``,
    whose tasks go wherever the scheduler puts them.
    """
    info: Mapping[str, Mapping[str, Any]] = client.scheduler_info(n_workers=-1).get("workers", {})
    if not info and allow_none:
        return (Worker("dask-any"),), {"dask-any": _PENDING_WORKER}, {"dask-any": "localhost"}
    if not info:
        raise WorkerSpecError(
            "the Dask cluster has no workers; start some with "
            "'dask worker <scheduler address>' (or pass address=None for an embedded cluster)"
        )
    rows = []
    for address, w in info.items():
        host = str(w.get("host") or _host_of(address))
        rows.append((address, w.get("name", address), host, int(w.get("nthreads") or 1)))
    rows.sort(key=lambda r: (_name_order(r[1], r[0], r[2]), r[0]))
    per_host: dict[str, int] = {}
    taken: set[str] = set()
    workers, addresses, hosts = [], {}, {}
    for address, dask_name, host, nthreads in rows:
        if isinstance(dask_name, int) or (isinstance(dask_name, str) and dask_name.isdigit()):
            name = f"dask-{int(dask_name)}"
        elif isinstance(dask_name, str) and dask_name and dask_name != address \
                and "://" not in dask_name:
            name = dask_name
        else:
            index = per_host.get(host, 0)
            per_host[host] = index + 1
            name = f"{host}-{index}"
        if name in taken:
            name = f"{name}@{address}"
        taken.add(name)
        workers.append(Worker(name, weight=float(nthreads)))
        addresses[name] = address
        hosts[name] = host
    return tuple(workers), addresses, hosts


def _name_order(dask_name: Any, address: str, host: str) -> tuple[Any, ...]:
    if isinstance(dask_name, int) or (isinstance(dask_name, str) and dask_name.isdigit()):
        return (0, int(dask_name))
    if isinstance(dask_name, str) and dask_name != address and "://" not in dask_name:
        match = re.match(r"^(.+)-(\d+)$", dask_name)
        return (1, match[1], int(match[2])) if match else (1, dask_name, -1)
    port = address.rsplit(":", 1)[-1]
    return (2, host, int(port) if port.isdigit() else 0)


def _host_of(address: str) -> str:
    rest = _PROTOCOL.sub("", address)
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    return host.strip("[]")


def _local_hosts() -> set[str]:
    hosts = {"localhost", socket.gethostname(), socket.getfqdn()}
    with contextlib.suppress(Exception):
        import psutil  # type: ignore[import-untyped,unused-ignore]

        for addrs in psutil.net_if_addrs().values():
            hosts.update(a.address.split("%")[0] for a in addrs)
    with contextlib.suppress(OSError):
        hosts.update(socket.gethostbyname_ex(socket.gethostname())[2])
    return hosts


def _is_local_host(host: str, local: set[str]) -> bool:
    if host in local:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _funcname(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return re.sub(r"[^A-Za-z0-9_.]", "_", str(name))[:60] or "task"
