"""Functions run inside worker processes.

They live in their own small module, importing only NumPy, so every pool pickles them by
reference and a worker imports next to nothing to run them.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "LCG_STEPS",
    "FloatArray",
    "chunk_sum",
    "cpu_kernel",
    "fire_events",
    "inc",
    "loop_plain",
    "loop_with_progress",
    "memory_kernel",
    "put_events",
    "put_events_simple",
    "resident_loop",
    "set_simple_queue",
    "slow_getpid",
]

FloatArray = npt.NDArray[np.float64]

#: Steps of a linear congruential generator per element: the "tiny bit of work" of the
#: progress benchmark (about a microsecond in CPython).
LCG_STEPS = 8


def cpu_kernel(x: FloatArray) -> FloatArray:
    """``sin(x)**2 + cos(x)``: compute-bound, two transcendental ufuncs per element."""
    return np.sin(x) ** 2 + np.cos(x)


def memory_kernel(x: FloatArray) -> FloatArray:
    """``x + 1``: memory-bound, one add per 16 bytes moved."""
    return x + 1


def chunk_sum(x: FloatArray) -> float:
    """Sum of a chunk."""
    return float(np.sum(x))


def inc(i: int) -> int:
    """``i + 1``: the tiny task of the dispatch benchmark."""
    return i + 1


def slow_getpid(_: object = None) -> int:
    """PID of the worker, after 20 ms so that every worker of a pool takes a share."""
    time.sleep(0.02)
    return os.getpid()


def fire_events(arg: tuple[Any, int]) -> int:
    """Fire ``n`` events of value 1 through a mepa event context ``ctx``; ``arg = (ctx, n)``."""
    ctx, n = arg
    fire = ctx.fire
    for _ in range(n):
        fire(1)
    return n


def put_events(arg: tuple[Any, int]) -> int:
    """Put ``n`` ones on a queue (a ``Manager().Queue()`` proxy); ``arg = (queue, n)``."""
    queue, n = arg
    put = queue.put
    for _ in range(n):
        put(1)
    return n


_SIMPLE_QUEUE: Any = None


def set_simple_queue(queue: Any) -> None:
    """Pool initializer: keep the inherited ``SimpleQueue`` (it cannot be pickled to a task)."""
    global _SIMPLE_QUEUE
    _SIMPLE_QUEUE = queue


def put_events_simple(n: int) -> int:
    """Put ``n`` ones on the queue set by :func:`set_simple_queue`."""
    put = _SIMPLE_QUEUE.put
    for _ in range(n):
        put(1)
    return n


def _tiny_work(i: int) -> int:
    x = i
    for _ in range(LCG_STEPS):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    return x


def loop_plain(n: int) -> int:
    """Loop over ``n`` elements doing :data:`LCG_STEPS` steps of integer work each."""
    acc = 0
    for i in range(n):
        acc ^= _tiny_work(i)
    return acc


def loop_with_progress(arg: tuple[Any, int]) -> int:
    """:func:`loop_plain`, plus ``progress.update(1)`` per element; ``arg = (progress, n)``."""
    progress, n = arg
    update = progress.update
    acc = 0
    for i in range(n):
        acc ^= _tiny_work(i)
        update(1)
    return acc


def resident_loop(conn: Any, kernel: Any) -> None:
    """A process that keeps its own share of the data and computes on it when told to.

    Receives its share once, then for each ``True`` computes ``kernel(share)`` and answers with
    one number; stops on ``None``. Nothing but these small messages moves while it is timed:
    the parallel ceiling of the machine for ``kernel``.
    """
    share = conn.recv()
    conn.send(True)
    while conn.recv() is not None:
        out = kernel(share)
        conn.send(float(out[0]) if len(out) else 0.0)
        del out
