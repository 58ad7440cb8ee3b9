"""The autoscaler's ``heliosdb_job_autoscaler_*`` metrics, a collector beside ``prometheus.JobsCollector``.

One series per autoscaled job (``config.autoscaler.enabled``, not terminal; no families at all while
there is none), labelled ``job_id`` and ``job_name``
as the job metrics are; the decisions counter also by ``action``. Read from the entries'
``AutoscalerState`` (``control.autoscaler``); no I/O. Kept apart from ``prometheus.py`` so that the
job metrics and the autoscaler's can change independently.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from heliosdb_streaming.control.entry import JobEntry

PREFIX = "heliosdb_job_autoscaler_"
PARALLELISM = PREFIX + "parallelism"
RECOMMENDED = PREFIX + "recommended_parallelism"
UTILIZATION = PREFIX + "utilization"
BACKPRESSURE = PREFIX + "backpressure"
DECISIONS = PREFIX + "decisions_total"
RESCALES = PREFIX + "rescales_total"
ACTIONS = ("none", "scale_up", "scale_down")
_JOB = ("job_id", "job_name")


class AutoscalerCollector(Collector):
    """The autoscaler families of the autoscaled jobs among ``entries`` (terminal jobs left out)."""

    def __init__(self, entries: Iterable[JobEntry]) -> None:
        self.entries = entries

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
    ]:
        return (
            GaugeMetricFamily(PARALLELISM, "Parallelism the autoscaled job runs at.", labels=_JOB),
            GaugeMetricFamily(RECOMMENDED, "Parallelism of the autoscaler's last decision.", labels=_JOB),
            GaugeMetricFamily(
                UTILIZATION,
                "Mean busy fraction of the job's workers over the autoscaler's metrics window.",
                labels=_JOB,
            ),
            GaugeMetricFamily(
                BACKPRESSURE,
                "Mean fraction of time the job's sources waited on its processing (same window).",
                labels=_JOB,
            ),
            CounterMetricFamily(
                DECISIONS,
                "Autoscaler decisions recorded (each that changed kind, action or parallelism).",
                labels=(*_JOB, "action"),
            ),
            CounterMetricFamily(RESCALES, "Rescales the autoscaler completed.", labels=_JOB),
        )

    def collect(self) -> Iterator[Metric]:
        """Nothing (not even the families' HELP lines) while no job is autoscaled."""
        autoscaled = [e for e in self.entries if e.config.autoscaler.enabled and not e.record.status.terminal]
        if not autoscaled:
            return
        parallelism, recommended, utilization, backpressure, decisions, rescales = self._families()
        for entry in sorted(autoscaled, key=lambda e: e.record.job_id):
            state = entry.autoscaling
            job = [entry.record.job_id, entry.record.name]
            parallelism.add_metric(job, entry.config.parallelism)
            last = state.last.decision if state.last is not None else None
            recommended.add_metric(job, last.parallelism if last else entry.config.parallelism)
            if last is not None and last.utilization is not None:
                utilization.add_metric(job, last.utilization)
                backpressure.add_metric(job, last.backpressure or 0.0)
            for action in ACTIONS:
                decisions.add_metric([*job, action], state.decisions.get(action, 0))
            rescales.add_metric(job, state.rescales)
        yield from (parallelism, recommended, utilization, backpressure, decisions, rescales)
