"""Honest figures over REST and ``/metrics`` of a real ``helios server``, across a SIGKILL of it (issue 16):
the counters do not step back, the recovery counts in ``restarts`` and the job says it recovered; the
new fields are in the bodies and the new families in the exposition."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from heliosdb_streaming.testing.server import HeliosServerProcess
from heliosdb_streaming.testing.waits import wait_until

pytestmark = pytest.mark.timeout(180)

JOB = {
    "name": "figures",
    "config": {
        "parallelism": 1,
        "checkpoint_interval_ms": 300,
        "restart_strategy": {"type": "fixed_delay", "attempts": 3, "delay_ms": 100},
    },
    "sources": [{"type": "datagen", "config": {"partitions": 2, "seed": 1, "rate_per_sec": 1000}}],
    "transformations": [{"type": "filter", "config": {"condition": "amount > 100"}}],
    "sinks": [{"type": "discard", "config": {}}],
}


async def get(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def test_counters_survive_a_killed_server_and_the_recovery_counts(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    home = tmp_path / "home"
    first = HeliosServerProcess(home)
    try:
        async with session.post(f"{first.url}/api/v1/jobs", json=JOB) as response:
            assert response.status == 201, await response.text()
            job_id = (await response.json())["job_id"]
        details_url = f"{first.url}/api/v1/jobs/{job_id}"

        async def checkpointed() -> dict[str, Any] | None:
            d = await get(session, details_url)
            return d if d["metrics"]["checkpoint_count"] >= 3 else None

        await wait_until(checkpointed, what="3 checkpoints", within=60)

        async def lag_known() -> dict[str, Any] | None:
            m = await get(session, f"{details_url}/metrics")
            return m if m["metrics"]["source"]["lag_records"] is not None else None

        metrics = await wait_until(lag_known, what="a heartbeat with the source lag", within=30)
        before = await get(session, details_url)
        assert metrics["metrics"]["source"]["lag_records"] is not None
        assert metrics["metrics"]["running_ms"] > 0
        assert metrics["metrics"]["late_events_dropped"] == 0
        assert 0.0 <= metrics["metrics"]["backpressure"]["current_level"] < 0.5
    finally:
        first.stop(signal.SIGKILL)
    assert before["metrics"]["restarts"] == 0 and before["recovering"] is False
    assert isinstance(before["uptime_ms"], int)

    second = HeliosServerProcess(home)
    try:
        details_url = f"{second.url}/api/v1/jobs/{job_id}"
        after = await get(session, details_url)
        assert after["metrics"]["checkpoint_count"] >= before["metrics"]["checkpoint_count"]
        assert after["metrics"]["restarts"] == 1
        assert after["message"].startswith(("Recovering: the control plane restarted", "Recovered: run")), (
            after
        )

        async def recovered() -> dict[str, Any] | None:
            d = await get(session, details_url)
            m = d["metrics"]
            caught_up = m["events_processed"] >= before["metrics"]["events_processed"]
            more = m["checkpoint_count"] > before["metrics"]["checkpoint_count"]
            return d if not d["recovering"] and caught_up and more else None

        d = await wait_until(recovered, what="the recovered run to go past the killed one", within=60)
        assert d["message"].startswith("Recovered: run 2 running (after: the control plane restarted"), d[
            "message"
        ]
        assert d["metrics"]["restarts"] == 1
        text = await (await session.get(f"{second.url}/metrics")).text()
        for family in (
            "heliosdb_job_source_lag_records",
            "heliosdb_job_backpressure_level",
            "heliosdb_job_late_events_dropped_total",
        ):
            assert re.search(rf'^{family}{{job_id="{job_id}",job_name="figures"}} \d', text, re.M), family
        assert re.search(
            rf'^heliosdb_job_restarts_total{{job_id="{job_id}",job_name="figures"}} 1\.0$', text, re.M
        )
    finally:
        assert second.stop() == 0, second.log_tail()
