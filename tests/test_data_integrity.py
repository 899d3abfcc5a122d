"""No wrong answers: what a task keeps, masked arrays, identity event keys, edited results.

Each test here failed on mepa before the fix it names: a kept input chunk silently became the
next call's data, masks were dropped, events keyed by identity never reached their callbacks on
processes, and an edit of a shuffled distribute's result was lost by ``reassemble``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import mepa

from .executors import EXECUTOR_KINDS, make_executor

pytestmark = pytest.mark.timeout(120)

BIG = 300_000  # 2.4 MB of float64: above the 1 MiB shared-memory threshold
LOCAL_KINDS = ["linear", "thread", "process"]

# -- a task that keeps its input ---------------------------------------------------------------

KEPT: dict[str, np.ndarray] = {}


def keep_first(chunk: np.ndarray) -> float:
    """Keep the first chunk this worker process ever sees; report its first value."""
    KEPT.setdefault("chunk", chunk)
    return float(KEPT["chunk"][0])


def forget() -> None:
    KEPT.clear()


def scribble_on_kept(chunk: np.ndarray) -> float:
    """Write into the chunk kept by an earlier call, then sum this call's own chunk."""
    kept = KEPT.get("chunk")
    if kept is not None and kept.flags.writeable:
        kept[:] = -1.0
    KEPT.setdefault("chunk", chunk)
    return float(chunk.sum())


@pytest.mark.parametrize("via", ["distribute", "submit"])
def test_process_task_keeping_its_input_never_sees_it_change(via):
    with mepa.ProcessExecutor(1) as executor:
        executor.submit_and_gather(forget)
        first = np.full(BIG, 1.0)

        def run(data):
            if via == "distribute":
                return executor.distribute_and_gather(keep_first, executor.arrange(data))[0]
            return executor.submit_and_gather(keep_first, data)

        assert run(first) == 1.0
        for value in (2.0, 3.0, 4.0):  # the next calls lease segments of the same size
            assert run(np.full(BIG, value)) == 1.0
        executor.submit_and_gather(forget)


def test_process_task_writing_into_a_kept_input_does_not_corrupt_the_next_call():
    with mepa.ProcessExecutor(1) as executor:
        executor.submit_and_gather(forget)
        data = np.full(BIG, 3.0)
        for _ in range(4):
            sums = executor.distribute_and_gather(scribble_on_kept, executor.arrange(data))
            assert sums == [3.0 * BIG]
        executor.submit_and_gather(forget)


def test_process_inputs_not_kept_are_reused():
    """The rule costs nothing when the task keeps nothing: the pooled segment is reused."""
    with mepa.ProcessExecutor(1) as executor:
        data = np.full(BIG, 1.0)
        for _ in range(4):
            assert executor.submit_and_gather(np.sum, data) == BIG
        pool = executor._shared._segments
        assert pool is not None
        assert pool.segments_created == 1


# -- masked arrays -----------------------------------------------------------------------------


def masked(n: int) -> np.ma.MaskedArray:
    data = np.arange(n, dtype=np.float64)
    return np.ma.MaskedArray(data, mask=data % 3 == 0, fill_value=-7.0)


def double(x: np.ndarray) -> np.ndarray:
    return x * 2


@pytest.mark.parametrize("shuffle", [False, True])
def test_arrange_keeps_the_mask_in_chunks_and_reassemble(shuffle):
    data = masked(1000)
    alloc = mepa.arrange(data, [1, 2, 1], shuffle=shuffle)
    assert isinstance(alloc.data, np.ma.MaskedArray)
    for i, chunk in enumerate(alloc):
        assert isinstance(chunk, np.ma.MaskedArray)
        rows = alloc.indices(i)
        np.testing.assert_array_equal(chunk.mask, data.mask[rows])
        np.testing.assert_array_equal(chunk.data, data.data[rows])
    out = alloc.reassemble([c * 2 for c in alloc])
    assert isinstance(out, np.ma.MaskedArray)
    np.testing.assert_array_equal(out.mask, data.mask)
    np.testing.assert_array_equal(out.filled(0), (data * 2).filled(0))
    joined = alloc.reassemble(list(alloc), reverse_shuffle=False)
    assert isinstance(joined, np.ma.MaskedArray)
    assert int(joined.mask.sum()) == int(data.mask.sum())


def test_reassemble_keeps_masks_of_results_of_plain_data():
    alloc = mepa.arrange(np.arange(10.0), 2, shuffle=True)
    results = [np.ma.masked_greater(c, 4) for c in alloc]
    out = alloc.reassemble(results)
    np.testing.assert_array_equal(out.mask, np.arange(10.0) > 4)


@pytest.mark.parametrize("kind", EXECUTOR_KINDS)
@pytest.mark.parametrize("n", [1000, BIG])
@pytest.mark.parametrize("shuffle", [False, True])
def test_masked_arrays_keep_their_mask_on_every_executor(kind, n, shuffle):
    data = masked(n)
    with make_executor(kind, 2) as executor:
        alloc = executor.arrange(data, shuffle=shuffle)
        out = alloc.reassemble(executor.gather(executor.distribute(double, alloc)))
        assert isinstance(out, np.ma.MaskedArray)
        np.testing.assert_array_equal(out.mask, data.mask)
        np.testing.assert_array_equal(out.filled(0), (data * 2).filled(0))
        mapped = mepa.map_array(double, data, executor=executor, shuffle=shuffle)
        assert isinstance(mapped, np.ma.MaskedArray)
        np.testing.assert_array_equal(mapped.mask, data.mask)
        np.testing.assert_array_equal(mapped.filled(0), (data * 2).filled(0))


# -- events keyed by identity ------------------------------------------------------------------


class Key:
    """An event key that compares by identity."""


def fire(ctx: mepa.EventContext, value: int) -> int:
    ctx.fire(value)
    return value


@pytest.mark.parametrize("kind", ["thread", "process", "dask"])
@pytest.mark.parametrize("make_key", [object, Key, lambda: float("nan"), lambda: (1, math.nan)])
def test_events_keyed_by_identity_reach_their_callbacks(kind, make_key):
    received: list[int] = []
    with make_executor(kind, 2) as executor:
        key = make_key()
        ctx = executor.on(key, received.append)
        executor.gather([executor.submit(fire, ctx, i) for i in range(6)])
    assert sorted(received) == list(range(6))


def test_two_identity_keys_stay_two_events():
    first: list[int] = []
    second: list[int] = []
    with mepa.ProcessExecutor(2) as executor:
        a = executor.on(object(), first.append)
        b = executor.on(object(), second.append)
        executor.gather([executor.submit(fire, a, 1), executor.submit(fire, b, 2)])
    assert (first, second) == ([1], [2])


# -- a shuffled process distribute whose result the user edits ---------------------------------


def times_one(chunk: np.ndarray) -> np.ndarray:
    return chunk * 1.0


def test_shuffled_process_results_cannot_be_edited_behind_reassemble():
    data = np.arange(BIG, dtype=np.float64)
    with mepa.ProcessExecutor(2) as executor:
        alloc = executor.arrange(data, shuffle=True)
        results = executor.gather(executor.distribute(times_one, alloc))
        edited = False
        try:
            results[0].flags.writeable = True
            results[0][:] = -5.0
            results[0].flags.writeable = False
            edited = True
        except ValueError:
            pass
        out = alloc.reassemble(results)
    expected = data.copy()
    if edited:
        expected[alloc.indices(0)] = -5.0
    np.testing.assert_array_equal(out, expected)


# -- valid input that was refused ------------------------------------------------------------

TIME_DTYPES = [
    np.dtype("M8[ns]"),
    np.dtype("m8[s]"),
    np.dtype([("when", "M8[ms]"), ("value", "f8")]),
]


def identity(chunk: np.ndarray) -> np.ndarray:
    return chunk


def shift(chunk: np.ndarray) -> np.ndarray:
    return chunk + np.timedelta64(1, "s") if chunk.dtype.kind in "Mm" else chunk


@pytest.mark.parametrize("kind", LOCAL_KINDS)
@pytest.mark.parametrize("dtype", TIME_DTYPES, ids=str)
@pytest.mark.parametrize("shuffle", [False, True])
def test_big_datetime_arrays_distribute(kind, dtype, shuffle):
    n = (2 << 20) // dtype.itemsize  # 2 MiB
    data = np.zeros(n, dtype=dtype)
    if dtype.names:
        data["when"] = np.arange(n).astype("M8[ms]")
        data["value"] = np.arange(n)
    else:
        data[:] = np.arange(n).astype(dtype)
    with make_executor(kind, 2) as executor:
        alloc = executor.arrange(data, shuffle=shuffle)
        out = alloc.reassemble(executor.gather(executor.distribute(shift, alloc)))
    np.testing.assert_array_equal(out, shift(data))


def describe(chunk: np.ndarray) -> tuple[int, str]:
    return len(chunk), str(chunk[0])


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(
    "data",
    [
        np.array([f"row {i}" for i in range(150_000)], dtype=object),
        np.array([f"row {i}" for i in range(150_000)], dtype=np.dtypes.StringDType()),
        np.array([f"row {i}" for i in range(150_000)]),  # fixed-width unicode, 6 MB
    ],
    ids=["object", "StringDType", "unicode"],
)
def test_big_object_and_string_arrays_on_processes(data, shuffle):
    assert data.nbytes >= 1 << 20
    with mepa.ProcessExecutor(2) as executor:
        alloc = executor.arrange(data, shuffle=shuffle)
        out = alloc.reassemble(executor.gather(executor.distribute(identity, alloc)))
        np.testing.assert_array_equal(out, data)
        mapped = mepa.map_array(identity, data, executor=executor, shuffle=shuffle)
        np.testing.assert_array_equal(mapped, data)
        assert executor.submit_and_gather(describe, data) == (len(data), "row 0")


def test_building_an_executor_is_linear_in_its_workers():
    """100,000 workers took 97 s (a quadratic duplicate check); now a fraction of a second.

    Asserted by counting, not timing: the duplicate check compares each name a bounded
    number of times.
    """
    compared = 0

    class Name(str):
        __slots__ = ()

        def __eq__(self, other: object) -> bool:
            nonlocal compared
            compared += 1
            return str.__eq__(self, other)

        __hash__ = str.__hash__

    n = 2000
    workers = [mepa.Worker(Name(f"w-{i}")) for i in range(n)]
    executor = mepa.LinearExecutor.__new__(mepa.LinearExecutor)
    mepa.Executor.__init__(executor, workers)
    assert compared <= 4 * n
    assert mepa.LinearExecutor(100_000).get_n_workers() == 100_000
