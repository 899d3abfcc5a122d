"""Build every kind of executor the contract suite runs against, from the backend registry.

Backends that run on a cluster connect to one started once per session (the Dask kind to a
real ``dask scheduler`` with ``dask worker`` processes, see ``tests/dask_cluster.py``), stopped
by :func:`stop_test_clusters` at the end. A backend whose engine is not installed is still
listed, and its tests are skipped with the reason (how to install it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest

import mepa
from mepa._executors import BACKENDS


def _dask_address(n_workers: int) -> str:
    from .dask_cluster import shared_cluster

    return shared_cluster(n_workers).address


# kind -> (address of the session's cluster for n workers, module that keeps the clusters,
# its function that stops them): backends whose test executors share one cluster.
def _ray_address(n_workers: int) -> str:
    from .ray_cluster import shared_address

    return shared_address(n_workers)


TEST_CLUSTERS: dict[str, tuple[Callable[[int], str], str, str]] = {
    "dask": (_dask_address, "tests.dask_cluster", "stop_shared_clusters"),
    "ray": (_ray_address, "tests.ray_cluster", "stop_shared_ray"),
}


def _param(kind: str) -> Any:
    entry = BACKENDS[kind]
    marks = [pytest.mark.skipif(not entry.available(), reason=entry.missing())]
    if kind == "ray":
        marks.append(pytest.mark.ray)
    return pytest.param(kind, marks=marks, id=kind)


EXECUTOR_KINDS = [_param(kind) for kind in BACKENDS]


def make_executor(kind: str, n_workers: int) -> mepa.Executor:
    """A fresh executor of ``kind`` with ``n_workers`` workers."""
    entry = BACKENDS[kind]
    cluster = TEST_CLUSTERS.get(kind)
    if cluster is None:
        return entry.create(n_workers)
    address = cluster[0](n_workers)
    return entry.load()(address, n_workers=None if kind == "dask" else n_workers)


def stop_test_clusters() -> None:
    """Stop the clusters the session started (those whose module was imported)."""
    for _, module, stop in TEST_CLUSTERS.values():
        loaded = sys.modules.get(module)
        if loaded is not None:
            getattr(loaded, stop)()
