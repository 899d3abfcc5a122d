"""Ship the user's own code to a Dask cluster: once per worker and version, imported there.

::

    host                                    scheduler             worker
    ────                                    ─────────             ──────
    submit(fn, *args)
      the importable code under the roots
      (cwd, script dir, extra_paths) ──────▶ CodeBundle, published once
                                            per version (a dataset)
      futures, scattered data ─────────▶ Slot(i)
      payload = cloudpickle((fn, args, kwargs))   (functions of modules by reference)
      client.submit(run_shipped, payload, CodeRef, *futures)
                                            sees run_shipped (a mepa
                                            function), bytes and a
                                            small CodeRef only
                                                                  run_shipped(payload, ref, ...)
                                                                    no such version here yet:
                                                                    fetch the bundle (once),
                                                                    write its files, put the
                                                                    directory on sys.path
                                                                    unpickle: the user's modules
                                                                    are imported from files,
                                                                    Slot(i) becomes values[i]
                                                                    run_task(fn, *args, **kwargs)

Why files. A module that is imported on the worker from real files behaves as it does on a
process worker: imports inside functions (``import mypkg``, ``importlib.import_module``) find
modules the host never imported, ``importlib.resources`` and ``Path(__file__).parent`` find the
data files next to the modules, module-level state (a lock, a big table) is built on the worker
instead of being pickled into every task, classes are the module's own (``__slots__``
included), and tracebacks name the file and line. The bundle is a mepa object holding bytes;
the task a mepa function and bytes: the scheduler, which unpickles every task it receives in
distributed 2026, needs only mepa.

Which code. Under every root (the working directory, the running script's directory,
``extra_paths``, and the directory each imported local module is imported from), the top-level
``.py`` modules and the package directories (those with an ``__init__.py``, all their files:
data too, but no ``__pycache__`` or hidden directories). Not shipped: the standard library,
``site-packages``, virtual environments, mepa, ``excludes``, top-level names the host imports
from elsewhere, and packages holding compiled extension modules (``.so``, ``.pyd``): those must
be installed on the workers, and a task that needs one fails with a note saying so.

Versions. The bundle's digest is a SHA-256 of its paths and contents; the host reads the files
again when its local modules change, or after :data:`RESCAN_SECONDS`, so edits between runs
are what the next run sends. A worker keeps every version it wrote, keyed by digest, and imports
from one at a time: a task of another version swaps the directory on ``sys.path`` and drops the
modules imported from the previous one.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.machinery
import os
import pickle
import shutil
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ._errors import SerializationError

__all__ = [
    "CodeBundle",
    "CodeRef",
    "LocalModules",
    "Slot",
    "TaskExit",
    "dumps_by_value",
    "dumps_shipped",
    "main_script",
    "received",
    "run_shipped",
]

_ALWAYS_EXCLUDED = ("mepa",)

RESCAN_SECONDS = 0.5
"""How long a bundle is reused before the host looks at the files again (unless the set of
imported local modules changed)."""

CODE_BYTES_LIMIT = 256 << 20
"""The largest bundle shipped; a bigger one is a :class:`~mepa.SerializationError` naming its
biggest entries."""

FETCH_TIMEOUT = 120.0
"""Seconds a worker waits for a bundle it does not have yet."""

_EXTENSION_SUFFIXES = (*importlib.machinery.EXTENSION_SUFFIXES, ".so", ".pyd")


class Slot:
    """Stands, inside a payload, for the ``index``-th value Dask resolves next to it.

    Parameters
    ----------
    index
        Position among the futures submitted with the payload.
    """

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (Slot, (self.index,))

    def __repr__(self) -> str:
        return f"Slot({self.index})"


class LocalModules:
    """Finds the user's own code: the imported local modules, and the code to ship with them.

    Parameters
    ----------
    extra_paths
        Directories whose modules are shipped too, besides the working directory.
    excludes
        Module names never shipped; a name also excludes its submodules (``"pkg"`` excludes
        ``"pkg.sub"``).

    Examples
    --------
    >>> modules = LocalModules(excludes=["my_big_dependency"])
    >>> "numpy" in modules.names()
    False
    """

    def __init__(
        self, extra_paths: Iterable[str | os.PathLike[str]] = (), excludes: Iterable[str] = ()
    ) -> None:
        self._extra = tuple(Path(p).resolve() for p in extra_paths)
        self._excludes = frozenset((*_ALWAYS_EXCLUDED, *excludes))
        self._system = _system_dirs()
        self._cache: dict[str, tuple[int, bool]] = {}
        self._venvs: dict[Path, bool] = {}
        self._lock = threading.Lock()
        self._files: dict[Path, tuple[tuple[int, int], bytes, bytes]] = {}
        self._scanned: tuple[tuple[tuple[str, int], ...], float, CodeBundle | None] | None = None
        self._last: CodeBundle | None = None

    def roots(self) -> tuple[Path, ...]:
        """The directories whose modules are shipped.

        The working directory, the running script's directory (``python dir/script.py`` run
        from elsewhere imports its neighbours from there) and ``extra_paths``.
        """
        roots = [Path.cwd().resolve()]
        script = main_script()
        if script is not None and script.parent not in roots:
            roots.append(script.parent)
        return (*roots, *self._extra)

    def names(self) -> list[str]:
        """Names of the imported modules to ship, sorted.

        Returns
        -------
        list of str
            Modules of ``sys.modules`` whose file lies under :meth:`roots`.
        """
        roots = self.roots()
        found = []
        with self._lock:
            for name, module in list(sys.modules.items()):
                if module is None or name == "__main__":
                    continue
                cached = self._cache.get(name)
                if cached is not None and cached[0] == id(module):
                    ship = cached[1]
                else:
                    ship = self._is_local(name, module, roots)
                    self._cache[name] = (id(module), ship)
                if ship:
                    found.append(name)
        return sorted(found)

    def bundle(self) -> CodeBundle | None:
        """The code to ship now, or ``None`` if there is none (see the module's notes).

        The files are looked at again when the imported local modules changed, or
        :data:`RESCAN_SECONDS` after the last look; a file is read again when its size or
        modification time changed.

        Returns
        -------
        CodeBundle or None
            The same object as last time while nothing changed.

        Raises
        ------
        SerializationError
            The code to ship is bigger than :data:`CODE_BYTES_LIMIT`.
        """
        names = self.names()
        state = tuple((name, id(sys.modules.get(name))) for name in names)
        with self._lock:
            now = time.monotonic()
            scanned = self._scanned
            if scanned is not None and scanned[0] == state and now - scanned[1] < RESCAN_SECONDS:
                return scanned[2]
            bundle = self._read(self._collect(names))
            self._scanned = (state, now, bundle)
            return bundle

    def _collect(self, names: Sequence[str]) -> dict[str, Path]:
        """The files to ship, by their path relative to the ``sys.path`` entry they load from."""
        roots = list(self.roots())
        for name in names:
            root = _import_root(name, sys.modules.get(name))
            if root is not None and root not in roots:
                roots.append(root)
        entries: dict[str, Path] = {}
        taken: set[str] = set()
        for root in roots:
            if self._is_outside(root, roots):
                continue
            try:
                children = sorted(os.scandir(root), key=lambda e: e.name)
            except OSError:
                continue
            for child in children:
                path = Path(child.path)
                if child.is_file() and child.name.endswith(".py"):
                    top = child.name[:-3]
                    files: list[tuple[str, Path]] | None = [(child.name, path)]
                elif child.is_dir() and (path / "__init__.py").is_file():
                    top = child.name
                    files = None
                else:
                    continue
                if not top.isidentifier() or top in taken or not self._ships(top, path, names):
                    continue
                if files is None:
                    files = self._package_files(path)
                    if files is None:  # compiled extensions: must be installed on the workers
                        continue
                taken.add(top)
                entries.update(files)
        # Imported local modules the scan did not place (namespace packages, odd names).
        for name in names:
            file = getattr(sys.modules.get(name), "__file__", None)
            if name.split(".")[0] in taken or not file:
                continue
            tail = "/__init__.py" if Path(file).name == "__init__.py" else ".py"
            entries.setdefault(name.replace(".", "/") + tail, Path(file))
        return entries

    def _ships(self, top: str, path: Path, names: Sequence[str]) -> bool:
        """Whether the top-level module or package ``top`` found at ``path`` is shipped."""
        if self._excluded(top):
            return False
        if top in sys.stdlib_module_names and top not in names:
            return False  # never shadow the standard library on the workers
        module = sys.modules.get(top)
        if module is None:
            return True
        file = getattr(module, "__file__", None)
        if file:  # the host imports it: ship it only if from here
            found = Path(file).resolve()
            return found == path.resolve() or found.is_relative_to(path.resolve())
        locations = [Path(p).resolve() for p in getattr(module, "__path__", None) or ()]
        return path.resolve() in locations

    def _excluded(self, name: str) -> bool:
        return any(name == ex or name.startswith(ex + ".") for ex in self._excludes)

    def _package_files(self, package: Path) -> list[tuple[str, Path]] | None:
        """Every file of a package directory (``None`` if it holds extension modules)."""
        files = []
        for dirpath, dirnames, filenames in os.walk(package):
            here = Path(dirpath)
            relative = here.relative_to(package.parent)
            dotted = ".".join(relative.parts)
            dirnames[:] = sorted(
                d for d in dirnames
                if not d.startswith(".") and d != "__pycache__"
                and not self._excluded(f"{dotted}.{d}") and not (here / d / "pyvenv.cfg").exists()
            )
            for name in sorted(filenames):
                if name.endswith(_EXTENSION_SUFFIXES):
                    return None
                if name.startswith(".") or name.endswith((".pyc", ".pyo")):
                    continue
                files.append(((relative / name).as_posix(), here / name))
        return files

    def _is_outside(self, root: Path, roots: Sequence[Path]) -> bool:
        """Whether ``root`` is the standard library, ``site-packages`` or a virtual environment."""
        if any(root.is_relative_to(d) for d in self._system):
            return True
        if {"site-packages", "dist-packages"} & set(root.parts):
            return True
        return self._in_virtualenv(root, roots)

    def _read(self, entries: dict[str, Path]) -> CodeBundle | None:
        """Read (or reuse) the files; the bundle of their contents under a digest."""
        if not entries:
            return None
        files: list[tuple[str, bytes]] = []
        hashes: list[tuple[str, bytes]] = []
        seen: dict[Path, tuple[tuple[int, int], bytes, bytes]] = {}
        for relative in sorted(entries):
            path = entries[relative]
            try:
                stat = path.stat()
                stamp = (stat.st_mtime_ns, stat.st_size)
                cached = self._files.get(path)
                if cached is None or cached[0] != stamp:
                    data = path.read_bytes()
                    cached = (stamp, data, hashlib.sha256(data).digest())
            except OSError:
                continue  # removed meanwhile
            seen[path] = cached
            files.append((relative, cached[1]))
            hashes.append((relative, cached[2]))
        self._files = seen
        total = sum(len(data) for _, data in files)
        if total > CODE_BYTES_LIMIT:
            sizes: dict[str, int] = {}
            for relative, data in files:
                top = relative.split("/")[0]
                sizes[top] = sizes.get(top, 0) + len(data)
            biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
            shown = ", ".join(f"{top} ({size / 2**20:.0f} MiB)" for top, size in biggest)
            raise SerializationError(
                f"the code to ship to the Dask workers is {total / 2**20:.0f} MiB, more than "
                f"{CODE_BYTES_LIMIT / 2**20:.0f} MiB (CODE_BYTES_LIMIT); the biggest parts: "
                f"{shown}. Move big data files out of the package directories (and load them "
                "in the tasks), or pass excludes=[...] for packages installed on the workers"
            )
        digest = _digest(hashes)
        if self._last is not None and self._last.digest == digest:
            return self._last
        self._last = CodeBundle(digest, tuple(files))
        return self._last

    def _is_local(self, name: str, module: ModuleType, roots: Sequence[Path]) -> bool:
        if self._excluded(name):
            return False
        file = getattr(module, "__file__", None)
        if not file or not str(file).endswith(".py"):
            return False
        path = Path(file).resolve()
        if not any(path.is_relative_to(root) for root in roots):
            return False
        if any(path.is_relative_to(d) for d in self._system):
            return False
        if {"site-packages", "dist-packages"} & set(path.parts):
            return False
        return not self._in_virtualenv(path.parent, roots)

    def _in_virtualenv(self, directory: Path, roots: Sequence[Path]) -> bool:
        """Whether ``directory`` is inside a virtual environment (a ``pyvenv.cfg`` above it)."""
        for parent in (directory, *directory.parents):
            known = self._venvs.get(parent)
            if known is None:
                known = self._venvs[parent] = (parent / "pyvenv.cfg").is_file()
            if known:
                return True
            if parent in roots:
                return False
        return False


def _import_root(name: str, module: ModuleType | None) -> Path | None:
    """The ``sys.path`` entry ``module`` was imported from, judged by its name and file."""
    file = getattr(module, "__file__", None)
    if not file or not str(file).endswith(".py"):
        return None
    path = Path(file).resolve()
    base = path.parent if path.name == "__init__.py" else path.with_suffix("")
    parts = name.split(".")
    if len(base.parts) <= len(parts) or list(base.parts[-len(parts):]) != parts:
        return None
    return base.parents[len(parts) - 1]


def _digest(hashes: Iterable[tuple[str, bytes]]) -> str:
    """The version of a bundle: SHA-256 over its ``(path, SHA-256 of contents)`` pairs."""
    digest = hashlib.sha256()
    for relative, content_hash in hashes:
        digest.update(relative.encode() + b"\0" + content_hash)
    return digest.hexdigest()


class CodeBundle:
    """The user's code of one version: files by path (relative to a ``sys.path`` entry).

    Parameters
    ----------
    digest
        SHA-256 (hex) of the paths and contents: the version.
    files
        ``(relative path, contents)`` pairs, sorted by path.
    """

    __slots__ = ("digest", "files")

    def __init__(self, digest: str, files: tuple[tuple[str, bytes], ...]) -> None:
        self.digest = digest
        self.files = files

    @property
    def nbytes(self) -> int:
        """The size of the files' contents."""
        return sum(len(data) for _, data in self.files)

    def __reduce__(self) -> tuple[Any, ...]:
        return (CodeBundle, (self.digest, self.files))

    def __repr__(self) -> str:
        return f"CodeBundle({self.digest[:12]}, {len(self.files)} files, {self.nbytes} bytes)"


class CodeRef:
    """What a task carries of its code: the bundle's digest and where the cluster keeps it.

    Parameters
    ----------
    digest
        :attr:`CodeBundle.digest`.
    name
        The Dask dataset (``Client.publish_dataset``) holding the bundle on the scheduler; a
        worker without this version fetches it from there, once.
    """

    __slots__ = ("digest", "name")

    def __init__(self, digest: str, name: str) -> None:
        self.digest = digest
        self.name = name

    def __reduce__(self) -> tuple[Any, ...]:
        return (CodeRef, (self.digest, self.name))

    def __repr__(self) -> str:
        return f"CodeRef({self.digest[:12]}, name={self.name!r})"


class CodeLost(Exception):
    """A worker could not fetch a task's code: its executor was shut down, or the scheduler
    restarted, since the task was submitted.

    Parameters
    ----------
    digest
        The version the task needs.
    reason
        What the fetch raised.
    """

    def __init__(self, digest: str, reason: str) -> None:
        super().__init__(digest, reason)
        self.digest = digest
        self.reason = reason

    def __str__(self) -> str:
        return f"the code of version {self.digest[:12]} could not be fetched: {self.reason}"


def main_script() -> Path | None:
    """The file of the running ``__main__`` script, if it is one (not ``-c``, stdin, a REPL)."""
    file = getattr(sys.modules.get("__main__"), "__file__", None)
    if not file or not str(file).endswith(".py"):
        return None
    return Path(file).resolve()


def _system_dirs() -> tuple[Path, ...]:
    dirs = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        with contextlib.suppress(KeyError):
            dirs.add(Path(sysconfig.get_paths()[key]).resolve())
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        lib = Path(prefix) / "lib"
        if lib.is_dir():
            dirs.add(lib.resolve())
    return tuple(sorted(dirs))



def dumps_shipped(obj: Any) -> bytes:
    """Pickle ``obj`` with cloudpickle; functions of the user's modules go by reference.

    Parameters
    ----------
    obj
        Typically ``(fn, args, kwargs)``. Functions and classes of importable modules are
        pickled as references (the worker imports them from the shipped files); those of
        ``__main__`` and closures as code.

    Returns
    -------
    bytes
        The payload for :func:`run_shipped`.
    """
    import cloudpickle

    return bytes(cloudpickle.dumps(obj))


_REGISTRY_LOCK = threading.Lock()
"""cloudpickle's by-value registry is global: register, dump and unregister under this lock."""


def dumps_by_value(obj: Any, module_names: Iterable[str]) -> bytes:
    """Pickle ``obj`` with cloudpickle, the named modules' functions and classes as code.

    For what must run before a worker has the code bundle (an executor's initializer, run
    when the worker registers), not for tasks.

    Parameters
    ----------
    obj
        Typically ``(fn, args, kwargs)``.
    module_names
        Modules (from :meth:`LocalModules.names`) pickled by value.

    Returns
    -------
    bytes
        A plain cloudpickle payload.
    """
    import cloudpickle

    with _REGISTRY_LOCK:
        already = cloudpickle.list_registry_pickle_by_value()
        added = []
        try:
            for name in module_names:
                module = sys.modules.get(name)
                if module is not None and name not in already:
                    cloudpickle.register_pickle_by_value(module)
                    added.append(module)
            return bytes(cloudpickle.dumps(obj))
        finally:
            for module in added:
                cloudpickle.unregister_pickle_by_value(module)


# ---------------------------------------------------------------------- worker side

_WORKER_LOCK = threading.RLock()
"""Guards the code versions of this worker process: one is imported from at a time."""

_written: dict[str, Path] = {}
_active: tuple[str, Path] | None = None
_received: dict[str, Any] = {"tasks": 0, "payload_bytes": 0, "bundles": {}, "bundle_bytes": 0}


def received() -> dict[str, Any]:
    """On a worker: what its tasks brought it so far.

    Returns
    -------
    dict
        ``tasks`` and ``payload_bytes`` (the tasks' own bytes), ``bundles`` (how often each
        code version was fetched, by digest) and ``bundle_bytes`` (their total size).
    """
    with _WORKER_LOCK:
        return {**_received, "bundles": dict(_received["bundles"])}


def _use(ref: CodeRef) -> None:
    """Import the user's modules from version ``ref`` from now on (fetched once per process)."""
    global _active
    if _active is not None and _active[0] == ref.digest:
        return
    directory = _written.get(ref.digest)
    if directory is None:
        bundle = _fetch(ref)
        directory = _written[ref.digest] = _write(bundle)
    if _active is not None:
        _forget(_active[1])
    sys.path.insert(0, str(directory))
    importlib.invalidate_caches()
    _active = (ref.digest, directory)


def _fetch(ref: CodeRef) -> CodeBundle:
    import distributed

    try:
        bundle = distributed.get_client().get_dataset(ref.name, callback_timeout=FETCH_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - whatever it was, the task cannot run here
        raise CodeLost(ref.digest, f"{type(exc).__name__}: {exc}") from None
    if not isinstance(bundle, CodeBundle) or bundle.digest != ref.digest:
        raise CodeLost(ref.digest, f"the dataset {ref.name!r} holds {type(bundle).__name__}")
    if _digest((r, hashlib.sha256(data).digest()) for r, data in bundle.files) != ref.digest:
        raise CodeLost(ref.digest, f"the files in the dataset {ref.name!r} do not match it")
    _received["bundles"][ref.digest] = _received["bundles"].get(ref.digest, 0) + 1
    _received["bundle_bytes"] += bundle.nbytes
    return bundle


def _code_dir() -> Path:
    """``mepa-code`` in the Dask worker's local directory (the temporary directory outside one)."""
    base = None
    with contextlib.suppress(Exception):
        import distributed

        base = Path(distributed.get_worker().local_directory)
    if base is None:
        base = Path(tempfile.gettempdir()) / f"mepa-code-{os.getuid()}"
    directory = base / "mepa-code"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _write(bundle: CodeBundle) -> Path:
    """The files of ``bundle`` in a directory of their own, written whole before it appears."""
    parent = _code_dir()
    final = parent / bundle.digest[:32]
    if final.is_dir():
        return final
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=parent))
    try:
        for relative, data in bundle.files:
            target = staging.joinpath(*relative.split("/"))
            if not target.resolve().is_relative_to(staging.resolve()):
                raise CodeLost(bundle.digest, f"the path {relative!r} leaves the code directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        os.rename(staging, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _forget(directory: Path) -> None:
    """Take ``directory`` off ``sys.path`` and drop the modules imported from it."""
    text = str(directory)
    with contextlib.suppress(ValueError):
        sys.path.remove(text)
    sys.path_importer_cache.pop(text, None)
    inside = text + os.sep
    for name, module in list(sys.modules.items()):
        file = str(getattr(module, "__file__", None) or "")
        locations = [str(p) for p in getattr(module, "__path__", None) or ()]
        if file.startswith(inside) or any(p.startswith(inside) for p in locations):
            del sys.modules[name]


def run_shipped(payload: bytes, code: CodeRef | None, *values: Any) -> Any:
    """Worker side: make the task's code importable, unpickle the task, fill its slots, run it.

    Parameters
    ----------
    payload
        From :func:`dumps_shipped`: ``(fn, args, kwargs)``.
    code
        The version of the user's code the task needs (``None``: plain cloudpickle).
    *values
        What Dask resolved the submitted futures to, in slot order. A mepa task's result
        arrives as a :class:`~mepa._events.TaskResult` and stands for its value.

    Returns
    -------
    TaskResult
        What :func:`mepa._events.run_task` returns.

    Raises
    ------
    CodeLost
        The worker does not have ``code`` and could not fetch it.
    """
    from ._events._context import TaskResult, run_task
    from ._payload import run_sent_back
    from ._tree import tree_map

    with _WORKER_LOCK:
        _received["tasks"] += 1
        _received["payload_bytes"] += len(payload)
        if code is not None:
            _use(code)
        # Under the lock: a task of another version cannot swap the modules while this one
        # imports its own.
        fn, args, kwargs = pickle.loads(payload)
    if values:
        resolved = [v.value if isinstance(v, TaskResult) else v for v in values]

        def fill(leaf: Any) -> Any:
            return resolved[leaf.index] if isinstance(leaf, Slot) else leaf

        args = tree_map(fill, args)
        kwargs = tree_map(fill, kwargs)
    call: Callable[..., Any] = fn
    try:
        return run_sent_back(run_task, call, *args, **kwargs)
    except SystemExit as exc:
        # A SystemExit would end the worker's thread (or the worker): carry it as an error.
        carried = TaskExit(exc.code)
        carried.__dict__.update(exc.__dict__)
        raise carried from None


class TaskExit(Exception):
    """A task called :func:`sys.exit`; the host turns it back into :class:`SystemExit`.

    Parameters
    ----------
    code
        The exit code (or message) given to ``sys.exit``.
    """

    def __init__(self, code: object = None) -> None:
        super().__init__(code)
        self.code = code
