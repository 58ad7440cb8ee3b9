"""A repartition in process under chaos: 4 files with every merchant in each of them, ``key_by
merchant`` -> 1 h tumbling count and sum -> PostgreSQL (exactly once), parallelism 1, while the
worker is SIGKILLed and restarted from checkpoints. The table must equal the one computed here from
the files: one row per merchant and hour, none lost, none duplicated. (Across worker processes,
through Kafka: ``test_stage_kafka_exchange``.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from stage_chaos import drive_with_kills, hourly_oracle, hourly_rows, merchant_job, write_files

from heliosdb_streaming.job import JobManager

pytestmark = [pytest.mark.timeout(300), pytest.mark.postgres]


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
async def test_key_by_merchant_over_files_is_exact_through_worker_kills(
    tmp_path: Path, pg_dsn: str, pg_schema: str, backend: str
) -> None:
    events = write_files(tmp_path / "in", seed=len(backend), per_file=100_000)
    table = f"{pg_schema}.hourly"
    source = {"type": "file", "config": {"path": str(tmp_path / "in")}}
    body = merchant_job(f"merchants-{backend}", source, pg_dsn, table, parallelism=1, state_backend=backend)
    async with JobManager(4, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job(body)
        await drive_with_kills(jm, job_id, kills=3, seed=backend)
        assert (await jm.get_job_details(job_id)).restarts >= 1
    assert await hourly_rows(pg_dsn, table) == hourly_oracle(events)
