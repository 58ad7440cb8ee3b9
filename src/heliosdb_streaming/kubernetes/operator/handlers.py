"""kopf's side: the settings and the handlers, registered into a registry of their own.

Handlers stay thin: each passes the resource to the ``StreamingJobReconciler`` or the
``SavepointController``. The registry is built per operator
(not kopf's global one), so a test or a benchmark can run an operator without import-time side effects.

Handler progress is kept in annotations only (``streaming.heliosdb.io/<handler>``), not in
``status.kopf``: the status is the operator's projection of the job, and nothing else writes there.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Protocol

import kopf

from heliosdb_streaming.kubernetes import crds
from heliosdb_streaming.kubernetes.operator.events import COMPONENT, WAITING
from heliosdb_streaming.kubernetes.operator.opmetrics import OperatorMetrics

WATCH_SERVER_TIMEOUT_S = 60.0


BACKOFF_S = 5  # retry a handler that failed unexpectedly (API server unreachable) soon, not in 60 s
RESYNC_S = 5.0  # how often the objects a job owns are checked (recreated when missing)


class JobsReconciler(Protocol):
    """The in-operator ``StreamingJobReconciler``, or ``JobManagers`` forwarding to job managers."""

    async def reconcile_job(self, body: Mapping[str, Any]) -> None: ...

    async def finalize_job(self, body: Mapping[str, Any]) -> None: ...


class SavepointHandler(Protocol):
    """The in-operator ``SavepointController``, or ``JobManagers`` forwarding to job managers."""

    async def take_savepoint(self, body: Mapping[str, Any], retry: int) -> None: ...

    async def delete_savepoint(self, body: Mapping[str, Any]) -> None: ...


def settings(namespaces: list[str], watch_timeout_s: float = WATCH_SERVER_TIMEOUT_S) -> kopf.OperatorSettings:
    """kopf's settings. ``watch_timeout_s``: how long a watch stream lasts before kopf lists again and
    watches anew, so an event a stalled stream never delivered is acted on at the next list."""
    s = kopf.OperatorSettings()
    s.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=crds.GROUP)
    s.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=crds.GROUP, key="last-handled-configuration"
    )
    s.persistence.finalizer = f"{crds.GROUP}/finalizer"
    # kopf's own messages become Events only from warnings up; the domain events are posted explicitly
    s.posting.level = logging.WARNING
    s.posting.reporting_component = COMPONENT
    s.watching.server_timeout = max(watch_timeout_s, 1.0)
    s.watching.client_timeout = s.watching.server_timeout + 15
    s.watching.connect_timeout = 10
    s.networking.request_timeout = 30
    s.peering.standalone = True
    # exact namespaces need no permission to list namespaces (least-privilege RBAC); patterns
    # (``team-*``, ``!kube-system``) are matched against the namespaces kopf lists and watches
    s.scanning.disabled = bool(namespaces) and not any(set(ns) & set("*?[!") for ns in namespaces)
    return s


def build_registry(
    jobs_reconciler: JobsReconciler,
    savepoint_controller: SavepointHandler,
    connection: kopf.ConnectionInfo,
    metrics: OperatorMetrics | None = None,
    resync: Callable[[Mapping[str, Any]], Awaitable[None]] | None = None,
    resync_interval_s: float = RESYNC_S,
) -> kopf.OperatorRegistry:
    """``resync``: called for every StreamingJob every ``resync_interval_s``, even while the spec does
    not change: it recreates what the job owns when someone deleted it (job managers: the job
    manager's pod; in-operator jobs: the workers' Service, Secret and PodDisruptionBudget)."""
    registry = kopf.OperatorRegistry()

    @contextlib.contextmanager
    def counted(resource: str, handler: str) -> Iterator[None]:
        """Counts the call; an exception counts as an error unless it is an expected wait."""
        try:
            yield
        except Exception as e:
            if metrics is not None:
                metrics.reconciled(resource, handler, error=WAITING not in str(e))
            raise
        if metrics is not None:
            metrics.reconciled(resource, handler, error=False)

    jobs = (crds.GROUP, crds.VERSION, crds.STREAMING_JOB_PLURAL)
    savepoints = (crds.GROUP, crds.VERSION, crds.SAVEPOINT_PLURAL)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection

    @kopf.on.resume(*jobs, id="resume", registry=registry, backoff=BACKOFF_S)
    @kopf.on.create(*jobs, id="create", registry=registry, backoff=BACKOFF_S)
    @kopf.on.update(*jobs, id="update", field="spec", registry=registry, backoff=BACKOFF_S)
    async def reconcile_job(body: kopf.Body, reason: str, **_: Any) -> None:
        with counted("streamingjobs", str(getattr(reason, "value", reason) or "reconcile")):
            await jobs_reconciler.reconcile_job(body)

    @kopf.on.delete(*jobs, id="delete", registry=registry, backoff=BACKOFF_S)
    async def finalize_job(body: kopf.Body, **_: Any) -> None:
        with counted("streamingjobs", "delete"):
            await jobs_reconciler.finalize_job(body)

    if resync is not None:
        ensure = resync

        @kopf.timer(*jobs, id="resync", interval=resync_interval_s, registry=registry, backoff=BACKOFF_S)
        async def resync_job(body: kopf.Body, **_: Any) -> None:
            if not (body.get("metadata") or {}).get("deletionTimestamp"):
                with counted("streamingjobs", "resync"):
                    await ensure(body)

    @kopf.on.resume(*savepoints, id="resume", registry=registry, backoff=BACKOFF_S)
    @kopf.on.create(*savepoints, id="create", registry=registry, backoff=BACKOFF_S)
    async def take_savepoint(body: kopf.Body, retry: int, **_: Any) -> None:
        with counted("savepoints", "take"):
            await savepoint_controller.take_savepoint(body, retry)

    @kopf.on.delete(*savepoints, id="delete", registry=registry, backoff=BACKOFF_S)
    async def delete_savepoint(body: kopf.Body, **_: Any) -> None:
        with counted("savepoints", "delete"):
            await savepoint_controller.delete_savepoint(body)

    return registry
