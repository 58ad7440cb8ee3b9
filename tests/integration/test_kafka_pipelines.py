"""Kafka -> filter / CEP -> PostgreSQL through the native API, checked against independently
computed results: filter output row for row, CEP matches with window expiry and both skip modes."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from heliosdb_streaming.job import JobManager, JobStatus, MetricsWindow
from heliosdb_streaming.testing.waits import wait_until

pytestmark = [pytest.mark.timeout(180), pytest.mark.kafka, pytest.mark.postgres]

PARTITIONS = 4
CARDS = 24
EVENTS_PER_CARD = 120
WINDOW_MS = 10 * 60_000


def make_events() -> list[tuple[int, dict[str, Any]]]:
    rng = random.Random(2026)
    clock = {card: 1_767_225_600_000 + card * 7 for card in range(CARDS)}
    events = []
    for i in range(EVENTS_PER_CARD):
        for card in range(CARDS):
            clock[card] += rng.randint(
                30_000, 240_000
            )  # 0.5 to 4 minutes apart: some matches outlive the window
            amount = rng.choice(
                [rng.uniform(5, 499), rng.uniform(5, 499), rng.uniform(500, 999), rng.uniform(1000, 20000)]
            )
            events.append(
                (
                    card % PARTITIONS,
                    {
                        "transaction_id": f"tx-{card}-{i}",
                        "card_id": f"card-{card:02d}",
                        "amount": round(amount, 2),
                        "timestamp": clock[card],
                    },
                )
            )
    return events


def expected_filter(events: list[tuple[int, dict[str, Any]]]) -> list[tuple[str, float]]:
    return sorted((e["transaction_id"], e["amount"]) for _, e in events if e["amount"] > 10000)


def expected_cep(events: list[tuple[int, dict[str, Any]]], skip: str) -> list[tuple[Any, ...]]:
    """``A B+ C`` with A, B = small (< 500), C = big (>= 1000), strict contiguity per card, within 10 min."""
    per_card: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _, e in events:
        per_card[e["card_id"]].append(e)
    out = []
    for card, seq in per_card.items():
        n, i = len(seq), 0
        while i < n:
            k = i + 1
            while k < n and seq[k]["amount"] < 500:
                k += 1
            completes = k > i + 1 and k < n and seq[k]["amount"] >= 1000
            if (
                seq[i]["amount"] < 500
                and completes
                and seq[k]["timestamp"] - seq[i]["timestamp"] <= WINDOW_MS
            ):
                out.append((card, seq[i]["timestamp"], seq[k]["timestamp"], k - i + 1))
                i = k + 1 if skip == "skip_past_last_row" else i + 1
                continue
            i += 1
    return sorted(out)


def job(
    name: str, bootstrap: str, topic: str, dsn: str, table: str, steps: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "name": name,
        "config": {"parallelism": 2, "checkpoint_interval_ms": 500, "state_backend": "rocksdb"},
        "sources": [
            {
                "type": "kafka",
                "config": {
                    "bootstrap_servers": bootstrap,
                    "topic": topic,
                    "group_id": name,
                    "start_from": "earliest",
                },
            }
        ],
        "transformations": steps,
        "sinks": [{"type": "database", "config": {"connection_string": dsn, "table": table}}],
    }


def cep_step(skip: str) -> dict[str, Any]:
    return {
        "type": "cep",
        "config": {
            "pattern": "A B+ C",
            "define": {"A": "amount < 500", "B": "amount < 500", "C": "amount >= 1000"},
            "key": "card_id",
            "window": "10m",
            "after_match": skip,
        },
    }


async def fetch(dsn: str, query: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(query)]
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()


@pytest.fixture
async def jm(tmp_path: Path) -> AsyncIterator[JobManager]:
    async with JobManager(8, home=tmp_path / "home") as manager:
        yield manager


async def test_filter_and_cep_results_are_exact(
    jm: JobManager, kafka_bootstrap: str, kafka_topic: Any, pg_dsn: str, pg_schema: str
) -> None:
    topic = await kafka_topic(partitions=PARTITIONS)
    events = make_events()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        for partition, e in events:
            await producer.send(topic, orjson.dumps(e), key=e["card_id"].encode(), partition=partition)
        await producer.send(topic, b"{not json", partition=0)  # counted and logged, not silently dropped
        await producer.flush()
    finally:
        await producer.stop()

    filter_id = await jm.submit_job(
        job(
            "big",
            kafka_bootstrap,
            topic,
            pg_dsn,
            f"{pg_schema}.big",
            [{"type": "filter", "config": {"condition": "amount > 10000"}}],
        )
    )
    past_id = await jm.submit_job(
        job("cep-past", kafka_bootstrap, topic, pg_dsn, f"{pg_schema}.past", [cep_step("skip_past_last_row")])
    )
    next_id = await jm.submit_job(
        job("cep-next", kafka_bootstrap, topic, pg_dsn, f"{pg_schema}.next", [cep_step("skip_to_next_row")])
    )
    want_filter = expected_filter(events)
    want_past = expected_cep(events, "skip_past_last_row")
    want_next = expected_cep(events, "skip_to_next_row")
    assert len(want_next) > len(want_past) > 20  # the data exercises both modes and the window

    queries = {
        "big": (f'SELECT transaction_id, amount FROM "{pg_schema}".big', len(want_filter)),
        "past": (f'SELECT key, start_time, end_time, event_count FROM "{pg_schema}".past', len(want_past)),
        "next": (f'SELECT key, start_time, end_time, event_count FROM "{pg_schema}".next', len(want_next)),
    }
    deadline = asyncio.get_running_loop().time() + 90
    while True:
        counts = {name: len(await fetch(pg_dsn, q)) for name, (q, _) in queries.items()}
        if all(counts[name] >= want for name, (_, want) in queries.items()):
            break
        for job_id in (filter_id, past_id, next_id):
            status = await jm.get_job_status(job_id)
            assert status in (JobStatus.SUBMITTED, JobStatus.RUNNING), (
                await jm.get_job_details(job_id)
            ).message
        assert asyncio.get_running_loop().time() < deadline, counts
        await asyncio.sleep(0.3)
    # two checkpoints later (the sinks commit with each; the first may have been in flight): still
    # exactly the expected rows, nothing written twice
    ids = (filter_id, past_id, next_id)
    seen_at = {job_id: (await jm.get_job_metrics(job_id)).checkpoint_count for job_id in ids}

    async def two_more_checkpoints() -> bool:
        counts = {job_id: (await jm.get_job_metrics(job_id)).checkpoint_count for job_id in ids}
        return all(counts[job_id] >= seen_at[job_id] + 2 for job_id in ids)

    await wait_until(two_more_checkpoints, what="two more checkpoints of each job", within=30)
    assert sorted(await fetch(pg_dsn, queries["big"][0])) == want_filter
    assert sorted(await fetch(pg_dsn, queries["past"][0])) == want_past
    assert sorted(await fetch(pg_dsn, queries["next"][0])) == want_next

    metrics = await jm.get_job_metrics(filter_id, MetricsWindow.minutes(1))
    assert metrics.events_processed == len(events)
    assert metrics.events_out == len(want_filter)
    assert metrics.errors == 1  # the record that is not JSON
    warnings = [e.message for e in await jm.get_job_logs(filter_id)]
    assert any("undecodable record" in m for m in warnings)
    details = await jm.get_job_details(filter_id)
    assert [t.name for t in details.tasks] == ["kafka-source", "filter", "database-sink"]
    assert details.tasks[0].parallelism == 2
    assert any(c.status == "completed" for c in details.checkpoints)
    for job_id in (filter_id, past_id, next_id):
        await jm.cancel_job(job_id)
