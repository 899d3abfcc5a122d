"""What only the process executor does: real loky workers, crashes, pickling, Ctrl-C."""

from __future__ import annotations

import os
import signal
import textwrap
import threading

import numpy as np
import pytest

import mepa
from mepa import SerializationError, WorkerCrashedError

from .scripts import run_python

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def executor():
    with mepa.ProcessExecutor(2) as ex:
        yield ex


def pid_of_worker(_=None):
    return os.getpid()


def exit_worker(code):
    os._exit(code)


def kill_worker_on_chunk(chunk):
    if chunk[0] != 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return chunk


def return_lock():
    return threading.Lock()


def test_tasks_run_in_other_processes(executor):
    pids = set(executor.map(pid_of_worker, range(20), chunksize=1))
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2


def test_lambdas_and_closures_from_main_work(executor):
    offset = 10
    assert list(executor.map(lambda x: x + offset, [1, 2, 3])) == [11, 12, 13]


def test_worker_exit_is_a_typed_crash_and_executor_recovers(executor):
    future = executor.submit(exit_worker, 3)
    with pytest.raises(WorkerCrashedError, match=r"EXIT\(3\)") as info:
        executor.gather(future, timeout=60)
    assert info.value.exitcode == 3
    assert isinstance(info.value, mepa.BrokenExecutor)
    # a new call starts fresh workers
    assert executor.submit_and_gather(pow, 2, 5) == 32


def test_killed_worker_names_signal_and_chunk(executor):
    alloc = executor.arrange(np.arange(10))
    futures = executor.distribute(kill_worker_on_chunk, alloc)
    with pytest.raises(WorkerCrashedError) as info:
        executor.gather(futures, timeout=60)
    assert info.value.exitcode == -signal.SIGKILL
    assert "SIGKILL" in str(info.value)
    assert info.value.chunk == 1
    assert executor.submit_and_gather(pow, 3, 2) == 9


def test_unpicklable_function_is_a_serialization_error(executor):
    lock = threading.Lock()
    future = executor.submit(lambda: lock)
    with pytest.raises(SerializationError, match="could not be pickled") as info:
        executor.gather(future, timeout=60)
    assert isinstance(info.value, TypeError)
    assert executor.submit_and_gather(pow, 2, 2) == 4


def test_unpicklable_result_is_a_serialization_error(executor):
    future = executor.submit(return_lock)
    with pytest.raises(SerializationError, match="could not be pickled"):
        executor.gather(future, timeout=60)


def test_remote_traceback_is_the_cause(executor):
    def failing():
        raise ZeroDivisionError("in the worker")

    with pytest.raises(ZeroDivisionError, match="in the worker") as info:
        executor.submit_and_gather(failing)
    assert "Traceback" in str(info.value.__cause__)


CTRL_C_SCRIPT = textwrap.dedent(
    """
    import os, signal, threading, time
    import psutil
    import mepa

    def sleepy(x):
        time.sleep(60)
        return x

    with mepa.ProcessExecutor(2) as ex:
        futures = [ex.submit(sleepy, i) for i in range(6)]
        time.sleep(1.0)
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        t0 = time.monotonic()
        try:
            ex.gather(futures)
        except KeyboardInterrupt:
            print("interrupted after", round(time.monotonic() - t0, 1))
        stopped = sum(f.cancelled() or f.exception(timeout=30) is not None for f in futures)
        print("stopped", stopped)
    def live_workers():
        found = []
        for p in psutil.Process().children(recursive=True):
            try:
                if p.status() != psutil.STATUS_ZOMBIE and "popen_loky" in " ".join(p.cmdline()):
                    found.append(p)
            except psutil.Error:
                pass  # gone meanwhile
        return found

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        workers = live_workers()
        if not workers:
            break
        time.sleep(0.2)
    print("workers left", len(workers))
    """
)


def test_ctrl_c_during_gather_cancels_and_stops_workers(tmp_path):
    proc = run_python(CTRL_C_SCRIPT, tmp_path, timeout=90)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "interrupted after" in out
    seconds = float(out.split("interrupted after")[1].split()[0])
    assert seconds < 30
    assert "workers left 0" in out
    # queued tasks are cancelled; those already handed to workers fail as the workers stop
    assert "stopped 6" in out
