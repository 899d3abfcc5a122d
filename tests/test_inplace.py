"""Results allocated in their output region (``mepa._inplace``), and when that is not safe."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

import mepa

inplace = pytest.importorskip("mepa._inplace", reason="the C extension is not built here")

pytestmark = pytest.mark.timeout(120)

N = 400_000  # 3.2 MB of float64 per array: above the shared-memory threshold


def handler_name(*array):
    return np._core.multiarray.get_handler_name(*array)


@pytest.fixture
def region_memory():
    """Memory for regions (in this process, any writable buffer will do)."""
    return np.frombuffer(mmap.mmap(-1, 1 << 20), np.uint8)


def address(array):
    return array.__array_interface__["data"][0]


# -- the handler itself, in this process ------------------------------------------------------


def test_the_first_array_of_the_regions_size_gets_it(region_memory):
    view = region_memory[4096 : 4096 + 800]
    region = inplace.Region(view)
    del view
    x = np.linspace(0, 1, 100)
    region.enter()
    try:
        assert handler_name() == "mepa_result_region"
        smaller = np.ones(99)
        first = np.sin(x)
        second = np.cos(x)
    finally:
        region.exit()
    assert address(first) == region.address == address(region_memory) + 4096
    assert address(smaller) != region.address
    assert address(second) != region.address
    assert region.taken
    np.testing.assert_array_equal(region_memory[4096 : 4096 + 800].view(np.float64), first)
    assert handler_name() == "default_allocator"  # put back
    del first
    assert not region.taken
    assert address(np.sin(x)) != region.address  # after exit, never again
    del smaller, second  # freed through the handler they were made with


def test_a_freed_region_is_handed_out_again_while_entered(region_memory):
    region = inplace.Region(region_memory[:800])
    region.enter()
    try:
        a = np.ones(100)
        held = address(a)
        del a
        assert not region.taken
        b = np.full(100, 7.0)
    finally:
        region.exit()
    assert address(b) == held == region.address
    assert (b == 7).all()


def test_zeros_in_the_region_are_zeros(region_memory):
    region_memory[:800] = 255
    region = inplace.Region(region_memory[:800])
    region.enter()
    try:
        z = np.zeros(100)
    finally:
        region.exit()
    assert address(z) == region.address
    assert (z == 0).all()


def test_an_array_that_grows_moves_out_of_the_region(region_memory):
    region = inplace.Region(region_memory[:800])
    region.enter()
    try:
        a = np.arange(100.0)
    finally:
        region.exit()
    assert address(a) == region.address
    a.resize(300, refcheck=False)  # a reallocation: the region cannot grow
    assert address(a) != region.address
    assert not region.taken
    np.testing.assert_array_equal(a[:100], np.arange(100.0))


def test_a_region_collected_while_entered_puts_the_handler_back(region_memory):
    region = inplace.Region(region_memory[:800])
    region.enter()
    del region
    assert handler_name() == "default_allocator"


def test_region_needs_a_writable_buffer():
    with pytest.raises(BufferError, match="not writable"):
        inplace.Region(b"read-only bytes")
    with pytest.raises(ValueError, match="at least one byte"):
        inplace.Region(bytearray())


# -- in process workers ------------------------------------------------------------------------

_KEPT: list[np.ndarray] = []


def trig(chunk):
    return np.sin(chunk) ** 2 + np.cos(chunk)


def trig_kept(chunk):
    """The result, also kept by the worker (as a cache would)."""
    y = trig(chunk)
    _KEPT.append(y)
    return y


def temporary_kept(chunk):
    """Keeps a temporary of the chunk's size (it gets the region); returns another array."""
    _KEPT.append(np.sin(chunk))
    return chunk * 2


def reversed_view(chunk):
    y = trig(chunk)
    return y[::-1]


def as_objects(chunk):
    """An array of Python objects of the chunk's byte size (it gets the region)."""
    out = np.empty(len(chunk), dtype=object)
    out[:] = [round(float(v), 3) for v in chunk]
    return out


def trig_with_a_forked_child(chunk):
    """A child forked during the task makes an array of the chunk's size after the parent's."""
    import os
    import time

    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            time.sleep(0.3)
            np.full(len(chunk), -1.0)
        finally:
            os._exit(0)
    y = trig(chunk)
    os.waitpid(pid, 0)
    return y


def kept_then_raise(chunk):
    _KEPT.append(np.sin(chunk))
    raise ValueError("failed on purpose")


def kept_checksums():
    return [float(a.sum()) for a in _KEPT]


def scale_kept(factor):
    for array in _KEPT:
        array *= factor


def drop_kept():
    _KEPT.clear()


def count_copies():
    """Count, in this worker, the copies of results into their slots."""
    from mepa import _shm

    real = _shm._copy_into
    if getattr(real, "counts", None) is None:

        def counting(*args, **kwargs):
            counting.counts.append(1)
            return real(*args, **kwargs)

        counting.counts = []
        counting.real = real
        _shm._copy_into = counting
    _shm._copy_into.counts.clear()


def copies_counted():
    from mepa import _shm

    counting = _shm._copy_into
    _shm._copy_into = counting.real
    return len(counting.counts)


def distribute_more(ex, n, shuffle=False):
    """Three more distributes of ``n`` rows, correct each: they reuse pooled output buffers."""
    for k in range(3):
        other = np.linspace(10, 20 + k, n)
        alloc = ex.arrange(other, shuffle=shuffle)
        np.testing.assert_array_equal(
            alloc.reassemble(ex.gather(ex.distribute(trig, alloc))), trig(other)
        )


@pytest.fixture
def one_worker():
    """One worker, so that every task of a test runs in the same process."""
    with mepa.ProcessExecutor(1) as ex:
        ex.submit_and_gather(drop_kept)
        try:
            yield ex
        finally:
            ex.submit_and_gather(drop_kept)


@pytest.mark.parametrize("shuffle", [False, 5])
def test_a_result_made_in_its_region_is_not_copied(one_worker, shuffle):
    data = np.linspace(0, 3, N)
    one_worker.submit_and_gather(count_copies)
    alloc = one_worker.arrange(data, shuffle=shuffle)
    result = alloc.reassemble(one_worker.gather(one_worker.distribute(trig, alloc)))
    assert one_worker.submit_and_gather(copies_counted) == 0
    np.testing.assert_array_equal(result, trig(data))


@pytest.mark.parametrize("shuffle", [False, 5])
def test_without_the_region_the_result_is_copied(one_worker, shuffle):
    # the same count, with the region out of the task's reach: the test above can fail
    data = np.linspace(0, 3, N)
    one_worker.submit_and_gather(count_copies)
    alloc = one_worker.arrange(data, shuffle=shuffle)
    result = alloc.reassemble(
        one_worker.gather(one_worker.distribute(no_region_then(trig), alloc))
    )
    assert one_worker.submit_and_gather(copies_counted) == 1
    np.testing.assert_array_equal(result, trig(data))


class no_region_then:
    """Calls ``fn`` in a fresh context, where NumPy's memory handler is its default one."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, chunk):
        import contextvars

        return contextvars.Context().run(self.fn, chunk)


@pytest.mark.parametrize("shuffle", [False, 5])
def test_a_result_the_worker_keeps_comes_back_as_a_copy(one_worker, shuffle):
    data = np.linspace(0, 3, N)
    alloc = one_worker.arrange(data, shuffle=shuffle)
    first = alloc.reassemble(one_worker.gather(one_worker.distribute(trig_kept, alloc)))
    expected = trig(data)
    np.testing.assert_array_equal(first, expected)
    one_worker.submit_and_gather(scale_kept, 2.0)  # the worker changes the array it kept
    np.testing.assert_array_equal(first, expected)  # which is not the host's result
    kept = one_worker.submit_and_gather(kept_checksums)
    del first, alloc
    # More calls reuse pooled segments; none may be the one the kept array lives in.
    distribute_more(one_worker, N, shuffle)
    assert one_worker.submit_and_gather(kept_checksums) == kept


def test_a_temporary_the_worker_keeps_is_not_overwritten(one_worker):
    data = np.linspace(0, 3, N)
    alloc = one_worker.arrange(data)
    result = alloc.reassemble(one_worker.gather(one_worker.distribute(temporary_kept, alloc)))
    np.testing.assert_array_equal(result, data * 2)
    assert one_worker.submit_and_gather(kept_checksums) == [float(np.sin(data).sum())]
    distribute_more(one_worker, N)
    assert one_worker.submit_and_gather(kept_checksums) == [float(np.sin(data).sum())]


def test_a_task_that_raises_after_keeping_a_region_array(one_worker):
    data = np.linspace(0, 3, N)
    alloc = one_worker.arrange(data)
    with pytest.raises(ValueError, match="failed on purpose"):
        one_worker.gather(one_worker.distribute(kept_then_raise, alloc))
    distribute_more(one_worker, N)
    assert one_worker.submit_and_gather(kept_checksums) == [float(np.sin(data).sum())]


def test_a_child_forked_by_the_task_never_gets_the_region(one_worker):
    data = np.linspace(0, 3, N)
    alloc = one_worker.arrange(data)
    futures = one_worker.distribute(trig_with_a_forked_child, alloc)
    np.testing.assert_array_equal(alloc.reassemble(one_worker.gather(futures)), trig(data))


def test_a_view_of_the_region_array_is_returned_correctly(one_worker):
    data = np.linspace(0, 3, N)
    alloc = one_worker.arrange(data)
    result = alloc.reassemble(one_worker.gather(one_worker.distribute(reversed_view, alloc)))
    np.testing.assert_array_equal(result, trig(data)[::-1])


def test_two_workers_results_are_one_buffer():
    data = np.linspace(0, 3, 2 * N)
    with mepa.ProcessExecutor(2) as ex:
        alloc = ex.arrange(data)
        results = ex.gather(ex.distribute(trig, alloc))
        out = alloc.reassemble(results)
    assert np.shares_memory(out, results[0])
    assert np.shares_memory(out, results[1])
    np.testing.assert_array_equal(out, trig(data))


def test_a_worker_with_an_empty_chunk():
    data = np.linspace(0, 3, N).reshape(1, N)  # one row of 3.2 MB for two workers
    with mepa.ProcessExecutor(2) as ex:
        alloc = ex.arrange(data)
        assert sorted(alloc.sizes) == [0, 1]
        results = ex.gather(ex.distribute(trig, alloc))
        np.testing.assert_array_equal(alloc.reassemble(results), trig(data))


def test_an_array_of_python_objects_in_the_region_is_pickled(one_worker):
    data = np.linspace(0, 3, N)
    alloc = one_worker.arrange(data)
    result = alloc.reassemble(one_worker.gather(one_worker.distribute(as_objects, alloc)))
    assert result.dtype == object
    assert result.tolist() == [round(float(v), 3) for v in data]


# -- in threads ----------------------------------------------------------------------------------


def plus_one(chunk):
    return chunk + 1


@pytest.fixture
def threads():
    _KEPT.clear()
    with mepa.ThreadExecutor(2) as ex:
        yield ex
    _KEPT.clear()


@pytest.fixture
def region_copies(monkeypatch):
    """Count the copies of thread results into their regions."""
    from mepa._executors import _local

    counts = []
    real = _local._copy_to_region

    def counting(result, region):
        out = real(result, region)
        counts.append(out is region)
        return out

    monkeypatch.setattr(_local, "_copy_to_region", counting)
    return counts


def test_thread_results_are_made_in_the_output(threads, region_copies):
    data = np.linspace(0, 3, 2 * N)
    alloc = threads.arrange(data)
    results = threads.gather(threads.distribute(plus_one, alloc))
    out = alloc.reassemble(results)
    assert region_copies == []
    assert np.shares_memory(out, results[0])
    assert np.shares_memory(out, results[1])
    np.testing.assert_array_equal(out, data + 1)


def test_thread_results_made_elsewhere_are_copied(threads, region_copies):
    data = np.linspace(0, 3, 2 * N)
    alloc = threads.arrange(data)
    out = alloc.reassemble(threads.gather(threads.distribute(no_region_then(plus_one), alloc)))
    assert region_copies == [True, True]
    np.testing.assert_array_equal(out, data + 1)


def test_a_temporary_a_thread_keeps_is_not_overwritten(threads):
    data = np.linspace(0, 3, 2 * N)
    alloc = threads.arrange(data)
    out = alloc.reassemble(threads.gather(threads.distribute(temporary_kept, alloc)))
    np.testing.assert_array_equal(out, data * 2)
    sines = sorted(_KEPT, key=lambda a: a[0])
    np.testing.assert_array_equal(np.concatenate(sines), np.sin(data))


def test_a_result_a_thread_keeps_is_not_reused_for_later_results(threads):
    data = np.linspace(0, 3, 2 * N)
    alloc = threads.arrange(data)
    out = alloc.reassemble(threads.gather(threads.distribute(trig_kept, alloc)))
    np.testing.assert_array_equal(out, trig(data))
    kept = [a.copy() for a in _KEPT]
    del out, alloc
    distribute_more(threads, 2 * N)
    for now, before in zip(_KEPT, kept, strict=True):
        np.testing.assert_array_equal(now, before)
