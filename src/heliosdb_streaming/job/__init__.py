"""The native API: ``from heliosdb_streaming.job import JobManager, JobConfig, ...``.

``JobManager`` is imported lazily: the control plane imports the model types from this package,
and the manager imports the control plane.
"""

from typing import TYPE_CHECKING, Any

from heliosdb_streaming.job.config import (
    JobConfig,
    JobConfigOverrides,
    JobSettings,
    JobSubmitRequest,
    OnErrorPolicy,
    RestartStrategy,
    StateBackendType,
)
from heliosdb_streaming.job.connectors import SinkConfig, SourceConfig, TransformationConfig
from heliosdb_streaming.job.errors import (
    FieldError,
    IllegalStateTransitionError,
    InvalidJobConfigError,
    JobError,
    JobNotFoundError,
    JobRestartingError,
    SavepointFailedError,
    SavepointInUseError,
    SavepointNotFoundError,
)
from heliosdb_streaming.job.types import (
    CheckpointInfo,
    JobDetails,
    JobMetrics,
    JobStatus,
    JobSummary,
    LatencyStats,
    ListJobsOptions,
    LogEntry,
    LogLevel,
    LogOptions,
    MetricsWindow,
    RestartOptions,
    SavepointInfo,
    TaskInfo,
)

__all__ = [
    "CheckpointInfo",
    "FieldError",
    "IllegalStateTransitionError",
    "InvalidJobConfigError",
    "JobConfig",
    "JobConfigOverrides",
    "JobDetails",
    "JobError",
    "JobManager",
    "JobMetrics",
    "JobNotFoundError",
    "JobRestartingError",
    "JobSettings",
    "JobStatus",
    "JobSubmitRequest",
    "JobSummary",
    "LatencyStats",
    "ListJobsOptions",
    "LogEntry",
    "LogLevel",
    "LogOptions",
    "MetricsWindow",
    "OnErrorPolicy",
    "RestartOptions",
    "RestartStrategy",
    "SavepointFailedError",
    "SavepointInUseError",
    "SavepointInfo",
    "SavepointNotFoundError",
    "SinkConfig",
    "SourceConfig",
    "StateBackendType",
    "TaskInfo",
    "TransformationConfig",
]

if TYPE_CHECKING:
    from heliosdb_streaming.job.manager import JobManager


def __getattr__(name: str) -> Any:
    if name == "JobManager":
        from heliosdb_streaming.job.manager import JobManager

        return JobManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
