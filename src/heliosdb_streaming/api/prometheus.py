"""The spec's ``heliosdb_job_*`` metrics as a ``prometheus_client`` collector. No I/O.

``JobsCollector`` is a custom collector (``prometheus_client.registry.Collector``) over control-plane
job entries: totals, the aggregators' cumulative histograms and live gauges, O(jobs). Each scrape
registers one over the entries it exposes in a registry of its own (``render_entries``), so the
embedded server (``render_manager``: every job) and the operator (``render_entries_async`` of one
namespace's jobs) render with ``generate_latest`` alike; the request handlers format the text in a
thread, off the event loop. See docs/observability.md for the metric list.

* Every per-job series carries ``job_id`` and ``job_name`` labels; no other user data. The operator
  adds the job's resource (``namespace``, ``streamingjob``: ``job_labels``), so that a scrape of the
  Kubernetes substrate can be joined with kube-state-metrics and filtered per namespace.
* ``heliosdb_job_status`` is a state set: one series per job and status, 1 for the current one, 0 else.
* Counters are the aggregators' lifetime totals: they never go backwards across worker restarts.
  Their names keep the spec's ``_total`` (``CounterMetricFamily`` strips and re-appends it).
* ``heliosdb_job_latency_seconds`` maps the fine log buckets onto fixed buckets (1 ms .. 10 s); its
  ``_count`` is exact and its ``_sum`` is approximated from the fine buckets' midpoints.
* A finished, failed or cancelled job's series disappear ``grace_s`` (default
  ``TERMINAL_SERIES_GRACE_S``) after its ``finished_at``, so the last values still get scraped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import accumulate
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from heliosdb_streaming.api.prometheus_autoscaler import AutoscalerCollector
from heliosdb_streaming.control.metrics import CHECKPOINT_BUCKETS_S, LATENCY_BUCKETS_S, CoarseHistogram
from heliosdb_streaming.model.types import JobStatus

if TYPE_CHECKING:
    from heliosdb_streaming.control.entry import JobEntry
    from heliosdb_streaming.control.service import JobServiceCore

# generate_latest writes the text format 0.0.4 (metric and label names are plain, so no escaping)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TERMINAL_SERIES_GRACE_S = 300.0
_ACTIVE = frozenset(s for s in JobStatus if not s.terminal)
_JOB = ("job_id", "job_name")

COUNT = "heliosdb_job_count"
STATUS = "heliosdb_job_status"
EVENTS = "heliosdb_job_events_processed_total"
THROUGHPUT = "heliosdb_job_throughput"
LATENCY = "heliosdb_job_latency_seconds"
CHECKPOINT = "heliosdb_job_checkpoint_duration_seconds"
CHECKPOINT_FAILURES = "heliosdb_job_checkpoint_failures_total"
BACKPRESSURE = "heliosdb_job_backpressure_events_total"
RESTARTS = "heliosdb_job_restarts_total"
ERRORS = "heliosdb_job_errors_total"
CPU = "heliosdb_job_cpu_usage_percent"
MEMORY = "heliosdb_job_memory_used_bytes"
LATE = "heliosdb_job_late_events_dropped_total"
BACKPRESSURE_LEVEL = "heliosdb_job_backpressure_level"
SOURCE_LAG = "heliosdb_job_source_lag_records"

HELP = {
    COUNT: "Number of active jobs (submitted, running or paused).",
    STATUS: "Job status: 1 for the job's current status, 0 for the others.",
    EVENTS: "Total events processed (read by sources).",
    THROUGHPUT: "Current throughput (events/sec).",
    LATENCY: "Processing latency, source ingest to sink.",
    CHECKPOINT: "Duration of completed checkpoints.",
    CHECKPOINT_FAILURES: "Checkpoint failures.",
    BACKPRESSURE: "Backpressure events.",
    RESTARTS: "Job restarts (automatic and requested).",
    ERRORS: "Job errors (records that failed).",
    CPU: "CPU usage of the job's workers (100 = one core).",
    MEMORY: "Resident memory of the job's workers.",
    LATE: "Events behind the watermark that windows and CEP dropped.",
    BACKPRESSURE_LEVEL: "Share of time the sources wait on downstream (0: nothing waits, 1: always).",
    SOURCE_LAG: "Records the sources are behind their newest offset (jobs whose sources know it).",
}
_LATENCY_LE = (*(f"{b:g}" for b in LATENCY_BUCKETS_S), "+Inf")
_CHECKPOINT_LE = (*(f"{b:g}" for b in CHECKPOINT_BUCKETS_S), "+Inf")


def _families() -> dict[str, Metric]:
    """The families, empty, in the order of the exposition."""
    return {
        COUNT: GaugeMetricFamily(COUNT, HELP[COUNT]),
        STATUS: GaugeMetricFamily(STATUS, HELP[STATUS], labels=(*_JOB, "status")),
        EVENTS: CounterMetricFamily(EVENTS, HELP[EVENTS], labels=_JOB),
        THROUGHPUT: GaugeMetricFamily(THROUGHPUT, HELP[THROUGHPUT], labels=_JOB),
        LATENCY: HistogramMetricFamily(LATENCY, HELP[LATENCY], labels=_JOB),
        CHECKPOINT: HistogramMetricFamily(CHECKPOINT, HELP[CHECKPOINT], labels=_JOB),
        CHECKPOINT_FAILURES: CounterMetricFamily(CHECKPOINT_FAILURES, HELP[CHECKPOINT_FAILURES], labels=_JOB),
        BACKPRESSURE: CounterMetricFamily(BACKPRESSURE, HELP[BACKPRESSURE], labels=_JOB),
        RESTARTS: CounterMetricFamily(RESTARTS, HELP[RESTARTS], labels=_JOB),
        ERRORS: CounterMetricFamily(ERRORS, HELP[ERRORS], labels=_JOB),
        CPU: GaugeMetricFamily(CPU, HELP[CPU], labels=_JOB),
        MEMORY: GaugeMetricFamily(MEMORY, HELP[MEMORY], labels=_JOB),
        LATE: CounterMetricFamily(LATE, HELP[LATE], labels=_JOB),
        BACKPRESSURE_LEVEL: GaugeMetricFamily(BACKPRESSURE_LEVEL, HELP[BACKPRESSURE_LEVEL], labels=_JOB),
        SOURCE_LAG: GaugeMetricFamily(SOURCE_LAG, HELP[SOURCE_LAG], labels=_JOB),
    }


# The families with one series per job. Their sample names are the spec's: a counter's family name
# lacks ``_total`` (``CounterMetricFamily`` strips it), its samples and HELP/TYPE lines carry it.
_SIMPLE = (
    EVENTS, THROUGHPUT, CHECKPOINT_FAILURES, BACKPRESSURE, RESTARTS, ERRORS, CPU, MEMORY, LATE,
    BACKPRESSURE_LEVEL,
)  # fmt: skip


class _JobLabels:
    """One job's label sets, built once per job id and name and shared by its samples."""

    __slots__ = ("checkpoint", "extra", "job", "latency", "name", "status")

    def __init__(self, job_id: str, name: str, extra: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.extra = dict(extra or {})
        self.job = {"job_id": job_id, "job_name": name, **self.extra}
        self.status = [(s, {**self.job, "status": s.value}) for s in JobStatus]
        self.latency = [{**self.job, "le": le} for le in _LATENCY_LE]
        self.checkpoint = [{**self.job, "le": le} for le in _CHECKPOINT_LE]


class JobsCollector(Collector):
    """The ``heliosdb_job_*`` families of control-plane job entries (``ControlPlane.jobs.values()``).

    A terminal job is left out once ``grace_s`` seconds have passed since its ``finished_at``;
    ``heliosdb_job_count`` counts the active ones among ``entries``. ``now`` (default: the time of
    each ``collect``) is for tests. The samples are appended as ``add_metric`` would, but with label
    dicts cached per job id and name (``labels``; by default one cache for the process, pruned of the
    jobs a scrape no longer exports): building them per sample cost more than the rest of ``collect``."""

    def __init__(
        self,
        entries: Iterable[JobEntry],
        *,
        now: float | None = None,
        grace_s: float = TERMINAL_SERIES_GRACE_S,
        labels: dict[str, _JobLabels] | None = None,
        job_labels: Callable[[str], Mapping[str, str]] | None = None,
    ) -> None:
        """``job_labels``: job id -> labels every series of the job carries besides its id and name."""
        self.job_labels = job_labels
        self.entries = entries
        self.now = now
        self.grace_s = grace_s
        self.labels = _LABELS if labels is None else labels

    def describe(self) -> Iterable[Metric]:
        return list(_families().values())

    def _labels_of(self, job_id: str, name: str) -> _JobLabels:
        extra = self.job_labels(job_id) if self.job_labels is not None else {}
        labels = self.labels.get(job_id)
        if labels is None or labels.name != name or labels.extra != extra:
            labels = self.labels[job_id] = _JobLabels(job_id, name, extra)
        return labels

    def collect(self) -> Iterator[Metric]:
        now = time.time() if self.now is None else self.now
        f = _families()
        status_f, latency_f, checkpoint_f = f[STATUS].samples, f[LATENCY].samples, f[CHECKPOINT].samples
        simple = [(f[name].samples, name) for name in _SIMPLE]  # counters: the spec's ``_total`` name
        lag_f = f[SOURCE_LAG].samples
        active = 0
        seen: set[str] = set()
        for entry in sorted(self.entries, key=lambda e: e.record.job_id):
            record = entry.record
            status = record.status
            if status in _ACTIVE:
                active += 1
            elif record.finished_at is not None and now - record.finished_at.timestamp() > self.grace_s:
                continue
            seen.add(record.job_id)
            labels = self._labels_of(record.job_id, record.name)
            job = labels.job
            status_f.extend([Sample(STATUS, ls, 1 if s == status else 0) for s, ls in labels.status])
            _histogram(latency_f, LATENCY, labels.latency, job, entry.metrics.latency_coarse)
            _histogram(checkpoint_f, CHECKPOINT, labels.checkpoint, job, entry.metrics.checkpoint_histogram)
            m = entry.metrics
            running = entry.run is not None
            cpu, rss = m.resources() if running else (0.0, 0)
            totals = m.totals
            values = (
                totals["events_in"],
                m.current_throughput() if running else 0.0,
                m.checkpoint_failures,
                totals["backpressure_events"],
                record.restarts,
                totals["errors"],
                cpu,
                rss,
                m.late_dropped,
                m.backpressure_level if running else 0.0,
            )
            for (samples, sample_name), value in zip(simple, values, strict=True):
                samples.append(Sample(sample_name, job, value))
            lag = m.source_lag() if running else None
            if lag is not None:  # a job whose sources cannot tell has no series, rather than a false 0
                lag_f.append(Sample(SOURCE_LAG, job, lag))
        f[COUNT].samples.append(Sample(COUNT, {}, active))
        if len(self.labels) > 2 * len(seen) + 64:  # forget the labels of jobs no longer exported
            for job_id in [j for j in self.labels if j not in seen]:
                self.labels.pop(job_id, None)
        yield from f.values()


def _histogram(
    samples: list[Sample], name: str, buckets: list[dict[str, str]], job: dict[str, str], h: CoarseHistogram
) -> None:
    """What ``HistogramMetricFamily.add_metric`` appends: cumulative buckets, the last (+Inf) the count."""
    cumulative = list(accumulate(h.counts))
    samples.extend([Sample(f"{name}_bucket", ls, c) for ls, c in zip(buckets, cumulative, strict=True)])
    samples.append(Sample(f"{name}_count", job, cumulative[-1]))
    samples.append(Sample(f"{name}_sum", job, h.sum))


_LABELS: dict[str, _JobLabels] = {}


def render_entries(
    entries: Iterable[JobEntry], *, now: float | None = None, grace_s: float = TERMINAL_SERIES_GRACE_S
) -> bytes:
    """The exposition of ``entries``: a registry of this scrape's own with a ``JobsCollector``."""
    entries = list(entries)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(entries, now=now, grace_s=grace_s))
    registry.register(AutoscalerCollector(entries))
    return generate_latest(registry)


class _Collected(Collector):
    """Families collected already: what ``generate_latest`` formats in a thread of its own."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


async def render_entries_async(
    entries: Iterable[JobEntry],
    *,
    grace_s: float = TERMINAL_SERIES_GRACE_S,
    job_labels: Callable[[str], Mapping[str, str]] | None = None,
) -> bytes:
    """``render_entries`` for a request handler: the families are collected here, on the event loop
    that updates the entries; ``generate_latest`` (most of a scrape's CPU) formats them in a thread,
    so the loop goes on serving heartbeats and requests meanwhile."""
    entries = list(entries)
    registry = CollectorRegistry(auto_describe=False)
    jobs = JobsCollector(entries, grace_s=grace_s, job_labels=job_labels)
    registry.register(_Collected(list(jobs.collect())))
    registry.register(_Collected(list(AutoscalerCollector(entries).collect())))
    return await asyncio.to_thread(generate_latest, registry)


async def render_manager(jm: JobServiceCore, *, grace_s: float = TERMINAL_SERIES_GRACE_S) -> bytes:
    """The exposition of every job of ``jm`` (started if it was not): what ``GET /metrics`` serves."""
    await jm.start()
    return await render_entries_async(list(jm.control_plane.jobs.values()), grace_s=grace_s)
