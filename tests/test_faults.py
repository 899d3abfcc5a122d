"""Faults that used to hang, leak or cross between executors: each path ends with a typed error."""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time

import numpy as np
import pytest

import mepa

from .executors import EXECUTOR_KINDS, make_executor
from .scripts import run_python

pytestmark = pytest.mark.timeout(120)


def raise_type(exc_type):
    raise exc_type("from the task")


def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


def sleep_on_chunk(chunk):
    time.sleep(float(chunk[0]))
    return chunk


def returns_within(fn, seconds=30.0):
    """Run ``fn`` in a thread; whether it returned within ``seconds`` (and what it raised)."""
    outcome: list[BaseException | None] = []

    def run():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return (not thread.is_alive()), (outcome[0] if outcome else None)


# ------------------------------------------------------------------ LinearExecutor interrupts


def test_linear_system_exit_sets_the_future_and_shutdown_returns():
    executor = mepa.LinearExecutor(2)
    future = executor.submit(raise_type, SystemExit)
    assert future.done()
    assert isinstance(future.exception(timeout=0), SystemExit)
    with pytest.raises(SystemExit):
        executor.gather(future)
    returned, error = returns_within(executor.shutdown, 30)
    assert returned
    assert error is None


def test_linear_keyboard_interrupt_reaches_the_caller_after_the_future_settles():
    seen: list[concurrent.futures.Future[object]] = []
    executor = mepa.LinearExecutor(2)
    ctx = executor.register(lambda: None)

    def interrupted():
        ctx.fire()
        raise KeyboardInterrupt

    original = executor._track

    def track(future):
        seen.append(future)
        original(future)

    executor._track = track  # type: ignore[method-assign]

    def submit_in_with_block():
        with executor:
            executor.submit(interrupted)

    with pytest.raises(KeyboardInterrupt):
        submit_in_with_block()
    # the with block's exit (shutdown) returned, and the task's future was settled
    assert len(seen) == 1
    assert seen[0].done()
    assert isinstance(seen[0].exception(timeout=0), KeyboardInterrupt)


# ------------------------------------------------------------------ tasks that never return


def test_gather_timeout_names_the_pending_tasks():
    with mepa.ThreadExecutor(2) as executor:
        futures = executor.distribute(sleep_on_chunk, executor.arrange(np.array([0.0, 3.0])))
        with pytest.raises(TimeoutError, match=r"1 of 2 tasks.*chunk 1") as info:
            executor.gather(futures, timeout=0.5)
        assert "chunk 0" not in str(info.value)
        assert isinstance(info.value, mepa.MepaError)


# ------------------------------------------------------------------ callbacks that call back


@pytest.mark.parametrize("kind", [k for k in EXECUTOR_KINDS if k != "dask"])
@pytest.mark.parametrize("call", ["gather", "map", "shutdown"])
def test_callback_calling_its_own_executor_is_a_runtime_error(kind, call):
    errors: list[BaseException] = []
    with make_executor(kind, 2) as executor:
        pending = executor.submit(sleep_for, 0.0)

        def callback():
            try:
                if call == "gather":
                    executor.gather(pending, timeout=30)
                elif call == "map":
                    executor.map(sleep_for, [0.0], timeout=30)
                else:
                    executor.shutdown(wait=True)
            except BaseException as exc:  # noqa: BLE001 - checked by the test
                errors.append(exc)

        ctx = executor.register(callback)
        future = executor.submit(ctx.fire)
        returned, error = returns_within(lambda: executor.gather(future, timeout=60), 60)
        assert returned
    assert error is None
    assert len(errors) == 1
    assert isinstance(errors[0], RuntimeError)
    assert "dispatcher thread" in str(errors[0])
    assert call in str(errors[0])


# ------------------------------------------------------------------ events that cannot be sent


def fire_without_descriptors(ctx):
    """Fire a full batch while no file descriptor is left to connect to the hub (EMFILE)."""
    import resource

    from mepa._events import FLUSH_EVENTS

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (0, hard))
    try:
        for i in range(FLUSH_EVENTS):  # the last one sends the batch, from inside the task
            ctx.fire(i)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return "fired"


def fire_n(ctx, n):
    for i in range(n):
        ctx.fire(i)
    return "fired"


def open_descriptors(_=None):
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def one_worker():
    import loky

    pool = loky.ProcessPoolExecutor(max_workers=1)
    try:
        pool.submit(os.getpid).result(timeout=60)
        yield pool
    finally:
        pool.shutdown(wait=True, kill_workers=True)


def test_events_that_cannot_be_sent_fail_the_task_and_later_tasks_deliver(hub, one_worker):
    from mepa._events import run_task

    from .events_support import settle

    seen: list[int] = []
    ctx = hub.on("e", seen.append)
    lost = settle(hub, one_worker.submit(run_task, fire_without_descriptors, ctx))
    with pytest.raises(mepa.EventChannelError, match=r"2048 events .* could not be sent") as info:
        lost.result(timeout=60)
    assert "Too many open files" in str(info.value)
    assert isinstance(info.value, ConnectionError)
    later = settle(hub, one_worker.submit(run_task, fire_n, ctx, 5))
    assert later.result(timeout=60) == "fired"
    assert seen == [0, 1, 2, 3, 4]


def test_workers_close_the_sockets_of_closed_hubs(one_worker):
    from mepa._events import EventHub, run_task

    from .events_support import settle

    before = one_worker.submit(open_descriptors).result(timeout=60)
    for _ in range(40):
        with EventHub() as hub:
            seen: list[int] = []
            ctx = hub.on("e", seen.append)
            settle(hub, one_worker.submit(run_task, fire_n, ctx, 1)).result(60)
            assert seen == [0]
    # one task more to notice the last hub closed
    settle(hub, one_worker.submit(run_task, open_descriptors)).result(60)
    after = one_worker.submit(open_descriptors).result(timeout=60)
    assert after - before < 5, f"the worker holds {after - before} more descriptors"


def test_process_task_whose_events_are_lost_fails_and_the_executor_goes_on():
    seen: list[int] = []
    with mepa.ProcessExecutor(1) as executor:
        ctx = executor.register(seen.append)
        lost = executor.submit(fire_without_descriptors, ctx)
        with pytest.raises(mepa.EventChannelError, match="could not be sent"):
            executor.gather(lost, timeout=60)
        assert executor.gather(executor.submit(fire_n, ctx, 2), timeout=60)
    assert seen == [0, 1]


# ------------------------------------------------------------------ the event socket


def test_a_silent_local_client_does_not_block_the_event_socket(hub):
    import socket

    seen: list[str] = []
    hub.on("e", seen.append)
    channel = hub.process_channel()
    silent = socket.socket(socket.AF_UNIX)
    try:
        silent.connect(channel.address)  # connects, never answers the challenge
        sender = type(channel.sender())(channel)  # a second process's sender, in effect
        sender.add("e", ("after the silent one",), None)

        def send():
            token = sender.flush()
            assert token is not None
            done = threading.Event()
            hub.after([token], done.set)
            assert done.wait(30)

        returned, error = returns_within(send, 30)
        assert returned
        assert error is None
        assert seen == ["after the silent one"]
        sender.close()
    finally:
        silent.close()


# ------------------------------------------------------------------ isolation between executors


def exit_on_chunk_one(chunk):
    if chunk[0] != 0:
        os._exit(7)
    time.sleep(3.0)  # still running when the other worker dies
    return chunk


def change_process_state(_):
    import resource

    os.environ["MEPA_TEST_LEAK"] = "changed"
    os.chdir("/")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, hard))
    return os.getpid()


def process_state(_):
    import resource

    return (
        os.environ.get("MEPA_TEST_LEAK"),
        os.getcwd(),
        resource.getrlimit(resource.RLIMIT_AS)[0],
        os.getpid(),
    )


def test_a_crash_names_the_chunk_that_was_running_in_the_dead_worker():
    with mepa.ProcessExecutor(2) as executor:
        futures = executor.distribute(exit_on_chunk_one, executor.arrange(np.arange(10)))
        with pytest.raises(mepa.WorkerCrashedError) as info:
            executor.gather(futures, timeout=60)
        # chunk 0 comes first in gather's order: it names chunk 1 as the one that died
        assert info.value.chunk == 1
        assert info.value.exitcode == 7
        assert "chunk 1" in str(info.value)
        culprit = futures[1].exception(timeout=60)
        assert isinstance(culprit, mepa.WorkerCrashedError)
        assert culprit.chunk == 1
        assert "died while running the task on worker 'process-1', chunk 1" in str(culprit)
        assert executor.submit_and_gather(pow, 2, 3) == 8


def test_a_crash_in_one_executor_does_not_fail_another_executors_tasks():
    with mepa.ProcessExecutor(2) as first, mepa.ProcessExecutor(2) as second:
        assert second.submit_and_gather(pow, 2, 2) == 4  # both pools alive
        innocent = second.submit(sleep_for, 2.0)
        crashing = first.submit(os._exit, 7)
        with pytest.raises(mepa.WorkerCrashedError):
            first.gather(crashing, timeout=60)
        assert second.gather(innocent, timeout=60) == 2.0


def test_process_state_a_task_changes_stays_in_its_executor():
    clean = process_state(None)
    with mepa.ProcessExecutor(2) as first:
        first.map(change_process_state, range(4), chunksize=1)
    with mepa.ProcessExecutor(2) as second:
        states = second.map(process_state, range(4), chunksize=1)
    for env, cwd, limit, _ in states:
        assert (env, cwd, limit) == clean[:3]


def test_a_stuck_task_blocks_neither_a_new_executor_nor_its_own_termination():
    stuck_executor = mepa.ProcessExecutor(2)
    stuck = stuck_executor.submit(sleep_for, 600)
    time.sleep(0.5)
    shutting = threading.Thread(target=stuck_executor.shutdown, daemon=True)
    shutting.start()
    with mepa.ProcessExecutor(2) as fresh:
        assert list(fresh.map(pow, [2, 3], [2, 2], timeout=60)) == [4, 9]
    with pytest.raises(mepa.GatherTimeoutError, match="1 of 1 tasks unfinished"):
        stuck_executor.gather(stuck, timeout=0.2)
    stuck_executor.terminate_workers()
    with pytest.raises(mepa.WorkerCrashedError, match="terminate_workers"):
        stuck_executor.gather(stuck, timeout=60)
    shutting.join(60)
    assert not shutting.is_alive()


# ------------------------------------------------------------------ leaks


DROP_SCRIPT = """
import gc, os, sys, threading, time
import mepa

def fire(ctx):
    ctx.fire(1)
    return os.getpid()

def drop(kind):
    executor = getattr(mepa, kind)(2)
    seen = []
    ctx = executor.register(seen.append)
    executor.gather(executor.submit(fire, ctx), timeout=60)
    progress = executor.progress(total=1, disable=True)
    executor.gather(executor.submit(progress.update, 1), timeout=60)
    # dropped here without shutdown()

def state():
    return threading.active_count(), len(os.listdir("/proc/self/fd"))

kind = sys.argv[1]
drop(kind)  # the first one starts what a process keeps for good (loky's resource tracker)
gc.collect()
time.sleep(1.0)
threads0, fds0 = state()
for _ in range(int(sys.argv[2])):
    drop(kind)
deadline = time.monotonic() + 30
while True:
    gc.collect()
    threads, fds = state()
    if (threads - threads0 <= 2 and fds - fds0 <= 4) or time.monotonic() > deadline:
        break
    time.sleep(0.2)
print("threads", threads - threads0, "fds", fds - fds0)
"""


@pytest.mark.parametrize(("kind", "count"), [("ProcessExecutor", 4), ("ThreadExecutor", 20)])
def test_an_executor_dropped_without_shutdown_releases_threads_and_descriptors(
    tmp_path, kind, count
):

    proc = run_python(DROP_SCRIPT, tmp_path, kind, str(count), timeout=110)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    threads, fds = (int(x) for x in proc.stdout.split()[1::2])
    assert threads <= 2
    assert fds <= 4


HOST_SCRIPT = """
import os, sys, time
import mepa

def sleepy(seconds):
    time.sleep(seconds)
    return os.getpid()

if __name__ == "__main__":
    executor = mepa.ProcessExecutor(2)
    ctx = executor.register(print)
    idle = executor.gather(executor.submit(sleepy, 0.0), timeout=60)
    executor.submit(sleepy, 600)  # a busy worker
    time.sleep(1.0)
    workers = [p.pid for p in executor._engine._processes.values()]
    hub_dir = executor._hub._server.directory
    print(" ".join(map(str, workers)), hub_dir, executor._tracker.path, flush=True)
    how = sys.argv[1]
    if how == "exit":
        os._exit(3)
    time.sleep(600)
"""

NEXT_HOST_SCRIPT = """
import mepa

if __name__ == "__main__":
    with mepa.ProcessExecutor(1) as executor:
        executor.register(print)
        executor.submit_and_gather(pow, 2, 2)
"""


def _gone(pid):
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "exit"])
def test_workers_exit_and_files_are_reclaimed_when_the_host_dies(tmp_path, how):
    import signal
    import subprocess
    import sys

    script = tmp_path / "host.py"
    script.write_text(HOST_SCRIPT)
    host = subprocess.Popen(
        [sys.executable, str(script), how], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        line = host.stdout.readline().split()
        assert len(line) == 4, line
        workers, directories = [int(pid) for pid in line[:2]], line[2:]
        if how != "exit":
            os.kill(host.pid, getattr(signal, how))
        host.wait(timeout=60)
    finally:
        if host.poll() is None:
            host.kill()
            host.wait(timeout=60)
        host.stdout.close()
    deadline = time.monotonic() + 30
    while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in workers if not _gone(pid)]
    for pid in left:  # do not leave them behind if the check fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"workers of the dead host still run: {left}"
    follower = tmp_path / "next.py"
    follower.write_text(NEXT_HOST_SCRIPT)
    subprocess.run([sys.executable, str(follower)], check=True, timeout=110, cwd=tmp_path)
    assert not any(os.path.exists(d) for d in directories)


# ------------------------------------------------------------------ events backpressure


def fire_big_events(ctx, n, done_path):
    for i in range(n):
        ctx.fire(i, b"%08d" % i * 1024)  # 8 KiB each, none shared (pickle would memoize it)
    with open(done_path, "w") as f:
        f.write("fired")
    return n


def test_a_slow_callback_holds_the_workers_back_instead_of_filling_the_host():
    import tempfile

    from mepa._events import FLUSH_EVENTS, MAX_QUEUED_BYTES

    n = 2 * MAX_QUEUED_BYTES // 8192  # twice what the host may hold
    biggest_batch = FLUSH_EVENTS * (8192 + 256)  # encoded, with its pickle overhead
    release = threading.Event()
    seen: list[int] = []

    def slow(i, payload):
        release.wait(120)
        seen.append(i)

    with tempfile.TemporaryDirectory() as scratch, mepa.ProcessExecutor(1) as executor:
        done_path = os.path.join(scratch, "done")
        ctx = executor.register(slow)
        future = executor.submit(fire_big_events, ctx, n, done_path)
        try:
            hub = executor._hub
            assert hub is not None
            # Wait (however slow the machine) until the host holds its bound: from then on
            # the worker, which fires twice that, can only be held back in its sends.
            deadline = time.monotonic() + 120
            while hub._queued_bytes <= MAX_QUEUED_BYTES - biggest_batch:
                assert time.monotonic() < deadline, "the worker's events never filled the host"
                assert not future.done(), future.exception()
                time.sleep(0.05)
            for _ in range(2):  # now, and once the worker had time to run ahead, were it able
                assert hub._queued_bytes <= MAX_QUEUED_BYTES
                assert not os.path.exists(done_path)
                time.sleep(1.0)
        finally:
            release.set()
        assert executor.gather(future, timeout=300) == n
        assert os.path.exists(done_path)
    assert seen == list(range(n))


# ------------------------------------------------------------------ quiet shutdown and exit


QUIET_SCRIPT = """
import gc, threading, time
import mepa

def inc(x):
    time.sleep(0.01)
    return x + 1

if __name__ == "__main__":
    for kind in ("ThreadExecutor", "ProcessExecutor", "LinearExecutor"):
        executor = getattr(mepa, kind)(2)
        executor.register(print)
        stop = threading.Event()

        def submit_until_shutdown():
            while not stop.is_set():
                try:
                    executor.submit(inc, 1)
                except RuntimeError:
                    return

        threads = [threading.Thread(target=submit_until_shutdown) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        executor.shutdown(wait=False)
        stop.set()
        for thread in threads:
            thread.join()
    dropped = mepa.ProcessExecutor(2)  # collected without shutdown: its finalizer stops it
    dropped.map(inc, range(4))
    del dropped
    gc.collect()
    left_open = mepa.ProcessExecutor(2)  # exits without shutdown
    left_open.map(inc, range(10))
    print("done")
"""


def test_shutdown_under_concurrent_submits_and_exit_print_nothing(tmp_path):

    proc = run_python(QUIET_SCRIPT, tmp_path, timeout=110, warnings_as_errors=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"
    assert proc.stderr == ""


# ------------------------------------------------------------------ the worker's host watch


def take_sigalrm(cancel_timer):
    """A task that installs its own SIGALRM handler (as a timeout helper does) and leaves it."""
    import signal

    signal.signal(signal.SIGALRM, lambda signum, frame: None)
    if cancel_timer:
        signal.setitimer(signal.ITIMER_REAL, 0)  # signal.alarm(0) does the same
    return os.getpid()


def host_watch_state():
    import signal

    handler = signal.getsignal(signal.SIGALRM)
    return os.getpid(), getattr(handler, "__qualname__", repr(handler)), signal.getitimer(
        signal.ITIMER_REAL
    )[1]


@pytest.mark.parametrize("cancel_timer", [False, True])
def test_the_host_watch_comes_back_after_a_task_took_sigalrm(cancel_timer):
    from mepa._executors._process import HOST_CHECK_SECONDS

    with mepa.ProcessExecutor(1) as executor:
        _, watch, interval = executor.submit_and_gather(host_watch_state)
        assert interval == HOST_CHECK_SECONDS
        pid = executor.submit_and_gather(take_sigalrm, cancel_timer)
        after = executor.submit_and_gather(host_watch_state)
    assert after == (pid, watch, HOST_CHECK_SECONDS)


def test_a_worker_whose_host_died_before_its_watch_started_exits():
    # On a loaded machine a worker may run its initializer after its host was killed: its
    # parent is then no longer the host, and it must not take that for a pool it cannot watch.
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True, text=True, check=True,
    )
    code = (
        "from mepa._executors._process import _watch_host\n"
        f"_watch_host({int(dead.stdout)})\n"
        "print('still running')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
