"""The native API: ``from heliosdb_streaming.job import JobManager, JobConfig, ...``.

Re-exports only: the types live in :mod:`heliosdb_streaming.model`, ``JobManager`` (the embedded
job manager) in :mod:`heliosdb_streaming.job.manager`. This is the public import path; the modules
behind it may move.
"""

from heliosdb_streaming.job.manager import JobManager
from heliosdb_streaming.model.config import (
    JobConfig,
    JobConfigOverrides,
    JobSettings,
    JobSubmitRequest,
    OnErrorPolicy,
    RestartStrategy,
    StateBackendType,
)
from heliosdb_streaming.model.connectors import SinkConfig, SourceConfig
from heliosdb_streaming.model.errors import (
    FieldError,
    IllegalStateTransitionError,
    InvalidJobConfigError,
    JobError,
    JobHasSavepointsError,
    JobNotFoundError,
    JobNotTerminalError,
    JobRestartingError,
    PythonNotAllowedError,
    SavepointFailedError,
    SavepointInUseError,
    SavepointNotFoundError,
)
from heliosdb_streaming.model.transformations import TransformationConfig
from heliosdb_streaming.model.types import (
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
    "JobHasSavepointsError",
    "JobManager",
    "JobMetrics",
    "JobNotFoundError",
    "JobNotTerminalError",
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
    "PythonNotAllowedError",
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
