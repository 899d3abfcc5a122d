"""Threads inside a worker: one per worker unless asked.

A worker of mepa is one lane of parallel work, sized to a core. Libraries that start threads of
their own inside it (OpenMP, OpenBLAS, MKL, BLIS, Apple Accelerate, numexpr, numba's
``parallel=True`` loops) would, left to their defaults, each start one thread per core in every
worker: ``n`` workers on ``n`` cores would run ``n * n`` threads, which fight for the cores and
for the caches. So every executor gives each worker **one thread** of each library, unless asked
for more::

    ProcessExecutor, embedded Dask cluster ── worker environment, set before the worker starts:
        OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS, BLIS_NUM_THREADS,
        VECLIB_MAXIMUM_THREADS, NUMEXPR_NUM_THREADS, NUMBA_NUM_THREADS = inner_threads
    ThreadExecutor ── numba.set_num_threads(inner_threads) in each pool thread (numba's count is
        per thread); the BLAS pools are per process and are left alone (see ThreadExecutor)

A variable the host's own environment already sets is passed on unchanged: running
``NUMBA_NUM_THREADS=2 python script.py`` asks for two numba threads per worker, as the executor's
``inner_threads=2`` does.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ._errors import WorkerSpecError

__all__ = ["THREAD_VARIABLES", "check_inner_threads", "run_limited", "thread_env"]

T = TypeVar("T")

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)
"""Environment variables that bound the threads of the numerical libraries in a worker."""


def check_inner_threads(value: object) -> int | None:
    """Validate an executor's ``inner_threads``: a positive int, or ``None``.

    Raises
    ------
    WorkerSpecError
        For anything else (also a ``ValueError``).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WorkerSpecError(
            f"inner_threads must be a positive int or None, got {value!r}; pass 1 (the "
            "default: one thread of OpenMP, BLAS and numba per worker), the threads each "
            "worker may use, or None to leave the libraries' own defaults"
        )
    return value


def thread_env(
    inner_threads: int | None = 1, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The thread-count variables for workers, as ``{name: value}``.

    Parameters
    ----------
    inner_threads
        Threads each library may start in a worker; ``None`` returns ``{}`` (libraries keep
        their defaults).
    environ
        The host's environment (default ``os.environ``): a variable it sets is kept as it is.

    Examples
    --------
    >>> thread_env(1, environ={})["NUMBA_NUM_THREADS"]
    '1'
    >>> thread_env(2, environ={"OMP_NUM_THREADS": "4"})["OMP_NUM_THREADS"]
    '4'
    >>> thread_env(None)
    {}
    """
    if inner_threads is None:
        return {}
    host = os.environ if environ is None else environ
    return {name: host.get(name, str(inner_threads)) for name in THREAD_VARIABLES}


_local = threading.local()


def run_limited(inner_threads: int | None, fn: Callable[..., T], /, *args: Any,
                **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a pool thread, numba limited to ``inner_threads`` there.

    numba's thread count is a per-thread setting; it is set once per thread, as soon as numba
    has been imported (by the task or before it), so numba is never imported here.
    """
    if inner_threads is not None and getattr(_local, "numba_threads", None) is None:
        _limit_numba(inner_threads)
    try:
        return fn(*args, **kwargs)
    finally:
        if inner_threads is not None and getattr(_local, "numba_threads", None) is None:
            _limit_numba(inner_threads)  # numba was imported by this task


def _limit_numba(inner_threads: int) -> None:
    numba = sys.modules.get("numba")
    if numba is None:
        return
    configured = int(getattr(getattr(numba, "config", None), "NUMBA_NUM_THREADS", 1))
    env = os.environ.get("NUMBA_NUM_THREADS")
    count = min(configured, int(env) if env and env.isdigit() else inner_threads)
    numba.set_num_threads(max(1, count))
    _local.numba_threads = count
