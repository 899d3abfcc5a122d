"""Scenario ``startup``: the cost of ``import mepa`` and of a new pool's first task.

Import group: wall time of a fresh interpreter running ``import mepa``, against one running
``pass`` (the interpreter's own start-up, subtracted) and one importing ``numpy``, ``pydantic``
and ``tqdm`` (mepa's light dependencies: importing mepa should cost no more than they do).
Check: after ``import mepa``, neither ``loky`` nor ``distributed`` is in ``sys.modules`` (heavy
backends load lazily).

First-task group: construct an executor, submit one task, wait for its result; shutdown is not
timed. mepa ProcessExecutor against ``loky.ProcessPoolExecutor``, the group's baseline: each
mepa variant is timed in pairs with it. mepa keeps its worker pool alive between executors, so
it is measured cold (pool stopped first, the fair comparison with a new loky executor, and the
one the target uses) and warm (pool left by a previous executor). Either way the pool is
stopped after the measurement (untimed), so that no idle mepa pool runs while loky starts;
the warm variant restarts it, and waits for every worker, before its measurement.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from .._harness import Check, Group, Measured, Prepared, RunConfig, Scenario, ScenarioPlan, Variant
from .._stats import Target
from . import _common as c
from . import _kernels as k

__all__ = ["STARTUP", "python_env", "run_python"]

#: Modules that must not be loaded by ``import mepa``.
HEAVY_MODULES = ("loky", "distributed", "dask", "joblib")
MUST_BE_LAZY = ("loky", "distributed")

_IMPORT_MEPA = (
    "import mepa\n"
    "if getattr(mepa, '__file__', None) is None:\n"
    "    raise SystemExit('mepa is a namespace package here: mepa/__init__.py is missing')\n"
)


# ``import mepa`` loads names on first use; this is what a user pays before the first call.
_IMPORT_API = (
    "import mepa\n"
    "mepa.arrange, mepa.Allocation, mepa.ProcessExecutor, mepa.ThreadExecutor, mepa.Worker\n"
)


_BYTECODE_CACHE = os.path.join(tempfile.gettempdir(), "mepa-bench-pycache")


def python_env() -> dict[str, str]:
    """Environment for child interpreters: the checkout first on ``PYTHONPATH``.

    Bytecode caching is on, in a cache folder outside the checkout: an installed package has
    its ``.pyc`` files (pip compiles them), a checkout run with ``PYTHONDONTWRITEBYTECODE``
    would recompile mepa's sources on every import and time the compiler instead. The
    warm-up run fills the cache.
    """
    env = dict(os.environ)
    parts = [str(c.REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = _BYTECODE_CACHE
    return env


def run_python(code: str, timeout: float = 120.0) -> tuple[float, str]:
    """Run ``python -c code`` in a fresh interpreter; return (wall seconds, stdout).

    Raises
    ------
    RuntimeError
        If the child exits with a non-zero status (its last stderr line is in the message).
    """
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=python_env(),
        cwd=c.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        last = lines[-1] if lines else "(no output)"
        raise RuntimeError(f"python -c exited with {proc.returncode}: {last}")
    return elapsed, proc.stdout


def _subprocess_variant(code: str) -> Callable[[contextlib.ExitStack], Prepared]:
    def setup(stack: contextlib.ExitStack) -> Prepared:
        def run() -> Measured:
            seconds, _ = run_python(code)
            return Measured(seconds)

        return Prepared(call=run)

    return setup


def _lazy_check() -> Check:
    code = (
        _IMPORT_MEPA
        + "import json, sys\n"
        + f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))\n"
    )
    _, out = run_python(code)
    loaded = set(json.loads(out.strip().splitlines()[-1]))
    check = Check(
        name="lazy imports",
        description="Modules in sys.modules of a fresh interpreter after `import mepa`.",
        columns=["module", "loaded after import mepa", "must be lazy"],
    )
    for name in HEAVY_MODULES:
        check.rows.append([name, "yes" if name in loaded else "no", name in MUST_BE_LAZY])
    check.values["heavy_loaded"] = float(len(loaded & set(MUST_BE_LAZY)))
    return check


def _build(config: RunConfig) -> ScenarioPlan:
    w = config.workers

    def mepa_first(warm: bool) -> Callable[[contextlib.ExitStack], Prepared]:
        def setup(stack: contextlib.ExitStack) -> Prepared:
            cls = c.mepa_attr("ProcessExecutor")
            stack.callback(c.stop_mepa_worker_pools)

            def first_task(ex: Any) -> Any:
                submit = getattr(ex, "submit", None)
                return submit(k.inc, 1).result() if submit else next(iter(ex.map(k.inc, [1])))

            def run() -> Measured:
                # Untimed: cold = no worker pool alive; warm = a previous executor's pool is,
                # with every worker started (the pool was stopped after the last call).
                if warm:
                    with cls(w) as previous:
                        c.mepa_pids(previous, w)()
                else:
                    c.stop_mepa_worker_pools()
                with contextlib.ExitStack() as inner:
                    t0 = time.perf_counter()
                    ex = inner.enter_context(cls(w))
                    value = first_task(ex)
                    elapsed = time.perf_counter() - t0
                # Untimed: no idle mepa pool while the baseline (a new loky pool) is timed.
                c.stop_mepa_worker_pools()
                return Measured(elapsed, value)

            return Prepared(call=run, check=_value_check(2))

        return setup

    def loky_first(stack: contextlib.ExitStack) -> Prepared:
        import loky

        def run() -> Measured:
            t0 = time.perf_counter()
            ex = loky.ProcessPoolExecutor(w)
            try:
                value = ex.submit(k.inc, 1).result()
                elapsed = time.perf_counter() - t0
            finally:
                ex.shutdown(wait=True)
            return Measured(elapsed, value)

        return Prepared(call=run, check=_value_check(2))

    groups = [
        Group(
            name="import",
            timed="wall time of `python -c CODE` in a fresh interpreter (subprocess)",
            baseline="python-pass",
            variants=(
                Variant("python-pass", "reference", _subprocess_variant("pass"), "python -c pass"),
                Variant("import-mepa", "mepa", _subprocess_variant(_IMPORT_MEPA), "import mepa"),
                Variant(
                    "import-mepa-api",
                    "mepa",
                    _subprocess_variant(_IMPORT_API),
                    "import mepa, then touch arrange and the local executors (loads them)",
                ),
                Variant(
                    "import-numpy-pydantic-tqdm",
                    "reference",
                    _subprocess_variant("import numpy, pydantic, tqdm"),
                    "import numpy, pydantic, tqdm",
                    requires=("pydantic", "tqdm"),
                ),
            ),
        ),
        Group(
            name="first task",
            timed="construct the executor, submit one task, wait for the result (no shutdown)",
            baseline="loky-first-task",
            variants=(
                Variant(
                    "mepa-first-task",
                    "mepa",
                    mepa_first(warm=False),
                    f"new ProcessExecutor({w}), submit(inc, 1).result(), no worker pool alive",
                ),
                Variant(
                    "mepa-first-task-warm",
                    "mepa",
                    mepa_first(warm=True),
                    "same, reusing the worker pool a previous executor left alive",
                ),
                Variant(
                    "loky-first-task",
                    "competitor",
                    loky_first,
                    f"loky.ProcessPoolExecutor({w}).submit(inc, 1).result()",
                    requires=("loky",),
                ),
            ),
        ),
    ]
    return ScenarioPlan(
        params={"python": sys.executable, "workers": w},
        groups=groups,
        checks=[_lazy_check],
        targets=[
            Target(
                "import cost <= numpy+pydantic+tqdm (net of interpreter start)",
                "net_time_ratio",
                "import-mepa",
                1.0,
                op="<=",
                reference="import-numpy-pydantic-tqdm",
                offset="python-pass",
            ),
            Target(
                "import mepa + its API <= numpy+pydantic+tqdm (net of interpreter start)",
                "net_time_ratio",
                "import-mepa-api",
                1.0,
                op="<=",
                reference="import-numpy-pydantic-tqdm",
                offset="python-pass",
            ),
            Target("no loky/distributed after import mepa", "value", "heavy_loaded", 0.0, op="<="),
            Target(
                "first task within 1.2x loky",
                "time_ratio",
                "mepa-first-task",
                1.2,
                op="<=",
                reference="loky-first-task",
            ),
        ],
        notes=[
            (
                "Speedups in the import group are against `python -c pass`: below 1 by design; "
                "the target compares costs net of the interpreter's start-up (each import's "
                "median over its pairs of import time minus `pass` time)."
            ),
            "Speedups in the first task group are against a new loky executor.",
        ],
    )


def _value_check(expected: object) -> Callable[[object], None]:
    def check(out: object) -> None:
        if out != expected:
            raise AssertionError(f"first task returned {out!r}, expected {expected!r}")

    return check


STARTUP = Scenario(
    name="startup",
    title="Start-up: import cost and first task",
    description=(
        "How much `import mepa` costs a fresh interpreter, whether heavy backends stay lazy, "
        "and how long a new process pool takes to return its first result."
    ),
    build=_build,
)
