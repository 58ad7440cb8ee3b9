"""Python steps under chaos: files -> python map -> python filter -> PostgreSQL (exactly-once), parallelism
2, workers SIGKILLed mid-run. The table must equal the result computed here from the input with the
same functions: no row lost, none duplicated."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from heliosdb_streaming.embedded.launcher import worker_processes
from heliosdb_streaming.job import JobManager, JobStatus

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


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
async def test_python_steps_exactly_once_through_worker_kills(
    tmp_path: Path, pg_dsn: str, pg_schema: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(USERPKG))  # the control plane's submit check
    monkeypatch.setenv("PYTHONPATH", str(USERPKG))  # what its workers inherit
    from helios_userpkg.records import is_large, slow_fee

    events = write_input(tmp_path / "input")
    body = {
        "name": f"py-chaos-{backend}",
        "config": {
            "parallelism": 2,
            "state_backend": backend,
            "checkpoint_interval_ms": 200,
            "restart_strategy": {"type": "fixed_delay", "attempts": 100, "delay_ms": 100},
            "on_error": "fail",
        },
        "sources": [{"type": "file", "config": {"path": str(tmp_path / "input" / "part-*.jsonl")}}],
        "transformations": [
            {"type": "python", "config": {"function": "helios_userpkg.records:slow_fee"}},
            {"type": "python", "config": {"function": "helios_userpkg.records:is_large", "kind": "filter"}},
        ],
        "sinks": [
            {"type": "database", "config": {"connection_string": pg_dsn, "table": f"{pg_schema}.large"}}
        ],
    }
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

    expected = sorted(
        (r["tx"], r["card_id"], r["amount"], r["fee"]) for r in map(slow_fee, events) if is_large(r)
    )
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(f'SELECT tx, card_id, amount, fee FROM "{pg_schema}".large')
    finally:
        await conn.close()
    assert len(rows) == len(expected)
    assert sorted(tuple(r) for r in rows) == expected
