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

    def _prepare_call(self, fn, args, kwargs, future):
        from mepa._events import TaskResult

        hub_id = self._events().hub_id
        call, call_args, call_kwargs = super()._prepare_call(fn, args, kwargs, future)

        def run(*a, **k):
            value, _ = call(*a, **k)
            return TaskResult(value, ((hub_id, "a-source-that-never-sends", 1),))

        return run, call_args, call_kwargs


def test_shutdown_does_not_wait_forever_for_events_that_never_come():
    executor = _LostEvents(2)
    future = executor.submit(operator.add, 2, 3)
    with pytest.raises(TimeoutError):
        future.result(timeout=0.5)  # gather waits for the task's events, as it must
    assert shutdown_returns(executor)
    assert future.result(timeout=0) == 5  # completed when the hub closed
