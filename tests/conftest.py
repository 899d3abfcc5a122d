"""Suite-wide settings: hypothesis profiles and leak checks for shared memory and processes."""

from __future__ import annotations

import os
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

SHM_DIR = "/dev/shm"


def mepa_segments() -> set[str]:
    """Names of mepa's shared-memory segments that exist now."""
    try:
        return {name for name in os.listdir(SHM_DIR) if name.startswith("mepa")}
    except FileNotFoundError:  # pragma: no cover - not Linux
        return set()


@pytest.fixture(autouse=True)
def no_leaked_segments() -> Iterator[None]:
    """Every test leaves /dev/shm as it found it (mepa's segments)."""
    before = mepa_segments()
    yield
    deadline = time.monotonic() + 5.0
    leaked = mepa_segments() - before
    while leaked and time.monotonic() < deadline:
        time.sleep(0.1)
        leaked = mepa_segments() - before
    assert not leaked, f"shared-memory segments left behind: {sorted(leaked)}"


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


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """After the suite, loky's shared pool is stopped and no child process is left."""
    yield
    from mepa._executors._process import shutdown_worker_pools

    shutdown_worker_pools()
    deadline = time.monotonic() + 10.0
    left = _worker_processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _worker_processes()
    assert not left, f"processes left running after the suite: {left}"
