"""Shared parts of the repartition chaos tests (``test_stage_exactly_once``, ``test_stage_kafka_exchange``):
card transactions whose merchants are in every split, the brute-force hourly oracle, the job body
(``key_by merchant`` -> 1 h tumbling count and sum -> PostgreSQL, exactly once), the table as read
back, and a driver that SIGKILLs a job's workers once it has a checkpoint to resume from."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from heliosdb_streaming.embedded.launcher import worker_processes
from heliosdb_streaming.job import JobManager, JobStatus

HOUR = 3_600_000
BASE_TS = 1_767_225_600_000
MERCHANTS = 25

Row = tuple[str, int, int, int]


def transactions(splits: int, per_split: int, seed: int) -> list[list[dict[str, Any]]]:
    """Per split, card transactions in event-time order; every merchant in every split, each card in
    one split (card % splits), timestamps distinct across splits."""
    rng = random.Random(seed)
    out = []
    for f in range(splits):
        ts = BASE_TS + f
        split = []
        for i in range(per_split):
            ts += rng.randrange(1, 30) * 4000
            split.append(
                {
                    "tx": f"{f}-{i}",
                    "card_id": rng.randrange(50) * splits + f,
                    "merchant": f"m{rng.randrange(MERCHANTS):02d}",
                    "amount": rng.randrange(1, 999),
                    "timestamp": ts,
                }
            )
        out.append(split)
    return out


def write_files(directory: Path, seed: int, files: int = 4, per_file: int = 25_000) -> list[dict[str, Any]]:
    """``files`` JSON-lines files of :func:`transactions`; returns every event."""
    directory.mkdir()
    events = []
    for f, split in enumerate(transactions(files, per_file, seed)):
        (directory / f"part-{f}.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in split) + b"\n")
        events.extend(split)
    return events


def hourly_oracle(events: list[dict[str, Any]]) -> list[Row]:
    """(merchant, hour start, count, sum of amount) per merchant and hour, by brute force."""
    cells: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    for e in events:
        cell = cells[(e["merchant"], e["timestamp"] - e["timestamp"] % HOUR)]
        cell[0] += 1
        cell[1] += e["amount"]
    return sorted((m, s, n, total) for (m, s), (n, total) in cells.items())


def merchant_job(name: str, source: dict[str, Any], dsn: str, table: str, **config: Any) -> dict[str, Any]:
    """``key_by merchant`` -> 1 h tumbling count and sum -> ``table`` (exactly once)."""
    return {
        "name": name,
        "config": {
            "checkpoint_interval_ms": 200,
            "restart_strategy": {"type": "fixed_delay", "attempts": 100, "delay_ms": 100},
            **config,
        },
        "sources": [source],
        "transformations": [
            {"type": "key_by", "config": {"key": "merchant"}},
            {
                "type": "window",
                "config": {"size": "1h", "aggregates": {"n": "count(*)", "total": "sum(amount)"}},
            },
        ],
        "sinks": [{"type": "database", "config": {"connection_string": dsn, "table": table}}],
    }


async def hourly_rows(dsn: str, table: str) -> list[Row]:
    """The sink's table, sorted (empty before the sink created it)."""
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT to_regclass($1)", table) is None:
            return []
        rows = await conn.fetch(f"SELECT key, window_start, n, total FROM {table}")
    finally:
        await conn.close()
    return sorted((r["key"], r["window_start"], r["n"], int(r["total"])) for r in rows)


async def drive_with_kills(
    jm: JobManager,
    job_id: str,
    *,
    kills: int,
    seed: object,
    until: Callable[[], Awaitable[bool]] | None = None,
    timeout_s: float = 200,
) -> int:
    """Waits until the job finished (or ``until()`` holds), SIGKILLing one of its workers (chosen at
    random: the others run on in the old attempt until the control plane stops them) ``kills`` times,
    each once one more checkpoint exists (so a restart resumes mid-input) and after a random pause.
    Fails on a failed job or the timeout; returns how many workers were killed."""
    rng = random.Random(str(seed))
    killed = rounds = 0
    deadline = time.monotonic() + timeout_s
    while True:
        status = await jm.get_job_status(job_id)
        if status == JobStatus.FINISHED or (until is not None and await until()):
            return killed
        assert status != JobStatus.FAILED, (await jm.get_job_details(job_id)).message
        assert time.monotonic() < deadline, f"still {status} after {timeout_s:.0f}s"
        details = await jm.get_job_details(job_id)
        if rounds < kills and worker_processes(job_id) and details.metrics.checkpoint_count > rounds:
            await asyncio.sleep(rng.uniform(0.1, 0.4))
            victims = worker_processes(job_id)
            if victims:
                rng.choice(victims).kill()
                killed += 1
            rounds += 1
        await asyncio.sleep(0.2)
