"""Prometheus text exposition (format 0.0.4) of the spec's ``heliosdb_job_*`` metrics. Pure: no I/O.

Every per-job series carries ``job_id`` and ``name`` labels. ``heliosdb_job_status`` has one series per
job, for its current status, with the value 1 (the usual "state set" idiom). The spec's histograms
(latency, checkpoint duration) are not exported yet: the control plane keeps percentiles, not buckets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from heliosdb_streaming.job.types import JobMetrics, JobSummary

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class _Family:
    name: str
    kind: str
    help: str


_JOB_COUNT = _Family("heliosdb_job_count", "gauge", "Number of active jobs (submitted, running or paused).")
_STATUS = _Family("heliosdb_job_status", "gauge", "Job status by job_id: 1 for the job's current status.")
_PER_JOB: tuple[tuple[_Family, str], ...] = (
    (
        _Family("heliosdb_job_events_processed_total", "counter", "Total events processed."),
        "events_processed",
    ),
    (_Family("heliosdb_job_throughput", "gauge", "Current throughput (events/sec)."), "throughput_per_sec"),
    (
        _Family("heliosdb_job_checkpoint_failures_total", "counter", "Checkpoint failures."),
        "checkpoint_failures",
    ),
    (
        _Family("heliosdb_job_backpressure_events_total", "counter", "Backpressure events."),
        "backpressure_events",
    ),
    (_Family("heliosdb_job_restarts_total", "counter", "Job restarts."), "restarts"),
    (_Family("heliosdb_job_errors_total", "counter", "Job errors."), "errors"),
)


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def _header(family: _Family) -> list[str]:
    return [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {family.kind}"]


def render(jobs: Sequence[tuple[JobSummary, JobMetrics]]) -> str:
    """The exposition text for ``jobs`` (each with its metrics), ending with a newline."""
    lines = _header(_JOB_COUNT)
    lines.append(f"{_JOB_COUNT.name} {sum(1 for s, _ in jobs if not s.status.terminal)}")
    lines += _header(_STATUS)
    for s, _ in jobs:
        labels = _labels((("job_id", s.job_id), ("name", s.name), ("status", s.status.value)))
        lines.append(f"{_STATUS.name}{labels} 1")
    for family, field in _PER_JOB:
        lines += _header(family)
        for s, m in jobs:
            labels = _labels((("job_id", s.job_id), ("name", s.name)))
            lines.append(f"{family.name}{labels} {format_value(getattr(m, field))}")
    return "\n".join(lines) + "\n"
