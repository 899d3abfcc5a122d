"""The counter behind ``progress.update(n=1)`` in tasks: the C accelerator and its fallback.

Both implementations run the same tests. The C one is the compiled ``mepa._tally`` if it is
importable (an installed or in-place build), else this module compiles ``mepa/_tally.c`` into
a temporary folder; without a C compiler those tests are skipped.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from mepa import _progress
from mepa._events import EventHub, run_task, unwrap_outcome

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]

BUILD = textwrap.dedent(
    """
    import sys
    from setuptools import Distribution, Extension

    out = sys.argv[1]
    dist = Distribution({"ext_modules": [Extension("mepa._tally", ["mepa/_tally.c"])]})
    cmd = dist.get_command_obj("build_ext")
    cmd.build_lib = out
    cmd.build_temp = out + "/tmp"
    cmd.ensure_finalized()
    cmd.run()
    """
)


@pytest.fixture(scope="module")
def c_tally(tmp_path_factory):
    """The ``Tally`` type of the C accelerator."""
    try:
        from mepa._tally import Tally
    except ImportError:
        pass
    else:
        return Tally
    out = tmp_path_factory.mktemp("tally-build")
    proc = subprocess.run(
        [sys.executable, "-c", BUILD, str(out)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=100,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot compile mepa/_tally.c here: {proc.stderr[-600:]}")
    path = next(out.rglob("_tally*.so"))
    loader = importlib.machinery.ExtensionFileLoader("mepa._tally", str(path))
    spec = importlib.util.spec_from_file_location("mepa._tally", path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module.Tally


@pytest.fixture(params=["c", "c-call", "python"])
def make_tally(request):
    """Build a new tally of one implementation; returns ``(tally, update)``.

    ``c`` updates through the bound ``add`` (what a task's ``progress.update`` is), ``c-call``
    by calling the tally itself.
    """
    if request.param.startswith("c"):
        kind = request.getfixturevalue("c_tally")
        bound = request.param == "c"

        def make():
            tally = kind()
            return tally, (tally.add if bound else tally)

    else:

        def make():
            tally = _progress._PyTally()
            return tally, _progress._adder(tally)

    return make


def test_every_form_of_update_adds_up(make_tally):
    tally, update = make_tally()
    assert not tally.pending
    update()
    update(2)
    update(n=3)
    update(np.int64(4))
    update(0.5)
    assert tally.pending
    total, others = tally.take()
    assert total + sum(others) == 10.5
    assert all(type(v) is not int for v in others)
    assert not tally.pending
    assert tally.take() == (0, [])


def test_values_that_are_not_numbers_are_handed_over(make_tally):
    tally, update = make_tally()
    update(1)
    update("two")
    update(None)
    total, others = tally.take()
    assert total == 1
    assert others == ["two", None]


def test_ints_beyond_64_bits_stay_exact(make_tally):
    tally, update = make_tally()
    update(2**62)
    update(2**62)  # the C sum would overflow: kept aside
    update(2**70)
    update(-5)
    total, others = tally.take()
    assert total + sum(others) == 2**63 + 2**70 - 5


def test_wrong_calls_raise_type_errors(make_tally):
    tally, update = make_tally()
    with pytest.raises(TypeError):
        update(1, 2)
    with pytest.raises(TypeError):
        update(m=1)
    assert tally.take() == (0, [])


def test_concurrent_updates_and_takes_lose_nothing(make_tally):
    tally, update = make_tally()
    per_thread, threads = 100_000, 4
    taken = []
    done = threading.Event()

    def work():
        for _ in range(per_thread):
            update(1)
        update(0.5)

    def drain():
        while not done.is_set():
            total, others = tally.take()
            taken.append(total + sum(others))

    drainer = threading.Thread(target=drain)
    drainer.start()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    done.set()
    drainer.join(60)
    total, others = tally.take()
    assert sum(taken) + total + sum(others) == threads * (per_thread + 0.5)


def test_c_tally_in_a_task_feeds_the_bar(c_tally, monkeypatch):
    monkeypatch.setattr(_progress, "_CTally", c_tally)
    hub = EventHub()
    try:
        progress = _progress.Progress(hub, total=10, file=io.StringIO(), disable=False)
        assert isinstance(progress._tally, c_tally)
        proxy = _progress._rebuild_progress("elsewhere", progress._ctx)  # as in a worker
        assert proxy.update == proxy._tally.add

        def task():
            progress.update()  # the host's object, in a task of the host's process
            progress.update(n=2)
            proxy.update(3)
            proxy.update()
            proxy.update(n=3)

        _, tokens = unwrap_outcome(run_task(task))
        arrived = threading.Event()
        hub.after(tokens, arrived.set)
        assert arrived.wait(10)
        assert progress.n == 10
        progress.close()
    finally:
        hub.close()
