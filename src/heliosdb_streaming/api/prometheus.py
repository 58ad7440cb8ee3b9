"""Prometheus text exposition (format 0.0.4) of the spec's ``heliosdb_job_*`` metrics. No I/O.

``render_manager(jm)`` (or ``render_entries(plane.jobs.values())``) reads the control plane's job
entries directly: totals, the aggregators' cumulative histograms and live gauges, O(jobs) with label
strings formatted once per job and cached. See docs/observability.md for the metric list.

* Every per-job series carries ``job_id`` and ``job_name`` (escaped) labels; no other user data.
* ``heliosdb_job_status`` is a state set: one series per job and status, 1 for the current one, 0 else.
* Counters are the aggregators' lifetime totals: they never go backwards across worker restarts.
* ``heliosdb_job_latency_seconds`` maps the fine log buckets onto fixed buckets (1 ms .. 10 s); its
  ``_count`` is exact and its ``_sum`` is approximated from the fine buckets' midpoints.
* A finished, failed or cancelled job's series disappear ``grace_s`` (default
  ``TERMINAL_SERIES_GRACE_S``) after its ``finished_at``, so the last values still get scraped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from itertools import accumulate
from typing import TYPE_CHECKING

from heliosdb_streaming.control.metrics import CHECKPOINT_BUCKETS_S, LATENCY_BUCKETS_S, CoarseHistogram
from heliosdb_streaming.model.types import JobStatus

if TYPE_CHECKING:
    from heliosdb_streaming.control.controller import ControlPlane, JobEntry
    from heliosdb_streaming.control.service import JobServiceCore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TERMINAL_SERIES_GRACE_S = 300.0
_STATUSES = tuple(JobStatus)
_ACTIVE = frozenset(s for s in JobStatus if not s.terminal)

# name, type, help; the order of the families in the exposition.
_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("heliosdb_job_count", "gauge", "Number of active jobs (submitted, running or paused)."),
    ("heliosdb_job_status", "gauge", "Job status: 1 for the job's current status, 0 for the others."),
    ("heliosdb_job_events_processed_total", "counter", "Total events processed (read by sources)."),
    ("heliosdb_job_throughput", "gauge", "Current throughput (events/sec)."),
    ("heliosdb_job_latency_seconds", "histogram", "Processing latency, source ingest to sink."),
    ("heliosdb_job_checkpoint_duration_seconds", "histogram", "Duration of completed checkpoints."),
    ("heliosdb_job_checkpoint_failures_total", "counter", "Checkpoint failures."),
    ("heliosdb_job_backpressure_events_total", "counter", "Backpressure events."),
    ("heliosdb_job_restarts_total", "counter", "Job restarts (automatic and requested)."),
    ("heliosdb_job_errors_total", "counter", "Job errors (records that failed)."),
    ("heliosdb_job_cpu_usage_percent", "gauge", "CPU usage of the job's workers (100 = one core)."),
    ("heliosdb_job_memory_used_bytes", "gauge", "Resident memory of the job's workers."),
)
(
    _F_COUNT,
    _F_STATUS,
    _F_EVENTS,
    _F_THROUGHPUT,
    _F_LATENCY,
    _F_CHECKPOINT,
    _F_CHECKPOINT_FAILURES,
    _F_BACKPRESSURE,
    _F_RESTARTS,
    _F_ERRORS,
    _F_CPU,
    _F_MEMORY,
) = range(len(_FAMILIES))
_HEADERS = tuple(f"# HELP {name} {help_}\n# TYPE {name} {kind}" for name, kind, help_ in _FAMILIES)
_SIMPLE = (
    _F_EVENTS,
    _F_THROUGHPUT,
    _F_CHECKPOINT_FAILURES,
    _F_BACKPRESSURE,
    _F_RESTARTS,
    _F_ERRORS,
    _F_CPU,
    _F_MEMORY,
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


def _le(bound: float) -> str:
    return f"{bound:g}"


class _JobLines:
    """Everything of one job's series but the values, formatted once (per job id and name)."""

    __slots__ = ("checkpoint", "latency", "name", "simple", "status")

    def __init__(self, job_id: str, name: str) -> None:
        base = f'job_id="{escape_label(job_id)}",job_name="{escape_label(name)}"'
        self.name = name
        self.status = {
            s: f'heliosdb_job_status{{{base},status="{s.value}"}} ' for s in _STATUSES
        }  # value appended
        self.simple = {f: f"{_FAMILIES[f][0]}{{{base}}} " for f in _SIMPLE}
        self.latency = _histogram_prefixes("heliosdb_job_latency_seconds", base, LATENCY_BUCKETS_S)
        self.checkpoint = _histogram_prefixes(
            "heliosdb_job_checkpoint_duration_seconds", base, CHECKPOINT_BUCKETS_S
        )


def _histogram_prefixes(name: str, base: str, bounds: Sequence[float]) -> tuple[str, ...]:
    buckets = [f'{name}_bucket{{{base},le="{_le(b)}"}} ' for b in bounds]
    buckets.append(f'{name}_bucket{{{base},le="+Inf"}} ')
    return (*buckets, f"{name}_sum{{{base}}} ", f"{name}_count{{{base}}} ")


_CACHE: dict[str, _JobLines] = {}


def _lines_for(job_id: str, name: str) -> _JobLines:
    lines = _CACHE.get(job_id)
    if lines is None or lines.name != name:
        lines = _CACHE[job_id] = _JobLines(job_id, name)
    return lines


def _histogram(out: list[str], prefixes: tuple[str, ...], h: CoarseHistogram) -> None:
    cumulative = list(accumulate(h.counts))  # the last one (+Inf) is the count
    out.extend([p + str(c) for p, c in zip(prefixes, cumulative, strict=False)])
    out.append(prefixes[-2] + repr(float(h.sum)))
    out.append(prefixes[-1] + str(cumulative[-1]))


def render_entries(
    entries: Iterable[JobEntry], *, now: float | None = None, grace_s: float = TERMINAL_SERIES_GRACE_S
) -> bytes:
    """The exposition of the control plane's job entries (``ControlPlane.jobs.values()``).

    A terminal job is left out once ``grace_s`` seconds have passed since its ``finished_at``.
    """
    now = time.time() if now is None else now
    out: list[list[str]] = [[] for _ in _FAMILIES]
    active = 0
    seen: set[str] = set()
    for entry in sorted(entries, key=lambda e: e.record.job_id):
        record = entry.record
        status = record.status
        if status in _ACTIVE:
            active += 1
        elif record.finished_at is not None and now - record.finished_at.timestamp() > grace_s:
            continue
        seen.add(record.job_id)
        lines = _lines_for(record.job_id, record.name)
        for s, prefix in lines.status.items():
            out[_F_STATUS].append(prefix + ("1" if s == status else "0"))
        m = entry.metrics
        running = entry.run is not None
        cpu, rss = m.resources() if running else (0.0, 0)
        totals = m.totals
        simple = lines.simple
        out[_F_EVENTS].append(simple[_F_EVENTS] + str(totals["events_in"]))
        out[_F_THROUGHPUT].append(
            simple[_F_THROUGHPUT] + (repr(float(m.current_throughput())) if running else "0.0")
        )
        _histogram(out[_F_LATENCY], lines.latency, m.latency_coarse)
        _histogram(out[_F_CHECKPOINT], lines.checkpoint, m.checkpoint_histogram)
        out[_F_CHECKPOINT_FAILURES].append(simple[_F_CHECKPOINT_FAILURES] + str(m.checkpoint_failures))
        out[_F_BACKPRESSURE].append(simple[_F_BACKPRESSURE] + str(totals["backpressure_events"]))
        out[_F_RESTARTS].append(simple[_F_RESTARTS] + str(record.restarts))
        out[_F_ERRORS].append(simple[_F_ERRORS] + str(totals["errors"]))
        out[_F_CPU].append(simple[_F_CPU] + repr(float(cpu)))
        out[_F_MEMORY].append(simple[_F_MEMORY] + str(rss))
    out[_F_COUNT].append(f"heliosdb_job_count {active}")
    if len(_CACHE) > 2 * len(seen) + 64:  # forget label strings of jobs no longer exported
        for job_id in [j for j in _CACHE if j not in seen]:
            del _CACHE[job_id]
    parts: list[str] = []
    for header, lines_ in zip(_HEADERS, out, strict=True):
        parts.append(header)
        parts.extend(lines_)
    parts.append("")
    return "\n".join(parts).encode()


def render_plane(
    plane: ControlPlane, *, now: float | None = None, grace_s: float = TERMINAL_SERIES_GRACE_S
) -> bytes:
    return render_entries(list(plane.jobs.values()), now=now, grace_s=grace_s)


async def render_manager(jm: JobServiceCore, *, grace_s: float = TERMINAL_SERIES_GRACE_S) -> bytes:
    """The exposition of every job of ``jm`` (started if it was not): what ``GET /metrics`` serves."""
    await jm.start()
    return render_plane(jm.control_plane, grace_s=grace_s)
