"""What only the Ray executor does: its own loopback Ray, a head started apart, crashes, the
object store, events over a Ray queue.

The contract suite runs on Ray too (``tests/executors.py``); these tests need Ray installed
(``pip install 'mepa[ray]'``) and are marked ``ray`` (``.ci/ray`` runs them). Executors of the
``executor`` fixture connect to the session's one local Ray (``tests/ray_cluster.py``); the
tests of a Ray of its own and of a head started apart run it in a subprocess, since a process
talks to one Ray at a time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason="Ray is not installed: pip install 'mepa[ray]'")

import mepa
from mepa import WorkerCrashedError

from .executors import make_executor
from .ray_cluster import RayHead

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


def test_more_workers_than_the_cluster_has_cpus_is_refused_not_a_wait(executor):
    from .ray_cluster import shared_address

    address = shared_address()
    cpus = int(executor._ray.cluster_resources()["CPU"])
    with pytest.raises(mepa.ClusterSpecError, match=rf"has {cpus} CPUs.*n_workers={cpus}"):
        mepa.RayExecutor(address, n_workers=cpus + 1)
    with mepa.RayExecutor(address, n_workers=cpus) as full:  # the connection is still usable
        assert full.gather(full.map(abs, range(-cpus, 0)), timeout=120) == list(
            range(cpus, 0, -1)
        )


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
    import psutil
    import ray  # imported before the executor: Ray reads its loopback switch at import
    import mepa

    def listening(processes):
        found = []
        for proc in processes:
            try:
                connections = proc.net_connections(kind="inet")
            except psutil.Error:
                continue
            found += [
                (proc.pid, c.laddr.ip) for c in connections if c.status == psutil.CONN_LISTEN
            ]
        return found

    with mepa.RayExecutor(n_workers=2, object_store_memory=100 * 2**20) as ex:
        temp_dir = ex._temp_dir
        assert temp_dir.startswith(os.environ["TMPDIR"]), temp_dir
        assert ex.gather(ex.map(pow, [2, 3], [10, 2])) == [1024, 9]
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:"), address
        assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"
        node = ray._private.worker._global_node
        assert not node.address_info.get("webui_url"), node.address_info  # no dashboard
        started = psutil.Process().children(recursive=True)
        sockets = listening([psutil.Process(), *started])
        assert sockets, "no listening socket found: the check would be empty"
        open_wide = [s for s in sockets if s[1] not in ("127.0.0.1", "::ffff:127.0.0.1")]
        assert not open_wide, f"Ray servers not on loopback: {open_wide}"
    assert not os.path.exists(temp_dir)
    assert not ray.is_initialized()
    gone, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, f"Ray processes still running after shutdown: {alive}"
    print("ok", len(started), "processes,", len(sockets), "listening sockets")
    """
)


@pytest.fixture
def short_tmp():
    """A directory with a short path: Ray's socket paths under it must fit in 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="mepa-rt-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_own_ray_is_loopback_and_leaves_nothing_behind(short_tmp):
    tmp, home = short_tmp / "tmp", short_tmp / "home"
    tmp.mkdir()
    home.mkdir()
    default_dir = Path("/tmp/ray")  # Ray's default temp dir without TMPDIR
    had_default = default_dir.exists()
    env = {**os.environ, "TMPDIR": str(tmp), "HOME": str(home)}
    for name in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)  # Ray's defaults; this process's Ray may have set them
    proc = subprocess.run(
        [sys.executable, "-c", OWN_RAY], check=False, capture_output=True, text=True,
        timeout=280, env=env, cwd=short_tmp,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith("ok"), proc.stdout
    assert list(tmp.iterdir()) == []  # the temp dir was removed, nothing else written
    assert list(home.iterdir()) == []  # no ~/.ray, no caches
    assert sorted(short_tmp.iterdir()) == [home, tmp]  # nothing in the working directory
    if not had_default:
        assert not default_dir.exists()


AT_EXIT = textwrap.dedent(
    """
    import atexit, psutil
    from mepa import RayExecutor  # a program that uses mepa; Ray itself is not imported

    def at_exit():
        try:
            RayExecutor(n_workers=1)
            print("made")
        except RuntimeError as exc:
            print("refused:", exc)
        print("processes", len(psutil.Process().children(recursive=True)))

    atexit.register(at_exit)
    print("main ends")
    """
)


def test_no_ray_is_started_at_exit(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", AT_EXIT], check=True, capture_output=True, text=True,
        timeout=120, cwd=tmp_path,
    ).stdout
    assert "refused: cannot schedule new futures after interpreter shutdown" in out, out
    assert "processes 0" in out, out


CLIENT = textwrap.dedent(
    """
    import os, sys
    import ray
    import mepa

    with mepa.RayExecutor(sys.argv[1], n_workers=2) as ex:
        print("connected", ray.get_runtime_context().gcs_address)
        places = ex.gather([
            ex.submit_to(worker, lambda: (os.getpid(), os.getppid())) for worker in ex.workers
        ])
        print("pids", *[pid for pid, _ in places])
        print("parents", *[parent for _, parent in places])
        assert ex.gather(ex.map(pow, [2, 3], [10, 2])) == [1024, 9]
    print("after shutdown connected:", ray.is_initialized())
    """
)


def test_connects_to_a_ray_head_started_apart_and_leaves_it_running(short_tmp):
    head = RayHead(short_tmp, n_cpus=2)
    try:
        deadline = time.monotonic() + 240
        while b"Ray runtime started" not in (short_tmp / "head.log").read_bytes():
            assert head.proc.poll() is None, (short_tmp / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(0.5)
        proc = subprocess.run(
            [sys.executable, "-c", CLIENT, head.address], check=False, capture_output=True,
            text=True, timeout=240, env=head.env, cwd=short_tmp,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
        assert lines["connected"] == head.address
        pids = [int(pid) for pid in lines["pids"].split()]
        assert len(set(pids)) == 2  # one actor process per worker, pinned
        parents = {int(pid) for pid in lines["parents"].split()}
        head_pids = {p.pid for p in head.processes()}
        assert parents <= head_pids  # the tasks ran in worker processes of that head
        assert lines["after"] == "shutdown connected: False"  # disconnected
        assert head.proc.poll() is None  # but the cluster it did not start runs on
        assert any("raylet" in " ".join(p.cmdline()) for p in head.processes())
    finally:
        head.stop()


def report_pid_and_wait(marker, gate):
    Path(marker).write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


def test_a_worker_killed_by_a_signal_is_a_crash(executor, tmp_path):
    marker, gate = tmp_path / "pid", tmp_path / "open"
    future = executor.submit_to(executor.workers[1], report_pid_and_wait, marker, gate)
    deadline = time.monotonic() + 120
    while not marker.exists() or not marker.read_text():
        assert time.monotonic() < deadline, "the task did not start"
        time.sleep(0.01)
    pid = int(marker.read_text())
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashedError, match="a Ray worker died") as info:
        executor.gather(future, timeout=120)
    assert "worker 'ray-1'" in str(info.value)
    gate.touch()
    # the worker gets a fresh process; its queue goes on
    assert executor.submit_to(executor.workers[1], os.getpid).result(timeout=120) != pid


def fire_each(ctx, n):
    for i in range(n):
        ctx.fire(i)
    return n


def test_events_travel_over_a_ray_queue(executor):
    from mepa._executors._ray import RayQueueChannel

    seen = []
    ctx = executor.register(seen.append)
    assert executor.gather(executor.submit(fire_each, ctx, 50), timeout=120) == 50
    assert seen == list(range(50))  # all dispatched before gather returned, in order
    channel = executor._hub.remote_channel()
    assert isinstance(channel, RayQueueChannel)
    assert type(channel.queue).__name__ == "Queue"  # ray.util.queue.Queue, an actor


def arg_flags(a):
    return a.flags.writeable, a.flags.owndata


def test_big_arguments_reach_the_task_from_the_object_store_without_a_copy(executor):
    big = np.arange(1 << 18, dtype=np.float64)  # 2 MiB, over PUT_BYTES
    writeable, owndata = executor.submit(arg_flags, big).result(timeout=120)
    assert (writeable, owndata) == (False, False)  # a read-only view of the shared store
