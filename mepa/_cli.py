"""The ``mepa`` command: ``mepa demo`` and ``mepa info`` (also ``python -m mepa ...``).

Errors are reported as one ``mepa: error: ...`` line on stderr and a non-zero exit status;
``--traceback`` shows the full Python traceback instead.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import platform
import sys
import traceback
from collections.abc import Sequence
from typing import TextIO

__all__ = ["build_parser", "run"]

EXECUTORS = ("linear", "thread", "process", "dask")
"""The kinds ``--executor`` accepts besides those the backend registry adds."""
SIZES = ("small", "default", "large")

DEMO_TOLERANCE = 1e-10
"""Largest relative difference between the demo's parallel and serial results that passes."""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises instead of exiting, so ``main`` returns a status."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(self, message)


class _UsageError(Exception):
    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


# flag, keyword of mepa._demo.make_problem, default, unit, help
_MODEL_OPTIONS: tuple[tuple[str, str, float, str, str], ...] = (
    ("--inclination", "inclination", 60.0, "DEG",
     "inclination of the inducing field, degrees below the horizontal"),
    ("--declination", "declination", 10.0, "DEG",
     "declination of the inducing field, degrees east of north"),
    ("--field", "field_nt", 50_000.0, "NT", "strength of the inducing field, nT"),
    ("--susceptibility", "susceptibility", 0.05, "SI", "volume susceptibility of the slab"),
    ("--dip", "dip", 50.0, "DEG", "dip of the slab towards north, 0 < dip <= 90"),
    ("--depth", "depth", 3.0, "M", "depth of the slab's top edge, m"),
    ("--thickness", "thickness", 30.0, "M", "thickness of the slab, m"),
    ("--strike-length", "strike_length", 160.0, "M", "length of the slab along east, m"),
    ("--dip-extent", "dip_extent", 100.0, "M", "extent of the slab down dip, m"),
    ("--height", "height", 1.0, "M", "height of the receivers above the ground, m"),
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``mepa`` command."""
    parser = _Parser(
        prog="mepa",
        description="mepa: typed data-parallel NumPy over threads, processes and Dask clusters.",
    )
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    demo = commands.add_parser(
        "demo",
        help="compute a magnetic anomaly in parallel and serially, and compare",
        description=(
            "Compute the total-field magnetic anomaly of a buried dipping slab at a grid of "
            "receivers, on the chosen executor (with a progress bar fed by the workers) and "
            "serially; print the largest difference, the timings and the speed-up, and write "
            "a map of the anomaly."
        ),
    )
    demo.add_argument(
        "--executor", choices=_executor_kinds(), default=None,
        help="where to run: linear (this thread), thread, process (default) or dask "
             "(default with --address)",
    )
    demo.add_argument(
        "--workers", type=_positive_int, default=None, metavar="N",
        help="number of workers (default: one per physical core; for dask, the size of the "
             "embedded cluster)",
    )
    demo.add_argument(
        "--size", choices=SIZES, default="default",
        help="problem size: small (~1 s), default (~10 s on 2 cores) or large",
    )
    demo.add_argument(
        "--address", default=None, metavar="URL",
        help="Dask scheduler to use, e.g. tcp://10.0.0.5:8786 (implies --executor dask); "
             "without it, --executor dask starts a local cluster",
    )
    demo.add_argument("--no-plot", action="store_true", help="do not write the PNG map")
    demo.add_argument(
        "--out", default="mepa-demo-magnetic.png", metavar="PATH",
        help="where to write the map (default: %(default)s)",
    )
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    demo.add_argument(
        "--save", default=None, metavar="PATH",
        help="also write the grid: PATH.npz (north, east, anomaly) or PATH.nc (NetCDF, needs "
             "xarray)",
    )
    model = demo.add_argument_group(
        "model", "the field, the slab and the survey (x north, y east, z down; see the docs "
        "page 'The demo's model')",
    )
    for flag, key, default, unit, what in _MODEL_OPTIONS:
        model.add_argument(
            flag, dest=key, type=_finite_float, default=default, metavar=unit,
            help=f"{what} (default: %(default)s)",
        )

    commands.add_parser(
        "info",
        help="show the version and the executors available here",
        description="Show mepa's version and each executor with the workers it would use.",
    )
    return parser


def run(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None,
        stderr: TextIO | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return the exit status."""
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    parser = build_parser()
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(args_list)
    except _UsageError as exc:
        exc.parser.print_usage(err)
        print(f"{exc.parser.prog}: error: {exc}", file=err)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    try:
        if args.command == "demo":
            return _demo(args, out)
        return _info(out)
    except KeyboardInterrupt:
        print("mepa: interrupted", file=err)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the command reports every error as one line
        if args.traceback:
            traceback.print_exc(file=err)
        else:
            print(f"mepa: error: {_describe(exc)}", file=err)
            if not _expected(exc):
                print("(run with --traceback for the details)", file=err)
        return EXIT_ERROR


def _expected(exc: BaseException) -> bool:
    """Whether ``exc`` is a usage problem whose message says all there is to say."""
    from ._errors import MepaError

    return isinstance(exc, (MepaError, ValueError, ImportError))


def _describe(exc: BaseException) -> str:
    """The message of ``exc``, prefixed by its type unless the message says it all."""
    text = str(exc) or type(exc).__name__
    return text if _expected(exc) else f"{type(exc).__name__}: {text}"


def _demo(args: argparse.Namespace, out: TextIO) -> int:
    from ._demo import run_demo

    kind = args.executor or ("dask" if args.address else "process")
    if args.address is not None and kind in ("linear", "thread", "process"):
        raise ValueError(
            f"--address is for the dask executor, got --executor {kind} with --address "
            f"{args.address}; drop --address or use --executor dask"
        )
    if kind == "dask":
        _require_dask()
    model = {key: getattr(args, key) for _, key, _, _, _ in _MODEL_OPTIONS}
    result = run_demo(
        kind, args.workers, args.size, args.address, plot=not args.no_plot, out=args.out,
        file=out, progress=not args.no_progress, model=model, save=args.save,
    )
    if not result.max_relative_error <= DEMO_TOLERANCE:
        raise RuntimeError(
            f"the parallel and serial anomalies differ by {result.max_relative_error:.3e} "
            f"(relative), more than {DEMO_TOLERANCE:g}: the executor returned wrong results"
        )
    return EXIT_OK


def _require_dask() -> None:
    try:
        import distributed  # noqa: F401

        from ._executors._dask import DaskExecutor  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"the dask executor is not available in this installation ({exc}); install "
            "dask.distributed (pip install distributed) or choose --executor process"
        ) from exc


def _info(out: TextIO) -> int:
    import numpy as np

    import mepa

    from ._executors import BACKENDS
    from ._worker import physical_cores

    cores = physical_cores()
    print(f"mepa {mepa.__version__}", file=out)
    print(
        f"  Python {platform.python_version()}, NumPy {np.__version__}, "
        f"{platform.system()} {platform.machine()}",
        file=out,
    )
    print(f"  cores: {cores} physical, {os.cpu_count()} logical", file=out)
    print(f"  {_accelerators()}", file=out)
    print(
        "  threads per worker: 1 of OpenMP, BLAS, numexpr and numba (inner_threads=1; "
        f"numba {_version('numba') if _installed('numba') else 'not installed'})",
        file=out,
    )
    print("executors (default workers: one per physical core):", file=out)
    for kind, entry in BACKENDS.items():
        version = f"  ({entry.requires[0]} {_version(entry.requires[0])})" if entry.requires else ""
        if not entry.available():
            print(f"  {kind:<8} missing    ({entry.missing()})", file=out)
        elif entry.remote:
            print(f"  {kind:<8} available  {entry.summary}{version}", file=out)
        else:
            try:
                with entry.create() as executor:
                    workers = _workers(executor.workers)
            except ImportError as exc:
                print(f"  {kind:<8} missing    ({exc})", file=out)
            else:
                print(f"  {kind:<8} available  {workers}{version}", file=out)
    try:
        import matplotlib

        print(f"plotting: matplotlib {matplotlib.__version__} (demo maps on)", file=out)
    except ImportError:
        print("plotting: matplotlib missing (demo maps off; pip install 'mepa[plot]')", file=out)
    return EXIT_OK


def _executor_kinds() -> tuple[str, ...]:
    from ._executors import BACKENDS

    return tuple(dict.fromkeys((*EXECUTORS, *BACKENDS)))


def _accelerators() -> str:
    from ._accel import describe, source_checkout

    return describe(checkout=source_checkout())


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _workers(workers: Sequence[object]) -> str:
    names = [getattr(w, "name", str(w)) for w in workers]
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return f"{len(names)} workers ({shown})"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"
