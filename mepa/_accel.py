"""Whether mepa's optional C accelerators are active, and why not.

``pip install .`` builds them into the installed package. Run from a checkout (``python -m
mepa`` in the repository's root imports ``./mepa``, not the installed copy), mepa uses them only
if they were built next to the sources (``python setup.py build_ext --inplace``); without them
it runs the same, with pure-Python fallbacks that are slower in two places.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ACCELERATORS", "Accelerator", "accelerators", "describe", "source_checkout"]

ACCELERATORS: dict[str, str] = {
    "_tally": "progress.update in tasks at about 20 ns",
    "_inplace": "process workers make distributed results in the shared output",
}
"""The C extension modules of mepa and what each speeds up."""


@dataclass(frozen=True)
class Accelerator:
    """One C extension: its module name, what it does, and the import error if it is missing."""

    name: str
    purpose: str
    error: str | None

    @property
    def active(self) -> bool:
        """Whether the extension imported."""
        return self.error is None


def accelerators() -> list[Accelerator]:
    """Every accelerator of :data:`ACCELERATORS`, imported (or not) in this interpreter."""
    found = []
    for name, purpose in ACCELERATORS.items():
        try:
            importlib.import_module(f"mepa.{name}")
        except ImportError as exc:
            found.append(Accelerator(name, purpose, str(exc) or type(exc).__name__))
        else:
            found.append(Accelerator(name, purpose, None))
    return found


def source_checkout() -> Path | None:
    """The repository root if mepa runs from its source tree (next to ``setup.py``), else None."""
    root = Path(__file__).resolve().parent.parent
    if (root / "setup.py").is_file() and (root / "pyproject.toml").is_file():
        return root
    return None


def describe(found: list[Accelerator] | None = None, checkout: Path | None = None) -> str:
    """One line for ``mepa info`` and the demo: active, or missing and how to get them.

    Examples
    --------
    >>> describe([Accelerator("_tally", "counting", None)], None)
    'C accelerators: active (_tally)'
    >>> print(describe([Accelerator("_tally", "counting", "No module named 'mepa._tally'")],
    ...                Path("/src/mepa")))  # doctest: +NORMALIZE_WHITESPACE
    C accelerators: missing (_tally): running the source tree at /src/mepa, where they are not
    built; run the installed package (the mepa command, or python -m mepa from another
    directory), or build them here: python setup.py build_ext --inplace
    """
    found = accelerators() if found is None else found
    missing = [a.name for a in found if not a.active]
    if not missing:
        return f"C accelerators: active ({', '.join(a.name for a in found)})"
    head = f"C accelerators: missing ({', '.join(missing)})"
    if checkout is not None:
        return (
            f"{head}: running the source tree at {checkout}, where they are not built; run "
            "the installed package (the mepa command, or python -m mepa from another "
            "directory), or build them here: python setup.py build_ext --inplace"
        )
    return (
        f"{head}: pure-Python fallbacks in use (reinstall with a C compiler: pip install .)"
    )
