"""A repartition in process under chaos: 4 files with every merchant in each of them, ``key_by
merchant`` -> 1 h tumbling count and sum -> PostgreSQL (exactly once), parallelism 1, while the
worker is SIGKILLed and restarted from checkpoints. The table must equal the one computed here from
the files: one row per merchant and hour, none lost, none duplicated."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from heliosdb_streaming.embedded.launcher import worker_processes
from heliosdb_streaming.job import JobManager, JobStatus

pytestmark = [pytest.mark.timeout(300), pytest.mark.postgres]

HOUR = 3_600_000
BASE_TS = 1_767_225_600_000


def write_files(directory: Path, seed: int) -> list[dict[str, Any]]:
    """Per file, transactions in event-time order; merchants in every file."""
    rng = random.Random(seed)
    directory.mkdir()
    events = []
    for f in range(4):
        ts = BASE_TS + f
        lines = []
        for i in range(25_000):
            ts += rng.randrange(1, 30) * 4000
            event = {
                "tx": f"{f}-{i}",
                "merchant": f"m{rng.randrange(25):02d}",
                "amount": rng.randrange(1, 999),
                "timestamp": ts,
            }
            lines.append(orjson.dumps(event))
            events.append(event)
        (directory / f"part-{f}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return events


def expected(events: list[dict[str, Any]]) -> list[tuple[str, int, int, int]]:
    cells: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    for e in events:
        cell = cells[(e["merchant"], e["timestamp"] - e["timestamp"] % HOUR)]
        cell[0] += 1
        cell[1] += e["amount"]
    return sorted((m, s, n, total) for (m, s), (n, total) in cells.items())


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
async def test_key_by_merchant_over_files_is_exact_through_worker_kills(
    tmp_path: Path, pg_dsn: str, pg_schema: str, backend: str
) -> None:
    events = write_files(tmp_path / "in", seed=len(backend))
    body = {
        "name": f"merchants-{backend}",
        "config": {
            "parallelism": 1,
            "state_backend": backend,
            "checkpoint_interval_ms": 200,
            "restart_strategy": {"type": "fixed_delay", "attempts": 100, "delay_ms": 100},
        },
        "sources": [{"type": "file", "config": {"path": str(tmp_path / "in")}}],
        "transformations": [
            {"type": "key_by", "config": {"key": "merchant"}},
            {
                "type": "window",
                "config": {"size": "1h", "aggregates": {"n": "count(*)", "total": "sum(amount)"}},
            },
        ],
        "sinks": [
            {"type": "database", "config": {"connection_string": pg_dsn, "table": f"{pg_schema}.hourly"}}
        ],
    }
    rng = random.Random(backend)
    async with JobManager(4, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job(body)
        kills = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 200
        while (status := await jm.get_job_status(job_id)) != JobStatus.FINISHED:
            assert status != JobStatus.FAILED, (await jm.get_job_details(job_id)).message
            assert loop.time() < deadline, status
            workers = worker_processes(job_id)
            details = await jm.get_job_details(job_id)
            # kill only once a checkpoint exists, so a restart resumes mid-input
            if kills < 3 and workers and details.metrics.checkpoint_count > 0:
                await asyncio.sleep(rng.uniform(0.1, 0.4))
                for worker in worker_processes(job_id):
                    worker.kill()
                    kills += 1
            await asyncio.sleep(0.2)
        assert (await jm.get_job_details(job_id)).restarts >= 1
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(f'SELECT key, window_start, n, total FROM "{pg_schema}".hourly')
    finally:
        await conn.close()
    assert sorted((r["key"], r["window_start"], r["n"], int(r["total"])) for r in rows) == expected(events)
