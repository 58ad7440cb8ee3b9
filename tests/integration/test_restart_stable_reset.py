"""A fixed_delay budget comes back after a stable run, on the embedded substrate with real workers.

One attempt, ``reset_after_ms`` 2 s: a worker SIGKILLed twice within a short time fails the job, while
one SIGKILLed twice with a stable run of over 2 s in between restarts both times (the supervisor
passes when the failed run began to ``restart_policy.decide``; the Kubernetes substrate runs the
same supervisor in its operator).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from heliosdb_streaming.job import JobManager, JobStatus
from heliosdb_streaming.testing.waits import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def jm(tmp_path: Path) -> AsyncIterator[JobManager]:
    async with JobManager(4, home=tmp_path / "home") as manager:
        yield manager


def slow_job(reset_after_ms: int) -> dict[str, Any]:
    return {
        "name": "slow",
        "config": {
            "parallelism": 1,
            "checkpoint_interval_ms": 500,
            "restart_strategy": {
                "type": "fixed_delay",
                "attempts": 1,
                "delay_ms": 100,
                "reset_after_ms": reset_after_ms,
            },
        },
        "sources": [{"type": "datagen", "config": {"count": 1_000_000, "rate_per_sec": 200}}],
        "sinks": [{"type": "discard", "config": {}}],
    }


async def kill_and_wait(jm: JobManager, job_id: str, *, restarts: int) -> JobStatus:
    """SIGKILLs the running worker; the status once the job restarted (``restarts``) or failed."""

    async def running() -> bool:
        entry = jm.control_plane.get(job_id)
        if entry.record.status != JobStatus.RUNNING or len(entry.record.worker_pids) != 1:
            return False
        mark = (await jm.get_job_metrics(job_id)).events_processed
        await asyncio.sleep(0.3)
        return (await jm.get_job_metrics(job_id)).events_processed > mark  # this run processes

    await wait_until(running, what="a processing worker", within=30, interval=0.05)
    os.kill(jm.control_plane.get(job_id).record.worker_pids[0], signal.SIGKILL)

    async def settled() -> bool:
        details = await jm.get_job_details(job_id)
        return details.status == JobStatus.FAILED or (
            details.restarts == restarts and details.status == JobStatus.RUNNING
        )

    await wait_until(settled, what="a restart or the failure", within=30, interval=0.05)
    return await jm.get_job_status(job_id)


async def test_two_quick_failures_exhaust_one_attempt(jm: JobManager) -> None:
    job_id = await jm.submit_job(slow_job(reset_after_ms=60_000))
    assert await kill_and_wait(jm, job_id, restarts=1) == JobStatus.RUNNING
    assert await kill_and_wait(jm, job_id, restarts=2) == JobStatus.FAILED
    assert "exhausted after 1 restart" in ((await jm.get_job_details(job_id)).message or "")


async def test_a_stable_run_between_failures_earns_the_attempt_back(jm: JobManager) -> None:
    job_id = await jm.submit_job(slow_job(reset_after_ms=2_000))
    assert await kill_and_wait(jm, job_id, restarts=1) == JobStatus.RUNNING
    await asyncio.sleep(2.5)  # the restarted run is stable for longer than reset_after_ms
    assert await kill_and_wait(jm, job_id, restarts=2) == JobStatus.RUNNING
    assert "restart 1 of 1" in ((await jm.get_job_details(job_id)).message or "")
    await jm.cancel_job(job_id)
