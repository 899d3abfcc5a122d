"""The documentation site builds with warnings as errors, and covers the public API."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

import mepa

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

KEY_PAGES = [
    "index.html",
    "getting-started/index.html",
    "allocation/index.html",
    "executors/index.html",
    "executors/linear/index.html",
    "executors/thread/index.html",
    "executors/process/index.html",
    "executors/dask/index.html",
    "events-progress/index.html",
    "dask/index.html",
    "comparison/index.html",
    "design/index.html",
    "api/index.html",
    "img/allocation.svg",
]

_DIRECTIVE = re.compile(r"^::: (mepa\.\w+)\s*$", re.MULTILINE)


def _docs_tools_missing() -> str | None:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"{module} is not installed (pip install '.[docs]')"
    return None


def _api_pages() -> dict[str, str]:
    return {
        str(path.relative_to(DOCS)): path.read_text(encoding="utf-8")
        for path in sorted((DOCS / "api").glob("*.md"))
    }


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_site_builds_strict(tmp_path: pathlib.Path) -> None:
    missing = _docs_tools_missing()
    if missing:
        pytest.skip(missing)
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    for page in KEY_PAGES:
        assert (site / page).is_file(), f"{page} missing from the built site"
    # Every public name is rendered in the API reference (an anchor per object), not replaced
    # by the "not available in this build" note.
    rendered = "".join(p.read_text(encoding="utf-8") for p in (site / "api").rglob("*.html"))
    absent = [name for name in mepa.__all__ if f'id="mepa.{name}"' not in rendered]
    assert not absent, f"public names not rendered in the API reference: {absent}"
    assert "Not available in this build" not in rendered


def test_api_reference_covers_all_public_names() -> None:
    documented = {
        match for text in _api_pages().values() for match in _DIRECTIVE.findall(text)
    }
    missing = sorted(set(mepa.__all__) - {path.split(".", 1)[1] for path in documented})
    assert not missing, f"add '::: mepa.<name>' for these to a page of docs/api/: {missing}"


def test_api_reference_documents_only_public_names() -> None:
    for page, text in _api_pages().items():
        for path in _DIRECTIVE.findall(text):
            name = path.split(".", 1)[1]
            assert name in mepa.__all__, f"{page} documents {path}, which is not in mepa.__all__"


def test_api_pages_are_in_the_navigation() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in _api_pages():
        assert page.replace(os.sep, "/") in config, f"{page} is not in the nav of mkdocs.yml"
