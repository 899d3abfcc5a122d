"""The shared-memory transport of the process executor, with real loky workers."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import loky
import numpy as np
import pytest

from mepa._errors import ExecutorShutdownError
from mepa._segments import (
    DEFAULT_THRESHOLD,
    Lease,
    SegmentPool,
    SharedArray,
    _size_class,
    list_segments,
    sweep_stale_segments,
)
from mepa._shm import (
    decode_args,
    decode_result,
    encode_args,
    encode_result,
    run_shared,
    shared_nbytes,
)

from .scripts import run_python

pytestmark = pytest.mark.timeout(90)

BIG = DEFAULT_THRESHOLD // 8 * 2  # float64 elements: 2 MiB
TIMEOUT = 60


@pytest.fixture(scope="module")
def executor() -> Iterator[Any]:
    ex = loky.ProcessPoolExecutor(max_workers=2)
    try:
        yield ex
    finally:
        ex.shutdown(wait=True, kill_workers=True)


@pytest.fixture
def pool() -> Iterator[SegmentPool]:
    p = SegmentPool()
    try:
        yield p
    finally:
        p.close()
        assert list_segments(p.prefix) == []


def call(ex: Any, pool: SegmentPool, fn: Any, *args: Any, slot: int = 0) -> Any:
    """What the executor does for one task: encode, submit, wait, release, decode."""
    encoded, leases = encode_args(args, pool)
    slot_lease = pool.lease(slot) if slot else None
    try:
        future = ex.submit(
            run_shared,
            fn,
            encoded,
            {},
            pool.prefix,
            DEFAULT_THRESHOLD,
            None if slot_lease is None else slot_lease.ref,
        )
        result = future.result(timeout=TIMEOUT)
    except BaseException:
        if slot_lease is not None:
            slot_lease.release()
        raise
    finally:
        for lease in leases:
            lease.release()
    return decode_result(result, pool, slot_lease)


# -- worker functions -------------------------------------------------------------------------


def probe(x: np.ndarray) -> dict[str, Any]:
    """Checksum of ``x`` and proof that it is a view of a mapped segment."""
    from mepa import _segments

    return {
        "sum": float(x.sum()),
        "owndata": bool(x.flags.owndata),
        "in_segment": any(np.shares_memory(x, e.base) for e in _segments._ATTACHED.values()),
        "pid": os.getpid(),
    }


def add_one(x: np.ndarray) -> np.ndarray:
    return x + 1


def fill(out: np.ndarray, value: float) -> None:
    out[...] = value


def copies(*arrays: np.ndarray) -> tuple[list[np.ndarray], list[bool]]:
    return [np.array(a, order="C") for a in arrays], [a.flags.f_contiguous for a in arrays]


def boom(x: np.ndarray) -> None:
    raise ValueError("boom")


def exit_hard(x: np.ndarray) -> None:
    os._exit(1)


def leave_result_then_die(x: np.ndarray, prefix: str) -> None:
    """Die by SIGKILL half-way through sending a big result."""
    encode_result(np.ones(BIG), prefix)
    os.kill(os.getpid(), signal.SIGKILL)


def sleep_then_return(x: np.ndarray, seconds: float) -> np.ndarray:
    time.sleep(seconds)
    return x * 2


# -- host only ----------------------------------------------------------------------------------


def test_small_arrays_and_other_leaves_pass_unchanged(pool: SegmentPool) -> None:
    small = np.arange(10.0)
    objects = np.array([object()] * (BIG // 4), dtype=object)
    tree = {"a": [small, 3, "x"], "b": (objects, None)}
    encoded, leases = encode_args(tree, pool)
    assert leases == []
    assert encoded["a"][0] is small
    assert encoded["b"][0] is objects
    assert list_segments(pool.prefix) == []
    assert decode_args(encoded)["a"][0] is small


def test_share_round_trip_and_pickled_handle_is_small(pool: SegmentPool) -> None:
    import pickle

    x = np.random.default_rng(0).random(BIG)
    handle = pool.share(x)
    assert isinstance(handle, SharedArray)
    assert isinstance(handle.lease, Lease)
    data = pickle.dumps(handle)
    assert len(data) < 500
    restored = pickle.loads(data)
    assert restored.lease is None
    np.testing.assert_array_equal(restored.open(), x)
    handle.lease.release()
    handle.lease.release()  # idempotent


def test_size_classes_reuse_a_160mb_segment() -> None:
    size = _size_class(160_000_000)
    assert 160_000_000 <= size <= 1.25 * 160_000_000
    assert _size_class(size) == size


def test_lease_reuses_free_segment_and_caps_free_bytes() -> None:
    with SegmentPool(max_free_bytes=3 * 2**20) as pool:
        first = pool.lease(2**20)
        name = first.name
        first.release()
        again = pool.lease(2**20 - 100)
        assert again.name == name
        assert pool.segments_created == 1
        other = pool.lease(2**20)
        again.release()
        other.release()
        big = pool.lease(4 * 2**20)  # does not fit the cap once released
        big.release()
        assert pool.free_bytes <= 3 * 2**20
        assert len(list_segments(pool.prefix)) == 2


def test_empty_views_are_recognised_and_segment_returns_on_gc(pool: SegmentPool) -> None:
    out = pool.empty((4, BIG // 4))
    view = out[1:3, ::2]
    handle = pool.lookup(view)
    assert handle is not None
    assert handle.lease is not None
    assert handle.offset == view.__array_interface__["data"][0] - out.__array_interface__["data"][0]
    np.testing.assert_array_equal(handle.open(), view)
    handle.lease.release()
    name = handle.name
    del out
    gc.collect()
    assert pool.lease(16).name != name  # the view still holds the segment
    del view
    gc.collect()
    assert pool.lease(BIG * 8).name == name
    assert pool.lookup(np.zeros(BIG)) is None


def test_close_unlinks_leased_segments_and_arrays_stay_readable() -> None:
    pool = SegmentPool()
    out = pool.empty(BIG)
    out[:] = 7
    shared = pool.share(np.ones(BIG))
    assert len(list_segments(pool.prefix)) == 2
    pool.close()
    pool.close()
    assert list_segments(pool.prefix) == []
    assert out.sum() == 7 * BIG
    assert shared.lease is not None
    shared.lease.release()
    with pytest.raises(ExecutorShutdownError):
        pool.lease(10)


def test_sweep_removes_segments_of_dead_hosts() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    name = f"mepa-{int(proc.stdout)}-deadbeef-h0"
    with open(os.path.join("/dev/shm", name), "wb") as f:
        f.write(b"x")
    assert name in sweep_stale_segments()
    assert not os.path.exists(os.path.join("/dev/shm", name))


def test_sweep_removes_segments_a_dead_process_with_this_pid_left() -> None:
    # Pids are reused (pid_max is often 32768): a host killed before it could take its
    # pool's lock, or while closing it, leaves segments without a lock file under a pid that
    # may now be this process's. This process knows its own pools: those are stale.
    name = f"mepa-{os.getpid()}-{os.urandom(4).hex()}-h0"
    with open(os.path.join("/dev/shm", name), "wb") as f:
        f.write(b"x")
    try:
        assert name in sweep_stale_segments()
        assert name not in list_segments()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join("/dev/shm", name))


def test_sweep_keeps_this_processs_own_pools_without_a_lock(pool: SegmentPool) -> None:
    lease = pool.lease(BIG * 8)
    fd, pool._state.lock_fd = pool._state.lock_fd, None  # as if /dev/shm refused the lock
    from mepa._segments import _release_lock

    _release_lock(pool.prefix, fd)
    assert lease.name not in sweep_stale_segments()
    assert lease.name in list_segments(pool.prefix)
    lease.release()


def test_segment_names_cannot_be_predicted(pool: SegmentPool) -> None:
    """Names pre-created by another local user (the next ones of a counter) block nothing."""
    first = pool.lease(BIG * 8)
    guesses = [f"{pool.prefix}-h{i}" for i in range(64)]
    guesses += [f"{pool.prefix}-w{os.getpid()}-{i}" for i in range(64)]
    taken = [name for name in guesses if not os.path.exists(os.path.join("/dev/shm", name))]
    try:
        for name in taken:
            path = os.path.join("/dev/shm", name)
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        leases = [pool.lease(BIG * 8 * k) for k in (2, 3, 4)]  # new segments, not reused
        result = encode_result(np.ones(BIG), pool.prefix)
        names = {first.name, *(lease.name for lease in leases), result.name}
        assert len(names) == 5
        assert not names & set(taken)
        for lease in leases:
            lease.release()
    finally:
        for name in taken:
            os.unlink(os.path.join("/dev/shm", name))
    first.release()
    pool.cleanup_leftovers(force=True)


def test_a_name_collision_is_retried(pool: SegmentPool, monkeypatch: pytest.MonkeyPatch) -> None:
    from mepa import _segments

    lease = pool.lease(10)
    taken = lease.name.rsplit("-h", 1)[1]
    suffixes = iter([taken, taken, "0123456789abcdef"])
    monkeypatch.setattr(_segments, "_random_suffix", lambda: next(suffixes))
    again = pool.lease(BIG * 8)  # two collisions, then a free name
    assert again.name == f"{pool.prefix}-h0123456789abcdef"
    again.release()
    lease.release()


HOST = textwrap.dedent(
    """
    import sys
    from mepa._segments import SegmentPool

    pool = SegmentPool(prefix=sys.argv[1])
    lease = pool.lease(1 << 16)
    print(lease.name, flush=True)
    sys.stdin.read()  # live until the test kills it
    """
)


def test_sweep_keeps_segments_of_a_live_host_in_another_pid_namespace() -> None:
    """A host whose pid means nothing here (another pid namespace sharing /dev/shm) is alive
    as long as it holds its pool's lock; once it is killed, the next sweep reclaims its segments.
    """
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True, text=True, check=True,
    )
    prefix = f"mepa-{int(dead.stdout)}-{os.urandom(4).hex()}"  # a pid that is not alive here
    host = subprocess.Popen(
        [sys.executable, "-c", HOST, prefix], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert host.stdout is not None
        name = host.stdout.readline().strip()
        assert name.startswith(prefix)
        assert name not in sweep_stale_segments()
        assert os.path.exists(os.path.join("/dev/shm", name))
    finally:
        os.kill(host.pid, signal.SIGKILL)
        host.wait(timeout=TIMEOUT)
        if host.stdin is not None:
            host.stdin.close()
        if host.stdout is not None:
            host.stdout.close()
    assert name in sweep_stale_segments()
    assert not os.path.exists(os.path.join("/dev/shm", name))
    assert not [n for n in os.listdir("/dev/shm") if prefix in n]  # its lock file too


# -- with loky workers --------------------------------------------------------------------------


def test_big_input_arrives_intact_as_a_view(executor: Any, pool: SegmentPool) -> None:
    x = np.random.default_rng(1).random(BIG)
    info = call(executor, pool, probe, x)
    assert info["sum"] == pytest.approx(x.sum())
    assert not info["owndata"]
    assert info["in_segment"]


def test_big_result_comes_back_and_its_segment_is_unlinked(
    executor: Any, pool: SegmentPool
) -> None:
    x = np.arange(BIG, dtype=np.float64)
    y = call(executor, pool, add_one, x)
    np.testing.assert_array_equal(y, x + 1)
    assert not y.flags.owndata
    assert list_segments(pool.prefix + "-w") == []  # taken over: name gone, mapping kept
    y[:] = 0  # writeable


def test_result_slot_holds_the_result_until_collected(executor: Any, pool: SegmentPool) -> None:
    x = np.arange(BIG, dtype=np.float64)
    y = call(executor, pool, add_one, x, slot=x.nbytes)
    np.testing.assert_array_equal(y, x + 1)
    assert list_segments(pool.prefix + "-w") == []
    handle = pool.lookup(y)  # a result in a slot can be sent on without a copy
    assert handle is not None
    assert handle.lease is not None
    handle.lease.release()
    created = pool.segments_created
    del y, handle
    gc.collect()
    z = call(executor, pool, add_one, x, slot=x.nbytes)
    np.testing.assert_array_equal(z, x + 1)
    assert pool.segments_created == created  # input and slot segments reused


def test_second_call_reuses_segment_and_worker_sees_new_data(
    executor: Any, pool: SegmentPool
) -> None:
    x = np.random.default_rng(2).random(BIG)
    assert call(executor, pool, probe, x)["sum"] == pytest.approx(x.sum())
    names = list_segments(pool.prefix)
    for _ in range(3):  # both workers, whichever gets the task
        x = np.random.default_rng(3).random(BIG)
        assert call(executor, pool, probe, x)["sum"] == pytest.approx(x.sum())
    assert list_segments(pool.prefix) == names
    assert pool.segments_created == 1


def test_empty_written_in_place_by_two_workers(executor: Any, pool: SegmentPool) -> None:
    out = pool.empty((2, BIG))
    out[:] = -1
    encoded = [encode_args((out[i], float(i + 1)), pool) for i in range(2)]
    futures = [
        executor.submit(run_shared, fill, args, {}, pool.prefix, DEFAULT_THRESHOLD)
        for args, _ in encoded
    ]
    for future in futures:
        assert future.result(timeout=TIMEOUT) is None
    for _, leases in encoded:
        for lease in leases:
            lease.release()
    assert pool.segments_created == 1
    np.testing.assert_array_equal(out[0], 1.0)
    np.testing.assert_array_equal(out[1], 2.0)


def test_views_of_shared_array_are_sent_without_copy(executor: Any, pool: SegmentPool) -> None:
    out = pool.empty((BIG // 2, 4))
    out[:] = 0
    call(executor, pool, fill, out[::-3, 1:3], 5.0)
    call(executor, pool, fill, out[:3, 0], 1.0)  # small views too: in place, not pickled
    expected = np.zeros((BIG // 2, 4))
    expected[::-3, 1:3] = 5.0
    expected[:3, 0] = 1.0
    np.testing.assert_array_equal(out, expected)
    assert pool.segments_created == 1


def test_non_contiguous_arrays_are_copied_correctly(executor: Any, pool: SegmentPool) -> None:
    base = np.random.default_rng(4).random((512, 3 * 512))
    arrays = (base[:, ::3], base.T, base[::-1, 5:], np.asfortranarray(base))
    got, fortran = call(executor, pool, copies, *arrays)
    for g, a in zip(got, arrays, strict=True):
        np.testing.assert_array_equal(g, a)
    assert fortran == [False, True, False, True]  # Fortran order kept, strided -> C order


def test_no_leftovers_when_task_raises(executor: Any, pool: SegmentPool) -> None:
    with pytest.raises(ValueError, match="boom"):
        call(executor, pool, boom, np.ones(BIG), slot=BIG * 8)
    pool.close()
    assert list_segments(pool.prefix) == []


@pytest.mark.parametrize("how", ["os._exit", "sigkill-mid-result", "sigkill-from-host"])
def test_no_leftovers_when_worker_dies(pool: SegmentPool, how: str) -> None:
    ex = loky.ProcessPoolExecutor(max_workers=1)
    try:
        x = np.ones(BIG)
        encoded, leases = encode_args((x,), pool)
        if how == "os._exit":
            future = ex.submit(run_shared, exit_hard, encoded, {}, pool.prefix)
        elif how == "sigkill-mid-result":
            future = ex.submit(
                run_shared, leave_result_then_die, (*encoded, pool.prefix), {}, pool.prefix
            )
        else:
            pid_future = ex.submit(os.getpid)
            pid = pid_future.result(timeout=TIMEOUT)
            future = ex.submit(run_shared, sleep_then_return, (*encoded, 30.0), {}, pool.prefix)
            time.sleep(0.5)
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(loky.process_executor.TerminatedWorkerError):
            future.result(timeout=TIMEOUT)
        for lease in leases:
            lease.release()
        removed = pool.cleanup_leftovers()
        if how == "sigkill-mid-result":
            assert len(removed) == 1
        assert list_segments(pool.prefix + "-w") == []
    finally:
        ex.shutdown(wait=True, kill_workers=True)
    pool.close()
    assert list_segments(pool.prefix) == []


def test_worker_cache_is_trimmed_to_its_budget(pool: SegmentPool) -> None:
    from mepa import _segments

    handle = encode_result(np.arange(BIG, dtype=np.float64), pool.prefix)  # not a pool segment
    assert shared_nbytes(handle) == BIG * 8
    view = handle.open()
    assert handle.name in _segments._ATTACHED
    _segments.trim_attached(budget=BIG * 8)
    assert handle.name in _segments._ATTACHED
    _segments.trim_attached(budget=0)
    assert handle.name not in _segments._ATTACHED
    assert view[-1] == BIG - 1  # still mapped while a view exists
    pool.cleanup_leftovers(force=True)


def test_cleanup_leftovers_keeps_live_workers_segments_unless_forced(pool: SegmentPool) -> None:
    handle = encode_result(np.ones(BIG), pool.prefix)  # "this process" plays a live worker
    assert pool.cleanup_leftovers() == []
    assert pool.cleanup_leftovers(force=True) == [handle.name]


SCRIPT = textwrap.dedent(
    """
    import numpy as np, loky
    from mepa._segments import SegmentPool, list_segments
    from mepa._shm import encode_args, decode_result, run_shared

    def work(x, out):
        out[:] = x
        return x * 2

    if __name__ == "__main__":
        pool = SegmentPool()
        ex = loky.get_reusable_executor(max_workers=2)
        out = pool.empty(2**19)
        for i in range(4):
            args, leases = encode_args((np.full(2**19, i, float), out), pool)
            slot = pool.lease(2**22) if i % 2 else None
            r = ex.submit(run_shared, work, args, {}, pool.prefix, 2**20,
                          slot and slot.ref).result(timeout=60)
            for lease in leases:
                lease.release()
            y = decode_result(r, pool, slot)
            assert (y == 2 * i).all() and (out == i).all()
        ex.shutdown(wait=True)
        del y, out
        pool.close()
        assert list_segments() == [], list_segments()  # this host's: other hosts may run
        print("ok")
    """
)


@pytest.mark.timeout(120)
def test_no_leaked_shared_memory_warnings(tmp_path: Any) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "PYTHONWARNINGS": "default"}
    proc = run_python(SCRIPT, tmp_path, timeout=100, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert "leaked" not in proc.stderr
    assert "resource_tracker" not in proc.stderr
    assert proc.stderr.strip() == ""
