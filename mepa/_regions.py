"""Results made where they belong: a NumPy memory handler over a result's region.

A distributed chunk's result ends up in its rows of one output buffer (shared memory for
process workers, pooled memory for threads), where :meth:`~mepa.Allocation.reassemble` finds
adjacent views and copies nothing. Copying each result there costs a pass over it; instead,
while the task runs, a :class:`mepa._inplace.Region` (C extension, NEP 49 memory handler)
gives the region to the first array of exactly its size that the task creates. When the task
returns that array, it already is where it belongs.

The extension is optional: without it :func:`region_over` returns ``None`` and results are
copied.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ._inplace import Region

__all__ = ["occupies", "region_over"]


def region_over(buffer: Any) -> Region | None:
    """A region handler over ``buffer`` (writable, C-contiguous), or ``None`` if unavailable.

    ``None`` also for an empty buffer (an empty chunk's region: nothing to allocate there).
    An array of any dtype is taken as its bytes (the buffer protocol refuses datetimes).
    """
    if isinstance(buffer, np.ndarray):
        buffer = buffer.reshape(-1).view(np.uint8)
    if not memoryview(buffer).nbytes:
        return None
    try:
        from ._inplace import Region
    except ImportError:
        return None
    return Region(buffer)


def occupies(array: Any, region: Region) -> bool:
    """Whether ``array`` is the array that ``region`` was handed to."""
    kind = type(array)
    return (
        kind.__module__ == "numpy"
        and kind.__name__ == "ndarray"
        and not array.dtype.hasobject  # object pointers: they must not outlive their owner
        and array.nbytes == region.size
        and array.flags.owndata
        and array.flags.c_contiguous
        and array.__array_interface__["data"][0] == region.address
    )
