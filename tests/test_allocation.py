"""Unit tests of Allocation, arrange, arrange_many and the weight and shuffle parsers."""

from __future__ import annotations

import doctest
import pickle
from collections import namedtuple
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

import mepa._allocation
import mepa._chunking
import mepa._types
from mepa._allocation import Allocation, arrange, arrange_many
from mepa._chunking import ChunkSelection, auto_block_rows, chunk_sizes
from mepa._errors import AllocationError
from mepa._plan import AllocationPlan
from mepa._types import DEFAULT_SEED, parse_shuffle, parse_weights
from mepa._worker import Worker

FLOAT_WEIGHTS = [0.91, 0.4826, 0.11, 0.6739, 0.759, 0.0001]


def all_indices(alloc: Allocation) -> np.ndarray:
    return np.concatenate([alloc.indices(i) for i in range(len(alloc))])


# -- docs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [mepa._allocation, mepa._chunking, mepa._types])
def test_docstring_examples(module: Any) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


# -- weights and sizes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        (3, (1.0, 1.0, 1.0)),
        (np.int64(2), (1.0, 1.0)),
        ([2, 1, 0], (2.0, 1.0, 0.0)),
        ((0.5, 1.5), (0.5, 1.5)),
        (np.array([1.0, 3.0]), (1.0, 3.0)),
        ([Worker("a-0", weight=2), Worker("a-1")], (2.0, 1.0)),
    ],
)
def test_parse_weights(weights: Any, expected: tuple[float, ...]) -> None:
    assert parse_weights(weights) == expected


@pytest.mark.parametrize(
    ("n", "weights", "expected"),
    [
        (10, [1, 1, 1], (4, 3, 3)),
        (7, [2, 0, 1], (5, 0, 2)),
        (3, [1] * 5, (1, 1, 1, 0, 0)),
        (0, [1, 2], (0, 0)),
        (1, [1, 1], (1, 0)),  # tie: lowest index wins
        (5, [0, 0, 1], (0, 0, 5)),
    ],
)
def test_chunk_sizes(n: int, weights: list[float], expected: tuple[int, ...]) -> None:
    assert chunk_sizes(n, weights) == expected


@pytest.mark.parametrize("n", [0, 1, 7, 100, 1001])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_equal_weights_match_array_split(n: int, k: int) -> None:
    alloc = arrange(np.arange(n), k)
    expected = np.array_split(np.arange(n), k)
    assert alloc.sizes == tuple(len(part) for part in expected)
    for chunk, part in zip(alloc, expected, strict=True):
        np.testing.assert_array_equal(chunk, part)


@pytest.mark.parametrize("n", [0, 1, 5, 999, 10_007, 123_457])
@pytest.mark.parametrize("shuffle", [False, True])
def test_float_weights_allocate_every_row_once(n: int, shuffle: bool) -> None:
    alloc = arrange(np.arange(n), FLOAT_WEIGHTS, shuffle)
    assert sum(alloc.sizes) == n
    total = sum(FLOAT_WEIGHTS)
    for size, w in zip(alloc.sizes, FLOAT_WEIGHTS, strict=True):
        assert abs(size - n * w / total) < 1
    np.testing.assert_array_equal(np.sort(all_indices(alloc)), np.arange(n))
    np.testing.assert_array_equal(np.sort(np.concatenate(list(alloc))), np.arange(n))


def test_tiny_and_huge_weights_are_exact() -> None:
    weights = [1e-300, 1e300, 1e-300]
    alloc = arrange(np.arange(10), weights)
    assert alloc.sizes == (0, 10, 0)


def test_sizes_offsets_and_description() -> None:
    alloc = arrange(np.arange(10), [2, 1, 1])
    assert alloc.n == 10
    assert alloc.weights == (2.0, 1.0, 1.0)
    assert alloc.sizes == (5, 3, 2)
    assert alloc.offsets == (0, 5, 8)
    assert len(alloc) == alloc.n_chunks == 3
    assert not alloc.shuffled
    assert alloc.permutation is None
    assert "sizes=(5, 3, 2)" in repr(alloc)


# -- chunks -----------------------------------------------------------------------------------


def test_unshuffled_chunks_are_views() -> None:
    data = np.arange(40.0).reshape(20, 2)
    alloc = arrange(data, [1, 2, 0, 1])
    for i, chunk in enumerate(alloc):
        if chunk.size:
            assert np.shares_memory(chunk, data)
        start = alloc.offsets[i]
        np.testing.assert_array_equal(chunk, data[start : start + alloc.sizes[i]])


def test_indexing() -> None:
    alloc = arrange(np.arange(9), 3)
    np.testing.assert_array_equal(alloc[-1], [6, 7, 8])
    np.testing.assert_array_equal(alloc[np.int64(1)], [3, 4, 5])
    with pytest.raises(IndexError, match=r"chunk index must be in range\(3\).*, got 3;"):
        alloc[3]
    with pytest.raises(IndexError, match=r"chunk index must be in range\(3\).*, got -4;"):
        alloc[-4]
    with pytest.raises(TypeError, match="chunk index must be an int"):
        alloc["0"]  # type: ignore[index]


def test_array_like_data() -> None:
    alloc = arrange([[1, 2], [3, 4], [5, 6]], 2)
    np.testing.assert_array_equal(alloc[0], [[1, 2], [3, 4]])
    assert isinstance(alloc.data, np.ndarray)


def test_more_workers_than_rows() -> None:
    alloc = arrange(np.arange(2), 5, shuffle=True)
    assert alloc.sizes == (1, 1, 0, 0, 0)
    assert [len(c) for c in alloc] == [1, 1, 0, 0, 0]
    np.testing.assert_array_equal(alloc.reassemble([c + 1 for c in alloc]), [1, 2])


def test_immutable() -> None:
    alloc = arrange(np.arange(4), 2)
    with pytest.raises(AttributeError, match="immutable"):
        alloc.n = 3  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        del alloc.sizes  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        alloc.selection(0).size = 3  # type: ignore[misc]


# -- shuffles ---------------------------------------------------------------------------------


def test_explicit_permutation_is_applied_exactly() -> None:
    perm = np.random.default_rng(5).permutation(1000)
    data = np.arange(1000) * 3
    alloc = arrange(data, [1, 2, 3], shuffle=perm)
    assert alloc.shuffled
    assert alloc.block_rows == 1
    np.testing.assert_array_equal(alloc.permutation, perm)
    np.testing.assert_array_equal(np.concatenate(list(alloc)), data[perm])
    np.testing.assert_array_equal(alloc.reassemble(list(alloc)), data)


def test_explicit_permutation_is_copied() -> None:
    perm = np.array([2, 0, 1])
    alloc = arrange(np.arange(3), 1, shuffle=perm)
    perm[0] = 0
    np.testing.assert_array_equal(alloc.permutation, [2, 0, 1])


def test_permutation_is_read_only() -> None:
    for shuffle in (True, [1, 0, 2, 3]):
        alloc = arrange(np.arange(4), 2, shuffle)
        assert alloc.permutation is not None
        assert not alloc.permutation.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            alloc.permutation[0] = 1


def test_permutation_is_cached() -> None:
    alloc = arrange(np.arange(50_000), 2, shuffle=True)
    assert alloc.permutation is alloc.permutation


@pytest.mark.parametrize(
    ("n", "expected"), [(0, 1), (8191, 1), (8192, 2), (100_000, 24), (20_000_000, 64)]
)
def test_auto_block_rows(n: int, expected: int) -> None:
    assert auto_block_rows(n) == expected


@pytest.mark.parametrize(
    ("n", "block_rows"), [(100, 7), (98, 7), (50_000, None), (5, 10), (64, 64)]
)
def test_block_shuffle_layout(n: int, block_rows: int | None) -> None:
    alloc = arrange(np.arange(n), 3, shuffle=11, block_rows=block_rows)
    b = alloc.block_rows
    order = np.asarray(alloc.plan.order)
    perm = alloc.permutation
    assert perm is not None
    positions = np.arange(n)
    np.testing.assert_array_equal(perm, order[positions // b] * b + positions % b)
    if n % b:
        assert order[-1] == len(order) - 1  # the short last block stays last
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))


def test_small_data_shuffles_rows_large_data_blocks() -> None:
    small = arrange(np.arange(1000), 2, shuffle=True)
    assert small.block_rows == 1
    large = arrange(np.arange(64 * 4688), 2, shuffle=True)
    assert large.block_rows == 64
    perm = large.permutation
    assert perm is not None
    # whole blocks of 64 consecutive rows move together
    assert np.all(np.diff(perm.reshape(-1, 64), axis=1) == 1)
    assert not np.array_equal(perm, np.arange(64 * 4688))


def test_same_seed_repeats_different_seeds_differ() -> None:
    data = np.arange(10_000)
    a, b, c = (arrange(data, 3, shuffle=s) for s in (7, 7, 8))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, z) for x, z in zip(a, c, strict=True))


def test_true_is_the_default_seed() -> None:
    data = np.arange(500)
    np.testing.assert_array_equal(
        arrange(data, 2, True).permutation, arrange(data, 2, DEFAULT_SEED).permutation
    )


def test_generators_are_used_and_advanced() -> None:
    data = np.arange(500)
    rng = np.random.default_rng(3)
    first, second = arrange(data, 2, rng), arrange(data, 2, rng)
    assert not np.array_equal(first.permutation, second.permutation)
    rs = np.random.RandomState(3)
    alloc = arrange(data, 2, rs)
    np.testing.assert_array_equal(alloc.reassemble(list(alloc)), data)


def test_block_rows_one_is_row_level() -> None:
    alloc = arrange(np.arange(100_000), 2, shuffle=1, block_rows=1)
    assert alloc.block_rows == 1
    perm = alloc.permutation
    assert perm is not None
    assert np.mean(np.diff(perm) == 1) < 0.01


def test_parse_shuffle_forms() -> None:
    assert parse_shuffle(None, 3) is None
    assert parse_shuffle(False, 3) is None
    assert parse_shuffle(np.bool_(False), 3) is None
    assert parse_shuffle(True, 3) == DEFAULT_SEED
    assert parse_shuffle(np.int32(4), 3) == 4
    rng = np.random.default_rng()
    assert parse_shuffle(rng, 3) is rng
    perm = parse_shuffle(np.array([1, 2, 0], dtype=np.uint8), 3)
    assert isinstance(perm, np.ndarray)
    assert perm.dtype == np.int64
    assert not perm.flags.writeable
    empty = parse_shuffle([], 0)
    assert isinstance(empty, np.ndarray)
    assert empty.size == 0


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("block_rows", [1, 5, None])
def test_non_contiguous_data(order: str, block_rows: int | None) -> None:
    base = np.asarray(np.arange(60_000.0).reshape(-1, 3), order=order)
    for data in (base, base[::2], base[:, 1]):
        alloc = arrange(data, [1, 2], shuffle=4, block_rows=block_rows)
        perm = alloc.permutation
        assert perm is not None
        np.testing.assert_array_equal(np.concatenate(list(alloc)), data[perm])
        np.testing.assert_array_equal(alloc.reassemble([c * 2 for c in alloc]), data * 2)


# -- selections -------------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, 2, [3, 1, 0, 2, 4, 9, 8, 7, 6, 5]])
def test_selection_take_and_put(shuffle: Any) -> None:
    data = np.arange(10) * 10
    alloc = arrange(data, [1, 2, 1], shuffle, block_rows=None if isinstance(shuffle, list) else 3)
    dest = np.full(10, -1)
    for i in range(len(alloc)):
        sel = alloc.selection(i)
        assert len(sel) == alloc.sizes[i]
        np.testing.assert_array_equal(sel.take(data), alloc[i])
        np.testing.assert_array_equal(sel.rows(), alloc.indices(i))
        out = np.empty(alloc.sizes[i], dtype=data.dtype)
        assert sel.take(data, out=out) is out
        np.testing.assert_array_equal(out, alloc[i])
        sel.put(dest, alloc[i] + 1)
    np.testing.assert_array_equal(dest, data + 1)


def test_selection_take_into_non_contiguous_out() -> None:
    data = np.arange(30)
    alloc = arrange(data, 2, shuffle=1, block_rows=4)
    out = np.zeros((alloc.sizes[0], 2), dtype=data.dtype)[:, 0]
    alloc.selection(0).take(data, out=out)
    np.testing.assert_array_equal(out, alloc[0])


def test_selection_is_cheap_to_pickle() -> None:
    n = 1_000_000
    alloc = arrange(np.zeros(n), 2, shuffle=True)
    assert alloc.block_rows == 64
    sel = alloc.selection(1)
    blob = pickle.dumps(sel)
    assert len(blob) < n * 8 // 64  # block numbers, not rows
    copy = pickle.loads(blob)
    assert isinstance(copy, ChunkSelection)
    np.testing.assert_array_equal(copy.rows(), sel.rows())
    assert "blocks=" in repr(sel)


def test_selection_for_shared_output() -> None:
    data = np.arange(20_000.0)
    alloc = arrange(data, 3, shuffle=True, block_rows=16)
    out = np.empty_like(data)
    for i in range(len(alloc)):
        sel = pickle.loads(pickle.dumps(alloc.selection(i)))
        sel.put(out, sel.take(data) ** 2)
    np.testing.assert_array_equal(out, data**2)


# -- reassemble -------------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, True, 9, [4, 2, 0, 1, 3, 5, 7, 6]])
def test_reassemble_undoes_shuffle(shuffle: Any) -> None:
    data = np.arange(16.0).reshape(8, 2)
    alloc = arrange(data, [1, 0, 3], shuffle, block_rows=None if isinstance(shuffle, list) else 3)
    np.testing.assert_array_equal(alloc.reassemble([np.sin(c) for c in alloc]), np.sin(data))


def test_reassemble_threaded_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mepa._allocation, "_PARALLEL_BYTES", 0)
    data = np.arange(10_000.0)
    alloc = arrange(data, 4, shuffle=True, block_rows=8)
    np.testing.assert_array_equal(alloc.reassemble([c + 1 for c in alloc]), data + 1)


def test_reassemble_promotes_dtypes() -> None:
    alloc = arrange(np.arange(4), 2)
    out = alloc.reassemble([np.array([1, 2], dtype=np.int32), np.array([0.5, 1.5])])
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [1, 2, 0.5, 1.5])


def test_reassemble_lists_are_array_likes() -> None:
    alloc = arrange(np.arange(4), 2, shuffle=[3, 2, 1, 0])
    np.testing.assert_array_equal(alloc.reassemble([[30, 20], [10, 0]]), [0, 10, 20, 30])


def test_reassemble_structures() -> None:
    data = np.arange(12.0)
    alloc = arrange(data, 3, shuffle=1, block_rows=2)
    results = [{"double": c * 2, "pair": (c, {"neg": -c})} for c in alloc]
    out = alloc.reassemble(results)
    assert set(out) == {"double", "pair"}
    np.testing.assert_array_equal(out["double"], data * 2)
    assert isinstance(out["pair"], tuple)
    np.testing.assert_array_equal(out["pair"][0], data)
    np.testing.assert_array_equal(out["pair"][1]["neg"], -data)


def test_reassemble_namedtuple() -> None:
    Stats = namedtuple("Stats", ["low", "high"])
    data = np.arange(10)
    alloc = arrange(data, 2, shuffle=True)
    out = alloc.reassemble([Stats(c - 1, c + 1) for c in alloc])
    assert isinstance(out, Stats)
    np.testing.assert_array_equal(out.low, data - 1)
    np.testing.assert_array_equal(out.high, data + 1)


def test_reassemble_without_reverse_shuffle() -> None:
    data = np.arange(10)
    alloc = arrange(data, [1, 1, 2], shuffle=True)
    sums = alloc.reassemble([c.sum() for c in alloc], reverse_shuffle=False)
    assert sums.shape == (3,)
    assert sums.sum() == data.sum()
    flat = alloc.reassemble(list(alloc), reverse_shuffle=False)
    np.testing.assert_array_equal(flat, np.concatenate(list(alloc)))
    ragged = alloc.reassemble([np.arange(i) for i in range(3)], reverse_shuffle=False)
    np.testing.assert_array_equal(ragged, [0, 0, 1])


def test_arrange_many() -> None:
    x, y = np.arange(10), np.arange(20.0).reshape(10, 2)
    alloc = arrange_many(x, y, weights=[1, 3], shuffle=True)
    assert alloc.data == alloc.arrays
    assert len(alloc.arrays) == 2
    for i, (cx, cy) in enumerate(alloc):
        np.testing.assert_array_equal(cx, x[alloc.indices(i)])
        np.testing.assert_array_equal(cy, y[alloc.indices(i)])
    out = alloc.reassemble([(cx * 2, cy.sum(axis=1)) for cx, cy in alloc])
    np.testing.assert_array_equal(out[0], x * 2)
    np.testing.assert_array_equal(out[1], y.sum(axis=1))


@pytest.mark.parametrize("shuffle", [False, True, []])
def test_empty_data(shuffle: Any) -> None:
    data = np.zeros((0, 3))
    alloc = arrange(data, 3, shuffle)
    assert alloc.sizes == (0, 0, 0)
    chunks = list(alloc)
    assert all(c.shape == (0, 3) for c in chunks)
    out = alloc.reassemble([c * 2 for c in chunks])
    assert out.shape == (0, 3)
    structured = alloc.reassemble([{"a": c} for c in chunks])
    assert structured["a"].shape == (0, 3)


# -- zero-copy reassemble ---------------------------------------------------------------------


def test_zero_copy_for_adjacent_views() -> None:
    data = np.arange(20.0).reshape(10, 2)
    alloc = arrange(data, [1, 0, 2, 1])
    shared = np.empty_like(data)
    results = []
    for i, chunk in enumerate(alloc):
        piece = shared[alloc.offsets[i] : alloc.offsets[i] + alloc.sizes[i]]
        np.multiply(chunk, 2, out=piece)
        results.append(piece)
    out = alloc.reassemble(results)
    assert np.shares_memory(out, shared)
    assert out.__array_interface__["data"][0] == shared.__array_interface__["data"][0]
    np.testing.assert_array_equal(out, data * 2)


def test_zero_copy_inside_a_larger_buffer_keeps_read_only() -> None:
    buffer = np.arange(30.0)
    buffer.flags.writeable = False
    alloc = arrange(np.zeros(20), 2)
    out = alloc.reassemble([buffer[5:15], buffer[15:25]])
    assert np.shares_memory(out, buffer)
    np.testing.assert_array_equal(out, np.arange(5.0, 25.0))
    assert not out.flags.writeable


def test_no_zero_copy_when_out_of_order_or_shuffled() -> None:
    buffer = np.arange(10.0)
    alloc = arrange(np.zeros(10), 2)
    swapped = alloc.reassemble([buffer[5:], buffer[:5]])
    assert not np.shares_memory(swapped, buffer)
    np.testing.assert_array_equal(swapped, np.r_[buffer[5:], buffer[:5]])
    gap = np.arange(12.0)
    out = alloc.reassemble([gap[:5], gap[6:11]])
    assert not np.shares_memory(out, gap)
    shuffled = arrange(np.arange(10.0), 2, shuffle=[1, 0, 2, 3, 4, 5, 6, 7, 8, 9])
    out = shuffled.reassemble([buffer[:5], buffer[5:]])
    assert not np.shares_memory(out, buffer)
    np.testing.assert_array_equal(out, [1, 0, 2, 3, 4, 5, 6, 7, 8, 9])


def test_zero_copy_single_chunk_returns_the_result() -> None:
    data = np.arange(5)
    alloc = arrange(data, [0, 1])
    result = data * 2
    assert alloc.reassemble([np.zeros(0, dtype=data.dtype), result]) is result


# -- serialisation ----------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, True, np.arange(99)[::-1].copy()])
def test_pickle_round_trip(shuffle: Any) -> None:
    data = np.arange(99.0)
    alloc = arrange(data, FLOAT_WEIGHTS, shuffle, block_rows=None)
    copy = pickle.loads(pickle.dumps(alloc))
    assert copy.plan == alloc.plan
    np.testing.assert_array_equal(copy.data, data)
    for a, b in zip(alloc, copy, strict=True):
        np.testing.assert_array_equal(a, b)
    if copy.permutation is not None:
        assert not copy.permutation.flags.writeable


@pytest.mark.parametrize("shuffle", [False, 3, [2, 0, 1, 3, 5, 4]])
def test_json_round_trip(shuffle: Any) -> None:
    data = np.arange(6) * 7
    alloc = arrange(data, [1.5, 0.25, 2], shuffle, block_rows=None)
    text = alloc.plan.model_dump_json()
    plan = AllocationPlan.model_validate_json(text)
    assert plan == alloc.plan
    rebuilt = Allocation.from_plan(plan, data)
    assert rebuilt.sizes == alloc.sizes
    assert rebuilt.block_rows == alloc.block_rows
    for a, b in zip(alloc, rebuilt, strict=True):
        np.testing.assert_array_equal(a, b)


def test_from_plan_many() -> None:
    x, y = np.arange(8), np.arange(8) * 1.0
    alloc = arrange_many(x, y, weights=2, shuffle=True)
    rebuilt = Allocation.from_plan(alloc.plan, alloc.data)
    for (a1, a2), (b1, b2) in zip(alloc, rebuilt, strict=True):
        np.testing.assert_array_equal(a1, b1)
        np.testing.assert_array_equal(a2, b2)


def test_plan_is_frozen_and_strict() -> None:
    plan = arrange(np.arange(4), 2).plan
    with pytest.raises(ValidationError):
        plan.n = 5  # type: ignore[misc]
    with pytest.raises(AllocationError, match="colour: extra inputs are not permitted"):
        AllocationPlan.model_validate({**plan.model_dump(), "colour": "red"})


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"sizes": (3, 1)}, "largest-remainder split"),
        ({"sizes": (4,)}, "one entry per weight"),
        ({"weights": (1.0, -1.0)}, "finite and >= 0"),
        ({"order": [0, 0, 1, 2]}, "duplicates"),
        ({"order": [0, 1]}, "must list the 4 blocks"),
        ({"order": [0, 1, 2, 7]}, "range"),
        ({"n": 5, "sizes": (3, 2), "block_rows": 2, "order": [2, 0, 1]}, "short last block"),
    ],
)
def test_inconsistent_plans_are_rejected(changes: dict[str, Any], match: str) -> None:
    plan = arrange(np.arange(4), 2, shuffle=[1, 0, 3, 2]).plan
    with pytest.raises(AllocationError, match=match):
        AllocationPlan.model_validate({**plan.model_dump(), **changes})
    # A plan built without validation is still checked when applied.
    unchecked = AllocationPlan.model_construct(**{**plan.model_dump(), **changes})
    with pytest.raises(AllocationError, match=match):
        Allocation.from_plan(unchecked, np.arange(unchecked.n))


# -- bad inputs -------------------------------------------------------------------------------

BAD_WEIGHTS = [
    ([-1.0, 2.0], r"weights must be finite and >= 0, got \[-1\.0, 2\.0\]"),
    ([float("nan"), 1.0], r"finite and >= 0, got \[nan, 1\.0\]"),
    ([1.0, float("inf")], r"finite and >= 0, got \[1\.0, inf\]"),
    ([0, 0.0], r"must not all be zero, got \[0\.0, 0\.0\]"),
    ([], "no workers"),
    (np.array([]), "no workers"),
    (0, "no workers"),
    (-2, "positive number of workers, got -2"),
    (True, "got True"),
    ("12", "int or a sequence of weights, got str"),
    (1.5, "int or a sequence of weights, got float"),
    ([[1, 2]], "1-d sequence of real numbers, got a 2-d array"),
    (["a", "b"], "1-d sequence of real numbers, got dtype <U1"),
    ([True, False], "got dtype bool"),
    ([1 + 2j], "got dtype complex128"),
    ([Worker("w-0"), 1.0], "all Worker or all numbers"),
    ({"a": 1}, "int or a sequence of weights, got dict"),
]


@pytest.mark.parametrize(("weights", "match"), BAD_WEIGHTS)
def test_bad_weights(weights: Any, match: str) -> None:
    with pytest.raises(AllocationError, match=match):
        parse_weights(weights)
    with pytest.raises(AllocationError, match=match):
        arrange(np.arange(5), weights)


BAD_SHUFFLES = [
    ([0, 0, 1, 2], r"permutation of range\(4\), got duplicates \(rows \[3\] never appear\)"),
    ([0, 1, 2], r"permutation of range\(4\), got 3 values \(wrong length\)"),
    ([0, 1, 2, 3, 4], r"got 5 values \(wrong length\)"),
    ([0, 1, 2, 4], r"got value 4 \(out of range\)"),
    ([0, -1, 2, 3], r"got value -1 \(out of range\)"),
    ([0.0, 1.0, 2.0, 3.0], r"dtype float64 \(not integers\)"),
    ([[0, 1, 2, 3]], r"got a 2-d array of shape \(1, 4\)"),
    (-1, "shuffle seed must be >= 0, got -1"),
    ("abc", "a permutation of range\\(4\\).*; got str: 'abc'"),
    (0.5, "a permutation of range\\(4\\).*; got float: 0.5"),
]


@pytest.mark.parametrize(("shuffle", "match"), BAD_SHUFFLES)
def test_bad_shuffles(shuffle: Any, match: str) -> None:
    with pytest.raises(AllocationError, match=match):
        parse_shuffle(shuffle, 4)
    with pytest.raises(AllocationError, match=match):
        arrange(np.arange(4), 2, shuffle)


@pytest.mark.parametrize(
    ("block_rows", "shuffle", "match"),
    [
        (0, True, "block_rows must be a positive int or None, got 0"),
        (-3, True, "got -3"),
        (2.0, True, "got 2.0"),
        (True, True, "got True"),
        (4, [3, 2, 1, 0], "block_rows must be None or 1 with an explicit permutation, got 4"),
    ],
)
def test_bad_block_rows(block_rows: Any, shuffle: Any, match: str) -> None:
    with pytest.raises(AllocationError, match=match):
        arrange(np.arange(4), 2, shuffle, block_rows=block_rows)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: arrange(np.float64(3.0), 2), "data must have at least one dimension.*0-d"),
        (lambda: arrange(np.array(3), 2), "got a 0-d array"),
        (lambda: arrange([[1, 2], [3]], 2), "data must be array-like"),
        (lambda: arrange_many(weights=2), "arrange_many needs at least one array, got none"),
        (
            lambda: arrange_many(np.arange(3), np.arange(4), weights=2),
            r"same number of rows, got lengths \[3, 4\]",
        ),
        (lambda: arrange_many(np.arange(3), np.array(1), weights=2), r"arrays\[1\].*0-d"),
        (
            lambda: Allocation.from_plan(arrange(np.arange(4), 2).plan, np.arange(5)),
            "data must have the plan's 4 rows, got 5",
        ),
        (
            lambda: arrange(np.arange(4), 2).selection(0).take(np.arange(5)),
            "source must have the 4 rows of the arranged data, got 5 rows",
        ),
        (
            lambda: arrange(np.arange(4), 2).selection(0).take(np.arange(4), out=np.empty(3)),
            r"out must have shape \(2,\) and dtype int64",
        ),
        (
            lambda: arrange(np.arange(4), 2).selection(0).put(np.zeros(4), np.zeros(3)),
            "values must have the 2 rows of the chunk, got 3 rows",
        ),
        (
            lambda: (
                arrange(np.arange(4), 2, True).selection(0).put(np.zeros((4, 2)), np.zeros((2, 3)))
            ),
            r"values must have trailing shape \(2,\), got \(3,\)",
        ),
    ],
)
def test_bad_data(call: Any, match: str) -> None:
    with pytest.raises(AllocationError, match=match):
        call()


def _alloc() -> Allocation:
    return arrange(np.arange(6.0), 3, shuffle=True)


@pytest.mark.parametrize(
    ("results", "kwargs", "match"),
    [
        ([np.zeros(2)] * 2, {}, r"one entry per chunk \(3\), got 2"),
        ([np.zeros(2)] * 4, {}, r"one entry per chunk \(3\), got 4"),
        (
            [np.zeros(2), np.zeros(3), np.zeros(2)],
            {},
            r"results\[1\] must have the 2 rows of chunk 1, got 3 rows.*reverse_shuffle=False",
        ),
        ([np.zeros(2), np.zeros(2), 1.0], {}, r"results\[2\] must have the 2 rows.*got a 0-d"),
        (
            [{"a": np.zeros(2)}, {"b": np.zeros(2)}, {"a": np.zeros(2)}],
            {},
            r"results\[1\] has structure \{'b': \*\} but results\[0\] has \{'a': \*\}",
        ),
        (
            [(np.zeros(2), np.zeros(2))] * 2 + [np.zeros(2)],
            {},
            r"results\[2\] has structure \* but results\[0\] has \(\*, \*\)",
        ),
        (
            [{"a": np.zeros((2, 2))}] * 2 + [{"a": np.zeros((2, 3))}],
            {},
            r"results\[2\]\['a'\] has trailing shape \(3,\) but results\[0\]\['a'\] has \(2,\)",
        ),
        (
            [np.zeros((2, 2)), np.zeros((1, 3)), np.zeros(2)],
            {"reverse_shuffle": False},
            r"results\[1\] has trailing shape \(3,\)",
        ),
    ],
)
def test_bad_results(results: list[Any], kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(AllocationError, match=match):
        _alloc().reassemble(results, **kwargs)
