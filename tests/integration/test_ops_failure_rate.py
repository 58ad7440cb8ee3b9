"""The failure-rate restart strategy with real workers that fail on their first record.

Each test has its own home directory; the job fails by comparing a string field with a number under
``on_error: fail`` (as in test_job_lifecycle), so every run fails soon after it starts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from heliosdb_streaming.job import JobManager, JobStatus, LogLevel, LogOptions
from heliosdb_streaming.testing.waits import wait_until

pytestmark = pytest.mark.timeout(180)


def crashing_job(name: str, strategy: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "config": {"parallelism": 1, "on_error": "fail", "restart_strategy": strategy},
        "sources": [{"type": "datagen", "config": {"partitions": 1, "seed": 3, "rate_per_sec": 200}}],
        "transformations": [{"type": "filter", "config": {"condition": "merchant > 5"}}],
        "sinks": [{"type": "discard", "config": {}}],
    }


@pytest.fixture
async def jm(tmp_path: Path) -> AsyncIterator[JobManager]:
    async with JobManager(4, home=tmp_path / "home") as manager:
        yield manager


async def test_more_failures_than_allowed_within_the_interval_fail_the_job(jm: JobManager) -> None:
    strategy = {
        "type": "failure_rate",
        "max_failures_per_interval": 2,
        "failure_rate_interval_ms": 120_000,
        "delay_ms": 100,
    }
    job_id = await jm.submit_job(crashing_job("rate-exceeded", strategy))

    async def failed() -> bool:
        return await jm.get_job_status(job_id) == JobStatus.FAILED

    await wait_until(failed, what="the job to fail", within=120)
    details = await jm.get_job_details(job_id)
    assert details.restarts == 2, details.message  # two failures restarted it, the third did not
    assert details.message is not None
    assert "3 failures within 120000 ms, more than 2" in details.message, details.message
    warnings = [e.message for e in await jm.get_job_logs(job_id, LogOptions(level=LogLevel.WARN))]
    assert sum("(failure_rate: " in m for m in warnings) == 2, warnings
    assert any("2 of at most 2 failures within 120000 ms" in m for m in warnings), warnings


async def test_failures_spread_wider_than_the_interval_keep_restarting(jm: JobManager) -> None:
    """One failure per 500 ms allowed, restarts 1.5 s apart: never two within the interval."""
    strategy = {
        "type": "failure_rate",
        "max_failures_per_interval": 1,
        "failure_rate_interval_ms": 500,
        "delay_ms": 1500,
    }
    job_id = await jm.submit_job(crashing_job("rate-kept", strategy))

    async def restarted_three_times() -> bool:
        details = await jm.get_job_details(job_id)
        assert details.status != JobStatus.FAILED, details.message
        return details.restarts >= 3

    await wait_until(restarted_three_times, what="three automatic restarts", within=120)
    assert await jm.get_job_status(job_id) != JobStatus.FAILED
    await jm.cancel_job(job_id)
