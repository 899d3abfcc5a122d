"""Running a test's own Python script in a fresh interpreter, as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["run_python"]


def run_python(
    script: str | Path,
    cwd: str | Path,
    *args: str,
    timeout: float,
    name: str = "script.py",
    warnings_as_errors: bool = False,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a script in a new interpreter; its exit status, stdout and stderr (text).

    Parameters
    ----------
    script
        A path to run, or the source text, written to ``cwd / name`` first.
    cwd
        The working directory of the run.
    *args
        Command-line arguments of the script.
    timeout
        Seconds before the run is killed and :class:`subprocess.TimeoutExpired` raised.
    name
        The file name the source text is written to.
    warnings_as_errors
        Run with ``-W error``: a warning (an unclosed resource, a leaked segment) fails it.
    env
        The environment of the run (default: this process's).
    """
    if isinstance(script, str):
        path = Path(cwd) / name
        path.write_text(script)
    else:
        path = Path(script)
    flags = ["-W", "error"] if warnings_as_errors else []
    return subprocess.run(
        [sys.executable, *flags, str(path), *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=timeout, check=False,
    )
