"""Griffe extension: render the Sphinx roles of mepa's numpydoc docstrings as links.

mepa's docstrings use Sphinx roles (``:class:`~mepa.Worker```, ``:meth:`shutdown```). Markdown
would show them verbatim, so before mkdocstrings parses a docstring this extension rewrites each
role to an *optional* autorefs cross-reference when the target is part of the public API
(``mepa.<name in __all__>`` or one of its members), and to plain code otherwise (private
helpers, NumPy, tqdm: the site is built offline, without external inventories). An optional
reference that does not resolve renders as plain text instead of failing the strict build.

Loaded by mkdocstrings through ``extensions:`` in ``mkdocs.yml``; not a page of the site.
"""

from __future__ import annotations

import html
import importlib
import inspect
import re
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?:py:)?(?P<role>class|func|meth|attr|data|mod|exc|obj|const|property)"
    r":`(?P<body>[^`]+)`"
)
_TITLED = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^>]+)>$")
# A reST literal-block marker: "text::" (shown as "text:") or a lone "::" line (dropped) before
# an indented block, which Markdown renders as code by itself.
_LITERAL_MARKER = re.compile(
    r"(?:(?<=\S)(?P<inline>::)|^[ \t]*::)[ \t]*(?=\n[ \t]*\n)", re.MULTILINE
)


def _export(name: str) -> Any:
    """``mepa.<name>``, or ``None`` if mepa or the name's module cannot be imported yet."""
    try:
        return getattr(importlib.import_module("mepa"), name)
    except (ImportError, AttributeError):
        return None


def _public_names() -> dict[str, str]:
    """Map the canonical path of every public object to its ``mepa.<name>`` path."""
    mapping: dict[str, str] = {}
    try:
        names = importlib.import_module("mepa").__all__
    except (ImportError, AttributeError):
        return mapping
    for name in names:
        obj = _export(name)
        if obj is None:
            continue
        module = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if isinstance(module, str) and isinstance(qualname, str):
            mapping[f"{module}.{qualname}"] = f"mepa.{name}"
        mapping[f"mepa.{name}"] = f"mepa.{name}"
    return mapping


class RstRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring of the package to Markdown."""

    def __init__(self) -> None:
        super().__init__()
        self._public = _public_names()
        self._exports = {path.rsplit(".", 1)[1] for path in self._public.values()}

    # -- resolution ---------------------------------------------------------------------------

    def _owner_class(self, obj: griffe.Object) -> str | None:
        """The public path of the class ``obj`` belongs to (or is), if it is public."""
        node: griffe.Object | None = obj
        while node is not None:
            if node.kind is griffe.Kind.CLASS:
                return self._public.get(node.path)
            node = node.parent  # type: ignore[assignment]
        return None

    def _defining_class(self, owner: str, member: str) -> str | None:
        """The public class (``owner`` or a public base) that defines ``member``."""
        name = owner.split(".", 1)[1]
        cls = _export(name)
        if not inspect.isclass(cls):
            return None
        for base in cls.__mro__:
            if member in vars(base):
                return self._public.get(f"{base.__module__}.{base.__qualname__}")
        return None

    def _resolve(self, target: str, obj: griffe.Object) -> str | None:
        """An identifier the API pages define, or ``None``."""
        target = target.lstrip(".")
        if target.startswith("mepa."):
            parts = target.split(".")
            if len(parts) >= 2 and parts[1] in self._exports:
                if len(parts) == 2:
                    return target
                if len(parts) == 3:
                    found = self._defining_class(f"mepa.{parts[1]}", parts[2])
                    return f"{found}.{parts[2]}" if found else None
            return None
        head, _, rest = target.partition(".")
        if head in self._exports:
            if rest and "." not in rest:
                found = self._defining_class(f"mepa.{head}", rest)
                return f"{found}.{rest}" if found else None
            return f"mepa.{target}"
        if not rest:
            owner = self._owner_class(obj)
            if owner is not None:
                found = self._defining_class(owner, head)
                if found is not None:
                    return f"{found}.{head}"
        return None

    def _replace(self, match: re.Match[str], obj: griffe.Object) -> str:
        role, body = match["role"], match["body"].strip()
        titled = _TITLED.match(body)
        if titled:
            title, target = titled["title"], titled["target"].strip()
        else:
            target = body.lstrip("~")
            title = target.rsplit(".", 1)[-1] if body.startswith("~") else target
            if role in ("func", "meth"):
                title += "()"
        code = f"<code>{html.escape(title)}</code>"
        identifier = self._resolve(target.lstrip("~"), obj)
        if identifier is None:
            return code
        return f'<autoref identifier="{html.escape(identifier)}" optional>{code}</autoref>'

    # -- griffe hooks -------------------------------------------------------------------------

    def _rewrite(self, obj: griffe.Object) -> None:
        if obj.docstring is not None and ":" in obj.docstring.value:
            text = _ROLE.sub(lambda m: self._replace(m, obj), obj.docstring.value)
            obj.docstring.value = _LITERAL_MARKER.sub(
                lambda m: ":" if m["inline"] else "", text
            )
        for member in obj.members.values():
            if not member.is_alias:
                self._rewrite(member)  # type: ignore[arg-type]

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Rewrite every docstring of the package once it is loaded."""
        self._rewrite(pkg)
