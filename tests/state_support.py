"""Initializers and tasks for the per-worker state tests (importable by worker processes)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

from mepa import worker_state


def identity() -> tuple[int, int]:
    """The calling worker: process and thread."""
    return os.getpid(), threading.get_ident()


def build(table_size: int) -> None:
    """An initializer: a lookup table, built once per worker, with a count of the builds."""
    state = worker_state()
    state["builds"] = state.get("builds", 0) + 1
    state["table"] = np.arange(table_size) ** 2
    state["built_by"] = identity()


def use(i: int) -> tuple[tuple[int, int], int, int, int]:
    """A task: reads the worker's table; says who ran it, the builds seen and the table's id."""
    time.sleep(0.005)  # long enough that every worker takes some of the tasks
    state = worker_state()
    assert state["built_by"] == identity()
    return identity(), state["builds"], id(state["table"]), int(state["table"][i % 10])


def compile_kernel() -> None:
    """An initializer: compiles a numba kernel in this worker (its first call)."""
    kernel = dipole_kernel()
    start = time.perf_counter()
    kernel(np.zeros((1, 3)), np.ones((1, 3)), np.ones(1))
    worker_state()["compile_seconds"] = time.perf_counter() - start


def signatures() -> int:
    """Signatures of the kernel compiled in this worker so far."""
    return len(dipole_kernel().signatures)


def kernel_task(receivers: np.ndarray, cells: np.ndarray, strength: np.ndarray) -> Any:
    """A task that calls the kernel and reports whether it had to compile it."""
    before = signatures()
    out = dipole_kernel()(receivers, cells, strength)
    return out, before, "compile_seconds" in worker_state()


_KERNEL: list[Any] = []


def dipole_kernel() -> Any:
    """A numba kernel (made on first use: this module must import without numba)."""
    if not _KERNEL:
        import numba

        @numba.njit(nogil=True)
        def kernel(receivers: np.ndarray, cells: np.ndarray, strength: np.ndarray) -> Any:
            out = np.zeros(receivers.shape[0])
            for i in range(receivers.shape[0]):
                for j in range(cells.shape[0]):
                    d = receivers[i] - cells[j]
                    out[i] += strength[j] / (d[0] ** 2 + d[1] ** 2 + d[2] ** 2) ** 1.5
            return out

        _KERNEL.append(kernel)
    return _KERNEL[0]
