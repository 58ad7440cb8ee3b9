"""What a worker reports while its event loop is busy, through the native API with real workers.

A sliding window of 500 windows per event with 60 aggregates turns every batch of 4096 records into
~120 million aggregate updates in one synchronous step: tens of seconds on the event loop. The
control plane forgets a worker it has not heard from for 10 s (its CPU and memory then read 0).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from heliosdb_streaming.job import JobManager, JobStatus

pytestmark = pytest.mark.timeout(240)

AGGREGATES = ("count(*)", "sum(amount)", "max(amount)", "min(amount)")


def busy_window_job() -> dict[str, Any]:
    """Unbounded datagen, one key, a 500 s window every 1 s (500 windows per event), 60 aggregates."""
    return {
        "name": "busy-step",
        "config": {"parallelism": 1, "restart_strategy": "none"},
        "sources": [{"type": "datagen", "config": {"partitions": 1, "keys": 1, "seed": 3}}],
        "transformations": [
            {
                "type": "window",
                "config": {
                    "kind": "sliding",
                    "size": "500s",
                    "slide": "1s",
                    "time": "processing",
                    "key": "card_id",
                    "aggregates": {f"a{i}": AGGREGATES[i % len(AGGREGATES)] for i in range(60)},
                },
            }
        ],
        "sinks": [{"type": "discard", "config": {}}],
    }


@pytest.fixture
async def jm(tmp_path: Path) -> AsyncIterator[JobManager]:
    async with JobManager(4, home=tmp_path / "home") as manager:
        yield manager


async def test_busy_worker_keeps_reporting_cpu_and_memory(jm: JobManager) -> None:
    job_id = await jm.submit_job(busy_window_job())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while (await jm.get_job_status(job_id)) != JobStatus.RUNNING:
        assert loop.time() < deadline, "the job did not start"
        await asyncio.sleep(0.1)

    # the first heartbeat: the worker is seen, and its first batch is then taking the loop
    async def first_heartbeat() -> bool:
        return (await jm.get_job_metrics(job_id)).memory_used_mb > 0

    deadline = loop.time() + 30
    while not await first_heartbeat():
        assert loop.time() < deadline, "no heartbeat within 30 s of the start"
        await asyncio.sleep(0.2)

    # 20 s of samples: longer than the control plane's 10 s memory of a silent worker
    samples: list[tuple[float, str, float, int, int]] = []
    started = loop.time()
    while loop.time() - started < 20:
        details = await jm.get_job_details(job_id)
        m = details.metrics
        samples.append(
            (
                round(loop.time() - started, 1),
                details.status.value,
                m.cpu_usage_percent,
                m.memory_used_mb,
                m.events_processed,
            )
        )
        await asyncio.sleep(0.5)
    silent = [s for s in samples if s[1] != "running" or s[2] <= 0 or s[3] <= 0]
    assert not silent, f"(t, status, cpu %, memory MiB, events) while busy: {silent}"
    # the step really held the loop: at most a few batches of 4096 went through in those 20 s
    assert samples[-1][4] <= 5 * 4096, samples[-1]
    assert (await jm.get_job_details(job_id)).restarts == 0
    await jm.cancel_job(job_id)
