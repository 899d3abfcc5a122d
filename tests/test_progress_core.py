"""Progress bars on the host fed by tasks in threads and in real loky worker processes."""

from __future__ import annotations

import concurrent.futures
import io
import logging
import os
import pickle
import threading
import time

import cloudpickle
import loky
import pytest

from mepa._events import EventHub, run_task, unwrap_outcome
from mepa._progress import Progress

from .events_support import settle

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pool():
    pool = loky.ProcessPoolExecutor(max_workers=2)
    try:
        pool.submit(os.getpid).result(timeout=60)
        yield pool
    finally:
        pool.shutdown(wait=True)


def make_bar(hub, total=0):
    return Progress(hub, total=total, file=io.StringIO(), mininterval=0, disable=False)


def in_task_here(hub, fn, *args):
    """Run ``fn`` as a task in this thread and wait for its events."""
    value, tokens = unwrap_outcome(run_task(fn, *args))
    done = threading.Event()
    hub.after(tokens, done.set)
    assert done.wait(10)
    return value


def iterate(progress, n):
    return sum(1 for _ in progress.iters(range(n)))


def test_bar_reaches_its_total_with_tasks_in_loky_workers(hub, pool):
    progress = make_bar(hub)

    def task(n):  # captures the bar, as in the seed example
        total = 0
        for i in progress.iters(list(range(n))):
            total += i
        progress.register(5)
        progress.update(5)
        progress.close()
        return total

    futures = [settle(hub, pool.submit(run_task, task, 2_000)) for _ in range(4)]
    futures.append(settle(hub, pool.submit(run_task, iterate, progress, 3_000)))
    results = [f.result(timeout=30) for f in futures]
    assert results == [sum(range(2_000))] * 4 + [3_000]
    assert (progress.n, progress.total) == (11_020, 11_020)
    assert not progress.finished  # the host still holds it
    progress.close()
    assert progress.finished
    assert "11020/11020" in progress.bar.fp.getvalue()


def test_no_update_is_dropped_between_sequential_tasks(hub, pool):
    progress = make_bar(hub)
    for _ in range(3):
        settle(hub, pool.submit(run_task, iterate, progress, 500)).result(timeout=30)
        assert not progress.finished
    # a task that only updates, without registering
    settle(hub, pool.submit(run_task, Progress.update, progress, 7)).result(timeout=30)
    assert progress.n == 1_507
    assert progress.total == 1_500
    progress.dispose()
    assert progress.finished


def update_from_threads(progress, threads, per_thread):
    """In a worker: ``update(1)`` from several threads at once; how many calls were made."""

    def work():
        for _ in range(per_thread):
            progress.update(1)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return threads * per_thread


def test_worker_updates_from_many_threads_all_arrive_coalesced(hub, pool):
    progress = make_bar(hub)
    messages = []
    hub.on(progress._ctx.event, lambda kind, *rest: messages.append((kind, *rest)))
    futures = [
        settle(hub, pool.submit(run_task, update_from_threads, progress, 4, 50_000))
        for _ in range(2)
    ]
    assert sum(f.result(timeout=30) for f in futures) == 400_000
    assert progress.n == 400_000
    updates = [m for m in messages if m[0] == 0]
    assert sum(m[1] for m in updates) == 400_000
    assert len(updates) < 1_000  # summed, not one message per update
    progress.close()


def update_then_wait(progress, marker, n):
    """In a worker: ``update(n)``, then wait (at most 30 s) for the host to create ``marker``."""
    progress.update(n)
    deadline = time.monotonic() + 30
    while not os.path.exists(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_worker_updates_reach_the_host_while_the_task_runs(hub, pool, tmp_path):
    progress = make_bar(hub)
    marker = tmp_path / "go"
    future = settle(hub, pool.submit(run_task, update_then_wait, progress, str(marker), 7))
    deadline = time.monotonic() + 20
    while progress.n < 7 and time.monotonic() < deadline:
        time.sleep(0.01)
    seen = progress.n
    marker.touch()  # only now may the task end
    assert future.result(timeout=30) is True
    assert seen == 7  # sent by the worker's flusher thread, before the task ended
    progress.close()


def update_every_way(progress):
    progress.update()  # tqdm's default: 1
    progress.update(2)
    progress.update(n=3)
    progress.update(0.5)
    return True


def test_update_accepts_every_form_in_a_worker(hub, pool):
    progress = make_bar(hub)
    assert settle(hub, pool.submit(run_task, update_every_way, progress)).result(timeout=30)
    assert progress.bar.n == 6.5
    progress.close()


def test_update_with_a_non_number_in_a_worker_is_reported_on_the_host(hub, pool, caplog):
    progress = make_bar(hub, total=3)

    def task():
        progress.update(1)
        progress.update("two")
        progress.update(2)

    with caplog.at_level(logging.ERROR, logger="mepa.progress"):
        settle(hub, pool.submit(run_task, task)).result(timeout=30)
    assert progress.n == 3  # the numbers arrive
    assert "'two' (str), which is not a number" in caplog.text
    assert "1 such update(s) ignored" in caplog.text
    progress.close()


def test_updates_in_a_task_are_coalesced(hub):
    progress = make_bar(hub)
    messages = []
    hub.on(progress._ctx.event, lambda kind, n: messages.append((kind, n)))

    def task():
        for _ in progress.range(100_000):
            pass

    in_task_here(hub, task)
    assert progress.n == progress.total == 100_000
    assert len(messages) < 100  # sent every ~0.1 s, not per update
    assert sum(n for kind, n in messages if kind == 0) == 100_000


def test_updates_from_threads_in_and_out_of_tasks(hub):
    progress = make_bar(hub, total=40_000)

    def host_updates():
        for _ in range(10_000):
            progress.update()

    threads = [threading.Thread(target=host_updates) for _ in range(2)]
    for thread in threads:
        thread.start()
    with concurrent.futures.ThreadPoolExecutor(2) as tasks:
        futures = [
            settle(hub, tasks.submit(run_task, lambda: [progress.update() for _ in range(10_000)]))
            for _ in range(2)
        ]
        for future in futures:
            future.result(timeout=30)
    for thread in threads:
        thread.join(30)
    assert progress.n == 40_000
    progress.close()
    assert progress.finished


def test_bar_closes_when_host_and_every_task_registration_have_closed(hub):
    progress = make_bar(hub, total=5)
    in_task_here(hub, progress.register, 3)
    assert progress.total == 8
    progress.close()  # the host lets go; the task's registration still holds the bar
    assert not progress.finished
    in_task_here(hub, progress.close)
    assert progress.finished
    assert (progress.n, progress.total) == (0, 8)


def test_task_close_without_registration_does_nothing(hub):
    progress = make_bar(hub)
    in_task_here(hub, progress.close)
    assert not progress.finished
    progress.close()
    assert progress.finished
    progress.close()  # idempotent


def test_context_manager_and_aliases_on_the_host(hub):
    progress = make_bar(hub)
    assert Progress.tqdm is Progress.iters
    assert Progress.trange is Progress.range
    assert Progress.reset is Progress.register
    assert list(progress.trange(2, 5)) == [2, 3, 4]
    assert list(progress.tqdm("ab")) == ["a", "b"]
    with progress(4):
        progress.update(4)
    assert (progress.n, progress.total) == (9, 9)
    assert not progress.finished  # blocks do not release the host's own hold
    progress.close()
    assert progress.finished


def test_host_context_manager_closes_the_bar(hub):
    with make_bar(hub, total=2) as progress:
        progress.reset(1)
        progress.update(3)
    assert progress.finished
    assert progress.n == 3


def test_break_out_of_iters_in_a_task_closes_its_registration(hub):
    progress = make_bar(hub)

    def task():
        for i in progress.iters(range(10)):
            if i == 4:
                break

    in_task_here(hub, task)
    progress.close()
    assert progress.finished
    assert (progress.n, progress.total) == (4, 10)


def test_bad_arguments(hub):
    progress = make_bar(hub)
    with pytest.raises(TypeError, match="sized iterable"):
        progress.iters(x for x in range(3))
    assert list(progress.iters((x for x in range(3)), total=3)) == [0, 1, 2]
    with pytest.raises(ValueError, match="n must be a number of items >= 0, got -1"):
        progress.register(-1)
    with pytest.raises(ValueError, match="total must be a number of items >= 0, got -2"):
        Progress(hub, total=-2)


def test_pickling(hub, pool):
    progress = make_bar(hub)
    for dumps in (pickle.dumps, cloudpickle.dumps):
        assert pickle.loads(dumps(progress)) is progress  # same process: the bar itself
    proxy = pool.submit(lambda p: repr(p), progress).result(timeout=30)
    assert "in a task" in proxy
    with pytest.raises(RuntimeError, match="lives on the host"):
        pool.submit(lambda p: p.bar, progress).result(timeout=30)


def test_dispose_and_hub_close_finish_the_bar(caplog):
    hub = EventHub()
    try:
        progress = make_bar(hub)
        in_task_here(hub, progress.register, 10)
        assert not progress.finished
        progress.dispose()
        assert progress.finished
        second = make_bar(hub, total=3)
    finally:
        hub.close(timeout=10)
    assert second.finished
    with caplog.at_level(logging.WARNING, logger="mepa.progress"):
        progress.update(1)  # on the host, after the bar closed
    assert "after it closed" in caplog.text


def test_bars_are_tqdm_auto_so_notebooks_get_widgets(hub):
    import tqdm.auto

    bar = make_bar(hub, total=2)
    try:
        assert isinstance(bar.bar, tqdm.auto.tqdm)
    finally:
        bar.close()
