"""DaskExecutor as an HPC user meets it: many-thread workers, worker setup, lost pinned workers,
cluster objects, the embedded cluster's workers and scripts that cannot start one.

Clusters are real ``dask scheduler`` / ``dask worker`` processes (:mod:`tests.dask_cluster`),
each in a directory of its own; one cluster per kind is shared by the tests of this module.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import mepa
from mepa import InitializerError

from .dask_cluster import DaskCluster

distributed = pytest.importorskip("distributed")

from mepa._executors._dask import DaskExecutor  # noqa: E402

pytestmark = [pytest.mark.dask, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def three_threads():
    """One worker with 3 threads."""
    with DaskCluster(n_workers=1, nthreads=3) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def killable():
    """Two single-thread workers of this module's own: tests kill and replace them."""
    with DaskCluster(n_workers=2) as cluster:
        yield cluster


def piece_with_thread(chunk):
    # All pieces of the chunk must be inside this function at once to pass the barrier:
    # run one after another, the first would wait alone and the barrier would break.
    barrier = sys.__dict__.setdefault("_mepa_test_barrier", threading.Barrier(3))
    barrier.wait(timeout=20)
    return np.column_stack([chunk, np.full(len(chunk), threading.get_ident(), dtype=np.int64)])


def chunk_sum(chunk):
    return float(chunk.sum())


def test_a_3_thread_worker_runs_its_chunk_as_3_concurrent_pieces(three_threads):
    with DaskExecutor(three_threads.address) as ex:
        assert [w.weight for w in ex.workers] == [3.0]
        data = np.arange(30, dtype=np.int64)
        alloc = ex.arrange(data, shuffle=True)
        out = alloc.reassemble(ex.distribute_and_gather(piece_with_thread, alloc))
        np.testing.assert_array_equal(out[:, 0], data)  # pieces back in row order
        assert len(set(out[:, 1].tolist())) == 3  # three threads, at once (the barrier)
        # a result that is not one row per row cannot be joined: a clear error
        with pytest.raises(mepa.AllocationError, match="split_threads=False"):
            ex.distribute_and_gather(chunk_sum, alloc)
    with DaskExecutor(three_threads.address, split_threads=False) as ex:
        alloc = ex.arrange(np.arange(30.0))
        assert ex.distribute_and_gather(chunk_sum, alloc) == [435.0]


def sleep_then_pid(x, seconds):
    time.sleep(seconds)
    return x, os.getpid()


def test_a_pinned_task_whose_worker_dies_completes_elsewhere(killable):
    with DaskExecutor(killable.address) as ex:
        target = ex.workers[0]
        (victim,) = [w for w in killable.workers if w.address == ex.worker_address(target)]
        pinned = ex.submit_to(target, sleep_then_pid, 7, 3.0)
        time.sleep(1.0)  # running on its worker
        killable.stop_worker(victim, kill=True)
        value, pid = pinned.result(timeout=120)
        assert value == 7
        assert pid != victim.pid
    killable.add_worker()


def record_setup(path, label):
    os.environ["MEPA_TEST_SETUP"] = label
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def read_setup(_=None):
    time.sleep(0.05)
    return os.environ.get("MEPA_TEST_SETUP"), os.getpid()


def failing_setup(message):
    raise ValueError(message)


def test_initializer_runs_once_on_each_worker_before_its_tasks_also_late_ones(tmp_path):
    calls = tmp_path / "calls.txt"
    with DaskCluster(n_workers=1) as cluster, DaskExecutor(
        cluster.address, initializer=record_setup, initargs=(str(calls), "ready"),
        strict_pinning=True,  # the late worker's chunk runs there
    ) as ex:
        results = ex.gather([ex.submit(read_setup, i) for i in range(4)], timeout=60)
        assert {label for label, _ in results} == {"ready"}
        late = cluster.add_worker()
        alloc = ex.arrange(np.arange(4))
        deadline = time.monotonic() + 30
        while len(alloc) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            alloc = ex.arrange(np.arange(4))
        placed = ex.distribute_and_gather(read_setup, alloc)
        assert [label for label, _ in placed] == ["ready", "ready"]
        assert late.pid in [pid for _, pid in placed]
        pids = calls.read_text().split()
        assert sorted(pids) == sorted({str(w.pid) for w in cluster.workers})  # once each


def test_a_failing_initializer_breaks_the_executor_with_a_typed_error(killable):
    with DaskExecutor(killable.address, initializer=failing_setup, initargs=("no GPU",)) as ex:
        future = ex.submit(read_setup)
        with pytest.raises(InitializerError, match="no GPU") as info:
            future.result(timeout=60)
        assert isinstance(info.value, mepa.BrokenExecutor)
        assert "failing_setup" in str(info.value)
        with pytest.raises(InitializerError, match="no GPU"):
            ex.submit_and_gather(read_setup)
    # the cluster stays usable by others: the initializer left with the executor
    with DaskExecutor(killable.address) as ex:
        assert ex.submit_and_gather(read_setup)[0] is None


def test_cancel_of_a_task_handed_to_a_busy_worker_is_honest(killable):
    with DaskExecutor(killable.address) as ex:
        target = ex.workers[0]
        busy = ex.submit_to(target, sleep_then_pid, 0, 2.0)
        queued = [ex.submit_to(target, sleep_then_pid, i, 0.0) for i in range(1, 4)]
        outcomes = [f.cancel() for f in queued]
        ex.gather([busy], timeout=60)
        for future, said in zip(queued, outcomes, strict=True):
            if said:
                assert future.cancelled()
            else:  # it was with its worker already: it runs
                assert future.result(timeout=60)[0] in (1, 2, 3)


def test_a_spec_cluster_and_a_local_cluster_are_accepted(tmp_path):
    from distributed import Nanny, Scheduler, SpecCluster

    # every HTTP server on a free loopback port: the scheduler's default is 8787, in use when
    # another cluster runs on the machine
    options = {"nthreads": 1, "host": "127.0.0.1", "local_directory": str(tmp_path),
               "dashboard_address": "127.0.0.1:0"}
    scheduler = {"host": "127.0.0.1", "dashboard": False, "dashboard_address": "127.0.0.1:0"}
    with SpecCluster(
        scheduler={"cls": Scheduler, "options": scheduler},
        workers={"w0": {"cls": Nanny, "options": options},
                 "w1": {"cls": Nanny, "options": options}},
    ) as cluster, DaskExecutor(cluster, wait_for_workers=2) as ex:
        alloc = ex.arrange(np.arange(10.0))
        assert len(alloc) == 2
        out = alloc.reassemble(ex.distribute_and_gather(np.negative, alloc))
        np.testing.assert_array_equal(out, -np.arange(10.0))
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0",
        scheduler_kwargs={"dashboard": False},
    ) as cluster, DaskExecutor(cluster) as ex:
        assert ex.submit_and_gather(pow, 2, 7) == 128


def heap_settings(_=None):
    return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                                           "MEPA_WORKER_HEAP_CAP")}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc heap settings")
def test_the_embedded_clusters_workers_keep_their_heap_as_process_workers_do():
    from mepa._heap import supported, worker_env

    if not supported():
        pytest.skip("no glibc >= 2.33")
    before = heap_settings()
    with DaskExecutor(n_workers=1) as ex:
        settings = ex.submit_and_gather(heap_settings)
        assert heap_settings() == before  # the host's own environment is untouched
        ex.client.restart()  # the nanny starts its worker again
        assert ex.submit_and_gather(heap_settings) == settings
        assert heap_settings() == before
    expected = worker_env(1)
    assert settings == {k: expected[k] for k in settings}
    assert settings["MALLOC_TRIM_THRESHOLD_"] != "65536"


UNGUARDED = """
from mepa import DaskExecutor

with DaskExecutor(n_workers=1) as ex:
    print(ex.submit_and_gather(pow, 2, 3))
"""


@pytest.mark.parametrize("how", [["-"], []], ids=["python -", "python"])
def test_a_script_read_from_stdin_gets_one_sentence(tmp_path, how):
    done = subprocess.run(
        [sys.executable, *how], input=textwrap.dedent(UNGUARDED), capture_output=True,
        text=True, timeout=120, cwd=tmp_path, check=False,
    )
    assert done.returncode != 0
    assert "ClusterSpecError" in done.stderr
    assert "read from stdin" in done.stderr
    assert len(done.stderr.splitlines()) < 20, done.stderr  # not pages of worker logs


def fire_then_die_once(ctx, bar, marker, n):
    first = not os.path.exists(marker)
    if first:
        open(marker, "w").close()
    bar.register(n)
    for i in range(n):
        ctx.fire(i)
        bar.update(1)
        if first and i == n // 2:
            time.sleep(1.5)  # the worker sends what was fired so far, then dies mid-task
            os.kill(os.getpid(), signal.SIGKILL)
    return n


def test_a_retried_tasks_events_and_progress_count_once(killable, tmp_path):
    n = 200
    with DaskExecutor(killable.address) as ex:
        seen: list[int] = []
        ctx = ex.register(seen.append)
        bar = ex.progress(file=io.StringIO())
        future = ex.submit(fire_then_die_once, ctx, bar, str(tmp_path / "died-once"), n)
        assert future.result(timeout=120) == n  # run again by the scheduler, elsewhere
        assert (tmp_path / "died-once").exists()
        assert seen == list(range(n))  # each fire once, in order
        assert (bar.n, bar.total) == (n, n)
        bar.close()
    (dead,) = [w for w in killable.workers if w.proc.poll() is not None]
    killable.stop_worker(dead)  # reap it, then replace it
    killable.add_worker()


class Opaque:
    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Opaque) and other.value == self.value


def fire_values(ctx, values):
    for value in values:
        ctx.fire(value)
    return len(values)


def test_authenticated_batches_of_plain_data_are_decoded_without_unpickling(killable):
    plain = [1, 2.5, "text", b"bytes", [1, 2], {"a": (1, "b")}, (3, 4), None, True,
             np.arange(4.0), np.float32(1.5), {1, 2}, complex(1, 2)]
    with DaskExecutor(killable.address) as ex:
        seen: list[object] = []
        ctx = ex.register(seen.append)
        assert ex.submit_and_gather(fire_values, ctx, plain) == len(plain)
        assert ex._decoded["pickle"] == 0
        assert ex._decoded["plain"] >= 1
        assert len(seen) == len(plain)
        for got, sent in zip(seen, plain, strict=True):
            if isinstance(sent, np.ndarray):
                np.testing.assert_array_equal(got, sent)
            else:
                assert got == sent
        # an instance of the user's class: unpickled, after the signature was checked
        seen.clear()
        assert ex.submit_and_gather(fire_values, ctx, [Opaque(3)]) == 1
        assert seen == [Opaque(3)]
        assert ex._decoded["pickle"] == 1


def test_a_sender_that_failed_to_send_keeps_its_attempt_in_the_new_source():
    """The host counts a retried task's events per attempt, read from the batch's source: a
    sender that restarts after a failed send must stay tagged, or its later batches count as
    a task that was never retried (and are delivered again)."""
    import pickle

    from mepa._events import _sender
    from mepa._executors import _dask

    class Refused:
        def send_bytes(self, payload):
            raise OSError(24, "Too many open files")

        def close(self):
            pass

    token = _dask._ATTEMPT.set(("task1", "try2"))
    try:
        channel = pickle.loads(pickle.dumps(_dask.DaskChannel("hub" * 8, "topic", b"k" * 32)))
    finally:
        _dask._ATTEMPT.reset(token)
    channel.connect = Refused  # the worker's log_event fails
    try:
        sender = channel.sender()
        tag = "attempt:task1.try2."
        assert sender.source_id.startswith(tag)
        first = sender.source_id
        sender.add("e", (1,), None)
        assert sender.flush() is None  # the batch was lost: no token names it
        assert "could not be sent" in sender.take_failure()
        assert sender.source_id != first  # a new source, numbered from 1 again
        assert sender.source_id.startswith(tag)
    finally:
        _dask._drop_senders("@task1.try2")
        assert not [k for k in _sender._SENDERS if k.endswith("@task1.try2")]
