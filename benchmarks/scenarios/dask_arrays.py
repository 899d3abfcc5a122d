"""Scenario ``dask_arrays``: arrange, distribute, reassemble a big array on a Dask cluster.

20M float64 (160 MB) split in one chunk per worker, ``x * 2 + 1`` on each chunk, the results
put back together on the host, three ways on the same cluster (a ``LocalCluster`` of
single-thread worker processes, started by the first variant, untimed, and closed after the
last; only one variant runs on it at a time):

* mepa: ``alloc = ex.arrange(data)``, ``alloc.reassemble(ex.gather(ex.distribute(f, alloc)))``
  on ``DaskExecutor(client)``;
* by hand: ``client.scatter`` of each chunk to its worker, ``client.submit`` pinned there,
  ``client.gather``, ``np.concatenate``: what mepa should cost at most;
* dask.array: ``da.from_array(data, chunks=n // workers).map_blocks(f).compute()``.

The group has no baseline: the targets compare the medians of the blocks.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from .._harness import Group, Prepared, RunConfig, Scenario, ScenarioPlan, Variant
from .._stats import Target
from . import _common as c

__all__ = ["DASK_ARRAYS", "affine"]


def affine(x: np.ndarray) -> np.ndarray:
    """The per-chunk kernel: ``x * 2 + 1`` (memory-bound, so transfers dominate)."""
    return x * 2.0 + 1.0


def _build(config: RunConfig) -> ScenarioPlan:
    w = config.workers
    n = config.size(20_000_000, 400_000)
    shared = c.SharedDask(w)

    def data() -> np.ndarray:
        return np.random.default_rng(0).random(n)

    def expected() -> np.ndarray:
        return affine(data())

    def mepa_dask(stack: contextlib.ExitStack) -> Prepared:
        client = shared.client(stack, last=True)
        DaskExecutor = c.mepa_attr("DaskExecutor")
        ex = stack.enter_context(DaskExecutor(client))
        x = data()

        def run() -> Any:
            alloc = ex.arrange(x)
            return alloc.reassemble(ex.gather(ex.distribute(affine, alloc)))

        return Prepared(call=run, check=c.allclose_check(expected), pids=c.dask_pids(client))

    def by_hand(stack: contextlib.ExitStack) -> Prepared:
        client = shared.client(stack)
        x = data()

        def run() -> Any:
            return c.dask_scatter_submit_gather(client, affine, x)

        return Prepared(call=run, check=c.allclose_check(expected), pids=c.dask_pids(client))

    def dask_array(stack: contextlib.ExitStack) -> Prepared:
        import dask.array as da

        client = shared.client(stack)
        x = data()

        def run() -> Any:
            blocks = da.from_array(x, chunks=-(-n // w)).map_blocks(affine)
            return blocks.compute(scheduler=client)

        return Prepared(call=run, check=c.allclose_check(expected), pids=c.dask_pids(client))

    timed = "arrange (split), send, compute, fetch and reassemble; cluster started before timing"
    groups = [
        Group(
            name="dask",
            timed=timed,
            unit="rows",
            variants=(
                Variant(
                    "scatter-submit-gather",
                    "competitor",
                    by_hand,
                    f"client.scatter + client.submit + client.gather, {w}-process LocalCluster",
                    requires=("distributed",),
                    items=n,
                ),
                Variant(
                    "dask-array",
                    "competitor",
                    dask_array,
                    "dask.array.from_array(data).map_blocks(f).compute()",
                    requires=("distributed", "dask"),
                    items=n,
                ),
                Variant(
                    "mepa-dask",
                    "mepa",
                    mepa_dask,
                    "mepa DaskExecutor(client): arrange, distribute, gather, reassemble",
                    requires=("distributed",),
                    items=n,
                ),
            ),
        ),
    ]
    return ScenarioPlan(
        params={"rows": n, "dtype": "float64", "workers": w, "task": "x * 2 + 1"},
        groups=groups,
        notes=[
            (
                "No baseline: the variants run one after another on one cluster; targets "
                "compare medians."
            ),
        ],
        targets=[
            Target(
                "within 1.1x of scatter + submit + gather (time)",
                "time_ratio",
                "mepa-dask",
                1.1,
                op="<=",
                reference="scatter-submit-gather",
            ),
            Target(
                "ahead of dask.array map_blocks (time)",
                "time_ratio",
                "mepa-dask",
                1.0,
                op="<",
                reference="dask-array",
            ),
        ],
    )


DASK_ARRAYS = Scenario(
    name="dask_arrays",
    title="Dask arrays: arrange, distribute, reassemble 20M float64",
    description=(
        "The data path of a distribute on a Dask cluster, against the same steps by hand and "
        "against dask.array. Quick mode: 400,000 rows."
    ),
    build=_build,
)
