"""The ``mepa`` command: ``info``, ``demo``, and errors as one clean line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mepa
import mepa._demo
from mepa.__main__ import main

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent


def test_info_lists_the_executors_and_their_workers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"mepa {mepa.__version__}" in out
    for kind in ("linear", "thread", "process", "dask"):
        assert f"  {kind} " in out
    assert "workers (process-0" in out


def test_demo_small_on_threads(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["demo", "--size", "small", "--executor", "thread", "--no-plot"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "max relative error (parallel vs serial): " in captured.out
    assert "ThreadExecutor with" in captured.out
    assert "map written" not in captured.out


def test_demo_writes_the_map_where_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "demo.png"
    status = main(["demo", "--size", "small", "--executor", "linear", "--workers", "2",
                   "--out", str(png), "--no-progress"])
    assert status == 0
    assert png.exists()
    assert "LinearExecutor with 2 workers" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
        (["demo", "--executor", "gpu"], "argument --executor: invalid choice: 'gpu'"),
        (["demo", "--size", "huge"], "argument --size: invalid choice: 'huge'"),
        (["demo", "--workers", "0"], "argument --workers: must be a positive integer, got 0"),
        (["demo", "--workers", "two"], "must be a positive integer, got 'two'"),
        (["demo", "--dip", "steep"], "argument --dip: must be a number, got 'steep'"),
        (["demo", "--height", "inf"], "argument --height: must be a finite number, got 'inf'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "usage: mepa" in err
    assert "Traceback" not in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--help"]) == 0
    from mepa._executors import BACKENDS

    assert "--executor {" + ",".join(BACKENDS) + "}" in capsys.readouterr().out


def test_address_needs_the_dask_executor(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["demo", "--executor", "process", "--address", "tcp://127.0.0.1:1"])
    assert status == 1
    err = capsys.readouterr().err
    assert "mepa: error: --address is for the dask executor" in err
    assert "Traceback" not in err


def test_missing_dask_executor_is_a_clean_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "mepa._executors._dask", None)
    assert main(["demo", "--executor", "dask", "--no-plot"]) == 1
    err = capsys.readouterr().err
    assert "mepa: error: the dask executor is not available" in err
    assert "Traceback" not in err
    assert main(["info"]) == 0
    assert "dask     missing" in capsys.readouterr().out


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("boom")


def test_unexpected_errors_are_one_line_unless_traceback_is_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(mepa._demo, "run_demo", _boom)
    assert main(["demo", "--no-plot"]) == 1
    err = capsys.readouterr().err
    assert "mepa: error: RuntimeError: boom" in err
    assert "--traceback" in err
    assert "Traceback (most recent call last)" not in err
    assert main(["--traceback", "demo", "--no-plot"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_wrong_parallel_result_fails_the_demo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = mepa._demo.run_demo

    def wrong(*args: object, **kwargs: object) -> mepa._demo.DemoResult:
        result = real(*args, **kwargs)  # type: ignore[arg-type]
        return mepa._demo.DemoResult(
            result.anomaly, 1e-3, result.parallel_seconds, result.serial_seconds,
            result.startup_seconds, result.n_workers, result.image,
        )

    monkeypatch.setattr(mepa._demo, "run_demo", wrong)
    assert main(["demo", "--size", "small", "--executor", "linear", "--no-plot",
                 "--no-progress"]) == 1
    assert "differ by 1.000e-03" in capsys.readouterr().err


def test_python_dash_m_mepa() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mepa", "info"], capture_output=True, text=True, timeout=60,
        cwd=ROOT, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("mepa ")
    done = subprocess.run(
        [sys.executable, "-m", "mepa", "demo", "--nope"], capture_output=True, text=True,
        timeout=60, cwd=ROOT, check=False,
    )
    assert done.returncode == 2
    assert "unrecognized arguments: --nope" in done.stderr


def test_info_says_whether_the_c_accelerators_are_active(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mepa._accel import accelerators

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    line = next(t for t in out.splitlines() if "C accelerators" in t)
    assert ("active" in line) == all(a.active for a in accelerators())
    assert "threads per worker: 1 of OpenMP, BLAS, numexpr and numba" in out


def test_demo_model_options_and_save(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "grid.npz"
    argv = ["demo", "--size", "small", "--executor", "linear", "--no-plot", "--no-progress",
            "--inclination", "75", "--declination", "-5", "--field", "48000",
            "--susceptibility", "0.02", "--dip", "70", "--depth", "5", "--thickness", "20",
            "--strike-length", "120", "--dip-extent", "80", "--height", "2",
            "--save", str(grid)]
    assert main(argv) == 0
    assert f"grid written to {grid}" in capsys.readouterr().out
    expected = mepa._demo.make_problem(
        "small", inclination=75.0, declination=-5.0, field_nt=48_000.0, susceptibility=0.02,
        dip=70.0, depth=5.0, thickness=20.0, strike_length=120.0, dip_extent=80.0, height=2.0,
    ).forward()
    saved = np.load(grid)
    assert np.allclose(saved["anomaly"].ravel(), expected, rtol=1e-12)


def test_demo_bad_geometry_is_one_clean_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--size", "small", "--executor", "linear", "--no-plot",
                 "--no-progress", "--dip", "0"]) == 1
    err = capsys.readouterr().err
    assert "mepa: error: dip must satisfy 0 < dip <= 90 (degrees), got 0.0" in err
    assert "--traceback" not in err
