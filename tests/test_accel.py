"""Whether the C accelerators are active, and what to do when they are not."""

from __future__ import annotations

import doctest
import sys
from pathlib import Path

import pytest

import mepa._accel
from mepa._accel import ACCELERATORS, accelerators, describe, source_checkout


def test_every_accelerator_is_reported() -> None:
    found = accelerators()
    assert [a.name for a in found] == list(ACCELERATORS)


def test_a_missing_accelerator_in_a_checkout_says_how_to_build_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "mepa._tally", None)  # import fails
    found = accelerators()
    tally = next(a for a in found if a.name == "_tally")
    assert not tally.active
    text = describe(found, Path("/src/mepa"))
    assert text.startswith("C accelerators: missing (_tally")
    assert "running the source tree at /src/mepa" in text
    assert "python setup.py build_ext --inplace" in text
    installed = describe(found, None)
    assert "pip install ." in installed
    assert "source tree" not in installed


def test_this_checkout_is_recognised() -> None:
    root = Path(mepa._accel.__file__).resolve().parent.parent
    expected = root if (root / "setup.py").is_file() else None
    assert source_checkout() == expected


def test_docstring_examples() -> None:
    result = doctest.testmod(mepa._accel)
    assert result.attempted > 0
    assert result.failed == 0
