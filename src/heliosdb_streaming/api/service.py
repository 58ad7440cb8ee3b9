"""What the REST API needs of a substrate, and the implementation over a control plane in this process.

The API serves the same routes on every substrate, and its routes talk to ``JobService`` only.
``JobService`` is the native API's methods that the routes call plus four that a substrate answers
its own way: the list page (over a control plane: cached JSON fragments), logs (the job's log here;
on Kubernetes the operator's control-plane lines merged with the pod logs), the savepoint a plain
restart would restore (reported in the restart response), and the Prometheus text.
``CoreJobService`` adapts a ``control.service.JobServiceCore`` (an embedded ``JobManager``, or the
operator's core over its own plane); ``kubernetes.restapi.apiserver`` has the Kubernetes one.
"""

from __future__ import annotations

from typing import Protocol

from heliosdb_streaming.api import prometheus
from heliosdb_streaming.control.service import JobServiceCore
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.types import (
    CheckpointInfo,
    JobDetails,
    JobMetrics,
    JobPlanInfo,
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

    async def validate_job(self, config: JobConfig, from_savepoint: str | None = None) -> JobPlanInfo:
        """Every check of ``submit_job`` (a dry run): the plan, or the error submit would raise. Creates
        nothing."""
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

    async def purge_job(self, job_id: str) -> None: ...

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


class CoreJobService:
    """The REST API over a ``JobServiceCore`` in this process (a ``JobManager``, or an operator's core)."""

    def __init__(self, manager: JobServiceCore) -> None:
        self.manager = manager

    async def start(self) -> None:
        await self.manager.start()

    async def close(self) -> None:
        await self.manager.close()

    async def submit_job(self, config: JobConfig, from_savepoint: str | None = None) -> str:
        return await self.manager.submit_job(config, from_savepoint=from_savepoint)

    async def validate_job(self, config: JobConfig, from_savepoint: str | None = None) -> JobPlanInfo:
        return await self.manager.validate_job(config, from_savepoint=from_savepoint)

    async def list_jobs_json(self, status: JobStatus | None, limit: int, offset: int) -> bytes:
        return await self.manager.list_jobs_json(status, limit, offset)

    async def get_job_status(self, job_id: str) -> JobStatus:
        return await self.manager.get_job_status(job_id)

    async def get_job_details(self, job_id: str) -> JobDetails:
        return await self.manager.get_job_details(job_id)

    async def get_job_metrics(self, job_id: str, window: MetricsWindow) -> JobMetrics:
        return await self.manager.get_job_metrics(job_id, window)

    async def get_job_logs(self, job_id: str, options: LogOptions) -> list[LogEntry]:
        return await self.manager.get_job_logs(job_id, options)  # JobNotFoundError -> 404

    async def cancel_job(self, job_id: str) -> None:
        await self.manager.cancel_job(job_id)

    async def purge_job(self, job_id: str) -> None:
        await self.manager.purge_job(job_id)

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
        return await self.manager.restore_savepoint_id(job_id)

    async def prometheus_exposition(self) -> bytes:
        return await prometheus.render_manager(self.manager)


EmbeddedJobService = CoreJobService  # the name it had when only the embedded JobManager was served
