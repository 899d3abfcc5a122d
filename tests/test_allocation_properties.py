"""Properties of Allocation that hold for any data length, weights and shuffle."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mepa._allocation import Allocation, arrange, arrange_many

SETTINGS = settings(max_examples=150, deadline=None)

lengths = st.one_of(st.integers(0, 40), st.integers(0, 50_000), st.integers(8_192, 50_000))
weights = st.lists(
    st.one_of(st.integers(0, 5), st.floats(0, 10, allow_subnormal=False)), min_size=1, max_size=8
).filter(lambda ws: any(w > 0 for w in ws))
block_rows = st.one_of(st.none(), st.integers(1, 100))


@st.composite
def shuffles(draw: st.DrawFn, n: int) -> Any:
    kind = draw(st.sampled_from(["none", "true", "seed", "generator", "permutation"]))
    if kind == "none":
        return False
    if kind == "true":
        return True
    seed = draw(st.integers(0, 2**32))
    if kind == "seed":
        return seed
    if kind == "generator":
        return np.random.default_rng(seed)
    return np.random.default_rng(seed).permutation(n)


@st.composite
def allocations(draw: st.DrawFn) -> tuple[np.ndarray, Allocation]:
    n = draw(lengths)
    width = draw(st.sampled_from([None, 3]))
    data = np.arange(n * (width or 1), dtype=np.float64)
    if width:
        data = data.reshape(n, width)
    shuffle = draw(shuffles(n))
    rows = None if isinstance(shuffle, np.ndarray) else draw(block_rows)
    return data, arrange(data, draw(weights), shuffle, block_rows=rows)


def f(x: np.ndarray) -> np.ndarray:
    return 3 * x - 1


@SETTINGS
@given(allocations())
def test_reassemble_inverts_split(case: tuple[np.ndarray, Allocation]) -> None:
    data, alloc = case
    np.testing.assert_array_equal(alloc.reassemble([f(c) for c in alloc]), f(data))


@SETTINGS
@given(allocations())
def test_sizes_round_to_within_one_row(case: tuple[np.ndarray, Allocation]) -> None:
    _, alloc = case
    assert sum(alloc.sizes) == alloc.n
    assert len(alloc.sizes) == len(alloc.weights)
    total = sum(alloc.weights)
    for size, w in zip(alloc.sizes, alloc.weights, strict=True):
        assert size >= 0
        assert abs(size - alloc.n * w / total) < 1
        if w == 0:
            assert size == 0
    assert alloc.offsets == tuple(int(o) for o in np.cumsum((0, *alloc.sizes[:-1])))


@SETTINGS
@given(allocations())
def test_every_row_in_exactly_one_chunk(case: tuple[np.ndarray, Allocation]) -> None:
    data, alloc = case
    indices = [alloc.indices(i) for i in range(len(alloc))]
    assert [len(ix) for ix in indices] == list(alloc.sizes)
    joined = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64)
    seen = np.zeros(alloc.n, dtype=np.int64)
    np.add.at(seen, joined, 1)
    assert np.all(seen == 1)
    if alloc.permutation is not None:
        np.testing.assert_array_equal(joined, alloc.permutation)
    for i, chunk in enumerate(alloc):
        np.testing.assert_array_equal(chunk, data[indices[i]])


@SETTINGS
@given(allocations())
def test_selection_take_matches_chunks(case: tuple[np.ndarray, Allocation]) -> None:
    data, alloc = case
    out = np.empty_like(data)
    for i in range(len(alloc)):
        sel = alloc.selection(i)
        piece = sel.take(data)
        np.testing.assert_array_equal(piece, alloc[i])
        np.testing.assert_array_equal(sel.take(data.copy(order="F")), piece)
        sel.put(out, piece)
    np.testing.assert_array_equal(out, data)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 5_000), weights, st.integers(0, 2**32), block_rows)
def test_arrange_many_and_structures(n: int, ws: list[float], seed: int, rows: int | None) -> None:
    x = np.arange(n)
    y = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
    alloc = arrange_many(x, y, weights=ws, shuffle=seed, block_rows=rows)
    out = alloc.reassemble([{"x": cx + 1, "xy": (cx, cy * 2)} for cx, cy in alloc])
    np.testing.assert_array_equal(out["x"], x + 1)
    np.testing.assert_array_equal(out["xy"][0], x)
    np.testing.assert_array_equal(out["xy"][1], y * 2)
    rebuilt = Allocation.from_plan(alloc.plan, alloc.data)
    for (a1, a2), (b1, b2) in zip(alloc, rebuilt, strict=True):
        np.testing.assert_array_equal(a1, b1)
        np.testing.assert_array_equal(a2, b2)
