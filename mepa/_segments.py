"""Shared-memory segments: named files in ``/dev/shm``, pooled, and cleaned up.

The storage under the shared-memory transport (:mod:`mepa._shm`,
:class:`~mepa._executors._shared.SharedMemoryTransport`)::

    host                                            worker
    SegmentPool(prefix)                             open_region(ref) / SharedArray.open()
      lease(nbytes) ─► free list of its size class    _attach(name): mmap once, cached
        or _create_unique(<prefix>-h<random>)         (WORKER_CACHE_BYTES, trim_attached)
      Lease.release() ─► back to the free list      kept_inputs(): segments a task's
      retire(name): never handed out again            code still holds after it returned
      close() / finalizer ─► unlink every segment
    sweep_stale_segments(): prefixes whose lock file no host holds

Why plain files in ``/dev/shm`` and not :class:`multiprocessing.shared_memory.SharedMemory`:
on Python < 3.13 every ``SharedMemory`` created *or attached* is registered with the
``multiprocessing`` resource tracker. loky hands its workers the host's tracker (the
``mp_tracker_fd`` of ``loky.backend.spawn``), which keeps a set, not a count, of names: a worker
that unregisters after attaching removes the host's registration, and one that does not leaves
names that the tracker unlinks and reports as "leaked shared_memory" at shutdown. Mapping
``/dev/shm/<name>`` with :mod:`mmap` is what ``shm_open`` does on Linux, involves no tracker
at all, and leaves the lifetime of every segment to this module:

* host segments (``<prefix>-h<random>``) belong to a :class:`SegmentPool`; it unlinks them
  when they are evicted, on :meth:`SegmentPool.close`, at interpreter exit and when the pool is
  collected;
* worker segments (``<prefix>-w<pid>-<random>``) are unlinked by the host as soon as it maps
  them; those a dead worker never delivered are found by name
  (:meth:`SegmentPool.cleanup_leftovers`);
* segments of a host that was killed are found by their prefix, whose lock file
  (``/dev/shm/.<prefix>.lock``) the host no longer holds (:func:`sweep_stale_segments`, run
  when a pool is created).

Names end in 64 random bits, never a counter: a local user who could guess the next names could
pre-create them and make every allocation fail.

Creating a segment costs as much as touching all its pages (about 100 ms for 160 MB, against
16 ms to copy into one already faulted), so segments are pooled: a freed segment goes back to
a free list and the next lease of a similar size reuses it, already populated.

A worker maps a segment once and keeps it in a small cache (:data:`WORKER_CACHE_BYTES`); the
pages it uses are mapped in one ``madvise(MADV_POPULATE_READ)`` call rather than one fault per
page. The cache is bounded because mapped pages count in the worker's resident size, which
loky's leak guard compares between tasks: keeping every segment mapped got workers restarted
("using more than 300 MB more memory") with 500 MB inputs.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import gc
import mmap
import os
import secrets
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from ._errors import ExecutorShutdownError

if TYPE_CHECKING:
    from typing_extensions import Self


__all__ = [
    "DEFAULT_MAX_FREE_BYTES",
    "DEFAULT_THRESHOLD",
    "NAME_PREFIX",
    "SHM_DIR",
    "WORKER_CACHE_BYTES",
    "Lease",
    "SegmentPool",
    "SegmentRef",
    "SharedArray",
    "kept_inputs",
    "list_segments",
    "open_region",
    "sweep_stale_segments",
    "trim_attached",
    "unlink",
]

SHM_DIR = "/dev/shm"
"""Where POSIX shared memory lives on Linux (``shm_open`` names are files here)."""

NAME_PREFIX = "mepa-"
"""Every segment mepa creates is named ``mepa-<host pid>-<random>-...``."""

DEFAULT_THRESHOLD = 1 << 20
"""Arrays of at least this many bytes (1 MiB) travel through shared memory."""

DEFAULT_MAX_FREE_BYTES = 1 << 31
"""Bytes of free segments a pool keeps for reuse (2 GiB) before unlinking the oldest."""

_ALIGN = 64
_PAGE = mmap.PAGESIZE
_MIN_SEGMENT = 1 << 16
_WORKER_SWEEP_DELAY = 1.0
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)

WORKER_CACHE_BYTES = int(os.environ.get("MEPA_SHM_WORKER_CACHE_BYTES", str(128 << 20)))
"""Bytes of segments a worker keeps mapped between tasks (``MEPA_SHM_WORKER_CACHE_BYTES``)."""

Kind = Literal["pool", "result"]
NDArray = npt.NDArray[Any]


# -- segments as files in /dev/shm ---------------------------------------------------------------


def _path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def _create(name: str, size: int) -> mmap.mmap:
    """Create segment ``name`` of ``size`` bytes, allocate its pages and map it.

    ``posix_fallocate`` makes a full ``/dev/shm`` an ``OSError`` here rather than a ``SIGBUS``
    when a page is first written, and populates the pages in one go.
    """
    fd = os.open(_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            os.unlink(_path(name))
            raise _no_space(size, exc) from exc
        try:
            mapping = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(_path(name))
            raise
        _populate(mapping, 0, size)
        return mapping
    finally:
        os.close(fd)


def _random_suffix() -> str:
    """64 random bits in hex: segment names another local user cannot guess."""
    return secrets.token_hex(8)


_NAME_ATTEMPTS = 16


def _create_unique(head: str, size: int) -> tuple[str, mmap.mmap]:
    """Create a segment named ``head`` + a random suffix; its name and its mapping.

    Names are random, not counted, so that nobody can pre-create the next one; a name that
    exists already (a collision, or squatting) is skipped for another.
    """
    for _ in range(_NAME_ATTEMPTS - 1):
        name = f"{head}{_random_suffix()}"
        try:
            return name, _create(name, size)
        except FileExistsError:
            continue
    name = f"{head}{_random_suffix()}"
    return name, _create(name, size)


def _no_space(size: int, exc: OSError) -> OSError:
    if exc.errno not in (errno.ENOSPC, errno.ENOMEM):
        return exc
    stat = os.statvfs(SHM_DIR)
    free = stat.f_bavail * stat.f_frsize
    return OSError(
        exc.errno,
        f"cannot allocate {size} bytes of shared memory in {SHM_DIR} ({free} bytes free); "
        "enlarge it (docker run --shm-size=...) or raise the executor's shared-memory threshold",
    )


def _open(name: str) -> mmap.mmap:
    """Map an existing segment, whole."""
    fd = os.open(_path(name), os.O_RDWR)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def unlink(name: str) -> bool:
    """Unlink segment ``name``; ``False`` if it was already gone."""
    try:
        os.unlink(_path(name))
    except FileNotFoundError:
        return False
    return True


def list_segments(prefix: str | None = None) -> list[str]:
    """Names of the shared-memory segments in ``/dev/shm`` that start with ``prefix``.

    Parameters
    ----------
    prefix
        A pool's :attr:`SegmentPool.prefix`, or ``None`` for every segment created on behalf
        of this process (``mepa-<pid>-``).

    Returns
    -------
    list of str
        Sorted segment names; empty when nothing leaked.
    """
    if prefix is None:
        prefix = f"{NAME_PREFIX}{os.getpid()}-"
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:  # pragma: no cover - Linux always has /dev/shm
        return []
    return sorted(name for name in names if name.startswith(prefix))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - somebody else's process
        return True
    return True


def _parse_pid(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _lock_path(prefix: str) -> str:
    """The file a pool's host holds locked while it lives: ``/dev/shm/.<prefix>.lock``."""
    return os.path.join(SHM_DIR, f".{prefix}.lock")


def _hold_lock(prefix: str) -> int | None:
    """Create and lock the liveness file of pool ``prefix``; the descriptor to keep open.

    The lock lives as long as the descriptor (and any process forked with it), and goes
    when the host dies however it dies. It is taken on a temporary name and renamed into
    place, so a sweep never finds the file unlocked. ``None`` if ``/dev/shm`` refuses.
    """
    path = _lock_path(prefix)
    temporary = f"{path}.{_random_suffix()}"
    try:
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(temporary, path)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        return None
    return fd


def _release_lock(prefix: str, fd: int | None) -> None:
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.unlink(_lock_path(prefix))
    os.close(fd)


@contextlib.contextmanager
def _if_unlocked(path: str) -> Iterator[bool | None]:
    """Lock ``path`` for the block if nobody holds it: ``True``; held: ``False``; gone: None."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    except OSError:  # cannot tell (somebody else's file): take it as held
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


# Prefixes of the pools of this process that are open: a prefix with this process's pid and
# not in here belongs to a dead process whose pid this one reuses.
_OWN_PREFIXES: set[str] = set()


def _may_live(prefix: str) -> bool:
    """Whether the host of a pool without a lock file may still run (by its pid)."""
    pid = int(prefix.split("-")[1])
    if pid == os.getpid():
        return prefix in _OWN_PREFIXES
    return _pid_alive(pid)


def sweep_stale_segments() -> list[str]:
    """Unlink the segments of mepa hosts that no longer run (killed before they could clean up).

    Segment names start with their pool's prefix ``mepa-<host pid>-<random>``, and every pool
    holds a lock on ``/dev/shm/.<prefix>.lock`` for as long as its host lives. A pool whose
    lock is free belongs to a dead host: its segments and lock file are unlinked. The pid in
    the name alone cannot tell: a host in another pid namespace that shares ``/dev/shm`` has a
    pid that means nothing here. Only segments without a lock file (of a host that died while
    closing its pool, or whose ``/dev/shm`` refused the lock) fall back to the pid; with this
    process's own pid (pids are reused), those of no pool of this process are stale. Run when
    a :class:`SegmentPool` is created.

    Returns
    -------
    list of str
        The names unlinked.
    """
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:  # pragma: no cover - Linux always has /dev/shm
        return []
    pools: dict[str, list[str]] = {}
    for name in names:
        parts = name.split("-", 3)
        if name.startswith(NAME_PREFIX) and len(parts) == 4 and parts[1].isdigit():
            pools.setdefault("-".join(parts[:3]), []).append(name)
    removed: list[str] = []
    for prefix, segments in pools.items():
        with _if_unlocked(_lock_path(prefix)) as free:
            if free is False or (free is None and _may_live(prefix)):
                continue
            removed.extend(name for name in segments if unlink(name))
            if free:
                with contextlib.suppress(OSError):
                    os.unlink(_lock_path(prefix))
    for name in names:  # lock files of hosts killed with no segment left
        if name.startswith(f".{NAME_PREFIX}") and ".lock" in name:
            path = os.path.join(SHM_DIR, name)
            with _if_unlocked(path) as free, contextlib.suppress(OSError):
                if free:
                    os.unlink(path)
    return sorted(removed)


def _size_class(nbytes: int) -> int:
    """Round ``nbytes`` up to one of four sizes per power of two (at most 25 % over).

    >>> _size_class(160_000_000) == 5 * 2**25
    True
    """
    nbytes = max(int(nbytes), _MIN_SEGMENT)
    step = 1 << max(nbytes.bit_length() - 3, 0)
    size = -(-nbytes // step) * step
    return -(-size // _PAGE) * _PAGE


def _byte_bounds(array: NDArray) -> tuple[int, int]:
    """First and one-past-last byte address an array touches."""
    low = high = int(array.__array_interface__["data"][0])
    for extent, stride in zip(array.shape, array.strides, strict=True):
        if extent == 0:
            return low, low
        if stride < 0:
            low += (extent - 1) * stride
        else:
            high += (extent - 1) * stride
    return low, high + array.itemsize


def _address(array: NDArray) -> int:
    return int(array.__array_interface__["data"][0])


def _is_candidate(value: object, threshold: int) -> bool:
    """A plain ndarray (or memmap) of at least ``threshold`` bytes without Python objects."""
    return (
        type(value) in (np.ndarray, np.memmap)
        and isinstance(value, np.ndarray)
        and value.nbytes >= threshold
        and value.nbytes > 0
        and not value.dtype.hasobject
    )


# -- handles ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentRef:
    """A picklable reference to a segment, or to ``size`` bytes of it from ``offset``.

    It is the result slot offered to a task: its result arrays go there (copied, or made there
    in the first place, see :mod:`mepa._regions`).
    """

    name: str
    size: int
    offset: int = 0


@dataclass(frozen=True, eq=False)
class SharedArray:
    """A picklable handle to an array that lives in a shared-memory segment.

    Only the description crosses the process boundary; :meth:`open` maps the segment (once per
    process) and returns a view of it. The :attr:`lease` that keeps a host segment from being
    reused is not pickled.

    Parameters
    ----------
    name
        The segment's name in ``/dev/shm``.
    offset
        Byte offset of the first element in the segment.
    shape, dtype, strides
        As for :class:`numpy.ndarray`.
    writeable
        Whether views are writeable.
    kind
        ``"pool"`` for a host pool's segment, ``"result"`` for a segment a worker created for
        a result (the host takes it over in :func:`decode_result`).
    lease
        The host's hold on the segment, released by :meth:`Lease.release`.
    """

    name: str
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    strides: tuple[int, ...]
    writeable: bool = True
    kind: Kind = "pool"
    lease: Lease | None = field(default=None, repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        """Size of the array in bytes."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def open(self) -> NDArray:
        """Return the array as a view of the segment, without copying.

        In the host, a pool's own mapping is used. Elsewhere the segment is mapped once and
        kept in a cache of :data:`WORKER_CACHE_BYTES`; a host pool reuses a segment for new
        data under the same name, so a cached mapping always sees the current data.
        """
        return _open_view(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            SharedArray,
            (
                self.name,
                self.offset,
                self.shape,
                self.dtype,
                self.strides,
                self.writeable,
                self.kind,
            ),
        )


def _view(buffer: Any, handle: SharedArray) -> NDArray:
    array: NDArray = np.ndarray(
        handle.shape, handle.dtype, buffer=buffer, offset=handle.offset, strides=handle.strides
    )
    if not handle.writeable:
        array.flags.writeable = False
    return array


# -- attach cache (every process) --------------------------------------------------------------

# Segments of the host pools of this process, by name: opened through the pool's own mapping.
_LOCAL: dict[str, _Segment] = {}


class _Attached:
    """A segment mapped by this process (a worker), whole."""

    __slots__ = ("base", "mapping")

    def __init__(self, mapping: mmap.mmap) -> None:
        self.mapping = mapping
        self.base: NDArray = np.frombuffer(mapping, np.uint8)


# Segments this process attached, least recently used first.
_ATTACHED: collections.OrderedDict[str, _Attached] = collections.OrderedDict()
_attach_lock = threading.Lock()
_last_sweep = 0.0


def _attach(name: str) -> _Attached:
    """Segment ``name``, mapped once per process while it stays in the cache."""
    with _attach_lock:
        entry = _ATTACHED.get(name)
        if entry is None:
            entry = _Attached(_open(name))
            _ATTACHED[name] = entry
        else:
            _ATTACHED.move_to_end(name)
        return entry


def open_region(ref: SegmentRef) -> NDArray:
    """In a worker: the bytes of ``ref`` as a writeable ``uint8`` view, pages mapped in."""
    entry = _attach(ref.name)
    _populate(entry.mapping, ref.offset, ref.offset + ref.size)
    return entry.base[ref.offset : ref.offset + ref.size]


def _open_view(handle: SharedArray) -> NDArray:
    local = _LOCAL.get(handle.name)
    if local is not None:
        return _view(local.base, handle)
    entry = _attach(handle.name)
    # Each view gets a base array of its own (NumPy keeps it as the base of every view taken
    # from this one), so that :func:`kept_inputs` can tell whether the task's code still holds
    # one (a memo, a module global) once the task is over.
    buffer = np.frombuffer(entry.mapping, np.uint8)
    array = _view(buffer, handle)
    if handle.kind == "pool":
        _note_opened(handle.name, buffer)
    low, high = _byte_bounds(array)
    start = _address(entry.base)
    _populate(entry.mapping, low - start, high - start)
    return array


# Pool segments this worker opened views of, since :func:`kept_inputs` last ran.
_OPENED: list[tuple[str, weakref.ref[NDArray]]] = []
_OPENED_PRUNE = 1024


def _note_opened(name: str, buffer: NDArray) -> None:
    with _attach_lock:
        if len(_OPENED) >= _OPENED_PRUNE:  # nobody asked (not a task of run_payload): prune
            _OPENED[:] = [item for item in _OPENED if item[1]() is not None]
        _OPENED.append((name, weakref.ref(buffer)))


def kept_inputs() -> tuple[str, ...]:
    """In the worker, after a task: the host segments its code still holds a view of.

    A host pool hands a segment out again once the task that used it is done, under the same
    name, and this worker's cached mapping then shows the new data: an input chunk the task
    kept (in a memo, a module global) would silently become the next call's data. The host
    retires the segments named here instead (:meth:`SegmentPool.retire`): they are never
    reused, and the kept arrays stay what they were. This is the rule in-place results follow
    (see :mod:`mepa._payload`), applied to inputs. Call it once the task's arguments, result
    and traceback frames are dropped; it forgets the views it reports on.
    """
    with _attach_lock:
        opened = list(_OPENED)
        _OPENED.clear()
    if not opened:
        return ()
    if any(ref() is not None for _, ref in opened):
        gc.collect()  # views kept only by reference cycles are not kept
    return tuple(sorted({name for name, ref in opened if ref() is not None}))


def _populate(mapping: mmap.mmap, start: int, stop: int) -> None:
    """Map the pages of ``[start, stop)`` now, in one call, instead of one fault per page.

    A fresh mapping faults on every 4 KiB page it touches: 50-90 ms per 80 MB, against
    2-5 ms for ``MADV_POPULATE_READ`` (Linux >= 5.14; a no-op elsewhere).
    """
    start = start // _PAGE * _PAGE
    stop = min(stop, len(mapping))
    if stop > start:
        with contextlib.suppress(OSError, ValueError):
            mapping.madvise(_MADV_POPULATE_READ, start, stop - start)


def trim_attached(budget: int) -> None:
    """Unmap what the worker need not keep: segments unlinked by their owner, and the least
    recently used ones beyond ``budget`` bytes.

    Mapped pages count in the worker's resident size, which loky's leak guard compares
    between tasks (300 MB by default): the cache must not grow past it. A segment leaves
    the address space when its last view is gone.
    """
    global _last_sweep
    now = time.monotonic()
    with _attach_lock:
        if now - _last_sweep >= _WORKER_SWEEP_DELAY:
            _last_sweep = now
            for name in list(_ATTACHED):
                if not os.path.exists(_path(name)):
                    del _ATTACHED[name]
        total = sum(len(entry.mapping) for entry in _ATTACHED.values())
        while total > budget and _ATTACHED:
            _, entry = _ATTACHED.popitem(last=False)
            total -= len(entry.mapping)


# -- the host's pool -------------------------------------------------------------------------------


class _Segment:
    """One mapped host segment and the number of leases on it."""

    __slots__ = ("address", "base", "mapping", "name", "refs", "retired", "size")

    def __init__(self, head: str, size: int) -> None:
        self.name, self.mapping = _create_unique(head, size)
        self.size = size
        self.retired = False  # dropped, not reused, when its last lease goes
        self.base: NDArray = np.frombuffer(self.mapping, np.uint8)
        self.address = _address(self.base)
        self.refs = 0


class _PoolState:
    """Everything a pool's finalizers need, without a reference to the pool itself."""

    def __init__(self, prefix: str, max_free_bytes: int) -> None:
        self.prefix = prefix
        self.max_free_bytes = max_free_bytes
        self.lock = threading.Lock()
        self.segments: dict[str, _Segment] = {}
        self.free: list[_Segment] = []  # oldest first
        self.free_bytes = 0
        self.pending: collections.deque[_Segment] = collections.deque()
        self.closed = False
        self.created = 0
        _OWN_PREFIXES.add(prefix)
        self.lock_fd = _hold_lock(prefix)  # tells sweeps of other hosts that this one lives

    # Called by Lease.release and by finalizers, from any thread, possibly while this thread
    # holds the lock (a finalizer run by the garbage collector): never block.
    def release(self, segment: _Segment) -> None:
        self.pending.append(segment)
        if self.lock.acquire(blocking=False):
            try:
                self._drain()
            finally:
                self.lock.release()

    def _drain(self) -> None:
        while self.pending:
            segment = self.pending.popleft()
            segment.refs -= 1
            if segment.refs > 0 or segment.name not in self.segments:
                continue
            if segment.retired or segment.size > self.max_free_bytes:
                self._drop(segment)  # would push every other free segment out
                continue
            self.free.append(segment)
            self.free_bytes += segment.size
        while self.free_bytes > self.max_free_bytes and self.free:
            self._drop(self.free[0])

    def _drop(self, segment: _Segment) -> None:
        if segment in self.free:
            self.free.remove(segment)
            self.free_bytes -= segment.size
        self.segments.pop(segment.name, None)
        _LOCAL.pop(segment.name, None)
        unlink(segment.name)
        # The mapping goes when the last array using it does.

    def take(self, nbytes: int) -> _Segment:
        wanted = _size_class(nbytes)
        with self.lock:
            self._check_open()
            best = None
            for segment in self.free:
                if nbytes <= segment.size <= 2 * wanted and (
                    best is None or segment.size < best.size
                ):
                    best = segment
            if best is not None:
                self.free.remove(best)
                self.free_bytes -= best.size
                best.refs = 1
                self._drain()
                return best
        created = _Segment(f"{self.prefix}-h", wanted)  # slow (page allocation): not locked
        name = created.name
        created.refs = 1
        with self.lock:
            if self.closed:
                unlink(name)
                self._check_open()
            self.segments[name] = created
            _LOCAL[name] = created
            self.created += 1
            self._drain()
        return created

    def _check_open(self) -> None:
        self._drain()
        if self.closed:
            raise ExecutorShutdownError(
                "cannot lease shared memory from a closed SegmentPool; create a new pool"
            )

    def find(self, array: NDArray) -> _Segment | None:
        low, high = _byte_bounds(array)
        with self.lock:
            self._drain()
            for segment in self.segments.values():
                if (
                    segment.refs > 0
                    and segment.address <= low
                    and high <= segment.address + segment.size
                ):
                    segment.refs += 1
                    self._drain()
                    return segment
            self._drain()
        return None

    def retire(self, name: str) -> None:
        with self.lock:
            segment = self.segments.get(name)
            if segment is not None:
                segment.retired = True
            self._drain()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            for segment in list(self.segments.values()):
                self._drop(segment)
            self.pending.clear()
        for name in list_segments(self.prefix + "-"):
            unlink(name)
        fd, self.lock_fd = self.lock_fd, None
        _release_lock(self.prefix, fd)
        _OWN_PREFIXES.discard(self.prefix)


def _finalize_state(state: _PoolState) -> None:
    state.close()


class Lease:
    """A hold on a pooled segment; the segment is reused only when all its leases are released.

    Obtained from :meth:`SegmentPool.lease`, :meth:`SegmentPool.share` or
    :func:`encode_args`. :meth:`release` is idempotent and thread-safe.
    """

    __slots__ = ("__weakref__", "_released", "_segment", "_state", "nbytes")

    def __init__(self, state: _PoolState, segment: _Segment, nbytes: int) -> None:
        self._state = state
        self._segment = segment
        self._released = False
        self.nbytes = nbytes

    @property
    def name(self) -> str:
        """The segment's name in ``/dev/shm``."""
        return self._segment.name

    @property
    def size(self) -> int:
        """The segment's size in bytes (at least :attr:`nbytes`)."""
        return self._segment.size

    @property
    def ref(self) -> SegmentRef:
        """A picklable reference to the segment, to offer it to a task as a result slot."""
        return SegmentRef(self._segment.name, self._segment.size)

    @property
    def released(self) -> bool:
        """Whether this lease was released (or handed over with :meth:`transfer`)."""
        return self._released

    def buffer(self) -> NDArray:
        """The first :attr:`nbytes` bytes of the segment as a writeable uint8 array."""
        return self._segment.base[: self.nbytes]

    def transfer(self) -> Lease:
        """Move the hold to a new lease; releasing this one afterwards does nothing."""
        if self._released:
            raise ValueError(f"lease of segment {self.name!r} was already released")
        self._released = True
        return Lease(self._state, self._segment, self.nbytes)

    def release(self) -> None:
        """Give the segment back to the pool (no-op if already released)."""
        if self._released:
            return
        self._released = True
        self._state.release(self._segment)

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"Lease({self.name!r}, nbytes={self.nbytes}, size={self.size}, {state})"


class SegmentPool:
    """Host-side pool of shared-memory segments, one per executor.

    Segments are named ``<prefix>-h<random>`` (host) and ``<prefix>-w<pid>-<random>`` (results
    written by worker ``pid``); the prefix ``mepa-<host pid>-<random>`` lets the pool find and
    unlink everything it or its workers left behind. The pool holds ``/dev/shm/.<prefix>.lock``
    locked while it is open: that, not the pid, tells other hosts' sweeps that it lives.

    Size classes: a lease of ``n`` bytes gets a free segment of at least ``n`` and at most
    twice :func:`_size_class(n) <_size_class>` bytes (the smallest such), or a new segment of
    ``_size_class(n)`` bytes, four classes per power of two, so an array of the same size
    leases the same segment call after call. At most ``max_free_bytes`` of free segments are
    kept; the least recently used go first.

    Parameters
    ----------
    prefix
        Name prefix of every segment; default ``mepa-<pid>-<8 hex digits>``.
    max_free_bytes
        Bytes of free segments kept for reuse, ``>= 0``.

    Examples
    --------
    >>> pool = SegmentPool()
    >>> out = pool.empty((1000, 1000))  # workers can write into it in place
    >>> shared = pool.share(np.arange(10.0))
    >>> bool((shared.open() == np.arange(10.0)).all())
    True
    >>> pool.close()
    >>> list_segments(pool.prefix)
    []
    """

    def __init__(
        self, prefix: str | None = None, max_free_bytes: int = DEFAULT_MAX_FREE_BYTES
    ) -> None:
        if isinstance(max_free_bytes, bool) or not isinstance(max_free_bytes, int):
            raise TypeError(f"max_free_bytes must be an int, got {max_free_bytes!r}")
        if max_free_bytes < 0:
            raise ValueError(f"max_free_bytes must be >= 0, got {max_free_bytes}")
        if prefix is None:
            prefix = f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        elif not prefix or "/" in prefix:
            raise ValueError(f"prefix must be a non-empty name without '/', got {prefix!r}")
        sweep_stale_segments()
        self._state = _PoolState(prefix, max_free_bytes)
        self._finalizer = weakref.finalize(self, _finalize_state, self._state)

    @property
    def prefix(self) -> str:
        """Prefix of every segment of this pool."""
        return self._state.prefix

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._state.closed

    @property
    def segments_created(self) -> int:
        """How many segments this pool created (reuses do not count)."""
        return self._state.created

    @property
    def free_bytes(self) -> int:
        """Bytes of free segments kept for reuse."""
        return self._state.free_bytes

    def lease(self, nbytes: int) -> Lease:
        """Lease a segment of at least ``nbytes`` bytes, reusing a free one if possible.

        Raises
        ------
        ExecutorShutdownError
            If the pool was closed.
        OSError
            If ``/dev/shm`` has no room for a new segment.
        """
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        return Lease(self._state, self._state.take(nbytes), nbytes)

    def lookup(self, array: NDArray) -> SharedArray | None:
        """A handle to ``array`` if it lives in a leased segment of this pool, else ``None``.

        The handle carries a new lease on the segment, so it stays valid after the array
        itself is collected; release it when the task that uses it is done.
        """
        segment = self._state.find(array)
        if segment is None:
            return None
        return SharedArray(
            segment.name,
            _address(array) - segment.address,
            array.shape,
            array.dtype,
            array.strides,
            bool(array.flags.writeable),
            "pool",
            Lease(self._state, segment, segment.size),
        )

    def share(self, array: npt.ArrayLike) -> SharedArray:
        """Copy ``array`` into a leased segment and return a picklable handle to it.

        An array that already lives in this pool (from :meth:`empty` or a view of it) is not
        copied. Release the handle's :attr:`~SharedArray.lease` when the tasks using it are
        done.
        """
        source = np.asarray(array)
        if source.dtype.hasobject:
            raise TypeError(f"arrays of Python objects cannot be shared, got dtype {source.dtype}")
        found = self.lookup(source)
        if found is not None:
            return found
        lease = self.lease(source.nbytes)
        order: Literal["F", "C"] = (
            "F" if source.flags.f_contiguous and not source.flags.c_contiguous else "C"
        )
        buffer = np.frombuffer(lease._segment.mapping, np.uint8, count=source.nbytes)
        target = buffer.view(source.dtype).reshape(source.shape, order=order)
        _copy(target, source)
        return SharedArray(
            lease.name, 0, source.shape, source.dtype, target.strides, True, "pool", lease
        )

    def empty(self, shape: int | tuple[int, ...], dtype: npt.DTypeLike = np.float64) -> NDArray:
        """A new C-ordered array backed by a pooled segment, for workers to write into.

        The array, and any view of it, is sent to tasks without a copy. Its segment goes
        back to the pool when the array and all its views are garbage collected.
        """
        shape = (shape,) if isinstance(shape, int) else tuple(int(n) for n in shape)
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise TypeError(f"arrays of Python objects cannot be shared, got dtype {dt}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        lease = self.lease(nbytes)
        return _owned_view(lease, nbytes).view(dt).reshape(shape)

    def retire(self, name: str) -> None:
        """Never hand segment ``name`` out again: unlink it when its last lease is released.

        For a segment that a worker process still uses on its own (an array of the user's code
        kept a result region): reusing it would let that array see other data.
        """
        self._state.retire(name)

    def cleanup_leftovers(
        self, pids: Iterable[int] | None = None, *, force: bool = False
    ) -> list[str]:
        """Unlink result segments that workers created and the host never claimed.

        Call after a worker crash. Segments of workers still alive may belong to a task in
        flight and are kept, unless ``force`` (safe when no task is running).

        Parameters
        ----------
        pids
            Only segments of these worker pids; default every worker that is no longer alive.
        force
            Unlink the segments of live workers too.

        Returns
        -------
        list of str
            The names unlinked.
        """
        wanted = None if pids is None else set(pids)
        head = f"{self.prefix}-w"
        removed = []
        for name in list_segments(head):
            pid = _parse_pid(name[len(head) :].split("-", 1)[0])
            if pid is None:
                continue
            if wanted is not None and pid not in wanted:
                continue
            if (wanted is None and not force and _pid_alive(pid)) or not unlink(name):
                continue
            removed.append(name)
        return removed

    def close(self) -> None:
        """Unlink every segment of the pool, leased or free, and any leftover with its prefix.

        Arrays already mapped in this process stay valid; workers can no longer attach them.
        Idempotent; also run at interpreter exit and when the pool is collected.
        """
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SegmentPool({self.prefix!r}, segments={len(self._state.segments)}, "
            f"free_bytes={self._state.free_bytes}, closed={self.closed})"
        )


# Copies of at least this many bytes are split over a few threads: NumPy releases the GIL while
# copying, and one core alone does not saturate the memory bandwidth (measured: a 160 MB copy
# into a paged-in segment took 17 ms on one thread, 10 ms on two).
_PARALLEL_COPY_BYTES = 16 << 20
_COPY_THREADS = 2
_copier: ThreadPoolExecutor | None = None
_copier_lock = threading.Lock()


def _copy(target: NDArray, source: NDArray) -> None:
    """``np.copyto(target, source)``, in parallel for big contiguous arrays."""
    global _copier
    if (
        source.nbytes < _PARALLEL_COPY_BYTES
        or not (source.flags.c_contiguous and target.flags.c_contiguous)
    ):
        np.copyto(target, source, casting="no")
        return
    with _copier_lock:
        if _copier is None:
            _copier = ThreadPoolExecutor(_COPY_THREADS, thread_name_prefix="mepa-copy")
        copier = _copier
    flat_target = target.reshape(-1).view(np.uint8)
    flat_source = source.reshape(-1).view(np.uint8)
    step = -(-flat_source.size // _COPY_THREADS)
    parts = [
        copier.submit(np.copyto, flat_target[i : i + step], flat_source[i : i + step])
        for i in range(0, flat_source.size, step)
    ]
    for part in parts:
        part.result()


def _owned_view(lease: Lease, nbytes: int) -> NDArray:
    """A uint8 array over the lease's segment that holds the lease until it is collected.

    It is built from the mmap itself, not from another array, so that NumPy keeps it as the
    ``base`` of every view derived from it and the finalizer waits for all of them.
    """
    base = np.frombuffer(lease._segment.mapping, np.uint8, count=nbytes)
    weakref.finalize(base, lease.release)
    return base


