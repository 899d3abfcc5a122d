"""Tasks and results of the process executor, pickled once, big arrays in shared memory.

The process executor pickles each task itself, with a pickler that sends every NumPy array it
meets (in arguments, inside the user's own objects, in closures) through shared memory when it
is large or already shared, and hands loky opaque bytes. The C pickler finds the arrays, so
there is no Python walk over the arguments (for ``map`` batches of many small items such a
walk would cost more than the pickling), and arrays nested in any object are covered.

A worker that runs a task without arrays never imports NumPy or :mod:`mepa._segments` for it:
the first task on a new pool starts as fast as a plain loky task.
"""

from __future__ import annotations

import io
import pickle
import sys
import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cloudpickle

if TYPE_CHECKING:
    from ._segments import Lease, SegmentPool, SegmentRef, SharedArray
    from ._shm import OutputBuffer, ResultTaker

__all__ = [
    "SentTraceback",
    "SharedResult",
    "dumps_result",
    "dumps_shared",
    "loads_result",
    "loads_shared",
    "run_payload",
    "run_sent_back",
    "sendable_exception",
]


def _is_plain_array(obj: object) -> bool:
    kind = type(obj)
    return kind.__module__ == "numpy" and kind.__name__ in ("ndarray", "memmap")


class _SharingPickler(cloudpickle.Pickler):  # type: ignore[misc]  # untyped base
    """cloudpickle, with NumPy arrays replaced by shared-memory handles where ``share`` says."""

    def __init__(self, file: io.BytesIO, share: Callable[[Any], SharedArray | None]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._share = share

    def reducer_override(self, obj: Any) -> Any:
        if _is_plain_array(obj):
            handle = self._share(obj)
            if handle is not None:
                return _rebuild_array, (
                    handle.name, handle.offset, handle.shape, handle.dtype, handle.strides,
                    handle.writeable, handle.kind,
                )
        return super().reducer_override(obj)


_decoding = threading.local()


def _rebuild_array(
    name: str, offset: int, shape: tuple[int, ...], dtype: Any, strides: tuple[int, ...],
    writeable: bool, kind: Any,
) -> Any:
    from ._segments import SharedArray

    handle = SharedArray(name, offset, shape, dtype, strides, writeable, kind)
    taker: ResultTaker | None = getattr(_decoding, "taker", None)
    if taker is not None:
        return taker(handle)
    return handle.open()


def dumps_shared(obj: Any, pool: SegmentPool, threshold: int) -> tuple[bytes, list[Lease]]:
    """On the host: pickle ``obj`` (a task), its arrays sent as :func:`~mepa._shm.encode_args` does.

    Returns
    -------
    payload, leases
        The bytes for the worker (:func:`loads_shared`), and the leases to release when the
        task is done.
    """
    from ._shm import argument_sharer

    leases: list[Lease] = []
    buffer = io.BytesIO()
    try:
        _SharingPickler(buffer, argument_sharer(pool, threshold, leases)).dump(obj)
    except BaseException:
        for lease in leases:
            lease.release()
        raise
    return buffer.getvalue(), leases


def loads_shared(payload: bytes) -> Any:
    """In the worker: unpickle a task; its shared arrays become views of their segments."""
    return pickle.loads(payload)


def dumps_result(obj: Any, prefix: str, threshold: int, slot: SegmentRef | None = None) -> bytes:
    """In the worker: pickle a result, its large arrays placed as
    :func:`~mepa._shm.encode_result` does (the result slot, else new segments)."""
    created: list[str] = []
    place: Callable[[Any], SharedArray | None] | None = None

    def share(array: Any) -> SharedArray | None:
        nonlocal place
        if place is None:
            from ._shm import result_placer

            place = result_placer(prefix, threshold, slot, created)
        return place(array)

    buffer = io.BytesIO()
    try:
        _SharingPickler(buffer, share).dump(obj)
    except BaseException:
        if created:
            from ._segments import unlink

            for name in created:
                unlink(name)
        raise
    return buffer.getvalue()


def loads_result(payload: bytes, slot: Lease | OutputBuffer | None = None) -> Any:
    """On the host: unpickle a result of :func:`dumps_result`, taking its segments over.

    Arrays in worker segments own their mapping (the name is unlinked at once); arrays in the
    result ``slot`` are views of the pool's segment, as :func:`~mepa._shm.decode_result` does.
    """
    from ._shm import ResultTaker

    taker = ResultTaker(slot)
    _decoding.taker = taker
    try:
        return pickle.loads(payload)
    finally:
        _decoding.taker = None
        taker.done()


class SharedResult:
    """A task's result pickled by :func:`dumps_result`: opaque bytes for the engine.

    ``held`` says that an array of the worker still uses the result slot it was offered
    (the user's code kept it), ``kept`` names the input segments the task's code still holds
    views of: the host must not hand those segments out again.
    """

    __slots__ = ("held", "kept", "payload")

    def __init__(self, payload: bytes, held: bool = False, kept: tuple[str, ...] = ()) -> None:
        self.payload = payload
        self.held = held
        self.kept = kept

    def __reduce__(self) -> tuple[Any, ...]:
        return (SharedResult, (self.payload, self.held, self.kept))


# -- results allocated in place ------------------------------------------------------------------
#
# A distributed chunk's result is copied into its region of the shared output buffer. With
# ``mepa._inplace`` built, the worker instead lets NumPy allocate the first array of exactly
# the region's size *in* the region while the task runs (a NEP 49 memory handler); when the
# task returns that array, there is nothing to copy. Safety rests on one check: after the
# worker drops its own references, is the region free again? If an array of the user's code
# still holds it, the host gets a copy and never hands that segment out again.

#: Attribute of the exception of a task that left its result region in use (see SharedResult).
REGION_HELD = "_mepa_region_held"


#: Attribute of the exception of a task whose code kept views of its inputs (see SharedResult).
INPUTS_KEPT = "_mepa_inputs_kept"


def run_payload(
    payload: bytes, prefix: str, threshold: int, slot: SegmentRef | None = None
) -> SharedResult:
    """The loky task for a payload of :func:`dumps_shared` holding ``(fn, args, kwargs)``.

    ``slot`` is where the host wants the result's (first) big array: a region of a shared
    output buffer. The result says which input segments the task's code kept
    (:func:`~mepa._segments.kept_inputs`), so that the host never hands them out again.
    """
    try:
        outcome = _run_payload(payload, prefix, threshold, slot)
    except BaseException as exc:
        kept = _kept_inputs(exc)
        if kept:
            exc.__dict__[INPUTS_KEPT] = kept
        raise
    else:
        outcome.kept = _kept_inputs(None)
        return outcome
    finally:
        shm = sys.modules.get("mepa._segments")
        if shm is not None:  # arrays were mapped: keep the worker's mapping cache bounded
            shm.trim_attached(shm.WORKER_CACHE_BYTES)


def _kept_inputs(exc: BaseException | None) -> tuple[str, ...]:
    """Input segments still in use now that the task is over (its frames cleared)."""
    shm = sys.modules.get("mepa._segments")
    if shm is None:  # no array was mapped
        return ()
    if exc is not None:  # the traceback's frames hold the task's locals: they are not kept
        traceback.clear_frames(exc.__traceback__)
    kept: tuple[str, ...] = shm.kept_inputs()
    return kept


def _run_payload(
    payload: bytes, prefix: str, threshold: int, slot: SegmentRef | None
) -> SharedResult:
    fn, args, kwargs = loads_shared(payload)
    region = _result_region(slot)
    if region is None:
        result = fn(*args, **kwargs)
        del fn, args, kwargs
        return SharedResult(dumps_result(result, prefix, threshold, slot))
    assert slot is not None
    prepare = getattr(fn, "prepare", None)
    if prepare is not None:  # take the chunks first: they must not get the region
        fn, args, kwargs = prepare(args, kwargs)
    region.enter()
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        region.exit()
        del fn, args, kwargs
        if region.taken:  # possibly by an array of the traceback's frames: play safe
            exc.__dict__[REGION_HELD] = True
        raise
    region.exit()
    del fn, args, kwargs
    if not region.taken:  # the result was made elsewhere: copy it into the slot
        return SharedResult(dumps_result(result, prefix, threshold, slot))
    box = [result]
    del result
    return _settle(box, region, slot, prefix, threshold)


def _result_region(slot: SegmentRef | None) -> Any:
    """A region handler over ``slot`` (see :mod:`mepa._regions`), or ``None``."""
    if slot is None or slot.size == 0:  # an empty chunk's region: nothing to allocate there
        return None
    from ._regions import region_over
    from ._segments import open_region

    return region_over(open_region(slot))


def _settle(
    box: list[Any], region: Any, slot: SegmentRef, prefix: str, threshold: int
) -> SharedResult:
    """Pickle the result in ``box`` (taken out of it) of a task whose region is in use."""
    from ._regions import occupies
    from ._segments import SharedArray, open_region

    result = box.pop()
    field = getattr(type(result), "result_field", None)  # a wrapper, such as the row placer's
    array = result if field is None else getattr(result, field)
    if not occupies(array, region):
        del array
        payload = dumps_result(result, prefix, threshold, None)  # the region is not ours
        del result
        return SharedResult(payload, held=region.taken)
    shape, dtype, strides = array.shape, array.dtype, array.strides
    del array
    if field is None:
        result = None
    else:
        setattr(result, field, None)
    if not region.taken:
        # Nothing else held the array: the region's bytes are the result, and no one's else.
        stand_in: Any = _InPlace(SharedArray(slot.name, slot.offset, shape, dtype, strides))
        held = False
    else:
        # The user's code kept the array: the host gets a copy (pickled into a segment of
        # its own), the region stays with the array.
        stand_in = open_region(slot).view(dtype).reshape(shape)
        held = True
    if field is None:
        result = stand_in
    else:
        setattr(result, field, stand_in)
    del stand_in
    return SharedResult(dumps_result(result, prefix, threshold, None), held)


class _InPlace:
    """Pickles as the array at ``handle``: a result already in its slot."""

    __slots__ = ("handle",)

    def __init__(self, handle: SharedArray) -> None:
        self.handle = handle

    def __reduce__(self) -> tuple[Any, ...]:
        h = self.handle
        return (_rebuild_array, (h.name, h.offset, h.shape, h.dtype, h.strides, True, h.kind))




def run_sent_back(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Worker side of a task whose outcome is pickled back to the host: ``fn(*args, **kwargs)``.

    An exception that cannot make the trip (unpicklable state, or an ``__init__`` that its
    pickle cannot call again) is replaced by a :class:`~mepa.SerializationError` naming it,
    so that the host gets the task's error instead of losing the worker or the pool.
    """
    try:
        return fn(*args, **kwargs)
    except BaseException as exc:
        error = sendable_exception(exc)
        if error is exc:
            raise
        # The original's traceback goes as text: chained as itself, it would have to be
        # pickled too (tblib, which Dask uses, pickles causes and contexts).
        error.__cause__ = SentTraceback("".join(traceback.format_exception(exc)))
        error.__suppress_context__ = True
    raise error  # outside the handler: no context to pickle either


class SentTraceback(Exception):
    """The text of a worker's traceback, attached as ``__cause__`` of the error it led to."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0]) if self.args else ""


def sendable_exception(exc: BaseException) -> BaseException:
    """``exc`` if a pickle of it can be loaded again, else a SerializationError describing it.

    mepa's own marks on ``exc`` (the events it fired, a held result region, a map's partial
    results) move to the replacement.
    """
    try:
        pickle.loads(cloudpickle.dumps(exc))
    except Exception as why:  # noqa: BLE001 - any failure means the host could not get it
        reason = why
    else:
        return exc
    from ._errors import SerializationError

    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - even str() of it fails: say so
        message = "<str() of the exception failed>"
    error = SerializationError(
        f"the task raised {kind}: {message}; the exception cannot be sent to the host "
        f"({type(reason).__name__}: {reason}). Make the exception picklable: pass every "
        "argument of its __init__ to super().__init__ (or define __reduce__), and keep "
        "locks, files and sockets out of its attributes"
    )
    marks = {k: v for k, v in exc.__dict__.items() if k.startswith(("__mepa", "_mepa"))}
    error.__dict__.update(marks)
    try:
        pickle.loads(cloudpickle.dumps(error))
    except Exception:  # noqa: BLE001 - a mark itself cannot travel: send the error alone
        for key in marks:
            del error.__dict__[key]
    return error
