"""Print a line of the README's Quickstart: ``main`` (the first) or ``test`` (the second).

The Quickstart's first fenced code block holds exactly two shell lines; CI runs the second
as written, so the README and CI cannot drift apart.
"""

from __future__ import annotations

import pathlib
import re
import sys


def quickstart_lines(readme: str) -> list[str]:
    section = readme.split("## Quickstart", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.DOTALL)
    if block is None:
        raise SystemExit("README.md: no fenced code block under '## Quickstart'")
    lines = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    if len(lines) != 2:
        raise SystemExit(f"README.md: the Quickstart block must hold 2 lines, has {len(lines)}")
    return lines


if __name__ == "__main__":
    text = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    main_line, test_line = quickstart_lines(text)
    print({"main": main_line, "test": test_line}[sys.argv[1]])
