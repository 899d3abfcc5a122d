"""Ship the user's own code to a Dask cluster inside every task.

::

    host                                    scheduler             worker
    ────                                    ─────────             ──────
    submit(fn, *args)
      local modules (cwd, extra_paths) ──▶ registered "by value" with cloudpickle
      futures, scattered data ─────────▶ Slot(i)
      payload = cloudpickle((fn, args, kwargs))
      client.submit(run_shipped, payload, *futures)
                                            sees run_shipped (a mepa
                                            function) and bytes only
                                                                  run_shipped(payload, *values)
                                                                    unpickle: the user's
                                                                    modules come back as code,
                                                                    Slot(i) becomes values[i]
                                                                    run_task(fn, *args, **kwargs)

Why bytes. In distributed 2026 the scheduler unpickles every task it receives, so code that is
only on the workers is not enough, and ``cloudpickle.register_pickle_by_value`` on the host does
not reach the function ``Client.submit`` pickles. ``upload_file`` reloads single ``.py`` files
but not re-uploaded packages, and only reaches the workers alive at the time. A mepa-owned
wrapper whose argument is an opaque ``bytes`` payload avoids all of it: the scheduler only needs
mepa, every worker (also one that joins later) gets the code with the task, and code edited
between runs is what the next run sends.

Limits (see :class:`~mepa.DaskExecutor`):

* Modules are found among those already imported, by the location of their file: under the
  working directory or ``extra_paths``, and not under the standard library, ``site-packages``,
  a virtual environment or mepa itself. Extension modules (``.so``) cannot be sent by value.
* A class sent by value is rebuilt on the worker. Instances that come back to the host turn into
  the host's class again (cloudpickle tracks the class), but on the worker ``isinstance`` against
  a class imported there another way is false.
* Module-level state (globals changed at run time, caches) is sent as it is when the task is
  submitted; changes a task makes stay on that worker.
* Arguments travel inside the payload, through the scheduler: big data should go through
  :meth:`~mepa.DaskExecutor.scatter` (large NumPy arrays are scattered automatically).
"""

from __future__ import annotations

import contextlib
import os
import sys
import sysconfig
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["LocalModules", "Slot", "TaskExit", "dumps_shipped", "main_script", "run_shipped"]

_REGISTRY_LOCK = threading.Lock()
"""cloudpickle's by-value registry is global: register, dump and unregister under this lock."""

_ALWAYS_EXCLUDED = ("mepa",)


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
    """Finds the imported modules that are the user's own code.

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

    def _is_local(self, name: str, module: ModuleType, roots: Sequence[Path]) -> bool:
        if any(name == ex or name.startswith(ex + ".") for ex in self._excludes):
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


def dumps_shipped(obj: Any, module_names: Collection[str]) -> bytes:
    """Pickle ``obj`` with cloudpickle, the named modules pickled by value.

    Parameters
    ----------
    obj
        Typically ``(fn, args, kwargs)``.
    module_names
        Modules (from :meth:`LocalModules.names`) whose functions and classes travel as code.

    Returns
    -------
    bytes
        The payload for :func:`run_shipped`.
    """
    import cloudpickle

    if not module_names:
        return bytes(cloudpickle.dumps(obj))
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


def run_shipped(payload: bytes, *values: Any) -> Any:
    """Worker side: unpickle the task, put the resolved values in its slots and run it.

    Parameters
    ----------
    payload
        From :func:`dumps_shipped`: ``(fn, args, kwargs)``.
    *values
        What Dask resolved the submitted futures to, in slot order. A mepa task's result
        arrives as a :class:`~mepa._events.TaskResult` and stands for its value.

    Returns
    -------
    TaskResult
        What :func:`mepa._events.run_task` returns.
    """
    import pickle

    from ._events import TaskResult, run_task
    from ._payload import run_sent_back
    from ._tree import tree_map

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
