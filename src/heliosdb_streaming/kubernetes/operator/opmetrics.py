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

``POST /convert`` is the CRDs' conversion webhook (``kubernetes.conversion``): every replica answers
it, leader or not, so a standby keeps v1alpha1 readable. The API server calls it over HTTPS only: with
``HELIOS_WEBHOOK_TLS_DIR`` (a mounted ``kubernetes.io/tls`` Secret: ``tls.crt``, ``tls.key``) the same
routes are also served with TLS on ``crds.WEBHOOK_PORT``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from heliosdb_streaming.kubernetes import conversion, crds

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


async def _convert(request: web.Request) -> web.Response:
    try:
        body = await request.json(loads=orjson.loads)
    except ValueError:
        return web.Response(status=400, text="a ConversionReview (JSON) is expected")
    return web.Response(body=orjson.dumps(conversion.review(body)), content_type="application/json")


TLS_DIR_ENV = "HELIOS_WEBHOOK_TLS_DIR"


def tls_context(directory: str | None) -> ssl.SSLContext | None:
    """The webhook's server TLS from ``tls.crt``/``tls.key`` in ``directory`` (None: no TLS site)."""
    if not directory:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(Path(directory) / "tls.crt", Path(directory) / "tls.key")
    return context


@contextlib.asynccontextmanager
async def serve(
    metrics: OperatorMetrics, host: str, port: int, *, webhook_port: int = crds.WEBHOOK_PORT
) -> AsyncIterator[tuple[str, int]]:
    """``/metrics``, ``/healthz`` and ``/convert`` on ``host:port`` (0 picks one) until the block exits;
    with ``HELIOS_WEBHOOK_TLS_DIR`` also over TLS on ``webhook_port``."""
    app = web.Application()
    app[METRICS] = metrics
    app.add_routes(
        [
            web.get("/metrics", _metrics, allow_head=False),
            web.get("/healthz", _health),
            web.post(crds.WEBHOOK_PATH, _convert),
        ]
    )
    runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        tls = tls_context(os.environ.get(TLS_DIR_ENV))
        if tls is not None:
            await web.TCPSite(runner, host, webhook_port, ssl_context=tls).start()
        bound_host, bound_port = runner.addresses[0][:2]
        logger.info("operator metrics on http://%s:%d/metrics", bound_host, bound_port)
        yield str(bound_host), int(bound_port)
    finally:
        await runner.cleanup()
