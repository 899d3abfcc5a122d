"""Executor backends, and the registry that lists them. Import executors from :mod:`mepa`.

The registry maps a kind name (``"thread"``, ``"dask"`` ...) to its backend: where its
executor class lives, what it needs installed, how to make one, and what is kept between
executors that a test session or a program may stop. The CLI (``mepa info``, ``mepa demo``),
the test suite and :mod:`mepa`'s lazy attributes read it, so a new backend is one module
plus one entry here (see :mod:`mepa._executors._engine` for what the module implements).
Nothing is imported until it is used: ``import mepa`` never imports an engine.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._base import Executor
    from ._engine import Capabilities

__all__ = ["BACKENDS", "Backend", "backend"]


@dataclass(frozen=True)
class Backend:
    """One kind of executor, as the registry knows it.

    Parameters
    ----------
    kind
        Its name on the command line and in tests.
    module, class_name
        Where the executor class lives (imported on first use).
    summary
        One line for ``mepa info``.
    requires
        Top-level modules that must be importable for the backend to work.
    extra
        The ``pip install 'mepa[extra]'`` that provides them, if any.
    remote
        Takes an ``address`` (a cluster to connect to) as its first argument.
    cleanup
        ``"function"`` of ``module`` that stops what the backend keeps between executors
        (worker pools), or ``None``.
    """

    kind: str
    module: str
    class_name: str
    summary: str
    requires: tuple[str, ...] = ()
    extra: str | None = None
    remote: bool = False
    cleanup: str | None = None

    def available(self) -> bool:
        """Whether what the backend needs is installed (and its module imports)."""
        return not self.missing()

    def missing(self) -> str:
        """Why the backend cannot be used and how to install it (empty when it can)."""
        needed = [n for n in self.requires if importlib.util.find_spec(n) is None]
        if needed:
            how = f"pip install 'mepa[{self.extra}]'" if self.extra else "pip install " + (
                " ".join(needed)
            )
            return f"needs {', '.join(needed)}: {how}"
        try:
            self.load()
        except ImportError as exc:
            return f"the {self.kind} executor is not available in this installation ({exc})"
        return ""

    def load(self) -> type[Executor]:
        """The executor class (imports its module)."""
        cls: type[Executor] = getattr(importlib.import_module(self.module), self.class_name)
        return cls

    @property
    def capabilities(self) -> Capabilities:
        """What the backend declares it can do (imports its module, not its engine)."""
        return self.load().capabilities

    def create(self, n_workers: int | None = None, address: str | None = None) -> Executor:
        """A new executor: ``n_workers`` workers, on the cluster at ``address`` if remote.

        Raises
        ------
        ValueError
            An address given to a backend that runs on this machine.
        ImportError
            The backend is not installed (the message says how to install it).
        """
        if address is not None and not self.remote:
            remote = [b.kind for b in BACKENDS.values() if b.remote]
            raise ValueError(
                f"address is only used by the {' and '.join(remote)} executors, got "
                f"address={address!r} with executor {self.kind!r}; drop the address or "
                "choose one of those"
            )
        if not self.available():
            raise ImportError(f"the {self.kind} executor is not available: {self.missing()}")
        cls: Callable[..., Executor] = self.load()
        if self.remote:
            return cls(address, n_workers=n_workers)
        return cls(n_workers)

    def stop_kept(self) -> None:
        """Run the backend's cleanup if its module was imported (nothing to stop otherwise)."""
        import sys

        if self.cleanup is None or self.module not in sys.modules:
            return
        stop: Callable[[], Any] = getattr(sys.modules[self.module], self.cleanup)
        stop()


BACKENDS: dict[str, Backend] = {
    b.kind: b
    for b in (
        Backend(
            "linear", "mepa._executors._local", "LinearExecutor",
            "in the caller's thread, one task after another (for debugging)",
        ),
        Backend(
            "thread", "mepa._executors._local", "ThreadExecutor",
            "a pool of threads of this process",
        ),
        Backend(
            "process", "mepa._executors._process", "ProcessExecutor",
            "loky worker processes, big arrays in shared memory",
            requires=("loky",), cleanup="shutdown_worker_pools",
        ),
        Backend(
            "dask", "mepa._executors._dask", "DaskExecutor",
            "a Dask cluster: an embedded LocalCluster, or one at --address",
            requires=("distributed",), remote=True,
        ),
        Backend(
            "ray", "mepa._executors._ray", "RayExecutor",
            "Ray: a local Ray on 127.0.0.1, or the cluster at --address",
            requires=("ray",), extra="ray", remote=True,
        ),
    )
}
"""Every backend by kind, in the order ``mepa info`` lists them."""


def backend(kind: str) -> Backend:
    """The backend of ``kind``.

    Raises
    ------
    ValueError
        If no backend has that name (the message lists them).
    """
    found = BACKENDS.get(kind)
    if found is None:
        raise ValueError(
            f"executor kind must be one of {', '.join(map(repr, BACKENDS))}, got {kind!r}"
        )
    return found
