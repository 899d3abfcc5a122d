"""The seed README's fourth example, run as a script against a real cluster.

``add.py`` and ``main.py`` are the README's, bar the import line and the cluster's address, and
``main`` prints the result. The scheduler and workers run from directories of their own, so
``add.py`` reaches them only because the executor ships it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("distributed")

pytestmark = [pytest.mark.dask, pytest.mark.timeout(120)]

ADD_PY = """\
# add.py
def func(a, b):
    return a + b
"""

MAIN_PY = """\
# main.py
from mepa import DaskExecutor
from add import func


def main():
    # automatically uploads `add.py` to cluster
    with DaskExecutor('{address}') as executor:
        print(executor.submit_and_gather(func, 1, 2))

if __name__ == '__main__':
    main()
"""

# Pins one call to the worker at the address given on the command line.
PINNED_PY = """\
import sys

from mepa import DaskExecutor
from add import func

with DaskExecutor(sys.argv[1]) as executor:
    (worker,) = [w for w in executor.workers if executor.worker_address(w) == sys.argv[2]]
    future = executor.submit_to(worker, func, 1, 2)
    print(executor.gather(future))
"""


def run(script_dir: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=script_dir, capture_output=True, text=True, timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_seed_dask_example_ships_edits_and_reaches_late_workers(cluster, tmp_path):
    (tmp_path / "add.py").write_text(ADD_PY)
    (tmp_path / "main.py").write_text(MAIN_PY.format(address=cluster.address))
    assert run(tmp_path, "main.py") == "3"

    # Edit add.py between runs: the next run ships the new code.
    (tmp_path / "add.py").write_text(ADD_PY.replace("return a + b", "return a + b + 100"))
    assert run(tmp_path, "main.py") == "103"

    # A worker that joins after those runs gets the code with its task.
    late = cluster.add_worker(nthreads=1)
    try:
        (tmp_path / "pinned.py").write_text(textwrap.dedent(PINNED_PY))
        assert run(tmp_path, "pinned.py", cluster.address, late.address) == "103"
    finally:
        cluster.stop_worker(late)
