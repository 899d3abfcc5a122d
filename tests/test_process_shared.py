"""Big arrays and the process executor: shared memory in, shared memory out, no copies lost."""

from __future__ import annotations

import concurrent.futures
import mmap

import numpy as np
import pytest

import mepa

pytestmark = pytest.mark.timeout(120)

BIG = 600_000  # 4.8 MB of float64: above the 1 MiB threshold


@pytest.fixture
def executor():
    with mepa.ProcessExecutor(2) as ex:
        yield ex


def base_chain(array):
    kinds = []
    while array is not None:
        kinds.append(type(array).__name__)
        array = array.obj if isinstance(array, memoryview) else getattr(array, "base", None)
    return kinds


def describe_input(chunk):
    return {"owndata": bool(chunk.flags.owndata), "bases": base_chain(chunk), "sum": chunk.sum()}


def trig(chunk):
    return np.sin(chunk) ** 2 + np.cos(chunk)


def as_float32(chunk):
    return chunk.astype(np.float32)


def mean_only(chunk):
    return np.array([chunk.mean()])


def test_big_chunks_arrive_as_views_of_shared_memory(executor):
    data = np.arange(BIG, dtype=np.float64)
    alloc = executor.arrange(data)
    info = executor.distribute_and_gather(describe_input, alloc)
    for i, item in enumerate(info):
        assert not item["owndata"]
        assert "mmap" in item["bases"], item["bases"]
        assert item["sum"] == alloc[i].sum()


def test_small_arrays_are_pickled(executor):
    data = np.arange(100, dtype=np.float64)
    info = executor.submit_and_gather(describe_input, data)
    assert "mmap" not in info["bases"]


@pytest.mark.parametrize("shuffle", [False, True, np.random.default_rng(3).permutation(BIG)])
def test_big_pipeline_is_exact(executor, shuffle):
    data = np.linspace(0, 50, BIG)
    alloc = executor.arrange(data, shuffle=shuffle)
    result = alloc.reassemble(executor.gather(executor.distribute(trig, alloc)))
    np.testing.assert_array_equal(result, trig(data))


def test_unshuffled_results_come_back_without_a_copy(executor):
    data = np.linspace(0, 50, BIG)
    alloc = executor.arrange(data)
    results = executor.gather(executor.distribute(trig, alloc))
    assert "mmap" in base_chain(results[0])
    result = alloc.reassemble(results)
    assert np.shares_memory(result, results[0])
    assert np.shares_memory(result, results[1])
    np.testing.assert_array_equal(result, trig(data))


@pytest.fixture
def no_host_scatter(monkeypatch):
    """Make writing rows back into place fail in this (the host) process; workers are not
    affected, so a reassemble that still succeeds did not scatter on the host."""

    def refuse(self, dest, values):
        raise AssertionError("the host scattered rows that the workers should have placed")

    monkeypatch.setattr(mepa.ChunkSelection, "put", refuse)


def test_shuffled_rows_are_put_back_in_place_by_the_workers(executor, no_host_scatter):
    data = np.linspace(0, 50, BIG)
    alloc = executor.arrange(data, shuffle=7)
    results = executor.gather(executor.distribute(trig, alloc))
    for i, piece in enumerate(results):
        assert not piece.flags.writeable  # the ordered copy cannot go stale
        np.testing.assert_array_equal(piece, trig(alloc[i]))
    result = alloc.reassemble(results)
    assert "mmap" in base_chain(result)
    assert result.flags.writeable
    np.testing.assert_array_equal(result, trig(data))


def test_the_ordered_copy_is_handed_out_once(executor):
    data = np.linspace(0, 50, BIG)
    alloc = executor.arrange(data, shuffle=True)
    results = executor.gather(executor.distribute(trig, alloc))
    first = alloc.reassemble(results)
    second = alloc.reassemble(results)  # scattered on the host, into a new array
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, trig(data))
    np.testing.assert_array_equal(second, trig(data))


def test_changed_results_are_scattered_on_the_host(executor):
    data = np.linspace(0, 50, BIG)
    alloc = executor.arrange(data, shuffle=True)
    results = executor.gather(executor.distribute(trig, alloc))
    with pytest.raises(ValueError, match="WRITEABLE"):
        results[1].flags.writeable = True  # views of a read-only buffer: never editable
    results = [piece.copy() for piece in results]
    results[1][:10] = -1.0
    expected = trig(data)
    expected[alloc.indices(1)[:10]] = -1.0
    np.testing.assert_array_equal(alloc.reassemble(results), expected)


def test_results_reassembled_by_another_allocation_use_its_order(executor):
    data = np.linspace(0, 50, BIG)
    alloc = executor.arrange(data, shuffle=1)
    other = executor.arrange(data, shuffle=2)
    results = executor.gather(executor.distribute(trig, alloc))
    expected = np.empty_like(data)
    for i, piece in enumerate(results):
        expected[other.indices(i)] = piece
    np.testing.assert_array_equal(other.reassemble(results), expected)
    np.testing.assert_array_equal(alloc.reassemble(results), trig(data))


def test_structured_shuffled_results_are_scattered_on_the_host(executor):
    data = np.linspace(0, 50, BIG)
    alloc = executor.arrange(data, shuffle=True)
    results = executor.gather(executor.distribute(lambda c: {"y": trig(c), "x": c}, alloc))
    assert all(piece["y"].flags.writeable for piece in results)  # nothing was placed
    out = alloc.reassemble(results)
    np.testing.assert_array_equal(out["y"], trig(data))
    np.testing.assert_array_equal(out["x"], data)


def test_results_of_another_shape_or_dtype(executor):
    data = np.linspace(0, 1, BIG)
    alloc = executor.arrange(data, shuffle=True)
    halves = alloc.reassemble(executor.gather(executor.distribute(as_float32, alloc)))
    assert halves.dtype == np.float32
    np.testing.assert_array_equal(halves, data.astype(np.float32))
    means = alloc.reassemble(
        executor.gather(executor.distribute(mean_only, alloc)), reverse_shuffle=False
    )
    assert means.shape == (2,)


def test_arrange_many_big(executor):
    a = np.arange(BIG, dtype=np.float64)
    b = np.ones(BIG)
    alloc = executor.arrange_many(a, b, shuffle=True)
    result = alloc.reassemble(executor.gather(executor.distribute(lambda p: p[0] + p[1], alloc)))
    np.testing.assert_array_equal(result, a + 1)


def test_scatter_then_many_tasks_share_one_copy(executor):
    data = np.arange(BIG, dtype=np.float64)
    shared = executor.scatter(data)
    assert isinstance(shared, np.ndarray)
    np.testing.assert_array_equal(shared, data)
    infos = executor.gather([executor.submit(describe_input, shared) for _ in range(4)])
    assert all("mmap" in item["bases"] for item in infos)
    assert {item["sum"] for item in infos} == {data.sum()}


def test_shared_array_written_in_place_by_distribute(executor):
    out = executor.create_shared_array((BIG,), np.float64)
    alloc = executor.arrange(np.arange(BIG, dtype=np.float64))

    def fill(chunk, target):
        target[int(chunk[0]) : int(chunk[-1]) + 1] = chunk * 2

    executor.gather(executor.distribute(fill, alloc, out))
    np.testing.assert_array_equal(out, np.arange(BIG) * 2.0)


def test_segments_are_reused_between_calls(executor):
    data = np.linspace(0, 1, BIG)
    alloc = executor.arrange(data)
    for _ in range(3):
        del _
        result = alloc.reassemble(executor.gather(executor.distribute(trig, alloc)))
        del result
    pool = executor._shared._segments
    assert pool is not None
    # source + output, and one spare output while the previous result was alive
    assert pool.segments_created <= 4


def test_big_result_from_plain_submit(executor):
    result = executor.submit_and_gather(np.ones, BIG)
    assert result.shape == (BIG,)
    assert result.sum() == BIG


def test_threshold_none_pickles_everything():
    with mepa.ProcessExecutor(2, shared_memory_threshold=None) as ex:
        data = np.arange(BIG, dtype=np.float64)
        info = ex.distribute_and_gather(describe_input, ex.arrange(data))
        assert all("mmap" not in item["bases"] for item in info)


def test_bad_threshold():
    with pytest.raises(ValueError, match="shared_memory_threshold must be"):
        mepa.ProcessExecutor(2, shared_memory_threshold=-1)


def test_mmap_module_is_what_backs_views():
    # guards the assertion style above: a view of an mmap names it in its base chain
    m = mmap.mmap(-1, 64)
    view = np.frombuffer(m, np.uint8)
    assert "mmap" in base_chain(view)
    del view
    m.close()


def test_results_are_the_same_without_a_kept_worker_heap():
    data = np.linspace(0, 1, BIG)
    with mepa.ProcessExecutor(2, keep_worker_heap=False) as ex:
        alloc = ex.arrange(data, shuffle=3)
        np.testing.assert_array_equal(
            alloc.reassemble(ex.gather(ex.distribute(trig, alloc))), trig(data)
        )


def test_keep_worker_heap_must_be_a_bool():
    with pytest.raises(TypeError, match="keep_worker_heap must be True or False"):
        mepa.ProcessExecutor(2, keep_worker_heap="yes")


class _DieWhilePickled:
    """Kills its worker when the result holding it is being pickled (after the big array)."""

    def __reduce__(self):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
        return (int, ())


def big_result_then_die(_=None):
    return (np.ones(BIG), _DieWhilePickled())


def die_on_second_chunk(chunk):
    if chunk[0] != 0:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    return chunk * 2


def worker_segments(executor):
    from mepa._segments import list_segments

    return [name for name in list_segments(executor._shared.pool().prefix) if "-w" in name]


def test_worker_killed_while_sending_a_big_result_leaves_no_segment(executor):
    # The array went into a segment the worker created before it died: the host removes it
    # when it reports the crash, not only when the executor shuts down.
    with pytest.raises(mepa.WorkerCrashedError):
        executor.submit_and_gather(big_result_then_die)
    assert worker_segments(executor) == []
    assert executor.submit_and_gather(int, 7) == 7


def test_worker_killed_during_a_shared_distribute_then_the_next_one_works(executor):
    alloc = executor.arrange(np.arange(BIG, dtype=np.float64))
    with pytest.raises(mepa.WorkerCrashedError) as info:
        executor.gather(executor.distribute(die_on_second_chunk, alloc), timeout=60)
    assert info.value.chunk in (0, 1)
    result = alloc.reassemble(executor.gather(executor.distribute(trig, alloc), timeout=60))
    np.testing.assert_array_equal(result, trig(np.arange(BIG, dtype=np.float64)))


def die_without_row_zero(chunk):
    if 0.0 not in chunk:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    return chunk * 2


def test_worker_killed_during_a_shuffled_distribute_returns_every_segment(executor):
    import gc

    data = np.arange(BIG, dtype=np.float64)
    alloc = executor.arrange(data, shuffle=True)
    futures = executor.distribute(die_without_row_zero, alloc)
    with pytest.raises(mepa.WorkerCrashedError):
        executor.gather(futures, timeout=60)
    # gather raises at the first failure; the other chunk settles (finished, or lost with the
    # broken pool) a moment later, and only then are its segments free
    done, not_done = concurrent.futures.wait(futures, timeout=60)
    assert not not_done
    del futures, done
    gc.collect()
    pool = executor._shared._segments
    created = pool.segments_created
    for _ in range(3):
        result = alloc.reassemble(executor.gather(executor.distribute(trig, alloc), timeout=60))
        np.testing.assert_array_equal(result, trig(data))
        del result
        gc.collect()
    # source, chunk-ordered output and ordered copy of the crashed call came back to the pool
    # and serve the calls after it
    assert pool.segments_created == created
