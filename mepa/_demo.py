"""The demo: the magnetic anomaly of a buried body, computed in parallel.

A dipping slab of magnetic rock is cut into cubic cells; each cell is magnetised by the Earth's
field and acts as a point dipole. The total-field anomaly it causes is computed at a grid of
receivers on the surface, the way a ground magnetic survey would see it::

    receivers (grid) ──arrange(shuffle=True)──▶ one chunk per worker
        worker: forward(chunk of receivers, cells, moments) in blocks ──▶ progress.update(rows)
                                                              at the end ──▶ cpu.fire(seconds)
    anomaly ◀── reassemble (grid order) ◀── gather

Conventions
-----------
Right-handed coordinates in metres with **x north, y east, z down** (the usual convention of
geomagnetism): depths are positive, receivers above the ground have ``z < 0``. The inducing
field has inclination ``I`` (degrees below the horizontal, positive in the northern hemisphere)
and declination ``D`` (degrees east of north), so its unit vector is
``(cos I cos D, cos I sin D, sin I)``.

Physics
-------
Each cell of volume ``V`` and susceptibility ``chi`` gets the induced moment
``m = chi * V * B0 / mu0`` (A m^2), parallel to the inducing field ``B0`` (no remanence, no
self-demagnetisation: fine for ``chi << 1``). A point dipole ``m`` at distance ``r`` (unit
vector ``r_hat`` from the dipole to the receiver) makes the field

    B = mu0 / (4 pi) * (3 (m . r_hat) r_hat - m) / r^3

and the total-field anomaly a magnetometer reads is its projection on the inducing field's
direction, ``dT = B . b0_hat``, reported in nT.

Why shuffle
-----------
A point dipole stands in well for a cube only when the receiver is several cube sizes away.
:func:`forward` therefore refines adaptively: a cell closer than ``refine_within`` cell sizes
to a receiver is replaced, for that receiver only, by ``s**3`` sub-dipoles with ``s`` growing
as the distance shrinks. Receivers above the shallow edge of the body pay for many refined
pairs, receivers far from it for none, so rows of the grid cost very different amounts, and
contiguous chunks of the grid would leave some workers idle. ``shuffle=True`` spreads the
expensive receivers over every worker.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from ._events import EventContext
    from ._executors._base import Executor
    from ._progress import Progress

__all__ = [
    "MU0",
    "SIZES",
    "DemoResult",
    "MagneticProblem",
    "busy_note",
    "field_direction",
    "forward",
    "induced_moments",
    "make_problem",
    "run_demo",
]

MU0 = 4e-7 * math.pi
"""Vacuum permeability (T m / A), the pre-2019 exact value (the difference is 1e-10)."""

_CM = MU0 / (4 * math.pi)  # = 1e-7 T m / A
_TESLA_TO_NT = 1e9

Size = Literal["small", "default", "large"]
ExecutorKind = Literal["linear", "thread", "process", "dask"]

SIZES: dict[str, tuple[int, float]] = {
    "small": (40, 10.0),
    "default": (160, 4.0),
    "large": (240, 3.0),
}
"""Receivers per side of the grid and cell size (m) for each demo size."""

_DEFAULT_BLOCK_BYTES = 2**23
"""Bound on the workspace of one call of :func:`forward` (bytes): 23 receivers x 7,520 cells,
about 170,000 receiver-cell pairs per NumPy call, at the default size (1 MiB gave 2 receivers
x 7,520 cells). Fewer, bigger calls spend less of their time in Python between NumPy's loops,
where a thread holds the GIL. The workspace is allocated once per call and reused by every
block: with a fresh 1 MiB temporary per operation, the serial run (in a process with glibc's
default malloc settings, which unmap such blocks when freed) spent two thirds of its time
faulting in new pages, and the speed-up over it came out above the number of workers."""


# ------------------------------------------------------------------------------ physics


def field_direction(inclination: float, declination: float) -> NDArray[np.float64]:
    """Unit vector of a field of the given inclination and declination (x north, y east, z down).

    Parameters
    ----------
    inclination
        Degrees below the horizontal (90: straight down, as at the north magnetic pole).
    declination
        Degrees east of geographic north.

    Returns
    -------
    numpy.ndarray
        Shape ``(3,)``.

    Examples
    --------
    >>> field_direction(90.0, 0.0).round(12)
    array([0., 0., 1.])
    >>> field_direction(0.0, 90.0).round(12)
    array([0., 1., 0.])
    """
    inc, dec = math.radians(inclination), math.radians(declination)
    return np.array(
        [math.cos(inc) * math.cos(dec), math.cos(inc) * math.sin(dec), math.sin(inc)]
    )


def induced_moments(
    volumes: NDArray[np.float64] | float,
    susceptibility: NDArray[np.float64] | float,
    field_nt: float,
    direction: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Moments ``m = chi * V * B0 / mu0`` induced in cells by a uniform field.

    Parameters
    ----------
    volumes
        Cell volumes (m^3), one per cell or one for all.
    susceptibility
        Volume susceptibility (SI, dimensionless), one per cell or one for all.
    field_nt
        Strength of the inducing field (nT).
    direction
        Unit vector of the inducing field, from :func:`field_direction`.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_cells, 3)`` (``(1, 3)`` if both inputs are scalars), in A m^2.
    """
    strength = np.atleast_1d(np.asarray(volumes, dtype=np.float64)) * np.asarray(
        susceptibility, dtype=np.float64
    ) * (field_nt / _TESLA_TO_NT / MU0)
    return strength[:, None] * np.asarray(direction, dtype=np.float64)[None, :]


def forward(
    receivers: NDArray[np.float64],
    cells: NDArray[np.float64],
    moments: NDArray[np.float64],
    *,
    direction: NDArray[np.float64] | None = None,
    cell_size: float = 0.0,
    refine_within: float = 8.0,
    max_refine: int = 8,
    block_bytes: int = _DEFAULT_BLOCK_BYTES,
    on_block: Callable[[int], object] | None = None,
) -> NDArray[np.float64]:
    """Total-field anomaly (nT) of point dipoles at receivers.

    Vectorised over receivers and cells; receivers are taken in blocks of
    :func:`block_rows` receivers, computed in one workspace of about ``block_bytes``. Each
    receiver's value depends only on that receiver, so splitting ``receivers`` into chunks
    gives the same numbers.

    Parameters
    ----------
    receivers
        Receiver positions, shape ``(n, 3)`` (m; x north, y east, z down).
    cells
        Dipole positions (cell centres), shape ``(c, 3)``.
    moments
        Dipole moments, shape ``(c, 3)`` (A m^2).
    direction
        Unit vector the field is projected on (the inducing field's direction). ``None``
        uses the direction of the summed moments (right for purely induced magnetisation).
    cell_size
        Edge of the cubic cells (m). If positive, a cell closer to a receiver than
        ``refine_within * cell_size`` is split, for that receiver, into ``s**3`` sub-dipoles,
        ``s = min(max_refine, ceil(refine_within * cell_size / r))``; 0 disables refinement.
    refine_within
        Distance, in cell sizes, below which cells are refined.
    max_refine
        Largest number of sub-cells per edge.
    block_bytes
        Rough bound on the memory of the workspace (see :func:`block_rows`).
    on_block
        Called with the number of receivers of each block once it is done (a progress bar's
        ``update``).

    Returns
    -------
    numpy.ndarray
        Shape ``(n,)``, the anomaly at each receiver in nT.

    Raises
    ------
    ValueError
        If the shapes are wrong, or the moments sum to zero and ``direction`` is ``None``.

    Examples
    --------
    A vertical dipole of 1000 A m^2 10 m below a receiver, in a vertical field, gives
    ``mu0 / (4 pi) * 2 m / r^3`` = 1e-7 * 2000 / 1000 T = 200 nT:

    >>> forward(np.array([[0.0, 0.0, 0.0]]), np.array([[0.0, 0.0, 10.0]]),
    ...         np.array([[0.0, 0.0, 1e3]])).round(9)
    array([200.])
    """
    receivers = _points(receivers, "receivers")
    cells = _points(cells, "cells")
    moments = _points(moments, "moments")
    if len(moments) != len(cells):
        raise ValueError(
            f"moments must have one row per cell ({len(cells)}), got {len(moments)}; "
            "pass one moment vector per cell"
        )
    u = _unit(moments.sum(axis=0) if direction is None else np.asarray(direction, float))
    out = np.zeros(len(receivers))
    if len(receivers) == 0 or len(cells) == 0:
        return out
    near_limit = refine_within * cell_size if cell_size > 0 else 0.0
    rows = block_rows(len(cells), block_bytes)
    work = _Workspace(cells, moments, u, min(rows, len(receivers)))
    # The near pairs of several blocks are refined together, once they hold about
    # block_bytes / 16 sub-dipoles: per block, the calls would be of a few thousand elements,
    # short enough for the Python between them to dominate and keep two threads taking turns.
    pending: list[tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]] = []
    load, first = 0, 0  # sub-dipoles pending; first receiver not yet finished
    for start in range(0, len(receivers), rows):
        block = receivers[start:start + rows]
        stop = start + len(block)
        out[start:stop], near = _block_anomaly(block, work, near_limit)
        if near is not None:
            rec, cell, near_r2 = near
            splits = np.minimum(max_refine, np.ceil(near_limit / np.sqrt(near_r2))).astype(np.intp)
            np.maximum(splits, 1, out=splits)
            pending.append((rec + start, cell, splits))
            load += int(np.sum(splits**3))
        if load >= block_bytes // 16 or stop == len(receivers):
            if pending:
                rec, cell, splits = (np.concatenate(parts) for parts in zip(*pending, strict=True))
                out[first:stop] += _refined(
                    receivers, first, stop, work, rec, cell, splits, cell_size, block_bytes
                )
                pending, load = [], 0
            out[first:stop] *= _CM * _TESLA_TO_NT
            if on_block is not None:
                on_block(stop - first)
            first = stop
    return out


def block_rows(n_cells: int, block_bytes: int = _DEFAULT_BLOCK_BYTES) -> int:
    """Receivers per block of :func:`forward`: its workspace then holds about ``block_bytes``.

    The workspace is :data:`_WORK_ARRAYS` float64 arrays of shape ``(rows, n_cells)``, made
    once per call of :func:`forward` and reused by every block, so that the kernel allocates
    nothing per block (fresh temporaries would be paged in by the kernel each time, and cost
    more than the arithmetic). It depends on the number of cells only, so a worker's chunk of
    receivers and the whole grid are cut into blocks of the same shape.

    Examples
    --------
    >>> block_rows(7520)  # the demo's default size: 23 receivers x 7,520 cells per call
    23
    >>> block_rows(10**9, 2**20)
    1
    """
    return max(1, int(block_bytes // (_WORK_ARRAYS * 8 * max(1, n_cells))))


_WORK_ARRAYS = 6
"""float64 arrays of shape ``(rows, cells)`` in the workspace of :func:`forward`."""


class _Workspace:
    """The cells' columns, and the reused arrays of the blocks of one :func:`forward` call."""

    def __init__(
        self, cells: NDArray[np.float64], moments: NDArray[np.float64],
        u: NDArray[np.float64], rows: int,
    ) -> None:
        self.cells = cells
        self.moments = moments
        self.u = u
        self.cell_cols = [np.ascontiguousarray(cells[:, k]) for k in range(3)]
        self.moment_cols = [np.ascontiguousarray(moments[:, k]) for k in range(3)]
        self.m_dot_u = moments @ u
        self.arrays = np.empty((_WORK_ARRAYS, rows, len(cells)))
        self.near = np.empty((rows, len(cells)), dtype=bool)
        self._scratch: dict[int, NDArray[np.float64]] = {}

    def scratch(
        self, slot: int, size: int, shape: tuple[int, ...] | None = None
    ) -> NDArray[np.float64]:
        """``size`` float64 of reused array number ``slot`` (grown when too small)."""
        buf = self._scratch.get(slot)
        if buf is None or len(buf) < size:
            buf = self._scratch[slot] = np.empty(size)
        view = buf[:size]
        return view if shape is None else view.reshape(shape)


def _block_anomaly(
    block: NDArray[np.float64], work: _Workspace, near_limit: float
) -> tuple[NDArray[np.float64], _Near | None]:
    """Per receiver of ``block``, the sum over cells of ``dT / cm`` (T), near pairs left out.

    Returns the sums and the near pairs ``(receiver in block, cell, squared distance)``, or
    ``None`` if there are none; :func:`_refined` adds what they give.
    """
    n = len(block)
    rx, ry, rz, r2, a, b = (arr[:n] for arr in work.arrays)
    u, (mx, my, mz) = work.u, work.moment_cols
    for k, r in enumerate((rx, ry, rz)):
        np.subtract(block[:, k:k + 1], work.cell_cols[k], out=r)
    np.multiply(rx, rx, out=r2)
    r2 += np.multiply(ry, ry, out=a)
    r2 += np.multiply(rz, rz, out=a)
    m_dot_r = np.multiply(rx, mx, out=a)
    m_dot_r += np.multiply(ry, my, out=b)
    m_dot_r += np.multiply(rz, mz, out=b)
    r_dot_u = rx
    r_dot_u *= u[0]
    r_dot_u += np.multiply(ry, u[1], out=b)
    r_dot_u += np.multiply(rz, u[2], out=b)
    near = np.less(r2, near_limit * near_limit, out=work.near[:n])  # all False if refinement is off
    pairs: _Near | None = None
    flat: NDArray[np.intp] | None = None
    if near.any():
        flat = np.flatnonzero(near)  # a tenth of the time of a 2-d nonzero
        rec, cell = np.divmod(flat, near.shape[1])
        pairs = (rec, cell, np.take(r2, flat))
    inv_r2 = np.divide(1.0, r2, out=r2)
    inv_r3 = np.sqrt(inv_r2, out=ry)
    inv_r3 *= inv_r2
    # dT = cm * (3 (m.r)(r.u) / r^5 - (m.u) / r^3)
    terms = m_dot_r
    terms *= r_dot_u
    terms *= inv_r2
    terms *= 3.0
    terms -= work.m_dot_u
    terms *= inv_r3
    if flat is not None:
        np.put(terms, flat, 0.0)  # these pairs are summed again, refined, by _refined
    total: NDArray[np.float64] = terms.sum(axis=1)
    return total, pairs


_Near = tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]
"""Near pairs of a block: receiver (in the block), cell, squared distance."""


def _refined(
    receivers: NDArray[np.float64],
    first: int,
    stop: int,
    work: _Workspace,
    rec: NDArray[np.intp],
    cell: NDArray[np.intp],
    splits: NDArray[np.intp],
    cell_size: float,
    block_bytes: int,
) -> NDArray[np.float64]:
    """Per receiver ``first ... stop - 1``, the sum of ``dT / cm`` over its near pairs
    ``(rec, cell)``, each cell split into ``splits**3`` sub-dipoles.

    The pairs are taken by split, in groups of about ``block_bytes / 64`` pair-sub-dipoles,
    in six of the workspace's reused arrays.
    """
    cells, moments, u = work.cells, work.moments, work.u
    out = np.zeros(stop - first)
    for s in np.unique(splits):
        pick = splits == s
        r_idx, c_idx = rec[pick], cell[pick]
        side = (np.arange(s) + 0.5) / s - 0.5
        offsets = np.stack(np.meshgrid(side, side, side, indexing="ij"), -1).reshape(-1, 3)
        offsets *= cell_size
        k = len(offsets)
        step = max(1, int(block_bytes // (8 * 8 * k)))
        for start in range(0, len(r_idx), step):
            ri, ci = r_idx[start:start + step], c_idx[start:start + step]
            shape = (len(ri), k)
            size = len(ri) * k
            # per component, (pairs, k): receiver minus each sub-dipole of the cell
            d = receivers[ri] - cells[ci]
            m = moments[ci] / k
            rx, ry, rz, r2, m_dot_r, tmp = (work.scratch(j, size, shape) for j in range(6))
            for j, r in enumerate((rx, ry, rz)):
                np.subtract(d[:, j:j + 1], offsets[:, j], out=r)
            np.multiply(rx, rx, out=r2)
            r2 += np.multiply(ry, ry, out=tmp)
            r2 += np.multiply(rz, rz, out=tmp)
            np.multiply(rx, m[:, 0:1], out=m_dot_r)
            m_dot_r += np.multiply(ry, m[:, 1:2], out=tmp)
            m_dot_r += np.multiply(rz, m[:, 2:3], out=tmp)
            r_dot_u = rx
            r_dot_u *= u[0]
            r_dot_u += np.multiply(ry, u[1], out=tmp)
            r_dot_u += np.multiply(rz, u[2], out=tmp)
            inv_r2 = np.divide(1.0, r2, out=r2)
            inv_r3 = np.sqrt(inv_r2, out=ry)
            inv_r3 *= inv_r2
            terms = m_dot_r
            terms *= r_dot_u
            terms *= inv_r2
            terms *= 3.0
            terms -= (m @ u)[:, None]
            terms *= inv_r3
            out += np.bincount(ri - first, weights=terms.sum(axis=1), minlength=stop - first)
    return out


def _points(value: Any, name: str) -> NDArray[np.float64]:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(
            f"{name} must have shape (n, 3) (x north, y east, z down), got shape {arr.shape}; "
            "stack the coordinates as columns"
        )
    return arr


def _unit(vector: NDArray[np.float64]) -> NDArray[np.float64]:
    norm = float(np.linalg.norm(vector))
    if not norm > 0:
        raise ValueError(
            "direction must be a non-zero vector, got zero (moments summing to zero and no "
            "direction given); pass direction=field_direction(inclination, declination)"
        )
    return vector / norm


# ------------------------------------------------------------------------------ problem


@dataclass(frozen=True)
class MagneticProblem:
    """A survey grid over a magnetised dipping slab.

    Attributes
    ----------
    north, east
        Receiver coordinates along each axis of the grid (m).
    receivers
        Receiver positions, shape ``(len(north) * len(east), 3)``, row-major over
        ``(north, east)``, above the ground (``z = -height``).
    cells, moments
        Cell centres and induced moments, shape ``(c, 3)``.
    cell_size
        Edge of the cubic cells (m).
    direction
        Unit vector of the inducing field.
    outline
        The slab's horizontal extent, for maps: ``(x, y)`` corners of a closed rectangle.
    """

    north: NDArray[np.float64]
    east: NDArray[np.float64]
    receivers: NDArray[np.float64]
    cells: NDArray[np.float64]
    moments: NDArray[np.float64]
    cell_size: float
    direction: NDArray[np.float64]
    outline: NDArray[np.float64]

    def forward(self, receivers: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
        """The anomaly at ``receivers`` (all of the grid if ``None``), with refinement."""
        return forward(
            self.receivers if receivers is None else receivers, self.cells, self.moments,
            direction=self.direction, cell_size=self.cell_size,
        )


def make_problem(
    size: Size | str = "default",
    *,
    inclination: float = 60.0,
    declination: float = 10.0,
    field_nt: float = 50_000.0,
    susceptibility: float = 0.05,
    dip: float = 50.0,
    depth: float = 3.0,
    thickness: float = 30.0,
    strike_length: float = 160.0,
    dip_extent: float = 100.0,
    height: float = 1.0,
) -> MagneticProblem:
    """Build the demo's survey and body.

    The body is a slab ``thickness`` m thick, ``strike_length`` m along strike (east), reaching
    ``dip_extent`` m down dip from a top edge ``depth`` m below the ground at 30 m south of the
    grid's centre, dipping ``dip`` degrees to the north. It is filled with the cubic cells whose
    centres fall inside it. The survey is a square grid of 240 m x 240 m, ``height`` m above
    the ground.

    Parameters
    ----------
    size
        ``"small"``, ``"default"`` or ``"large"``: grid points per side and cell size, from
        :data:`SIZES`.
    inclination, declination
        Of the inducing field, in degrees (see :func:`field_direction`).
    field_nt
        Strength of the inducing field (nT).
    susceptibility
        Of the slab (SI).
    dip
        Of the slab, degrees below the horizontal towards north, ``0 < dip <= 90``.
    depth
        Of the slab's top edge below the ground (m), ``>= 0``.
    thickness, strike_length, dip_extent
        Of the slab (m), each ``> 0``.
    height
        Of the receivers above the ground (m), ``> 0``.

    Returns
    -------
    MagneticProblem

    Raises
    ------
    ValueError
        An unknown size, or a geometry outside the ranges above (or one that holds no cell).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    _check_geometry(dip=dip, depth=depth, thickness=thickness, strike_length=strike_length,
                    dip_extent=dip_extent, height=height)
    n_side, h = SIZES[size]
    north = np.linspace(-120.0, 120.0, n_side)
    east = np.linspace(-120.0, 120.0, n_side)
    gx, gy = np.meshgrid(north, east, indexing="ij")
    receivers = np.column_stack([gx.ravel(), gy.ravel(), np.full(gx.size, -height)])

    top, strike, extent, dip = depth, strike_length, dip_extent, math.radians(dip)
    # Along-dip unit vector (down and north) and the slab normal.
    along = np.array([math.cos(dip), 0.0, math.sin(dip)])
    normal = np.array([-math.sin(dip), 0.0, math.cos(dip)])
    origin = np.array([-30.0, 0.0, top])  # the top edge runs east through here
    lo = origin - thickness * np.abs(normal) - h
    hi = origin + extent * along + thickness * np.abs(normal) + h
    axes = [np.arange(lo[k] + h / 2, hi[k], h) for k in range(3)]
    axes[1] = np.arange(-strike / 2 + h / 2, strike / 2, h)
    cx, cy, cz = np.meshgrid(*axes, indexing="ij")
    centres = np.column_stack([cx.ravel(), cy.ravel(), cz.ravel()])
    rel = centres - origin
    s_along, s_normal = rel @ along, rel @ normal
    inside = (s_along >= 0) & (s_along <= extent) & (s_normal >= 0) & (s_normal <= thickness)
    inside &= centres[:, 2] >= top + h / 2
    cells = np.ascontiguousarray(centres[inside])
    if len(cells) == 0:
        raise ValueError(
            f"the slab holds no cell of {h:g} m: thickness={thickness:g} m, "
            f"strike_length={strike_length:g} m, dip_extent={dip_extent:g} m; make it larger "
            "than the cells, or choose a larger --size"
        )

    direction = field_direction(inclination, declination)
    moments = induced_moments(h**3, susceptibility, field_nt, direction) * np.ones((len(cells), 1))
    x0, x1 = cells[:, 0].min() - h / 2, cells[:, 0].max() + h / 2
    y0, y1 = cells[:, 1].min() - h / 2, cells[:, 1].max() + h / 2
    outline = np.array([[x0, y0], [x0, y1], [x1, y1], [x1, y0], [x0, y0]])
    return MagneticProblem(north, east, receivers, cells, moments, h, direction, outline)


def _check_geometry(**values: float) -> None:
    limits: dict[str, tuple[Callable[[float], bool], str]] = {
        "dip": (lambda v: 0 < v <= 90, "0 < dip <= 90 (degrees)"),
        "depth": (lambda v: v >= 0, "depth >= 0 (m)"),
        "thickness": (lambda v: v > 0, "thickness > 0 (m)"),
        "strike_length": (lambda v: v > 0, "strike_length > 0 (m)"),
        "dip_extent": (lambda v: v > 0, "dip_extent > 0 (m)"),
        "height": (lambda v: v > 0, "height > 0 (m): receivers above the ground"),
    }
    for name, value in values.items():
        ok, rule = limits[name]
        if not (math.isfinite(value) and ok(value)):
            raise ValueError(f"{name} must satisfy {rule}, got {value!r}; pass a value in range")


# ------------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` computed and measured.

    Attributes
    ----------
    anomaly
        The parallel result, shape ``(len(north), len(east))`` (nT).
    max_relative_error
        ``max |parallel - serial| / max |serial|``.
    parallel_seconds, serial_seconds
        Wall times of the parallel run (workers already started) and of the serial one.
    startup_seconds
        Time to start the executor and its workers.
    n_workers
        Workers of the executor.
    image
        The PNG written, or ``None``.
    worker_cpu_seconds
        CPU time the tasks used, summed over workers.
    """

    anomaly: NDArray[np.float64]
    max_relative_error: float
    parallel_seconds: float
    serial_seconds: float
    startup_seconds: float
    n_workers: int
    image: Path | None
    worker_cpu_seconds: float = math.nan

    @property
    def speedup(self) -> float:
        """Serial time over parallel time."""
        return self.serial_seconds / self.parallel_seconds if self.parallel_seconds else math.inf


def forward_task(
    receivers: NDArray[np.float64],
    cells: NDArray[np.float64],
    moments: NDArray[np.float64],
    direction: NDArray[np.float64],
    cell_size: float,
    progress: Progress | None = None,
    cpu: EventContext | None = None,
) -> NDArray[np.float64]:
    """One worker's share: :func:`forward` on its receivers.

    Reports the receivers of each block to ``progress`` as it goes, and at the end fires
    ``cpu`` with the CPU seconds the task used (its thread's CPU time). The blocks are those
    of :func:`forward` on the whole grid (the serial run): same kernel, same block shape.
    """
    start_cpu = time.thread_time()
    out = forward(
        receivers, cells, moments, direction=direction, cell_size=cell_size,
        on_block=None if progress is None else progress.update,
    )
    if cpu is not None:
        cpu.fire(time.thread_time() - start_cpu)
    return out


def make_executor(
    kind: ExecutorKind | str, n_workers: int | None = None, address: str | None = None
) -> Executor:
    """An executor of the given kind.

    Parameters
    ----------
    kind
        ``"linear"``, ``"thread"``, ``"process"`` or ``"dask"``.
    n_workers
        Workers (``None``: one per physical core; for Dask, the cluster's workers).
    address
        For ``"dask"``: the scheduler address; ``None`` starts a local cluster.

    Raises
    ------
    ValueError
        Unknown kind, or an address given to a local executor.
    ImportError
        ``"dask"`` when the Dask executor is not available.
    """
    from ._executors._local import LinearExecutor, ThreadExecutor

    if address is not None and kind in ("linear", "thread", "process"):
        raise ValueError(
            f"address is only used by the dask executor, got address={address!r} with "
            f"executor {kind!r}; drop the address or choose the dask executor"
        )
    if kind == "linear":
        return LinearExecutor(n_workers)
    if kind == "thread":
        return ThreadExecutor(n_workers)
    if kind == "process":
        from ._executors._process import ProcessExecutor

        return ProcessExecutor(n_workers)
    if kind == "dask":
        return _dask_executor(n_workers, address)
    from ._executors import backend

    return backend(kind).create(n_workers, address)  # the registry's other backends


def _dask_executor(n_workers: int | None, address: str | None) -> Executor:
    if address is not None and n_workers is not None:
        raise ValueError(
            f"n_workers sizes the embedded Dask cluster only, got n_workers={n_workers} with "
            f"address={address!r}; drop n_workers (the cluster has its own workers) or the "
            "address"
        )
    try:
        from ._executors._dask import DaskExecutor
    except ImportError as exc:
        raise ImportError(
            f"the dask executor is not available in this installation ({exc}); choose "
            "the process executor, or install dask.distributed"
        ) from exc
    if address is not None:
        return DaskExecutor(address)
    return DaskExecutor(None, n_workers=n_workers)


def run_demo(
    executor_kind: ExecutorKind | str = "process",
    n_workers: int | None = None,
    size: Size | str = "default",
    address: str | None = None,
    plot: bool = True,
    out: str | Path = "mepa-demo-magnetic.png",
    *,
    file: TextIO | None = None,
    progress: bool = True,
    model: Mapping[str, float] | None = None,
    save: str | Path | None = None,
) -> DemoResult:
    """Compute the demo's anomaly in parallel and serially, compare, time, and map it.

    Parameters
    ----------
    executor_kind
        ``"linear"``, ``"thread"``, ``"process"`` or ``"dask"``.
    n_workers
        Workers; ``None`` means one per physical core (or the Dask cluster's workers).
    size
        ``"small"`` (about a second), ``"default"`` (about 10-20 s on 2 cores) or ``"large"``.
    address
        Dask scheduler address; ``None`` with ``"dask"`` starts a local cluster.
    plot
        Write a PNG map of the anomaly (needs matplotlib; skipped with a message without it).
    out
        Path of the PNG.
    file
        Where the report goes (default ``sys.stdout``); the progress bar goes to ``sys.stderr``.
    progress
        Show the progress bar fed by the workers.
    model
        Keyword arguments of :func:`make_problem` besides ``size``: ``inclination``,
        ``declination``, ``field_nt``, ``susceptibility``, ``dip``, ``depth``, ``thickness``,
        ``strike_length``, ``dip_extent``, ``height``.
    save
        Also write the grid: ``.npz`` (arrays ``north``, ``east``, ``anomaly``), or ``.nc``
        (NetCDF through xarray, with ``northing`` and ``easting`` coordinates).

    Returns
    -------
    DemoResult

    Raises
    ------
    ValueError
        A bad option, or ``save`` with another extension.
    ImportError
        ``save`` ending in ``.nc`` without xarray.
    """
    stream = file if file is not None else sys.stdout

    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    save_path = _check_save(save)
    problem = make_problem(size, **dict(model or {}))
    n_rec, n_cells = len(problem.receivers), len(problem.cells)
    say(
        f"mepa demo: total-field magnetic anomaly of a dipping slab ({size})\n"
        f"  {n_rec} receivers x {n_cells} dipole cells of {problem.cell_size:g} m, "
        f"adaptive refinement near the body\n"
        f"  {_accel_line()}"
    )

    t0 = time.perf_counter()
    executor = make_executor(executor_kind, n_workers, address)
    with executor:
        n = executor.get_n_workers()
        executor.gather([executor.submit(_ready) for _ in range(n)], timeout=120)
        startup = time.perf_counter() - t0
        say(f"  executor: {type(executor).__name__} with {n} workers (started in {startup:.2f} s)")

        t0 = time.perf_counter()
        bar = (
            executor.progress(total=n_rec, desc="receivers", unit="rx", leave=False)
            if progress else None
        )
        task_cpu: list[float] = []
        cpu_event = executor.register(task_cpu.append)
        host_cpu = time.process_time()
        alloc = executor.arrange(problem.receivers, shuffle=True)
        cells, moments = executor.scatter(problem.cells), executor.scatter(problem.moments)
        futures = executor.distribute(
            forward_task, alloc, cells, moments, problem.direction, problem.cell_size, bar,
            cpu_event,
        )
        # gather returns once every event the tasks fired has been dispatched: task_cpu is full.
        parallel = alloc.reassemble(executor.gather(futures))
        parallel_s = time.perf_counter() - t0
        host_cpu = time.process_time() - host_cpu
        load = _load_average()
        if bar is not None:
            bar.close()

    t0, cpu0 = time.perf_counter(), time.thread_time()
    serial = problem.forward()
    serial_s, serial_cpu = time.perf_counter() - t0, time.thread_time() - cpu0

    error = float(np.max(np.abs(parallel - serial)) / np.max(np.abs(serial)))
    anomaly = parallel.reshape(len(problem.north), len(problem.east))
    say(f"  anomaly: {anomaly.min():.1f} to {anomaly.max():.1f} nT")
    say(f"  max relative error (parallel vs serial): {error:.3e}")
    speedup = serial_s / parallel_s if parallel_s > 0 else math.inf
    say(
        f"  time: parallel {parallel_s:.2f} s on {n} workers, serial {serial_s:.2f} s, "
        f"speed-up {speedup:.2f}x"
    )
    worker_cpu = math.fsum(task_cpu)
    busy = worker_cpu / (n * parallel_s) if parallel_s > 0 else 1.0
    say(
        f"  CPU time: {worker_cpu:.2f} s in the workers ({busy:.0%} of {n} x the parallel "
        f"wall time), {serial_cpu:.2f} s serially"
    )
    threads_cores = host_cpu / parallel_s if executor_kind == "thread" and parallel_s > 0 else None
    note = busy_note(
        executor_kind, n, busy, parallel_s, load=load, cores=os.cpu_count() or 1,
        thread_cores=threads_cores, serial_cores=serial_cpu / serial_s if serial_s > 0 else None,
    )
    if note:
        say(f"  note: {note}")
    image = _plot(problem, anomaly, Path(out), say) if plot else None
    if save_path is not None:
        _save(problem, anomaly, save_path)
        say(f"  grid written to {save_path}")
    return DemoResult(anomaly, error, parallel_s, serial_s, startup, n, image, worker_cpu)


def busy_note(
    kind: str, n_workers: int, busy: float, parallel_seconds: float, *, load: float | None,
    cores: int, thread_cores: float | None = None, serial_cores: float | None = None,
) -> str | None:
    """Why the workers were busy less than 3/4 of the parallel run, or ``None`` if they were not.

    Two causes look alike from the workers' CPU time: **other programs** on the machine, which
    show in the load average (runnable tasks, averaged over a minute) beyond the demo's own
    workers; and, on the thread executor, **the GIL**: threads that hold it take turns, so the
    process gets no more CPU time per second with ``n`` threads (``thread_cores``) than one
    thread got in the serial run (``serial_cores``); and the load average does not count them
    (a thread waiting for the GIL sleeps). On a crowded machine the comparison cannot tell
    the two apart (a machine that gives each program one share of the cores, whatever its
    threads, makes threads that release the GIL look the same), and the note says so.

    Parameters
    ----------
    kind
        The executor kind.
    n_workers
        Its workers.
    busy
        The workers' CPU time over ``n_workers`` times the parallel wall time.
    parallel_seconds
        The parallel wall time.
    load
        The 1-minute load average after the run (``None`` where the system does not say).
    cores
        Logical cores of the machine.
    thread_cores
        For the thread executor: the process's CPU seconds per wall second during the run.
    serial_cores
        The same for the serial run (about 1 on an idle machine, less under load).

    Examples
    --------
    >>> busy_note("thread", 2, 0.5, 10.0, load=1.1, cores=2, thread_cores=1.0,
    ...           serial_cores=1.0)[:50]
    'the 2 threads together used 1.00 cores, as one thr'
    >>> busy_note("process", 2, 0.45, 10.0, load=4.2, cores=2)[:45]
    'the workers ran 45% of the time while the loa'
    >>> busy_note("process", 2, 0.9, 10.0, load=2.0, cores=2) is None
    True
    """
    if kind == "linear" or busy >= 0.75:
        return None
    if parallel_seconds < 1.0:
        return (
            "at this size sending the work and the results costs about as much as computing "
            "them; a larger --size shows the speed-up"
        )
    ours = n_workers * busy
    others = None if load is None else max(0.0, load - ours)
    crowded = others is not None and others >= 0.5 * min(cores, n_workers)
    gil = (
        kind == "thread" and thread_cores is not None and serial_cores is not None
        and serial_cores > 0 and thread_cores < 1.4 * serial_cores
    )
    notes = []
    if gil and crowded:
        # Where the machine's share of each program is capped (control groups give a
        # program a share of the cores however many threads it runs), busy cores make
        # threads that do release the GIL look like one thread too.
        notes.append(
            f"the {n_workers} threads together used {thread_cores:.2f} cores, as one thread "
            f"did serially ({serial_cores:.2f}); with other programs busy on the cores this does "
            "not tell whether they held the GIL (a shared machine may give this program one "
            "share of the cores however many threads it runs): compare with --executor process "
            "now, or rerun on a quiet machine"
        )
    elif gil:
        notes.append(
            f"the {n_workers} threads together used {thread_cores:.2f} cores, as one thread "
            f"did serially ({serial_cores:.2f}): they held the GIL (Python code, or NumPy calls "
            "on small arrays) and took turns; the process executor runs such code at once "
            "(see the map_array guide: when threads scale)"
        )
    if crowded:
        assert load is not None
        notes.append(
            f"the workers ran {busy:.0%} of the time while the load average was {load:.1f} on "
            f"{cores} cores: other programs were sharing the cores, and the speed-up reflects "
            "that"
        )
    if not notes:
        notes.append(
            f"the workers ran {busy:.0%} of the time, with no sign of other programs "
            f"(load average {'unknown' if load is None else f'{load:.1f}'}): they waited for "
            "work or data"
        )
    return "; ".join(notes)


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):  # not on this system
        return None


def _accel_line() -> str:
    from ._accel import describe, source_checkout

    return describe(checkout=source_checkout())


def _check_save(save: str | Path | None) -> Path | None:
    if save is None:
        return None
    path = Path(save)
    if path.suffix not in (".npz", ".nc"):
        raise ValueError(
            f"save must end in .npz or .nc, got {str(save)!r}; e.g. --save grid.npz, or "
            "--save grid.nc for NetCDF (needs xarray)"
        )
    if path.suffix == ".nc":
        try:
            import xarray  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                f"saving {str(save)!r} as NetCDF needs xarray ({exc}); pip install xarray "
                "netcdf4, or save as .npz"
            ) from exc
    return path


def _save(problem: MagneticProblem, anomaly: NDArray[np.float64], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, north=problem.north, east=problem.east, anomaly=anomaly)
        return
    import xarray

    grid = xarray.DataArray(
        anomaly,
        coords={"northing": problem.north, "easting": problem.east},
        dims=("northing", "easting"),
        name="total_field_anomaly",
        attrs={
            "units": "nT",
            "long_name": "total-field magnetic anomaly",
            "coordinates_note": "northing and easting in m; the data are x north, y east, z down",
        },
    )
    grid.to_netcdf(path)


def _ready() -> bool:
    return True


def _plot(
    problem: MagneticProblem, anomaly: NDArray[np.float64], out: Path,
    say: Callable[[str], None],
) -> Path | None:
    try:
        from matplotlib.colors import Normalize
        from matplotlib.figure import Figure
    except ImportError:
        say("  matplotlib is not installed: no map written (pip install 'mepa[plot]')")
        return None
    fig = Figure(figsize=(6.4, 5.2), layout="constrained")
    ax = fig.add_subplot()
    # One linear scale, symmetric about zero: the negative lobe shows at its true size.
    limit = max(float(np.abs(anomaly).max()), 1e-9)
    norm = Normalize(vmin=-limit, vmax=limit)
    mesh = ax.pcolormesh(
        problem.east, problem.north, anomaly, cmap="RdBu_r", norm=norm, shading="auto"
    )
    ax.plot(problem.outline[:, 1], problem.outline[:, 0], "k--", lw=1, label="slab (plan)")
    ax.set_xlabel("east (m)")
    ax.set_ylabel("north (m)")
    ax.set_aspect("equal")
    ax.set_title("Total-field anomaly of a dipping slab")
    ax.legend(loc="lower right", fontsize="small")
    fig.colorbar(mesh, ax=ax, label="anomaly (nT)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    say(f"  map written to {out}")
    return out
