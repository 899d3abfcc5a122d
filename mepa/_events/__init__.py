"""Events: tasks call back to the host while they run.

A task holds an :class:`EventContext` and calls ``ctx.fire(*args, **kwargs)``; the host calls
every callback registered for the context's event with those arguments, in one dispatcher thread
of the :class:`EventHub`, in the order each source fired them. How an event travels depends on
where it was fired::

    same process as the hub (host code, thread and linear executors)
        ctx.fire ──► hub queue ──────────────────────────────────────┐
                                                                     ▼
    another process (loky workers; later Dask workers)        dispatcher thread ──► callbacks
        ctx.fire ──► BatchSender buffer ──► Channel transport        ▲   (registration order,
                     (one per process      (AF_UNIX connection,      │    errors logged)
                      and hub; flushed at   authkey, private dir)    │
                      N events, T seconds,        │                  │
                      task end)                   ▼                  │
                                      reader thread ──► hub.deliver(source, seq, batch)

*Sources and tokens.* Every :class:`BatchSender` is a *source* with a random id; it numbers its
batches 1, 2, 3, ... The host dispatches the batches of each source in that order (holding back
one that arrives early) and records, per source, the last batch dispatched. Events fired in the
hub's own process go straight to the hub queue; there the source is the queue itself and
:func:`run_task` appends a numbered *mark* to it.

*Nothing is lost.* Executors submit ``run_task(fn, *args)`` instead of ``fn``. When ``fn``
returns (or raises), :func:`run_task` flushes every buffer of its process, marks every hub of its
process that received local events, and returns the resulting *tokens* ``(hub_id, source_id,
seq)`` with the value in a :class:`TaskResult` (or attaches them to the exception). The host
passes them to :meth:`EventHub.after`, which completes the user's future only once the dispatcher
has dispatched every batch (or mark) they name: every event a task fired before it returned has
reached its callbacks before ``gather`` hands back that task's result.

*Transports.* A context carries a picklable :class:`Channel`; in a process without the hub,
:meth:`Channel.sender` returns the process-local :class:`BatchSender`, which buffers, numbers and
encodes batches and hands the bytes to the :class:`Transport` returned by
:meth:`Channel.connect`. The receiving side of any transport calls
:meth:`EventHub.deliver_bytes` (or :meth:`EventHub.deliver`). :class:`UnixSocketChannel` is the
transport for processes on this machine (:meth:`EventHub.process_channel`); a Dask transport
implements :meth:`Channel.connect` with ``Worker.log_event`` and feeds
``Client.subscribe_topic`` messages to :meth:`EventHub.deliver_bytes`, then installs itself with
:meth:`EventHub.use_channel`.

*Layers*, one module each, lowest first::

    _sender.py   Channel, Transport, BatchSender, the flusher thread, the fork reset
        ▲
    _context.py  EventContext (fire), run_task and the tokens it returns
        ▲
    _socket.py   UnixSocketChannel and the hub's AF_UNIX listener (accept, handshake, read)
        ▲
    _hub.py      EventHub: callbacks, the queue, the dispatcher thread, after(tokens)

This package re-exports what the rest of mepa uses; private helpers are imported from the
module that owns them.
"""

from __future__ import annotations

from ._context import (
    AnonymousEvent,
    EventContext,
    TaskResult,
    in_task,
    outcome_tokens,
    run_task,
    unwrap_outcome,
)
from ._hub import MAX_QUEUED_BYTES, EventHub
from ._sender import FLUSH_EVENTS, FLUSH_SECONDS, BatchSender, Channel, Token, Transport
from ._socket import UnixSocketChannel

__all__ = [
    "FLUSH_EVENTS",
    "FLUSH_SECONDS",
    "MAX_QUEUED_BYTES",
    "AnonymousEvent",
    "BatchSender",
    "Channel",
    "EventContext",
    "EventHub",
    "TaskResult",
    "Token",
    "Transport",
    "UnixSocketChannel",
    "in_task",
    "outcome_tokens",
    "run_task",
    "unwrap_outcome",
]
