"""Writing a run's results: Markdown tables, JSON and one PNG bar chart per scenario."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "fmt_rate",
    "fmt_ratio",
    "fmt_time",
    "render_markdown",
    "write_charts",
    "write_json",
]


def fmt_time(seconds: float | None) -> str:
    """Seconds in a readable unit.

    Examples
    --------
    >>> fmt_time(1.5), fmt_time(0.0123), fmt_time(4.2e-5), fmt_time(None)
    ('1.50 s', '12.3 ms', '42.0 µs', '-')
    """
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} µs"


def fmt_ratio(value: float | None) -> str:
    """A ratio as ``1.85x``.

    Examples
    --------
    >>> fmt_ratio(1.849), fmt_ratio(0.0123), fmt_ratio(None)
    ('1.85x', '0.012x', '-')
    """
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def fmt_rate(value: float | None, unit: str | None) -> str:
    """Items per second with a k/M suffix.

    Examples
    --------
    >>> fmt_rate(1_234_567, "tasks"), fmt_rate(950.0, "events"), fmt_rate(None, "tasks")
    ('1.23M tasks/s', '950 events/s', '-')
    """
    if value is None:
        return "-"
    unit = unit or "items"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M {unit}/s"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k {unit}/s"
    return f"{value:.0f} {unit}/s"


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _status(record: Mapping[str, Any]) -> str:
    if record["status"] == "ok":
        return "ok"
    if record["status"] == "skipped":
        return "skipped: " + "; ".join(record.get("notes") or [])
    return "FAILED"


def _group_lines(group: Mapping[str, Any]) -> list[str]:
    variants = group["variants"]
    baseline = group.get("baseline")
    best = group.get("best_competitor")
    unit = group.get("unit")
    lines = [f"**Timed:** {group['timed']}", ""]
    header = ["variant", "what", "median", "min", "max", "n"]
    header.append(f"speedup vs {baseline} (paired)" if baseline else "speedup vs baseline")
    header.append(f"speedup vs best competitor ({best})" if best else "vs best competitor")
    if unit:
        header.append("rate (median)")
    header += ["respawns", "status"]
    rows = []
    for r in variants:
        stats = r.get("stats") or {}
        row: list[object] = [
            f"`{r['name']}`",
            r.get("description", ""),
            fmt_time(stats.get("median")),
            fmt_time(stats.get("min")),
            fmt_time(stats.get("max")),
            stats.get("n", 0),
            fmt_ratio(r.get("speedup_vs_baseline")),
            fmt_ratio(r.get("speedup_vs_best_competitor")),
        ]
        if unit:
            row.append(fmt_rate(r.get("rate"), unit))
        respawned = r.get("respawned_workers")
        row.append("-" if respawned is None else respawned)
        row.append(_status(r))
        rows.append(row)
    lines += _table(header, rows)
    details = []
    for r in variants:
        if r.get("error"):
            details.append(f"- `{r['name']}` failed: {r['error']}")
        notes = [n for n in r.get("notes") or [] if r["status"] != "skipped"]
        for note in notes:
            details.append(f"- `{r['name']}`: {note}")
    if group.get("teardown_error"):
        details.append(f"- teardown error: {group['teardown_error']}")
    if details:
        lines += ["", *details]
    return lines


def _scenario_lines(s: Mapping[str, Any], image_prefix: str) -> list[str]:
    lines = [f"## `{s['name']}`: {s['title']}", "", s["description"], ""]
    if s.get("params"):
        shown = ", ".join(f"{k}={v}" for k, v in s["params"].items())
        lines += [f"Parameters: {shown}", ""]
    if s.get("error"):
        lines += [f"**Scenario error:** {s['error']}", ""]
    for group in s["groups"]:
        if len(s["groups"]) > 1:
            lines += [f"### {group['name']}", ""]
        lines += [*_group_lines(group), ""]
    for check in s.get("checks", []):
        lines += [f"### Check: {check['name']}", "", check["description"], ""]
        if check.get("error"):
            lines += [f"Check failed: {check['error']}", ""]
        if check.get("rows"):
            lines += [*_table(check["columns"], check["rows"]), ""]
    if s.get("targets"):
        lines += ["### Targets", ""]
        rows = [
            [t["label"], _target_value(t), f"{t['op']} {t['threshold']:g}", f"**{t['status']}**"]
            for t in s["targets"]
        ]
        lines += [*_table(["target", "measured", "needs", "status"], rows), ""]
    for note in s.get("notes", []):
        lines.append(f"*Note:* {note}")
    if s.get("notes"):
        lines.append("")
    if s.get("chart"):
        lines += [f"![{s['name']}]({image_prefix}{s['chart']})", ""]
    return lines


def _target_value(t: Mapping[str, Any]) -> str:
    value = t.get("value")
    if value is None:
        return "-"
    if t["kind"] == "rate":
        return fmt_rate(value, "items").replace(" items/s", "/s")
    if t["kind"] == "value":
        return f"{value:.4g}"
    return fmt_ratio(value)


def render_markdown(run: Mapping[str, Any], image_prefix: str = "") -> str:
    """The report of a run: header, target summary, then one section per scenario.

    Parameters
    ----------
    run
        The run's JSON document.
    image_prefix
        Prepended to chart file names (relative path from the Markdown file to the run folder).
    """
    cfg = run["config"]
    m = run["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    mode = "quick" if cfg["quick"] else "full"
    intro = (
        f"Run {run['created']} ({mode} mode), {cfg['workers']} workers, "
        f"{run['duration_s']:.0f} s in total. Each variant is timed in a block of its own: set "
        f"up, {cfg['warmup']} untimed warm-up, {cfg['repeat']} timed pairs (baseline call, "
        "variant call), torn down before the next variant is set up; meanwhile only its own "
        "pools and its group's baseline are alive (a group without a baseline times each "
        f"variant {cfg['repeat']} times alone). Idle pools of other engines would take CPU "
        "time from the timed one: an idle Dask cluster takes about 15% of a core."
    )
    machine = (
        f"Machine: {m['cpu_count']} CPUs ({m['physical_cores']} physical), "
        f"{m['platform']}, Python {m['python']}, mepa {m['mepa']}. Libraries: {libs}. "
        f"Load average at start {m['load_average_start']}, at end {m.get('load_average_end')}."
    )
    legend = (
        "Speedup vs the baseline = median over the variant's pairs of baseline time / variant "
        "time: above 1 the variant is faster; both calls of a pair see the same load. Speedup "
        "vs the best competitor = ratio of the two paired speedups (ratio of medians in a "
        "group without a baseline). The baseline's median, min and max pool all its pairs. "
        "Ratios are what to compare; absolute times drift with the load."
    )
    lines = ["# mepa benchmarks", "", intro, "", machine, "", legend, "", "## Targets", ""]
    rows = []
    for s in run["scenarios"].values():
        for t in s.get("targets", []):
            rows.append([s["name"], t["label"], _target_value(t), f"**{t['status']}**"])
    lines += [*_table(["scenario", "target", "measured", "status"], rows), ""]
    if run.get("skipped_notes"):
        lines += [f"- {n}" for n in run["skipped_notes"]] + [""]
    for s in run["scenarios"].values():
        lines += _scenario_lines(s, image_prefix)
    leftover = [p for p in run.get("leftover_child_processes") or [] if not p["resource_tracker"]]
    if leftover:
        lines += ["## Child processes still alive at the end", ""]
        lines += [f"- {p['pid']}: `{p['cmdline']}`" for p in leftover] + [""]
    return "\n".join(lines).rstrip() + "\n"


def write_json(run: Mapping[str, Any], path: Path) -> None:
    """Write the run document as indented JSON."""
    path.write_text(json.dumps(run, indent=2, default=str) + "\n", encoding="utf-8")


_COLORS = {"serial": "0.55", "mepa": "tab:blue", "competitor": "tab:orange", "reference": "0.75"}


def write_charts(run: dict[str, Any], folder: Path) -> list[str]:
    """One PNG per scenario (median bars, min-max whiskers, one panel per group).

    Sets ``chart`` on each scenario that got one. Returns notes (e.g. matplotlib missing).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["matplotlib not installed: no charts"]
    notes = []
    for name, s in run["scenarios"].items():
        groups = [g for g in s["groups"] if any(v.get("stats") for v in g["variants"])]
        if not groups:
            continue
        fig, axes = plt.subplots(
            len(groups),
            1,
            figsize=(8, 0.5 + sum(0.45 * len(g["variants"]) + 0.8 for g in groups)),
            squeeze=False,
        )
        try:
            for ax, group in zip(axes[:, 0], groups, strict=True):
                rows = [v for v in group["variants"] if v.get("stats")]
                med = [v["stats"]["median"] for v in rows]
                lo = [m - v["stats"]["min"] for m, v in zip(med, rows, strict=True)]
                hi = [v["stats"]["max"] - m for m, v in zip(med, rows, strict=True)]
                ypos = list(range(len(rows)))[::-1]
                ax.barh(
                    ypos,
                    med,
                    xerr=[lo, hi],
                    color=[_COLORS.get(v["role"], "0.5") for v in rows],
                    capsize=3,
                )
                ax.set_yticks(ypos, [v["name"] for v in rows])
                ax.set_xlabel("seconds (median, min-max)")
                ax.set_title(f"{name}: {group['name']}", fontsize=10)
            fig.tight_layout()
            fig.savefig(folder / f"{name}.png", dpi=100)
            s["chart"] = f"{name}.png"
        except Exception as exc:  # a chart is never worth failing the run  # noqa: BLE001
            notes.append(f"chart for {name} failed: {type(exc).__name__}: {exc}")
        finally:
            plt.close(fig)
    return notes
