"""Scenario ``events``: messages from tasks to a callback on the host, and progress bars.

Delivery group: each of 2 workers fires ``n`` events of value 1; a callback on the host counts
them. Timed: from submitting the firing tasks until the host has counted every event (not just
until the tasks return). Competitors carry the same events over a ``Manager().Queue()`` proxy
and over a raw ``multiprocessing.SimpleQueue`` inherited by the workers, each drained by a host
thread that calls the same callback.

Progress group: a job of 1M elements split over the workers, each element a tiny bit of integer
work (:data:`~benchmarks.scenarios._kernels.LCG_STEPS` LCG steps), with and without
``progress.update(1)`` per element. The loop without progress is the baseline: the two are
timed in pairs (on one shared worker pool), so the overhead is a paired ratio.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import threading
from collections.abc import Callable
from typing import Any

from .._harness import Group, Prepared, RunConfig, Scenario, ScenarioPlan, Variant
from .._stats import Target
from . import _common as c
from . import _kernels as k

__all__ = ["EVENTS", "EventCounter"]

#: Seconds to wait for the last event to arrive after the tasks returned.
DELIVERY_TIMEOUT = 120.0


class EventCounter:
    """Host-side callback counting the events it receives; :meth:`wait` blocks until all came.

    Called from a single dispatcher thread, so the count needs no lock.
    """

    def __init__(self) -> None:
        self.count = 0
        self.expected = 0
        self._done = threading.Event()

    def reset(self, expected: int) -> None:
        """Start counting afresh towards ``expected`` events."""
        self._done.clear()
        self.count = 0
        self.expected = expected

    def __call__(self, *args: object, **kwargs: object) -> None:
        """Count one event, whatever its payload."""
        self.count += 1
        if self.count >= self.expected:
            self._done.set()

    def wait(self, timeout: float = DELIVERY_TIMEOUT) -> int:
        """Block until every expected event arrived; return the count.

        Raises
        ------
        TimeoutError
            If they did not arrive within ``timeout`` seconds.
        """
        if not self._done.wait(timeout):
            raise TimeoutError(
                f"delivered {self.count} of {self.expected} events within {timeout:g} s"
            )
        return self.count


def _count_check(expected: int) -> Callable[[object], None]:
    def check(out: object) -> None:
        if out != expected:
            raise AssertionError(f"counted {out!r} events, expected {expected}")

    return check


def _drain(get: Callable[[], Any], callback: EventCounter) -> None:
    while True:
        item = get()
        if item is None:
            return
        callback(item)


def _reader(
    stack: contextlib.ExitStack, get: Callable[[], Any], stop: Callable[[], None]
) -> EventCounter:
    """Start a host thread feeding ``get()`` items to a counter; ``stack`` stops and joins it."""
    counter = EventCounter()
    thread = threading.Thread(target=_drain, args=(get, counter), daemon=True, name="drain")
    thread.start()

    def _stop() -> None:
        stop()
        thread.join(timeout=30)

    stack.callback(_stop)
    return counter


def _build(config: RunConfig) -> ScenarioPlan:
    w = config.workers
    per = config.size(100_000, 5_000)
    per_manager = min(per, config.size(20_000, 2_000))
    per_ray = min(per, config.size(2_000, 200))  # by hand, each event is an actor call
    n_progress = config.size(1_000_000, 20_000)
    progress_items = [n_progress // w + (i < n_progress % w) for i in range(w)]
    spawn = multiprocessing.get_context("spawn")

    def mepa_events(kind: str, n: int) -> Callable[[contextlib.ExitStack], Prepared]:
        """Each of the ``w`` tasks of a mepa executor of ``kind`` fires ``n`` events."""

        def setup(stack: contextlib.ExitStack) -> Prepared:
            ex = c.mepa_executor(stack, kind, w)
            counter = EventCounter()
            ctx = ex.register(counter)

            def run() -> int:
                counter.reset(n * w)
                list(ex.map(k.fire_events, [(ctx, n)] * w))
                return counter.wait()

            return Prepared(call=run, check=_count_check(n * w), pids=c.mepa_pids(ex, w))

        return setup

    def pool(stack: contextlib.ExitStack, **kwargs: Any) -> concurrent.futures.ProcessPoolExecutor:
        ex = concurrent.futures.ProcessPoolExecutor(w, mp_context=spawn, **kwargs)
        stack.callback(ex.shutdown, wait=True)
        return ex

    def manager_queue(stack: contextlib.ExitStack) -> Prepared:
        manager = spawn.Manager()
        stack.callback(manager.shutdown)
        queue = manager.Queue()
        counter = _reader(stack, queue.get, lambda: queue.put(None))
        ex = pool(stack)

        def run() -> int:
            counter.reset(per_manager * w)
            futs = [ex.submit(k.put_events, (queue, per_manager)) for _ in range(w)]
            for f in futs:
                f.result()
            return counter.wait()

        return Prepared(
            call=run,
            check=_count_check(per_manager * w),
            pids=lambda: list(ex.map(k.slow_getpid, range(c.probe_count(w)))),
        )

    def simple_queue(stack: contextlib.ExitStack) -> Prepared:
        queue = spawn.SimpleQueue()
        stack.callback(queue.close)
        counter = _reader(stack, queue.get, lambda: queue.put(None))
        ex = pool(stack, initializer=k.set_simple_queue, initargs=(queue,))

        def run() -> int:
            counter.reset(per * w)
            futs = [ex.submit(k.put_events_simple, per) for _ in range(w)]
            for f in futs:
                f.result()
            return counter.wait()

        return Prepared(
            call=run,
            check=_count_check(per * w),
            pids=lambda: list(ex.map(k.slow_getpid, range(c.probe_count(w)))),
        )

    def ray_queue(stack: contextlib.ExitStack) -> Prepared:
        import ray
        from ray.util.queue import Queue

        c.ray_session(stack, w)
        queue = Queue(actor_options={"num_cpus": 0})
        stack.callback(queue.shutdown)
        counter = _reader(stack, queue.get, lambda: queue.put(None))
        remote = ray.remote(num_cpus=1)(k.put_events)

        def run() -> int:
            counter.reset(per_ray * w)
            ray.get([remote.remote((queue, per_ray)) for _ in range(w)])
            return counter.wait()

        return Prepared(call=run, check=_count_check(per_ray * w))

    def progress(with_updates: bool) -> Callable[[contextlib.ExitStack], Prepared]:
        def setup(stack: contextlib.ExitStack) -> Prepared:
            ex = c.mepa_executor(stack, "process", w)
            if not with_updates:
                return Prepared(call=lambda: list(ex.map(k.loop_plain, progress_items)))
            bar = ex.progress(total=n_progress, disable=True)
            close = getattr(bar, "close", None)
            if callable(close):
                stack.callback(close)
            args = [(bar, m) for m in progress_items]
            return Prepared(call=lambda: list(ex.map(k.loop_with_progress, args)))

        return setup

    groups = [
        Group(
            name="event delivery",
            timed=(
                "submit the firing tasks until the host callback has counted every event; "
                "pools, queues and reader threads created before timing"
            ),
            unit="events",
            variants=(
                Variant(
                    "mepa-process",
                    "mepa",
                    mepa_events("process", per),
                    f"mepa ProcessExecutor({w}): ctx = ex.register(cb); ctx.fire(1) in tasks",
                    items=per * w,
                ),
                Variant(
                    "manager-queue",
                    "competitor",
                    manager_queue,
                    f"Manager().Queue(), {per_manager} puts per worker, host thread gets",
                    items=per_manager * w,
                ),
                Variant(
                    "simple-queue",
                    "competitor",
                    simple_queue,
                    "multiprocessing.SimpleQueue inherited by the workers, host thread gets",
                    items=per * w,
                ),
            ),
        ),
        Group(
            name="ray",
            timed=(
                "submit the firing tasks until the host has counted every event; the local "
                "Ray, the executor, queue and reader thread created before timing"
            ),
            baseline="ray-queue",
            unit="events",
            variants=(
                Variant(
                    "ray-queue",
                    "competitor",
                    ray_queue,
                    f"ray.util.queue.Queue, {per_ray} put() per @ray.remote task, host thread "
                    "get()s",
                    requires=("ray",),
                    items=per_ray * w,
                ),
                Variant(
                    "mepa-ray",
                    "mepa",
                    mepa_events("ray", per_ray),
                    f"mepa RayExecutor(n_workers={w}): ctx.fire(1) in tasks, same local Ray",
                    requires=("ray",),
                    items=per_ray * w,
                ),
            ),
        ),
        Group(
            name="progress",
            timed=(
                f"one map over {w} tasks looping over {n_progress} elements in total; "
                "executor and progress object created before timing"
            ),
            baseline="progress-off",
            unit="elements",
            # The target compares times ~5% apart; single pairs here vary by more than that.
            repeat_scale=3,
            variants=(
                Variant(
                    "progress-off",
                    "mepa",
                    progress(False),
                    "mepa ProcessExecutor.map, no progress",
                    items=n_progress,
                ),
                Variant(
                    "progress-on",
                    "mepa",
                    progress(True),
                    "same, progress.update(1) per element (ex.progress(..., disable=True))",
                    items=n_progress,
                ),
            ),
        ),
    ]
    return ScenarioPlan(
        params={
            "events_per_worker": per,
            "manager_queue_events_per_worker": per_manager,
            "ray_events_per_worker": per_ray,
            "progress_elements": n_progress,
            "work_per_element": f"{k.LCG_STEPS} LCG steps",
            "workers": w,
        },
        groups=groups,
        targets=[
            Target(">= 1M events/s delivered", "rate", "mepa-process", 1e6),
            Target(
                "progress overhead < 5% (time ratio <= 1.05)",
                "time_ratio",
                "progress-on",
                1.05,
                op="<=",
                reference="progress-off",
            ),
        ],
        notes=[
            (
                "The Manager queue carries fewer events per call (one round trip to the manager "
                "process per put and per get); compare rates, not times."
            ),
            (
                "Ray group: mepa's RayExecutor timed in pairs with Ray's own queue written by "
                "hand, the same events on one local Ray; skipped when Ray is not installed."
            ),
        ],
    )


EVENTS = Scenario(
    name="events",
    title="Events and progress from tasks to the host",
    description=(
        "Throughput of small messages from worker tasks to a host callback, and the cost of "
        "per-element progress updates."
    ),
    build=_build,
)
