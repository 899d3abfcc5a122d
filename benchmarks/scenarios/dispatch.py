"""Scenario ``dispatch``: many tiny tasks, where per-task overhead is all there is.

10,000 calls of ``inc(i) = i + 1`` through each library's own map, results in order. The
rate (tasks/s) is the number to read. The baseline of the process pools is loky with a tuned
chunksize, the reference of the target: every other variant is timed in pairs with it (an
idle loky pool takes no measurable CPU time). A second group compares mepa's DaskExecutor.map
with plain ``client.map`` + ``client.gather`` (one Dask task per item); it has no baseline,
since pairing would keep one idle Dask cluster running next to the other.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

from .._harness import Group, Prepared, RunConfig, Scenario, ScenarioPlan, Variant
from .._stats import Target
from . import _common as c
from . import _kernels as k

__all__ = ["DISPATCH", "tune_chunksize"]


def tune_chunksize(run: Any, n: int, workers: int) -> tuple[int, dict[int, float]]:
    """Pick loky's fastest ``chunksize`` for ``n`` items by timing one map per candidate.

    Parameters
    ----------
    run
        ``run(chunksize)`` maps the items once.
    n, workers
        Items and workers, to derive the candidates.

    Returns
    -------
    best : int
        The fastest candidate.
    timings : dict
        Seconds per candidate (untimed setup: reported as a note).
    """
    candidates = sorted(
        {16, 64, 256, max(1, math.ceil(n / (8 * workers))), max(1, math.ceil(n / workers))}
    )
    timings: dict[int, float] = {}
    for chunksize in candidates:
        t0 = time.perf_counter()
        run(chunksize)
        timings[chunksize] = time.perf_counter() - t0
    best = min(timings, key=timings.__getitem__)
    return best, timings


def _build(config: RunConfig) -> ScenarioPlan:
    w = config.workers
    n = config.size(10_000, 2_000)
    n_dask = config.size(10_000, 200)
    items = list(range(n))
    expected = [i + 1 for i in items]
    dask_items = list(range(n_dask))
    dask_expected = [i + 1 for i in dask_items]
    probe = range(c.probe_count(w))

    def serial(stack: contextlib.ExitStack) -> Prepared:
        return Prepared(call=lambda: [k.inc(i) for i in items], check=c.equal_check(expected))

    def mepa_map(kind: str, values: list[int]) -> Callable[[contextlib.ExitStack], Prepared]:
        """``list(ex.map(inc, values))`` on a mepa executor of ``kind``."""

        def setup(stack: contextlib.ExitStack) -> Prepared:
            ex = c.mepa_executor(stack, kind, w)
            return Prepared(
                call=lambda: list(ex.map(k.inc, values)),
                check=c.equal_check([i + 1 for i in values]),
                pids=c.mepa_pids(ex, w),
            )

        return setup

    def loky(stack: contextlib.ExitStack) -> Prepared:
        ex = c.loky_executor(stack, w)
        list(ex.map(k.inc, items[:w]))  # start the workers before tuning
        best, timings = tune_chunksize(lambda cs: list(ex.map(k.inc, items, chunksize=cs)), n, w)
        shown = ", ".join(f"{cs}: {t * 1e3:.0f} ms" for cs, t in timings.items())
        return Prepared(
            call=lambda: list(ex.map(k.inc, items, chunksize=best)),
            check=c.equal_check(expected),
            pids=lambda: list(ex.map(k.slow_getpid, probe)),
            note=f"chunksize={best}, tuned over one untimed map each ({shown})",
        )

    def joblib(stack: contextlib.ExitStack) -> Prepared:
        from joblib import delayed

        par = c.joblib_parallel(stack, w)
        return Prepared(
            call=lambda: par(delayed(k.inc)(i) for i in items),
            check=c.equal_check(expected),
            pids=lambda: par(delayed(k.slow_getpid)(i) for i in probe),
        )

    def mpire(stack: contextlib.ExitStack) -> Prepared:
        pool = c.mpire_pool(stack, w)
        return Prepared(
            call=lambda: pool.map(k.inc, items),
            check=c.equal_check(expected),
            pids=lambda: pool.map(k.slow_getpid, probe),
        )

    def dask_client_map(stack: contextlib.ExitStack) -> Prepared:
        client = c.dask_client(stack, w)

        def run() -> list[Any]:
            futures = client.map(k.inc, dask_items, pure=False)
            return client.gather(futures)  # type: ignore[no-any-return]

        return Prepared(call=run, check=c.equal_check(dask_expected), pids=c.dask_pids(client))

    def ray_by_hand(stack: contextlib.ExitStack) -> Prepared:
        import ray

        c.ray_session(stack, w)
        remote = ray.remote(num_cpus=1)(k.inc)
        return Prepared(
            call=lambda: ray.get([remote.remote(i) for i in dask_items]),
            check=c.equal_check(dask_expected),
        )

    def mepa_dask(stack: contextlib.ExitStack) -> Prepared:
        ex = c.mepa_executor(stack, "dask", w)
        return Prepared(
            call=lambda: list(ex.map(k.inc, dask_items)), check=c.equal_check(dask_expected)
        )

    timed = "one map of all items, results collected in order; pools started before timing"
    groups = [
        Group(
            name="process pools",
            timed=timed,
            baseline="loky-tuned",
            unit="tasks",
            variants=(
                Variant("serial", "serial", serial, "list comprehension", items=n),
                Variant(
                    "mepa-process",
                    "mepa",
                    mepa_map("process", items),
                    f"mepa ProcessExecutor({w}).map",
                    items=n,
                ),
                Variant(
                    "loky-tuned",
                    "competitor",
                    loky,
                    "loky executor.map(fn, items, chunksize=tuned)",
                    requires=("loky",),
                    items=n,
                ),
                Variant(
                    "joblib",
                    "competitor",
                    joblib,
                    f"joblib Parallel(n_jobs={w})(delayed(fn)(i) ...), auto batching",
                    requires=("joblib",),
                    items=n,
                ),
                Variant(
                    "mpire",
                    "competitor",
                    mpire,
                    f"mpire WorkerPool({w}).map, default chunk size",
                    requires=("mpire",),
                    items=n,
                ),
            ),
        ),
        Group(
            name="dask",
            timed=timed,
            unit="tasks",
            variants=(
                Variant(
                    "dask-client-map",
                    "competitor",
                    dask_client_map,
                    f"client.map + client.gather, {w}-process LocalCluster, one task per item",
                    requires=("distributed",),
                    items=n_dask,
                ),
                Variant(
                    "mepa-dask",
                    "mepa",
                    mepa_dask,
                    f"mepa DaskExecutor(n_workers={w}).map, embedded LocalCluster",
                    items=n_dask,
                ),
            ),
        ),
        Group(
            name="ray",
            timed=timed,
            baseline="ray-by-hand",
            unit="tasks",
            variants=(
                Variant(
                    "ray-by-hand",
                    "competitor",
                    ray_by_hand,
                    "ray.get([f.remote(i) for i in items]), @ray.remote f, one task per item",
                    requires=("ray",),
                    items=n_dask,
                ),
                Variant(
                    "mepa-ray",
                    "mepa",
                    mepa_map("ray", dask_items),
                    f"mepa RayExecutor(n_workers={w}).map on the same local Ray",
                    requires=("ray",),
                    items=n_dask,
                ),
            ),
        ),
    ]
    return ScenarioPlan(
        params={"items": n, "dask_items": n_dask, "workers": w, "task": "inc(i) = i + 1"},
        groups=groups,
        notes=[
            (
                "Speedups in the process pools group are against loky with a tuned chunksize, "
                "timed in pairs with each variant."
            ),
            (
                "The Dask group has no baseline: each variant runs with its own cluster alone, "
                "and the target compares the medians of the two blocks."
            ),
            (
                "The Ray group maps the Dask group's items on one local Ray: mepa's "
                "RayExecutor timed in pairs with Ray's own one task per item; skipped when Ray "
                "is not installed."
            ),
        ],
        targets=[
            Target(">= 1M tasks/s", "rate", "mepa-process", 1e6),
            Target(
                "within 1.25x of loky tuned (time)",
                "time_ratio",
                "mepa-process",
                1.25,
                op="<=",
                reference="loky-tuned",
            ),
            Target(
                "Dask: >= 20x client.map",
                "speedup",
                "mepa-dask",
                20.0,
                reference="dask-client-map",
            ),
        ],
    )


DISPATCH = Scenario(
    name="dispatch",
    title="Dispatch: 10,000 tiny tasks",
    description=(
        "Per-task overhead of map with a trivial function: batching decides everything. "
        "Dask group: fewer items in quick mode."
    ),
    build=_build,
)
