"""Command line of the benchmark suite: ``python -m benchmarks [options]``.

Runs the chosen scenarios, prints the Markdown report and writes, under the results folder
(``benchmarks/results`` unless ``--out``)::

    <out>/<timestamp>/results.json    everything measured, machine info, library versions
    <out>/<timestamp>/results.md      the report
    <out>/<timestamp>/<scenario>.png  one bar chart per scenario (with matplotlib)
    <out>/latest.md, <out>/latest.json  copies of the last run's report and data
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ._harness import RunConfig, run_scenario
from ._machine import child_processes, load_average, machine_info
from ._report import render_markdown, write_charts, write_json
from .scenarios import SCENARIOS
from .scenarios._common import REPO_ROOT

__all__ = ["DEFAULT_OUT", "main", "parse_args"]

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"
SCHEMA_VERSION = 1


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see ``python -m benchmarks --help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks of mepa against serial NumPy, loky, joblib, Dask and mpire.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and 3 repetitions: a smoke test that runs in well under a minute",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        metavar="NAME",
        help=f"run only this scenario (repeatable); one of: {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--repeat",
        type=_positive,
        help="timed repetitions per variant, in pairs with its baseline (default 5, quick 3)",
    )
    parser.add_argument("--workers", type=_positive, default=2, help="workers per pool (2)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds one setup or timed call may take before its variant fails "
        "(default 600, quick 30)",
    )
    return parser.parse_args(argv)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _run_folder(out: Path) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = out / stamp
    i = 1
    while folder.exists():
        i += 1
        folder = out / f"{stamp}-{i}"
    folder.mkdir(parents=True)
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; return 0, or 1 if a scenario could not run at all.

    A variant that fails (e.g. a mepa API that is not available) does not change the exit
    status: it is reported, with its error, and the run goes on.
    """
    args = parse_args(argv)
    config = RunConfig(
        quick=args.quick,
        repeat=args.repeat or (3 if args.quick else 5),
        workers=args.workers,
        call_timeout=args.timeout or (30.0 if args.quick else 600.0),
    )
    names = list(dict.fromkeys(args.scenario or SCENARIOS))
    # Child interpreters and workers (spawn, loky, Dask nannies) import benchmarks and mepa.
    parts = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))

    t0 = time.perf_counter()
    run: dict[str, object] = {
        "schema": SCHEMA_VERSION,
        "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "config": {
            "quick": config.quick,
            "repeat": config.repeat,
            "warmup": config.warmup,
            "workers": config.workers,
            "call_timeout": config.call_timeout,
            "scenarios": names,
        },
        "machine": machine_info(),
    }
    _log(f"mepa benchmarks: {', '.join(names)} ({'quick' if config.quick else 'full'})")
    results: dict[str, dict[str, object]] = {}
    for name in names:
        _log(f"scenario {name}")
        results[name] = run_scenario(SCENARIOS[name], config, _log)
    run["scenarios"] = results
    run["duration_s"] = time.perf_counter() - t0
    machine = run["machine"]
    assert isinstance(machine, dict)
    machine["load_average_end"] = load_average()
    run["leftover_child_processes"] = child_processes()

    folder = _run_folder(args.out)
    run["skipped_notes"] = write_charts(run, folder)  # also sets each scenario's "chart"
    markdown = render_markdown(run)
    write_json(run, folder / "results.json")
    (folder / "results.md").write_text(markdown, encoding="utf-8")
    write_json(run, args.out / "latest.json")
    (args.out / "latest.md").write_text(
        render_markdown(run, image_prefix=f"{folder.name}/"), encoding="utf-8"
    )
    print(markdown)
    _log(f"wrote {folder / 'results.json'} and {args.out / 'latest.md'}")
    failed = [n for n, s in results.items() if s.get("error")]
    if failed:
        _log(f"scenarios that could not run: {', '.join(failed)}")
        return 1
    return 0
