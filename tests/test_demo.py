"""The magnetic demo: physics checked by hand, and parallel runs equal to the serial one."""

from __future__ import annotations

import doctest
import importlib.util
import io
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import mepa._demo
from mepa._demo import (
    MU0,
    busy_note,
    field_direction,
    forward,
    induced_moments,
    make_executor,
    make_problem,
    run_demo,
)

pytestmark = pytest.mark.timeout(60)

CM = 1e-7  # mu0 / (4 pi), T m / A
NT = 1e9


def one_point(x: float, y: float, z: float) -> np.ndarray:
    return np.array([[x, y, z]])


# ------------------------------------------------------------------------------ physics


def test_directions_follow_x_north_y_east_z_down() -> None:
    assert np.allclose(field_direction(90, 0), [0, 0, 1])  # straight down
    assert np.allclose(field_direction(0, 0), [1, 0, 0])  # north
    assert np.allclose(field_direction(0, 90), [0, 1, 0])  # east
    u = field_direction(60, 10)
    assert math.isclose(np.linalg.norm(u), 1.0)
    assert math.isclose(u[2], math.sin(math.radians(60)))


def test_induced_moment_is_chi_volume_field_over_mu0() -> None:
    m = induced_moments(8.0, 0.01, 50_000.0, field_direction(90, 0))
    assert m.shape == (1, 3)
    assert np.allclose(m[0], [0, 0, 0.01 * 8.0 * 50_000e-9 / MU0])
    assert math.isclose(m[0, 2], 3.183098861837907, rel_tol=1e-12)


def test_dipole_directly_below_a_receiver_in_a_vertical_field() -> None:
    """Bz = mu0 / (4 pi) * 2 m / r^3 straight above a vertical dipole."""
    m, r = 2.5e3, 7.0
    got = forward(one_point(0, 0, -1), one_point(0, 0, r - 1), one_point(0, 0, m))
    assert math.isclose(got[0], CM * 2 * m / r**3 * NT, rel_tol=1e-12)
    # The same with an explicit direction and a moment built from a susceptibility.
    u = field_direction(90, 0)
    moment = induced_moments(1.0, 0.1, 50_000.0, u)
    got = forward(one_point(3, 4, 0), one_point(3, 4, r), moment, direction=u)
    assert math.isclose(got[0], CM * 2 * moment[0, 2] / r**3 * NT, rel_tol=1e-12)


def test_axial_and_equatorial_positions_of_a_horizontal_dipole() -> None:
    m, r = 1e3, 5.0
    north = field_direction(0, 0)
    dipole = one_point(0, 0, 10)
    axial = forward(one_point(r, 0, 10), dipole, m * north[None], direction=north)
    equatorial = forward(one_point(0, r, 10), dipole, m * north[None], direction=north)
    assert math.isclose(axial[0], CM * 2 * m / r**3 * NT, rel_tol=1e-12)
    assert math.isclose(equatorial[0], -CM * m / r**3 * NT, rel_tol=1e-12)


def test_contributions_add_up_and_chunks_do_not_matter() -> None:
    problem = make_problem("small")
    rec = problem.receivers[::7]
    whole = problem.forward(rec)
    halves = np.concatenate([problem.forward(rec[:100]), problem.forward(rec[100:])])
    tiny_blocks = forward(
        rec, problem.cells, problem.moments, direction=problem.direction,
        cell_size=problem.cell_size, block_bytes=1,
    )
    assert np.allclose(halves, whole, rtol=1e-12, atol=0)
    assert np.allclose(tiny_blocks, whole, rtol=1e-12, atol=1e-12)
    per_cell = sum(
        forward(rec, problem.cells[k:k + 1], problem.moments[k:k + 1],
                direction=problem.direction)
        for k in range(0, len(problem.cells), 37)
    )
    every_37th = forward(rec, problem.cells[::37], problem.moments[::37],
                         direction=problem.direction)
    assert np.allclose(per_cell, every_37th, rtol=1e-12, atol=1e-9)


def test_refinement_is_the_sum_of_explicit_sub_dipoles() -> None:
    h, s = 4.0, 3
    cell, moment = one_point(0, 0, 3.5), one_point(2.0, 1.0, 5.0)
    receiver = one_point(1.0, 0.5, -1.0)  # r = 4.6: s = ceil(3 h / r) = 3
    refined = forward(receiver, cell, moment, direction=field_direction(60, 10),
                      cell_size=h, refine_within=3.0, max_refine=8)
    side = ((np.arange(s) + 0.5) / s - 0.5) * h
    subs = np.stack(np.meshgrid(side, side, side, indexing="ij"), -1).reshape(-1, 3) + cell
    explicit = forward(receiver, subs, np.repeat(moment / s**3, s**3, axis=0),
                       direction=field_direction(60, 10))
    assert math.isclose(refined[0], explicit[0], rel_tol=1e-12)
    far = one_point(300.0, 0.0, -1.0)
    assert forward(far, cell, moment, cell_size=h)[0] == forward(far, cell, moment)[0]


def test_refinement_makes_receivers_near_the_body_cost_more() -> None:
    """What the shuffle balances: refined pairs concentrate over the body's shallow edge."""
    problem = make_problem("small")
    r = np.linalg.norm(problem.receivers[:, None, :] - problem.cells[None], axis=2)
    near_pairs = (r < 8.0 * problem.cell_size).sum(axis=1).reshape(40, 40).sum(axis=1)
    assert near_pairs.max() > 5 * max(near_pairs.min(), 1)


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"receivers must have shape \(n, 3\)"):
        forward(np.zeros(3), np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="moments must have one row per cell"):
        forward(np.zeros((1, 3)), np.zeros((2, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="direction must be a non-zero vector"):
        forward(np.zeros((1, 3)), np.ones((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="size must be one of"):
        make_problem("huge")


def test_docstring_examples() -> None:
    result = doctest.testmod(mepa._demo)
    assert result.attempted > 0
    assert result.failed == 0


# ------------------------------------------------------------------------------ the run


@pytest.mark.parametrize("kind", ["linear", "thread", "process"])
def test_parallel_equals_serial(kind: str) -> None:
    out = io.StringIO()
    result = run_demo(kind, 2, "small", plot=False, file=out, progress=False)
    assert result.max_relative_error <= 1e-12
    assert result.anomaly.shape == (40, 40)
    assert np.allclose(result.anomaly.ravel(), make_problem("small").forward(), rtol=1e-12)
    assert result.n_workers == 2
    assert result.image is None
    text = out.getvalue()
    assert "max relative error (parallel vs serial)" in text
    assert "speed-up" in text
    assert "CPU time:" in text
    assert result.worker_cpu_seconds > 0


@pytest.mark.dask
@pytest.mark.timeout(120)
def test_parallel_equals_serial_on_an_embedded_dask_cluster() -> None:
    pytest.importorskip("distributed")
    out = io.StringIO()
    result = run_demo("dask", 2, "small", plot=False, file=out, progress=True)
    assert result.max_relative_error <= 1e-12
    assert "DaskExecutor with 2 workers" in out.getvalue()


def test_map_and_progress_bar(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "maps" / "anomaly.png"  # type: ignore[operator]
    result = run_demo("thread", 2, "small", plot=True, out=png)
    assert result.image == png
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    captured = capsys.readouterr()
    assert f"map written to {png}" in captured.out
    assert "receivers" in captured.err  # the bar, fed from the workers


def test_without_matplotlib_the_map_is_skipped(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.colors", None)
    out = io.StringIO()
    png = tmp_path / "anomaly.png"  # type: ignore[operator]
    result = run_demo("linear", 1, "small", plot=True, out=png, file=out, progress=False)
    assert result.image is None
    assert not png.exists()
    assert "matplotlib is not installed: no map written" in out.getvalue()


def test_executor_choices() -> None:
    with pytest.raises(ValueError, match="executor kind must be one of"):
        make_executor("gpu")
    with pytest.raises(ValueError, match="address is only used by the dask executor"):
        make_executor("thread", address="tcp://127.0.0.1:8786")
    with pytest.raises(ValueError, match="n_workers sizes the embedded Dask cluster only"):
        make_executor("dask", 2, address="tcp://127.0.0.1:8786")


def test_missing_dask_executor_is_an_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mepa._executors._dask", None)
    with pytest.raises(ImportError, match="the dask executor is not available"):
        make_executor("dask")


# ------------------------------------------------------------------------------ options


def test_model_options_reach_the_problem() -> None:
    base = make_problem("small")
    high = make_problem("small", height=5.0)
    assert np.all(high.receivers[:, 2] == -5.0)
    assert np.all(base.receivers[:, 2] == -1.0)
    steep = make_problem("small", dip=90.0, thickness=20.0)
    # a vertical slab: every cell lies within the slab's 20 m across north
    assert np.ptp(steep.cells[:, 0]) < np.ptp(base.cells[:, 0])
    weak = make_problem("small", susceptibility=0.01, field_nt=25_000.0)
    assert np.allclose(weak.moments, base.moments / 10)
    turned = make_problem("small", inclination=90.0, declination=0.0)
    assert np.allclose(turned.direction, [0.0, 0.0, 1.0])


@pytest.mark.parametrize(
    ("option", "value", "rule"),
    [
        ("dip", 0.0, "0 < dip <= 90"),
        ("dip", 120.0, "0 < dip <= 90"),
        ("height", 0.0, "height > 0"),
        ("depth", -1.0, "depth >= 0"),
        ("thickness", math.nan, "thickness > 0"),
        ("strike_length", -5.0, "strike_length > 0"),
    ],
)
def test_bad_geometry_is_rejected_with_the_rule(option: str, value: float, rule: str) -> None:
    with pytest.raises(ValueError, match=rf"{option} must satisfy {rule}.*got {value!r}"):
        make_problem("small", **{option: value})


def test_a_slab_smaller_than_a_cell_is_rejected() -> None:
    with pytest.raises(ValueError, match="the slab holds no cell of 10 m"):
        make_problem("small", thickness=1.0, strike_length=1.0)


def test_save_npz_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "grid.npz"
    result = run_demo("linear", 1, "small", plot=False, file=io.StringIO(), progress=False,
                      save=path, model={"height": 2.0})
    grid = np.load(path)
    assert np.array_equal(grid["anomaly"], result.anomaly)
    problem = make_problem("small", height=2.0)
    assert np.array_equal(grid["north"], problem.north)
    assert np.array_equal(grid["east"], problem.east)


def test_save_netcdf_through_xarray(tmp_path: Path) -> None:
    xarray = pytest.importorskip("xarray")
    pytest.importorskip("scipy")  # xarray's NetCDF3 writer when netCDF4 is missing
    path = tmp_path / "grid.nc"
    result = run_demo("linear", 1, "small", plot=False, file=io.StringIO(), progress=False,
                      save=path)
    with xarray.open_dataarray(path) as grid:
        assert grid.dims == ("northing", "easting")
        assert grid.attrs["units"] == "nT"
        assert np.array_equal(grid.values, result.anomaly)


def test_save_needs_a_known_extension(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"save must end in \.npz or \.nc, got '.*grid\.csv'"):
        run_demo("linear", 1, "small", plot=False, file=io.StringIO(), progress=False,
                 save=tmp_path / "grid.csv")


# ------------------------------------------------------------------------------ messages


def test_gil_bound_threads_are_told_apart_from_other_programs() -> None:
    # threads that took turns: the process used one core, and nothing else ran
    gil = busy_note("thread", 2, 0.5, 10.0, load=1.0, cores=2, thread_cores=1.0,
                    serial_cores=1.0)
    assert gil is not None
    assert "held the GIL" in gil
    assert "other programs" not in gil
    # workers that ran half the time while the machine was crowded
    crowded = busy_note("process", 2, 0.5, 10.0, load=6.0, cores=2)
    assert crowded is not None
    assert "other programs" in crowded
    assert "load average was 6.0 on 2 cores" in crowded
    assert "GIL" not in crowded
    # threads that used one thread's share on a crowded machine: the GIL cannot be told from
    # a capped share of the cores (processes measured 0.42 cores for 2 workers against 0.40
    # serially at load 15 on this 2-core machine); the note says both, and that it cannot tell
    both = busy_note("thread", 2, 0.3, 10.0, load=5.0, cores=2, thread_cores=0.6,
                     serial_cores=0.5)
    assert both is not None
    assert "does not tell whether they held the GIL" in both
    assert "--executor process" in both
    assert "other programs" in both
    assert "took turns" not in both
    # busy workers, the linear executor, and small runs
    # threads that ran at once on a crowded machine: twice one thread's share, not the GIL
    shared = busy_note("thread", 2, 0.4, 10.0, load=8.0, cores=2, thread_cores=0.8,
                       serial_cores=0.4)
    assert shared is not None
    assert "GIL" not in shared
    assert "other programs" in shared
    assert busy_note("thread", 2, 0.9, 10.0, load=9.0, cores=2, thread_cores=1.8,
                     serial_cores=1.0) is None
    assert busy_note("linear", 1, 0.1, 10.0, load=9.0, cores=2) is None
    small = busy_note("process", 2, 0.2, 0.3, load=0.5, cores=2)
    assert small is not None
    assert "larger --size" in small


def test_numpy_calls_of_the_kernel_cover_at_least_100_000_pairs() -> None:
    # forward() sizes its blocks so that its workspace fits block_bytes: at the default size
    # (7,520 cells) each NumPy call covers this many receiver-cell pairs.
    cells = len(make_problem("default").cells)
    assert mepa._demo.block_rows(cells) * cells >= 100_000


def test_the_demo_says_whether_the_c_accelerators_are_active() -> None:
    out = io.StringIO()
    run_demo("linear", 1, "small", plot=False, file=out, progress=False)
    line = next(t for t in out.getvalue().splitlines() if "C accelerators" in t)
    active = all(
        importlib.util.find_spec(f"mepa.{name}") is not None for name in ("_tally", "_inplace")
    )
    assert ("active" in line) == active


def test_serial_and_parallel_runs_use_the_same_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The speed-up compares like with like: the serial baseline's NumPy calls have the shape
    of the workers' (the blocks of forward depend on the number of cells only)."""
    import threading

    seen: dict[str, list[int]] = {"serial": [], "parallel": []}
    kernel = mepa._demo._block_anomaly
    main = threading.get_ident()

    def spy(block: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
        seen["serial" if threading.get_ident() == main else "parallel"].append(len(block))
        return kernel(block, *args, **kwargs)

    monkeypatch.setattr(mepa._demo, "_block_anomaly", spy)
    model = {"strike_length": 300.0, "dip_extent": 200.0}  # many cells: blocks of few rows
    result = run_demo("thread", 2, "small", plot=False, file=io.StringIO(), progress=True,
                      model=model)
    assert sum(seen["serial"]) == sum(seen["parallel"]) == result.anomaly.size
    rows = max(seen["serial"])
    assert max(seen["parallel"]) == rows
    assert rows == mepa._demo.block_rows(len(make_problem("small", **model).cells))
    assert 1 < rows < result.anomaly.size // 4
    # every block is full but the last of each chunk (one chunk per worker)
    assert sum(1 for b in seen["parallel"] if b != rows) <= 2
    assert sum(1 for b in seen["serial"] if b != rows) <= 1
