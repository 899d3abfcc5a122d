"""Private temporary directories owned by a live host, reclaimed once their host is gone.

An executor keeps a few files outside its memory: the event hub's socket, the record of which
task each worker process runs. They live in a directory of mode 0700 under the temporary
directory, named ``mepa-<kind>-<random>``. The host holds an exclusive ``flock`` on a file in
it for as long as the directory exists; the lock dies with the process however it ends
(SIGKILL, ``os._exit``), so the next mepa host that starts finds the directories whose lock it
can take and removes them. A lock, not a pid, tells a dead host from a live one: the pid of a
host in another pid namespace sharing the temporary directory means nothing here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import threading
import time
import weakref

__all__ = ["RunDir", "sweep_stale"]

_LOCK_NAME = ".owner"
_SWEPT: set[str] = set()
_SWEPT_LOCK = threading.Lock()


class RunDir:
    """A private directory, locked by this process, removed by :meth:`close` or at exit.

    Parameters
    ----------
    kind
        Part of the name: ``mepa-<kind>-...``.
    short
        Make it directly under ``/tmp`` when the default temporary directory has a long path
        (AF_UNIX socket paths are limited to ~108 bytes).
    """

    def __init__(self, kind: str, *, short: bool = False) -> None:
        prefix = f"mepa-{kind}-"
        sweep_stale(prefix)
        base = None
        if short and len(os.path.join(tempfile.gettempdir(), prefix + "x" * 8, "hub.sock")) > 100:
            base = "/tmp"
        self.path = tempfile.mkdtemp(prefix=prefix, dir=base)  # mode 0700
        try:
            # Locked under a temporary name, then renamed: a sweeper never sees it unlocked.
            fd, draft = tempfile.mkstemp(prefix=".draft-", dir=self.path)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(draft, os.path.join(self.path, _LOCK_NAME))
        except OSError:
            shutil.rmtree(self.path, ignore_errors=True)
            raise
        self._finalizer = weakref.finalize(self, _remove, self.path, fd, os.getpid())

    def close(self) -> None:
        """Remove the directory and release its lock (idempotent)."""
        self._finalizer()


def _remove(path: str, fd: int, pid: int) -> None:
    if os.getpid() != pid:  # a forked child does not own its parent's directory
        return
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.close(fd)


def sweep_stale(prefix: str) -> None:
    """Remove the ``<tmp>/<prefix>*`` directories whose owner has ended (once per process).

    Parameters
    ----------
    prefix
        E.g. ``"mepa-events-"``.
    """
    with _SWEPT_LOCK:
        if prefix in _SWEPT:
            return
        _SWEPT.add(prefix)
    for base in dict.fromkeys((tempfile.gettempdir(), "/tmp")):
        try:
            names = [name for name in os.listdir(base) if name.startswith(prefix)]
        except OSError:
            continue
        for name in names:
            path = os.path.join(base, name)
            if _abandoned(path):
                shutil.rmtree(path, ignore_errors=True)


def _abandoned(path: str) -> bool:
    """Whether nobody holds the lock of ``path`` (a directory this user may remove)."""
    try:
        fd = os.open(os.path.join(path, _LOCK_NAME), os.O_RDWR)
    except FileNotFoundError:
        # No lock file: an older mepa's directory, or one being created right now. Only
        # remove it if it has not changed for a day.
        try:
            return time.time() - os.stat(path).st_mtime > 86400
        except OSError:
            return False
    except OSError:
        return False  # another user's, or unreadable: not ours to judge
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # its owner is alive
    finally:
        os.close(fd)
    return True
