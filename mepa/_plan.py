"""The plan of an :class:`~mepa.Allocation` without its data: a pydantic model, for JSON.

Kept apart from :mod:`mepa._allocation` so that arranging data does not pay for pydantic's
model machinery; it loads when a plan is first asked for.

A plan read from JSON may have been edited by hand: every field is checked (numbers that are
numbers, not strings or booleans; counts that fit an ``int64``), then the plan as a whole
(:func:`~mepa._chunking._check_layout`). Whatever fails raises
:class:`~mepa.AllocationError`, never pydantic's own ``ValidationError``.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from ._chunking import _check_layout, _check_order
from ._errors import AllocationError, MepaError

__all__ = ["AllocationPlan"]

_MAX_COUNT = 2**63 - 1  # rows, sizes and block numbers are int64


def _number(value: Any) -> Any:
    """Refuse what pydantic would otherwise read as a number: strings and booleans."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise ValueError(  # noqa: TRY004 - pydantic reports ValueError, not TypeError
            f"must be a number, got {type(value).__name__} {value!r}"
        )
    return value


Count = Annotated[int, BeforeValidator(_number), Field(ge=0, le=_MAX_COUNT)]
Weight = Annotated[float, BeforeValidator(_number)]  # finite, >= 0: checked with the layout

_FIX = "rebuild the plan from an Allocation (alloc.plan) instead of editing it"


def _plan_error(exc: ValidationError) -> MepaError:
    """The :class:`~mepa.AllocationError` for a plan pydantic refused."""
    problems = []
    for error in exc.errors():
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, MepaError):  # the plan as a whole (sizes, order): its own message
            return cause
        where = ".".join(str(part) for part in error["loc"]) or "plan"
        if error["type"] == "value_error":  # from _number: the message shows the value
            problems.append(f"{where} {error['msg'].removeprefix('Value error, ')}")
            continue
        text = repr(error.get("input"))
        shown = text if len(text) <= 40 else text[:37] + "..."
        problems.append(f"{where}: {error['msg'].lower()}, got {shown}")
    return AllocationError(f"plan is not a valid AllocationPlan: {'; '.join(problems)}; {_FIX}")


class AllocationPlan(BaseModel):
    """How an :class:`Allocation` splits and shuffles its rows, without the data.

    A plan is JSON-serialisable (``plan.model_dump_json()``,
    ``AllocationPlan.model_validate_json(text)``); :meth:`Allocation.from_plan` applies it to
    data of ``n`` rows. A plan that does not validate raises :class:`~mepa.AllocationError`.

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
        The block order (see :mod:`mepa._chunking`), or ``None`` when unshuffled.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    n: Count
    weights: tuple[Weight, ...]
    sizes: tuple[Count, ...]
    block_rows: Annotated[int, BeforeValidator(_number), Field(ge=1, le=_MAX_COUNT)]
    order: list[Count] | None = None

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _plan_error(exc) from exc

    @classmethod
    def model_validate(cls, *args: Any, **kwargs: Any) -> AllocationPlan:
        """Validate a dict (see pydantic); :class:`~mepa.AllocationError` if it is no plan."""
        try:
            return super().model_validate(*args, **kwargs)
        except ValidationError as exc:
            raise _plan_error(exc) from exc

    @classmethod
    def model_validate_json(cls, *args: Any, **kwargs: Any) -> AllocationPlan:
        """Validate JSON text (see pydantic); :class:`~mepa.AllocationError` if it is no plan."""
        try:
            return super().model_validate_json(*args, **kwargs)
        except ValidationError as exc:
            raise _plan_error(exc) from exc

    @model_validator(mode="after")
    def _check(self) -> AllocationPlan:
        _check_layout(self.n, self.weights, self.sizes)
        if self.order is not None:
            _check_order(np.asarray(self.order, dtype=np.int64), self.n, self.block_rows)
        return self
