"""One thread of OpenMP, BLAS, numexpr and numba per worker, on every executor, unless asked."""

from __future__ import annotations

import os

import pytest

import mepa
from mepa._threads import THREAD_VARIABLES, thread_env

pytestmark = pytest.mark.timeout(120)


def thread_variables() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in THREAD_VARIABLES}


def numba_threads() -> tuple[int, int]:
    import numba

    return numba.get_num_threads(), numba.config.NUMBA_NUM_THREADS


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_thread_env_keeps_what_the_host_sets() -> None:
    env = thread_env(1, environ={"NUMBA_NUM_THREADS": "3"})
    assert env["NUMBA_NUM_THREADS"] == "3"
    assert {env[name] for name in THREAD_VARIABLES if name != "NUMBA_NUM_THREADS"} == {"1"}
    assert thread_env(4, environ={})["OMP_NUM_THREADS"] == "4"
    assert thread_env(None, environ={}) == {}


@pytest.mark.usefixtures("clean_environ")
def test_process_workers_get_one_thread_of_each_library() -> None:
    with mepa.ProcessExecutor(2) as executor:
        seen = executor.gather([executor.submit_to(w, thread_variables) for w in executor.workers])
    assert seen == [dict.fromkeys(THREAD_VARIABLES, "1")] * 2


@pytest.mark.usefixtures("clean_environ")
def test_process_workers_get_the_threads_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    with mepa.ProcessExecutor(1, inner_threads=2) as executor:
        assert executor.submit_and_gather(thread_variables) == dict.fromkeys(
            THREAD_VARIABLES, "2"
        )
    monkeypatch.setenv("NUMBA_NUM_THREADS", "2")
    with mepa.ProcessExecutor(1) as executor:
        seen = executor.submit_and_gather(thread_variables)
    assert seen["NUMBA_NUM_THREADS"] == "2"
    assert seen["OMP_NUM_THREADS"] == "1"


@pytest.mark.parametrize("factory", [mepa.ProcessExecutor, mepa.ThreadExecutor])
@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_inner_threads_must_be_a_positive_int(factory: type[mepa.Executor], bad: object) -> None:
    with pytest.raises(mepa.WorkerSpecError, match=r"inner_threads must be a positive int"):
        factory(1, inner_threads=bad)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
        factory(1, inner_threads=bad)  # type: ignore[call-arg]


@pytest.mark.usefixtures("clean_environ")
def test_numba_in_a_process_worker_runs_one_thread() -> None:
    pytest.importorskip("numba")
    with mepa.ProcessExecutor(1) as executor:
        assert executor.submit_and_gather(numba_threads) == (1, 1)


def test_numba_in_each_pool_thread_runs_one_thread() -> None:
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2 or "NUMBA_NUM_THREADS" in os.environ:
        pytest.skip("needs numba allowed more than one thread")
    with mepa.ThreadExecutor(2) as executor:
        seen = executor.gather([executor.submit_to(w, numba_threads) for w in executor.workers])
        assert [threads for threads, _ in seen] == [1, 1]
    with mepa.ThreadExecutor(1, inner_threads=2) as executor:
        assert executor.submit_and_gather(numba_threads)[0] == 2
    with mepa.ThreadExecutor(1, inner_threads=None) as executor:
        assert executor.submit_and_gather(numba_threads)[0] == numba.config.NUMBA_NUM_THREADS
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS  # the caller's is untouched


@pytest.mark.dask
@pytest.mark.slow
@pytest.mark.usefixtures("clean_environ")
def test_embedded_dask_workers_get_one_thread_of_each_library() -> None:
    with mepa.DaskExecutor(None, n_workers=1) as executor:
        assert executor.submit_and_gather(thread_variables) == dict.fromkeys(
            THREAD_VARIABLES, "1"
        )
