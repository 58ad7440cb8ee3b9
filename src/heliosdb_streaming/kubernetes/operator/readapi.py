"""The operator's internal read API: the REST API's GET routes over the operator's own control plane.

The operator hosts the control plane whose coordinators, metrics and savepoints are the truth about
jobs; the StreamingJob status is only a projection of it. ``helios server --substrate kubernetes``
reads details, metrics, checkpoints and savepoints from here (``kubernetes.restapi.readclient``) and changes
jobs only through the resources, so this app serves no command routes. It is the REST app itself
(``create_app(read_only=True)``) over a ``JobServiceCore`` of the running plane, so both answer
with the same bodies, and it takes the same bearer token (``HELIOS_API_TOKEN``) when one is set.

An API server serves one namespace and names it (``?namespace=NS``) in every job request: a job
whose StreamingJob is in another namespace is then 404 on every ``/jobs/{job_id}`` route, as if it
did not exist. A job's namespace is its binding's (``operator.bindings``), written when the operator
submitted it for its StreamingJob, not anything the API server got from a resource's status.

Under ``/internal/v1`` it adds what only such an API server needs, all behind the token:

* ``GET /internal/v1/info``: ``{"max_parallelism": N}``, the limit a submit or restart must respect.
* ``GET /internal/v1/jobs/{job_id}/control-log?namespace=NS`` (and ``level``, ``limit``, ``tail`` as
  the public logs route): the control plane's own lines about the job, without the lines its workers
  shipped (their pod logs hold those).
* ``GET /internal/v1/metrics?namespace=NS``: the Prometheus exposition of ``NS``'s jobs only (the
  operator renders the subset: valid by construction, and ``heliosdb_job_count`` counts them alone).
* ``POST /internal/v1/validate`` (and ``from_savepoint``): a submit's dry run with the operator's own
  checks (allowed paths, the python allow-list, the start snapshot, its ``--max-parallelism``), which
  it otherwise makes only when it reconciles the StreamingJob; 200 with the plan or the usual 400.
  It creates nothing, so a read API may serve it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from heliosdb_streaming.api import prometheus, schemas, views
from heliosdb_streaming.api.app import create_app
from heliosdb_streaming.api.errors import Handler, InvalidParameterError
from heliosdb_streaming.control import paths, usercode
from heliosdb_streaming.control.controller import ControlPlane, JobEntry
from heliosdb_streaming.control.service import JobServiceCore
from heliosdb_streaming.control.snapshots import locate_start
from heliosdb_streaming.kubernetes.operator.bindings import Bindings
from heliosdb_streaming.model.errors import FieldError, InvalidJobConfigError, JobNotFoundError
from heliosdb_streaming.model.types import LogLevel, LogOptions

logger = logging.getLogger(__name__)

DEFAULT_READ_PORT = 8082
SHUTDOWN_TIMEOUT_S = 2.0
INTERNAL = "/internal/v1"
DRY_RUN_MAX_BYTES = 8 * 1024 * 1024  # the API server already refused bigger submit bodies

PLANE = web.AppKey("read_plane", ControlPlane)
CORE = web.AppKey("read_core", JobServiceCore)
BINDINGS = web.AppKey("read_bindings", Bindings)


def create_read_app(
    plane: ControlPlane,
    bindings: Bindings,
    api_token: str | None = None,
    *,
    allowed_roots: paths.AllowedRoots | None = None,
    user_code: usercode.UserCodePolicy | None = None,
) -> web.Application:
    """GET-only REST app over a started ``plane``; the plane stays owned (and closed) by the operator.

    ``bindings`` tell which namespace each job belongs to, for the ``/internal/v1`` routes.
    ``allowed_roots`` and ``user_code``: the reconciler's checks, which the dry run applies. The
    operator never imports user code (the job's image holds it), so neither does the dry run, whatever
    policy is given: a request cannot make the operator import a module."""
    policy = user_code or usercode.UserCodePolicy()
    policy = dataclasses.replace(policy, import_check=False)
    core = JobServiceCore(plane, allowed_roots=allowed_roots, user_code=policy)
    app = create_app(core, api_token=api_token, read_only=True)
    app.middlewares.append(namespace_guard)  # inside the error and token middlewares
    app[PLANE] = plane
    app[CORE] = core
    app[BINDINGS] = bindings
    app.add_routes(
        [
            web.get(f"{INTERNAL}/info", info, allow_head=False),
            web.get(f"{INTERNAL}/jobs/{{job_id}}/control-log", control_log, allow_head=False),
            web.get(f"{INTERNAL}/jobs/{{job_id}}/restore-point", restore_point, allow_head=False),
            web.get(f"{INTERNAL}/metrics", namespace_metrics, allow_head=False),
            web.post(f"{INTERNAL}/validate", validate),
        ]
    )
    return app


def _namespace(request: web.Request) -> str:
    values = request.query.getall("namespace", [])
    if len(values) != 1 or not values[0].strip():
        raise InvalidParameterError("namespace", "required once: the namespace whose jobs are asked for")
    return values[0].strip()


def _check_namespace(request: web.Request, job_id: str, namespace: str) -> None:
    """``JobNotFoundError`` (404) unless the job's StreamingJob is in ``namespace``."""
    binding = request.app[BINDINGS].get(job_id)
    if binding is None or binding.namespace != namespace:
        raise JobNotFoundError(job_id)


@web.middleware
async def namespace_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A job route asked for a namespace answers only about a job of that namespace."""
    job_id = request.match_info.get("job_id")
    if job_id is not None and "namespace" in request.query:
        _check_namespace(request, job_id, _namespace(request))
    return await handler(request)


def _in_namespace(request: web.Request, namespace: str) -> list[JobEntry]:
    bindings = request.app[BINDINGS]
    return [
        entry
        for job_id, entry in request.app[PLANE].jobs.items()
        if (binding := bindings.get(job_id)) is not None and binding.namespace == namespace
    ]


async def info(request: web.Request) -> web.Response:
    body = {"max_parallelism": request.app[PLANE].max_parallelism}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def control_log(request: web.Request) -> web.Response:
    """The control plane's own log entries of a job of ``namespace``, filtered as the public route."""
    namespace = _namespace(request)
    level = views.enum_param(request, "level", LogLevel)
    limit = views.int_param(request, "limit", 1000, 1, views.LOG_LIMIT_MAX)
    tail, tail_lines = views.tail_param(request)
    if tail_lines is not None:
        limit = tail_lines
    job_id = request.match_info["job_id"]
    _check_namespace(request, job_id, namespace)  # (the guard did, too): required here
    options = LogOptions(level=level, limit=limit, tail=tail)
    entries = await request.app[CORE].get_control_log(job_id, options)  # read off the event loop
    body = schemas.JobLogsResponse(
        job_id=job_id, logs=[schemas.masked(e) for e in entries], total=len(entries), limit=limit
    )
    return web.Response(body=orjson.dumps(body.to_json()), content_type="application/json")


async def restore_point(request: web.Request) -> web.Response:
    """The savepoint a restart without one would restore (null: a checkpoint or nothing), decided by
    the control plane exactly as the embedded server decides it, not guessed from timestamps."""
    job_id = request.match_info["job_id"]
    _check_namespace(request, job_id, _namespace(request))
    savepoint_id = await request.app[CORE].restore_savepoint_id(job_id)
    return web.Response(body=orjson.dumps({"savepoint_id": savepoint_id}), content_type="application/json")


async def namespace_metrics(request: web.Request) -> web.Response:
    """The exposition of one namespace's jobs: ``heliosdb_job_count`` counts only theirs, too."""
    entries = _in_namespace(request, _namespace(request))
    body = await prometheus.render_entries_async(entries)
    return web.Response(body=body, headers={"Content-Type": prometheus.CONTENT_TYPE})


async def validate(request: web.Request) -> web.Response:
    """A submit body checked as the reconciler will check its StreamingJob: ``{"plan": ...}`` or 400.

    ``from_savepoint`` with ``namespace``: a bare location (no Savepoint resource of the namespace is
    there), which the reconciler accepts only as a savepoint of a job of that namespace."""
    body = await views.read_json(request, DRY_RUN_MAX_BYTES)
    if not isinstance(body, dict):
        raise InvalidJobConfigError([FieldError("(body)", "must be a JSON object (the job)")])
    from_savepoint = request.query.get("from_savepoint")
    plan = await request.app[CORE].validate_job(body, from_savepoint=from_savepoint)  # parses off the loop
    namespace = request.query.get("namespace")
    if from_savepoint is not None and namespace is not None:
        start = await locate_start(from_savepoint, "from_savepoint")
        owner = request.app[BINDINGS].get(start.job_id)
        if owner is None or owner.namespace != namespace:  # the reconciler's _start_point says the same
            why = f"not a savepoint of a StreamingJob in namespace {namespace}; name its Savepoint"
            raise InvalidJobConfigError([FieldError("from_savepoint", why)])
    return web.Response(body=orjson.dumps({"plan": plan.to_json()}), content_type="application/json")


@contextlib.asynccontextmanager
async def serve(
    plane: ControlPlane,
    bindings: Bindings,
    host: str,
    port: int,
    api_token: str | None = None,
    *,
    allowed_roots: paths.AllowedRoots | None = None,
    user_code: usercode.UserCodePolicy | None = None,
) -> AsyncIterator[tuple[str, int]]:
    """Serves the read API on ``host:port`` (0 picks a port) until the block exits; yields the address."""
    app = create_read_app(plane, bindings, api_token, allowed_roots=allowed_roots, user_code=user_code)
    runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        logger.info(
            "read API listening on http://%s:%d (auth %s)",
            bound_host,
            bound_port,
            "bearer token" if api_token else "off",
        )
        yield str(bound_host), int(bound_port)
    finally:
        await runner.cleanup()
