"""One local Ray for the test session: started in this process on 127.0.0.1, stopped at the end.

Ray allows one connection per process, so the contract suite's Ray executors share this one
(``RayExecutor(address)`` of the process's own cluster leaves it running). Everything Ray
writes goes under a temporary directory removed by :func:`stop_shared_ray`.

:class:`RayHead` is a head started apart (``ray start``), stopped by its processes' PIDs.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

_STATE: dict[str, str] = {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shared_address(n_workers: int = 2) -> str:
    """The address of the session's Ray (started on first use, with ``max(2, n)`` CPUs)."""
    if "address" not in _STATE:
        from mepa._executors._ray import start_local_ray, stop_local_ray

        temp_dir = tempfile.mkdtemp(prefix="mepa-ray-tests-")
        try:
            address = start_local_ray(max(2, n_workers), temp_dir)
        except BaseException:
            stop_local_ray(temp_dir)  # what started, and its directory
            raise
        _STATE.update(temp_dir=temp_dir, address=address)
    return _STATE["address"]


def stop_shared_ray() -> None:
    """Stop the session's Ray (its processes) and remove its directory."""
    if "temp_dir" in _STATE:
        from mepa._executors._ray import stop_local_ray

        _STATE.pop("address", None)
        stop_local_ray(_STATE.pop("temp_dir"))


def _descendants(pid: int) -> list[Any]:
    import psutil

    try:
        return [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_processes(processes: list[Any], timeout: float = 15.0) -> list[Any]:
    """Terminate, wait, kill the given processes (by PID); those still alive after that."""
    import psutil

    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    _, alive = psutil.wait_procs(alive, timeout=timeout)
    return list(alive)


class RayHead:
    """A Ray head started apart (``ray start --head --block``) on 127.0.0.1, for one test.

    Everything it writes goes under ``temp_dir``; :meth:`stop` ends the ``ray start``
    process and every process it started, by their PIDs.

    Parameters
    ----------
    temp_dir
        Ray's temporary directory (and ``HOME``/``TMPDIR`` of the head's processes).
    n_cpus
        CPUs the head offers.
    """

    def __init__(self, temp_dir: Path, n_cpus: int = 2) -> None:
        self.temp_dir = temp_dir
        port = _free_port()
        self.address = f"127.0.0.1:{port}"
        token = temp_dir / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env = {
            **os.environ, "HOME": str(temp_dir), "TMPDIR": str(temp_dir),
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
        }
        """What a client of this head runs with (its token, HOME and TMPDIR in ``temp_dir``)."""
        self.env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        # Ray's documented way to keep a head started apart on 127.0.0.1 only.
        head_env = {
            **self.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_raylet_start_wait_time_s": "300",
        }
        ray_cli = Path(sys.executable).with_name("ray")
        self.log = (temp_dir / "head.log").open("wb")
        self.proc = subprocess.Popen(
            [
                str(ray_cli), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                f"--port={port}", f"--num-cpus={n_cpus}", "--include-dashboard=false",
                "--disable-usage-stats", f"--temp-dir={temp_dir / 'ray'}",
            ],
            env=head_env, cwd=temp_dir, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def processes(self) -> list[Any]:
        """The ``ray start`` process and its descendants (gcs, raylet, workers) now."""
        return _descendants(self.proc.pid)

    def stop(self) -> None:
        """Stop the head and everything it started; raise if a process survived."""
        processes = self.processes()
        left = stop_processes(processes)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(15)  # reaped (psutil waited for it, Popen must know)
        self.log.close()
        assert not left, f"Ray head processes left running: {left}"
