"""How often the job retention looks for expired jobs: often enough for short retentions, bounded."""

from __future__ import annotations

from datetime import timedelta

import pytest

from heliosdb_streaming.cli.server import parse_retention
from heliosdb_streaming.control.retention import sweep_interval


def test_sweep_interval_is_a_tenth_of_the_retention_within_bounds() -> None:
    assert sweep_interval(timedelta(seconds=3)) == 0.3
    assert sweep_interval(timedelta(milliseconds=100)) == 0.2
    assert sweep_interval(timedelta(days=7)) == 60.0


def test_job_retention_flag() -> None:
    assert parse_retention("7d") == timedelta(days=7)
    assert parse_retention("12h") == timedelta(hours=12)
    assert parse_retention("0") is None


@pytest.mark.parametrize("bad", ["-1d", "soon", "", "7 days"])
def test_job_retention_flag_refuses_what_is_not_a_duration(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_retention(bad)
