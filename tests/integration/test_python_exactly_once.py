"""Python steps under chaos: files or Kafka -> python map -> python filter -> PostgreSQL (exactly-once),
parallelism 2, workers SIGKILLed mid-run. The table must equal the result computed here from the input
with the same functions: no row lost, none duplicated."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from heliosdb_streaming.embedded.launcher import worker_processes
from heliosdb_streaming.job import JobManager, JobStatus
from heliosdb_streaming.testing.waits import wait_until

pytestmark = [pytest.mark.timeout(300), pytest.mark.postgres]

USERPKG = Path(__file__).resolve().parents[1] / "userpkg"
FILES, PER_FILE = 4, 4_000


def write_input(directory: Path) -> list[dict[str, Any]]:
    rng = random.Random(11)
    directory.mkdir()
    events = []
    for f in range(FILES):
        lines = []
        for i in range(PER_FILE):
            event = {
                "tx": f"tx-{f}-{i}",
                "card_id": f"card-{rng.randrange(50):02d}",
                "amount": round(rng.uniform(1, 500), 2),
            }
            events.append(event)
            lines.append(orjson.dumps(event))
        (directory / f"part-{f}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return events


def job_body(name: str, source: dict[str, Any], dsn: str, schema: str, backend: str) -> dict[str, Any]:
    """source -> python map (slow_fee) -> python filter (is_large) -> PostgreSQL, parallelism 2."""
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
        "transformations": [
            {"type": "python", "config": {"function": "helios_userpkg.records:slow_fee"}},
            {"type": "python", "config": {"function": "helios_userpkg.records:is_large", "kind": "filter"}},
        ],
        "sinks": [{"type": "database", "config": {"connection_string": dsn, "table": f"{schema}.large"}}],
    }


async def rows(dsn: str, schema: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return sorted(
            tuple(r) for r in await conn.fetch(f'SELECT tx, card_id, amount, fee FROM "{schema}".large')
        )
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()


def expected(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The reference: the same functions applied here, in this process."""
    from helios_userpkg.records import is_large, slow_fee

    return sorted(
        (r["tx"], r["card_id"], r["amount"], r["fee"]) for r in map(slow_fee, events) if is_large(r)
    )


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
async def test_python_steps_exactly_once_through_worker_kills(
    tmp_path: Path, pg_dsn: str, pg_schema: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(USERPKG))  # the control plane's submit check
    monkeypatch.setenv("PYTHONPATH", str(USERPKG))  # what its workers inherit
    events = write_input(tmp_path / "input")
    source = {"type": "file", "config": {"path": str(tmp_path / "input" / "part-*.jsonl")}}
    body = job_body(f"py-chaos-{backend}", source, pg_dsn, pg_schema, backend)
    rng = random.Random(f"py-chaos-{backend}")
    kills = 0
    async with JobManager(4, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job(body)
        for _ in range(3):
            await asyncio.sleep(rng.uniform(0.8, 1.5))
            workers = worker_processes(job_id)
            if workers:
                rng.choice(workers).kill()
                kills += 1
        deadline = asyncio.get_running_loop().time() + 200
        while (status := await jm.get_job_status(job_id)) != JobStatus.FINISHED:
            assert status != JobStatus.FAILED, (await jm.get_job_details(job_id)).message
            assert asyncio.get_running_loop().time() < deadline, status
            await asyncio.sleep(0.3)
        details = await jm.get_job_details(job_id)
    assert kills >= 2 and details.restarts >= 1, (kills, details.restarts)

    assert await rows(pg_dsn, pg_schema) == expected(events)


@pytest.mark.kafka
async def test_python_steps_exactly_once_from_kafka_through_worker_kills(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topic: Any,
    pg_dsn: str,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kafka (4 partitions, produced while the job runs) -> the same pipeline, rocksdb state."""
    monkeypatch.syspath_prepend(str(USERPKG))
    monkeypatch.setenv("PYTHONPATH", str(USERPKG))
    topic = await kafka_topic(partitions=4)
    events = write_input(tmp_path / "input")
    source = {
        "type": "kafka",
        "config": {"bootstrap_servers": [kafka_bootstrap], "topic": topic, "start_from": "earliest"},
    }
    rng = random.Random("py-kafka-chaos")
    want = expected(events)
    async with JobManager(4, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job(job_body("py-kafka", source, pg_dsn, pg_schema, "rocksdb"))
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
        await producer.start()
        kills = 0
        try:
            step = len(events) // 4
            for start in range(0, len(events), step):
                for e in events[start : start + step]:
                    await producer.send(topic, orjson.dumps(e), key=e["card_id"].encode())
                await producer.flush()
                await asyncio.sleep(rng.uniform(0.8, 1.5))
                workers = worker_processes(job_id)
                if workers:
                    rng.choice(workers).kill()
                    kills += 1
        finally:
            await producer.stop()
        deadline = asyncio.get_running_loop().time() + 150
        while len(got := await rows(pg_dsn, pg_schema)) < len(want):
            status = await jm.get_job_status(job_id)
            assert status != JobStatus.FAILED, (await jm.get_job_details(job_id)).message
            assert asyncio.get_running_loop().time() < deadline, (len(got), len(want))
            await asyncio.sleep(0.5)
        seen = (await jm.get_job_metrics(job_id)).checkpoint_count

        async def two_more_checkpoints() -> bool:  # anything written twice would be committed by then
            return (await jm.get_job_metrics(job_id)).checkpoint_count >= seen + 2

        await wait_until(two_more_checkpoints, what="two more checkpoints", within=30)
        assert await rows(pg_dsn, pg_schema) == want
        assert kills >= 2 and (await jm.get_job_details(job_id)).restarts >= 1
        await jm.cancel_job(job_id)
