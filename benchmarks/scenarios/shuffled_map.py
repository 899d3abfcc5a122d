"""Scenario ``shuffled_map``: what shuffling the rows costs, and what it buys.

Timed: the ``cpu_map`` computation through mepa with ``shuffle=False``, ``shuffle=True`` (block
shuffle, the default) and an explicit full row permutation, on processes and on threads.

Untimed balance check: rows whose cost is spatially correlated (cheap first 30%, expensive
rest, as when a simulation's active region sits in one part of the array) are split over 2
workers; the cost each worker receives is summed per chunk. Unshuffled, one worker gets most of
the expensive rows; a row permutation evens it out; the block shuffle should even it out as
well while moving whole blocks.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from .._harness import Check, Group, Prepared, RunConfig, Scenario, ScenarioPlan, Variant
from .._stats import Target
from . import _common as c
from . import _kernels as k

__all__ = ["SHUFFLED_MAP", "chunk_costs", "imbalance", "step_cost"]

#: Block shuffle may be this much less balanced than a row permutation and still pass.
BALANCE_TOLERANCE = 1.02


def step_cost(n: int, cheap_fraction: float = 0.3) -> k.FloatArray:
    """Per-row cost: 1 for the first ``cheap_fraction`` of the rows, 10 for the rest."""
    cost = np.full(n, 10.0)
    cost[: int(n * cheap_fraction)] = 1.0
    return cost


def chunk_costs(cost: k.FloatArray, permutation: Any, sizes: Any) -> k.FloatArray:
    """Total cost of each chunk when row ``permutation[j]`` is the ``j``-th arranged row.

    Parameters
    ----------
    cost
        Cost per original row.
    permutation
        Original row index of each arranged row (None: identity, no shuffle).
    sizes
        Rows per chunk, in arranged order.

    Examples
    --------
    >>> chunk_costs(np.array([1.0, 1.0, 10.0, 10.0]), np.array([0, 2, 1, 3]), (2, 2)).tolist()
    [11.0, 11.0]
    """
    arranged = cost if permutation is None else cost[np.asarray(permutation)]
    bounds = np.cumsum([0, *(int(s) for s in sizes)])
    return np.array([arranged[a:b].sum() for a, b in itertools.pairwise(bounds)])


def imbalance(costs: k.FloatArray) -> float:
    """``max / mean`` of the chunk costs: 1.0 is perfect balance.

    Examples
    --------
    >>> imbalance(np.array([2.3, 5.0]))
    1.36986301369863
    """
    return float(costs.max() / costs.mean())


def _balance_check(n: int, workers: int) -> Callable[[], Check]:
    def balance() -> Check:
        cost = step_cost(n)
        check = Check(
            name="balance",
            description=(
                f"{n} rows, cost 1 for the first 30% and 10 for the rest, split over {workers} "
                f"chunks by mepa.arrange(cost, weights={workers}, ...); imbalance = max/mean "
                "chunk cost (1.0 = perfect). Not timed."
            ),
            columns=["arrangement", "chunk costs", "max", "mean", "imbalance", "error"],
        )

        def row(label: str, key: str, make: Callable[[], tuple[Any, Any]]) -> None:
            try:
                permutation, sizes = make()
                costs = chunk_costs(cost, permutation, sizes)
            except Exception as exc:  # noqa: BLE001
                check.rows.append([label, None, None, None, None, f"{type(exc).__name__}: {exc}"])
                check.values[key] = None
                return
            value = imbalance(costs)
            check.values[key] = value
            shown = ", ".join(f"{v:.4g}" for v in costs)
            check.rows.append([label, shown, costs.max(), costs.mean(), value, None])

        def via_mepa(**kwargs: Any) -> tuple[Any, Any]:
            alloc = c.mepa_attr("arrange")(cost, weights=workers, **kwargs)
            return alloc.permutation, alloc.sizes

        def numpy_rows() -> tuple[Any, Any]:
            perm = np.random.default_rng(1).permutation(n)
            return perm, [len(s) for s in np.array_split(perm, workers)]

        row("unshuffled (shuffle=False)", "unshuffled", lambda: via_mepa(shuffle=False))
        row("block shuffle (shuffle=True)", "block", lambda: via_mepa(shuffle=True))
        row("row permutation (block_rows=1)", "row", lambda: via_mepa(shuffle=True, block_rows=1))
        row("reference: NumPy row permutation", "numpy_row", numpy_rows)
        block, ref = check.values.get("block"), check.values.get("row")
        if ref is None:
            ref = check.values.get("numpy_row")
        check.values["block_vs_row"] = block / ref if block is not None and ref else None
        return check

    return balance


def _build(config: RunConfig) -> ScenarioPlan:
    n = config.size(20_000_000, 200_000)
    w = config.workers
    x = np.random.default_rng(0).uniform(0.0, 10.0, n)
    expected: dict[str, np.ndarray] = {}

    def _expected() -> np.ndarray:
        if "y" not in expected:
            expected["y"] = k.cpu_kernel(x)
        return expected["y"]

    check = c.allclose_check(_expected)
    notes: list[str] = []

    def variant(kind: str, shuffle: str) -> Callable[[contextlib.ExitStack], Prepared]:
        def setup(stack: contextlib.ExitStack) -> Prepared:
            ex = c.mepa_executor(stack, kind, w)
            arg: Any
            note = ""
            if shuffle == "permutation":
                holder: dict[str, np.ndarray] = {}
                seconds = c.timed_once(
                    lambda: holder.setdefault("p", np.random.default_rng(2).permutation(n))
                )
                arg = holder["p"]
                note = f"building the permutation (untimed): {seconds * 1e3:.1f} ms"
            else:
                arg = shuffle == "block"

            def run() -> Any:
                alloc = ex.arrange(x, shuffle=arg)
                return alloc.reassemble(ex.gather(ex.distribute(k.cpu_kernel, alloc)))

            return Prepared(
                call=run,
                check=check,
                pids=c.mepa_pids(ex, w) if kind == "process" else None,
                note=note,
            )

        return setup

    groups = []
    for kind, label in (("process", "ProcessExecutor"), ("thread", "ThreadExecutor")):
        groups.append(
            Group(
                name=kind,
                timed=(
                    "arrange (including the shuffle) + distribute + gather + reassemble into "
                    "original order; executor and x created before timing"
                ),
                baseline=f"{kind}-unshuffled",
                variants=(
                    Variant(
                        f"{kind}-unshuffled",
                        "mepa",
                        variant(kind, "none"),
                        f"mepa {label}({w}), shuffle=False",
                    ),
                    Variant(
                        f"{kind}-block-shuffle",
                        "mepa",
                        variant(kind, "block"),
                        f"mepa {label}({w}), shuffle=True (block shuffle)",
                    ),
                    Variant(
                        f"{kind}-permutation",
                        "mepa",
                        variant(kind, "permutation"),
                        f"mepa {label}({w}), shuffle=<full row permutation of {n}>",
                    ),
                ),
            )
        )
    notes.append(
        "Speedups in this scenario are against the unshuffled run of the same executor, timed "
        "in pairs with each shuffled variant (process executors share one worker pool); the "
        "full permutation's cost is its speedup below 1."
    )
    return ScenarioPlan(
        params={"n": n, "workers": w, "balance_rows": config.size(1_000_000, 100_000)},
        groups=groups,
        checks=[_balance_check(config.size(1_000_000, 100_000), w)],
        targets=[
            Target(
                "process: block shuffle <= 1.3x unshuffled time",
                "time_ratio",
                "process-block-shuffle",
                1.3,
                op="<=",
                reference="process-unshuffled",
            ),
            Target(
                "thread: block shuffle <= 1.3x unshuffled time",
                "time_ratio",
                "thread-block-shuffle",
                1.3,
                op="<=",
                reference="thread-unshuffled",
            ),
            Target(
                f"balance: block shuffle imbalance <= {BALANCE_TOLERANCE}x row permutation's",
                "value",
                "block_vs_row",
                BALANCE_TOLERANCE,
                op="<=",
            ),
        ],
        notes=notes,
    )


SHUFFLED_MAP = Scenario(
    name="shuffled_map",
    title="Shuffled map: cost and benefit of shuffling rows",
    description=(
        "cpu_map through mepa with no shuffle, the default block shuffle and an explicit full "
        "row permutation; plus an untimed load-balance check on spatially correlated costs."
    ),
    build=_build,
)
