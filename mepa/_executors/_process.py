"""Processes on loky's reusable executor, with big arrays in shared memory.

::

    host                                           loky worker process
    ────                                           ───────────────────
    submit(fn, big_array)
      └─ args: arrays >= threshold ─▶ pooled shared-memory segment (one copy, reused)
      └─ cloudpickle(fn, handles) ─────────────▶  attach segment, view (no copy)
                                                  fn(view) -> result
      ◀──────────── handles of result segments ── big result arrays → shared memory
      view of the segment (no copy); the segment is freed with the last view
    distribute(fn, alloc)
      └─ alloc's data ─▶ pooled segment, once ─▶  take own chunk (view, or gather of blocks)
                                                  fn(chunk) -> result, made in its region of
                                                  one output buffer (else copied there); if
                                                  shuffled, also put its rows back in place in
                                                  an ordered buffer
      reassemble: the output (unshuffled) or the ordered buffer (shuffled), no copy
    events: ctx.fire ─ batched ─▶ private AF_UNIX socket (authkey) ─▶ dispatcher thread

Tasks are pickled with cloudpickle, so lambdas and closures defined in ``__main__`` work.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import itertools
import os
import re
import signal
import threading
import weakref
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from .._allocation import Allocation
from .._errors import COMMON_ERRORS, InitializerError, WorkerCrashedError
from .._heap import run_kept, worker_env
from .._payload import run_sent_back
from .._rundir import RunDir
from .._segments import DEFAULT_THRESHOLD
from .._threads import check_inner_threads, thread_env
from .._types import check_bool
from .._worker import Worker, make_workers, physical_cores
from ._base import DistributePlan, Executor, check_initializer
from ._engine import Capabilities
from ._futures import Task, notify_cancelled
from ._shared import SharedMemoryTransport

if TYPE_CHECKING:
    from .._events import Channel, EventHub

__all__ = ["ProcessExecutor"]

_IDLE_TIMEOUT = 60.0


class ProcessExecutor(Executor):
    """Runs tasks in loky worker processes of its own.

    Parameters
    ----------
    n_workers
        Number of worker processes; ``None`` means one per physical core.
    shared_memory_threshold
        NumPy arrays of at least this many bytes (arguments, chunks and results) travel
        through shared memory instead of being pickled; ``None`` turns this off.
    keep_worker_heap
        Let worker processes reuse the memory they free instead of returning it to the system
        at once (glibc ``malloc`` settings in the workers' environment; a no-op elsewhere).
        NumPy allocates every large temporary afresh; returned to the system, its pages fault
        in and are zeroed again for the next one, which can cost as much as the arithmetic.
        A worker keeps at most 512 MiB free (an eighth of the machine's memory per worker, if
        less), and returns what it holds when a task leaves more than that and after
        10 seconds without work. ``False`` keeps the allocator's defaults.
    inner_threads
        Threads that OpenMP, the BLAS libraries, numexpr and numba may each start inside a
        worker (their ``*_NUM_THREADS`` variables in the workers' environment): 1 by default,
        so that ``n`` workers use ``n`` cores, not ``n`` times the cores. A variable set in the
        host's environment is passed on unchanged. ``None`` leaves the libraries' defaults.
    initializer, initargs
        As for :class:`concurrent.futures.ProcessPoolExecutor`: each worker process calls
        ``initializer(*initargs)`` (pickled with cloudpickle) when it starts, before its first
        task. If it raises, the executor is broken: the pending tasks and every later
        ``submit`` fail with :class:`~mepa.InitializerError`, which quotes the worker's
        traceback.

    Notes
    -----
    Each executor has its own loky worker processes, started with its first task and
    stopped by :meth:`shutdown`: executors never fail each other's tasks, and process state
    a task changes (environment, working directory, resource limits) stays in the executor.
    Idle workers exit after a minute and come back on demand.

    A worker that dies (a crash, ``os._exit``, the out-of-memory killer) fails the tasks
    it took down with :class:`~mepa.WorkerCrashedError`, which names the task that was
    running in the dead worker; the next call starts fresh workers. A task that never
    returns is ended by :meth:`terminate_workers`.

    In a ``distribute`` over a shuffled allocation, each worker also writes its result's rows
    back to their original positions, so that ``reassemble`` copies nothing; the results
    ``gather`` returns for it are read-only views (copy one to change it, and ``reassemble``
    then puts the rows in place itself).
    """

    capabilities = Capabilities(shared_arrays=True, kills_running=True)
    errors = COMMON_ERRORS

    def __init__(
        self,
        n_workers: int | None = None,
        *,
        shared_memory_threshold: int | None = DEFAULT_THRESHOLD,
        keep_worker_heap: bool = True,
        inner_threads: int | None = 1,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        super().__init__(make_workers("process", n_workers, physical_cores()))
        self._inner_threads = check_inner_threads(inner_threads)
        self._initializer_name = check_initializer(initializer, initargs)
        self._initializer = initializer
        self._initargs = initargs
        self._init_failure: str | None = None
        self._shared = SharedMemoryTransport(shared_memory_threshold)
        self._keep_heap = check_bool("keep_worker_heap", keep_worker_heap)
        self._engine_lock = threading.Lock()
        self._engine: Any = None
        self._tracker: RunDir | None = None
        self._numbers = itertools.count(1)
        self._inflight: dict[int, Task] = {}  # by task number, until settled
        self._number_of: dict[int, int] = {}  # id(task) -> its task number
        self._terminated: dict[int, str] = {}  # tasks whose workers were killed, and why

    # -- shared memory

    def create_shared_array(self, shape: int | tuple[int, ...], dtype: Any = float) -> Any:
        """An uninitialised array in shared memory that tasks write into, in place.

        Passing it (or any view of it) to a task sends a handle, never a copy. Its memory
        returns to the executor's pool when the array and its views are garbage collected.
        """
        self._check_open()
        return self._shared.empty(shape, dtype)

    def scatter(self, data: Any) -> Any:
        """Put a big array in shared memory once; pass the returned array to many tasks.

        Arrays below the threshold, and other objects, are returned unchanged.
        """
        self._check_open()
        return self._shared.scatter(data)

    def _prepare_call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], task: Task
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        from .._events import run_task

        tracker = self._number_task(task)
        encoded = self._shared.encode(fn, args, kwargs, task.hint)
        if encoded is None:
            return _run_tracked, (tracker, run_kept, run_sent_back, run_task, fn, *args), kwargs
        call, task.data = encoded
        return _run_tracked, (tracker, run_kept, run_sent_back, run_task, *call), {}

    def _number_task(self, task: Task) -> tuple[str, int, int]:
        """Number the task; its worker records the number while it runs (see _run_tracked)."""
        with self._engine_lock:
            if self._tracker is None:
                self._tracker = RunDir("tasks")
                self._hold("tracker", self._tracker.close)
            number = next(self._numbers)
            self._inflight[number] = task
            self._number_of[id(task)] = number
            return self._tracker.path, number, os.getpid()

    def _decode_result(self, task: Task, value: Any) -> Any:
        return self._shared.decode(task.data, value)

    def _task_finished(self, task: Task) -> None:
        with self._engine_lock:
            number = self._number_of.pop(id(task), None)
            if number is not None:
                self._inflight.pop(number, None)
        arrays, task.data = task.data, None
        self._shared.release(arrays)

    def _plan_distribute(self, allocations: list[Allocation]) -> DistributePlan | None:
        return self._shared.plan_distribute(allocations)

    def _chunk_argument(self, alloc: Allocation, i: int, plan: DistributePlan | None) -> Any:
        return self._shared.chunk_argument(alloc, i, plan)

    # -- engine

    def _loky(self) -> Any:
        with self._engine_lock:
            engine = self._engine
            if self._init_failure is not None:
                raise self._initializer_error()
            if engine is None or _is_broken(engine):
                setup = None
                if self._initializer is not None:
                    if self._tracker is None:
                        self._tracker = RunDir("tasks")
                    setup = _WorkerSetup(self._initializer, self._initargs, self._tracker.path)
                engine = self._engine = _new_pool(
                    len(self.workers), self._keep_heap, self._inner_threads, setup
                )
                self._hold("engine", functools.partial(_stop_pool, engine))
            return engine

    def _initializer_error(self) -> InitializerError:
        return InitializerError(
            f"the initializer {self._initializer_name} of the process executor raised in a "
            f"worker; the executor cannot run tasks. Fix the initializer (or its initargs) and "
            f"create a new executor. The worker's traceback:\n{self._init_failure}"
        )

    def _engine_submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        worker: Worker | None,
    ) -> concurrent.futures.Future[Any]:
        return self._loky().submit(fn, *args, **kwargs)  # type: ignore[no-any-return]

    def _engine_shutdown(self, wait: bool) -> None:
        with self._engine_lock:
            engine, self._engine = self._engine, None
            tracker, self._tracker = self._tracker, None
        if engine is not None:
            if wait:
                engine.shutdown(wait=True)
            else:
                self._stop_workers(engine, "shutdown(wait=False)")
        self._shared.close()
        if tracker is not None:
            tracker.close()

    def terminate_workers(self) -> None:
        """Stop this executor's worker processes now, with the tasks they run.

        The way to end a task that never returns (``future.cancel()`` cannot stop a running
        task). Its future, and those of the other tasks running or queued at that moment,
        fail with :class:`~mepa.WorkerCrashedError`; the executor stays open and starts
        fresh workers for the next task. Other executors are not affected: each has its own
        worker processes.
        """
        with self._engine_lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            self._stop_workers(engine, "terminate_workers()")

    def _interrupt(self, pending: list[concurrent.futures.Future[Any]]) -> None:
        super()._interrupt(pending)
        with self._engine_lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            # The workers running them stop now: the tasks are cancelled, as the queued ones
            # are, not failed by the pool going down (loky's ShutdownExecutorError).
            with self._lock:
                mine = [f for f in pending if f in self._pending]
            for future in mine:
                if concurrent.futures.Future.cancel(future):
                    notify_cancelled(future)
            self._stop_workers(engine, "Ctrl-C")

    def _stop_workers(self, engine: Any, reason: str) -> None:
        """Kill ``engine``'s workers; the tasks they ran fail, saying ``reason`` stopped them."""
        with self._engine_lock:
            for number in self._inflight:
                self._terminated.setdefault(number, reason)
        _kill_pool(engine)

    def _event_channel(self, hub: EventHub) -> Channel:
        return hub.process_channel()

    def _translate_error(self, exc: BaseException, task: Task) -> BaseException:
        from loky.process_executor import TerminatedWorkerError

        number = self._number_of.get(id(task))
        reason = self._terminated.pop(number, None) if number is not None else None
        if reason is not None:
            crash = WorkerCrashedError(
                f"the task on {task.describe()} was stopped by {reason}, with the worker "
                "processes of its executor",
                chunk=task.chunk,
            )
            crash.__cause__ = exc
            return crash
        if isinstance(exc, TerminatedWorkerError) and self._initializer is not None:
            with self._engine_lock:
                tracker = self._tracker
                if self._init_failure is None and tracker is not None:
                    self._init_failure = _read_setup_failure(tracker.path)
                if self._init_failure is not None:
                    error = self._initializer_error()
                    error.__cause__ = exc
                    return error
        if isinstance(exc, TerminatedWorkerError):
            crash = self._crash_error(exc, task, number)
            self._shared.worker_died()
            return crash
        self._shared.failed(task.data, exc)
        return super()._translate_error(exc, task)

    def _crash_error(
        self, exc: BaseException, task: Task, number: int | None
    ) -> WorkerCrashedError:
        """The error of a task lost with a dead worker: which task that worker was running."""
        codes = re.search(r"exit codes of the workers are \{(.*?)\}", str(exc))
        exitcode = _first_exit_code(codes.group(1)) if codes else None
        what = f" (exit codes: {codes.group(1)})" if codes else ""
        # Every pending task gets loky's one exception object: find the culprits once, while
        # the other workers still live (loky kills them after failing the futures).
        culprits: list[tuple[int, str, int | None]] | None = exc.__dict__.get(_CULPRITS)
        if culprits is None:
            culprits = []
            with self._engine_lock:
                tracker = self._tracker
                for dead in _dead_workers_tasks(tracker.path if tracker else None):
                    victim = self._inflight.get(dead)
                    if victim is not None:
                        culprits.append((dead, victim.describe(), victim.chunk))
            exc.__dict__[_CULPRITS] = culprits
        if not culprits or any(n == number for n, _, _ in culprits):
            crash = WorkerCrashedError(
                f"a worker process died while running the task on {task.describe()}{what}; "
                "it may have crashed, called os._exit, or been killed for using too much "
                "memory. The executor starts fresh workers on the next call.",
                exitcode=exitcode,
                chunk=task.chunk,
            )
        else:
            ran = "; ".join(f"the task on {where}" for _, where, _ in culprits)
            crash = WorkerCrashedError(
                f"the task on {task.describe()} was lost: a worker process of this executor "
                f"died{what} while running {ran}, and the executor's pool went down with it. "
                "Submit the task again: the executor starts fresh workers on the next call.",
                exitcode=exitcode,
                chunk=culprits[0][2],
            )
        crash.__cause__ = exc
        return crash


_CULPRITS = "__mepa_culprits__"


def _run_tracked(
    tracker: tuple[str, int, int], fn: Callable[..., Any], /, *args: Any, **kwargs: Any
) -> Any:
    """In a worker: note which task this process runs (``<directory>/<pid>``), then run it.

    If the process dies, the host reads the note to name the task that was running in it.
    """
    directory, number, _ = tracker
    with contextlib.suppress(OSError):
        path = os.path.join(directory, str(os.getpid()))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, str(number).encode())
        finally:
            os.close(fd)
    watch = _WATCH[0]
    if watch is None or signal.getsignal(signal.SIGALRM) is not watch:
        return fn(*args, **kwargs)  # no watch, or the initializer took SIGALRM: leave it
    try:
        return fn(*args, **kwargs)
    finally:
        _rewatch(watch)


def _rewatch(watch: _Handler) -> None:
    """After a task: put the host watch back if the task took SIGALRM or stopped the timer."""
    if signal.getsignal(signal.SIGALRM) is not watch:
        signal.signal(signal.SIGALRM, watch)
    if signal.getitimer(signal.ITIMER_REAL)[1] != HOST_CHECK_SECONDS:
        signal.setitimer(signal.ITIMER_REAL, HOST_CHECK_SECONDS, HOST_CHECK_SECONDS)


_Handler = Callable[[int, FrameType | None], Any]
_WATCHED = [0]  # the host pid this worker process watches
_WATCH: list[_Handler | None] = [None]  # its SIGALRM handler
HOST_CHECK_SECONDS = 1.0
"""How often a worker process checks that its host still runs."""


def _watch_host(host: int) -> None:
    """Exit this worker process within ~:data:`HOST_CHECK_SECONDS` once its host has died.

    The pool's initializer: every worker watches from its start, busy or idle.

    A host killed by SIGKILL or SIGTERM, or ended by ``os._exit``, runs no cleanup: its
    workers would otherwise finish (or never finish) their tasks and idle for a minute. The
    worker is then no longer the host's child: its parent pid changes.

    The watch is a ``SIGALRM`` handler and an ``ITIMER_REAL`` timer (the one
    :func:`signal.alarm` also sets). A task that installs its own ``SIGALRM`` handler, or sets
    or cancels that timer, turns the watch off while it runs (and its own handler is called
    every :data:`HOST_CHECK_SECONDS` until it sets the timer itself); when the task ends, the
    watch is put back (:func:`_rewatch`). An initializer that installs a ``SIGALRM`` handler
    keeps it: the worker then does not watch its host.
    """
    if _WATCHED[0] == host:
        return
    _WATCHED[0] = host
    if os.getppid() != host:
        if not _alive(host):
            os._exit(0)  # the host died before this worker started its watch
        return  # not started by the host itself (a nested pool): nothing to watch reliably

    def check(signum: int, frame: FrameType | None) -> None:
        if os.getppid() != host:
            os._exit(0)  # nobody is left to report to

    # A timer signal, not a thread: a second thread changes how glibc keeps the freed heap
    # (see _heap). The handler runs between bytecodes, also while the worker waits for work.
    signal.signal(signal.SIGALRM, check)
    signal.setitimer(signal.ITIMER_REAL, HOST_CHECK_SECONDS, HOST_CHECK_SECONDS)
    _WATCH[0] = check


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process
        return True
    return True


def _after_fork_in_child() -> None:
    _WATCHED[0] = 0  # a forked child has no timer (timers are not inherited)
    _WATCH[0] = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def _dead_workers_tasks(directory: str | None) -> list[int]:
    """The numbers of the tasks last started by worker processes that no longer exist."""
    if directory is None:
        return []
    numbers = []
    for name in os.listdir(directory):
        if not name.isdigit():
            continue
        try:
            os.kill(int(name), 0)
        except ProcessLookupError:
            pass
        except OSError:
            continue
        else:
            continue
        with contextlib.suppress(OSError, ValueError), open(os.path.join(directory, name)) as f:
            numbers.append(int(f.read()))
    return numbers


def _stop_pool(pool: Any) -> None:
    """Stop a dropped executor's workers (its tasks are done: nothing can gather them)."""
    _kill_pool(pool)


def _kill_pool(pool: Any) -> None:
    """Kill a loky pool's workers now; its pending futures fail, none raises in loky.

    ``shutdown(kill_workers=True)`` sets an exception on every pending future, also on those
    cancelled meanwhile, which raises InvalidStateError in loky's manager thread and leaves
    the pool half stopped. Killed workers instead go through loky's handling of dead
    workers, which skips cancelled futures.
    """
    from loky.backend.utils import kill_process_tree

    processes = getattr(pool, "_processes", None)
    if not isinstance(processes, dict):
        pool.shutdown(wait=False, kill_workers=True)
        return
    for process in list(processes.values()):
        with contextlib.suppress(OSError):
            kill_process_tree(process)  # the worker and what it started
    pool.shutdown(wait=False)


def _new_pool(
    n_workers: int, keep_heap: bool, inner_threads: int | None = 1,
    setup: _WorkerSetup | None = None,
) -> Any:
    import loky

    env = worker_env(n_workers) if keep_heap else {}
    env.update(thread_env(inner_threads))
    pool = loky.ProcessPoolExecutor(
        max_workers=n_workers, timeout=_IDLE_TIMEOUT, env=env or None,
        initializer=_watch_host if setup is None else setup, initargs=(os.getpid(),),
    )
    _LIVE_POOLS.add(pool)
    return pool


# Every pool still running, for shutdown_worker_pools().
_LIVE_POOLS: weakref.WeakSet[Any] = weakref.WeakSet()


def shutdown_worker_pools() -> None:
    """Stop the worker processes of every process executor of this interpreter, now.

    Their running tasks fail with :class:`~mepa.WorkerCrashedError`. Each executor starts
    fresh workers for its next task.
    """
    for pool in list(_LIVE_POOLS):
        pool.shutdown(wait=True, kill_workers=True)


def _is_broken(engine: Any) -> bool:
    flags = getattr(engine, "_flags", None)
    return flags is None or bool(flags.broken) or bool(flags.shutdown)


def _first_exit_code(text: str) -> int | None:
    match = re.search(r"-?\d+", text)
    return int(match.group(0)) if match else None


_SETUP_FAILED = "initializer-failed-"


class _WorkerSetup:
    """In a new worker: call the user's initializer; if it raises, leave its traceback.

    loky ends a worker whose initializer raised (the pool then reports a terminated worker);
    the traceback, written to the executor's run directory, lets the host say why.
    """

    __slots__ = ("directory", "initargs", "initializer")

    def __init__(
        self, initializer: Callable[..., object], initargs: tuple[Any, ...], directory: str
    ) -> None:
        self.initializer = initializer
        self.initargs = initargs
        self.directory = directory

    def __reduce__(self) -> tuple[Any, ...]:
        return (_WorkerSetup, (self.initializer, self.initargs, self.directory))

    def __call__(self, host_pid: int) -> None:
        _watch_host(host_pid)
        try:
            self.initializer(*self.initargs)
        except BaseException as exc:
            import traceback

            text = "".join(traceback.format_exception(exc))
            with contextlib.suppress(OSError):
                path = os.path.join(self.directory, f"{_SETUP_FAILED}{os.getpid()}")
                with open(path, "w", encoding="utf-8") as out:
                    out.write(text)
            raise


def _read_setup_failure(directory: str) -> str | None:
    """The traceback a worker's initializer left in ``directory``, if any."""
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(directory)):
            if name.startswith(_SETUP_FAILED):
                with open(os.path.join(directory, name), encoding="utf-8") as report:
                    return report.read()
    return None
