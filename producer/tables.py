"""Tables for read commands: rich on a terminal (fits its width), plain aligned columns otherwise."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    numeric: set[int] | None = None,
    stream: TextIO | None = None,
) -> None:
    out = stream or sys.stdout
    numeric = numeric or set()
    cells = [[str(c) for c in r] for r in rows]
    if out.isatty():
        from rich import box
        from rich.console import Console
        from rich.table import Table

        t = Table(box=box.SIMPLE_HEAD, header_style="bold")
        for i, h in enumerate(headers):
            t.add_column(h, justify="right" if i in numeric else "left", overflow="fold")
        for r in cells:
            t.add_row(*r)
        Console(file=out).print(t)
        return
    out.write(plain_table(headers, cells, numeric))


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    """Columns separated by two spaces, numbers right-aligned; no trailing blanks."""
    lines = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    out = []
    for line in lines:
        pairs = enumerate(zip(line, widths, strict=True))
        cols = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in pairs]
        out.append("  ".join(cols).rstrip())
    return "\n".join(out) + "\n"
