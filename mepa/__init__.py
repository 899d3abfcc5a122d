"""mepa: typed data-parallel NumPy arrays over threads, processes and Dask clusters.

Split arrays over an executor's workers, run a function on each share, and get the results
back in the original order::

    with mepa.ProcessExecutor(4) as executor:
        alloc = executor.arrange(data, shuffle=True)
        futures = executor.distribute(task, alloc)
        result = alloc.reassemble(executor.gather(futures))

``import mepa`` is cheap: the process and Dask backends load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._allocation import Allocation, AllocationPlan, ChunkSelection, arrange, arrange_many
from ._errors import (
    AllocationError,
    BrokenExecutor,
    ExecutorShutdownError,
    MepaError,
    SerializationError,
    WorkerCrashedError,
    WorkerSpecError,
)
from ._executors._base import Executor, SubExecutor
from ._executors._futures import TaskFuture
from ._executors._local import LinearExecutor, ThreadExecutor
from ._map import map_array
from ._types import parse_shuffle, parse_weights
from ._worker import Worker

if TYPE_CHECKING:
    from ._events import EventContext
    from ._executors._dask import DaskExecutor
    from ._executors._process import ProcessExecutor, shutdown_worker_pools
    from ._progress import Progress

__version__ = "0.1.0"

__all__ = [
    "Allocation",
    "AllocationError",
    "AllocationPlan",
    "BrokenExecutor",
    "ChunkSelection",
    "DaskExecutor",
    "EventContext",
    "Executor",
    "ExecutorShutdownError",
    "LinearExecutor",
    "MepaError",
    "ProcessExecutor",
    "Progress",
    "SerializationError",
    "SubExecutor",
    "TaskFuture",
    "ThreadExecutor",
    "Worker",
    "WorkerCrashedError",
    "WorkerSpecError",
    "__version__",
    "arrange",
    "arrange_many",
    "map_array",
    "parse_shuffle",
    "parse_weights",
    "shutdown_worker_pools",
]

_LAZY = {
    "ProcessExecutor": ("._executors._process", "ProcessExecutor"),
    "DaskExecutor": ("._executors._dask", "DaskExecutor"),
    "EventContext": ("._events", "EventContext"),
    "Progress": ("._progress", "Progress"),
    "shutdown_worker_pools": ("._executors._process", "shutdown_worker_pools"),
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'mepa' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(target[0], __name__)
    value = getattr(module, target[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
