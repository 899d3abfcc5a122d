"""Faults that used to hang, leak or cross between executors: each path ends with a typed error."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import numpy as np
import pytest

import mepa

from .executors import EXECUTOR_KINDS, make_executor

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
