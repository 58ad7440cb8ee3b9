"""The operator's read API when jobs run in job managers: the same routes, answered by each job's own.

``helios server --substrate kubernetes`` keeps asking the operator (``restapi.readclient``): a job's
details, metrics, checkpoints, savepoints, restore point and control log are passed through to the job
manager of the StreamingJob whose ``status.jobId`` it is in the asked namespace (404 when none is); the
namespace's Prometheus exposition is the job managers' merged (one HELP/TYPE per family, the job
counts summed); ``/internal/v1/info`` is the operator's limit; the submit dry run runs here, over a
control plane that is never started (it only checks), with a bare start location accepted only as a
savepoint of a StreamingJob of that namespace, as the job manager's reconciler will decide.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from aiohttp import web

from heliosdb_streaming.api import views
from heliosdb_streaming.api.app import create_app
from heliosdb_streaming.api.auth import token_middleware
from heliosdb_streaming.api.errors import error_middleware
from heliosdb_streaming.control.service import JobServiceCore
from heliosdb_streaming.control.snapshots import locate_start
from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.kubernetes.operator.jobmanagers import JobManagers, target_of
from heliosdb_streaming.kubernetes.operator.readapi import DRY_RUN_MAX_BYTES, INTERNAL
from heliosdb_streaming.model.errors import FieldError, InvalidJobConfigError, JobNotFoundError

logger = logging.getLogger(__name__)

MANAGERS = web.AppKey("proxy_managers", JobManagers)
CORE = web.AppKey("proxy_core", JobServiceCore)
MAX_PARALLELISM = web.AppKey("proxy_max_parallelism", int)
SHUTDOWN_TIMEOUT_S = 2.0


def create_proxy_app(
    managers: JobManagers, core: JobServiceCore, max_parallelism: int, api_token: str | None
) -> web.Application:
    middlewares: list[Any] = [error_middleware]
    if api_token:
        middlewares.append(token_middleware(api_token))
    app = web.Application(middlewares=middlewares)
    app[MANAGERS] = managers
    app[CORE] = core
    app[MAX_PARALLELISM] = max_parallelism
    app.add_routes(
        [
            web.get("/healthz", views.health, allow_head=False),
            web.get("/metrics", all_metrics, allow_head=False),
            web.get("/api/v1/jobs", job_list, allow_head=False),
            web.get(f"{INTERNAL}/info", info, allow_head=False),
            web.get(f"{INTERNAL}/metrics", metrics, allow_head=False),
            web.post(f"{INTERNAL}/validate", validate),
            web.get(f"{INTERNAL}/jobs/{{job_id}}/control-log", job_route, allow_head=False),
            web.get(f"{INTERNAL}/jobs/{{job_id}}/restore-point", job_route, allow_head=False),
        ]
        # a job's GET routes exactly as the job manager's read-only REST app has them
        + [web.get(path, job_route, allow_head=False) for path in job_paths(core)]
    )
    return app


def job_paths(core: JobServiceCore) -> list[str]:
    """The read-only REST app's ``/api/v1/jobs/{job_id}...`` GET routes."""
    found: list[str] = []
    for resource in create_app(core, read_only=True).router.resources():
        path = resource.canonical
        wanted = path.startswith("/api/v1/jobs/{job_id}") and path not in found
        if wanted and any(route.method == "GET" for route in resource):
            found.append(path)
    return found


def _namespace(request: web.Request) -> str:
    namespace = request.query.get("namespace", "").strip()
    if not namespace:
        raise web.HTTPBadRequest(text="namespace is required")
    return namespace


async def _jobs(request: web.Request, namespace: str | None) -> list[dict[str, Any]]:
    """The namespace's (None: every watched namespace's) StreamingJobs that have a job (``status.jobId``)."""
    managers = request.app[MANAGERS]
    if namespace is None and managers.namespaces:
        items = [i for ns in managers.namespaces for i in await managers.client.list(kube.STREAMINGJOBS, ns)]
    else:
        items = await managers.client.list(kube.STREAMINGJOBS, namespace)
    return [i for i in items if (i.get("status") or {}).get("jobId")]


async def _forward(
    request: web.Request, obj: dict[str, Any], path: str, params: Mapping[str, str] | None = None
) -> tuple[int, bytes, str]:
    """``GET path`` of ``obj``'s job manager, with the request's query (or ``params``)."""
    managers = request.app[MANAGERS]
    meta = obj["metadata"]
    url = await managers.url_of(str(meta["namespace"]), str(meta["name"]))
    if url is None:
        raise web.HTTPServiceUnavailable(text="the job manager has not started yet")
    headers = {"Authorization": f"Bearer {managers.token(target_of(obj))}"}
    session = managers.session()
    try:
        query = dict(request.query if params is None else params)
        async with session.get(url + path, params=query, headers=headers) as response:
            return response.status, await response.read(), response.content_type
    except (OSError, TimeoutError) as e:
        raise web.HTTPServiceUnavailable(text=f"job manager unreachable: {e}") from None


async def job_route(request: web.Request) -> web.Response:
    namespace, job_id = _namespace(request), request.match_info["job_id"]
    for obj in await _jobs(request, namespace):
        if obj["status"]["jobId"] == job_id:
            status, body, content_type = await _forward(request, obj, request.rel_url.path)
            return web.Response(status=status, body=body, content_type=content_type)
    raise JobNotFoundError(job_id)


async def info(request: web.Request) -> web.Response:
    body = {"max_parallelism": request.app[MAX_PARALLELISM]}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def merge_expositions(texts: list[str]) -> str:
    """One exposition of several: each family's HELP and TYPE once, then its samples; a series that
    several carry (``heliosdb_job_count{status=...}``) summed."""
    meta: dict[str, list[str]] = {}
    samples: dict[str, dict[str, float]] = {}
    order: list[str] = []
    for text in texts:
        family = ""
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    if family not in meta:
                        meta[family], samples[family] = [], {}
                        order.append(family)
                    if not any(m.split(" ", 2)[1] == parts[1] for m in meta[family]):
                        meta[family].append(line)
                continue
            series, _, value = line.rpartition(" ")
            name = series.split("{", 1)[0]
            owner = family if name.startswith(family) and family else name
            if owner not in samples:
                meta[owner], samples[owner] = [], {}
                order.append(owner)
            samples[owner][series] = samples[owner].get(series, 0.0) + float(value)
    out: list[str] = []
    for family in order:
        out += meta[family]
        out += [f"{series} {_number(value)}" for series, value in samples[family].items()]
    return "\n".join(out) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


async def _gather(
    request: web.Request, namespace: str | None, path: str, params: Mapping[str, str] | None = None
) -> list[bytes]:
    """The 200 answers of every job manager of ``namespace`` to ``GET path`` (a job manager being
    replaced is left out)."""
    answers = []
    for obj in await _jobs(request, namespace):
        with contextlib.suppress(web.HTTPServiceUnavailable):
            status, body, _ = await _forward(request, obj, path, params)
            if status == 200:
                answers.append(body)
    return answers


def _exposition(answers: list[bytes]) -> web.Response:
    body = merge_expositions([a.decode() for a in answers]).encode()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def metrics(request: web.Request) -> web.Response:
    """One namespace's jobs, each series labelled with its resource."""
    return _exposition(await _gather(request, _namespace(request), f"{INTERNAL}/metrics"))


async def all_metrics(request: web.Request) -> web.Response:
    """Every job's, as the in-operator read API's ``/metrics``."""
    return _exposition(await _gather(request, None, "/metrics"))


async def job_list(request: web.Request) -> web.Response:
    """Every job manager's list merged into one page, as the embedded list pages: newest first,
    ``status`` filtered by each job manager, then ``offset`` and ``limit`` over the whole."""
    limit = views.int_param(request, "limit", 100, 1, 1000)
    offset = views.int_param(request, "offset", 0, 0, 2**62)
    params = {**request.query, "limit": str(min(offset + limit, 1000)), "offset": "0"}
    bodies = [orjson.loads(b) for b in await _gather(request, None, "/api/v1/jobs", params)]
    jobs = sorted(
        (job for body in bodies for job in body["jobs"]),
        key=lambda job: (str(job["submitted_at"]), str(job["job_id"])),
        reverse=True,
    )
    merged = {
        "jobs": jobs[offset : offset + limit],
        "total": sum(int(b["total"]) for b in bodies),
        "limit": limit,
        "offset": offset,
    }
    return web.Response(body=orjson.dumps(merged), content_type="application/json")


async def validate(request: web.Request) -> web.Response:
    body = await views.read_json(request, DRY_RUN_MAX_BYTES)
    if not isinstance(body, dict):
        raise InvalidJobConfigError([FieldError("(body)", "must be a JSON object (the job)")])
    from_savepoint = request.query.get("from_savepoint")
    plan = await request.app[CORE].validate_job(body, from_savepoint=from_savepoint)
    namespace = request.query.get("namespace")
    if from_savepoint is not None and namespace is not None:
        start = await locate_start(from_savepoint, "from_savepoint")
        owners = [o for o in await _jobs(request, namespace) if o["status"]["jobId"] == start.job_id]
        if not owners:
            why = f"not a savepoint of a StreamingJob in namespace {namespace}; name its Savepoint"
            raise InvalidJobConfigError([FieldError("from_savepoint", why)])
    return web.Response(body=orjson.dumps({"plan": plan.to_json()}), content_type="application/json")


@contextlib.asynccontextmanager
async def serve(
    managers: JobManagers,
    core: JobServiceCore,
    max_parallelism: int,
    host: str,
    port: int,
    api_token: str | None,
) -> AsyncIterator[tuple[str, int]]:
    app = create_proxy_app(managers, core, max_parallelism, api_token)
    runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        logger.info("read API (job managers') on http://%s:%d", bound_host, bound_port)
        yield str(bound_host), int(bound_port)
    finally:
        await runner.cleanup()
