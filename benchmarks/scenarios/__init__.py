"""The benchmark scenarios, in the order a run executes them."""

from __future__ import annotations

from .._harness import Scenario
from .dask_arrays import DASK_ARRAYS
from .demo import DEMO
from .dispatch import DISPATCH
from .events import EVENTS
from .maps import CPU_MAP, MEMORY_MAP
from .numba_kernel import NUMBA_KERNEL
from .shuffled_map import SHUFFLED_MAP
from .startup import STARTUP

__all__ = ["SCENARIOS"]

#: Every scenario by name, in run order.
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        CPU_MAP, MEMORY_MAP, SHUFFLED_MAP, DISPATCH, DASK_ARRAYS, EVENTS, STARTUP, DEMO,
        NUMBA_KERNEL,
    )
}
