from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from heliosdb_streaming.runtime.eventtime import MIN_WATERMARK, WatermarkTracker, parse_event_time

BASE = 1_761_732_000_000  # 2025-10-29T10:00:00Z


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (BASE, BASE),
        (0, 0),
        (-5, -5),
        (1700.9, 1700),
        (-0.5, -1),
        (1e12, 1_000_000_000_000),
        (5, 5),  # numbers are always milliseconds, small ones too
        ("1761732000000", BASE),
        ("  42 ", 42),
        ("2025-10-29T10:00:00Z", BASE),
        ("2025-10-29T10:00:00.123Z", BASE + 123),
        ("2025-10-29T10:00:00.1239Z", BASE + 123),
        ("2025-10-29T10:00:00.123456789Z", BASE + 123),
        ("2025-10-29T12:00:00+02:00", BASE),
        ("2025-10-29T05:30:00-04:30", BASE),
        ("2025-10-29T10:00:00", BASE),
        ("2025-10-29 10:00:00", BASE),
        ("2025-10-29", BASE - 10 * 3_600_000),
        ("1969-12-31T23:59:59.999Z", -1),
        (datetime(2025, 10, 29, 10, tzinfo=UTC), BASE),
        (datetime(2025, 10, 29, 11, tzinfo=timezone(timedelta(hours=1))), BASE),
        (datetime(2025, 10, 29, 10), BASE),
    ],
)
def test_parse_event_time(value: object, expected: int) -> None:
    assert parse_event_time(value) == expected


@pytest.mark.parametrize(
    "value",
    [None, True, False, "", "   ", "yesterday", "2025-13-01T00:00:00Z", float("nan"), float("inf"), [1], {}],
)
def test_parse_event_time_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_event_time(value)


def test_watermark_tracker() -> None:
    wm = WatermarkTracker(max_out_of_orderness_ms=100)
    assert wm.watermark == MIN_WATERMARK
    assert wm.max_seen is None
    wm.observe(1000)
    assert wm.watermark == 899
    wm.observe(500)  # never goes back
    assert wm.watermark == 899
    wm.observe(1500)
    assert wm.watermark == 1399
    assert wm.max_seen == 1500
    assert WatermarkTracker().watermark == MIN_WATERMARK
    zero = WatermarkTracker()
    zero.observe(7)
    assert zero.watermark == 6
    with pytest.raises(ValueError):
        WatermarkTracker(-1)
