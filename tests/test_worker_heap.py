"""Process workers keep the memory they free while busy, within bounds, and return it idle."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import mepa
from mepa import _heap

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not _heap.supported(), reason="needs glibc >= 2.33"),
]

MiB = 1 << 20


def churn(nbytes):
    """Allocate and free two arrays of ``nbytes`` each; return this worker's pid."""
    a = np.ones(nbytes // 8)
    b = a * 2
    del a, b
    return os.getpid()


def free_heap():
    return _heap.free_bytes()


def resident():
    """This process's resident memory, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker_pid():
    return os.getpid()


def malloc_env():
    return os.environ.get("MALLOC_MMAP_THRESHOLD_"), os.environ.get("MALLOC_TRIM_THRESHOLD_")


@pytest.fixture
def idle_delay(monkeypatch):
    """Set the workers' idle delay (a new setting starts a new pool)."""

    def set_delay(seconds):
        monkeypatch.setattr(_heap, "IDLE_DELAY", seconds)

    return set_delay


def test_freed_memory_is_kept_between_tasks_and_returned_when_idle(idle_delay):
    idle_delay(1.0)
    with mepa.ProcessExecutor(1) as ex:
        before = ex.submit_and_gather(resident)
        ex.submit_and_gather(churn, 150 * MiB)
        assert ex.submit_and_gather(free_heap) >= 300 * MiB  # both arrays stayed in the heap
        assert ex.submit_and_gather(resident) - before >= 250 * MiB  # and in memory
        deadline = time.monotonic() + 30
        while True:
            time.sleep(2.5)  # each probe is a task, which calls off the idle trim
            grown = ex.submit_and_gather(resident) - before
            if grown <= 64 * MiB or time.monotonic() > deadline:
                break
        assert grown <= 64 * MiB, f"still {grown / MiB:.0f} MiB more resident when idle"


def test_a_task_that_frees_more_than_the_cap_returns_it_at_once(idle_delay):
    idle_delay(600.0)
    cap = _heap.default_cap(1)
    with mepa.ProcessExecutor(1) as ex:
        before = ex.submit_and_gather(resident)
        ex.submit_and_gather(churn, cap // 2 + 64 * MiB)
        assert ex.submit_and_gather(resident) - before <= 64 * MiB


def test_kept_memory_does_not_get_workers_restarted_by_lokys_leak_guard(idle_delay):
    # loky restarts a worker whose resident memory grew by 300 MB between tasks (it looks
    # at most once a second); a kept heap of more than that must not count as a leak.
    idle_delay(600.0)
    cap = _heap.default_cap(1)
    size = (cap - 192 * MiB) // 2  # two arrays and two heap steps: under the cap
    if 2 * size < 310 * MiB:  # loky's limit is 300 MB, 286 MiB
        pytest.skip("this machine's cap is too small to grow by loky's 300 MB")
    with mepa.ProcessExecutor(1) as ex:
        first = ex.submit_and_gather(worker_pid)  # loky's reference size is taken now
        pids, kept = [], []
        for _ in range(3):
            time.sleep(1.1)
            pids.append(ex.submit_and_gather(churn, size))
            kept.append(ex.submit_and_gather(free_heap))
        time.sleep(1.1)
        pids.append(ex.submit_and_gather(worker_pid))
    assert pids == [first] * 4, "a worker was restarted"
    assert min(kept) >= 2 * size


def test_workers_keep_their_heap_by_default_and_not_when_asked():
    with mepa.ProcessExecutor(2) as ex:
        threshold, trim = ex.submit_and_gather(malloc_env)
        assert int(threshold) == _heap.default_cap(2)
        assert int(trim) >= 1 << 40
    with mepa.ProcessExecutor(2, keep_worker_heap=False) as ex:  # another pool
        assert ex.submit_and_gather(malloc_env) == malloc_env()
        before = ex.submit_and_gather(resident)
        ex.submit_and_gather(churn, 150 * MiB)
        assert ex.submit_and_gather(free_heap) < 64 * MiB  # glibc unmapped them
        assert ex.submit_and_gather(resident) - before <= 64 * MiB


def test_the_cap_shrinks_with_the_machines_memory(monkeypatch):
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": (4 << 30) // 4096}  # 4 GiB
    monkeypatch.setattr(_heap.os, "sysconf", lambda name: pages[name])
    assert _heap.default_cap(2) == 256 * MiB  # an eighth per worker
    assert _heap.default_cap(64) == 64 * MiB  # never below one heap step
    pages["SC_PHYS_PAGES"] = (64 << 30) // 4096
    assert _heap.default_cap(2) == _heap.DEFAULT_CAP


def test_run_kept_is_a_plain_call_outside_such_workers():
    assert "MEPA_WORKER_HEAP_CAP" not in os.environ
    assert _heap.run_kept(divmod, 7, 2) == (3, 1)
    with pytest.raises(ZeroDivisionError):
        _heap.run_kept(divmod, 1, 0)
