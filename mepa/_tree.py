"""Nested structures of lists, tuples and dicts ("trees") and their leaves.

``gather`` returns the structure of futures it is given, ``distribute`` finds allocations
anywhere inside its arguments, and ``reassemble`` puts back results that are tuples or dicts of
arrays. All three walk the same kind of structure, described here once.

Only ``list``, ``tuple`` (named tuples too) and ``dict`` are containers; everything else,
NumPy arrays included, is a leaf.

>>> leaves, spec = flatten({"a": [1, 2], "b": (3,)})
>>> leaves
[1, 2, 3]
>>> unflatten(spec, [10, 20, 30])
{'a': [10, 20], 'b': (30,)}
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["TreeSpec", "flatten", "iter_leaves", "tree_map", "unflatten"]


@dataclass(frozen=True)
class TreeSpec:
    """The shape of a tree without its leaves.

    ``kind`` is ``"leaf"``, ``"list"``, ``"tuple"`` or ``"dict"``; ``keys`` are a dict's keys in
    order; ``rebuild`` is the tuple type (for named tuples); ``children`` the specs below.
    """

    kind: str
    children: tuple[TreeSpec, ...] = ()
    keys: tuple[Any, ...] = ()
    rebuild: type | None = None

    @property
    def n_leaves(self) -> int:
        """Number of leaves in the tree."""
        if self.kind == "leaf":
            return 1
        return sum(child.n_leaves for child in self.children)

    def describe(self) -> str:
        """A short human-readable form, for error messages: ``{'a': *, 'b': (*, *)}``."""
        if self.kind == "leaf":
            return "*"
        inner = [child.describe() for child in self.children]
        if self.kind == "dict":
            pairs = zip(self.keys, inner, strict=True)
            return "{" + ", ".join(f"{k!r}: {v}" for k, v in pairs) + "}"
        if self.kind == "list":
            return "[" + ", ".join(inner) + "]"
        return "(" + ", ".join(inner) + ("," if len(inner) == 1 else "") + ")"


_LEAF = TreeSpec("leaf")


def _is_namedtuple(obj: object) -> bool:
    return isinstance(obj, tuple) and hasattr(type(obj), "_fields")


def flatten(tree: Any) -> tuple[list[Any], TreeSpec]:
    """Split ``tree`` into its leaves (depth first, in order) and its spec."""
    leaves: list[Any] = []
    spec = _flatten_into(tree, leaves)
    return leaves, spec


def _flatten_into(tree: Any, leaves: list[Any]) -> TreeSpec:
    if isinstance(tree, dict):
        keys = tuple(tree)
        children = tuple(_flatten_into(tree[k], leaves) for k in keys)
        return TreeSpec("dict", children, keys=keys, rebuild=type(tree))
    if isinstance(tree, list):
        return TreeSpec("list", tuple(_flatten_into(x, leaves) for x in tree))
    if isinstance(tree, tuple):
        children = tuple(_flatten_into(x, leaves) for x in tree)
        return TreeSpec("tuple", children, rebuild=type(tree))
    leaves.append(tree)
    return _LEAF


def unflatten(spec: TreeSpec, leaves: list[Any]) -> Any:
    """Rebuild the tree described by ``spec`` with ``leaves`` in order."""
    if len(leaves) != spec.n_leaves:
        raise ValueError(f"spec has {spec.n_leaves} leaves, got {len(leaves)}")
    it = iter(leaves)
    return _rebuild(spec, it)


def _rebuild(spec: TreeSpec, it: Iterator[Any]) -> Any:
    if spec.kind == "leaf":
        return next(it)
    values = [_rebuild(child, it) for child in spec.children]
    if spec.kind == "dict":
        mapping = dict(zip(spec.keys, values, strict=True))
        if spec.rebuild is not None and spec.rebuild is not dict:
            try:
                return spec.rebuild(mapping)
            except TypeError:
                return mapping
        return mapping
    if spec.kind == "list":
        return values
    if spec.rebuild is not None and spec.rebuild is not tuple:
        if hasattr(spec.rebuild, "_fields"):
            return spec.rebuild(*values)
        return spec.rebuild(values)
    return tuple(values)


def tree_map(fn: Callable[[Any], Any], tree: Any) -> Any:
    """Apply ``fn`` to every leaf of ``tree`` and return a tree of the same structure."""
    leaves, spec = flatten(tree)
    return unflatten(spec, [fn(leaf) for leaf in leaves])


def iter_leaves(tree: Any) -> Iterator[Any]:
    """Yield the leaves of ``tree`` in order, without building a spec."""
    if isinstance(tree, dict):
        for value in tree.values():
            yield from iter_leaves(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from iter_leaves(value)
    else:
        yield tree
