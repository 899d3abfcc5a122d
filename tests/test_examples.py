"""Every file in ``examples/`` runs as a script, exits 0 and prints what it promises.

The examples run as subprocesses (``sys.executable``, in a fresh temporary directory) a few at a
time from a module-level pool, so that the slow seed examples, which mostly sleep, overlap with
the others; each test then waits for its own example, with a timeout.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT = 90  # seconds per example, including the wait in the queue
PARALLEL = 3  # examples running at once

# path -> (stream, fragment the example must print)
EXPECTED: dict[str, tuple[str, str]] = {
    "seed_submit_gather.py": ("stdout", "{'add': 3, 'mul': 2, 'div': 2.0}"),
    "seed_communication.py": ("stderr", "20/20"),
    "seed_parallel_utility.py": ("stderr", "20/20"),
    "structured_gather.py": ("stdout", "structured gather: ok"),
    "weighted_workers.py": ("stdout", "gpu-0 (weight 3, group 'gpu'): 600 rows"),
    "events_callback.py": ("stdout", "reported by events: 46"),
    "shared_output.py": ("stdout", "8 tasks wrote 10000 rows in place"),
    "sub_executor.py": ("stdout", "sub-executor: ['thread-0', 'thread-2']"),
    "map_array.py": ("stdout", "map_array: ok"),
    "magnetic_map_array.py": ("stdout", "magnetic map_array: ok"),
    "demo_magnetic.py": ("stdout", "max relative error (parallel vs serial)"),
}
DASK_SEED = {"seed_dask/add.py", "seed_dask/main.py"}


def example_files() -> list[str]:
    return sorted(p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*.py"))


def test_every_example_is_checked() -> None:
    assert set(example_files()) == set(EXPECTED) | DASK_SEED


def _run(name: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("MPLBACKEND", "Agg")
    with tempfile.TemporaryDirectory(prefix="mepa-example-") as cwd:
        return subprocess.run(
            [sys.executable, str(EXAMPLES / name)], cwd=cwd, env=env, capture_output=True,
            text=True, timeout=TIMEOUT - 5, check=False,
        )


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, concurrent.futures.Future[subprocess.CompletedProcess[str]]]]:
    """Start every example (a few at a time); slow ones first so that they overlap the rest."""
    slow_first = sorted(EXPECTED, key=lambda name: not name.startswith("seed_"))
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        futures = {name: pool.submit(_run, name) for name in slow_first}
        try:
            yield futures
        finally:
            for future in futures.values():
                future.cancel()


@pytest.mark.timeout(TIMEOUT * 2)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(
    name: str,
    runs: dict[str, concurrent.futures.Future[subprocess.CompletedProcess[str]]],
) -> None:
    done = runs[name].result(timeout=TIMEOUT * 2)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    stream, fragment = EXPECTED[name]
    assert fragment in getattr(done, stream), f"{name} printed:\n{done.stdout}\n{done.stderr}"


@pytest.mark.skip(reason="run against a real cluster by tests/test_dask_*.py")
def test_seed_dask_example() -> None:  # pragma: no cover - see tests/test_dask_seed_example.py
    subprocess.run(
        [sys.executable, "main.py"], cwd=EXAMPLES / "seed_dask", check=True, timeout=60
    )


def test_examples_have_a_docstring_header() -> None:
    for name in EXPECTED:
        if name.startswith("seed_"):
            continue  # the seed README's code, verbatim
        text = (EXAMPLES / name).read_text()
        assert text.startswith('"""'), name
        assert "Run: ``python examples/" in text, name
