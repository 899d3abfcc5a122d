"""Types of the C accelerator ``mepa._tally`` (see ``mepa/_tally.c``)."""

from typing import Any, final

@final
class Tally:
    """A counter called as ``tally(n=1)``."""

    def __call__(self, n: Any = 1) -> None: ...
    def take(self) -> tuple[int, list[Any]]: ...
    @property
    def pending(self) -> bool: ...
