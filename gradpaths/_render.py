"""Tables as plain text or Markdown: the one formatter behind every printed result.

A result's renderer (:func:`gradpaths._explain.growth_table`,
:func:`gradpaths._sweep.grid`, ...) builds its rows once and calls :func:`table`
with ``fmt="text"`` (``str(result)``) or ``fmt="markdown"`` (report folders).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from gradpaths._checks import InputError

#: The formats a renderer accepts.
FORMATS = ("text", "markdown")


class Column(NamedTuple):
    """A table column: ``title``, its ``unit`` (a second header line in text, in
    parentheses after the title in Markdown), and the text layout (``width``
    characters, ``align`` ``"<"`` or ``">"``)."""

    title: str
    width: int
    align: str = ">"
    unit: str = ""


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InputError(f"fmt: expected one of {FORMATS}, got {fmt!r}")
    return fmt


def number(x: Any, spec: str = "+.4f") -> str:
    """A number for a table; non-finite numbers (or their JSON strings) as text."""
    if isinstance(x, str) or x is None:
        return str(x)
    return format(x, spec) if math.isfinite(x) else str(x)


def table(columns: Sequence[Column], rows: Sequence[Sequence[str]], fmt: str) -> list[str]:
    """The lines of a table of pre-formatted cells, as aligned text or Markdown."""
    check_format(fmt)
    if fmt == "markdown":
        head = [c.title + (f" ({c.unit})" if c.unit else "") for c in columns]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        return lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]

    def line(cells: Sequence[str]) -> str:
        return "".join(f"{v:{c.align}{c.width}}" for c, v in zip(columns, cells, strict=True))

    lines = [line([c.title for c in columns])]
    if any(c.unit for c in columns):
        lines.append(line([f"({c.unit})" if c.unit else "" for c in columns]))
    return lines + [line([str(v) for v in row]) for row in rows]
