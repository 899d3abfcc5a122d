"""One local Ray for the test session: started in this process on 127.0.0.1, stopped at the end.

Ray allows one connection per process, so the contract suite's Ray executors share this one
(``RayExecutor(address)`` of the process's own cluster leaves it running). Everything Ray
writes goes under a temporary directory removed by :func:`stop_shared_ray`.
"""

from __future__ import annotations

import shutil
import tempfile

_STATE: dict[str, str] = {}


def shared_address(n_workers: int = 2) -> str:
    """The address of the session's Ray (started on first use, with ``max(2, n)`` CPUs)."""
    if "address" not in _STATE:
        from mepa._executors._ray import start_local_ray

        temp_dir = tempfile.mkdtemp(prefix="mepa-ray-tests-")
        _STATE["temp_dir"] = temp_dir
        _STATE["address"] = start_local_ray(max(2, n_workers), temp_dir)
    return _STATE["address"]


def stop_shared_ray() -> None:
    """Stop the session's Ray (its processes) and remove its directory."""
    if "address" in _STATE:
        import ray

        ray.shutdown()
        _STATE.pop("address")
    temp_dir = _STATE.pop("temp_dir", None)
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)
