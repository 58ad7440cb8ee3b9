"""The tables the benchmarks print: one format, so their columns line up and read alike."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

_WIDTH = re.compile(r"^[<>^]?(\d+)")


def print_table(columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[Any]]) -> None:
    """Prints a header, a rule and one line per row. A column is ``(title, format spec)``, e.g.
    ``("events/s", ">12,.0f")``; a ``None`` or ``""`` cell, or a missing last one, is left blank."""
    widths = [_width(spec) for _, spec in columns]
    aligns = [">" if spec.startswith(">") else "<" for _, spec in columns]
    header = [
        f"{title:{align}{width}}" for (title, _), align, width in zip(columns, aligns, widths, strict=True)
    ]
    print()
    print(" ".join(header).rstrip())
    print("-" * (sum(widths) + len(widths) - 1))
    for row in rows:
        row = [*row, *[None] * (len(columns) - len(row))]  # a shorter row leaves its last columns blank
        cells = [
            f"{'':{width}}" if value is None or value == "" else format(value, spec)
            for value, (_, spec), width in zip(row, columns, widths, strict=True)
        ]
        print(" ".join(cells).rstrip())


def _width(spec: str) -> int:
    match = _WIDTH.match(spec)
    if match is None:
        raise ValueError(f"column format {spec!r} needs a width, e.g. '<52' or '>12,.0f'")
    return int(match.group(1))
