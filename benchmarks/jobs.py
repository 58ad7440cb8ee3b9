"""Running a real job to completion for benchmarks that compare two configurations end to end."""

from __future__ import annotations

import asyncio
from typing import Any

from heliosdb_streaming.job import JobManager, JobStatus


async def events_per_second(jm: JobManager, body: dict[str, Any], events: int) -> tuple[float, str]:
    """Submits ``body`` (a bounded job of ``events`` input events), waits for it to finish, and
    returns (events / (finished_at - started_at), job id); worker start-up is inside that time."""
    job_id = await jm.submit_job(body)
    while (status := await jm.get_job_status(job_id)) not in (JobStatus.FINISHED, JobStatus.FAILED):
        await asyncio.sleep(0.05)
    details = await jm.get_job_details(job_id)
    if status is JobStatus.FAILED:
        raise RuntimeError(f"benchmark job {body.get('name')} failed: {details.message}")
    assert details.started_at is not None and details.finished_at is not None
    return events / (details.finished_at - details.started_at).total_seconds(), job_id
