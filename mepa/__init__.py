"""mepa: typed data-parallel NumPy arrays over threads, processes and Dask clusters.

Split arrays over an executor's workers, run a function on each share, and get the results
back in the original order::

    with mepa.ProcessExecutor(4) as executor:
        alloc = executor.arrange(data, shuffle=True)
        futures = executor.distribute(task, alloc)
        result = alloc.reassemble(executor.gather(futures))

``import mepa`` is cheap: every name but the errors loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import (
    AllocationError,
    ArgumentTypeError,
    BrokenExecutor,
    CallbackReentryError,
    ChunkIndexError,
    ClusterSpecError,
    EventChannelError,
    ExecutorShutdownError,
    GatherTimeoutError,
    InitializerError,
    InvalidArgumentError,
    MepaError,
    SerializationError,
    WorkerCrashedError,
    WorkerSpecError,
)

if TYPE_CHECKING:
    from ._allocation import Allocation, arrange, arrange_many
    from ._chunking import ChunkSelection
    from ._events import EventContext
    from ._executors._base import Executor, MapIterator, SubExecutor
    from ._executors._dask import DaskExecutor
    from ._executors._futures import TaskFuture
    from ._executors._local import LinearExecutor, ThreadExecutor
    from ._executors._process import ProcessExecutor, shutdown_worker_pools
    from ._map import map_array
    from ._plan import AllocationPlan
    from ._progress import Progress
    from ._state import warm_up, worker_state
    from ._types import parse_shuffle, parse_weights
    from ._worker import Worker

__version__ = "0.1.0"

__all__ = [
    "Allocation",
    "AllocationError",
    "AllocationPlan",
    "ArgumentTypeError",
    "BrokenExecutor",
    "CallbackReentryError",
    "ChunkIndexError",
    "ChunkSelection",
    "ClusterSpecError",
    "DaskExecutor",
    "EventChannelError",
    "EventContext",
    "Executor",
    "ExecutorShutdownError",
    "GatherTimeoutError",
    "InitializerError",
    "InvalidArgumentError",
    "LinearExecutor",
    "MapIterator",
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
    "warm_up",
    "worker_state",
]

# Everything but the errors loads on first use, so that ``import mepa`` is cheap and so that
# worker processes, which import mepa's task wrappers, do not pay for what they do not run.
_LAZY = {
    "Allocation": "._allocation",
    "AllocationPlan": "._plan",
    "ChunkSelection": "._chunking",
    "arrange": "._allocation",
    "arrange_many": "._allocation",
    "EventContext": "._events",
    "Executor": "._executors._base",
    "SubExecutor": "._executors._base",
    "MapIterator": "._executors._base",
    "DaskExecutor": "._executors._dask",
    "TaskFuture": "._executors._futures",
    "LinearExecutor": "._executors._local",
    "ThreadExecutor": "._executors._local",
    "ProcessExecutor": "._executors._process",
    "shutdown_worker_pools": "._executors._process",
    "map_array": "._map",
    "Progress": "._progress",
    "parse_shuffle": "._types",
    "parse_weights": "._types",
    "Worker": "._worker",
    "warm_up": "._state",
    "worker_state": "._state",
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        # Executor classes of the backend registry (e.g. optional backends) by class name.
        from ._executors import BACKENDS

        for entry in BACKENDS.values():
            if entry.class_name == name:
                value = entry.load()
                globals()[name] = value
                return value
        raise AttributeError(f"module 'mepa' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(target, __name__)
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
