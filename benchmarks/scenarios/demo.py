"""Scenario ``demo``: the computations of ``mepa._demo``, against joblib doing the same.

``magnetic`` is the demo's forward model (total-field anomaly of a dipping slab, with adaptive
refinement near the body, so the cost per receiver varies across the grid) at the demo's
default size: serial, mepa (``arrange(shuffle=True)`` / ``distribute`` / ``reassemble`` on a
ProcessExecutor) and joblib over the same seeded permutation. ``pi`` is a small Monte Carlo
through ``map``. Each :class:`DemoCase` names the function of ``mepa._demo`` it needs; if it is
missing the mepa variant is skipped with a note and the serial and joblib variants still run.

Wiring a new demo function
--------------------------
Add a :class:`DemoCase` to :data:`CASES`: ``mepa_call(demo_module, executor, params)`` calls
the demo function (adapt to its real signature), ``serial(params)`` and
``joblib_call(parallel, params)`` compute the same result; ``same(a, b)`` compares results.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._harness import Group, Prepared, RunConfig, Scenario, ScenarioPlan, Variant
from . import _common as c

__all__ = ["CASES", "DEMO", "DemoCase", "pi_chunk"]

DEMO_MODULE = "mepa._demo"


def pi_chunk(seed: int, n: int) -> int:
    """Points of ``n`` uniform samples in the unit square that fall in the quarter disc."""
    xy = np.random.default_rng(seed).random((n, 2))
    return int(np.count_nonzero((xy**2).sum(axis=1) <= 1.0))


def _pi_serial(p: dict[str, int]) -> float:
    hits = sum(pi_chunk(s, p["per_chunk"]) for s in range(p["chunks"]))
    return 4.0 * hits / (p["chunks"] * p["per_chunk"])


def _pi_joblib(parallel: Any, p: dict[str, int]) -> float:
    from joblib import delayed

    hits: int = sum(parallel(delayed(pi_chunk)(s, p["per_chunk"]) for s in range(p["chunks"])))
    return 4.0 * hits / (p["chunks"] * p["per_chunk"])


def _pi_dask(client: Any, p: dict[str, int]) -> float:
    futures = client.map(pi_chunk, range(p["chunks"]), [p["per_chunk"]] * p["chunks"], pure=False)
    hits: int = sum(client.gather(futures))
    return 4.0 * hits / (p["chunks"] * p["per_chunk"])


def _pi_mepa(demo: Any, ex: Any, p: dict[str, int]) -> float:
    del demo  # the same Monte Carlo kernel, through mepa's map
    hits = sum(ex.map(pi_chunk, range(p["chunks"]), [p["per_chunk"]] * p["chunks"]))
    return 4.0 * hits / (p["chunks"] * p["per_chunk"])


_PROBLEMS: dict[int, Any] = {}


def _problem(p: dict[str, int]) -> Any:
    """The demo's magnetic problem at size ``p["size"]`` (0 small, 1 default), built once."""
    key = p["size"]
    if key not in _PROBLEMS:
        from mepa._demo import make_problem

        _PROBLEMS[key] = make_problem("small" if key == 0 else "default")
    return _PROBLEMS[key]


def _magnetic_serial(p: dict[str, int]) -> object:
    return _problem(p).forward()


def _magnetic_joblib(parallel: Any, p: dict[str, int]) -> object:
    from joblib import delayed

    from mepa._demo import forward

    prob = _problem(p)
    # The same load balancing as mepa's: a seeded permutation, one chunk per worker.
    order = np.random.default_rng(0).permutation(len(prob.receivers))
    chunks = np.array_split(order, p["workers"])
    parts = parallel(
        delayed(forward)(
            prob.receivers[rows], prob.cells, prob.moments, direction=prob.direction,
            cell_size=prob.cell_size,
        )
        for rows in chunks
    )
    out = np.empty(len(prob.receivers))
    for rows, part in zip(chunks, parts, strict=True):
        out[rows] = part
    return out


def _magnetic_dask(client: Any, p: dict[str, int]) -> object:
    from mepa._demo import forward

    prob = _problem(p)
    order = np.random.default_rng(0).permutation(len(prob.receivers))
    chunks = np.array_split(order, p["workers"])
    # The shared inputs placed on the cluster once per call, not once per task. (Not with
    # broadcast=True: distributed 2026.8's scheduler fails to serialize its reply and drops the
    # client.)
    cells, moments = client.scatter([prob.cells, prob.moments], hash=False)
    futures = [
        client.submit(
            forward, prob.receivers[rows], cells, moments, direction=prob.direction,
            cell_size=prob.cell_size, pure=False,
        )
        for rows in chunks
    ]
    out = np.empty(len(prob.receivers))
    for rows, part in zip(chunks, client.gather(futures), strict=True):
        out[rows] = part
    return out


def _magnetic_mepa(demo: Any, ex: Any, p: dict[str, int]) -> object:
    prob = _problem(p)
    alloc = ex.arrange(prob.receivers, shuffle=True)
    futures = ex.distribute(
        demo.forward_task, alloc, prob.cells, prob.moments, prob.direction, prob.cell_size
    )
    return alloc.reassemble(ex.gather(futures))


def _same_field(a: object, b: object) -> bool:
    return bool(np.allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-9))


@dataclass(frozen=True)
class DemoCase:
    """One demo computation, in its mepa, serial and joblib forms.

    Parameters
    ----------
    name
        Variant name prefix.
    function
        Name of the function in ``mepa._demo``.
    params
        ``params(config)`` gives the sizes (quick or full).
    serial, joblib_call, mepa_call, dask_call
        The implementations; ``dask_call(client, params)`` is the computation written by hand
        with Dask futures (mepa's own runs on ``DaskExecutor`` through ``mepa_call``).
    same
        Whether two results agree (Monte Carlo results may differ by seed handling).
    """

    name: str
    function: str
    params: Callable[[RunConfig], dict[str, int]]
    serial: Callable[[dict[str, int]], object]
    joblib_call: Callable[[Any, dict[str, int]], object]
    mepa_call: Callable[[Any, Any, dict[str, int]], object]
    same: Callable[[object, object], bool]
    dask_call: Callable[[Any, dict[str, int]], object]


CASES: tuple[DemoCase, ...] = (
    DemoCase(
        name="magnetic",
        function="forward_task",
        params=lambda cfg: {"size": cfg.size(1, 0), "workers": cfg.workers},
        serial=_magnetic_serial,
        joblib_call=_magnetic_joblib,
        mepa_call=_magnetic_mepa,
        same=_same_field,
        dask_call=_magnetic_dask,
    ),
    DemoCase(
        name="pi",
        function="forward_task",
        params=lambda cfg: {"chunks": 16, "per_chunk": cfg.size(2_000_000, 20_000)},
        serial=_pi_serial,
        joblib_call=_pi_joblib,
        mepa_call=_pi_mepa,
        same=lambda a, b: abs(float(a) - float(b)) < 0.05,  # type: ignore[arg-type]
        dask_call=_pi_dask,
    ),
)


def _demo_module() -> tuple[Any, str | None]:
    try:
        return importlib.import_module(DEMO_MODULE), None
    except ImportError as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _build(config: RunConfig) -> ScenarioPlan:
    w = config.workers
    demo, error = _demo_module()
    notes = []
    if demo is None:
        notes.append(f"{DEMO_MODULE} not importable, mepa variants skipped ({error})")
    groups = []
    params: dict[str, object] = {"workers": w}
    shared: c.SharedDask | None = None
    for case in CASES:
        p = case.params(config)
        params[case.name] = p
        reference: dict[str, object] = {}
        # The two Dask variants of a case share one embedded cluster (its last one closes it);
        # in quick mode one cluster serves every case (fewer starts, a few seconds each).
        if shared is None or not config.quick:
            shared = c.SharedDask(w, embedded=True)
        last = case is CASES[-1] or not config.quick

        def check(
            out: object,
            case: DemoCase = case,
            p: dict[str, int] = p,
            reference: dict[str, object] = reference,
        ) -> None:
            if "value" not in reference:
                reference["value"] = case.serial(p)
            if not case.same(out, reference["value"]):
                raise AssertionError(f"result {out!r} differs from serial {reference['value']!r}")

        # Every closure binds this iteration's case, sizes and check (the loop moves on).
        def serial(
            stack: contextlib.ExitStack, case: DemoCase = case, p: dict[str, int] = p,
            check: Callable[[object], None] = check,
        ) -> Prepared:
            return Prepared(call=lambda: case.serial(p), check=check)

        def joblib(
            stack: contextlib.ExitStack, case: DemoCase = case, p: dict[str, int] = p,
            check: Callable[[object], None] = check,
        ) -> Prepared:
            par = c.joblib_parallel(stack, w)
            return Prepared(call=lambda: case.joblib_call(par, p), check=check)

        def mepa(
            stack: contextlib.ExitStack, case: DemoCase = case, p: dict[str, int] = p,
            check: Callable[[object], None] = check, kind: c.MepaKind = "process",
        ) -> Prepared:
            fn = getattr(demo, case.function)  # AttributeError: recorded as a failure
            del fn
            ex = c.mepa_executor(stack, kind, w)
            return Prepared(call=lambda: case.mepa_call(demo, ex, p), check=check)

        def mepa_dask(
            stack: contextlib.ExitStack, case: DemoCase = case, p: dict[str, int] = p,
            check: Callable[[object], None] = check, shared: c.SharedDask = shared,
        ) -> Prepared:
            getattr(demo, case.function)  # AttributeError: recorded as a failure
            ex = shared.executor(stack)
            return Prepared(call=lambda: case.mepa_call(demo, ex, p), check=check)

        def dask(
            stack: contextlib.ExitStack, case: DemoCase = case, p: dict[str, int] = p,
            check: Callable[[object], None] = check, shared: c.SharedDask = shared,
            last: bool = last,
        ) -> Prepared:
            client = shared.client(stack, last=last)
            return Prepared(call=lambda: case.dask_call(client, p), check=check)

        # A missing demo module skips the mepa variant (through ``requires``) with a note.
        variants = (
            Variant(f"{case.name}-serial", "serial", serial, "NumPy, one chunk after another"),
            Variant(
                f"{case.name}-mepa",
                "mepa",
                mepa,
                (
                    f"{DEMO_MODULE}.{case.function} on ProcessExecutor({w})"
                    if case.name == "magnetic"
                    else f"the same kernel through ProcessExecutor({w}).map"
                ),
                requires=(DEMO_MODULE,),
            ),
            Variant(
                f"{case.name}-mepa-thread",
                "mepa",
                functools.partial(mepa, kind="thread"),
                (
                    f"{DEMO_MODULE}.{case.function} on ThreadExecutor({w})"
                    if case.name == "magnetic"
                    else f"the same kernel through ThreadExecutor({w}).map"
                ),
                requires=(DEMO_MODULE,),
            ),
            Variant(
                f"{case.name}-joblib",
                "competitor",
                joblib,
                f"joblib Parallel(n_jobs={w}), same chunks",
                requires=("joblib",),
            ),
            Variant(
                f"{case.name}-mepa-dask",
                "mepa",
                mepa_dask,
                f"the same mepa calls on DaskExecutor(n_workers={w}), its embedded cluster",
                requires=(DEMO_MODULE, "distributed"),
            ),
            Variant(
                f"{case.name}-dask",
                "competitor",
                dask,
                "by hand with Dask futures (client.submit, gather), on the same cluster",
                requires=(DEMO_MODULE, "distributed"),
            ),
        )
        groups.append(
            Group(
                name=case.name,
                timed="the whole computation; executor or Parallel created before timing",
                baseline=f"{case.name}-serial",
                variants=variants,
            )
        )
    return ScenarioPlan(params=params, groups=groups, notes=notes)


DEMO = Scenario(
    name="demo",
    title="Demo computations (mepa._demo) against joblib and Dask",
    description=(
        "The demo's magnetic forward model at its default size, serial vs mepa vs joblib; and "
        "a small Monte Carlo through map. Both also on an embedded Dask cluster "
        "(DaskExecutor) and written by hand with Dask futures."
    ),
    build=_build,
)
