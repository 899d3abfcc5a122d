"""Real Dask clusters for the tests: a ``dask scheduler`` and ``dask worker`` subprocesses.

Every process listens on 127.0.0.1 without dashboard, runs from a directory of its own (so it
cannot import the tests' modules), dies with the test process (``PR_SET_PDEATHSIG`` on Linux),
and is stopped by its PID: terminate, wait, kill.

::

    with DaskCluster(n_workers=2) as cluster:
        executor = mepa.DaskExecutor(cluster.address)

:func:`shared_cluster` keeps one cluster of two single-thread workers for the whole test session
(the contract suite and the Dask tests use it); it is stopped at interpreter exit, or earlier by
:func:`stop_shared_clusters`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DaskCluster", "WorkerProcess", "shared_cluster", "stop_shared_clusters"]

START_TIMEOUT = 60.0


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Terminate, wait, kill: by PID, only our own process."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout)


class WorkerProcess:
    """One ``dask worker --no-nanny`` process: its PID is the worker's."""

    def __init__(self, proc: subprocess.Popen[bytes], name: str, address: str) -> None:
        self.proc = proc
        self.name = name
        self.address = address

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __repr__(self) -> str:
        return f"WorkerProcess(name={self.name!r}, address={self.address!r}, pid={self.pid})"


class DaskCluster:
    """A scheduler and worker subprocesses on 127.0.0.1.

    Parameters
    ----------
    n_workers, nthreads
        Workers started at once, and threads per worker.
    config
        Dask config for the scheduler and workers, as ``DASK_*`` environment variables
        (``{"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}``).
    """

    def __init__(
        self, n_workers: int = 2, nthreads: int = 1, config: dict[str, str] | None = None
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mepa-dask-cluster-"))
        self._env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self._env.update(config or {})
        self._env["DASK_DISTRIBUTED__WORKER__DAEMON"] = "False"
        self._scheduler: subprocess.Popen[bytes] | None = None
        self._workers: list[WorkerProcess] = []
        self._client: Any = None
        self._counter = 0
        self._lock = threading.Lock()
        self.address = ""
        try:
            self._start_scheduler()
            for _ in range(n_workers):
                self.add_worker(nthreads)
        except BaseException:
            self.close()
            raise

    # processes -----------------------------------------------------------------------------

    def _spawn(
        self, args: list[str], label: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        cwd = self.root / label
        cwd.mkdir()
        log = open(cwd / "log.txt", "wb")  # noqa: SIM115 - closed with the process
        try:
            return subprocess.Popen(
                [sys.executable, *args], cwd=cwd, env={**self._env, **(env or {})}, stdout=log,
                stderr=subprocess.STDOUT,
                # Only prctl runs between fork and exec: async-signal-safe enough here.
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
        finally:
            log.close()

    def _start_scheduler(self) -> None:
        file = self.root / "scheduler.json"
        self._scheduler = self._spawn(
            ["-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
             "--scheduler-file", str(file)],
            "scheduler",
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not file.exists() or not file.read_text().strip():
            self._check_alive(self._scheduler, "scheduler", deadline)
            time.sleep(0.05)
        self.address = json.loads(file.read_text())["address"]
        import distributed

        self._client = distributed.Client(self.address, set_as_default=False, timeout=30)

    def _check_alive(self, proc: subprocess.Popen[bytes], label: str, deadline: float) -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"the {label} exited with {proc.returncode}: {self.log(label)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {label} did not start in {START_TIMEOUT} s: {self.log(label)}")

    def log(self, label: str) -> str:
        path = self.root / label / "log.txt"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def add_worker(
        self, nthreads: int = 1, name: str | None = None, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        """Start a worker (``env``: more environment variables) until the scheduler lists it."""
        with self._lock:
            self._counter += 1
            label = f"worker-{self._counter}"
        args = ["-m", "distributed.cli.dask_worker", self.address, "--nthreads", str(nthreads),
                "--host", "127.0.0.1", "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
                "--no-nanny", "--local-directory", str(self.root / f"{label}-space"),
                "--death-timeout", "60"]
        if name is not None:
            args += ["--name", name]
        proc = self._spawn(args, label, env)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                self._check_alive(proc, label, deadline)
                found = self._find_worker(str(self.root / f"{label}-space"))
                if found is not None:
                    break
                time.sleep(0.1)
        except BaseException:
            _stop(proc)
            raise
        worker = WorkerProcess(proc, str(found[1]), found[0])
        self._workers.append(worker)
        return worker

    def _find_worker(self, space: str) -> tuple[str, Any] | None:
        """The address and name of the worker whose local directory is under ``space``."""
        info = self._client.scheduler_info(n_workers=-1)["workers"]
        for address, w in info.items():
            if str(w.get("local_directory", "")).startswith(space):
                return address, w.get("name", address)
        return None

    def stop_worker(self, worker: WorkerProcess, *, kill: bool = False) -> None:
        """Stop one worker (SIGKILL with ``kill``) and wait until the scheduler drops it."""
        if kill and worker.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()
        _stop(worker.proc)
        if worker in self._workers:
            self._workers.remove(worker)
        deadline = time.monotonic() + START_TIMEOUT
        while self._client is not None and self._is_listed(worker.address):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the scheduler still lists {worker}")
            time.sleep(0.1)

    def _is_listed(self, address: str) -> bool:
        return address in self._client.scheduler_info(n_workers=-1)["workers"]

    @property
    def workers(self) -> list[WorkerProcess]:
        return list(self._workers)

    # lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every worker, then the scheduler, by PID; remove the directories."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        for worker in self._workers:
            _stop(worker.proc)
        self._workers.clear()
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            _stop(scheduler)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_SHARED: dict[int, DaskCluster] = {}
_SHARED_LOCK = threading.Lock()


def shared_cluster(n_workers: int = 2) -> DaskCluster:
    """One cluster of ``n_workers`` single-thread workers per session, started on first use."""
    with _SHARED_LOCK:
        cluster = _SHARED.get(n_workers)
        if cluster is None:
            if not _SHARED:
                atexit.register(stop_shared_clusters)
            cluster = _SHARED[n_workers] = DaskCluster(n_workers=n_workers)
        return cluster


def stop_shared_clusters() -> None:
    """Stop the clusters :func:`shared_cluster` started."""
    with _SHARED_LOCK:
        clusters = list(_SHARED.values())
        _SHARED.clear()
    for cluster in clusters:
        cluster.close()
