"""Event time: parsing timestamps of records and the bounded out-of-orderness watermark.

All times are epoch milliseconds (``int``).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

MIN_WATERMARK = -(2**63)
"""The watermark before any event was seen (Flink's ``Long.MIN_VALUE``)."""

MAX_WATERMARK = 2**63 - 1
"""The watermark at the end of bounded input: every event-time window is due."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_event_time(value: Any) -> int:
    """The epoch milliseconds of an event-time value.

    * ``int``/``float``: taken as epoch **milliseconds** as they are, whatever their magnitude (no
      guessing of seconds vs milliseconds: a job whose field holds seconds must convert it in a
      ``map`` step). Floats are floored to whole milliseconds.
    * a string of digits (optionally signed): epoch milliseconds too.
    * an ISO-8601 string: ``2025-10-29T10:00:00Z``, with an offset (``+02:00``), fractional seconds
      (truncated to milliseconds), a space instead of ``T``, or a date only. A string without an
      offset is taken as UTC.
    * a ``datetime`` (naive = UTC).

    Raises ``ValueError`` for anything else (``None``, booleans, NaN, unparseable strings).
    """
    if type(value) is int:
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"event time {value!r} is not a finite number")
        return math.floor(value)
    if isinstance(value, str):
        return _parse_string(value)
    if isinstance(value, datetime):
        return _datetime_ms(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if value is None:
        raise ValueError("event time is null")
    raise ValueError(
        f"event time must be epoch milliseconds or an ISO-8601 string, got {type(value).__name__}"
    )


def _parse_string(text: str) -> int:
    s = text.strip()
    if not s:
        raise ValueError("event time is an empty string")
    digits = s[1:] if s[0] in "+-" else s
    if digits.isdigit():
        return int(s)
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(
            f"event time {text!r} is neither epoch milliseconds nor an ISO-8601 timestamp "
            "(e.g. '2025-10-29T10:00:00Z')"
        ) from None
    return _datetime_ms(dt)


def _datetime_ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


class WatermarkTracker:
    """Bounded out-of-orderness watermark: ``max event time seen - max_out_of_orderness_ms - 1``.

    As Flink's ``BoundedOutOfOrdernessWatermarks``: the 1 ms keeps more events at the largest time
    seen from being late, so input in event-time order is never late.

    Before the first event the watermark is :data:`MIN_WATERMARK`. The watermark never goes back.
    """

    __slots__ = ("_max_seen", "max_out_of_orderness_ms")

    def __init__(self, max_out_of_orderness_ms: int = 0, max_seen: int | None = None) -> None:
        if max_out_of_orderness_ms < 0:
            raise ValueError("max_out_of_orderness_ms must not be negative")
        self.max_out_of_orderness_ms = max_out_of_orderness_ms
        self._max_seen: int | None = max_seen

    def observe(self, ts_ms: int) -> None:
        if self._max_seen is None or ts_ms > self._max_seen:
            self._max_seen = ts_ms

    @property
    def max_seen(self) -> int | None:
        """The largest event time observed, or ``None`` before the first."""
        return self._max_seen

    @property
    def watermark(self) -> int:
        if self._max_seen is None:
            return MIN_WATERMARK
        return self._max_seen - self.max_out_of_orderness_ms - 1


def event_time_field_value(value: Any, field: str) -> int:
    """The event time held in ``field`` of a record, with an error message naming the field."""
    if value is None:
        raise ValueError(f"missing event time field {field!r}")
    try:
        return parse_event_time(value)
    except ValueError as e:
        raise ValueError(f"field {field!r}: {e}") from None
