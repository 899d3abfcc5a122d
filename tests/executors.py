"""Build every kind of executor the contract suite runs against.

The Dask kind connects to a real ``dask scheduler`` with ``dask worker`` processes started
once per session (see ``tests/dask_cluster.py``), stopped by PID at the end.
"""

from __future__ import annotations

import mepa

EXECUTOR_KINDS = ["linear", "thread", "process", "dask"]


def make_executor(kind: str, n_workers: int) -> mepa.Executor:
    """A fresh executor of ``kind`` with ``n_workers`` workers."""
    if kind == "linear":
        return mepa.LinearExecutor(n_workers)
    if kind == "thread":
        return mepa.ThreadExecutor(n_workers)
    if kind == "process":
        return mepa.ProcessExecutor(n_workers)
    if kind == "dask":
        from .dask_cluster import shared_cluster

        return mepa.DaskExecutor(shared_cluster(n_workers).address)
    raise ValueError(f"unknown executor kind {kind!r}")
