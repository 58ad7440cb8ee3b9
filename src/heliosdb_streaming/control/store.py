"""What the control plane remembers about a job, and the interface of the store that keeps it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from heliosdb_streaming.job.types import JobStatus


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


class JobStore(Protocol):
    """Durable job records. Writes are synchronous and must be durable when they return."""

    def load_all(self) -> list[JobRecord]: ...

    def save(self, record: JobRecord) -> None: ...

    def close(self) -> None: ...
