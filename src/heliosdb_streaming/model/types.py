"""Result and option types of the native API (the spec's Rust structs and enums, in Python)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from heliosdb_streaming.model.config import JobConfig, JobConfigOverrides


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


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class LogEntry(_Model):
    timestamp: datetime
    level: LogLevel
    message: str
    task_id: str | None = None


class RestartOptions(_Model):
    savepoint_id: str | None = None
    config_overrides: JobConfigOverrides | None = None


class LatencyStats(_Model):
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0


class ThroughputPoint(_Model):
    timestamp: datetime
    throughput_per_sec: float


class JobMetrics(_Model):
    """The spec's ``JobMetrics`` fields, plus what the REST metrics body nests (latency, errors, ...)."""

    events_processed: int = 0
    events_out: int = 0
    throughput_per_sec: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    latency_p99_ms: float = 0.0
    latency_p999_ms: float = 0.0
    checkpoint_count: int = 0
    last_checkpoint_duration_ms: int = 0
    checkpoint_failures: int = 0
    backpressure_events: int = 0
    backpressure_level: float = 0.0
    restarts: int = 0
    cpu_usage_percent: float = 0.0
    memory_used_mb: int = 0
    memory_total_mb: int = 0
    errors: int = 0
    errors_rate_per_min: float = 0.0
    late_events_dropped: int = 0
    window_seconds: int = 300
    history: list[ThroughputPoint] = Field(default_factory=list)

    @property
    def latency(self) -> LatencyStats:
        return LatencyStats(
            p50_ms=self.latency_p50_ms,
            p95_ms=self.latency_p95_ms,
            p99_ms=self.latency_p99_ms,
            p999_ms=self.latency_p999_ms,
        )


class TaskInfo(_Model):
    task_id: str
    name: str
    status: JobStatus
    parallelism: int


class CheckpointInfo(_Model):
    checkpoint_id: str
    timestamp: datetime
    duration_ms: int
    size_bytes: int
    status: str


class SavepointInfo(_Model):
    savepoint_id: str
    job_id: str
    created_at: datetime
    size_bytes: int
    location: str
    description: str | None = None


class JobSummary(_Model):
    job_id: str
    name: str
    status: JobStatus
    submitted_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    uptime_seconds: int = 0
    parallelism: int


class JobDetails(_Model):
    job_id: str
    name: str
    status: JobStatus
    config: JobConfig
    submitted_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    uptime_secs: int = 0
    metrics: JobMetrics
    tasks: list[TaskInfo]
    checkpoints: list[CheckpointInfo]
    message: str | None = None
    restarts: int = 0

    @property
    def uptime_seconds(self) -> int:
        return self.uptime_secs


def timedelta_ms(td: timedelta) -> int:
    return int(td.total_seconds() * 1000)


def as_dict(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")
