"""The benchmark suite: its statistics on made-up timings, its runner, and a quick real run.

No assertion here is about speed: the machine is shared and noisy. The quick run only has to
finish, write its JSON and Markdown, and report every scenario with its variants.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks package lives in the checkout, not installed
    sys.path.insert(0, str(ROOT))

stats = importlib.import_module("benchmarks._stats")
harness = importlib.import_module("benchmarks._harness")
report = importlib.import_module("benchmarks._report")

EXPECTED_VARIANTS = {
    "cpu_map": [
        "serial", "mepa-process", "mepa-process-keep-heap", "mepa-thread", "loky", "joblib",
        "dask", "mpire",
    ],
    "memory_map": [
        "serial", "mepa-process", "mepa-process-keep-heap", "mepa-thread", "loky", "joblib",
        "dask", "mpire",
    ],
    "shuffled_map": [
        "process-unshuffled",
        "process-block-shuffle",
        "process-permutation",
        "thread-unshuffled",
        "thread-block-shuffle",
        "thread-permutation",
    ],
    "dispatch": [
        "serial",
        "mepa-process",
        "loky-tuned",
        "joblib",
        "mpire",
        "dask-client-map",
        "mepa-dask",
    ],
    "events": ["mepa-process", "manager-queue", "simple-queue", "progress-off", "progress-on"],
    "startup": [
        "python-pass",
        "import-mepa",
        "import-mepa-api",
        "import-numpy-pydantic-tqdm",
        "mepa-first-task",
        "mepa-first-task-warm",
        "loky-first-task",
    ],
    "demo": [
        "magnetic-serial", "magnetic-mepa", "magnetic-joblib", "pi-serial", "pi-mepa", "pi-joblib",
    ],
}


# -- statistics and ratios: pure functions, exact values ------------------------------------


def test_summarize_even_count() -> None:
    assert stats.summarize([0.375, 0.125, 0.25, 0.5]) == stats.Summary(
        n=4, median=0.3125, min=0.125, max=0.5
    )


def test_summarize_odd_count_and_single() -> None:
    assert stats.summarize([3.0, 1.0, 2.0]) == stats.Summary(n=3, median=2.0, min=1.0, max=3.0)
    assert stats.summarize([0.5]) == stats.Summary(n=1, median=0.5, min=0.5, max=0.5)


@pytest.mark.parametrize(
    ("times", "message"),
    [
        ([], r"times must hold at least one timing, got \[\]"),
        ([1.0, -0.5], r"times must be finite and >= 0, got \[-0.5\]"),
        ([float("nan")], r"times must be finite and >= 0, got \[nan\]"),
    ],
)
def test_summarize_rejects(times: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stats.summarize(times)


def test_ratios_and_rate() -> None:
    assert stats.speedup(2.0, 0.5) == 4.0
    assert stats.speedup(None, 0.5) is None
    assert stats.speedup(1.0, None) is None
    assert stats.speedup(1.0, 0.0) is None
    assert stats.time_ratio(1.5, 1.0) == 1.5
    assert stats.time_ratio(1.0, None) is None
    assert stats.rate(1000, 0.25) == 4000.0
    assert stats.rate(None, 0.25) is None


def test_best_of_picks_lowest_median_and_skips_missing() -> None:
    medians = {"loky": 2.0, "joblib": 1.5, "mpire": None, "dask": 1.5}
    assert stats.best_of(medians, ["loky", "joblib", "mpire", "dask"]) == "joblib"
    assert stats.best_of(medians, ["mpire"]) is None
    assert stats.best_of(medians, []) is None


MEDIANS = {"serial": 1.0, "mepa": 0.5, "loky": 0.25, "pass": 0.125, "imp": 0.375, "ref": 0.625}


@pytest.mark.parametrize(
    ("target", "value", "status"),
    [
        (stats.Target("t", "speedup", "mepa", 1.8, reference="serial"), 2.0, "PASS"),
        (stats.Target("t", "speedup", "mepa", 2.5, reference="serial"), 2.0, "MISS"),
        (stats.Target("t", "time_ratio", "mepa", 1.25, "<=", reference="loky"), 2.0, "MISS"),
        (stats.Target("t", "time_ratio", "loky", 1.0, "<=", reference="mepa"), 0.5, "PASS"),
        (
            stats.Target("t", "net_time_ratio", "imp", 1.0, "<=", reference="ref", offset="pass"),
            0.5,
            "PASS",
        ),
        (stats.Target("t", "rate", "mepa", 1e6), 2e6, "PASS"),
        (stats.Target("t", "rate", "loky", 1e7), 4e6, "MISS"),
        (stats.Target("t", "value", "block_vs_row", 1.02, "<="), 1.01, "PASS"),
        (stats.Target("t", "speedup", "missing", 1.0, reference="serial"), None, "N/A"),
        (stats.Target("t", "value", "absent", 1.0), None, "N/A"),
    ],
)
def test_evaluate_target(target: Any, value: float | None, status: str) -> None:
    items = {"mepa": 1_000_000, "loky": 1_000_000}
    result = stats.evaluate_target(target, MEDIANS, items, {"block_vs_row": 1.01})
    assert result.value == value
    assert result.status == status
    assert result.as_dict()["status"] == status


def _record(name: str, role: str, median: float | None) -> dict[str, Any]:
    return {
        "name": name,
        "role": role,
        "stats": None if median is None else {"n": 5, "median": median, "min": 0, "max": 0},
    }


def test_add_ratios() -> None:
    records = [
        _record("serial", "serial", 1.0),
        _record("mepa-process", "mepa", 0.5),
        _record("loky", "competitor", 0.25),
        _record("joblib", "competitor", 0.75),
        _record("mpire", "competitor", None),
    ]
    assert harness.add_ratios(records, "serial") == "loky"
    by_name = {r["name"]: r for r in records}
    assert by_name["mepa-process"]["speedup_vs_baseline"] == 2.0
    assert by_name["mepa-process"]["speedup_vs_best_competitor"] == 0.5
    assert by_name["serial"]["speedup_vs_best_competitor"] == 0.25
    assert by_name["loky"]["speedup_vs_best_competitor"] == 1.0
    assert by_name["mpire"]["speedup_vs_baseline"] is None


def test_add_ratios_without_baseline_or_competitors() -> None:
    records = [_record("a", "mepa", 1.0)]
    assert harness.add_ratios(records, None) is None
    assert records[0]["speedup_vs_baseline"] is None
    assert records[0]["speedup_vs_best_competitor"] is None


def test_formatting() -> None:
    assert report.fmt_time(1.5) == "1.50 s"
    assert report.fmt_time(0.0123) == "12.3 ms"
    assert report.fmt_ratio(1.849) == "1.85x"
    assert report.fmt_rate(1_234_567, "tasks") == "1.23M tasks/s"


# -- the runner, with fake variants ------------------------------------------------------------


def test_run_group_interleaves_warms_up_and_isolates_failures() -> None:
    calls: list[str] = []
    closed: list[str] = []

    def measured(name: str, seconds: list[float]) -> Any:
        it = iter(seconds)

        def setup(stack: contextlib.ExitStack) -> Any:
            stack.callback(closed.append, name)

            def call() -> Any:
                calls.append(name)
                return harness.Measured(next(it))

            return call

        return setup

    def broken_setup(stack: contextlib.ExitStack) -> Any:
        raise AttributeError("module 'mepa' has no attribute 'ProcessExecutor'")

    def fails_second_time(stack: contextlib.ExitStack) -> Any:
        count = iter(range(10))

        def call() -> None:
            calls.append("C")
            if next(count) == 2:
                raise RuntimeError("worker died")

        return call

    group = harness.Group(
        name="g",
        timed="fake",
        baseline="A",
        variants=(
            harness.Variant("A", "serial", measured("A", [9.0, 1.0, 2.0, 3.0])),
            harness.Variant("B", "competitor", measured("B", [9.0, 0.5, 0.25, 0.75])),
            harness.Variant("C", "mepa", fails_second_time),
            harness.Variant("D", "mepa", broken_setup),
            harness.Variant("E", "competitor", broken_setup, requires=("no_such_module_xyz",)),
        ),
    )
    config = harness.RunConfig(repeat=3, warmup=1, call_timeout=0)
    records, teardown_error = harness.run_group(group, config)
    assert teardown_error is None
    # warm-up A B C, then A B C, A B C (C fails here), A B
    assert calls == ["A", "B", "C", "A", "B", "C", "A", "B", "C", "A", "B"]
    assert closed == ["B", "A"]  # reverse order of setup
    by_name = {r["name"]: r for r in records}
    assert by_name["A"]["stats"] == {"n": 3, "median": 2.0, "min": 1.0, "max": 3.0}
    assert by_name["B"]["stats"] == {"n": 3, "median": 0.5, "min": 0.25, "max": 0.75}
    assert by_name["C"]["status"] == "failed"
    assert by_name["C"]["error"].startswith("repetition 2: RuntimeError: worker died")
    assert by_name["D"]["status"] == "failed"
    assert "has no attribute 'ProcessExecutor'" in by_name["D"]["error"]
    assert by_name["E"]["status"] == "skipped"
    assert by_name["E"]["notes"] == ["not installed: no_such_module_xyz"]
    assert harness.add_ratios(records, "A") == "B"
    assert by_name["B"]["speedup_vs_baseline"] == 4.0


def test_run_group_marks_wrong_results_failed() -> None:
    def setup(stack: contextlib.ExitStack) -> Any:
        def check(out: object) -> None:
            raise AssertionError(f"wrong result: {out!r}")

        return harness.Prepared(call=lambda: 41, check=check)

    group = harness.Group("g", "fake", (harness.Variant("X", "mepa", setup),))
    records, _ = harness.run_group(group, harness.RunConfig(repeat=2, call_timeout=0))
    assert records[0]["status"] == "failed"
    assert records[0]["error"].startswith("warm-up: AssertionError: wrong result: 41")
    assert records[0]["times"] == []


def test_deadline_interrupts_a_hung_call() -> None:
    t0 = time.perf_counter()
    with (
        pytest.raises(harness.VariantTimeout, match=r"hang took more than 0\.2 s"),
        harness.deadline(0.2, "hang"),
    ):
        time.sleep(10)
    assert time.perf_counter() - t0 < 5


# -- a quick real run ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.dask
@pytest.mark.timeout(240)
def test_quick_run(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    run_folders = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(run_folders) == 1
    folder = run_folders[0]
    run = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    assert json.loads((tmp_path / "latest.json").read_text(encoding="utf-8")) == run
    markdown = (folder / "results.md").read_text(encoding="utf-8")
    assert "| variant |" in markdown
    assert (tmp_path / "latest.md").is_file()

    config = run["config"]
    assert config["quick"] is True
    assert config["repeat"] >= 2
    machine = run["machine"]
    for key in ("cpu_count", "python", "numpy", "libraries"):
        assert machine[key], key
    assert set(run["scenarios"]) == set(EXPECTED_VARIANTS)

    for name, expected in EXPECTED_VARIANTS.items():
        scenario = run["scenarios"][name]
        assert scenario["error"] is None, (name, scenario["error"])
        variants = [v for g in scenario["groups"] for v in g["variants"]]
        assert [v["name"] for v in variants] == expected, name
        assert f"`{name}`" in markdown
        for v in variants:
            where = f"{name}/{v['name']}"
            assert v["status"] in {"ok", "failed", "skipped"}, where
            if v["status"] == "ok":
                assert v["stats"]["n"] >= config["repeat"], where
                assert len(v["times"]) == v["stats"]["n"], where
            elif v["status"] == "failed":
                # Only mepa may fail (its API is still being built); the error says why.
                assert v["role"] == "mepa", (where, v["error"])
                assert v["error"], where
            else:
                assert any("not installed" in n for n in v["notes"]), where
        for target in scenario["targets"]:
            assert target["status"] in {"PASS", "MISS", "N/A"}, (name, target)
