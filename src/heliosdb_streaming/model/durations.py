"""Duration strings of job configs ("500ms", "10s", "5m", "1h", "1d") to milliseconds."""

from __future__ import annotations

import re

MAX_DURATION_MS = 366 * 86_400_000  # a year (and a day): any window, gap, lateness or timeout of a job
_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration_ms(text: str | int | float) -> int:
    """Parses a duration; a bare number is milliseconds. Compound forms like "1h30m" are allowed.

    Raises ``ValueError`` with a readable message for anything else (negative, empty, unknown unit).
    """
    if isinstance(text, bool):
        raise ValueError("duration must be a string like '5m' or a number of milliseconds")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError("duration must not be negative")
        return int(text)
    s = text.strip().lower()
    if not s:
        raise ValueError("duration is empty")
    if s.isdigit():
        return int(s)
    pos = 0
    total = 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS_MS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(f"invalid duration {text!r}: use a number with a unit ms, s, m, h or d (e.g. '5m')")
    if total >= 2**63:  # also inf: '1e999' cannot be written, but 400 digits can
        raise ValueError(f"duration {text!r} is too large")
    return int(total)


def format_duration_ms(ms: int) -> str:
    """The shortest exact duration string for ``ms`` (inverse of :func:`parse_duration_ms`)."""
    for unit in ("d", "h", "m", "s"):
        size = _UNITS_MS[unit]
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
