"""The seam between the base executor and an engine adapter: a broken adapter never hangs.

Each test subclasses a real executor and breaks one adapter hook, as a new backend's author
might by mistake, and checks that the user's future still completes (with the hook's error
and a note naming it) and that ``shutdown(wait=True)`` returns.
"""

from __future__ import annotations

import operator
import threading

import pytest

import mepa

from .scripts import run_python

pytestmark = pytest.mark.timeout(60)


class HookBroke(RuntimeError):
    pass


def fail(message):
    raise KeyError(message)


def _breaking(hook):
    """A ThreadExecutor subclass whose ``hook`` raises :class:`HookBroke`."""

    def broken(self, *args, **kwargs):
        raise HookBroke(f"{hook} is broken")

    return type(f"Broken{hook.strip('_').title().replace('_', '')}", (mepa.ThreadExecutor,),
                {hook: broken})


def shutdown_returns(executor, seconds=30.0):
    """Whether ``executor.shutdown(wait=True)`` returns within ``seconds`` (run in a thread)."""
    thread = threading.Thread(target=executor.shutdown, kwargs={"wait": True}, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()


@pytest.mark.parametrize(
    ("hook", "task"),
    [
        ("_decode_result", (operator.add, 1, 2)),
        ("_translate_error", (fail, "task error")),
        ("_task_finished", (operator.add, 1, 2)),
        ("_task_finished", (fail, "task error")),
        ("_prepare_call", (operator.add, 1, 2)),
        ("_engine_submit", (operator.add, 1, 2)),
    ],
)
def test_a_raising_hook_fails_the_future_and_names_itself(hook, task):
    executor = _breaking(hook)(2)
    try:
        future = executor.submit(*task)
        with pytest.raises(HookBroke, match=f"{hook} is broken") as info:
            executor.gather(future, timeout=30)
        notes = "\n".join(getattr(info.value, "__notes__", []))
        assert f"{type(executor).__name__}.{hook}" in notes
        assert future.done()
    finally:
        assert shutdown_returns(executor)


def test_a_raising_hook_fails_every_task_of_a_map():
    executor = _breaking("_task_finished")(2)
    try:
        futures = executor.map_async(operator.neg, range(6), chunksize=2)
        done, not_done = mepa_wait(futures)
        assert not not_done
        assert all(isinstance(f.exception(), HookBroke) for f in done)
    finally:
        assert shutdown_returns(executor)


def mepa_wait(futures):
    import concurrent.futures

    return concurrent.futures.wait(futures, timeout=30)


class _LostEvents(mepa.ThreadExecutor):
    """Its tasks report events (a token) that never arrive, as over a channel that lost them."""

    def _prepare_call(self, fn, args, kwargs, task):
        from mepa._events import TaskResult

        hub_id = self._events().hub_id
        call, call_args, call_kwargs = super()._prepare_call(fn, args, kwargs, task)

        def run(*a, **k):
            value, _ = call(*a, **k)
            return TaskResult(value, ((hub_id, "a-source-that-never-sends", 1),))

        return run, call_args, call_kwargs


def test_shutdown_does_not_wait_forever_for_events_that_never_come(monkeypatch):
    import mepa._executors._base as base

    monkeypatch.setattr(base, "EVENT_GRACE", 0.5)  # events in transit get this long
    executor = _LostEvents(2)
    future = executor.submit(operator.add, 2, 3)
    with pytest.raises(TimeoutError):
        future.result(timeout=0.5)  # gather waits for the task's events, as it must
    assert shutdown_returns(executor)
    assert future.result(timeout=0) == 5  # completed when the hub closed


# ---------------------------------------------------------------------------- one error map


def test_error_map_first_rule_wins_and_keeps_the_cause():
    from mepa._errors import COMMON_ERRORS, ErrorMap, ErrorRule

    lost = ErrorRule(
        ConnectionResetError,
        lambda exc, task: mepa.WorkerCrashedError(f"lost {task.describe()}", chunk=task.chunk),
    )
    errors = ErrorMap(lost, COMMON_ERRORS)
    task = mepa.TaskFuture(mepa.Worker("w-1"), 3)
    original = ConnectionResetError("peer")
    error = errors.translate(original, task)
    assert isinstance(error, mepa.WorkerCrashedError)
    assert str(error) == "lost worker 'w-1', chunk 3"
    assert error.chunk == 3
    assert error.__cause__ is original
    mine = KeyError("the task's own")
    assert errors.translate(mine, task) is mine
    already = mepa.SerializationError("could not be pickled")  # not wrapped a second time
    assert errors.translate(already, task) is already
    with pytest.raises(mepa.WorkerCrashedError) as info, errors.raising(task):
        raise ConnectionResetError("again")
    assert isinstance(info.value.__cause__, ConnectionResetError)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TypeError("cannot pickle '_thread.lock' object"), True),
        (AttributeError("Can't pickle local object 'f.<locals>.g'"), True),
        (TypeError("Could not serialize object of type Lock"), True),
        (TypeError("unsupported operand"), False),
        (ValueError("pickle"), False),
    ],
)
def test_is_pickling_error(exc, expected):
    from mepa._errors import is_pickling_error

    assert is_pickling_error(exc) is expected
    wrapped = RuntimeError("while sending")
    wrapped.__cause__ = exc
    assert is_pickling_error(wrapped) is expected


def test_one_bridge_and_remote_traceback_for_every_adapter():
    from mepa._executors import _dask, _futures

    assert _dask.RemoteTraceback is _futures.RemoteTraceback
    for module in ("_dask", "_process"):
        source = __import__(f"mepa._executors.{module}", fromlist=["x"])
        assert not hasattr(source, "_is_pickling_error")
        assert not hasattr(source, "_BridgeFuture")


def test_bridge_future_forwards_cancel_and_settles_once():
    from mepa._executors._futures import BridgeFuture, RemoteTraceback

    cancelled = []
    bridge = BridgeFuture(lambda: cancelled.append(True))
    assert bridge.cancel()
    assert cancelled == [True]
    bridge.resolve(1)  # no effect once done
    assert bridge.cancelled()

    failing = BridgeFuture()
    error = ValueError("remote")
    failing.reject(error, "Traceback (most recent call last): ...")
    failing.resolve(2)
    assert failing.exception() is error
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "most recent call last" in str(error.__cause__)
    assert not failing.cancel()


# ------------------------------------------------------------- a task the engine forgot


def lost_task():
    return "never runs"


class _Forgetful(mepa.ThreadExecutor):
    """Its engine loses the tasks of :func:`lost_task`: their engine futures never complete.

    What an adapter does when it drops a task (a remote future it stopped tracking, a
    callback it never registers): the base class cannot tell from the future itself.
    """

    def _engine_submit(self, fn, args, kwargs, worker):
        import concurrent.futures

        if lost_task in args:
            return concurrent.futures.Future()  # pending forever, never running
        return super()._engine_submit(fn, args, kwargs, worker)


def test_shutdown_fails_a_task_the_engine_forgot_instead_of_waiting_forever(monkeypatch):
    import mepa._executors._base as base

    monkeypatch.setattr(base, "STALLED_SECONDS", 0.5)
    executor = _Forgetful(2)
    lost = executor.submit(lost_task)
    kept = executor.submit(operator.add, 2, 3)
    assert shutdown_returns(executor)
    assert kept.result(timeout=0) == 5
    with pytest.raises(mepa.BrokenExecutor, match="never finished the task") as info:
        lost.result(timeout=0)
    assert f"task on {lost.describe()}" in str(info.value)


def test_shutdown_still_waits_for_a_task_that_runs_longer_than_the_bound(monkeypatch):
    import time

    import mepa._executors._base as base

    monkeypatch.setattr(base, "STALLED_SECONDS", 0.2)
    executor = mepa.ThreadExecutor(1)
    slow = executor.submit(time.sleep, 1.0)  # runs: never taken for forgotten
    queued = executor.submit(operator.add, 2, 3)  # waits behind it, pending, not running
    assert shutdown_returns(executor)
    assert slow.result(timeout=0) is None
    assert queued.result(timeout=0) == 5


# ------------------------------------------------- shutdown(wait=False), then the interpreter exits


RELAYED_EXIT_SCRIPT = """
import concurrent.futures, sys, time
import mepa
from mepa._executors._futures import BridgeFuture

# An engine whose futures are completed from a callback run in another thread pool, as
# distributed's client runs the callbacks of its futures: once the interpreter has shut
# the thread pools down, such a future can no longer complete.
RUN = concurrent.futures.ThreadPoolExecutor(2)
RELAY = concurrent.futures.ThreadPoolExecutor(1)


class Relayed(mepa.ThreadExecutor):
    def _engine_submit(self, fn, args, kwargs, worker):
        bridge = BridgeFuture()

        def done(run):
            RELAY.submit(bridge.resolve_from, run.result)

        RUN.submit(fn, *args, **kwargs).add_done_callback(done)
        return bridge


def nap(x):
    time.sleep(0.5)
    return x


if __name__ == "__main__":
    executor = Relayed(2)
    futures = [executor.submit(nap, i) for i in range(4)]
    executor.shutdown(wait=False)
    futures[-1].add_done_callback(lambda f: print("last", f.result(), flush=True))
    print("main done", flush=True)
"""


def test_work_left_to_a_shutdown_without_wait_finishes_before_the_interpreter_exits(tmp_path):

    proc = run_python(RELAYED_EXIT_SCRIPT, tmp_path, timeout=50, warnings_as_errors=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["main done", "last 3"]
    assert proc.stderr == ""
