"""map_array: same results as a serial call on every executor, structured outputs, checks."""

from __future__ import annotations

import doctest
import io
import math
import re
from collections.abc import Iterator

import numpy as np
import pytest

import mepa
import mepa._map
from mepa._errors import AllocationError, MepaError
from mepa._map import CHUNKS_PER_WORKER, PIECES_PER_CHUNK, map_array

from .executors import EXECUTOR_KINDS, make_executor

pytestmark = pytest.mark.timeout(60)

N_WORKERS = 2


@pytest.fixture(scope="module", params=EXECUTOR_KINDS)
def executor(request: pytest.FixtureRequest) -> Iterator[mepa.Executor]:
    with make_executor(request.param, N_WORKERS) as ex:
        yield ex


def wave(x: np.ndarray) -> np.ndarray:
    return np.sin(x) * x


def combine(x: np.ndarray, y: np.ndarray, *, scale: float = 1.0, offset: np.ndarray) -> tuple:
    return (x[:, None] * y * scale + offset, {"norm": np.linalg.norm(y, axis=1), "x": x})


def chunk_length(x: np.ndarray) -> np.ndarray:
    return np.full(len(x), len(x))


DATA = np.linspace(-3.0, 3.0, 1001)
Y = np.random.default_rng(3).normal(size=(1001, 3))


# ------------------------------------------------------------------------------ results


def test_one_array_equals_serial(executor: mepa.Executor) -> None:
    assert np.array_equal(map_array(wave, DATA, executor=executor), wave(DATA))


def test_several_arrays_and_broadcast_keywords(executor: mepa.Executor) -> None:
    offset = np.arange(3.0)
    got = map_array(combine, DATA, Y, executor=executor, scale=2.0, offset=offset)
    want = combine(DATA, Y, scale=2.0, offset=offset)
    assert isinstance(got, tuple)
    assert set(got[1]) == {"norm", "x"}
    assert np.array_equal(got[0], want[0])
    assert np.array_equal(got[1]["norm"], want[1]["norm"])
    assert np.array_equal(got[1]["x"], DATA)


@pytest.mark.parametrize("shuffle", [True, 7, np.random.default_rng(5)])
def test_shuffle_keeps_the_original_order(executor: mepa.Executor, shuffle: object) -> None:
    got = map_array(combine, DATA, Y, executor=executor, shuffle=shuffle, offset=0.0)
    assert np.array_equal(got[1]["x"], DATA)
    assert np.array_equal(got[0], DATA[:, None] * Y)


def test_shuffle_with_block_rows(executor: mepa.Executor) -> None:
    got = map_array(wave, DATA, executor=executor, shuffle=1, block_rows=10)
    assert np.array_equal(got, wave(DATA))


def test_progress_bar_counts_rows_in_several_chunks_per_worker(executor: mepa.Executor) -> None:
    out = io.StringIO()
    got = map_array(
        chunk_length, DATA, executor=executor, progress={"file": out, "desc": "rows done"}
    )
    calls = CHUNKS_PER_WORKER * N_WORKERS * PIECES_PER_CHUNK  # fn runs on pieces of chunks
    assert set(np.unique(got)) <= {len(DATA) // calls, math.ceil(len(DATA) / calls)}
    text = out.getvalue()
    assert "rows done" in text
    assert f"{len(DATA)}/{len(DATA)}" in text
    assert "row/s" in text


def test_the_bar_advances_within_chunks_not_by_whole_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each task advances the bar several times while its chunk runs (rows of a piece at a
    time), and the results are those without a bar."""
    from mepa._progress import Progress

    steps: list[int] = []
    update = Progress.update

    def counted(self: Progress, n: int = 1) -> None:
        steps.append(n)
        update(self, n)

    monkeypatch.setattr(Progress, "update", counted)
    out = io.StringIO()
    with mepa.ThreadExecutor(1) as ex:  # one worker: CHUNKS_PER_WORKER chunks
        got = map_array(wave, DATA, executor=ex, shuffle=3, progress={"file": out})
        plain = map_array(wave, DATA, executor=ex, shuffle=3)
    assert np.array_equal(got, plain)
    assert np.array_equal(got, wave(DATA))
    assert sum(steps) == len(DATA)
    assert len(steps) > CHUNKS_PER_WORKER
    assert max(steps) < math.ceil(len(DATA) / CHUNKS_PER_WORKER)  # smaller than a chunk
    assert f"{len(DATA)}/{len(DATA)}" in out.getvalue()


def test_progress_true_writes_to_stderr(
    executor: mepa.Executor, capsys: pytest.CaptureFixture[str]
) -> None:
    got = map_array(wave, DATA, executor=executor, progress=True, shuffle=True)
    assert np.array_equal(got, wave(DATA))
    assert f"{len(DATA)}/{len(DATA)}" in capsys.readouterr().err


def test_list_inputs_and_empty_arrays(executor: mepa.Executor) -> None:
    assert np.array_equal(map_array(np.negative, [1, 2, 3], executor=executor), [-1, -2, -3])
    empty = map_array(wave, np.zeros(0), executor=executor)
    assert empty.shape == (0,)


def test_sub_executor() -> None:
    with mepa.ThreadExecutor(3) as ex:
        sub = ex.extract_by_name("thread-1")
        assert np.array_equal(map_array(wave, DATA, executor=sub, progress={"disable": True}),
                              wave(DATA))


def test_default_executor_is_a_process_executor_per_call() -> None:
    got = map_array(combine, DATA, Y, offset=1.0, shuffle=True)
    assert np.array_equal(got[0], DATA[:, None] * Y + 1.0)


def test_docstring_example() -> None:
    result = doctest.testmod(mepa._map, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


# ------------------------------------------------------------------------------ errors


def needs_two(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return x + y


def wrong_length(x: np.ndarray) -> np.ndarray:
    return x[:-1]


def fails(x: np.ndarray) -> np.ndarray:
    raise ZeroDivisionError("no rows for you")


def scalar(x: np.ndarray) -> float:
    return float(x.sum())


BAD_CALLS = [
    pytest.param((42, DATA), {}, TypeError, "fn must be callable, got int: 42", id="fn"),
    pytest.param((wave,), {}, AllocationError, "needs at least one array after fn", id="none"),
    pytest.param(
        (needs_two, DATA, 5), {}, AllocationError,
        r"arrays\[1\] must be an array with at least one dimension, got int 5; pass values "
        "shared by every chunk as keywords", id="scalar",
    ),
    pytest.param(
        (needs_two, DATA, DATA[:-1]), {}, AllocationError,
        r"same number of rows, got lengths \[1001, 1000\]", id="lengths",
    ),
    pytest.param(
        (needs_two, DATA), {"y": 1, "x": 2}, TypeError,
        r"broadcast keyword\(s\) \['x'\] name parameter\(s\) of needs_two that already receive "
        r"the array chunks \['x'\]", id="clash",
    ),
    pytest.param(
        (wave, DATA), {"nope": 1}, TypeError, r"wave\(x: 'np.ndarray'\) -> 'np.ndarray' cannot "
        r"be called with 1 array chunk\(s\) and keywords \['nope'\]", id="unbindable",
    ),
    pytest.param(
        (wave, DATA), {"executor": "process"}, TypeError,
        "executor must be a mepa Executor or None, got str", id="executor",
    ),
    pytest.param(
        (wave, DATA), {"progress": "yes"}, TypeError,
        "progress must be a bool or a dict of tqdm options, got str", id="progress",
    ),
    pytest.param(
        (wave, DATA), {"shuffle": -1}, AllocationError, "shuffle seed must be >= 0, got -1",
        id="shuffle",
    ),
    pytest.param(
        (wave, mepa.arrange(DATA, 2)), {}, AllocationError,
        r"arrays\[0\] must be an array, got an Allocation", id="allocation",
    ),
]


@pytest.mark.parametrize(("args", "kwargs", "error", "message"), BAD_CALLS)
def test_bad_inputs_are_rejected_before_any_task(
    args: tuple, kwargs: dict, error: type[Exception], message: str
) -> None:
    with mepa.LinearExecutor(2) as ex:
        kwargs = {"executor": ex, **kwargs}
        with pytest.raises(error, match=message):
            map_array(*args, **kwargs)


def test_data_errors_are_mepa_errors() -> None:
    with pytest.raises(MepaError):
        map_array(wave)


@pytest.mark.parametrize(
    ("fn", "error", "message"),
    [
        (wrong_length, AllocationError, r"must have the \d+ rows of chunk 0, got \d+ rows"),
        (scalar, AllocationError, "got a 0-d value"),
        (fails, ZeroDivisionError, "no rows for you"),
    ],
)
def test_bad_results_and_task_errors(
    executor: mepa.Executor, fn: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        map_array(fn, DATA, executor=executor)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        map_array(fn, DATA, executor=executor, progress={"disable": True})  # type: ignore[arg-type]


def test_builtin_without_signature_is_not_checked_early() -> None:
    with mepa.LinearExecutor(1) as ex, pytest.raises(TypeError, match=re.escape("nope")):
        map_array(np.add, DATA, DATA, executor=ex, nope=1)


def test_a_result_per_chunk_is_pointed_to_reduce_not_to_an_option_map_array_lacks() -> None:
    with mepa.LinearExecutor(2) as ex, pytest.raises(AllocationError) as info:
        map_array(scalar, DATA, executor=ex)
    assert "reduce=" in str(info.value)
    assert "reverse_shuffle" not in str(info.value)


def sum_of_squares(x: np.ndarray) -> float:
    return float(np.sum(x * x))


@pytest.mark.parametrize("shuffle", [False, 7])
def test_reduce_combines_the_per_chunk_results(executor: mepa.Executor, shuffle: object) -> None:
    expected = float(np.sum(DATA * DATA))
    total = map_array(sum_of_squares, DATA, executor=executor, shuffle=shuffle, reduce=sum)
    assert math.isclose(total, expected, rel_tol=1e-12)
    parts = map_array(
        sum_of_squares, DATA, executor=executor, shuffle=shuffle, reduce=list,
        progress={"disable": True},
    )
    assert len(parts) == CHUNKS_PER_WORKER * N_WORKERS * PIECES_PER_CHUNK
    assert math.isclose(math.fsum(parts), expected, rel_tol=1e-12)


def test_reduce_must_be_callable() -> None:
    with pytest.raises(TypeError, match=r"reduce must be a callable .* got int: 3; pass e\.g\."):
        map_array(wave, DATA, reduce=3)  # type: ignore[arg-type]


def count_to(n: int, bar: mepa.Progress) -> int:
    for _ in range(n):
        bar.update(1)
    return n


def test_the_100_percent_line_is_written_once(executor: mepa.Executor) -> None:
    """Every update is drawn (mininterval=0), and the bar reaches its total before it closes:
    the final line is drawn once, at close, not once for the last update and again at close
    (in a log or a captured stream, where ``\\r`` does not overwrite, that shows twice)."""
    out = io.StringIO()
    map_array(wave, DATA, executor=executor, progress={"file": out, "mininterval": 0})
    assert out.getvalue().count(f"{len(DATA)}/{len(DATA)}") == 1
    out = io.StringIO()
    bar = executor.progress(total=40, file=out, mininterval=0)
    assert executor.gather([executor.submit(count_to, 20, bar) for _ in range(2)]) == [20, 20]
    assert bar.n == 40
    bar.close()
    assert out.getvalue().count("40/40") == 1
    assert out.getvalue().endswith("\n")
