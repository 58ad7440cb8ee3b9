"""What the REST API needs of a substrate, and the embedded implementation of it.

The API serves the same routes on every substrate. ``JobService`` is the native ``JobManager``'s
methods that the routes call plus four that a substrate answers its own way: the list page (the
embedded one joins cached JSON fragments), logs (job log files here; on Kubernetes the operator's
control-plane lines merged with the pod logs), the savepoint a plain restart would restore (reported
in the restart response), and the Prometheus text.
``EmbeddedJobService`` adapts a ``JobManager``; ``kubernetes.restapi.apiserver`` has the Kubernetes one.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from heliosdb_streaming.api import prometheus
from heliosdb_streaming.api.listing import JobListCache
from heliosdb_streaming.embedded.logs import read_logs
from heliosdb_streaming.job.manager import JobManager
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.types import (
    CheckpointInfo,
    JobDetails,
    JobMetrics,
    JobStatus,
    LogEntry,
    LogOptions,
    MetricsWindow,
    RestartOptions,
    SavepointInfo,
)


class JobService(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def submit_job(self, config: JobConfig, from_savepoint: str | None = None) -> str:
        """Submits a job, to start from another job's savepoint (its location) when given."""
        ...

    async def list_jobs_json(self, status: JobStatus | None, limit: int, offset: int) -> bytes:
        """The body of ``GET /api/v1/jobs`` (``schemas.JobListResponse``), serialized."""
        ...

    async def get_job_status(self, job_id: str) -> JobStatus: ...

    async def get_job_details(self, job_id: str) -> JobDetails: ...

    async def get_job_metrics(self, job_id: str, window: MetricsWindow) -> JobMetrics: ...

    async def get_job_logs(self, job_id: str, options: LogOptions) -> list[LogEntry]: ...

    async def cancel_job(self, job_id: str) -> None: ...

    async def cancel_job_with_savepoint(self, job_id: str) -> str: ...

    async def pause_job(self, job_id: str) -> None: ...

    async def resume_job(self, job_id: str) -> None: ...

    async def create_savepoint(self, job_id: str, description: str | None = None) -> str: ...

    async def get_savepoint(self, job_id: str, savepoint_id: str) -> SavepointInfo: ...

    async def list_savepoints(self, job_id: str) -> list[SavepointInfo]: ...

    async def delete_savepoint(self, job_id: str, savepoint_id: str) -> None: ...

    async def list_checkpoints(self, job_id: str) -> list[CheckpointInfo]: ...

    async def restart_job(self, job_id: str, options: RestartOptions | None = None) -> None: ...

    async def restore_savepoint_id(self, job_id: str) -> str | None:
        """The savepoint a restart without ``savepoint_id`` restores (None: a checkpoint or nothing)."""
        ...

    async def prometheus_exposition(self) -> bytes: ...


class EmbeddedJobService:
    """The REST API over a ``JobManager`` in this process (the embedded substrate)."""

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager
        self._list_cache = JobListCache()

    async def start(self) -> None:
        await self.manager.start()

    async def close(self) -> None:
        await self.manager.close()

    async def submit_job(self, config: JobConfig, from_savepoint: str | None = None) -> str:
        return await self.manager.submit_job(config, from_savepoint=from_savepoint)

    async def list_jobs_json(self, status: JobStatus | None, limit: int, offset: int) -> bytes:
        await self.manager.start()  # no-op once started
        return self._list_cache.render(self.manager.control_plane, status, limit, offset)

    async def get_job_status(self, job_id: str) -> JobStatus:
        return await self.manager.get_job_status(job_id)

    async def get_job_details(self, job_id: str) -> JobDetails:
        return await self.manager.get_job_details(job_id)

    async def get_job_metrics(self, job_id: str, window: MetricsWindow) -> JobMetrics:
        return await self.manager.get_job_metrics(job_id, window)

    async def get_job_logs(self, job_id: str, options: LogOptions) -> list[LogEntry]:
        await self.manager.start()
        path = self.manager.control_plane.get(job_id).log.path  # JobNotFoundError -> 404
        # reading (and parsing) the log files is blocking file I/O: keep it off the event loop
        return await asyncio.to_thread(read_logs, path, options)

    async def cancel_job(self, job_id: str) -> None:
        await self.manager.cancel_job(job_id)

    async def cancel_job_with_savepoint(self, job_id: str) -> str:
        return await self.manager.cancel_job_with_savepoint(job_id)

    async def pause_job(self, job_id: str) -> None:
        await self.manager.pause_job(job_id)

    async def resume_job(self, job_id: str) -> None:
        await self.manager.resume_job(job_id)

    async def create_savepoint(self, job_id: str, description: str | None = None) -> str:
        return await self.manager.create_savepoint(job_id, description)

    async def get_savepoint(self, job_id: str, savepoint_id: str) -> SavepointInfo:
        return await self.manager.get_savepoint(job_id, savepoint_id)

    async def list_savepoints(self, job_id: str) -> list[SavepointInfo]:
        return await self.manager.list_savepoints(job_id)

    async def delete_savepoint(self, job_id: str, savepoint_id: str) -> None:
        await self.manager.delete_savepoint(job_id, savepoint_id)

    async def list_checkpoints(self, job_id: str) -> list[CheckpointInfo]:
        return await self.manager.list_checkpoints(job_id)

    async def restart_job(self, job_id: str, options: RestartOptions | None = None) -> None:
        await self.manager.restart_job(job_id, options)

    async def restore_savepoint_id(self, job_id: str) -> str | None:
        await self.manager.start()
        point = self.manager.control_plane.get(job_id).restore_point()
        return point.savepoint_id if point is not None else None

    async def prometheus_exposition(self) -> bytes:
        return await prometheus.render_manager(self.manager)
