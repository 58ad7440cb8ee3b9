"""What the chaos tests of Python pipelines share (``test_python_exactly_once``,
``test_python_pipeline_chaos``): the user package on the path, the job body around their steps,
SIGKILLing workers, producing to Kafka between kills, and waiting for a bounded job to finish or for
an unbounded job's table to be complete and committed. One copy, so that a fix to how a test kills
or waits applies to every such test."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from heliosdb_streaming.embedded.launcher import worker_processes
from heliosdb_streaming.job import JobManager, JobStatus
from heliosdb_streaming.testing.waits import wait_until

USERPKG = Path(__file__).resolve().parents[1] / "userpkg"


def use_userpkg(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes ``helios_userpkg`` importable by the control plane (its submit check) and by the
    workers it starts (they inherit ``PYTHONPATH``)."""
    monkeypatch.syspath_prepend(str(USERPKG))
    monkeypatch.setenv("PYTHONPATH", str(USERPKG))


def python_job(
    name: str,
    source: dict[str, Any],
    transformations: list[dict[str, Any]],
    *,
    dsn: str,
    table: str,
    backend: str,
) -> dict[str, Any]:
    """source -> ``transformations`` -> PostgreSQL ``table`` (exactly once), parallelism 2, frequent
    checkpoints, restarts without limit (the tests kill workers), user errors fail the run."""
    return {
        "name": name,
        "config": {
            "parallelism": 2,
            "state_backend": backend,
            "checkpoint_interval_ms": 200,
            "restart_strategy": {"type": "fixed_delay", "attempts": 100, "delay_ms": 100},
            "on_error": "fail",
        },
        "sources": [source],
        "transformations": transformations,
        "sinks": [{"type": "database", "config": {"connection_string": dsn, "table": table}}],
    }


async def kill_workers(job_id: str, rng: random.Random, times: int) -> int:
    """SIGKILLs a random live worker of the job ``times`` times, 0.8-1.5 s apart; returns how many
    kills happened (none when no worker was up at that moment, e.g. during a restart)."""
    kills = 0
    for _ in range(times):
        await asyncio.sleep(rng.uniform(0.8, 1.5))
        if workers := worker_processes(job_id):
            rng.choice(workers).kill()
            kills += 1
    return kills


async def wait_finished(jm: JobManager, job_id: str, within: float = 200) -> None:
    """Waits for a bounded job to finish; fails at once with its message if it failed."""
    deadline = asyncio.get_running_loop().time() + within
    while (status := await jm.get_job_status(job_id)) != JobStatus.FINISHED:
        assert status != JobStatus.FAILED, (await jm.get_job_details(job_id)).message
        assert asyncio.get_running_loop().time() < deadline, status
        await asyncio.sleep(0.3)


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka clients' default partitioner (murmur2, as the Java client and aiokafka)
    gives a keyed message, so a test knows which split reads each key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


async def produce_between_kills(
    bootstrap: str,
    topic: str,
    events: Sequence[dict[str, Any]],
    *,
    job_id: str,
    rng: random.Random,
    key_field: str = "card_id",
    chunks: int = 4,
    partitions: int | None = None,
) -> int:
    """Produces ``events`` (keyed by ``key_field``) in ``chunks`` while the job runs, killing one
    worker after each chunk; returns the kills. With ``partitions``, each message goes explicitly to
    :func:`kafka_partition` of its key, so what the test computes per partition is what it produced."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    kills = 0
    try:
        step = -(-len(events) // chunks)
        for start in range(0, len(events), step):
            for e in events[start : start + step]:
                key = str(e[key_field]).encode()
                partition = kafka_partition(key, partitions) if partitions else None
                await producer.send(topic, orjson.dumps(e), key=key, partition=partition)
            await producer.flush()
            kills += await kill_workers(job_id, rng, 1)
    finally:
        await producer.stop()
    return kills


async def settled_rows(
    jm: JobManager,
    job_id: str,
    read: Callable[[], Awaitable[list[tuple[Any, ...]]]],
    want: list[tuple[Any, ...]],
    *,
    within: float = 60,
    explain: Callable[[list[tuple[Any, ...]]], Any] = len,
) -> list[tuple[Any, ...]]:
    """The table of an unbounded job once it holds as many rows as ``want`` and two more checkpoints
    completed (anything written twice would be committed by then). On timeout the assertion shows
    ``explain(rows)`` (default: the row count)."""
    deadline = asyncio.get_running_loop().time() + within
    while len(got := await read()) < len(want):
        status = await jm.get_job_status(job_id)
        assert status != JobStatus.FAILED, (await jm.get_job_details(job_id)).message
        assert asyncio.get_running_loop().time() < deadline, (explain(got), len(want))
        await asyncio.sleep(0.5)
    seen = (await jm.get_job_metrics(job_id)).checkpoint_count

    async def two_more_checkpoints() -> bool:
        return (await jm.get_job_metrics(job_id)).checkpoint_count >= seen + 2

    await wait_until(two_more_checkpoints, what="two more checkpoints", within=30)
    return await read()
