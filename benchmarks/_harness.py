"""The runner: each variant set up alone, timed in pairs with its group's baseline, torn down.

Flow of one group with baseline B and variants V1, V2::

    setup B, warm-up B + check result    (untimed; B stays alive for the whole group)
    probe B's worker PIDs                (untimed, pools only; until every worker is up)
    for V in V1, V2 (group order):
        setup V                          (untimed: pools, clusters, input data)
        warm-up V + check result         (untimed)
        probe V's worker PIDs            (untimed, pools only; until every worker is up)
        repeat N times:  B, V            (timed, in pairs)
        probe V's worker PIDs again      (untimed: did a worker restart?)
        teardown V                       (always, also on error or timeout)
    probe B's worker PIDs again          (untimed)
    teardown B                           (always)

Only V's pools and clusters, and B's if it has any, are alive while V is timed. The runner
used to set up every variant of a group first and time them interleaved (A, B, C, A, B, C,
...), so the idle pools of the other engines ran next to the timed one: on a 2-core machine
an idle Dask ``LocalCluster`` (a scheduler thread in this process and 2 worker processes)
takes about 15% of one core in heartbeats and monitors, and each keep-alive mpire worker
about 1.5%; with them alive, mepa's ProcessExecutor ran ``cpu_map`` 1.62x faster than serial
instead of about 1.95x alone. A user runs one engine at a time, and so does the benchmark.

Within a pair, B and V see the same load, so V's speedup vs B is the median over its pairs of
``B_i / V_i``: robust to load that drifts from one variant's block to the next. The baseline's
own record pools the times of all its pairs. Two variants are compared through the baseline
(the ratio of their paired speedups). A group without a baseline times each variant alone in
its block (V, V, V, ...); ratios between its variants are ratios of medians.

A variant whose setup, warm-up or call raises is recorded as failed with the error text and
its block ends; the others go on. If the baseline fails, the variants after it are timed alone
and no variant of the group gets a paired speedup. A variant that needs a library that is not
installed is recorded as skipped. Each setup, call and teardown runs under a deadline (SIGALRM
on POSIX, main thread only) so a hung pool fails its variant instead of hanging the run.
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
from typing import Literal

from ._stats import (
    Pairs,
    Summary,
    Target,
    TargetResult,
    best_of,
    evaluate_target,
    rate,
    relative_speedup,
)
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
    "add_ratios",
    "deadline",
    "group_pairs",
    "run_group",
    "run_scenario",
]

Role = Literal["serial", "mepa", "competitor", "reference"]
Status = Literal["ok", "failed", "skipped"]
Log = Callable[[str], None]


@dataclass(frozen=True)
class RunConfig:
    """Options of one benchmark run.

    Parameters
    ----------
    quick
        Small sizes for a smoke test.
    repeat
        Timed repetitions per variant (warm-up excluded): pairs (baseline, variant) in a group
        with a baseline.
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
        Returns the PIDs of the pool's workers, probed after the warm-up (again until all
        :attr:`RunConfig.workers` answered) and after the last repetition (the baseline's:
        after the group's last block) to report worker restarts (loky restarts a worker whose
        memory grows by more than 300 MB between tasks).
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
        Called once, untimed, with an ``ExitStack`` that the runner closes at the end of the
        variant's block (the baseline's: at the end of its group): register every pool and
        cluster on it. Returns the timed callable or a :class:`Prepared`.
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
    """Variants timed one after another, each alone with the group's baseline.

    Parameters
    ----------
    name
        Shown as a sub-heading.
    timed
        What exactly the timed region covers.
    variants
        In the order their blocks run (the baseline's position does not matter).
    baseline
        Name of the variant every other one is timed in pairs with, and speedups are taken
        against; set up first and kept alive for the whole group. None: each variant is
        timed alone.
    unit
        What ``items`` counts (``"tasks"``, ``"events"``), for the rate column.
    repeat_scale
        Multiplies the run's repetitions for this group: more pairs for a target that
        compares times a few percent apart, on a machine whose noise is larger than that.
    """

    name: str
    timed: str
    variants: tuple[Variant, ...]
    baseline: str | None = None
    unit: str | None = None
    repeat_scale: int = 1


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
        ``build(config) -> ScenarioPlan``; must not start pools itself (variants do that in
        their setup, so a failure stays local to one variant and a pool lives only during its
        variant's block).
    """

    name: str
    title: str
    description: str
    build: Callable[[RunConfig], ScenarioPlan]


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
    # The baseline's time before each of ``times``; None when not timed in pairs.
    baseline_times: list[float] | None = None
    prepared: Prepared | None = None
    pids_before: list[int] | None = None
    pids_after: list[int] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

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


#: Seconds the first PID probe keeps probing for workers that are still starting.
WORKER_START_WAIT = 10.0


def _probe_started(state: _State, config: RunConfig) -> list[int] | None:
    """The PIDs of a pool's workers once all ``config.workers`` of them answered a probe.

    A pool may still be starting its last workers when a short warm-up returns; they must be up
    before timing starts (a worker starting during the first timed call would count as slow
    and as a restart). Probes until every worker was seen, for at most
    :data:`WORKER_START_WAIT` seconds; returns the union of the PIDs seen.
    """
    pids = _probe(state, config.call_timeout)
    give_up = time.perf_counter() + WORKER_START_WAIT
    while pids is not None and len(pids) < config.workers:
        if time.perf_counter() > give_up:
            state.notes.append(
                f"only {len(pids)} of {config.workers} workers answered the PID probe within "
                f"{WORKER_START_WAIT:g} s of the warm-up"
            )
            break
        more = _probe(state, config.call_timeout)
        if more is None:
            break
        pids = sorted(set(pids) | set(more))
    return pids


def _prepare(state: _State, stack: contextlib.ExitStack, config: RunConfig, log: Log) -> bool:
    """Set up ``state``'s variant on ``stack``, warm it up, check its result, probe its PIDs.

    The probe waits for every worker to start, so that no worker starts during the timed calls.

    Returns
    -------
    bool
        True if the variant is ready to be timed; otherwise it is marked skipped or failed.
    """
    name = state.variant.name
    missing = _missing(state.variant.requires)
    if missing:
        state.status = "skipped"
        state.notes.append(f"not installed: {', '.join(missing)}")
        log(f"  {name}: skipped ({', '.join(missing)} not installed)")
        return False
    try:
        with deadline(config.call_timeout, f"{name} setup"):
            prepared = state.variant.setup(stack)
    except Exception as exc:  # noqa: BLE001
        state.fail(exc, "setup")
        log(f"  {name}: {state.error}")
        return False
    if not isinstance(prepared, Prepared):
        prepared = Prepared(call=prepared)
    state.prepared = prepared
    if prepared.note:
        state.notes.append(prepared.note)
    for i in range(config.warmup):
        try:
            _, out = _time_call(state, config.call_timeout)
            if i == 0 and prepared.check:
                prepared.check(out)
            del out
        except Exception as exc:  # noqa: BLE001
            state.fail(exc, "warm-up")
            log(f"  {name}: {state.error}")
            return False
    state.pids_before = _probe_started(state, config)
    return True


def _time(state: _State, config: RunConfig, log: Log, context: str = "") -> float | None:
    """Time one call of ``state``'s variant; on error mark it failed and return None."""
    try:
        seconds, _ = _time_call(state, config.call_timeout)
    except Exception as exc:  # noqa: BLE001
        state.fail(exc, f"repetition {len(state.times) + 1}{context}")
        log(f"  {state.variant.name}: {state.error}")
        return None
    state.times.append(seconds)
    return seconds


def _time_block(
    state: _State, base: _State | None, repeat: int, config: RunConfig, log: Log
) -> None:
    """Time ``state`` ``repeat`` times, each call right after one of ``base`` if it is ok.

    If the baseline fails during the block, the variant's remaining calls are timed alone.
    """
    baseline_times: list[float] | None = [] if base is not None and base.ok else None
    state.baseline_times = baseline_times
    for _ in range(repeat):
        before: float | None = None
        if base is not None and base.ok:
            before = _time(base, config, log, f" (paired with {state.variant.name})")
        seconds = _time(state, config, log)
        if seconds is None:
            return
        if baseline_times is not None and before is not None:
            baseline_times.append(before)


def _teardown(
    stack: contextlib.ExitStack, what: str, config: RunConfig, errors: list[str], log: Log
) -> None:
    """Close ``stack`` under the deadline; record an error instead of raising it."""
    try:
        with deadline(config.call_timeout, f"{what} teardown"):
            stack.close()
    except Exception as exc:  # noqa: BLE001
        errors.append(f"{what}: {_error_text(exc)}")
        log(f"  teardown of {errors[-1]}")


def _block_summary(state: _State, baseline: str | None) -> str:
    """One log line: status, median and paired speedup of a variant."""
    text = f"  {state.variant.name}: {state.status}"
    if state.times:
        median = _summarize(state.times).median
        text += f", median {median * 1e3:.1f} ms over {len(state.times)}"
    if baseline is not None and state.baseline_times:
        pairs = Pairs(baseline, tuple(state.baseline_times), tuple(state.times))
        value = pairs.speedup()
        if value is not None:
            text += f", {value:.2f}x {baseline} (paired)"
    return text


def run_group(
    group: Group, config: RunConfig, log: Log = lambda s: None
) -> tuple[list[dict[str, object]], str | None]:
    """Time each variant of ``group`` alone, in pairs with the baseline (see the module doc).

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
        ``"failed"`` or ``"skipped"``), ``error``, ``times``, ``stats``, ``rate``, the worker
        PIDs before and after, and, for a variant timed in pairs, ``baseline_times`` (the
        baseline's time just before each of ``times``) and ``paired_ratios`` (baseline time /
        variant time, pair by pair); both are None otherwise, and for every variant if the
        baseline failed. The baseline's ``times`` pool all its pairs. Ratios are added by
        :func:`add_ratios`.
    teardown_error : str or None
        The errors raised while closing pools, by variant, if any.
    """
    states = [_State(v) for v in group.variants]
    base = next((s for s in states if s.variant.name == group.baseline), None)
    repeat = config.repeat * group.repeat_scale
    errors: list[str] = []
    base_stack = contextlib.ExitStack()
    try:
        if base is not None and _prepare(base, base_stack, config, log):
            log(f"  {base.variant.name}: baseline, set up for the whole group")
        for state in states:
            if state is base:
                continue
            stack = contextlib.ExitStack()
            try:
                if _prepare(state, stack, config, log):
                    _time_block(state, base, repeat, config, log)
                    if state.ok:
                        state.pids_after = _probe(state, config.call_timeout)
            finally:
                # Close this variant's pools before the next variant is set up.
                _teardown(stack, state.variant.name, config, errors, log)
            log(_block_summary(state, group.baseline if base is not None and base.ok else None))
        if base is not None:
            # Fewer pairs than repetitions (the other variants failed or were skipped): time
            # the baseline alone for the rest.
            while base.ok and len(base.times) < repeat:
                _time(base, config, log, " (alone)")
            if base.ok:
                base.pids_after = _probe(base, config.call_timeout)
            log(_block_summary(base, None))
    finally:
        _teardown(base_stack, f"{group.baseline} (baseline)", config, errors, log)

    paired = base is not None and base.ok
    records: list[dict[str, object]] = []
    for state in states:
        v = state.variant
        summary: Summary | None = _summarize(state.times) if state.times else None
        median = summary.median if summary else None
        respawned: int | None = None
        if state.pids_before is not None and state.pids_after is not None:
            respawned = len(set(state.pids_after) - set(state.pids_before))
        pairs: Pairs | None = None
        if paired and group.baseline is not None and state.baseline_times:
            pairs = Pairs(group.baseline, tuple(state.baseline_times), tuple(state.times))
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
                "baseline_times": list(pairs.baseline_times) if pairs else None,
                "paired_ratios": pairs.ratios() if pairs else None,
                "pids_before": state.pids_before,
                "pids_after": state.pids_after,
                "respawned_workers": respawned,
            }
        )
    return records, "; ".join(errors) or None


def group_pairs(records: Sequence[Mapping[str, object]], baseline: str | None) -> dict[str, Pairs]:
    """The pairs of each variant of a group timed with its baseline, by variant name.

    Parameters
    ----------
    records
        Records of one group, as returned by :func:`run_group`.
    baseline
        Name of the group's baseline, or None (no pairs).
    """
    if baseline is None:
        return {}
    pairs = {}
    for r in records:
        baseline_times, times = r.get("baseline_times"), r.get("times")
        if isinstance(baseline_times, list) and baseline_times and isinstance(times, list):
            pairs[str(r["name"])] = Pairs(baseline, tuple(baseline_times), tuple(times))
    return pairs


def add_ratios(records: list[dict[str, object]], baseline: str | None) -> str | None:
    """Add ``speedup_vs_baseline`` and ``speedup_vs_best_competitor`` to each record.

    When the group's variants were timed in pairs with the baseline, the speedup vs the
    baseline is each variant's paired speedup (1 for the baseline itself), the best
    competitor is the one with the highest, and the speedup vs it is the ratio of the two
    paired speedups. Otherwise (no baseline, or it failed) there is no speedup vs the
    baseline, and the best competitor is the one with the lowest median, compared by medians.

    Parameters
    ----------
    records
        Records of one group, as returned by :func:`run_group`; changed in place.
    baseline
        Name of the baseline variant, or None.

    Returns
    -------
    str or None
        The best competitor's name (``role == "competitor"``).
    """
    medians = {str(r["name"]): _median(r) for r in records}
    pairs = group_pairs(records, baseline)
    competitors = [str(r["name"]) for r in records if r["role"] == "competitor"]
    paired_baseline = baseline if pairs else None
    if paired_baseline is not None:
        # Each variant's time in units of the baseline's, from its own pairs.
        relative = {n: relative_speedup(n, paired_baseline, medians, pairs) for n in medians}
        best = best_of(relative, competitors)
    else:
        best = best_of(medians, competitors)
    for r in records:
        name = str(r["name"])
        r["speedup_vs_baseline"] = (
            relative_speedup(paired_baseline, name, medians, pairs) if paired_baseline else None
        )
        r["speedup_vs_best_competitor"] = (
            relative_speedup(best, name, medians, pairs) if best else None
        )
    return best


def _median(record: Mapping[str, object]) -> float | None:
    stats = record.get("stats")
    if isinstance(stats, dict):
        return float(stats["median"])
    return None


def run_scenario(
    scenario: Scenario, config: RunConfig, log: Log = lambda s: None
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
        plan = scenario.build(config)
    except Exception as exc:  # noqa: BLE001
        result["error"] = f"build: {_error_text(exc)}"
        result["duration_s"] = time.perf_counter() - t0
        return result
    result["params"] = plan.params
    result["notes"] = list(plan.notes)

    groups: list[dict[str, object]] = []
    medians: dict[str, float | None] = {}
    items: dict[str, int | None] = {}
    pairs: dict[str, Pairs] = {}
    for group in plan.groups:
        log(f" group {group.name!r}")
        try:
            records, teardown_error = run_group(group, config, log)
        except Exception as exc:  # a bug in the runner itself: keep the other scenarios going  # noqa: BLE001
            records, teardown_error = [], None
            result["error"] = f"group {group.name}: {_error_text(exc)}"
        best = add_ratios(records, group.baseline)
        pairs.update(group_pairs(records, group.baseline))
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
        evaluate_target(t, medians, items, values, pairs) for t in plan.targets
    ]
    result["targets"] = [t.as_dict() for t in evaluated]
    result["duration_s"] = time.perf_counter() - t0
    return result
