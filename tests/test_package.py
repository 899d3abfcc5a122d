"""The package as users meet it: exports, import cost, typing marker, README and CI."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import pytest

import mepa

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_all_is_sorted_and_importable():
    assert list(mepa.__all__) == sorted(mepa.__all__)
    for name in mepa.__all__:
        assert getattr(mepa, name) is not None, name


def test_exported_members_are_public_objects_of_mepa():
    for name in mepa.__all__:
        value = getattr(mepa, name)
        module = getattr(value, "__module__", "mepa")
        assert module.startswith("mepa"), (name, module)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        _ = mepa.NoSuchThing


@pytest.mark.timeout(60)
def test_import_is_cheap():
    code = (
        "import sys, mepa; "
        "heavy = [m for m in ('loky', 'distributed', 'dask', 'cloudpickle', 'matplotlib') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == "[]"


def test_py_typed_is_shipped():
    spec = importlib.util.find_spec("mepa")
    assert spec is not None
    assert spec.origin is not None
    assert (pathlib.Path(spec.origin).parent / "py.typed").exists()


def test_quickstart_has_two_lines_and_ci_runs_the_test_line():
    sys.path.insert(0, str(ROOT / ".ci"))
    try:
        from quickstart import quickstart_lines
    finally:
        sys.path.pop(0)
    main_line, test_line = quickstart_lines((ROOT / "README.md").read_text())
    # the installed command: `python -m mepa` in the checkout would import the uncompiled sources
    assert main_line.endswith("&& mepa demo")
    assert "pytest" in test_line
    ci = (ROOT / ".ci" / "run").read_text()
    assert "quickstart.py test" in ci
    assert "ruff check" in ci
    assert "mypy" in ci
