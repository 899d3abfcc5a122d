"""The events core on its own: an EventHub fed by real threads and real loky worker processes."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import pickle
import stat
import threading
from collections import defaultdict
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client

import cloudpickle
import loky
import pytest

from mepa._events import (
    EventContext,
    EventHub,
    TaskResult,
    _sender,
    in_task,
    outcome_tokens,
    run_task,
    unwrap_outcome,
)

from .events_support import settle

pytestmark = pytest.mark.timeout(60)

N_FIRES = 100_000


@pytest.fixture(scope="module")
def pool():
    pool = loky.ProcessPoolExecutor(max_workers=2)
    try:
        pool.submit(os.getpid).result(timeout=60)  # start the workers once
        yield pool
    finally:
        pool.shutdown(wait=True)


def fire_range(ctx, tag, n):
    fire = ctx.fire
    for i in range(n):
        fire(tag, i)
    return os.getpid()


def fire_then_raise(ctx, n):
    for i in range(n):
        ctx.fire(i)
    raise ValueError(f"failed after {n} events")


class Recorder:
    """Records ``(tag, i)`` events and, when a task completes, how many of its events it saw."""

    def __init__(self):
        self.events = defaultdict(list)
        self.seen_at_completion = {}

    def __call__(self, tag, i):
        self.events[tag].append(i)

    def completed(self, tag):
        def record(future):
            self.seen_at_completion[tag] = len(self.events[tag])

        return record


def check_exact(pool_kind, hub, submit):
    rec = Recorder()
    ctx = hub.on("tick", rec)
    futures = []
    for tag in range(2):
        future = settle(hub, submit(run_task, fire_range, ctx, tag, N_FIRES))
        future.add_done_callback(rec.completed(tag))
        futures.append(future)
    pids = [f.result(timeout=45) for f in futures]
    # Every event of a task was dispatched before its future completed, in firing order.
    assert rec.seen_at_completion == {0: N_FIRES, 1: N_FIRES}
    assert rec.events[0] == list(range(N_FIRES))
    assert rec.events[1] == list(range(N_FIRES))
    return pids


def test_two_loky_workers_deliver_every_event_in_order_before_the_result(hub, pool):
    pids = check_exact("loky", hub, pool.submit)
    assert os.getpid() not in pids


def test_two_threads_deliver_every_event_in_order_before_the_result(hub):
    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        pids = check_exact("threads", hub, threads.submit)
    assert pids == [os.getpid()] * 2


def test_task_that_raises_has_its_events_dispatched_first(hub, pool):
    seen = []
    ctx = hub.on("e", seen.append)
    future = settle(hub, pool.submit(run_task, fire_then_raise, ctx, 1000))
    with pytest.raises(ValueError, match="failed after 1000 events") as info:
        future.result(timeout=30)
    assert seen == list(range(1000))
    tokens = outcome_tokens(info.value, remove=True)
    assert tokens
    assert any(token[0] == hub.hub_id for token in tokens)
    assert outcome_tokens(info.value) == ()


def test_run_task_in_the_hub_process():
    with EventHub() as hub:
        seen = []
        ctx = hub.on("e", seen.append)
        result = run_task(fire_range, hub.context("none"), 0, 0)
        assert isinstance(result, TaskResult)
        value, tokens = result
        assert value == os.getpid()

        def task():
            assert in_task()
            ctx.fire(1)
            ctx.fire(2)
            return "done"

        assert not in_task()
        value, tokens = unwrap_outcome(run_task(task))
        assert value == "done"
        assert not in_task()
        done = threading.Event()
        hub.after(tokens, done.set)
        assert done.wait(10)
        assert seen == [1, 2]


def test_callback_that_raises_is_logged_and_loses_nothing(hub, caplog):
    seen = []

    def fragile(i):
        if i == 3:
            raise RuntimeError("boom at 3")

    hub.on("e", fragile)
    ctx = hub.on("e", seen.append)
    with caplog.at_level(logging.ERROR, logger="mepa.events"):
        for i in range(10):
            ctx.fire(i)
        assert hub.drain(timeout=10)
    assert seen == list(range(10))
    [record] = [r for r in caplog.records if r.name == "mepa.events"]
    assert "fragile" in record.getMessage()
    assert record.exc_info is not None
    assert "boom at 3" in str(record.exc_info[1])


def test_callbacks_run_in_registration_order_and_off_variants(hub):
    calls = []

    def a(x):
        calls.append(("a", x))

    def b(x):
        calls.append(("b", x))

    ctx = hub.on("e", a)
    hub.on("e", b)
    ctx.fire(1)
    assert hub.drain(timeout=10)
    assert calls == [("a", 1), ("b", 1)]

    assert hub.off("e", a) is True
    assert hub.off("e", a) is False  # no longer registered
    ctx.fire(2)
    assert hub.drain(timeout=10)
    assert calls[2:] == [("b", 2)]

    assert hub.off(ctx) is True  # every callback of the event
    ctx.fire(3)
    assert hub.drain(timeout=10)
    assert calls[3:] == []

    hub.on("f", a)
    hub.on("f", b)
    assert hub.off("f") is True
    assert hub.off("f") is False
    assert hub.off("never registered") is False


def test_register_makes_anonymous_events(hub):
    first, second = [], []
    ctx1 = hub.register(first.append)
    ctx2 = hub.register(second.append)
    assert ctx1.event != ctx2.event
    ctx1.fire("x")
    assert hub.drain(timeout=10)
    assert (first, second) == (["x"], [])
    assert hub.off(ctx1) is True


def test_fire_passes_keyword_arguments(hub):
    seen = []
    ctx = hub.on("e", lambda *args, **kwargs: seen.append((args, kwargs)))
    ctx.fire(1, 2, key="value")
    assert hub.drain(timeout=10)
    assert seen == [((1, 2), {"key": "value"})]


def test_context_pickles_and_fires_in_a_worker(hub, pool):
    seen = []
    ctx = hub.on("e", lambda tag, i: seen.append(i))
    for dumps in (pickle.dumps, cloudpickle.dumps):
        copy = pickle.loads(dumps(ctx))
        assert isinstance(copy, EventContext)
        assert copy.event == ctx.event
        assert copy.hub_id == hub.hub_id
    # Unpickled in the hub's process, a context fires locally.
    pickle.loads(pickle.dumps(ctx)).fire("local", -1)
    assert hub.drain(timeout=10)
    assert seen == [-1]

    def nested(n):  # captured by a closure, shipped with cloudpickle
        return fire_range(ctx, "w", n)

    future = settle(hub, pool.submit(run_task, nested, 5))
    assert future.result(timeout=30) != os.getpid()
    assert seen == [-1, 0, 1, 2, 3, 4]


def test_after_with_no_tokens_or_foreign_tokens_runs_at_once(hub):
    calls = []
    hub.after((), lambda: calls.append("empty"))
    hub.after([("another-hub", "source", 5)], lambda: calls.append("foreign"))
    assert calls == ["empty", "foreign"]


def test_batches_of_a_source_are_dispatched_in_order(hub):
    seen = []
    hub.on("e", seen.append)
    done = threading.Event()
    hub.after([(hub.hub_id, "src", 3)], done.set)
    hub.deliver("src", 2, [("e", (2,), None)])
    hub.deliver("src", 3, [("e", (3,), None)])
    assert hub.drain(timeout=10)
    assert seen == []  # held back until batch 1 arrives
    assert not done.is_set()
    hub.deliver("src", 1, [("e", (1,), None)])
    hub.deliver("src", 1, [("e", (1,), None)])  # a repeat is ignored
    assert done.wait(10)
    assert hub.drain(timeout=10)
    assert seen == [1, 2, 3]


def test_socket_directory_is_private_and_removed_on_close():
    hub = EventHub()
    try:
        channel = hub.process_channel()
        assert hub.process_channel() is channel
        directory = os.path.dirname(channel.address)
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert stat.S_ISSOCK(os.stat(channel.address).st_mode)
        assert len(channel.authkey) >= 32
        assert "authkey" not in repr(channel)
    finally:
        hub.close(timeout=10)
    assert not os.path.exists(directory)
    hub.close()  # idempotent


def test_channel_refuses_a_wrong_authkey_and_keeps_serving(hub, caplog):
    seen = []
    hub.on("e", seen.append)
    channel = hub.process_channel()
    with caplog.at_level(logging.WARNING, logger="mepa.events"), pytest.raises(
        AuthenticationError
    ):
        Client(channel.address, family="AF_UNIX", authkey=b"wrong key" * 4)
    # The real key still works: a sender in this process talks to the hub through the socket.
    sender = channel.sender()
    try:
        sender.add("e", ("via socket",), None)
        token = sender.flush()
        assert token is not None
        done = threading.Event()
        hub.after([token], done.set)
        assert done.wait(10)
        assert seen == ["via socket"]
    finally:
        _sender._SENDERS.pop(channel.key, None)
        sender.close()


def test_unpicklable_event_is_reported_on_the_host(hub, caplog):
    hub.on("e", lambda x: None)
    channel = hub.process_channel()
    sender = channel.sender()
    try:
        with caplog.at_level(logging.ERROR, logger="mepa.events"):
            sender.add("e", (threading.Lock(),), None)
            sender.add("e", (1,), None)
            done = threading.Event()
            hub.after([sender.flush()], done.set)
            assert done.wait(10)
        assert any("could not pickle" in r.getMessage() for r in caplog.records)
    finally:
        _sender._SENDERS.pop(channel.key, None)
        sender.close()


def events_seen_by_a_hub_closed_right_after_a_flush():
    """Send three events from a (second process's) sender, close the hub at once: what arrived."""
    hub = EventHub()
    seen = []
    hub.on("e", seen.append)
    channel = hub.process_channel()
    sender = channel.sender()
    try:
        for i in range(3):
            sender.add("e", (i,), None)
        sender.flush()
        hub.close(timeout=10)
        return seen
    finally:
        _sender._SENDERS.pop(channel.key, None)
        sender.close()
        hub.close()


def test_close_dispatches_what_the_socket_already_holds():
    assert events_seen_by_a_hub_closed_right_after_a_flush() == [0, 1, 2]


def test_close_waits_for_a_handshake_in_progress_and_dispatches_its_events(monkeypatch):
    # The client's side of the handshake ends before the hub's: a client may have sent its
    # batch while the hub's handshake thread still finishes (slowly, on a loaded machine).
    from mepa._events import _socket

    real = _socket.answer_challenge

    def slow_answer(conn, authkey):
        real(conn, authkey)
        threading.Event().wait(0.5)

    monkeypatch.setattr(_socket, "answer_challenge", slow_answer)
    assert events_seen_by_a_hub_closed_right_after_a_flush() == [0, 1, 2]


def test_closed_hub_drops_events_and_refuses_registrations():
    hub = EventHub()
    seen = []
    ctx = hub.on("e", seen.append)
    ctx.fire(1)
    hub.close(timeout=10)
    assert seen == [1]  # close dispatched what had arrived
    ctx.fire(2)  # dropped, no error
    assert hub.drain(timeout=1)
    assert seen == [1]
    with pytest.raises(RuntimeError, match="after close"):
        hub.on("e", seen.append)
    calls = []
    hub.after([(hub.hub_id, "src", 1)], lambda: calls.append(1))
    assert calls == [1]


class _Item:
    pass


def test_registry_lists_while_other_threads_add():
    # A task ending in one thread lists the objects to flush while a task starting in another
    # registers one; a WeakSet raised "Set changed size during iteration" here.
    registry = _sender._WeakRegistry()
    stop = threading.Event()
    kept = []

    def add():
        while not stop.is_set():
            item = _Item()
            registry.add(item)
            kept.append(item)
            if len(kept) > 100:
                del kept[:50]  # some die: their entries go at the next listing

    threads = [threading.Thread(target=add) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(20_000):
            assert all(isinstance(item, _Item) for item in registry.snapshot())
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    alive = list(kept)
    assert set(map(id, registry.snapshot())) >= set(map(id, alive))
    del alive, kept[:]
    assert registry.snapshot() == []
    assert not registry


# -- backpressure of events fired in the hub's own process ----------------------------------


def test_events_fired_on_threads_wait_for_a_slow_callback_and_none_is_lost(monkeypatch):
    # Threads (ThreadExecutor, LinearExecutor, host code) put their events straight on the
    # hub's queue: with a slow callback the queue must stay bounded (the firing threads
    # wait), and every event must still arrive.
    from mepa._events import _hub

    limit = 500
    monkeypatch.setattr(_hub, "MAX_LOCAL_EVENTS", limit)
    per_thread, n_threads = 4000, 3
    hub = EventHub()
    seen: dict[int, list[int]] = defaultdict(list)
    longest = [0]

    def slow(tag, i):
        longest[0] = max(longest[0], hub._queue.qsize())
        if not i % 50:
            threading.Event().wait(0.002)  # slow, and lets the firing threads run ahead
        seen[tag].append(i)

    ctx = hub.on("e", slow)
    try:
        with concurrent.futures.ThreadPoolExecutor(n_threads) as threads:
            done = [threads.submit(fire_range, ctx, t, per_thread) for t in range(n_threads)]
            for future in done:
                future.result(timeout=60)
        assert hub.drain(timeout=60)
    finally:
        hub.close(timeout=10)
    assert {tag: len(values) for tag, values in seen.items()} == dict.fromkeys(
        range(n_threads), per_thread
    )
    assert all(values == list(range(per_thread)) for values in seen.values())
    # each thread may put one event past the bound before it waits
    assert longest[0] <= limit + n_threads


def test_a_callback_that_fires_on_a_full_queue_does_not_deadlock(monkeypatch):
    from mepa._events import _hub

    monkeypatch.setattr(_hub, "MAX_LOCAL_EVENTS", 10)
    hub = EventHub()
    echoes: list[int] = []
    echo = hub.on("echo", echoes.append)

    def relay(i):
        for _ in range(3):  # more than the queue's room, from the dispatcher thread
            echo.fire(i)

    ctx = hub.on("e", relay)
    try:
        for i in range(200):
            ctx.fire(i)
        assert hub.drain(timeout=30)
    finally:
        hub.close(timeout=10)
    assert echoes == [i for i in range(200) for _ in range(3)]
