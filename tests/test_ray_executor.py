"""What only the Ray executor does: its own loopback Ray, crashes, the object store.

The contract suite runs on Ray too (``tests/executors.py``); these tests need Ray installed
(``pip install 'mepa[ray]'``) and are marked ``ray`` (``.ci/ray`` runs them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("ray", reason="Ray is not installed: pip install 'mepa[ray]'")

import mepa
from mepa import WorkerCrashedError

from .executors import make_executor

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


@pytest.fixture
def executor():
    with make_executor("ray", 2) as ex:
        yield ex


def exit_worker(code):
    os._exit(code)


def test_a_killed_worker_is_a_crash_and_the_next_task_runs(executor):
    future = executor.submit_to(executor.workers[0], exit_worker, 3)
    with pytest.raises(WorkerCrashedError, match="a Ray worker died") as info:
        executor.gather(future, timeout=120)
    assert "worker 'ray-0'" in str(info.value)
    assert executor.submit_to(executor.workers[0], int, "7").result(timeout=120) == 7


def test_big_arrays_travel_through_the_object_store(executor):
    big = np.arange(1 << 18, dtype=np.float64)  # 2 MiB: put once, read without a copy
    handle = executor.scatter(big)
    assert type(handle).__name__ == "ObjectRef"
    assert executor.gather([executor.submit(np.sum, handle), executor.submit(np.sum, [big])],
                           timeout=120) == [big.sum(), big.sum()]
    result = executor.gather(executor.submit(np.negative, big), timeout=120)
    np.testing.assert_array_equal(result, -big)
    assert not result.flags.writeable  # a view of the object store, as documented


def test_mepa_exposes_the_registry_backend_lazily():
    assert mepa.RayExecutor is mepa._executors._ray.RayExecutor
    out = subprocess.run(
        [sys.executable, "-c", "import sys, mepa; print('ray' in sys.modules)"],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    assert out.strip() == "False"


OWN_RAY = textwrap.dedent(
    """
    import os, sys
    import mepa
    with mepa.RayExecutor(n_workers=2, object_store_memory=100 * 2**20) as ex:
        temp_dir = ex._temp_dir
        assert temp_dir.startswith(os.environ["TMPDIR"]), temp_dir
        ctx = ex.register(lambda i: None)
        assert ex.gather(ex.map(pow, [2, 3], [10, 2])) == [1024, 9]
        import ray
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:"), address
        assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"
    assert not os.path.exists(temp_dir)
    import ray
    assert not ray.is_initialized()
    print("ok")
    """
)


def test_own_ray_is_loopback_and_leaves_nothing_behind(tmp_path):
    tmp, home = tmp_path / "tmp", tmp_path / "home"
    tmp.mkdir()
    home.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-c", OWN_RAY], check=False, capture_output=True, text=True,
        timeout=280, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
    assert list(tmp.iterdir()) == []  # the temp dir was removed, nothing else written
    assert list(home.iterdir()) == []
