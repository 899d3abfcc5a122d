"""What the run ran on: CPUs, load, Python, NumPy and the version of every library compared."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import sys

__all__ = ["LIBRARIES", "child_processes", "load_average", "machine_info"]

#: Distributions whose versions the JSON records.
LIBRARIES = (
    "numpy",
    "pydantic",
    "tqdm",
    "cloudpickle",
    "loky",
    "joblib",
    "mpire",
    "dask",
    "distributed",
    "matplotlib",
    "psutil",
)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _mepa_version() -> str:
    try:
        module = importlib.import_module("mepa")
    except Exception as exc:  # noqa: BLE001
        return f"not importable ({type(exc).__name__}: {exc})"
    version = getattr(module, "__version__", None) or _version("mepa")
    where = getattr(module, "__file__", None)
    if where is None:
        return "namespace package (mepa/__init__.py missing)"
    return f"{version or 'unknown version'} ({os.path.dirname(where)})"


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages, or None where unavailable."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _memory_total() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info() -> dict[str, object]:
    """CPU counts, memory, platform, Python and library versions, and the current load."""
    try:
        from loky import cpu_count

        physical: int | None = int(cpu_count(only_physical_cores=True))
    except Exception:  # noqa: BLE001
        physical = None
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "physical_cores": physical,
        "memory_bytes": _memory_total(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "numpy": _version("numpy"),
        "mepa": _mepa_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "load_average_start": load_average(),
    }


def child_processes() -> list[dict[str, object]]:
    """Live child processes of this one (pid and command line), to spot leaked workers.

    Resource trackers (multiprocessing's, loky's) are flagged: they exit with this process.
    """
    try:
        import psutil
    except ImportError:
        import multiprocessing

        return [
            {"pid": p.pid, "cmdline": p.name, "resource_tracker": False}
            for p in multiprocessing.active_children()
        ]
    out: list[dict[str, object]] = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())[:200]
        except psutil.Error:
            cmd = "?"
        out.append(
            {"pid": child.pid, "cmdline": cmd, "resource_tracker": "resource_tracker" in cmd}
        )
    return out
