"""The embedded job store: one SQLite database (WAL) under the home directory."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime
from pathlib import Path

import orjson

from heliosdb_streaming.control.store import JobRecord, SnapshotRecord
from heliosdb_streaming.embedded import private
from heliosdb_streaming.model.types import JobStatus

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    restarts INTEGER NOT NULL DEFAULT 0,
    message TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    worker_pids TEXT NOT NULL DEFAULT '[]',
    metrics_state TEXT NOT NULL DEFAULT '{}',
    last_checkpoint_id INTEGER NOT NULL DEFAULT 0,
    start_from TEXT,
    failures_since_restart INTEGER NOT NULL DEFAULT 0,
    relaunch_at TEXT,
    restore_point TEXT,
    failure_times TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS snapshots (
    job_id TEXT NOT NULL,
    checkpoint_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    directory TEXT NOT NULL,
    location TEXT NOT NULL,
    savepoint_id TEXT,
    description TEXT,
    shared_files TEXT NOT NULL DEFAULT '[]',
    periodic INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, checkpoint_id)
);
"""
_JOB_COLUMNS = (
    "job_id, name, status, config, submitted_at, started_at, finished_at, restarts, message,"
    " attempt, worker_pids, metrics_state, last_checkpoint_id, start_from,"
    " failures_since_restart, relaunch_at, restore_point, failure_times"
)
_JOB_PLACEHOLDERS = ",".join("?" for _ in _JOB_COLUMNS.split(","))
# added since the first release: (name, definition) for ALTER TABLE on an older home
_ADDED_JOB_COLUMNS = (
    ("start_from", "TEXT"),
    ("failures_since_restart", "INTEGER NOT NULL DEFAULT 0"),
    ("relaunch_at", "TEXT"),
    ("restore_point", "TEXT"),
    ("failure_times", "TEXT NOT NULL DEFAULT '[]'"),
)
_ADDED_SNAPSHOT_COLUMNS = (("periodic", "INTEGER NOT NULL DEFAULT 0"),)


class SqliteJobStore:
    """Every save is one committed transaction; reads happen once, at startup (the cache is in memory)."""

    def __init__(self, path: Path) -> None:
        private.private_dir(path.parent)
        private.private_file(path)  # SQLite gives its -wal and -shm files the database file's mode
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        for companion in ("-wal", "-shm"):  # made by an older version, before the file was private
            private.tighten(path.with_name(path.name + companion), private.FILE_MODE)
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._migrate()
        self._lock = threading.Lock()

    def _migrate(self) -> None:
        """Columns added since the first release, added to a home an older version created."""
        for table, added in (("jobs", _ADDED_JOB_COLUMNS), ("snapshots", _ADDED_SNAPSHOT_COLUMNS)):
            columns = {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}
            for name, definition in added:
                if name not in columns:
                    self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")

    def load_all(self) -> list[JobRecord]:
        rows = self._conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY submitted_at, job_id").fetchall()
        return [
            JobRecord(
                job_id=r[0],
                name=r[1],
                status=JobStatus(r[2]),
                config=orjson.loads(r[3]),
                submitted_at=datetime.fromisoformat(r[4]),
                started_at=datetime.fromisoformat(r[5]) if r[5] else None,
                finished_at=datetime.fromisoformat(r[6]) if r[6] else None,
                restarts=r[7],
                message=r[8],
                attempt=r[9],
                worker_pids=orjson.loads(r[10]),
                metrics_state=orjson.loads(r[11]),
                last_checkpoint_id=r[12],
                start_from=orjson.loads(r[13]) if r[13] else None,
                failures_since_restart=r[14],
                relaunch_at=datetime.fromisoformat(r[15]) if r[15] else None,
                restore_point=orjson.loads(r[16]) if r[16] else None,
                failure_times=[datetime.fromisoformat(t) for t in orjson.loads(r[17])],
            )
            for r in rows
        ]

    def save(self, record: JobRecord) -> None:
        with self._lock:
            self._conn.execute(
                f"INSERT OR REPLACE INTO jobs ({_JOB_COLUMNS}) VALUES ({_JOB_PLACEHOLDERS})",
                (
                    record.job_id,
                    record.name,
                    record.status.value,
                    orjson.dumps(record.config).decode(),
                    record.submitted_at.isoformat(),
                    record.started_at.isoformat() if record.started_at else None,
                    record.finished_at.isoformat() if record.finished_at else None,
                    record.restarts,
                    record.message,
                    record.attempt,
                    orjson.dumps(record.worker_pids).decode(),
                    orjson.dumps(record.metrics_state, option=orjson.OPT_NON_STR_KEYS).decode(),
                    record.last_checkpoint_id,
                    orjson.dumps(record.start_from).decode() if record.start_from else None,
                    record.failures_since_restart,
                    record.relaunch_at.isoformat() if record.relaunch_at else None,
                    orjson.dumps(record.restore_point).decode() if record.restore_point else None,
                    orjson.dumps([t.isoformat() for t in record.failure_times]).decode(),
                ),
            )

    def load_snapshots(self) -> list[SnapshotRecord]:
        rows = self._conn.execute(
            "SELECT job_id, checkpoint_id, kind, status, timestamp, duration_ms, size_bytes, directory,"
            " location, savepoint_id, description, shared_files, periodic FROM snapshots"
            " ORDER BY job_id, checkpoint_id"
        ).fetchall()
        return [
            SnapshotRecord(
                job_id=r[0],
                checkpoint_id=r[1],
                kind=r[2],
                status=r[3],
                timestamp=datetime.fromisoformat(r[4]),
                duration_ms=r[5],
                size_bytes=r[6],
                directory=r[7],
                location=r[8],
                savepoint_id=r[9],
                description=r[10],
                shared_files=orjson.loads(r[11]),
                periodic=bool(r[12]),
            )
            for r in rows
        ]

    def save_snapshot(self, snapshot: SnapshotRecord) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO snapshots (job_id, checkpoint_id, kind, status, timestamp,"
                " duration_ms, size_bytes, directory, location, savepoint_id, description, shared_files,"
                " periodic) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    snapshot.job_id,
                    snapshot.checkpoint_id,
                    snapshot.kind,
                    snapshot.status,
                    snapshot.timestamp.isoformat(),
                    snapshot.duration_ms,
                    snapshot.size_bytes,
                    snapshot.directory,
                    snapshot.location,
                    snapshot.savepoint_id,
                    snapshot.description,
                    orjson.dumps(snapshot.shared_files).decode(),
                    int(snapshot.periodic),
                ),
            )

    def delete_snapshot(self, job_id: str, checkpoint_id: int) -> None:
        with self._lock:
            self._conn.execute(
                "DELETE FROM snapshots WHERE job_id = ? AND checkpoint_id = ?", (job_id, checkpoint_id)
            )

    def delete_job(self, job_id: str) -> None:
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.execute("DELETE FROM snapshots WHERE job_id = ?", (job_id,))
            self._conn.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
            self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()
