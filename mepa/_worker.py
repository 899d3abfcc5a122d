"""Workers: the named, weighted slots an executor runs tasks on."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ._errors import WorkerSpecError

__all__ = ["Worker"]

_GROUP_INDEX = re.compile(r"^(?P<group>.+)-(?P<index>\d+)$")


@dataclass(frozen=True, slots=True)
class Worker:
    """One worker of an executor: a name and a weight.

    The weight is the worker's share of the rows when data is arranged over workers: a worker of
    weight 2 gets twice the rows of a worker of weight 1.

    Names of the form ``"{group}-{index}"`` (``"gpu-node-3"``) are split into :attr:`group`
    (``"gpu-node"``) and :attr:`index` (``3``); any other name is a group of its own, index 0.

    Parameters
    ----------
    name
        The worker's name, unique within its executor.
    weight
        Relative share of the work, finite and ``>= 0``.

    Raises
    ------
    WorkerSpecError
        For an empty or non-string name, or a weight that is not a finite number ``>= 0``.

    Examples
    --------
    >>> w = Worker("process-1", weight=2)
    >>> w.group, w.index, w.weight
    ('process', 1, 2.0)
    """

    name: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise WorkerSpecError(
                f"worker name must be a non-empty string, got {self.name!r}; "
                "name workers '{group}-{index}', e.g. 'node-0'"
            )
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise WorkerSpecError(
                f"worker weight must be a real number, got {type(weight).__name__}: {weight!r}; "
                "give each worker its relative share of the rows, e.g. 1.0"
            )
        if not math.isfinite(weight) or weight < 0:
            raise WorkerSpecError(
                f"worker weight must be finite and >= 0, got {weight!r}; "
                "give each worker its relative share of the rows, e.g. 1.0"
            )
        object.__setattr__(self, "weight", float(weight))

    @property
    def group(self) -> str:
        """The part of the name before the last ``-index``, or the whole name."""
        match = _GROUP_INDEX.match(self.name)
        return match["group"] if match else self.name

    @property
    def index(self) -> int:
        """The number after the last ``-`` of the name, or 0."""
        match = _GROUP_INDEX.match(self.name)
        return int(match["index"]) if match else 0

    # Names kept from the original API.
    def get_name(self) -> str:
        """Return :attr:`name`."""
        return self.name

    def get_weight(self) -> float:
        """Return :attr:`weight`."""
        return self.weight

    def get_group(self) -> str:
        """Return :attr:`group`."""
        return self.group

    def get_in_group_id(self) -> int:
        """Return :attr:`index`."""
        return self.index


def make_workers(prefix: str, n_workers: int | None, default: int) -> tuple[Worker, ...]:
    """``n_workers`` workers named ``{prefix}-0`` .. ``{prefix}-{n-1}``, weight 1 each."""
    if n_workers is None:
        n_workers = default
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise WorkerSpecError(
            f"n_workers must be a positive int or None, got {n_workers!r}; "
            "pass None for one worker per physical core"
        )
    return tuple(Worker(f"{prefix}-{i}") for i in range(n_workers))


def physical_cores() -> int:
    """Number of physical cores, as loky counts them (logical cores if unknown)."""
    try:
        from loky import cpu_count

        return max(1, int(cpu_count(only_physical_cores=True)))
    except (ImportError, NotImplementedError, OSError):  # pragma: no cover - last resort
        import os

        return os.cpu_count() or 1
