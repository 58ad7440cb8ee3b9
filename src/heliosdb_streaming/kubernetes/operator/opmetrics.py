"""The operator's own metrics and health, on a port of their own (``--metrics-port``, default 8083).

Served from the moment the process starts, by the standby as by the active replica, without a token:
it exposes no job data, only how the operator itself fares, so a Prometheus scrape (the chart's
``prometheus.io/*`` pod annotations) needs no secret. The jobs' metrics stay on the read API
(``/metrics``, behind the API token), where only the active replica answers.

* ``heliosdb_operator_leader``: 1 on the replica that holds the Lease (runs the control plane), 0 on
  a standby.
* ``heliosdb_operator_leader_transitions_total``: times this replica took the Lease over.
* ``heliosdb_operator_reconciles_total{resource,handler}`` and
  ``heliosdb_operator_reconcile_errors_total{resource,handler}``: kopf handler calls and those that
  raised (a temporary wait counts as an error only when it is not the expected "job is busy" retry).
* ``heliosdb_operator_watch_restarts_total`` / ``heliosdb_operator_watch_failures_total``: the pod
  watch of the launcher started again (after the server ended it / after an error).

``/healthz`` answers 200 on both roles (liveness: the event loop runs), with the role in the body.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

DEFAULT_METRICS_PORT = 8083
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class OperatorMetrics(Collector):
    """Counters the handlers and the elector update; gauges read from the launcher when scraped."""

    def __init__(self) -> None:
        self.leading = False
        self.transitions = 0
        self.reconciles: collections.Counter[tuple[str, str]] = collections.Counter()
        self.errors: collections.Counter[tuple[str, str]] = collections.Counter()
        self.watch_source: Callable[[], tuple[int, int]] | None = None  # (restarts, failures)

    def set_leading(self, leading: bool) -> None:
        if leading and not self.leading:
            self.transitions += 1
        self.leading = leading

    def reconciled(self, resource: str, handler: str, *, error: bool) -> None:
        self.reconciles[(resource, handler)] += 1
        if error:
            self.errors[(resource, handler)] += 1

    def collect(self) -> Iterator[Metric]:
        leader = GaugeMetricFamily(
            "heliosdb_operator_leader", "1 on the replica holding the Lease (running the control plane)"
        )
        leader.add_metric([], 1 if self.leading else 0)
        yield leader
        transitions = CounterMetricFamily(
            "heliosdb_operator_leader_transitions", "Times this replica became the leader"
        )
        transitions.add_metric([], self.transitions)
        yield transitions
        labels = ("resource", "handler")
        reconciles = CounterMetricFamily(
            "heliosdb_operator_reconciles", "kopf handler calls (StreamingJob, Savepoint)", labels=labels
        )
        errors = CounterMetricFamily(
            "heliosdb_operator_reconcile_errors", "kopf handler calls that failed", labels=labels
        )
        for key, n in sorted(self.reconciles.items()):
            reconciles.add_metric(list(key), n)
            errors.add_metric(list(key), self.errors.get(key, 0))
        yield reconciles
        yield errors
        restarts, failures = self.watch_source() if self.watch_source is not None else (0, 0)
        watch = CounterMetricFamily("heliosdb_operator_watch_restarts", "Pod watches started again")
        watch.add_metric([], restarts)
        yield watch
        failed = CounterMetricFamily("heliosdb_operator_watch_failures", "Pod watches that ended in an error")
        failed.add_metric([], failures)
        yield failed

    def render(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return generate_latest(registry)


METRICS = web.AppKey("operator_metrics", OperatorMetrics)


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})


async def _health(request: web.Request) -> web.Response:
    role = "leader" if request.app[METRICS].leading else "standby"
    return web.Response(body=orjson.dumps({"status": "ok", "role": role}), content_type="application/json")


@contextlib.asynccontextmanager
async def serve(metrics: OperatorMetrics, host: str, port: int) -> AsyncIterator[tuple[str, int]]:
    """``/metrics`` and ``/healthz`` on ``host:port`` (0 picks one) until the block exits."""
    app = web.Application()
    app[METRICS] = metrics
    app.add_routes([web.get("/metrics", _metrics, allow_head=False), web.get("/healthz", _health)])
    runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        logger.info("operator metrics on http://%s:%d/metrics", bound_host, bound_port)
        yield str(bound_host), int(bound_port)
    finally:
        await runner.cleanup()
