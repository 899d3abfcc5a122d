"""The runner: set up variants, warm them up, time them interleaved, tear them down.

Flow of one group of variants A, B, C::

    setup A, setup B, setup C          (untimed: pools, clusters, input data)
    warm-up A, B, C  + check results   (untimed)
    probe worker PIDs                  (untimed, process variants only)
    repeat N times:  A, B, C           (timed, interleaved so drift hits every variant alike)
    probe worker PIDs again            (untimed: did a worker restart?)
    teardown C, B, A                   (always, also on error or timeout)

A variant whose setup or call raises is recorded as failed with the error text and dropped
from the remaining repetitions; the others go on. A variant that needs a library that is not
installed is recorded as skipped. Each setup and call runs under a deadline (SIGALRM on POSIX,
main thread only) so a hung pool fails its variant instead of hanging the run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._stats import Summary, Target, TargetResult, best_of, evaluate_target, rate, speedup
from ._stats import summarize as _summarize

__all__ = [
    "Check",
    "Group",
    "Measured",
    "Prepared",
    "RunConfig",
    "Scenario",
    "ScenarioPlan",
    "Variant",
    "VariantTimeout",
    "deadline",
    "run_group",
    "run_scenario",
]

Role = Literal["serial", "mepa", "competitor", "reference"]
Status = Literal["ok", "failed", "skipped"]


@dataclass(frozen=True)
class RunConfig:
    """Options of one benchmark run.

    Parameters
    ----------
    quick
        Small sizes for a smoke test.
    repeat
        Timed repetitions per variant (warm-up excluded).
    workers
        Workers of every pool and cluster.
    warmup
        Untimed calls per variant before the timed ones.
    call_timeout
        Seconds one setup or call may take before its variant is failed.
    """

    quick: bool = False
    repeat: int = 5
    workers: int = 2
    warmup: int = 1
    call_timeout: float = 600.0

    def size(self, full: int, quick: int) -> int:
        """``quick`` in quick mode, else ``full``."""
        return quick if self.quick else full


@dataclass(frozen=True)
class Measured:
    """Return this from a timed call to report a duration measured inside the call.

    Used when the timed region is narrower than the call, e.g. "first task on a new pool"
    (the pool's shutdown is not timed) or "import in a fresh interpreter" (a subprocess).
    """

    seconds: float
    value: object = None


@dataclass
class Prepared:
    """What a variant's setup hands back to the runner.

    Parameters
    ----------
    call
        The timed callable.
    check
        Called on the warm-up result (untimed); raise to mark the variant as failed because its
        output is wrong.
    pids
        Returns the PIDs of the pool's workers, probed after the warm-up and after the last
        repetition to report worker restarts (loky restarts a worker whose memory grows by more
        than 300 MB between tasks).
    note
        Free text for the report (e.g. the chunksize a tuning pass chose).
    """

    call: Callable[[], object]
    check: Callable[[object], None] | None = None
    pids: Callable[[], Sequence[int]] | None = None
    note: str = ""


Setup = Callable[[contextlib.ExitStack], "Prepared | Callable[[], object]"]


@dataclass(frozen=True)
class Variant:
    """One contender in a group.

    Parameters
    ----------
    name
        Unique within its scenario, e.g. ``"mepa-process"``.
    role
        ``"serial"`` (plain NumPy or Python, no pool), ``"mepa"``, ``"competitor"``
        (another library; the fastest one is the "best competitor") or ``"reference"``
        (a point of comparison that is neither, e.g. ``python -c pass``).
    setup
        Called once, untimed, with an ``ExitStack`` that the runner closes after the group:
        register every pool and cluster on it. Returns the timed callable or a
        :class:`Prepared`.
    description
        One line for the report.
    requires
        Importable modules this variant needs; if one is missing it is skipped with a note.
    items
        Tasks or events per call, for rates.
    """

    name: str
    role: Role
    setup: Setup
    description: str = ""
    requires: tuple[str, ...] = ()
    items: int | None = None


@dataclass(frozen=True)
class Group:
    """Variants timed together, interleaved, with one baseline.

    Parameters
    ----------
    name
        Shown as a sub-heading.
    timed
        What exactly the timed region covers.
    variants
        In the order they are interleaved.
    baseline
        Name of the variant speedups are taken against, or None.
    unit
        What ``items`` counts (``"tasks"``, ``"events"``), for the rate column.
    """

    name: str
    timed: str
    variants: tuple[Variant, ...]
    baseline: str | None = None
    unit: str | None = None


@dataclass
class Check:
    """An untimed check: a small table plus named values that targets can use.

    Parameters
    ----------
    name
        Title.
    description
        What is checked and how.
    columns
        Column headers.
    rows
        Table rows (strings, numbers or None).
    values
        Numbers referenced by ``"value"`` targets.
    error
        Set by the runner when the check raised.
    """

    name: str
    description: str
    columns: list[str] = field(default_factory=list)
    rows: list[list[object]] = field(default_factory=list)
    values: dict[str, float | None] = field(default_factory=dict)
    error: str | None = None


@dataclass
class ScenarioPlan:
    """What a scenario's builder returns: parameters, groups, checks and targets."""

    params: dict[str, object]
    groups: list[Group]
    checks: list[Callable[[], Check]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Scenario:
    """A named benchmark: title, description and a builder of its plan.

    Parameters
    ----------
    name
        Used by ``--scenario NAME``.
    title
        Heading in the report.
    description
        What is computed and why.
    build
        ``build(config, resources) -> ScenarioPlan``; must not start pools itself (variants do
        that in their setup, so a failure stays local to one variant).
    """

    name: str
    title: str
    description: str
    build: Callable[[RunConfig, Any], ScenarioPlan]


class VariantTimeout(Exception):
    """A setup or timed call exceeded :attr:`RunConfig.call_timeout`."""


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`VariantTimeout` in the main thread if the block runs longer than ``seconds``.

    A no-op off the main thread or where ``SIGALRM`` does not exist. Lock waits (``Future.result``)
    are interrupted by the signal on POSIX, so a hung pool is caught too.
    """
    usable = (
        hasattr(signal, "SIGALRM")
        and threading.current_thread() is threading.main_thread()
        and seconds > 0
    )
    if not usable:
        yield
        return

    def _on_alarm(signum: int, frame: object) -> None:
        raise VariantTimeout(f"{what} took more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _error_text(exc: BaseException) -> str:
    """One line naming the exception, plus the innermost frame for context."""
    text = f"{type(exc).__name__}: {exc}".strip()
    tb = traceback.extract_tb(exc.__traceback__)
    if tb:
        frame = tb[-1]
        text += f" (at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})"
    return text


def _missing(modules: Sequence[str]) -> list[str]:
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except Exception:  # a parent package that fails to import: treat as missing  # noqa: BLE001
            found = False
        if not found:
            missing.append(name)
    return missing


@dataclass
class _State:
    variant: Variant
    status: Status = "ok"
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    prepared: Prepared | None = None
    pids_before: list[int] | None = None
    pids_after: list[int] | None = None

    def fail(self, exc: BaseException, when: str) -> None:
        self.status = "failed"
        self.error = f"{when}: {_error_text(exc)}"


def _time_call(state: _State, timeout: float) -> tuple[float, object]:
    assert state.prepared is not None
    with deadline(timeout, f"{state.variant.name} call"):
        t0 = time.perf_counter()
        out = state.prepared.call()
        elapsed = time.perf_counter() - t0
    if isinstance(out, Measured):
        return out.seconds, out.value
    return elapsed, out


def _probe(state: _State, timeout: float) -> list[int] | None:
    if state.prepared is None or state.prepared.pids is None:
        return None
    try:
        with deadline(timeout, f"{state.variant.name} PID probe"):
            return sorted({int(p) for p in state.prepared.pids()})
    except Exception as exc:  # noqa: BLE001
        state.notes.append(f"PID probe failed: {_error_text(exc)}")
        return None


def run_group(
    group: Group, config: RunConfig, log: Callable[[str], None] = lambda s: None
) -> tuple[list[dict[str, object]], str | None]:
    """Set up, warm up, time (interleaved) and tear down the variants of ``group``.

    Parameters
    ----------
    group
        The variants.
    config
        Repetitions, warm-ups and the per-call deadline.
    log
        Progress messages (one line each).

    Returns
    -------
    records : list of dict
        One JSON-ready record per variant, in group order, with ``status`` (``"ok"``,
        ``"failed"`` or ``"skipped"``), ``error``, ``times``, ``stats``, ``rate`` and the worker
        PIDs before and after. Ratios are added by :func:`add_ratios`.
    teardown_error : str or None
        The error raised while closing the group's pools, if any.
    """
    states = [_State(v) for v in group.variants]
    stack = contextlib.ExitStack()
    teardown_error: str | None = None
    try:
        for state in states:
            missing = _missing(state.variant.requires)
            if missing:
                state.status = "skipped"
                state.notes.append(f"not installed: {', '.join(missing)}")
                log(f"  {state.variant.name}: skipped ({', '.join(missing)} not installed)")
                continue
            try:
                with deadline(config.call_timeout, f"{state.variant.name} setup"):
                    prepared = state.variant.setup(stack)
            except Exception as exc:  # noqa: BLE001
                state.fail(exc, "setup")
                log(f"  {state.variant.name}: {state.error}")
                continue
            if not isinstance(prepared, Prepared):
                prepared = Prepared(call=prepared)
            state.prepared = prepared
            if prepared.note:
                state.notes.append(prepared.note)

        active = [s for s in states if s.status == "ok"]

        for i in range(config.warmup):
            for state in active:
                if state.status != "ok":
                    continue
                try:
                    _, out = _time_call(state, config.call_timeout)
                    if i == 0 and state.prepared is not None and state.prepared.check:
                        state.prepared.check(out)
                    del out
                except Exception as exc:  # noqa: BLE001
                    state.fail(exc, "warm-up")
                    log(f"  {state.variant.name}: {state.error}")

        # Probe after the warm-up: by then every worker has started.
        for state in active:
            if state.status == "ok":
                state.pids_before = _probe(state, config.call_timeout)

        for _ in range(config.repeat):
            for state in active:
                if state.status != "ok":
                    continue
                try:
                    seconds, _ = _time_call(state, config.call_timeout)
                except Exception as exc:  # noqa: BLE001
                    state.fail(exc, f"repetition {len(state.times) + 1}")
                    log(f"  {state.variant.name}: {state.error}")
                    continue
                state.times.append(seconds)

        for state in active:
            if state.status == "ok":
                state.pids_after = _probe(state, config.call_timeout)
    finally:
        # Close every pool and cluster, in reverse order of creation, even on error.
        try:
            with deadline(config.call_timeout, "teardown"):
                stack.close()
        except Exception as exc:  # noqa: BLE001
            teardown_error = _error_text(exc)
            log(f"  teardown: {teardown_error}")

    records: list[dict[str, object]] = []
    for state in states:
        v = state.variant
        summary: Summary | None = _summarize(state.times) if state.times else None
        median = summary.median if summary else None
        respawned: int | None = None
        if state.pids_before is not None and state.pids_after is not None:
            respawned = len(set(state.pids_after) - set(state.pids_before))
        records.append(
            {
                "name": v.name,
                "role": v.role,
                "description": v.description,
                "status": state.status,
                "error": state.error,
                "notes": state.notes,
                "times": state.times,
                "stats": summary.as_dict() if summary else None,
                "items": v.items,
                "rate": rate(v.items, median),
                "pids_before": state.pids_before,
                "pids_after": state.pids_after,
                "respawned_workers": respawned,
            }
        )
        log(
            f"  {v.name}: {state.status}"
            + (f", median {median * 1e3:.1f} ms over {summary.n}" if summary and median else "")
        )
    return records, teardown_error


def add_ratios(records: list[dict[str, object]], baseline: str | None) -> str | None:
    """Add ``speedup_vs_baseline`` and ``speedup_vs_best_competitor`` to each record.

    Parameters
    ----------
    records
        Records of one group, as returned by :func:`run_group`; changed in place.
    baseline
        Name of the baseline variant, or None.

    Returns
    -------
    str or None
        The best competitor's name (lowest median among ``role == "competitor"``).
    """
    medians = {str(r["name"]): _median(r) for r in records}
    competitors = [str(r["name"]) for r in records if r["role"] == "competitor"]
    best = best_of(medians, competitors)
    for r in records:
        med = medians[str(r["name"])]
        r["speedup_vs_baseline"] = speedup(medians.get(baseline), med) if baseline else None
        r["speedup_vs_best_competitor"] = speedup(medians.get(best), med) if best else None
    return best


def _median(record: Mapping[str, object]) -> float | None:
    stats = record.get("stats")
    if isinstance(stats, dict):
        return float(stats["median"])
    return None


def run_scenario(
    scenario: Scenario,
    config: RunConfig,
    resources: object,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, object]:
    """Build and run one scenario; never raises for a failure inside it.

    Returns
    -------
    dict
        JSON-ready: title, description, params, groups (with variant records), checks,
        targets (with PASS/MISS/N/A), notes, duration and, if the builder itself failed, error.
    """
    t0 = time.perf_counter()
    result: dict[str, object] = {
        "name": scenario.name,
        "title": scenario.title,
        "description": scenario.description,
        "params": {},
        "groups": [],
        "checks": [],
        "targets": [],
        "notes": [],
        "error": None,
    }
    try:
        plan = scenario.build(config, resources)
    except Exception as exc:  # noqa: BLE001
        result["error"] = f"build: {_error_text(exc)}"
        result["duration_s"] = time.perf_counter() - t0
        return result
    result["params"] = plan.params
    result["notes"] = list(plan.notes)

    groups: list[dict[str, object]] = []
    medians: dict[str, float | None] = {}
    items: dict[str, int | None] = {}
    for group in plan.groups:
        log(f" group {group.name!r}")
        try:
            records, teardown_error = run_group(group, config, log)
        except Exception as exc:  # a bug in the runner itself: keep the other scenarios going  # noqa: BLE001
            records, teardown_error = [], None
            result["error"] = f"group {group.name}: {_error_text(exc)}"
        best = add_ratios(records, group.baseline)
        for r in records:
            medians[str(r["name"])] = _median(r)
            items[str(r["name"])] = r["items"]  # type: ignore[assignment]
        groups.append(
            {
                "name": group.name,
                "timed": group.timed,
                "baseline": group.baseline,
                "best_competitor": best,
                "unit": group.unit,
                "teardown_error": teardown_error,
                "variants": records,
            }
        )
    result["groups"] = groups

    checks: list[dict[str, object]] = []
    values: dict[str, float | None] = {}
    for make_check in plan.checks:
        try:
            with deadline(config.call_timeout, "check"):
                check = make_check()
        except Exception as exc:  # noqa: BLE001
            name = getattr(make_check, "__name__", "check")
            check = Check(name=name, description="", error=_error_text(exc))
        values.update(check.values)
        checks.append(
            {
                "name": check.name,
                "description": check.description,
                "columns": check.columns,
                "rows": check.rows,
                "values": check.values,
                "error": check.error,
            }
        )
    result["checks"] = checks

    evaluated: list[TargetResult] = [
        evaluate_target(t, medians, items, values) for t in plan.targets
    ]
    result["targets"] = [t.as_dict() for t in evaluated]
    result["duration_s"] = time.perf_counter() - t0
    return result
