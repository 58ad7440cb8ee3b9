"""Honest figures with real workers (issue 16): a finished job's average rate over its real running
time, backpressure 0 when nothing waits, source lag of datagen and of a real Kafka topic (tansu), a
recovering job that says so, and a worker stopped because its peer died logged as info, not error."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from heliosdb_streaming.job import JobManager, JobStatus, LogLevel, LogOptions
from heliosdb_streaming.testing.waits import wait_until

pytestmark = pytest.mark.timeout(180)


def datagen_job(
    name: str, *, count: int | None, rate: float, parallelism: int = 1, **config: Any
) -> dict[str, Any]:
    source: dict[str, Any] = {"partitions": 2, "seed": 5, "keys": 100, "rate_per_sec": rate}
    if count is not None:
        source["count"] = count
    return {
        "name": name,
        "config": {"parallelism": parallelism, "restart_strategy": "none", **config},
        "sources": [{"type": "datagen", "config": source}],
        "transformations": [{"type": "filter", "config": {"condition": "amount > 100"}}],
        "sinks": [{"type": "discard", "config": {}}],
    }


@pytest.fixture
async def jm(tmp_path: Path) -> AsyncIterator[JobManager]:
    async with JobManager(4, home=tmp_path / "home") as manager:
        yield manager


async def wait_status(jm: JobManager, job_id: str, wanted: JobStatus, within: float = 60) -> None:
    async def reached() -> bool:
        return await jm.get_job_status(job_id) == wanted

    await wait_until(reached, what=f"{job_id} {wanted.value}", within=within)


async def test_a_finished_job_shows_its_average_rate_over_its_real_running_time(jm: JobManager) -> None:
    job_id = await jm.submit_job(datagen_job("finite", count=60_000, rate=0))
    await wait_status(jm, job_id, JobStatus.FINISHED)
    details = await jm.get_job_details(job_id)
    m = details.metrics
    assert m.events_processed == 60_000
    assert m.throughput_per_sec == 0.0  # the current rate: nothing flows any more
    assert m.running_ms > 0
    assert m.average_throughput_per_sec == pytest.approx(60_000 / (m.running_ms / 1000), rel=0.01)
    assert details.uptime_ms // 1000 == details.uptime_secs  # the same duration, to the millisecond
    assert m.source_lag_records is None  # not running: nothing to be behind


async def test_a_lightly_loaded_job_has_backpressure_0_and_a_small_datagen_lag(jm: JobManager) -> None:
    job_id = await jm.submit_job(datagen_job("light", count=None, rate=400))
    await wait_status(jm, job_id, JobStatus.RUNNING)

    async def beats() -> Any:
        m = await jm.get_job_metrics(job_id)
        return m if m.running_ms > 3500 and m.source_lag_records is not None else None

    m = await wait_until(beats, what="3 heartbeats with a lag", within=30)
    assert m.backpressure_level == 0.0  # nothing waits on downstream
    assert 0 <= m.source_lag_records < 400  # less than a second of the rate behind
    assert m.average_throughput_per_sec == pytest.approx(400, rel=0.3)
    await jm.cancel_job(job_id)


async def test_a_saturated_job_shows_its_sources_waiting_on_downstream(jm: JobManager) -> None:
    """Datagen without a rate reads faster than a wide sliding window can keep up: the queue between
    them fills, and the sources spend most of their time waiting on it."""
    body = datagen_job("saturated", count=None, rate=0)
    body["transformations"] = [
        {"type": "key_by", "config": {"key": "card_id"}},
        {
            "type": "window",
            "config": {
                "kind": "sliding",
                "size": "2s",
                "slide": "500ms",
                "aggregates": {"total": "sum(amount)"},
            },
        },
    ]
    job_id = await jm.submit_job(body)
    await wait_status(jm, job_id, JobStatus.RUNNING)

    async def waiting() -> Any:
        m = await jm.get_job_metrics(job_id)
        return m if m.backpressure_level > 0.5 else None

    m = await wait_until(waiting, what="backpressure above 0.5", within=30)
    assert m.backpressure_events > 0
    await jm.cancel_job(job_id)


async def test_a_recovering_job_says_so_and_a_worker_stopped_for_its_peer_is_no_error(jm: JobManager) -> None:
    strategy = {"type": "fixed_delay", "attempts": 3, "delay_ms": 3000}
    job_id = await jm.submit_job(
        datagen_job("peers", count=None, rate=500, parallelism=2, restart_strategy=strategy)
    )
    await wait_status(jm, job_id, JobStatus.RUNNING)
    details = await jm.get_job_details(job_id)
    assert not details.recovering and details.restarts == 0
    pids = list(jm.control_plane.get(job_id).record.worker_pids)
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGKILL)

    async def recovering() -> Any:
        d = await jm.get_job_details(job_id)
        return d if d.recovering else None

    d = await wait_until(recovering, what="the job to say it is recovering", within=20)
    assert d.status == JobStatus.RUNNING and d.restarts == 1
    assert d.message is not None and d.message.startswith("Job failed (worker 0: exit code -9)")
    assert "worker 1" not in d.message  # stopped by the control plane, not a failure of its own

    async def recovered() -> Any:
        d = await jm.get_job_details(job_id)
        return d if not d.recovering else None

    d = await wait_until(recovered, what="the second run to run", within=30)
    assert d.message is not None and d.message.startswith(
        "Recovered: run 2 running (after: Job failed (worker 0"
    )
    assert d.restarts == 1
    errors = [e.message for e in await jm.get_job_logs(job_id, LogOptions(level=LogLevel.ERROR, limit=1000))]
    assert "worker 0 exited with code -9 without a report" in errors, errors
    assert not any("worker 1" in e for e in errors), errors
    infos = [e.message for e in await jm.get_job_logs(job_id, LogOptions(limit=1000))]
    assert "worker 1 stopped (exit code -9): worker 0 of the run exited" in infos, infos
    await jm.cancel_job(job_id)


async def produce_one_by_one(bootstrap: str, topic: str, n: int) -> None:
    """One record per batch: tansu's end offset (the last batch's base offset + 1) is then exact."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(n):
            await producer.send_and_wait(topic, orjson.dumps({"i": i, "amount": i}), partition=i % 2)
    finally:
        await producer.stop()


@pytest.mark.kafka
async def test_kafka_lag_is_the_high_watermark_minus_the_position(
    jm: JobManager, kafka_bootstrap: str, kafka_topic: Any
) -> None:
    """A paused job falls behind by exactly what was produced and not read, and catches up on resume."""
    topic = await kafka_topic(partitions=2)
    body = {
        "name": "kafka-lag",
        "config": {"parallelism": 1, "restart_strategy": "none"},
        "sources": [
            {
                "type": "kafka",
                "config": {"bootstrap_servers": kafka_bootstrap, "topic": topic, "start_from": "earliest"},
            }
        ],
        "transformations": [],
        "sinks": [{"type": "discard", "config": {}}],
    }
    job_id = await jm.submit_job(body)
    await wait_status(jm, job_id, JobStatus.RUNNING)

    async def lag_is(n: int) -> Any:
        seen: list[int | None] = []

        async def check() -> bool:
            seen.append((await jm.get_job_metrics(job_id)).source_lag_records)
            assert len(seen) < 250, seen[-20:]  # the lags seen last, when it never gets there
            return seen[-1] == n

        return check

    await wait_until(await lag_is(0), what="lag 0 on an empty topic", within=30)
    await jm.pause_job(job_id)
    await produce_one_by_one(kafka_bootstrap, topic, 300)

    async def behind_by_the_rest() -> Any:
        # a poll in flight when the pause came may still have read the first few records
        m = await jm.get_job_metrics(job_id)
        lag = m.source_lag_records
        return m if lag is not None and lag + m.events_processed == 300 else None

    m = await wait_until(behind_by_the_rest, what="lag + processed = 300 while paused", within=30)
    assert m.source_lag_records is not None and m.source_lag_records >= 250, m.source_lag_records
    await jm.resume_job(job_id)
    await wait_until(await lag_is(0), what="lag 0 once caught up", within=30)
    assert (await jm.get_job_metrics(job_id)).events_processed == 300
    await jm.cancel_job(job_id)
