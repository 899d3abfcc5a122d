"""Scenario ``numba_kernel``: a numba dipole kernel, serial, numba-parallel, and through mepa.

The kernel is the total-field anomaly of induced point dipoles at receivers (x north, y east,
z down; the demo's physics without its refinement), written here as a plain double loop
compiled by numba, so harmonica is not needed. It runs:

- ``serial``: the kernel over every receiver, in this process, one thread;
- ``numba-parallel``: the same loop with ``prange`` over receivers (``parallel=True``) on
  ``workers`` numba threads: numba's own way to use every core, the bar to reach;
- ``mepa-thread``: the serial kernel (``nogil=True``) over each thread's share of the receivers,
  ``map_array`` on a ``ThreadExecutor``: no copy, no process;
- ``mepa-process``: the same on a ``ProcessExecutor`` (receivers through shared memory);
- ``harmonica``: ``harmonica.dipole_magnetic(..., parallel=True)`` on ``workers`` numba threads,
  projected on the field direction, when harmonica is installed (it works in east-north-up:
  the positions and moments are converted, see ``docs/demo-model.md``);
- ``choclo``: what choclo's users write, a ``prange`` loop (``parallel=True``) over receivers
  and dipoles calling ``choclo.dipole.magnetic_field``, projected, when choclo is installed.

harmonica and choclo are optional: without them their variants are reported as skipped.

Every worker compiles the kernel before the timed calls, all at once (``mepa.warm_up``): what a
user does with ``warm_up`` or an ``initializer=``. There is one source of the kernel,
:func:`_tmi`, compiled twice: serial (``nogil=True``) and with ``parallel=True``, where its
outer ``prange`` is numba's parallel loop. The kernels use numba's on-disk cache (``cache=True``, in
``benchmarks/scenarios/__pycache__``): compiling takes a second or more per process, loading
the cache a few milliseconds. Compiling and loading are never timed.
"""

from __future__ import annotations

import contextlib
import math
import os
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from .._harness import Group, Prepared, RunConfig, Scenario, ScenarioPlan, Target, Variant
from . import _common as c

__all__ = ["NUMBA_KERNEL", "make_problem", "tmi", "tmi_parallel", "tmi_rows", "warm_up"]

_CM_NT = 1e-7 * 1e9  # mu0 / (4 pi) in T m / A, times nT per T


# numba.prange once numba is imported (numba reads the global when it compiles); without
# parallel=True numba compiles prange as range.
_prange: Any = range


def _tmi(receivers: Any, cells: Any, moments: Any, direction: Any, out: Any) -> None:
    """``out[i]``: the anomaly (nT) of every dipole at receiver ``i``.

    The one source of the kernel: compiled with ``nogil=True`` it is the serial loop each mepa
    worker runs; with ``parallel=True`` its outer loop is numba's ``prange`` over receivers.
    """
    ux, uy, uz = direction[0], direction[1], direction[2]
    for i in _prange(receivers.shape[0]):
        total = 0.0
        for j in range(cells.shape[0]):
            rx = receivers[i, 0] - cells[j, 0]
            ry = receivers[i, 1] - cells[j, 1]
            rz = receivers[i, 2] - cells[j, 2]
            r2 = rx * rx + ry * ry + rz * rz
            inv_r2 = 1.0 / r2
            inv_r3 = inv_r2 * math.sqrt(inv_r2)
            mx, my, mz = moments[j, 0], moments[j, 1], moments[j, 2]
            m_dot_r = mx * rx + my * ry + mz * rz
            r_dot_u = rx * ux + ry * uy + rz * uz
            m_dot_u = mx * ux + my * uy + mz * uz
            total += inv_r3 * (3.0 * m_dot_r * r_dot_u * inv_r2 - m_dot_u)
        out[i] = _CM_NT * total


_JIT: dict[str, Callable[..., None]] = {}


def _compiled(name: str) -> Callable[..., None]:
    """:func:`_tmi` compiled by numba in this process (once): ``"loop"`` or ``"prange"``.

    Each way compiles its own copy of the function object (same code, its own name), so
    numba's on-disk cache keeps the two apart.
    """
    global _prange
    if name not in _JIT:
        import numba

        _prange = numba.prange
        copy = types.FunctionType(_tmi.__code__.replace(co_name=f"_tmi_{name}"),
                                  _tmi.__globals__, f"_tmi_{name}")
        copy.__qualname__ = f"_tmi_{name}"
        parallel = name == "prange"
        _JIT[name] = numba.njit(nogil=True, parallel=parallel, cache=True)(copy)
    return _JIT[name]


def tmi(receivers: np.ndarray, *, cells: np.ndarray, moments: np.ndarray,
        direction: np.ndarray) -> np.ndarray:
    """The anomaly at ``receivers``, one thread: the function each mepa worker runs."""
    out = np.empty(len(receivers))
    _compiled("loop")(np.ascontiguousarray(receivers), cells, moments, direction, out)
    return out


def tmi_rows(rows: np.ndarray, receivers: np.ndarray, *, cells: np.ndarray,
             moments: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """:func:`tmi` of ``receivers[rows]``."""
    return tmi(receivers[rows], cells=cells, moments=moments, direction=direction)


def tmi_parallel(receivers: np.ndarray, *, cells: np.ndarray, moments: np.ndarray,
                 direction: np.ndarray, threads: int) -> np.ndarray:
    """The anomaly at ``receivers`` with numba's ``parallel=True`` loop on ``threads``."""
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    out = np.empty(len(receivers))
    _compiled("prange")(receivers, cells, moments, direction, out)
    return out


def warm_up(_: object = None) -> int:
    """Compile the kernel in this worker; returns the worker's PID."""
    tiny = np.zeros((1, 3))
    tmi(tiny, cells=tiny + 1.0, moments=tiny, direction=np.array([0.0, 0.0, 1.0]))
    return os.getpid()


def make_problem(n_side: int, n_cells: int) -> dict[str, np.ndarray]:
    """Receivers on an ``n_side`` x ``n_side`` grid 1 m up, ``n_cells`` dipoles in a block."""
    north, east = np.meshgrid(
        np.linspace(-120.0, 120.0, n_side), np.linspace(-120.0, 120.0, n_side), indexing="ij"
    )
    receivers = np.column_stack([north.ravel(), east.ravel(), np.full(north.size, -1.0)])
    rng = np.random.default_rng(0)
    cells = np.column_stack([
        rng.uniform(-60.0, 60.0, n_cells), rng.uniform(-80.0, 80.0, n_cells),
        rng.uniform(5.0, 80.0, n_cells),
    ])
    inc, dec = math.radians(60.0), math.radians(10.0)
    direction = np.array(
        [math.cos(inc) * math.cos(dec), math.cos(inc) * math.sin(dec), math.sin(inc)]
    )
    moments = 3.2e3 * direction * np.ones((n_cells, 1))  # 0.05 SI, 4 m cells, 50,000 nT
    return {"receivers": receivers, "cells": cells, "moments": moments, "direction": direction}


def _harmonica_tmi(problem: dict[str, np.ndarray], threads: int) -> np.ndarray:
    """harmonica's dipoles (east-north-up) projected on the field: the same anomaly."""
    import harmonica
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    rec, cells, m, u = (problem[k] for k in ("receivers", "cells", "moments", "direction"))
    coordinates = (rec[:, 1], rec[:, 0], -rec[:, 2])  # easting, northing, upward
    dipoles = (cells[:, 1], cells[:, 0], -cells[:, 2])
    moments = (m[:, 1], m[:, 0], -m[:, 2])
    b_e, b_n, b_u = harmonica.dipole_magnetic(
        coordinates, dipoles, moments, field="b", parallel=True
    )
    return np.asarray(b_e * u[1] + b_n * u[0] - b_u * u[2])


# choclo's point-dipole field once choclo is imported (read by numba when it compiles).
_choclo_field: Any = None


def _choclo_loop(
    east: Any, north: Any, up: Any, c_east: Any, c_north: Any, c_up: Any, m_east: Any,
    m_north: Any, m_up: Any, u_enu: Any, out: Any,
) -> None:
    """choclo's way: a ``prange`` loop of the user's over choclo's point kernel, projected."""
    for i in _prange(east.size):
        total = 0.0
        for j in range(c_east.size):
            b_e, b_n, b_u = _choclo_field(
                east[i], north[i], up[i], c_east[j], c_north[j], c_up[j], m_east[j],
                m_north[j], m_up[j],
            )
            total += b_e * u_enu[0] + b_n * u_enu[1] + b_u * u_enu[2]
        out[i] = 1e9 * total  # choclo's field is in T


def _choclo_tmi(problem: dict[str, np.ndarray], threads: int) -> np.ndarray:
    """The anomaly through choclo's ``dipole.magnetic_field`` (east-north-up), in nT."""
    global _choclo_field, _prange
    import numba

    if "choclo" not in _JIT:
        import choclo.dipole

        _choclo_field, _prange = choclo.dipole.magnetic_field, numba.prange
        _JIT["choclo"] = numba.njit(parallel=True, nogil=True)(_choclo_loop)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    rec, cells, m, u = (problem[k] for k in ("receivers", "cells", "moments", "direction"))
    out = np.empty(len(rec))
    _JIT["choclo"](
        *(np.ascontiguousarray(a) for a in (rec[:, 1], rec[:, 0], -rec[:, 2])),
        *(np.ascontiguousarray(a) for a in (cells[:, 1], cells[:, 0], -cells[:, 2])),
        *(np.ascontiguousarray(a) for a in (m[:, 1], m[:, 0], -m[:, 2])),
        np.array([u[1], u[0], -u[2]]), out,
    )
    return out


def _build(config: RunConfig) -> ScenarioPlan:
    w = config.workers
    n_side = config.size(100, 20)
    n_cells = config.size(7_520, 400)
    problem = make_problem(n_side, n_cells)
    model = {k: problem[k] for k in ("cells", "moments", "direction")}
    receivers = problem["receivers"]
    reference: dict[str, np.ndarray] = {}

    def expected() -> np.ndarray:
        if "value" not in reference:
            reference["value"] = tmi(receivers, **model)
        return reference["value"]

    check = c.allclose_check(expected)

    def serial(stack: contextlib.ExitStack) -> Prepared:
        warm_up()
        return Prepared(call=lambda: tmi(receivers, **model), check=check)

    def numba_parallel(stack: contextlib.ExitStack) -> Prepared:
        tmi_parallel(receivers[:2], threads=w, **model)  # compile
        return Prepared(call=lambda: tmi_parallel(receivers, threads=w, **model), check=check)

    def mepa(kind: str) -> Callable[[contextlib.ExitStack], Prepared]:
        def setup(stack: contextlib.ExitStack) -> Prepared:
            ex = c.mepa_executor(stack, kind, w)
            map_array = c.mepa_attr("map_array")
            # The warm-up: every worker compiles the kernel at once, before the timed calls
            # (mepa.warm_up runs it once in each worker; older mepa: a task per worker).
            try:
                c.mepa_attr("warm_up")(ex, warm_up)
            except AttributeError:
                ex.gather([ex.submit_to(worker, warm_up) for worker in ex.workers])
            shared = ex.scatter(receivers)
            return Prepared(
                call=lambda: map_array(tmi, shared, executor=ex, **model),
                check=check,
                pids=c.mepa_pids(ex, w) if kind == "process" else None,
            )

        return setup

    def choclo(stack: contextlib.ExitStack) -> Prepared:
        _choclo_tmi({**problem, "receivers": receivers[:2]}, w)  # compile
        return Prepared(call=lambda: _choclo_tmi(problem, w), check=check)

    def harmonica(stack: contextlib.ExitStack) -> Prepared:
        _harmonica_tmi({**problem, "receivers": receivers[:2]}, w)  # compile
        return Prepared(call=lambda: _harmonica_tmi(problem, w), check=check)

    variants = (
        Variant(
            "serial", "serial", serial, "the numba kernel (nogil), one thread",
            requires=("numba",),
        ),
        Variant(
            "numba-parallel", "reference", numba_parallel,
            f"the same loop with prange (parallel=True) on {w} numba threads",
            requires=("numba",),
        ),
        Variant(
            "mepa-thread", "mepa", mepa("thread"),
            f"map_array of the serial kernel on ThreadExecutor({w})", requires=("numba",),
        ),
        Variant(
            "mepa-process", "mepa", mepa("process"),
            f"map_array of the serial kernel on ProcessExecutor({w})", requires=("numba",),
        ),
        Variant(
            "harmonica", "competitor", harmonica,
            f"harmonica.dipole_magnetic(parallel=True) on {w} numba threads, projected",
            requires=("harmonica", "numba"),
        ),
        Variant(
            "choclo", "competitor", choclo,
            f"a prange loop over choclo.dipole.magnetic_field on {w} numba threads, projected",
            requires=("choclo", "numba"),
        ),
    )
    group = Group(
        name="kernel",
        timed="the anomaly at every receiver; pools started and kernels compiled before timing",
        variants=variants,
        baseline="serial",
    )
    return ScenarioPlan(
        params={"receivers": len(receivers), "cells": n_cells, "workers": w},
        groups=[group],
        targets=[
            Target(
                "process within 1.1x of numba parallel=True", "time_ratio", "mepa-process",
                1.1, "<=", reference="numba-parallel",
            ),
            Target(
                "thread within 1.1x of numba parallel=True", "time_ratio", "mepa-thread",
                1.1, "<=", reference="numba-parallel",
            ),
            Target("thread >= 1.8x serial", "speedup", "mepa-thread", 1.8, reference="serial"),
            Target(
                "process >= 1.8x serial", "speedup", "mepa-process", 1.8, reference="serial"
            ),
        ],
    )


NUMBA_KERNEL = Scenario(
    name="numba_kernel",
    title="A numba kernel: serial, numba parallel=True, mepa threads and processes",
    description=(
        "Total-field anomaly of 7,520 induced dipoles at 10,000 receivers (quick: 400 at 400), "
        "a numba double loop with nogil=True. mepa runs it per worker share through map_array; "
        "numba's own prange loop and harmonica's parallel dipoles (if installed) are the bars."
    ),
    build=_build,
)
