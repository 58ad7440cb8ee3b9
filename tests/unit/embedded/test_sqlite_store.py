"""The embedded job store: what a control plane restart reads back, and homes of older versions."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from heliosdb_streaming.control.store import JobRecord, SnapshotRecord
from heliosdb_streaming.embedded.sqlite_store import SqliteJobStore
from heliosdb_streaming.model.types import JobStatus

START = {
    "storage_uri": "s3://checkpoints/jobs",
    "directory": "job-old/savepoints/savepoint-1",
    "job_id": "job-old",
    "checkpoint_id": 7,
    "savepoint_id": "savepoint-1",
}


def record(job_id: str, start_from: dict[str, object] | None = None) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        name="spend",
        status=JobStatus.RUNNING,
        config={"name": "spend"},
        submitted_at=datetime(2026, 11, 29, tzinfo=UTC),
        restarts=2,
        last_checkpoint_id=9,
        start_from=start_from,
    )


def test_records_read_back_as_written(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.db")
    store.save(record("job-new", START))
    store.save(record("job-plain"))
    store.close()
    reopened = SqliteJobStore(tmp_path / "jobs.db")
    by_id = {r.job_id: r for r in reopened.load_all()}
    assert by_id["job-new"] == record("job-new", START)
    assert by_id["job-plain"].start_from is None
    reopened.close()


def test_a_home_without_the_start_from_column_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as conn:  # the jobs table as the first release created it
        conn.execute(
            "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL,"
            " config TEXT NOT NULL, submitted_at TEXT NOT NULL, started_at TEXT, finished_at TEXT,"
            " restarts INTEGER NOT NULL DEFAULT 0, message TEXT, attempt INTEGER NOT NULL DEFAULT 0,"
            " worker_pids TEXT NOT NULL DEFAULT '[]', metrics_state TEXT NOT NULL DEFAULT '{}',"
            " last_checkpoint_id INTEGER NOT NULL DEFAULT 0)"
        )
        conn.execute(
            "INSERT INTO jobs VALUES ('job-1', 'spend', 'running', '{}', '2026-11-29T00:00:00+00:00',"
            " NULL, NULL, 0, NULL, 1, '[]', '{}', 3)"
        )
    store = SqliteJobStore(path)
    (old,) = store.load_all()
    assert (old.job_id, old.last_checkpoint_id, old.start_from) == ("job-1", 3, None)
    store.save(record("job-2", START))
    assert {r.job_id: r.start_from for r in store.load_all()} == {"job-1": None, "job-2": START}
    store.close()


def test_the_restart_strategys_state_reads_back(tmp_path: Path) -> None:
    """Failure count, the due time of the pending restart and the restore point outlive the process."""
    due = datetime(2026, 11, 29, 0, 0, 7, tzinfo=UTC)
    restoring = {"directory": "job-1/savepoints/savepoint-2", "storage_uri": None}
    written = record("job-1")
    written.failures_since_restart, written.relaunch_at, written.restore_point = 2, due, restoring
    written.failure_times = [due - timedelta(seconds=3), due - timedelta(milliseconds=1500)]
    store = SqliteJobStore(tmp_path / "jobs.db")
    store.save(written)
    store.close()
    reopened = SqliteJobStore(tmp_path / "jobs.db")
    (read,) = reopened.load_all()
    assert (read.failures_since_restart, read.relaunch_at, read.restore_point) == (2, due, restoring)
    assert read.failure_times == written.failure_times  # failure_rate's window, after a restart
    assert read == written
    reopened.close()


def test_a_home_without_the_restart_columns_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as conn:  # the jobs table as the release with start_from created it
        conn.execute(
            "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL,"
            " config TEXT NOT NULL, submitted_at TEXT NOT NULL, started_at TEXT, finished_at TEXT,"
            " restarts INTEGER NOT NULL DEFAULT 0, message TEXT, attempt INTEGER NOT NULL DEFAULT 0,"
            " worker_pids TEXT NOT NULL DEFAULT '[]', metrics_state TEXT NOT NULL DEFAULT '{}',"
            " last_checkpoint_id INTEGER NOT NULL DEFAULT 0, start_from TEXT)"
        )
        conn.execute(
            "INSERT INTO jobs VALUES ('job-1', 'spend', 'running', '{}', '2026-11-29T00:00:00+00:00',"
            " NULL, NULL, 4, NULL, 5, '[]', '{}', 3, NULL)"
        )
    store = SqliteJobStore(path)
    (old,) = store.load_all()
    assert (old.restarts, old.failures_since_restart, old.relaunch_at, old.restore_point) == (
        4,
        0,
        None,
        None,
    )
    assert old.failure_times == []
    old.failures_since_restart = 1
    store.save(old)
    assert [r.failures_since_restart for r in store.load_all()] == [1]
    store.close()


def savepoint(checkpoint_id: int, *, periodic: bool) -> SnapshotRecord:
    return SnapshotRecord(
        job_id="job-1",
        checkpoint_id=checkpoint_id,
        kind="savepoint",
        status="completed",
        timestamp=datetime(2026, 12, 6, tzinfo=UTC),
        directory=f"job-1/savepoints/savepoint-{checkpoint_id}",
        savepoint_id=f"savepoint-{checkpoint_id}",
        description="periodic",
        periodic=periodic,
    )


def test_which_savepoints_are_periodic_reads_back(tmp_path: Path) -> None:
    """Retention after a restart must still tell periodic savepoints from a person's."""
    store = SqliteJobStore(tmp_path / "jobs.db")
    store.save_snapshot(savepoint(1, periodic=False))
    store.save_snapshot(savepoint(2, periodic=True))
    store.close()
    reopened = SqliteJobStore(tmp_path / "jobs.db")
    assert reopened.load_snapshots() == [savepoint(1, periodic=False), savepoint(2, periodic=True)]
    reopened.close()


def test_a_home_without_the_periodic_column_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as conn:  # the snapshots table before periodic savepoints
        conn.execute(
            "CREATE TABLE snapshots (job_id TEXT NOT NULL, checkpoint_id INTEGER NOT NULL,"
            " kind TEXT NOT NULL, status TEXT NOT NULL, timestamp TEXT NOT NULL,"
            " duration_ms INTEGER NOT NULL, size_bytes INTEGER"
            " NOT NULL, directory TEXT NOT NULL, location TEXT NOT NULL, savepoint_id TEXT, description TEXT,"
            " shared_files TEXT NOT NULL DEFAULT '[]', PRIMARY KEY (job_id, checkpoint_id))"
        )
        conn.execute(
            "INSERT INTO snapshots VALUES ('job-1', 1, 'savepoint', 'completed', '2026-12-06T00:00:00+00:00',"
            " 0, 0, 'job-1/savepoints/savepoint-1', '', 'savepoint-1', 'periodic', '[]')"
        )
    store = SqliteJobStore(path)
    assert store.load_snapshots() == [savepoint(1, periodic=False)]  # a person's: never trimmed
    store.save_snapshot(savepoint(2, periodic=True))
    assert [s.periodic for s in store.load_snapshots()] == [False, True]
    store.close()
