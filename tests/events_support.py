"""What an executor does with a finished task, for the event and progress core tests."""

from __future__ import annotations

import concurrent.futures

from mepa._events import outcome_tokens, unwrap_outcome


def settle(hub, engine_future):
    """Complete a future once the events of its task are dispatched, as an executor does."""
    user = concurrent.futures.Future()

    def done(engine):
        exc = engine.exception()
        if exc is not None:
            hub.after(outcome_tokens(exc), lambda: user.set_exception(exc))
        else:
            value, tokens = unwrap_outcome(engine.result())
            hub.after(tokens, lambda: user.set_result(value))

    engine_future.add_done_callback(done)
    return user
