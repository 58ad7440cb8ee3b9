"""The aiohttp application: ``create_app(job_manager)`` wires routes, middlewares and lifecycle.

    app = create_app(JobManager(16, home=home), api_token=os.environ.get("HELIOS_API_TOKEN"),
                     owns_manager=True)
    web.run_app(app, host="127.0.0.1", port=8081)

With ``owns_manager=True`` the app starts the manager on startup and closes it on cleanup (jobs keep
their status and resume on the next start); otherwise the caller owns it, and several apps may share one.
A ``JobManager`` (any ``control.service.JobServiceCore``) is served through ``CoreJobService``;
another substrate passes its ``JobService``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Middleware

from heliosdb_streaming.api import views
from heliosdb_streaming.api.auth import token_middleware
from heliosdb_streaming.api.console import setup_console
from heliosdb_streaming.api.errors import error_middleware
from heliosdb_streaming.api.guard import RequestPolicy, guard_middleware
from heliosdb_streaming.api.service import CoreJobService, JobService
from heliosdb_streaming.api.views import JOB_SERVICE, MAX_BODY_BYTES
from heliosdb_streaming.control.service import JobServiceCore

__all__ = ["JOB_SERVICE", "MAX_BODY_BYTES", "create_app", "setup_routes"]

API = "/api/v1"


def setup_routes(app: web.Application, *, read_only: bool = False) -> None:
    """Every route of the API; with ``read_only`` only the GET routes (reads, ``/healthz``, ``/metrics``)."""
    routes = [
        web.post(f"{API}/jobs", views.submit_job),
        web.get(f"{API}/jobs", views.list_jobs, allow_head=False),
        web.get(f"{API}/jobs/{{job_id}}", views.get_job, allow_head=False),
        web.delete(f"{API}/jobs/{{job_id}}", views.cancel_job),
        web.post(f"{API}/jobs/{{job_id}}/pause", views.pause_job),
        web.post(f"{API}/jobs/{{job_id}}/resume", views.resume_job),
        web.get(f"{API}/jobs/{{job_id}}/metrics", views.job_metrics, allow_head=False),
        web.get(f"{API}/jobs/{{job_id}}/logs", views.job_logs, allow_head=False),
        web.post(f"{API}/jobs/{{job_id}}/savepoints", views.create_savepoint),
        web.get(f"{API}/jobs/{{job_id}}/savepoints", views.list_savepoints, allow_head=False),
        web.get(f"{API}/jobs/{{job_id}}/savepoints/{{savepoint_id}}", views.get_savepoint, allow_head=False),
        web.delete(f"{API}/jobs/{{job_id}}/savepoints/{{savepoint_id}}", views.delete_savepoint),
        web.get(f"{API}/jobs/{{job_id}}/checkpoints", views.list_checkpoints, allow_head=False),
        web.post(f"{API}/jobs/{{job_id}}/restart", views.restart_job),
        web.get(f"{API}/openapi.json", views.openapi_document, allow_head=False),
        web.get("/healthz", views.health),
        web.get("/metrics", views.prometheus_metrics, allow_head=False),
    ]
    if read_only:
        routes = [r for r in routes if isinstance(r, web.RouteDef) and r.method == "GET"]
    app.add_routes(routes)


def create_app(
    job_manager: JobServiceCore | JobService,
    *,
    api_token: str | None = None,
    max_body_bytes: int = 1 << 20,
    owns_manager: bool = False,
    read_only: bool = False,
    request_policy: RequestPolicy | None = None,
    console: bool | None = None,
) -> web.Application:
    """The REST API over ``job_manager``. ``api_token`` (non-empty) requires a bearer token on every
    route but ``/healthz``; request bodies over ``max_body_bytes`` are answered 413. ``read_only``
    serves only the GET routes (the operator's internal read API: commands go through resources).
    Job-changing requests carry JSON or no body (else 415); ``request_policy`` (``helios server``
    passes one) refuses foreign ``Host`` and ``Origin`` headers with 403: see ``api.guard``. ``console``
    (default: unless ``read_only``) serves the web console at ``/`` (``api.console``)."""
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be positive")
    middlewares: list[Middleware] = [error_middleware, guard_middleware(request_policy)]
    with_console = not read_only if console is None else console
    if api_token:
        middlewares.append(token_middleware(api_token, open_console=with_console))
    app = web.Application(middlewares=middlewares, client_max_size=max_body_bytes)
    service = CoreJobService(job_manager) if isinstance(job_manager, JobServiceCore) else job_manager
    app[JOB_SERVICE] = service
    app[MAX_BODY_BYTES] = max_body_bytes
    setup_routes(app, read_only=read_only)
    if with_console:
        setup_console(app)
    if owns_manager:
        app.cleanup_ctx.append(_manager_lifecycle)
    return app


async def _manager_lifecycle(app: web.Application) -> AsyncIterator[None]:
    manager = app[JOB_SERVICE]
    await manager.start()
    try:
        yield
    finally:
        await manager.close()
