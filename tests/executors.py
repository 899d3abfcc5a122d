"""Build every kind of executor the contract suite runs against."""

from __future__ import annotations

import mepa

EXECUTOR_KINDS = ["linear", "thread", "process"]


def make_executor(kind: str, n_workers: int) -> mepa.Executor:
    """A fresh executor of ``kind`` with ``n_workers`` workers."""
    if kind == "linear":
        return mepa.LinearExecutor(n_workers)
    if kind == "thread":
        return mepa.ThreadExecutor(n_workers)
    if kind == "process":
        return mepa.ProcessExecutor(n_workers)
    raise ValueError(f"unknown executor kind {kind!r}")
