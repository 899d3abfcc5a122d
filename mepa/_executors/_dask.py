"""Tasks on a Dask cluster: an existing scheduler, a client, or an embedded ``LocalCluster``.

::

    host                                  scheduler                      Dask worker
    ────                                  ─────────                      ───────────
    submit(fn, *args)
      user's code ─▶ CodeBundle, published once per version ─────────▶ fetched once, imported
      futures ─▶ Slot(i)       ┐
      big arrays ─▶ scatter ───┴─▶ payload bytes
      client.submit(run_shipped, payload, code_ref, *dask_futures,
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
import contextvars
import hashlib
import hmac
import io
import ipaddress
import itertools
import logging
import operator
import os
import pickle
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
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

import distributed
import distributed.protocol
import numpy as np
from distributed.scheduler import KilledWorker

from .._dask_shipping import (
    CodeBundle,
    CodeRef,
    LocalModules,
    Slot,
    TaskExit,
    dumps_by_value,
    dumps_shipped,
    main_script,
    run_shipped,
)
from .._errors import (
    COMMON_ERRORS,
    ArgumentTypeError,
    BrokenExecutor,
    ClusterSpecError,
    ErrorMap,
    ErrorRule,
    InitializerError,
    InvalidArgumentError,
    SerializationError,
    TaskPlace,
    WorkerCrashedError,
    WorkerSpecError,
)
from .._events import Channel, EventHub, Transport
from .._events._context import TaskResult
from .._heap import run_kept, worker_env
from .._threads import thread_env
from .._tree import flatten, iter_leaves, tree_map, unflatten
from .._types import _short, check_bool
from .._worker import Worker, physical_cores
from ._base import ChunkHint, DistributePlan, Executor, check_initializer, check_not_exiting
from ._engine import Capabilities
from ._futures import (
    BridgeFuture,
    RemoteTraceback,
    Task,
    TaskFuture,
    add_task_note,
    attach_remote_traceback,
)

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


def _killed_worker(exc: BaseException, task: TaskPlace) -> BaseException:
    return WorkerCrashedError(
        f"a Dask worker died while running the task on {task.describe()} ({exc}); the "
        "scheduler stops retrying a task after 'distributed.scheduler.allowed-failures' "
        "worker deaths. Look for memory limits or crashes in the worker logs.",
        chunk=task.chunk,
    )


def _input_lost(exc: BaseException, task: TaskPlace) -> BaseException:
    assert isinstance(exc, _InputLost)
    where = "a worker that left" if exc.address is None else f"worker {exc.address}"
    return WorkerCrashedError(
        f"the data of the task on {task.describe()} was lost {exc.attempts} times: it was "
        f"scattered to {where}, which died before the task read it; the task was launched "
        "again with the host's copy each time. Look for memory limits or crashes in the "
        "worker logs.",
        chunk=task.chunk,
    )


def _pinned_worker_left(exc: BaseException, task: TaskPlace) -> BaseException:
    assert isinstance(exc, _PinnedWorkerLeft)
    return WorkerCrashedError(
        f"the task on {task.describe()} was pinned to Dask worker {exc.address} "
        "(strict_pinning=True), which left the cluster before the task finished; arrange "
        "again to use the workers there are now, or pass strict_pinning=False to let other "
        "workers take over",
        chunk=task.chunk,
    )


def _system_exit(exc: BaseException, task: TaskPlace) -> BaseException:
    assert isinstance(exc, TaskExit)
    out = SystemExit(exc.code)
    out.__dict__.update(exc.__dict__)
    out.__cause__ = exc.__cause__  # the worker's traceback, not the carrier
    return out


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
        Ship the user's own code to the workers, once per version (see Notes). ``False``
        sends tasks with plain cloudpickle: functions must then be importable on the scheduler
        and workers.
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
    split_threads
        ``True`` (default): :meth:`distribute` runs the chunk of a worker with K threads as K
        row pieces, one per thread, and joins their results in row order (the function must
        return one row per input row). ``False``: one call per chunk.
    initializer, initargs
        As for :class:`concurrent.futures.ProcessPoolExecutor`: every worker calls
        ``initializer(*initargs)`` once before its first task of the executor, also workers
        that join later (a Dask worker plugin). If it raises, the tasks and every later
        ``submit`` fail with :class:`~mepa.InitializerError`.

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

    *Code shipping.* The code importable from the working directory, the script's directory,
    ``extra_paths`` and the directories the user's modules were imported from (top-level
    modules, and package directories whole, data files included; never the standard library,
    ``site-packages``, a virtual environment, mepa, ``excludes`` or packages holding compiled
    extensions) is published on the scheduler once per version (a SHA-256 of the files) and
    fetched once by each worker, which writes the files and imports the modules from them, as
    a process worker would: imports inside tasks, ``importlib.resources``, module-level locks
    and big tables, ``__slots__`` classes and tracebacks with file and line all work. A task
    carries only a mepa function, a ``bytes`` payload (functions of modules by reference) and
    a reference to its code version, so the scheduler needs only mepa, workers that join later
    fetch the code with their first task, and edits between runs are picked up. Functions of
    the main script travel as code with every task; futures nested inside arbitrary objects
    (not lists, tuples or dicts) are not resolved by Dask. Arguments travel through the
    scheduler inside the payload: NumPy arrays of at least :data:`SCATTER_BYTES` are scattered
    automatically, other big data should go through :meth:`scatter`.

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

    capabilities = Capabilities(pins_tasks=True, scatters=True, cancels_queued=True)
    errors = ErrorMap(
        ErrorRule(KilledWorker, _killed_worker),
        ErrorRule(lambda exc: isinstance(exc, _InputLost), _input_lost),
        ErrorRule(lambda exc: isinstance(exc, _PinnedWorkerLeft), _pinned_worker_left),
        ErrorRule(TaskExit, _system_exit),
        COMMON_ERRORS,
    )

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
        split_threads: bool = True,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        self._cluster: distributed.LocalCluster | None = None
        self._owns_client = True
        _check_options(
            address, n_workers=n_workers, threads_per_worker=threads_per_worker,
            security=security, extra_paths=extra_paths, excludes=excludes, timeout=timeout,
            wait_for_workers=wait_for_workers, no_worker_timeout=no_worker_timeout,
        )
        upload_modules = check_bool("upload_modules", upload_modules)
        self._strict = check_bool("strict_pinning", strict_pinning)
        self._split_threads = check_bool("split_threads", split_threads)
        self._initializer_name = check_initializer(initializer, initargs)
        client: Any  # distributed's annotations are partial: keep the client loose
        if isinstance(address, distributed.Client):
            if security is not None or n_workers is not None or threads_per_worker is not None:
                raise ArgumentTypeError(
                    "security, n_workers and threads_per_worker do not apply to an existing "
                    "Client; configure the Client (or the cluster) itself"
                )
            client = address
            self._owns_client = False
        elif isinstance(address, str):
            if address.startswith("tls://") and security is None:
                raise ClusterSpecError(
                    f"address {address!r} asks for TLS but security is None; pass "
                    "security=distributed.security.Security(tls_ca_file=..., "
                    "tls_client_cert=..., tls_client_key=..., require_encryption=True) with "
                    "the certificates the scheduler trusts"
                )
            client = _CLIENT(address, security=security, timeout=timeout, set_as_default=False)
        elif _is_cluster(address):
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
        else:  # pragma: no cover - refused by _check_options
            raise AssertionError(address)
        self._client: Any = client
        try:
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
        self._setup: _WorkerSetup | None = None
        self._init_failure: str | None = None
        if initializer is not None:
            try:
                self._setup = self._register_setup(initializer, tuple(initargs))
            except BaseException:
                self._close_owned()
                raise
        # The user's futures of this executor -> where their results are on the cluster.
        self._dask_futures: weakref.WeakKeyDictionary[TaskFuture[Any], _Placed] = (
            weakref.WeakKeyDictionary()
        )
        self._dask_lock = threading.Lock()
        self._code: set[str] = set()  # the datasets holding this executor's code versions
        self._code_id = uuid.uuid4().hex[:12]
        self._topics: list[str] = []
        self._rejected = 0
        self._decoded = {"plain": 0, "pickle": 0}
        self._once = _AttemptEvents()
        self._no_worker_timeout = float(no_worker_timeout)
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

    def _register_setup(
        self, initializer: Callable[..., object], initargs: tuple[Any, ...]
    ) -> _WorkerSetup:
        names = self._modules.names() if self._modules is not None else ()
        try:
            payload = dumps_by_value((initializer, initargs, {}), names)
        except Exception as exc:
            raise SerializationError(
                f"the initializer {self._initializer_name} or its initargs could not be "
                f"pickled: {exc}; pass a picklable function and arguments"
            ) from exc
        setup = _WorkerSetup(uuid.uuid4().hex, self._initializer_name, payload)
        plugin = _SetupPlugin(setup)
        register = getattr(self._client, "register_plugin", None) or \
            self._client.register_worker_plugin
        register(plugin, name=plugin.name)
        return setup

    def _initializer_error(self) -> InitializerError:
        return InitializerError(
            f"the initializer {self._initializer_name} of the Dask executor raised on a "
            "worker; the executor cannot run tasks. Fix the initializer (or its initargs) and "
            f"create a new executor. The worker's traceback:\n{self._init_failure}"
        )

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
                placed = self._dask_futures.get(leaf)
            dask_future = None if placed is None else placed.dask_future
            return leaf if dask_future is None else dask_future
        return leaf

    def _prepare_call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], task: Task
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        # Packing happens in _engine_submit, where a failure fails the future.
        future = None if task.future is None else task.future()
        call = _Call(fn, args, kwargs, future)
        if isinstance(task.hint, _SplitHint) and task.worker is not None \
                and task.worker.weight > 1:
            flags = task.hint.flags(args, kwargs)
            if any(flags):
                call.split = _ThreadSplit(
                    fn, flags, int(task.worker.weight), -1 if task.chunk is None else task.chunk
                )
        return run_shipped, (call,), {}

    def _plan_distribute(self, allocations: list[Any]) -> DistributePlan | None:
        if self._split_threads and any(w.weight > 1 for w in self._workers):
            return _SplitPlan()
        return None

    def _chunk_argument(self, alloc: Any, i: int, plan: DistributePlan | None) -> Any:
        chunk = super()._chunk_argument(alloc, i, plan)
        if isinstance(plan, _SplitPlan):
            plan.note(i, chunk)
        return chunk

    def _engine_submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        worker: Worker | None,
    ) -> concurrent.futures.Future[Any]:
        if self._init_failure is not None:
            raise self._initializer_error()
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
        code = self._modules.bundle() if self._modules is not None else None
        try:
            fn_sent = call.fn if call.split is None else call.split
            payload = dumps_shipped((fn_sent, task_args, task_kwargs))
        except Exception as exc:
            error = SerializationError(
                f"the task {_funcname(call.fn)} or its arguments could not be pickled: {exc}; "
                "make sure functions and arguments are picklable (cloudpickle handles lambdas "
                "and closures; open files, locks, sockets and clients are not)"
            )
            raise error from exc
        address = None if worker is None else self._addresses.get(worker.name)
        task = _DaskTask(self, _funcname(call.fn), payload, sources, address, code)
        task.launch()
        if call.future is not None:
            with self._dask_lock:
                self._dask_futures[call.future] = task.placed
            # Once the user's future is done, every batch of the task has been dispatched.
            call.future.add_done_callback(_Forget(self._once, task.ident))
        return task

    def _scatter_to(self, values: list[Any], address: str | None) -> list[Any]:
        """Scatter ``values`` to ``address`` (anywhere if it is ``None`` or has left)."""
        if address is not None and address in self._live:
            try:
                return list(self._client.scatter(values, workers=[address], hash=False))
            except (KeyError, ValueError):  # the worker left since the list was read
                self._live.discard(address)
        return list(self._client.scatter(values, hash=False))

    def _code_ref(self, bundle: CodeBundle | None) -> CodeRef | None:
        """The reference a task carries to ``bundle``, published on the scheduler once per
        version (a dataset: it needs no worker, and outlives any of them)."""
        if bundle is None:
            return None
        name = f"mepa-code-{bundle.digest[:20]}-{self._code_id}"
        with self._dask_lock:
            known = name in self._code
        if not known:
            self._client.publish_dataset(bundle, name=name, override=True)
            with self._dask_lock:
                self._code.add(name)
        return CodeRef(bundle.digest, name)

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
        setup = getattr(self, "_setup", None)
        if setup is not None and self._cluster is None:
            with contextlib.suppress(Exception):  # a cluster that stays: no more initializer
                self._client.unregister_worker_plugin(f"mepa-initializer-{setup.ident}")
        with self._dask_lock:
            code, self._code = self._code, set()
        for name in code:
            with contextlib.suppress(Exception):
                self._client.unpublish_dataset(name)
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

    def _translate_error(self, exc: BaseException, task: Task) -> BaseException:
        if isinstance(exc, _InitializerFailed):
            if self._init_failure is None:
                self._init_failure = str(exc)
            return self._initializer_error()
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            hint = self._missing_module_hint(exc.name)
            if hint:
                add_task_note(exc, hint)
            return exc
        return super()._translate_error(exc, task)

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
        deliver = hub.deliver
        once = self._once

        def on_event(event: tuple[float, Any]) -> None:
            # Runs on the client's event loop: only check, decode and queue for the dispatcher.
            payload = channel.open(event[1])
            if payload is None:
                self._reject(channel.topic)
                return
            try:
                source, seq, events = self._decode_batch(payload)
                deliver(source, seq, once.filter(source, events, self._is_additive))
            except Exception:
                logger.exception("bad event batch on %s", channel.topic)

        self._client.subscribe_topic(channel.topic, on_event)
        self._topics.append(channel.topic)
        return channel

    def _decode_batch(self, payload: bytes) -> tuple[str, int, list[Any]]:
        """Decode an authenticated batch: plain data without running code, else by pickle.

        Numbers, strings, bytes, lists, tuples, dicts, sets, NumPy arrays and scalars and
        mepa's event keys are rebuilt by :func:`loads_plain`, which imports and calls nothing
        else. Only a batch holding other objects (instances of the user's classes) is
        unpickled, and only here, after its signature was checked.
        """
        header = loads_plain(payload)
        if not (isinstance(header, tuple) and len(header) == 3 and isinstance(header[0], str)
                and isinstance(header[1], int) and isinstance(header[2], bytes)):
            raise ValueError(f"not an event batch: {type(header).__name__}")
        source, seq, body = header
        try:
            events = loads_plain(body)
            self._decoded["plain"] += 1
        except NotPlainData:
            events = pickle.loads(body)  # signed by a task of this executor
            self._decoded["pickle"] += 1
        if not isinstance(events, list):
            raise TypeError(f"not a list of events: {type(events).__name__}")
        return source, seq, events

    def _is_additive(self, event: Any) -> bool:
        """Whether ``event`` is a progress bar's (its counts are summed, not its messages)."""
        bars = list(self._progress_bars)
        return any(getattr(getattr(bar, "_ctx", None), "event", None) == event for bar in bars)

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

    __slots__ = ("args", "fn", "future", "kwargs", "split")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        future: TaskFuture[Any] | None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.future = future
        self.split: _ThreadSplit | None = None


class _DaskTask(BridgeFuture):
    """The stdlib future of one task on Dask, across its attempts.

    An attempt is one Dask future. Host arrays of the task are kept until it ends: when a
    worker holding a scattered input dies, Dask cancels the task (the data cannot be
    recomputed), and the task is launched again with the arrays scattered anew, up to
    :data:`RELAUNCHES` times. Results are fetched by the executor's fetch threads, never on
    Dask's callback thread.
    """

    def __init__(
        self, executor: DaskExecutor, name: str, payload: bytes, sources: list[Any],
        address: str | None, code: CodeBundle | None = None,
    ) -> None:
        super().__init__(cancel_remote=None)
        self._executor = executor
        self.name = name
        self.payload = payload
        self.code = code
        self.sources: list[Any] | None = sources
        self.address = address
        self.attempts = 0
        self.dask_future: Any = None
        self._values: list[Any] = []
        self._user_cancelled = False
        self.ident = uuid.uuid4().hex
        self.placed = _Placed()

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
            run_dask_task, ex._setup, self.ident, self.payload, ex._code_ref(self.code), *values,
            key=f"{self.name}-{uuid.uuid4().hex}", pure=False, **ex._pin(self.address),
        )
        self._values = values
        self.dask_future = self.placed.dask_future = dask_future
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
        if cancel or exc is not None:
            self.placed.dask_future = None  # a next task given this one fails on the host
        if cancel:
            self.remote_cancelled()
        elif exc is not None:
            self.reject(exc)
        else:
            self.resolve(value)

    def running(self) -> bool:
        """Whether a worker runs the task now (asks the cluster)."""
        if self.done() or self.dask_future is None:
            return False
        return self._executor._is_executing(self.dask_future.key)

    def cancel(self) -> bool:
        """Cancel the task if no worker can have it yet; ``True`` only if it will not run.

        The scheduler checks and cancels in one step of its event loop: a task it still holds
        (queued, waiting for its inputs or for a worker) is cancelled there; one it has handed
        to a worker, which may start it any moment, is left to run (``False``), as
        :class:`concurrent.futures.ProcessPoolExecutor` does for a task in its call queue.
        """
        if self.done():
            return self.cancelled()
        ex = self._executor
        self._user_cancelled = True
        try:
            cancelled = bool(ex._client.run_on_scheduler(
                _cancel_if_not_sent, self.dask_future.key, ex._client.id
            ))
        except Exception:  # noqa: BLE001 - cannot tell: the task may run, say so
            cancelled = False
        if not cancelled:
            self._user_cancelled = False
            return self.cancelled()
        return super().cancel()


class _Placed:
    """Where a task's result is on the cluster: the Dask future of its latest attempt.

    What the executor maps a user's future to (weakly), so that a next task given that future
    gets the result on its worker. It refers to nothing that refers back to the user's future
    (a task's error does, through the traceback of the ``gather`` that raised it): mapped to
    the task itself, every result and error stayed on the cluster for good.
    """

    __slots__ = ("dask_future",)

    def __init__(self) -> None:
        self.dask_future: Any = None


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
                del task  # kept while waiting for the next, it would keep its result alive
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


# ---------------------------------------------------------------------- tasks on workers


def _serialize_task_result(result: TaskResult[Any]) -> tuple[dict[str, Any], list[Any]]:
    """A task's result on the wire: its value as Dask sends a value, then its tokens.

    Pickled as a whole, the wrapper would carry a big array in the pickle stream (copied on
    both ends: a 2-worker gather of 160 MB took 0.35 s, against 0.14 s for the bare arrays);
    serialized this way, the value's arrays travel as frames of their own, as Dask sends them.
    """
    header, frames = _WIRE.serialize(result.value, on_error="raise")
    tokens = pickle.dumps(result.tokens, protocol=pickle.HIGHEST_PROTOCOL)
    return {"value": header, "frames": len(frames)}, [*frames, tokens]


def _deserialize_task_result(header: dict[str, Any], frames: list[Any]) -> TaskResult[Any]:
    n = header["frames"]
    value = _WIRE.deserialize(header["value"], frames[:n])
    return TaskResult(value, pickle.loads(frames[n]))  # from a worker, as Dask's own results


_WIRE: Any = distributed.protocol  # untyped
_WIRE.dask_serialize.register(TaskResult)(_serialize_task_result)
_WIRE.dask_deserialize.register(TaskResult)(_deserialize_task_result)


def run_dask_task(
    setup: _WorkerSetup | None, ident: str, payload: bytes, code: CodeRef | None, *values: Any
) -> Any:
    """Worker side: the function every Dask task of the executor runs.

    Runs the executor's initializer first if this worker has not (see :class:`_WorkerSetup`),
    then the shipped task (:func:`~mepa._dask_shipping.run_shipped`) with the worker's heap
    kept between tasks when the embedded cluster started it so (:func:`mepa._heap.run_kept`).

    Parameters
    ----------
    setup
        The executor's initializer, or ``None``.
    ident
        The task's id: its events are sent by a sender of this attempt (see
        :class:`_AttemptEvents`).
    payload, code, *values
        As for :func:`~mepa._dask_shipping.run_shipped`.
    """
    if setup is not None:
        setup.ensure()
    attempt = (ident, uuid.uuid4().hex[:12])
    reset = _ATTEMPT.set(attempt)
    try:
        return run_kept(run_shipped, payload, code, *values)
    finally:
        _ATTEMPT.reset(reset)
        _drop_senders(f"@{attempt[0]}.{attempt[1]}")


_ATTEMPT: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "mepa_dask_attempt", default=None
)
"""Worker side: ``(task id, attempt id)`` of the task being unpickled and run."""

_ATTEMPT_SOURCE = "attempt:"


def _drop_senders(suffix: str) -> None:
    """Forget the (flushed) senders of a finished attempt: one per attempt, not per process."""
    from .._events import _sender

    with _sender._SENDERS_LOCK:
        for key in [k for k in _sender._SENDERS if k.endswith(suffix)]:
            del _sender._SENDERS[key]


class _AttemptEvents:
    """Host side: the events of a task that Dask ran again count once.

    When a worker dies while running a task, the scheduler runs it again elsewhere; the events
    the first attempt sent are already dispatched, and the new attempt fires them again. Each
    attempt sends through a sender of its own (source ``attempt:{task}.{attempt}.{random}``),
    and per task and event this counts what each attempt fired: a fire is dispatched only
    past the count of the attempts before it (the k-th fire of an event once, whichever
    attempt sends it first), and for a progress bar the same holds for the sums of its
    ``update`` and ``register`` counts. A bar thus ends at its total, and a callback sees each
    fire once, as long as the attempts fire the same events (tasks are retried as they are).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, tuple[dict[Any, float], dict[str, dict[Any, float]]]] = {}

    def forget(self, ident: str) -> None:
        with self._lock:
            self._tasks.pop(ident, None)

    def filter(
        self, source: str, events: list[Any], additive: Callable[[Any], bool]
    ) -> list[Any]:
        """The events of a batch from ``source`` that no earlier attempt delivered."""
        if not source.startswith(_ATTEMPT_SOURCE):
            return events
        ident, _, rest = source[len(_ATTEMPT_SOURCE):].partition(".")
        attempt = rest.partition(".")[0]
        with self._lock:
            delivered, attempts = self._tasks.setdefault(ident, ({}, {}))
            counts = attempts.setdefault(attempt, {})
            if len(attempts) == 1 and self._count_fast(delivered, counts, events, additive):
                return events  # the only attempt so far: all of it is new
            out: list[Any] = []
            for item in events:
                if len(item) == 2:  # (event, values): one fire per value
                    event, values = item
                    keep = self._advance(delivered, counts, (event, None), len(values))
                    if keep:
                        out.append(item if keep >= len(values) else (event, values[-int(keep):]))
                    continue
                event, args, kwargs = item
                if kwargs is None and len(args) >= 2 and args[0] in _PROGRESS_SUMS \
                        and isinstance(args[1], int | float) and not isinstance(args[1], bool) \
                        and additive(event):
                    keep = self._advance(delivered, counts, (event, args[0]), args[1])
                    if keep:
                        out.append(item if keep == args[1] else
                                   (event, (args[0], type(args[1])(keep), *args[2:]), kwargs))
                    continue
                if self._advance(delivered, counts, (event, None), 1):
                    out.append(item)
            return out

    @staticmethod
    def _count_fast(
        delivered: dict[Any, float], counts: dict[Any, float], events: list[Any],
        additive: Callable[[Any], bool],
    ) -> bool:
        """Count a batch of one plain event key at C speed; ``False`` for other batches."""
        keys = set(map(_FIRST, events))
        if len(keys) != 1:
            return not keys
        (event,) = keys
        if additive(event):
            return False
        lengths = list(map(len, events))
        pairs = itertools.compress(events, map((2).__eq__, lengths))
        fires = lengths.count(3) + sum(map(len, map(_SECOND, pairs)))
        key = (event, None)
        delivered[key] = counts[key] = counts.get(key, 0) + fires
        return True

    @staticmethod
    def _advance(
        delivered: dict[Any, float], counts: dict[Any, float], key: Any, amount: float
    ) -> float:
        """Add ``amount`` to this attempt's count; the part no attempt delivered before."""
        before = counts.get(key, 0)
        after = before + amount
        counts[key] = after
        done = delivered.get(key, 0)
        if after <= done:
            return 0
        delivered[key] = after
        return after - max(before, done)


class _Forget:
    """Done-callback of a user's future: drop its task's event counts."""

    __slots__ = ("ident", "once")

    def __init__(self, once: _AttemptEvents, ident: str) -> None:
        self.once = once
        self.ident = ident

    def __call__(self, _: object) -> None:
        self.once.forget(self.ident)


_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)

_PROGRESS_SUMS = (0, 1)
"""The kinds of a progress bar's messages whose counts add up (update, register)."""


class NotPlainData(Exception):
    """:func:`loads_plain` met an object that is not plain data (it was not rebuilt)."""


_PLAIN_GLOBALS = frozenset({
    ("builtins", "complex"), ("builtins", "set"), ("builtins", "frozenset"),
    ("builtins", "bytearray"), ("builtins", "slice"), ("builtins", "range"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    *((module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
})


def _plain_globals() -> frozenset[tuple[str, str]]:
    from .._events import _sender
    from .._events._context import AliasEvent, AnonymousEvent

    keys = {(cls.__module__, cls.__qualname__) for cls in (AnonymousEvent, AliasEvent)}
    # The report of an event a worker could not pickle is a module-level instance.
    keys.add((type(_sender._Unpicklable).__module__, "_Unpicklable"))
    return _PLAIN_GLOBALS | frozenset(keys)


class _PlainUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain data only: no other import, no other call."""

    allowed: frozenset[tuple[str, str]] = frozenset()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise NotPlainData(f"{module}.{name}")
        return super().find_class(module, name)


def loads_plain(data: bytes) -> Any:
    """Decode a pickle that holds plain data only, running no code of its sender's choosing.

    Numbers, strings, bytes, lists, tuples, dicts, sets, NumPy arrays, dtypes and scalars,
    and mepa's event keys. Anything else raises :class:`NotPlainData` before it is built.

    Raises
    ------
    NotPlainData
        For any other object.
    """
    if not _PlainUnpickler.allowed:
        _PlainUnpickler.allowed = _plain_globals()
    return _PlainUnpickler(io.BytesIO(data)).load()


_SETUPS: dict[str, str] = {}
"""Worker side: per initializer id, ``""`` once it ran, else its traceback."""
_SETUPS_LOCK = threading.Lock()


class _InitializerFailed(Exception):
    """Worker side: the executor's initializer raised on this worker (its traceback)."""


class _WorkerSetup:
    """An executor's ``initializer(*initargs)``, shipped once per worker.

    Every worker calls it once, before its first task of the executor: from the
    :class:`_SetupPlugin` when it joins (or when the executor starts), else from
    :func:`run_dask_task`, whichever comes first.

    Parameters
    ----------
    ident
        Unique per executor.
    name
        The initializer's name, for errors.
    payload
        ``(initializer, initargs, {})`` pickled with the user's modules by value.
    """

    def __init__(self, ident: str, name: str, payload: bytes) -> None:
        self.ident = ident
        self.name = name
        self.payload = payload

    def run(self) -> str:
        """Call the initializer once in this process; ``""`` or its traceback."""
        import pickle
        import traceback

        with _SETUPS_LOCK:
            done = _SETUPS.get(self.ident)
            if done is None:
                try:
                    fn, args, _ = pickle.loads(self.payload)
                    fn(*args)
                except BaseException as exc:  # noqa: BLE001 - reported by every task
                    done = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                else:
                    done = ""
                _SETUPS[self.ident] = done
        return done

    def ensure(self) -> None:
        """Run the initializer if needed; raise :class:`_InitializerFailed` if it raised."""
        failure = self.run()
        if failure:
            raise _InitializerFailed(failure)


class _SetupPlugin(distributed.WorkerPlugin):
    """Runs a :class:`_WorkerSetup` on every worker, also on workers that join later."""

    def __init__(self, setup: _WorkerSetup) -> None:
        self.setup_ = setup
        self.name = f"mepa-initializer-{setup.ident}"

    async def setup(self, worker: Any) -> None:
        import asyncio

        # Off the worker's event loop: an initializer may take long (loading a model).
        await asyncio.get_running_loop().run_in_executor(None, self.setup_.run)


class _ThreadSplit:
    """A ``distribute`` chunk run as one piece per thread of its Dask worker.

    The chunk's arrays (the leaves flagged in ``chunk_leaves``) are cut into as many row
    ranges as the worker has threads; ``fn`` runs on each range in a thread of its own (the
    first in the task's thread), and the pieces' results are put back together in row order:
    arrays and lists are concatenated, tuples element by element.

    Parameters
    ----------
    fn
        The user's function.
    chunk_leaves
        Per leaf of ``(args, kwargs)`` (in :func:`~mepa._tree.flatten` order), whether it is
        an array of the chunk.
    threads
        The worker's thread count as the host saw it (the worker's own count wins).
    chunk
        The chunk's index, for errors.
    """

    def __init__(
        self, fn: Callable[..., Any], chunk_leaves: list[bool], threads: int, chunk: int
    ) -> None:
        self.fn = fn
        self.chunk_leaves = chunk_leaves
        self.threads = threads
        self.chunk = chunk

    @property
    def __name__(self) -> str:
        return _funcname(self.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import contextvars

        threads = self.threads
        with contextlib.suppress(ValueError):
            threads = int(distributed.get_worker().state.nthreads)
        leaves, spec = flatten((args, kwargs))
        flagged = [i for i, f in enumerate(self.chunk_leaves) if f and i < len(leaves)
                   and isinstance(leaves[i], np.ndarray) and leaves[i].ndim >= 1]
        rows = len(leaves[flagged[0]]) if flagged else 0
        pieces = min(threads, rows)
        if pieces <= 1 or any(len(leaves[i]) != rows for i in flagged):
            return self.fn(*args, **kwargs)
        edges = [rows * k // pieces for k in range(pieces + 1)]
        calls = []
        for k in range(pieces):
            part = list(leaves)
            for i in flagged:
                part[i] = leaves[i][edges[k]:edges[k + 1]]
            a, kw = unflatten(spec, part)
            calls.append((a, kw))
        with concurrent.futures.ThreadPoolExecutor(
            pieces - 1, thread_name_prefix="mepa-chunk-piece"
        ) as pool:
            others = [
                pool.submit(contextvars.copy_context().run, self.fn, *a, **kw)
                for a, kw in calls[1:]
            ]
            first = self.fn(*calls[0][0], **calls[0][1])
            results = [first] + [f.result() for f in others]
        sizes = [edges[k + 1] - edges[k] for k in range(pieces)]
        return _join_pieces(results, sizes, self)


def _join_pieces(results: list[Any], sizes: list[int], split: _ThreadSplit) -> Any:
    """The results of a chunk's pieces put back together in row order."""
    first = results[0]
    if all(r is None for r in results):
        return None
    if all(isinstance(r, np.ndarray) and r.ndim >= 1 and len(r) == n
           for r, n in zip(results, sizes, strict=True)):
        return np.concatenate(results)
    if all(isinstance(r, list) and len(r) == n for r, n in zip(results, sizes, strict=True)):
        return [item for r in results for item in r]
    if isinstance(first, tuple) and all(
        isinstance(r, tuple) and len(r) == len(first) for r in results
    ):
        joined = [_join_pieces([r[j] for r in results], sizes, split) for j in range(len(first))]
        return type(first)(*joined) if hasattr(first, "_fields") else tuple(joined)
    from .._errors import AllocationError

    raise AllocationError(
        f"distribute ran chunk {split.chunk} as {len(results)} pieces, one per thread of its "
        f"Dask worker (split_threads=True), and {split.__name__} returned "
        f"{type(first).__name__} for a piece of {sizes[0]} rows, which cannot be put back "
        "together row by row; return one row per input row (an array, a list, or a tuple of "
        "them), or pass split_threads=False to DaskExecutor to run each chunk as one call"
    )


class _SplitPlan(DistributePlan):
    """Notes which arguments of a ``distribute`` call are chunks, for :class:`_ThreadSplit`."""

    def __init__(self) -> None:
        self._chunks: dict[int, list[Any]] = {}

    def note(self, i: int, chunk: Any) -> None:
        self._chunks.setdefault(i, []).extend(
            leaf for leaf in iter_leaves(chunk) if isinstance(leaf, np.ndarray)
        )

    def hint(self, i: int) -> Any:
        return _SplitHint(self._chunks.pop(i, []))


class _SplitHint(ChunkHint):
    """The arrays of chunk ``i`` (kept alive, so their ids stay theirs until submitted)."""

    __slots__ = ("arrays",)

    def __init__(self, arrays: list[Any]) -> None:
        self.arrays = arrays

    def flags(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[bool]:
        ids = {id(a) for a in self.arrays}
        return [id(leaf) in ids for leaf in flatten((args, kwargs))[0]]


async def _cancel_if_not_sent(key: str, client: str, dask_scheduler: Any = None) -> bool:
    """Scheduler side: cancel the task ``key`` unless a worker may have it; ``True`` if so.

    Runs on the scheduler's event loop: no worker can be given the task between the check and
    the cancellation. A task submitted just before may not have reached the scheduler yet
    (submissions and this call travel on different connections): wait for it a little.
    """
    import asyncio
    import inspect

    for _ in range(200):
        if key in dask_scheduler.tasks:
            break
        await asyncio.sleep(0.01)
    ts = dask_scheduler.tasks.get(key)
    if ts is None or ts.state not in ("released", "waiting", "queued", "no-worker"):
        return False
    options: dict[str, Any] = {"force": True, "reason": "cancelled by mepa", "msg": ""}
    accepted = inspect.signature(dask_scheduler.stimulus_cancel).parameters
    dask_scheduler.stimulus_cancel(
        [key], client, **{k: v for k, v in options.items() if k in accepted}
    )
    return True


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
        self.attempt: tuple[str, str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["attempt"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        # Unpickled with a task's payload, in the task's thread: the events of contexts
        # carrying this copy go through a sender of the task's attempt.
        self.attempt = _ATTEMPT.get()

    @property
    def key(self) -> str:
        """One sender per hub and process, and one per task attempt on a worker."""
        base = super().key
        return base if self.attempt is None else f"{base}@{self.attempt[0]}.{self.attempt[1]}"

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
        sender = super().sender()
        if self.attempt is not None and not sender.source_id.startswith(_ATTEMPT_SOURCE):
            with _TAG_LOCK:
                if not sender.source_id.startswith(_ATTEMPT_SOURCE):
                    # before its first batch: every batch of the sender carries the attempt,
                    # also under the new source id it takes after a failed send
                    sender.source_tag = f"{_ATTEMPT_SOURCE}{self.attempt[0]}.{self.attempt[1]}."
                    sender.source_id = sender.source_tag + sender.source_id
        return sender

    def connect(self) -> Transport:
        """The process-local transport: this worker's ``log_event``."""
        return _LogEventTransport(self)


_MAC_SIZE = hashlib.sha256().digest_size
_TAG_LOCK = threading.Lock()

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
    file = getattr(main, "__file__", None)
    # ``python - < script`` and ``python < script``: __file__ is '<stdin>' (3.11+) or unset,
    # and the worker processes would try to run that path as the main script.
    interactive = hasattr(sys, "ps1") or bool(sys.flags.interactive)
    from_stdin = not interactive and (
        (isinstance(file, str) and not os.path.isfile(file))
        or (file is None and bool(sys.argv) and sys.argv[0] in ("-", ""))
    )
    if from_stdin:
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
    _check_main_can_spawn()
    import dask.config

    protocol = "tls://" if security is not None and security.require_encryption else None
    n = physical_cores() if n_workers is None else n_workers
    # The heap settings of ProcessExecutor's workers (see mepa._heap); glibc reads them when
    # a process starts, so they go in the nanny's pre-spawn environment, replacing
    # distributed's MALLOC_TRIM_THRESHOLD_=65536 (which returns every freed NumPy temporary
    # to the system, and faults it in again for the next one).
    heap = worker_env(n)
    malloc = {key: value for key, value in heap.items() if key.startswith("MALLOC_")}
    pre_spawn = {**(dask.config.get("distributed.nanny.pre-spawn-environ") or {}), **malloc}
    local_cluster: Any = distributed.LocalCluster
    with dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn}):
        cluster: distributed.LocalCluster = local_cluster(
            n_workers=n,
            threads_per_worker=1 if threads_per_worker is None else threads_per_worker,
            processes=True,
            worker_class=_HostEnvNanny,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # the scheduler's HTTP routes, on loopback
            scheduler_kwargs={"dashboard": False},
            security=security,
            protocol=protocol,
            silence_logs=logging.ERROR,
            # one OpenMP/BLAS/numba thread per worker thread, as on processes
            env={**thread_env(1), **heap},
        )
    return cluster


class _HostEnvNanny(distributed.Nanny):
    """A nanny that gives the host's environment back once its worker process has started.

    A nanny sets its pre-spawn environment (the malloc settings, read by glibc when a process
    starts) in its own process's ``os.environ`` before it spawns the worker, also when it
    restarts one. The embedded cluster's nannies run in the user's process: without this,
    every process the user starts later would inherit the workers' malloc settings.
    """

    _spawning = 0
    _saved: ClassVar[dict[str, str | None]] = {}

    async def instantiate(self) -> Any:
        cls = _HostEnvNanny
        if cls._spawning == 0:  # the nannies share one event loop: no lock needed
            cls._saved = {key: os.environ.get(key) for key in self.pre_spawn_env}
        cls._spawning += 1
        try:
            return await super().instantiate()
        finally:
            cls._spawning -= 1
            if cls._spawning == 0:
                for key, value in cls._saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value


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


def _check_options(
    address: object, *, n_workers: object, threads_per_worker: object, security: object,
    extra_paths: object, excludes: object, timeout: object, wait_for_workers: object,
    no_worker_timeout: object,
) -> None:
    """Refuse bad constructor arguments before anything connects or starts.

    Each error is a :class:`~mepa.MepaError` (and the matching builtin) naming the parameter,
    the constraint, the value received and the fix.
    """
    if isinstance(address, str):
        if not address.strip():
            raise ClusterSpecError(
                f"address must be 'tcp://host:port' or 'tls://host:port', got {address!r}; "
                "pass None to start an embedded cluster"
            )
    elif address is not None and not isinstance(address, distributed.Client) \
            and not _is_cluster(address):
        raise ArgumentTypeError(
            "address must be a scheduler address such as 'tcp://host:port', a "
            "distributed.Client, a cluster object (LocalCluster, SpecCluster, "
            f"dask-jobqueue's SLURMCluster, ...) or None, got {type(address).__name__}: "
            f"{_short(address)}; pass one of those"
        )
    if address is not None and (n_workers is not None or threads_per_worker is not None):
        if isinstance(address, str):
            what = f"address={address!r}"
            fix = "size a running cluster with its own dask worker commands"
        else:
            what = f"a {type(address).__name__}"
            fix = "size or scale the cluster object itself (cluster.scale(n) or cluster.adapt(...))"
        raise ArgumentTypeError(
            "n_workers and threads_per_worker only size the embedded cluster (address=None), "
            f"got {what} with n_workers={n_workers!r}, threads_per_worker="
            f"{threads_per_worker!r}; {fix}"
        )
    for name, value in (("n_workers", n_workers), ("threads_per_worker", threads_per_worker)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise WorkerSpecError(
                f"{name} must be a positive int or None, got {_short(value)}; pass None for "
                "the default (one single-thread worker per physical core)"
            )
    if security is not None:
        from distributed.security import Security

        if not isinstance(security, Security):
            raise ArgumentTypeError(
                f"security must be a distributed.security.Security or None, got "
                f"{type(security).__name__}: {_short(security)}; pass e.g. "
                "Security.temporary() for an embedded cluster"
            )
    for name, value in (("extra_paths", extra_paths), ("excludes", excludes)):
        items = None
        if not isinstance(value, str | bytes | os.PathLike):
            with contextlib.suppress(TypeError):
                items = list(cast("Iterable[Any]", value))
        kinds, what, example = (
            ((str, os.PathLike), "directories", "'src'") if name == "extra_paths"
            else ((str,), "module names", "'mypkg'")
        )
        if items is None or not all(isinstance(item, kinds) for item in items):
            raise ArgumentTypeError(
                f"{name} must be a list of {what}, got {type(value).__name__}: "
                f"{_short(value)}; pass a list, e.g. {name}=[{example}]"
            )
    _positive("timeout", timeout)
    _positive("no_worker_timeout", no_worker_timeout)
    if isinstance(wait_for_workers, bool) or not isinstance(wait_for_workers, int) \
            or wait_for_workers < 0:
        raise WorkerSpecError(
            f"wait_for_workers must be an int >= 0, got {_short(wait_for_workers)}; pass 0 "
            "to start without waiting (an adaptive cluster with minimum 0)"
        )


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArgumentTypeError(
            f"{name} must be a number of seconds > 0, got {type(value).__name__}: "
            f"{_short(value)}; pass e.g. {name}=30"
        )
    if not value > 0:  # also NaN
        raise InvalidArgumentError(
            f"{name} must be a number of seconds > 0, got {value!r}; pass e.g. {name}=30"
        )
    return float(value)


def _funcname(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return re.sub(r"[^A-Za-z0-9_.]", "_", str(name))[:60] or "task"
