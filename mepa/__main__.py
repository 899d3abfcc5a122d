"""``python -m mepa``: the ``mepa`` command (see :mod:`mepa._cli`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mepa`` command with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    Examples
    --------
    ``main(["demo", "--size", "small"])`` runs the demo; ``main(["info"])`` lists the executors.
    """
    from ._cli import run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
