"""Python steps under chaos: files or Kafka -> python map -> python filter -> PostgreSQL (exactly-once),
parallelism 2, workers SIGKILLed mid-run. The table must equal the result computed here from the input
with the same functions: no row lost, none duplicated."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from python_chaos import (
    kill_workers,
    produce_between_kills,
    python_job,
    settled_rows,
    use_userpkg,
    wait_finished,
)

from heliosdb_streaming.job import JobManager

pytestmark = [pytest.mark.timeout(300), pytest.mark.postgres]

FILES, PER_FILE = 4, 4_000


@pytest.fixture(autouse=True)
def userpkg_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    use_userpkg(monkeypatch)


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
    steps = [
        {"type": "python", "config": {"function": "helios_userpkg.records:slow_fee"}},
        {"type": "python", "config": {"function": "helios_userpkg.records:is_large", "kind": "filter"}},
    ]
    return python_job(name, source, steps, dsn=dsn, table=f"{schema}.large", backend=backend)


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
    tmp_path: Path, pg_dsn: str, pg_schema: str, backend: str
) -> None:
    events = write_input(tmp_path / "input")
    source = {"type": "file", "config": {"path": str(tmp_path / "input" / "part-*.jsonl")}}
    body = job_body(f"py-chaos-{backend}", source, pg_dsn, pg_schema, backend)
    async with JobManager(4, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job(body)
        kills = await kill_workers(job_id, random.Random(f"py-chaos-{backend}"), 3)
        await wait_finished(jm, job_id)
        details = await jm.get_job_details(job_id)
    assert kills >= 2 and details.restarts >= 1, (kills, details.restarts)

    assert await rows(pg_dsn, pg_schema) == expected(events)


@pytest.mark.kafka
async def test_python_steps_exactly_once_from_kafka_through_worker_kills(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: Any, pg_dsn: str, pg_schema: str
) -> None:
    """Kafka (4 partitions, produced while the job runs) -> the same pipeline, rocksdb state."""
    topic = await kafka_topic(partitions=4)
    events = write_input(tmp_path / "input")
    source = {
        "type": "kafka",
        "config": {"bootstrap_servers": [kafka_bootstrap], "topic": topic, "start_from": "earliest"},
    }
    want = expected(events)
    async with JobManager(4, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job(job_body("py-kafka", source, pg_dsn, pg_schema, "rocksdb"))
        rng = random.Random("py-kafka-chaos")
        kills = await produce_between_kills(kafka_bootstrap, topic, events, job_id=job_id, rng=rng)
        got = await settled_rows(jm, job_id, lambda: rows(pg_dsn, pg_schema), want, within=150)
        assert got == want
        assert kills >= 2 and (await jm.get_job_details(job_id)).restarts >= 1
        await jm.cancel_job(job_id)
