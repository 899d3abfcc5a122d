"""Statistics, ratios and target checks: pure functions on timings.

Nothing here measures anything or touches a pool; the runner feeds these functions the seconds
it recorded and stores what they return. Keeping them pure keeps them testable with made-up
timings (``tests/test_benchmarks_smoke.py``).

Conventions
-----------
*speedup*
    ``reference_median / variant_median``: above 1 the variant is faster than the reference.
    The report gives it against the group's serial baseline and against its best competitor.
*time ratio*
    ``variant_median / reference_median``: the inverse, used by targets phrased as "at most
    1.3x the time of ...".
*rate*
    ``items / median``: tasks or events per second.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Op",
    "Summary",
    "Target",
    "TargetResult",
    "best_of",
    "evaluate_target",
    "rate",
    "speedup",
    "summarize",
    "time_ratio",
]

Op = Literal[">=", "<="]
TargetKind = Literal["speedup", "time_ratio", "net_time_ratio", "rate", "value"]
Status = Literal["PASS", "MISS", "N/A"]


@dataclass(frozen=True)
class Summary:
    """Median, minimum and maximum of the repetitions of one variant.

    Parameters
    ----------
    n
        Number of timed repetitions.
    median, min, max
        Seconds.
    """

    n: int
    median: float
    min: float
    max: float

    def as_dict(self) -> dict[str, float | int]:
        """Return the summary as a JSON-ready dict."""
        return {"n": self.n, "median": self.median, "min": self.min, "max": self.max}


def summarize(times: Sequence[float]) -> Summary:
    """Summarise repeated timings.

    Parameters
    ----------
    times
        Seconds, one per timed repetition (warm-ups excluded).

    Returns
    -------
    Summary
        Count, median, minimum and maximum.

    Raises
    ------
    ValueError
        If ``times`` is empty or holds a negative or non-finite value.

    Examples
    --------
    >>> summarize([0.3, 0.1, 0.2, 0.4])
    Summary(n=4, median=0.25, min=0.1, max=0.4)
    """
    if len(times) == 0:
        raise ValueError("times must hold at least one timing, got []")
    bad = [t for t in times if not math.isfinite(t) or t < 0]
    if bad:
        raise ValueError(f"times must be finite and >= 0, got {bad!r}")
    values = [float(t) for t in times]
    return Summary(
        n=len(values), median=statistics.median(values), min=min(values), max=max(values)
    )


def speedup(reference: float | None, value: float | None) -> float | None:
    """``reference / value``: how many times faster ``value`` is than ``reference``.

    Returns None when either side is missing or ``value`` is 0.

    Examples
    --------
    >>> speedup(2.0, 0.5)
    4.0
    >>> speedup(None, 0.5) is None
    True
    """
    if reference is None or value is None or value <= 0:
        return None
    return reference / value


def time_ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``: the time of ``value`` in units of ``reference``.

    Examples
    --------
    >>> time_ratio(1.3, 1.0)
    1.3
    """
    if reference is None or value is None or reference <= 0:
        return None
    return value / reference


def rate(items: int | None, median: float | None) -> float | None:
    """Items per second, or None when unknown.

    Examples
    --------
    >>> rate(10_000, 0.01)
    1000000.0
    """
    if items is None or median is None or median <= 0:
        return None
    return items / median


def best_of(medians: Mapping[str, float | None], names: Sequence[str]) -> str | None:
    """Name of the fastest of ``names`` (lowest median), ignoring those without a median.

    Ties go to the first in ``names``.

    Examples
    --------
    >>> best_of({"loky": 2.0, "joblib": 1.5, "mpire": None}, ["loky", "joblib", "mpire"])
    'joblib'
    >>> best_of({"loky": None}, ["loky"]) is None
    True
    """
    best: str | None = None
    for name in names:
        value = medians.get(name)
        if value is None:
            continue
        current = medians[best] if best is not None else None
        if current is None or value < current:
            best = name
    return best


@dataclass(frozen=True)
class Target:
    """A performance target from the issue tracker, checked against a run.

    Parameters
    ----------
    label
        What the report prints, e.g. ``"process >= 1.8x serial"``.
    kind
        ``"speedup"``: ``median(reference) / median(variant) op threshold``.
        ``"time_ratio"``: ``median(variant) / median(reference) op threshold``.
        ``"net_time_ratio"``: ``(median(variant) - median(offset)) /
        (median(reference) - median(offset))``, e.g. an import minus the interpreter start.
        ``"rate"``: ``items / median(variant) op threshold``.
        ``"value"``: ``values[variant] op threshold`` for a value computed by a check.
    variant
        Variant name, or value key for ``"value"``.
    threshold
        The bound.
    op
        ``">="`` or ``"<="``.
    reference
        Variant the ratio is taken against (ratio kinds only).
    offset
        Variant subtracted from both sides (``"net_time_ratio"`` only).
    """

    label: str
    kind: TargetKind
    variant: str
    threshold: float
    op: Op = ">="
    reference: str | None = None
    offset: str | None = None


@dataclass(frozen=True)
class TargetResult:
    """A target with the value measured and PASS, MISS or N/A (not measurable)."""

    target: Target
    value: float | None
    status: Status

    def as_dict(self) -> dict[str, object]:
        """Return the result as a JSON-ready dict."""
        t = self.target
        return {
            "label": t.label,
            "kind": t.kind,
            "variant": t.variant,
            "reference": t.reference,
            "offset": t.offset,
            "op": t.op,
            "threshold": t.threshold,
            "value": self.value,
            "status": self.status,
        }


def evaluate_target(
    target: Target,
    medians: Mapping[str, float | None],
    items: Mapping[str, int | None] | None = None,
    values: Mapping[str, float | None] | None = None,
) -> TargetResult:
    """Measure one target and compare it with its threshold.

    Parameters
    ----------
    target
        The target.
    medians
        Median seconds per variant name; None (or absent) for a variant that did not run.
    items
        Items per call per variant name, for ``"rate"`` targets.
    values
        Values computed by checks, for ``"value"`` targets.

    Returns
    -------
    TargetResult
        ``"N/A"`` when a needed median or value is missing.

    Examples
    --------
    >>> t = Target("process >= 1.8x serial", "speedup", "process", 1.8, reference="serial")
    >>> evaluate_target(t, {"process": 0.5, "serial": 1.0}).status
    'PASS'
    """
    value: float | None
    if target.kind == "speedup":
        ref = medians.get(target.reference) if target.reference else None
        value = speedup(ref, medians.get(target.variant))
    elif target.kind == "time_ratio":
        ref = medians.get(target.reference) if target.reference else None
        value = time_ratio(medians.get(target.variant), ref)
    elif target.kind == "net_time_ratio":
        ref = medians.get(target.reference) if target.reference else None
        off = medians.get(target.offset) if target.offset else None
        var = medians.get(target.variant)
        if ref is None or off is None or var is None:
            value = None
        else:
            value = time_ratio(var - off, ref - off)
    elif target.kind == "rate":
        value = rate((items or {}).get(target.variant), medians.get(target.variant))
    else:
        value = (values or {}).get(target.variant)
    if value is None or not math.isfinite(value):
        return TargetResult(target, None, "N/A")
    ok = value >= target.threshold if target.op == ">=" else value <= target.threshold
    return TargetResult(target, value, "PASS" if ok else "MISS")
