"""What the control plane remembers about a job, and the interface of the store that keeps it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from heliosdb_streaming.model.types import JobStatus


@dataclass(slots=True)
class JobRecord:
    """The durable truth about one job. ``config`` is the submit body (``JobConfig.to_dict``)."""

    job_id: str
    name: str
    status: JobStatus
    config: dict[str, Any]
    submitted_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    restarts: int = 0
    message: str | None = None
    attempt: int = 0
    worker_pids: list[int] = field(default_factory=list)
    metrics_state: dict[str, Any] = field(default_factory=dict)
    last_checkpoint_id: int = 0  # ids only grow, across runs, so sink markers never repeat
    failures_since_restart: int = 0  # the restart strategy's budget; a user restart resets it
    # failure_rate: when the recent failures happened (``control.restart_policy``); reset with it
    failure_times: list[datetime] = field(default_factory=list)
    # another job's snapshot this job starts from until it has one of its own (``SnapshotLocation``)
    start_from: dict[str, Any] | None = None
    relaunch_at: datetime | None = None  # when the pending automatic restart is due (its backoff)
    # what the next or current run restores ({"directory", "storage_uri"}), until the run completes
    # a snapshot of its own: the job still needs it, so it cannot be deleted
    restore_point: dict[str, Any] | None = None


@dataclass(slots=True)
class SnapshotRecord:
    """A completed or failed checkpoint, or a savepoint. ``directory`` is relative to the storage root."""

    job_id: str
    checkpoint_id: int
    kind: str  # "checkpoint" | "savepoint"
    status: str  # "completed" | "failed" | "in_progress"
    timestamp: datetime
    duration_ms: int = 0
    size_bytes: int = 0
    directory: str = ""
    location: str = ""
    savepoint_id: str | None = None
    description: str | None = None
    shared_files: list[str] = field(default_factory=list)
    periodic: bool = False  # a savepoint of ``savepoint_interval_ms``: retention may delete it


class JobStore(Protocol):
    """Durable job records. Writes are synchronous and must be durable when they return."""

    def load_all(self) -> list[JobRecord]: ...

    def save(self, record: JobRecord) -> None: ...

    def load_snapshots(self) -> list[SnapshotRecord]: ...

    def save_snapshot(self, snapshot: SnapshotRecord) -> None: ...

    def delete_snapshot(self, job_id: str, checkpoint_id: int) -> None: ...

    def delete_job(self, job_id: str) -> None:
        """Forgets the job and every snapshot record of it (a purge)."""
        ...

    def close(self) -> None: ...
