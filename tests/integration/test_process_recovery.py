"""A keyed process function survives failures and rescales exactly: datagen (rate-limited, partitioned
by card) -> key_by -> a user's ``process`` class with value, map and list state and event-time timers
-> an exactly-once database sink, through the native API with real worker processes. Workers are
SIGKILLed mid-run, or the job is stopped with a savepoint and restarted at another parallelism; the
table always equals the reference computed from the generated records without the engine."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from heliosdb_streaming.job import JobConfigOverrides, JobManager, JobStatus, RestartOptions
from heliosdb_streaming.runtime.connectors.datagen import DatagenSourceReader
from heliosdb_streaming.testing.waits import wait_until

pytestmark = pytest.mark.timeout(240)

USERPKG = Path(__file__).resolve().parents[1] / "userpkg"
COUNT = 24_000
PARTITIONS = 4
KEYS = 32
SEED = 9
COLUMNS = "kind, card_id, total, count, merchants, at"


@pytest.fixture(autouse=True)
def userpkg_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control plane imports the class at submit; its workers inherit PYTHONPATH."""
    monkeypatch.syspath_prepend(str(USERPKG))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(USERPKG), os.environ.get("PYTHONPATH")]))
    )


@pytest.fixture
async def jm(tmp_path: Path, userpkg_on_path: None) -> AsyncIterator[JobManager]:
    async with JobManager(8, home=tmp_path / "home") as manager:
        yield manager


def sessions_job(db: Path, *, parallelism: int, backend: str, rate: float) -> dict[str, Any]:
    return {
        "name": "card-sessions",
        "config": {
            "parallelism": parallelism,
            "state_backend": backend,
            "checkpoint_interval_ms": 400,
            "restart_strategy": {"type": "fixed_delay", "attempts": 5, "delay_ms": 200},
        },
        "sources": [
            {
                "type": "datagen",
                "config": {
                    "count": COUNT,
                    "partitions": PARTITIONS,
                    "seed": SEED,
                    "keys": KEYS,
                    "rate_per_sec": rate,
                },
            }
        ],
        "transformations": [
            {"type": "key_by", "config": {"key": "card_id"}},
            {"type": "process", "config": {"function": "helios_userpkg.fraud:QuickSessions"}},
        ],
        "sinks": [
            {"type": "database", "config": {"connection_string": f"sqlite:///{db}", "table": "sessions"}}
        ],
    }


async def expected_rows() -> list[tuple[Any, ...]]:
    """The reference of ``QuickSessions`` over each generated split, as table rows."""
    from helios_userpkg.fraud import QuickSessions, reference

    reader = DatagenSourceReader(
        schema="transactions",
        rate_per_sec=0,
        count=COUNT,
        partitions=PARTITIONS,
        seed=SEED,
        keys=KEYS,
        source_index=0,
    )
    splits = await reader.discover_splits()
    await reader.open(splits, {})
    per_split: dict[str, list[dict[str, Any]]] = {s.split_id: [] for s in splits}
    finished: set[str] = set()
    while len(finished) < len(splits):
        for batch in await reader.poll(10_000, 0.1):
            per_split[batch.split_id] += batch.records
            if batch.finished:
                finished.add(batch.split_id)
    await reader.close()
    rows = [r for events in per_split.values() for r in reference(events, QuickSessions)]
    return sorted(tuple(r[c] for c in COLUMNS.split(", ")) for r in rows)


def table_rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return sorted(conn.execute(f"SELECT {COLUMNS} FROM sessions").fetchall())


async def wait_for_status(
    jm: JobManager, job_id: str, wanted: set[JobStatus], timeout: float = 120
) -> JobStatus:
    async def reached() -> bool:
        return await jm.get_job_status(job_id) in wanted

    await wait_until(reached, what=f"{job_id} in {wanted}", within=timeout, interval=0.05)
    return await jm.get_job_status(job_id)


async def wait_for_checkpoint_and_progress(jm: JobManager, job_id: str) -> None:
    async def checkpointed() -> bool:
        return any(c.status == "completed" for c in await jm.list_checkpoints(job_id))

    await wait_until(checkpointed, what="a completed checkpoint", within=30, interval=0.05)
    mark = (await jm.get_job_metrics(job_id)).events_processed

    async def more() -> bool:
        return (await jm.get_job_metrics(job_id)).events_processed > mark

    await wait_until(more, what="records processed after the checkpoint", within=30, interval=0.05)


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
async def test_killed_workers_restart_from_checkpoints_and_the_table_is_exact(
    jm: JobManager, tmp_path: Path, backend: str
) -> None:
    db = tmp_path / "out.db"
    expected = await expected_rows()
    assert {r[0] for r in expected} == {"alert", "session"}
    assert len([r for r in expected if r[0] == "session"]) > 2 * KEYS  # timers fire mid-stream too
    job_id = await jm.submit_job(sessions_job(db, parallelism=2, backend=backend, rate=6000))
    await wait_for_status(jm, job_id, {JobStatus.RUNNING})
    for round_ in range(2):
        await wait_for_checkpoint_and_progress(jm, job_id)
        pids = list(jm.control_plane.get(job_id).record.worker_pids)
        os.kill(pids[round_ % len(pids)], signal.SIGKILL)

        async def restarted(expected_restarts: int = round_ + 1) -> bool:
            details = await jm.get_job_details(job_id)
            return details.restarts == expected_restarts and details.status == JobStatus.RUNNING

        await wait_until(restarted, what="the job restarted", within=30, interval=0.05)
    assert await wait_for_status(jm, job_id, {JobStatus.FINISHED, JobStatus.FAILED}) == JobStatus.FINISHED
    assert table_rows(db) == expected


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
async def test_savepoint_and_restart_at_another_parallelism_is_exact(
    jm: JobManager, tmp_path: Path, backend: str
) -> None:
    db = tmp_path / "out.db"
    job_id = await jm.submit_job(sessions_job(db, parallelism=2, backend=backend, rate=6000))
    await wait_for_status(jm, job_id, {JobStatus.RUNNING})
    await wait_for_checkpoint_and_progress(jm, job_id)
    savepoint = await jm.cancel_job_with_savepoint(job_id)
    await jm.restart_job(
        job_id, RestartOptions(savepoint_id=savepoint, config_overrides=JobConfigOverrides(parallelism=3))
    )
    assert await wait_for_status(jm, job_id, {JobStatus.FINISHED, JobStatus.FAILED}) == JobStatus.FINISHED
    assert (await jm.get_job_details(job_id)).config.parallelism == 3
    assert table_rows(db) == await expected_rows()
    logs = [e.message for e in await jm.get_job_logs(job_id)]
    assert any(f"restarting from savepoint {savepoint}" in m for m in logs)
