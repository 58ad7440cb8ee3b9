"""Result and option types of the native API (the spec's Rust structs and enums, in Python)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from heliosdb_streaming.model.config import JobConfig, JobConfigOverrides
from heliosdb_streaming.model.plan import plan_job


class JobStatus(StrEnum):
    SUBMITTED = "submitted"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELLED)


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARN = "warn"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return _LEVEL_RANK[self]


_LEVEL_RANK = {LogLevel.DEBUG: 10, LogLevel.INFO: 20, LogLevel.WARN: 30, LogLevel.ERROR: 40}


def format_timestamp(value: datetime, *, milliseconds: bool = False) -> str:
    """``2025-10-29T10:00:00Z`` (or ``...:00.123Z``); a naive datetime is taken to be UTC already."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    text = value.astimezone(UTC).isoformat(timespec="milliseconds" if milliseconds else "seconds")
    return text.replace("+00:00", "Z")


def _format_ms(value: datetime) -> str:
    return format_timestamp(value, milliseconds=True)


# A datetime that is written to JSON as the spec shows it: whole seconds for job times, milliseconds
# for log lines, UTC with a Z. In Python (``model_dump()``) it stays a datetime.
Timestamp = Annotated[
    datetime,
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2025-10-29T10:00:00Z"]}),
]
TimestampMs = Annotated[
    datetime,
    PlainSerializer(_format_ms, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2025-10-29T10:00:05.123Z"]}),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _without_defaults(schema: dict[str, Any]) -> None:
    for field in schema.get("properties", {}).values():
        field.pop("default", None)


class Record(BaseModel):
    """Base of the result types: immutable, and the REST API serves them as they are
    (``model_dump(mode="json")``), so every key is always present on the wire (null when unknown): the
    OpenAPI schema marks every field required, and shows no defaults (they are for Python callers)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_serialization_defaults_required=True,
        json_schema_extra=_without_defaults,
    )

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this value, as the REST API serves it."""
        return self.model_dump(mode="json")


class MetricsWindow(_Model):
    """A look-back window for metrics: ``MetricsWindow.minutes(5)`` or ``MetricsWindow.parse("5m")``."""

    seconds: int = Field(ge=60, le=86_400)

    @staticmethod
    def minutes(n: int) -> MetricsWindow:
        return MetricsWindow(seconds=n * 60)

    @staticmethod
    def hours(n: int) -> MetricsWindow:
        return MetricsWindow(seconds=n * 3600)

    @staticmethod
    def parse(text: str) -> MetricsWindow:
        m = re.fullmatch(r"\s*(\d+)\s*([mh])\s*", text or "")
        if not m:
            raise ValueError(f"invalid window {text!r}: use minutes or hours like '1m', '5m', '1h', '24h'")
        n, unit = int(m.group(1)), m.group(2)
        seconds = n * (60 if unit == "m" else 3600)
        if not 60 <= seconds <= 86_400:
            raise ValueError(f"invalid window {text!r}: must be between 1m and 24h")
        return MetricsWindow(seconds=seconds)

    def label(self) -> str:
        return f"{self.seconds // 3600}h" if self.seconds % 3600 == 0 else f"{self.seconds // 60}m"


class ListJobsOptions(_Model):
    status: JobStatus | None = None
    limit: int = Field(default=100, ge=1, le=10_000)
    offset: int = Field(default=0, ge=0)


class LogOptions(_Model):
    level: LogLevel | None = None
    limit: int = Field(default=1000, ge=1, le=100_000)
    tail: bool = False


class LogEntry(Record):
    timestamp: TimestampMs
    level: LogLevel
    message: str
    task_id: str | None = None


class RestartOptions(_Model):
    """The optional body of ``POST /api/v1/jobs/{job_id}/restart``."""

    # (the docstring is the OpenAPI description; natively: JobManager.restart_job's options)
    model_config = ConfigDict(extra="forbid", frozen=True)

    savepoint_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Restore this savepoint; without it the newest checkpoint or savepoint is restored",
        examples=["savepoint-123e4567-e89b-12d3-a456-426614174000"],
    )
    config_overrides: JobConfigOverrides | None = Field(
        default=None, description="Settings the restarted job runs with instead of its own"
    )


class LatencyStats(Record):
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0


class ThroughputPoint(Record):
    timestamp: Timestamp
    throughput_per_sec: float


class DetailsMetrics(Record):
    """The spec's 8 keys first, then additions."""

    # (the docstring is the OpenAPI description: the ``metrics`` of a job's details, JobMetrics' core)

    events_processed: int = 0
    throughput_per_sec: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    checkpoint_count: int = 0
    last_checkpoint_duration_ms: int = 0
    backpressure_events: int = 0
    restarts: int = 0
    events_out: int = Field(default=0, description="(addition) records written by the sinks")
    latency_p95_ms: float = Field(default=0.0, description="(addition)")
    latency_p999_ms: float = Field(default=0.0, description="(addition)")
    checkpoint_failures: int = Field(default=0, description="(addition)")
    errors: int = Field(
        default=0, description="(addition) records skipped or failed by an expression or a sink"
    )
    cpu_usage_percent: float = Field(default=0.0, description="(addition) CPU of the job's workers")
    memory_used_mb: int = Field(default=0, description="(addition) resident memory of the job's workers")
    average_throughput_per_sec: float = Field(
        default=0.0,
        description="(addition) events_processed / running_ms: the rate over the job's whole running time "
        "(throughput_per_sec is the current rate, 0 once nothing flows)",
    )
    running_ms: int = Field(
        default=0,
        description="(addition) the job's real running time over all its runs, in milliseconds, "
        "as its workers measure it",
    )
    late_events_dropped: int = Field(
        default=0, description="(addition) events behind the watermark that windows and CEP dropped"
    )
    source_lag_records: int | None = Field(
        default=None,
        description="(addition) records the sources are behind their newest offset (Kafka: high "
        "watermark minus position, summed over partitions; datagen: records due not yet read); "
        "null when not running or unknown",
    )


class StageTaskMetrics(Record):
    """(addition) A key-group task of a later stage (after a repartition), in the current run."""

    task_id: str = Field(description="s<stage>-kg<first>-<last>: the stage and the key groups it owns")
    events_in: int = Field(default=0, description="records that reached the task through the exchange")
    events_out: int = Field(default=0, description="records it emitted (to the next stage or the sinks)")
    errors: int = Field(default=0, description="records its steps failed or skipped")


class JobMetrics(DetailsMetrics):
    """The spec's ``JobMetrics`` fields, plus what the REST metrics body nests (latency, errors, ...).

    The fields of ``DetailsMetrics`` (the ``metrics`` of a job's details) come first; a field typed
    ``DetailsMetrics`` serializes just those."""

    backpressure_level: float = 0.0
    memory_total_mb: int = 0
    errors_rate_per_min: float = 0.0
    window_seconds: int = 300
    history: list[ThroughputPoint] = Field(default_factory=list)
    stage_tasks: list[StageTaskMetrics] = Field(
        default_factory=list,
        description="(addition) the counters of the key-group tasks of later stages, in the current run",
    )

    @property
    def latency(self) -> LatencyStats:
        return LatencyStats(
            p50_ms=self.latency_p50_ms,
            p95_ms=self.latency_p95_ms,
            p99_ms=self.latency_p99_ms,
            p999_ms=self.latency_p999_ms,
        )


class TaskInfo(Record):
    task_id: str
    name: str
    status: JobStatus
    parallelism: int


class PlanStep(Record):
    index: int = Field(description="Position of the step in the job's transformations")
    type: str


class PlanStage(Record):
    """A run of steps whose tasks see the same grouping of records."""

    index: int
    input: Literal["splits", "key_groups", "global"] = Field(
        description="splits: one task per source split (stage 0); key_groups: records routed by key, "
        "hash(key) mod max_parallelism; global: one task sees every event"
    )
    key: str | None = Field(description="The key expression the stage's input is routed by, or null")
    steps: list[PlanStep]
    tasks: int = Field(description="How many tasks run the stage at the job's parallelism")


class PlanBoundary(Record):
    """Where records cross into a stage, regrouped, and why."""

    stage: int = Field(description="The stage that starts here")
    step: int = Field(description="Position in the transformations of the first step of that stage")
    key: str | None = Field(description="The key records are routed by; null: a global step")
    reason: str


class JobPlanInfo(Record):
    """(addition) The job's plan: its stages, and why each boundary between them exists."""

    stages: list[PlanStage]
    boundaries: list[PlanBoundary]
    declared_key: str | None = Field(
        description="The partitioning the sources declare (partitioned_by; datagen: card_id), or null"
    )

    @classmethod
    def of(cls, config: JobConfig, source_tasks: int | None = None) -> JobPlanInfo:
        """The plan of ``config``; ``source_tasks``: the first stage's tasks when the splits are known
        (a running job), else the job's parallelism."""
        plan = plan_job(list(config.sources), list(config.transformations))
        types = [t.type for t in config.transformations]
        tasks = {
            "splits": source_tasks if source_tasks is not None else config.parallelism,
            "key_groups": min(config.parallelism, config.max_parallelism),
            "global": 1,
        }
        return cls(
            stages=[
                PlanStage(
                    index=s.index,
                    input=s.input,
                    key=s.key,
                    steps=[PlanStep(index=i, type=types[i]) for i in s.steps],
                    tasks=tasks[s.input],
                )
                for s in plan.stages
            ],
            boundaries=[
                PlanBoundary(stage=b.stage, step=b.step, key=b.key, reason=b.reason) for b in plan.boundaries
            ],
            declared_key=plan.declared_key,
        )


class CheckpointInfo(Record):
    checkpoint_id: str
    timestamp: Timestamp
    duration_ms: int
    size_bytes: int
    status: str


class SavepointInfo(Record):
    savepoint_id: str = Field(examples=["savepoint-123e4567-e89b-12d3-a456-426614174000"])
    job_id: str
    created_at: Timestamp
    size_bytes: int
    location: str = Field(description="Where the savepoint is stored: file:///... or s3://...")
    description: str | None = None


class JobSummary(Record):
    """One job in a list. ``started_at``/``finished_at`` are always present, null until they happen."""

    job_id: str
    name: str
    status: JobStatus
    submitted_at: Timestamp
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    uptime_seconds: int = 0
    parallelism: int


# ------------------------------------------------------------------------------------ autoscaler


class AutoscalerDecisionInfo(Record):
    """(addition) One decision of the autoscaler (``control.autoscaler``), with what it was made from."""

    timestamp: TimestampMs
    action: Literal["none", "scale_up", "scale_down"]
    kind: Literal["evaluated", "stabilizing", "cooldown", "collecting"] = Field(
        description="evaluated: load was weighed; else why nothing was decided yet"
    )
    current_parallelism: int
    parallelism: int = Field(description="What the job should run at (the current one for 'none')")
    reason: str
    utilization: float | None = Field(description="Mean busy fraction of the workers over the window")
    backpressure: float | None = Field(description="Mean fraction of time the sources waited")
    required: int | None = Field(description="ceil(current * utilization / target), before the limits")
    limited_by: str | None = Field(description="The limit that capped or raised the required parallelism")
    applied: bool = Field(description="A rescale was started for it (mode apply)")
    inputs: dict[str, Any] = Field(description="Everything the decision was made from")


class AutoscalerInfo(Record):
    """(addition) The job's autoscaler: its settings' mode, the last decision and the recent ones."""

    enabled: bool
    mode: Literal["apply", "recommend"]
    parallelism: int = Field(description="The parallelism the job runs at now")
    rescaling: bool = Field(description="A rescale (savepoint, restart) is in progress")
    rescales: int = Field(description="Rescales the autoscaler completed since the control plane started")
    last_error: str | None = Field(description="Why the last rescale failed, until one succeeds")
    last_decision: AutoscalerDecisionInfo | None
    history: list[AutoscalerDecisionInfo] = Field(
        description="Recent decisions that changed something (kind, action or parallelism), oldest first"
    )


class JobDetails(Record):
    job_id: str
    name: str
    status: JobStatus
    config: JobConfig
    submitted_at: Timestamp
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    uptime_secs: int = 0
    uptime_ms: int = 0
    recovering: bool = False
    metrics: JobMetrics
    tasks: list[TaskInfo]
    checkpoints: list[CheckpointInfo]
    message: str | None = None
    restarts: int = 0
    plan: JobPlanInfo
    autoscaler: AutoscalerInfo | None = None  # (addition) None when config.autoscaler is not enabled

    @property
    def uptime_seconds(self) -> int:
        return self.uptime_secs


def timedelta_ms(td: timedelta) -> int:
    return int(td.total_seconds() * 1000)


def as_dict(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")
