"""Response bodies of the REST API, as pydantic models that mirror the spec's JSON key for key.

One model per concept: where the wire shape is a native type's (a job summary, task, checkpoint,
savepoint, log line, throughput point, latency), the body *is* that type of ``model.types`` (``Record``),
served as it is; this module declares only the envelopes around them and the shapes the REST API does
not share with the native API (the nested metrics body, a job's settings, errors). ``openapi.py``
generates the document from these models. Keys the spec does not show are marked "(addition)" in their
description.

Timestamps are ISO-8601 UTC with a ``Z`` suffix: whole seconds for job times (``2025-10-29T10:00:00Z``)
and milliseconds for log lines (``2025-10-29T10:00:05.123Z``), as the spec shows them
(``model.types.Timestamp``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from heliosdb_streaming.api.errors import ERROR_CODES
from heliosdb_streaming.model.config import AutoscalerSettings
from heliosdb_streaming.model.types import (
    AutoscalerInfo,
    CheckpointInfo,
    DetailsMetrics,
    JobDetails,
    JobMetrics,
    JobPlanInfo,
    JobStatus,
    JobSummary,
    LatencyStats,
    LogEntry,
    Record,
    SavepointInfo,
    StageTaskMetrics,
    TaskInfo,
    ThroughputPoint,
    Timestamp,
)
from heliosdb_streaming.runtime.connectors.secrets import mask_secrets


class ApiBody(Record):
    """Base of the response bodies that only the REST API has, configured as the native ``Record``s
    the API serves: every key is always present (null when unknown), so the schema marks every field
    required even where the model has a default (and shows the defaults, such as ``"deleted": true``)."""

    model_config = ConfigDict(json_schema_extra=None)


# ------------------------------------------------------------------------------------------ errors


class ErrorDetail(ApiBody):
    path: str = Field(description="What the detail is about: a body field path, a query parameter, 'status'")
    message: str


class ErrorInfo(ApiBody):
    code: str = Field(
        description="Stable machine-readable code (each always with the same HTTP status; docs/errors.md): "
        + ", ".join(ERROR_CODES)
    )
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorResponse(ApiBody):
    error: ErrorInfo


# ------------------------------------------------------------------------------------------- jobs


class SubmitJobResponse(ApiBody):
    job_id: str = Field(examples=["job-123e4567-e89b-12d3-a456-426614174000"])
    status: JobStatus
    submitted_at: Timestamp
    message: str


class JobValidationResponse(ApiBody):
    """(addition) The answer of a dry run (``POST /api/v1/jobs?dry_run=true``): the job passed every
    check a submit makes; nothing was created."""

    valid: bool = Field(description="Always true: an invalid job is answered 400 with every error")
    name: str
    parallelism: int
    plan: JobPlanInfo = Field(description="The stages the job would run in, and why each boundary exists")
    message: str


class JobListResponse(ApiBody):
    jobs: list[JobSummary]
    total: int = Field(description="Number of jobs matching the status filter, before limit/offset")
    limit: int
    offset: int


class JobSettingsBody(ApiBody):
    """The ``config`` object of the submit body, as the job runs with it (defaults filled in)."""

    parallelism: int
    checkpoint_interval_ms: int
    state_backend: str
    restart_strategy: str | dict[str, Any] = Field(
        description="The bare name when the parameters are the defaults, else an object with them"
    )
    on_error: str = Field(description="(addition) skip or fail a record that fails an expression or sink")
    checkpoints_retained: int = Field(description="(addition)")
    max_state_mb: int = Field(description="(addition) memory state backend: the state a task may hold")
    max_parallelism: int = Field(
        description="(addition) key groups of every keyed stage, fixed for the job's life"
    )
    idle_timeout_ms: int = Field(
        description="(addition) an origin silent this long stops holding back the watermark"
    )
    savepoint_interval_ms: int = Field(
        default=0, description="(addition) how often a savepoint described 'periodic' is taken; 0: never"
    )
    savepoints_retained: int = Field(default=3, description="(addition) periodic savepoints kept")
    repartition: dict[str, Any] | None = Field(
        default=None, description="(addition) brokers of the internal repartition topics, when set"
    )
    autoscaler: AutoscalerSettings | None = Field(
        default=None, description="(addition) the autoscaler's settings (docs/operations.md#autoscaling)"
    )

    @classmethod
    def of(cls, settings: dict[str, Any]) -> JobSettingsBody:
        """The body of ``JobConfig.settings_dict()``; a job's own ``checkpoint_storage`` is not shown
        (its savepoints' ``location`` says where they are), and must not fail the details."""
        return cls.model_validate({k: v for k, v in settings.items() if k != "checkpoint_storage"})


class JobDetailsResponse(ApiBody):
    job_id: str
    name: str
    status: JobStatus
    config: JobSettingsBody
    submitted_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None = Field(description="(addition) null until the job is terminal")
    uptime_seconds: int
    uptime_ms: int = Field(description="(addition) uptime_seconds to the millisecond")
    recovering: bool = Field(
        description="(addition) true while an active job has no working run: its automatic restart "
        "after a failure, or after a control-plane restart, is pending or starting (message says which)"
    )
    message: str | None = Field(
        description="(addition) why the job is in its status (e.g. a failure), or null"
    )
    metrics: DetailsMetrics
    tasks: list[TaskInfo]
    checkpoints: list[CheckpointInfo]
    plan: JobPlanInfo = Field(description="(addition) the job's stages, and why each boundary exists")
    # ---- autoscaler (issue 16)
    autoscaler: AutoscalerInfo | None = Field(
        default=None,
        description="(addition) the autoscaler's last decision, its reason and the recent ones; null "
        "when config.autoscaler is not enabled",
    )

    @classmethod
    def of(cls, d: JobDetails) -> JobDetailsResponse:
        return cls(
            job_id=d.job_id,
            name=d.name,
            status=d.status,
            config=JobSettingsBody.of(d.config.settings_dict()),
            submitted_at=d.submitted_at,
            started_at=d.started_at,
            finished_at=d.finished_at,
            uptime_seconds=d.uptime_secs,
            uptime_ms=d.uptime_ms,
            recovering=d.recovering,
            message=mask_secrets(d.message) if d.message else d.message,
            metrics=d.metrics,  # a JobMetrics: the field's type, DetailsMetrics, serializes its keys
            tasks=d.tasks,
            checkpoints=d.checkpoints,
            plan=d.plan,
            autoscaler=d.autoscaler,
        )


class CancelJobResponse(ApiBody):
    """``savepoint_id`` appears only when the cancel took a savepoint (``?savepoint=true``); ``purged``
    only with ``?purge=true``: the terminal job is gone, and its status and time are its last ones."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=False)

    job_id: str
    status: JobStatus
    cancelled_at: Timestamp = Field(description="When the job stopped (ended, with purge=true)")
    savepoint_id: str | None = None
    purged: bool | None = Field(
        default=None, description="(addition) true: the job, its logs, checkpoints and files are removed"
    )

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class JobStatusResponse(ApiBody):
    """Answer of pause and resume (addition): the job's status after the command."""

    job_id: str
    status: JobStatus


# ------------------------------------------------------------------------- savepoints and restart


class RequestBody(BaseModel):
    """Base of the optional request bodies: unknown keys are rejected with their path."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CreateSavepointRequest(RequestBody):
    """The optional body of ``POST /api/v1/jobs/{job_id}/savepoints``."""

    description: str | None = Field(
        default=None, max_length=1000, examples=["Pre-upgrade savepoint"], description="Free text, kept"
    )


class SavepointListResponse(ApiBody):
    """(addition) The job's completed savepoints, oldest first."""

    job_id: str
    savepoints: list[SavepointInfo]


class SavepointDeletedResponse(ApiBody):
    """(addition) Answer of deleting a savepoint: its files are gone."""

    savepoint_id: str
    deleted: Literal[True] = True


class CheckpointListResponse(ApiBody):
    """(addition) Every checkpoint the job keeps a record of, oldest first: completed, failed and in
    progress."""

    job_id: str
    checkpoints: list[CheckpointInfo]


class RestartJobResponse(ApiBody):
    job_id: str
    status: JobStatus = Field(
        description="The status once the restarted run started (running), or after a bounded wait "
        "(submitted while it waits for worker slots)"
    )
    restarted_at: Timestamp
    restored_from_savepoint: str | None = Field(
        description="The savepoint restored, or null when restored from a checkpoint or from the beginning"
    )
    message: str


# ---------------------------------------------------------------------------------------- metrics


class CheckpointMetricsBody(ApiBody):
    count: int
    last_duration_ms: int
    failures: int


class BackpressureBody(ApiBody):
    events_total: int
    current_level: float = Field(
        description="Share of the last second the sources spent blocked on downstream (a full queue), "
        "the highest of the job's workers: 0.0 when nothing waits, 1.0 when they wait all the time"
    )


class ResourcesBody(ApiBody):
    cpu_usage_percent: float
    memory_used_mb: int
    memory_total_mb: int


class ErrorsBody(ApiBody):
    count: int
    rate_per_min: float


class SourceMetricsBody(ApiBody):
    """(addition) How far behind the job's sources are."""

    lag_records: int | None = Field(
        description="Records behind the newest offset: Kafka, high watermark minus position summed over "
        "the partitions; datagen, records due and not yet read; null when not running or unknown"
    )


class MetricsBody(ApiBody):
    events_processed_total: int
    throughput_per_sec: float
    latency: LatencyStats
    checkpoint: CheckpointMetricsBody
    backpressure: BackpressureBody
    resources: ResourcesBody
    errors: ErrorsBody
    average_throughput_per_sec: float = Field(
        description="(addition) events_processed_total / running_ms: the rate over the whole running time"
    )
    running_ms: int = Field(description="(addition) the job's real running time over all its runs")
    late_events_dropped: int = Field(
        description="(addition) events behind the watermark that windows and CEP dropped"
    )
    source: SourceMetricsBody = Field(description="(addition) source lag")
    stage_tasks: list[StageTaskMetrics] = Field(
        default_factory=list,
        description="(addition) the key-group tasks of later stages (after a repartition): records in, "
        "out and failed in the current run",
    )


class JobMetricsResponse(ApiBody):
    job_id: str
    timestamp: Timestamp
    window: str = Field(description="(addition) the window the rates and percentiles cover: 1m, 5m, 1h, 24h")
    metrics: MetricsBody
    history: list[ThroughputPoint] = Field(description="Throughput per minute over the window, oldest first")

    @classmethod
    def of(cls, job_id: str, now: datetime, window: str, m: JobMetrics) -> JobMetricsResponse:
        return cls(
            job_id=job_id,
            timestamp=now,
            window=window,
            metrics=MetricsBody(
                events_processed_total=m.events_processed,
                throughput_per_sec=m.throughput_per_sec,
                latency=m.latency,
                checkpoint=CheckpointMetricsBody(
                    count=m.checkpoint_count,
                    last_duration_ms=m.last_checkpoint_duration_ms,
                    failures=m.checkpoint_failures,
                ),
                backpressure=BackpressureBody(
                    events_total=m.backpressure_events, current_level=m.backpressure_level
                ),
                resources=ResourcesBody(
                    cpu_usage_percent=m.cpu_usage_percent,
                    memory_used_mb=m.memory_used_mb,
                    memory_total_mb=m.memory_total_mb,
                ),
                errors=ErrorsBody(count=m.errors, rate_per_min=m.errors_rate_per_min),
                average_throughput_per_sec=m.average_throughput_per_sec,
                running_ms=m.running_ms,
                late_events_dropped=m.late_events_dropped,
                source=SourceMetricsBody(lag_records=m.source_lag_records),
                stage_tasks=m.stage_tasks,
            ),
            history=m.history,
        )


# ------------------------------------------------------------------------------------------- logs


def masked(entry: LogEntry) -> LogEntry:
    """The log line as the API shows it: connection strings and secrets in the message masked."""
    return entry.model_copy(update={"message": mask_secrets(entry.message)})


class JobLogsResponse(ApiBody):
    job_id: str
    logs: list[LogEntry]
    total: int = Field(description="Number of log lines returned")
    limit: int


# ----------------------------------------------------------------------------------------- health


class HealthResponse(ApiBody):
    status: Literal["ok"] = "ok"
