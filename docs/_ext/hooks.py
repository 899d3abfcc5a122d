"""MkDocs hooks of the mepa site (``hooks:`` in ``mkdocs.yml``); not a page of the site.

Several modules of mepa are still landing, and ``mepa/__init__.py`` exports some names lazily
(``ProcessExecutor``, ``DaskExecutor``, ``EventContext``, ``Progress``). A ``::: mepa.Name``
directive for an object that cannot be imported would fail the whole strict build, so this hook
replaces it with a short note instead, and logs the name at INFO level.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
from typing import Any

log = logging.getLogger("mkdocs.hooks.mepa")

_DIRECTIVE = re.compile(r"^::: (?P<path>mepa(?:\.\w+)+)\s*$")


def on_config(config: Any, **kwargs: Any) -> Any:
    """Make the checkout importable, so the build documents it even when mepa is not installed."""
    root = os.path.dirname(os.path.abspath(config["config_file_path"]))
    if root not in sys.path:
        sys.path.insert(0, root)
    return config


def _importable(path: str) -> bool:
    """Whether ``mepa.<name>[.<member>...]`` can be imported and looked up."""
    parts = path.split(".")
    try:
        obj: Any = importlib.import_module(parts[0])
        for part in parts[1:]:
            obj = getattr(obj, part)
    except (ImportError, AttributeError):  # a module not yet written, a name not yet exported
        return False
    return True


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Drop mkdocstrings directives whose object does not exist in this checkout."""
    lines = markdown.split("\n")
    out: list[str] = []
    skipping = False
    for line in lines:
        match = _DIRECTIVE.match(line)
        if match:
            skipping = False
            path = match["path"]
            if not _importable(path):
                log.info("API object %s is not importable; leaving a note instead", path)
                out.append(f'!!! note "`{path}`"')
                out.append("    Not available in this build of mepa.")
                skipping = True  # drop the directive's indented options block too
                continue
        elif skipping and (line.startswith("    ") or not line.strip()):
            if not line.strip():
                out.append(line)
                skipping = False
            continue
        else:
            skipping = False
        out.append(line)
    return "\n".join(out)
