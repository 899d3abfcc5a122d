"""The plan of an :class:`~mepa.Allocation` without its data: a pydantic model, for JSON.

Kept apart from :mod:`mepa._allocation` so that arranging data does not pay for pydantic's
model machinery; it loads when a plan is first asked for.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ._allocation import _check_layout, _check_order

__all__ = ["AllocationPlan"]


class AllocationPlan(BaseModel):
    """How an :class:`Allocation` splits and shuffles its rows, without the data.

    A plan is JSON-serialisable (``plan.model_dump_json()``,
    ``AllocationPlan.model_validate_json(text)``); :meth:`Allocation.from_plan` applies it to
    data of ``n`` rows.

    Attributes
    ----------
    n
        Number of rows.
    weights
        One weight per worker.
    sizes
        Rows per chunk: the largest-remainder split of ``n`` by ``weights``.
    block_rows
        Rows per shuffled block.
    order
        The block order (see :mod:`mepa._allocation`), or ``None`` when unshuffled.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    n: int = Field(ge=0)
    weights: tuple[float, ...]
    sizes: tuple[int, ...]
    block_rows: int = Field(ge=1)
    order: list[int] | None = None

    @model_validator(mode="after")
    def _check(self) -> AllocationPlan:
        _check_layout(self.n, self.weights, self.sizes)
        if self.order is not None:
            _check_order(np.asarray(self.order, dtype=np.int64), self.n, self.block_rows)
        return self
