"""Statistics, ratios and target checks: pure functions on timings.

Nothing here measures anything or touches a pool; the runner feeds these functions the seconds
it recorded and stores what they return. Keeping them pure keeps them testable with made-up
timings (``tests/test_benchmarks_smoke.py``).

Conventions
-----------
*pairs*
    The runner times each variant in pairs with its group's baseline: baseline, variant,
    baseline, variant, ... (:class:`Pairs`). Both calls of a pair see the same load, so the
    ratio within a pair is robust to load that drifts between one variant's block and the next.
*speedup*
    How many times faster the variant is than a reference: above 1 it is faster. Against the
    variant's own baseline, the median over the pairs of ``baseline_i / variant_i``; between
    two variants paired with the same baseline, the ratio of their paired speedups (through the
    baseline); otherwise ``reference_median / variant_median`` (:func:`relative_speedup`).
*time ratio*
    The inverse of the speedup, used by targets phrased as "at most 1.3x the time of ...".
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
    "Pairs",
    "Summary",
    "Target",
    "TargetResult",
    "best_of",
    "evaluate_target",
    "rate",
    "relative_speedup",
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
    """Name of the fastest of ``names`` (lowest time), ignoring those without one.

    ``medians`` maps names to medians, or to times relative to a common baseline.
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
class Pairs:
    """Timings of a variant taken in pairs with its group's baseline.

    Parameters
    ----------
    baseline
        Name of the baseline.
    baseline_times
        Seconds of the baseline's calls; ``baseline_times[i]`` was timed just before
        ``times[i]``.
    times
        Seconds of the variant's calls.

    Raises
    ------
    ValueError
        If the two sequences are empty or differ in length.

    Examples
    --------
    >>> p = Pairs("serial", (1.0, 2.0, 0.9), (0.5, 0.8, 0.5))
    >>> p.ratios()
    [2.0, 2.5, 1.8]
    >>> p.speedup(), round(p.net_time(), 3)
    (2.0, -0.5)
    """

    baseline: str
    baseline_times: tuple[float, ...]
    times: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.times or len(self.times) != len(self.baseline_times):
            raise ValueError(
                f"pairs need as many baseline times as variant times, at least one, got "
                f"{len(self.baseline_times)} and {len(self.times)}"
            )

    def ratios(self) -> list[float | None]:
        """``baseline_i / variant_i`` for each pair (None where the variant took 0 s)."""
        return [speedup(b, v) for b, v in zip(self.baseline_times, self.times, strict=True)]

    def speedup(self) -> float | None:
        """Median over the pairs of ``baseline_i / variant_i``: the paired speedup."""
        ratios = [r for r in self.ratios() if r is not None]
        return statistics.median(ratios) if ratios else None

    def net_time(self) -> float:
        """Median over the pairs of ``variant_i - baseline_i``: the variant's cost net of it."""
        return statistics.median(
            v - b for b, v in zip(self.baseline_times, self.times, strict=True)
        )


def _quotient(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def relative_speedup(
    reference: str,
    variant: str,
    medians: Mapping[str, float | None],
    pairs: Mapping[str, Pairs] | None = None,
) -> float | None:
    """How many times faster ``variant`` is than ``reference``, from pairs where they tie them.

    Parameters
    ----------
    reference, variant
        Variant names.
    medians
        Median seconds per variant name.
    pairs
        The pairs of each variant timed with a baseline, by variant name.

    Returns
    -------
    float or None
        ``variant``'s paired speedup if ``reference`` is its baseline; the inverse of
        ``reference``'s if ``variant`` is the baseline; the ratio of the two paired speedups if
        both were paired with one baseline; else ``median(reference) / median(variant)``.
        None when a needed figure is missing.

    Examples
    --------
    >>> pairs = {
    ...     "process": Pairs("serial", (1.0, 1.2, 1.0), (0.5, 0.5, 0.4)),
    ...     "loky": Pairs("serial", (1.0, 1.0, 1.1), (2.0, 2.0, 2.2)),
    ... }
    >>> medians = {"serial": 1.0, "process": 0.5, "loky": 2.0, "other": 0.25}
    >>> relative_speedup("serial", "process", medians, pairs)
    2.4
    >>> relative_speedup("process", "serial", medians, pairs)
    0.4166666666666667
    >>> relative_speedup("loky", "process", medians, pairs)
    4.8
    >>> relative_speedup("serial", "other", medians, pairs)
    4.0
    """
    pairs = pairs or {}
    of_variant, of_reference = pairs.get(variant), pairs.get(reference)
    if of_variant is not None and of_variant.baseline == reference:
        return of_variant.speedup()
    if of_reference is not None and of_reference.baseline == variant:
        return _quotient(1.0, of_reference.speedup())
    if (
        of_variant is not None
        and of_reference is not None
        and of_variant.baseline == of_reference.baseline
    ):
        return _quotient(of_variant.speedup(), of_reference.speedup())
    return speedup(medians.get(reference), medians.get(variant))


@dataclass(frozen=True)
class Target:
    """A performance target from the issue tracker, checked against a run.

    Parameters
    ----------
    label
        What the report prints, e.g. ``"process >= 1.8x serial"``.
    kind
        ``"speedup"``: how many times faster ``variant`` is than ``reference``
        (:func:`relative_speedup`: from the pairs when they tie the two, else from medians).
        ``"time_ratio"``: the inverse, ``variant``'s time in units of ``reference``'s.
        ``"net_time_ratio"``: ``variant``'s time net of ``offset``'s over ``reference``'s net of
        it, e.g. an import minus the interpreter start. When both were timed in pairs with
        ``offset`` as baseline, each net time is the median over its pairs of
        ``variant_i - offset_i``; else ``(median(variant) - median(offset)) /
        (median(reference) - median(offset))``.
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
    pairs: Mapping[str, Pairs] | None = None,
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
    pairs
        Pairs of each variant timed with its group's baseline, by variant name, for the ratio
        kinds.

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
    pairs = pairs or {}
    ref = target.reference
    if target.kind == "speedup":
        value = relative_speedup(ref, target.variant, medians, pairs) if ref else None
    elif target.kind == "time_ratio":
        value = relative_speedup(target.variant, ref, medians, pairs) if ref else None
    elif target.kind == "net_time_ratio":
        value = _net_time_ratio(target, medians, pairs)
    elif target.kind == "rate":
        value = rate((items or {}).get(target.variant), medians.get(target.variant))
    else:
        value = (values or {}).get(target.variant)
    if value is None or not math.isfinite(value):
        return TargetResult(target, None, "N/A")
    ok = value >= target.threshold if target.op == ">=" else value <= target.threshold
    return TargetResult(target, value, "PASS" if ok else "MISS")


def _net_time_ratio(
    target: Target, medians: Mapping[str, float | None], pairs: Mapping[str, Pairs]
) -> float | None:
    """Value of a ``"net_time_ratio"`` target: from the pairs if both sides were paired."""
    if target.reference is None or target.offset is None:
        return None
    of_variant, of_reference = pairs.get(target.variant), pairs.get(target.reference)
    if (
        of_variant is not None
        and of_reference is not None
        and of_variant.baseline == of_reference.baseline == target.offset
    ):
        return _quotient(of_variant.net_time(), of_reference.net_time())
    ref, off = medians.get(target.reference), medians.get(target.offset)
    var = medians.get(target.variant)
    if ref is None or off is None or var is None:
        return None
    return time_ratio(var - off, ref - off)
