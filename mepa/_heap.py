"""The heap of process workers: keep freed memory while busy, return it when idle.

NumPy allocates every large temporary afresh. With glibc's default settings, ``malloc``
serves such an allocation (above an adaptive threshold of at most 32 MiB) with a new
mapping and unmaps it on ``free``, so each temporary's pages are faulted in and zeroed by
the kernel again: in ``sin(x)**2 + cos(x)`` over 10M float64, 180 ms with fresh pages
against 154 ms with reused ones, here. Process workers therefore start with malloc
settings (environment variables, read by glibc at startup) that serve allocations below
:data:`DEFAULT_CAP` from the heap and never give freed heap memory back on their own, and
this module bounds what they keep::

    task ends ── more than `cap` bytes free in the heap? ── yes ─▶ malloc_trim(0) now
                                                          └─ no ──▶ trim after IDLE_DELAY s
    next task starts before that ─▶ the idle trim is called off

So a busy worker reuses its memory from one task to the next, and an idle one holds it for
:data:`IDLE_DELAY` seconds at most (jemalloc's default decay of unused pages is of the same
order, 10 s). Allocations of ``cap`` bytes or more are still mapped and unmapped afresh.

loky restarts a worker whose resident memory grew by 300 MB between tasks (its leak guard,
``loky.process_executor._MAX_MEMORY_LEAK_SIZE``); memory kept for reuse would look like such
a leak, so workers with a kept heap raise that limit by ``cap``.

Only glibc exposes what this needs (``mallinfo2`` and ``malloc_trim``, glibc >= 2.33);
elsewhere :func:`worker_env` returns nothing and workers keep the allocator's defaults.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "DEFAULT_CAP",
    "IDLE_DELAY",
    "default_cap",
    "free_bytes",
    "run_kept",
    "supported",
    "worker_env",
]

T = TypeVar("T")

#: Most free heap memory a worker keeps between tasks (bytes); fewer on small machines.
DEFAULT_CAP = 512 << 20
#: Seconds a worker keeps its free heap memory after its last task.
IDLE_DELAY = 10.0

# The host's settings, read by workers from their environment.
_ENV_CAP = "MEPA_WORKER_HEAP_CAP"
_ENV_DELAY = "MEPA_WORKER_HEAP_IDLE"
# Grow the heap in steps of this much (untouched pages cost nothing).
_TOP_PAD = 64 << 20
# loky's own limit, used when its module does not say.
_LOKY_LEAK_LIMIT = 300_000_000


class _Glibc:
    """The two glibc functions used here."""

    def __init__(self, lib: Any) -> None:
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [
                (name, ctypes.c_size_t)
                for name in (
                    "arena", "ordblks", "smblks", "hblks", "hblkhd",
                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
                )
            ]

        self._mallinfo2 = lib.mallinfo2
        self._mallinfo2.argtypes = []
        self._mallinfo2.restype = MallInfo2
        self._trim = lib.malloc_trim
        self._trim.argtypes = [ctypes.c_size_t]
        self._trim.restype = ctypes.c_int

    def free_bytes(self) -> int:
        """Bytes free in the heap: in bins and at its top, not returned to the system."""
        return int(self._mallinfo2().fordblks)

    def trim(self) -> None:
        """Return every free page of the heap to the system."""
        self._trim(0)


@functools.cache
def _glibc() -> _Glibc | None:
    if not hasattr(os, "confstr"):
        return None
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return None
    if not version.startswith("glibc"):
        return None
    import ctypes
    import ctypes.util

    try:
        return _Glibc(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"))
    except (OSError, AttributeError):  # no libc to load, or glibc < 2.33 (no mallinfo2)
        return None


def supported() -> bool:
    """Whether workers here can keep their heap (glibc >= 2.33)."""
    return _glibc() is not None


def free_bytes() -> int | None:
    """Bytes free in this process's heap, or ``None`` when that cannot be read."""
    glibc = _glibc()
    return None if glibc is None else glibc.free_bytes()


def default_cap(n_workers: int) -> int:
    """:data:`DEFAULT_CAP`, or an eighth of the machine's memory per worker if less."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return DEFAULT_CAP
    return max(_TOP_PAD, min(DEFAULT_CAP, memory // (8 * max(1, n_workers))))


def worker_env(n_workers: int) -> dict[str, str]:
    """Environment variables for workers that keep their heap; empty where unsupported.

    Parameters
    ----------
    n_workers
        Size of the pool, which bounds the memory each worker may keep.
    """
    if not supported():
        return {}
    cap = default_cap(n_workers)
    return {
        "MALLOC_MMAP_THRESHOLD_": str(cap),
        "MALLOC_TRIM_THRESHOLD_": str(1 << 62),
        "MALLOC_TOP_PAD_": str(_TOP_PAD),
        _ENV_CAP: str(cap),
        _ENV_DELAY: repr(float(IDLE_DELAY)),
    }


class _Keeper:
    """In a worker: trims the heap at the end of a task past ``cap``, or when idle."""

    def __init__(self, glibc: _Glibc, cap: int, delay: float) -> None:
        self._glibc = glibc
        self._cap = cap
        self._delay = delay
        self._cond = threading.Condition(threading.Lock())
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None

    def task_started(self) -> None:
        with self._cond:
            self._deadline = None

    def task_ended(self) -> None:
        free = self._glibc.free_bytes()
        if free > self._cap:
            self._glibc.trim()
            return
        if free <= _TOP_PAD:
            return  # nothing worth a trim
        with self._cond:
            self._deadline = time.monotonic() + self._delay
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="mepa-heap", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._deadline is None:
                        self._cond.wait()
                        continue
                    left = self._deadline - time.monotonic()
                    if left <= 0:
                        self._deadline = None
                        break
                    self._cond.wait(left)
            self._glibc.trim()


@functools.cache
def _keeper() -> _Keeper | None:
    """This worker's keeper, if its host started it with a kept heap."""
    cap = os.environ.get(_ENV_CAP)
    glibc = _glibc()
    if cap is None or glibc is None:
        return None
    try:
        keeper = _Keeper(glibc, int(cap), float(os.environ.get(_ENV_DELAY, IDLE_DELAY)))
    except ValueError:
        return None
    _raise_leak_limit(int(cap))
    return keeper


def _raise_leak_limit(cap: int) -> None:
    """Let loky's leak guard in this worker allow for ``cap`` bytes kept for reuse."""
    try:
        from loky import process_executor
    except ImportError:  # not a loky worker
        return
    limit = getattr(process_executor, "_MAX_MEMORY_LEAK_SIZE", None)
    if isinstance(limit, int):
        process_executor._MAX_MEMORY_LEAK_SIZE = max(limit, _LOKY_LEAK_LIMIT + cap)


def run_kept(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a worker, keeping its heap within bounds.

    A plain call in processes not started with :func:`worker_env`.
    """
    keeper = _keeper()
    if keeper is None:
        return fn(*args, **kwargs)
    keeper.task_started()
    try:
        return fn(*args, **kwargs)
    finally:
        keeper.task_ended()
