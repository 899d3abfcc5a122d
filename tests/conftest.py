"""Suite-wide settings: hypothesis profiles and leak checks for shared memory and processes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100
)
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=150,
    derandomize=True,
)
settings.load_profile("ci" if os.environ.get("CI") else "default")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config: pytest.Config) -> None:
    """Build mepa's C extensions in place when the checkout has none.

    The tests import mepa from the checkout (``python -m pytest`` puts it first on the path),
    and so do the worker processes they start, so an installed build is not what runs. Built
    here, the suite runs the same code as an installed mepa; without a compiler the build
    fails, mepa's pure-Python fallbacks run (the tests of each extension skip) and the header
    of the run says why.
    """
    names = ("mepa._tally", "mepa._inplace")
    if all(_built_and_fresh(name) for name in names):
        _BUILD_REPORT.append("mepa C extensions: present")
        return
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    importlib.invalidate_caches()
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if not missing:
        _BUILD_REPORT.append("mepa C extensions: built in place for this run")
    else:
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        _BUILD_REPORT.append(f"mepa C extensions NOT built ({', '.join(missing)}): {why}")


_BUILD_REPORT: list[str] = []


def _built_and_fresh(name: str) -> bool:
    """Whether extension ``name`` is importable and, in the checkout, newer than its source."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return False
    source = os.path.join(REPO, *name.split(".")) + ".c"
    in_checkout = os.path.dirname(spec.origin) == os.path.dirname(source)
    # An in-place build copies the library with its time rounded down to the second.
    return not (
        in_checkout
        and os.path.exists(source)
        and os.path.getmtime(source) > os.path.getmtime(spec.origin) + 1.0
    )


def pytest_report_header(config: pytest.Config) -> list[str]:
    return _BUILD_REPORT


SHM_DIR = "/dev/shm"


def _owner_alive(name: str) -> bool:
    """Whether the host process named in ``mepa-<pid>-...`` still runs (and is not us)."""
    try:
        pid = int(name.split("-")[1])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    return True


def mepa_segments() -> set[str]:
    """mepa's shared-memory segments made by this process or by processes that have ended.

    Segments of other live processes (another run on the same machine) are not ours to judge.
    """
    try:
        names = [name for name in os.listdir(SHM_DIR) if name.startswith("mepa")]
    except FileNotFoundError:  # pragma: no cover - not Linux
        return set()
    return {name for name in names if not _owner_alive(name)}


@pytest.fixture(autouse=True)
def no_leaked_segments() -> Iterator[None]:
    """Every test leaves /dev/shm as it found it (mepa's segments, also of its subprocesses)."""
    before = mepa_segments()
    yield
    deadline = time.monotonic() + 5.0
    leaked = mepa_segments() - before
    while leaked and time.monotonic() < deadline:
        time.sleep(0.1)
        leaked = mepa_segments() - before
    assert not leaked, f"shared-memory segments left behind: {sorted(leaked)}"


@pytest.fixture
def hub() -> Iterator[object]:
    """A fresh event hub, closed after the test (the event and progress core tests)."""
    from mepa._events import EventHub

    hub = EventHub()
    try:
        yield hub
    finally:
        hub.close(timeout=10)


def _worker_processes() -> list[object]:
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "resource_tracker" not in cmdline:
            found.append(child)
    return found


@pytest.fixture(scope="session")
def cluster() -> object:
    """A real Dask cluster (``dask scheduler`` and 2 ``dask worker`` processes on 127.0.0.1).

    Shared by the session; :func:`no_leaked_processes` stops it before checking for leaks.
    """
    from .dask_cluster import shared_cluster

    return shared_cluster(2)


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """After the suite, the test clusters and the pools backends keep (the registry's
    cleanups) are stopped, and no child process is left."""
    yield
    from mepa._executors import BACKENDS

    from .executors import stop_test_clusters

    stop_test_clusters()
    for entry in BACKENDS.values():
        entry.stop_kept()  # the worker pools backends keep between executors
    deadline = time.monotonic() + 10.0
    left = _worker_processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _worker_processes()
    assert not left, f"processes left running after the suite: {left}"
