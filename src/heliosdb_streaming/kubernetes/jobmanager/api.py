"""The job manager's HTTP API: the operator's read API over its one job, plus what the operator forwards.

The operator reconciles resources only; what a StreamingJob or Savepoint asks of the job (submit, pause,
resume, cancel, restart, upgrade, scale, savepoints, the finalizer) it forwards here, and this process
runs the same ``StreamingJobReconciler`` and ``SavepointController`` the in-operator control plane used.
kopf's outcomes travel as HTTP statuses: 200 done, 503 with ``retry_after`` (``kopf.TemporaryError``,
the operator asks again after that delay) and 422 (``kopf.PermanentError``, never again). One lock
serialises the passes, as kopf serialises the handlers of one object.

Routes (all behind the bearer token, which the operator keeps in the ``<job>-jobmanager`` Secret):

* ``POST /internal/v1/reconcile``: body the StreamingJob.
* ``POST /internal/v1/finalize``: body the StreamingJob being deleted.
* ``POST /internal/v1/savepoints?retry=N``: body a Savepoint resource to take.
* ``POST /internal/v1/savepoints/delete``: body a Savepoint resource being deleted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf
import orjson
from aiohttp import web

from heliosdb_streaming.api import views
from heliosdb_streaming.kubernetes.operator.readapi import INTERNAL
from heliosdb_streaming.kubernetes.operator.reconciler import StreamingJobReconciler
from heliosdb_streaming.kubernetes.operator.savepoints import SavepointController

logger = logging.getLogger(__name__)

BODY_MAX_BYTES = 8 * 1024 * 1024
RECONCILER = web.AppKey("jm_reconciler", StreamingJobReconciler)
SAVEPOINTS = web.AppKey("jm_savepoints", SavepointController)
LOCK = web.AppKey("jm_lock", asyncio.Lock)


def add_routes(
    app: web.Application, reconciler: StreamingJobReconciler, savepoints: SavepointController
) -> None:
    app[RECONCILER] = reconciler
    app[SAVEPOINTS] = savepoints
    app[LOCK] = asyncio.Lock()
    app.add_routes(
        [
            web.post(f"{INTERNAL}/reconcile", reconcile),
            web.post(f"{INTERNAL}/finalize", finalize),
            web.post(f"{INTERNAL}/savepoints", take_savepoint),
            web.post(f"{INTERNAL}/savepoints/delete", delete_savepoint),
        ]
    )


async def outcome(call: Callable[[], Awaitable[None]]) -> tuple[int, dict[str, Any]]:
    """Runs a handler's pass; kopf's errors become the status the operator turns back into them."""
    try:
        await call()
    except kopf.TemporaryError as e:
        return 503, {"message": str(e), "retry_after": float(e.delay or 1.0)}
    except kopf.PermanentError as e:
        return 422, {"message": str(e)}
    return 200, {"ok": True}


async def _run(request: web.Request, call: Callable[[Mapping[str, Any]], Awaitable[None]]) -> web.Response:
    body = await views.read_json(request, BODY_MAX_BYTES)
    if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
        return web.Response(status=400, body=orjson.dumps({"message": "body must be a resource"}))
    async with request.app[LOCK]:
        status, answer = await outcome(lambda: call(body))
    return web.Response(status=status, body=orjson.dumps(answer), content_type="application/json")


async def reconcile(request: web.Request) -> web.Response:
    return await _run(request, request.app[RECONCILER].reconcile_job)


async def finalize(request: web.Request) -> web.Response:
    return await _run(request, request.app[RECONCILER].finalize_job)


async def take_savepoint(request: web.Request) -> web.Response:
    retry = views.int_param(request, "retry", 0, 0, 1_000_000)
    controller = request.app[SAVEPOINTS]
    return await _run(request, lambda body: controller.take_savepoint(body, retry))


async def delete_savepoint(request: web.Request) -> web.Response:
    return await _run(request, request.app[SAVEPOINTS].delete_savepoint)
