"""Thin request handlers: parse the request, call the ``JobService``, shape the answer with ``schemas``.

Errors are raised, never answered here: ``errors.error_middleware`` turns them into responses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

import orjson
from aiohttp import ClientPayloadError, web
from pydantic import BaseModel, ValidationError

from heliosdb_streaming.api import openapi, prometheus, schemas
from heliosdb_streaming.api.errors import (
    InvalidJsonError,
    InvalidParameterError,
    InvalidRequestError,
    PayloadTooLargeError,
)
from heliosdb_streaming.api.service import JobService
from heliosdb_streaming.model.config import JobConfig, field_errors
from heliosdb_streaming.model.errors import FieldError, InvalidJobConfigError
from heliosdb_streaming.model.types import (
    JobStatus,
    LogLevel,
    LogOptions,
    MetricsWindow,
    Record,
    RestartOptions,
)
from heliosdb_streaming.runtime.connectors.secrets import mask_secrets

JOB_SERVICE = web.AppKey("job_service", JobService)
MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)

LIST_LIMIT_MAX = 1000
LOG_LIMIT_MAX = 100_000
METRICS_WINDOWS = ("1m", "5m", "1h", "24h")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})

RESTART_WAIT_S = 30.0  # how long a restart answer waits for the new run to start
RESTART_POLL_S = 0.05

E = TypeVar("E", bound=StrEnum)
B = TypeVar("B", bound=BaseModel)


def _json(body: Record, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body.to_json()), content_type="application/json", headers=headers
    )


def _manager(request: web.Request) -> JobService:
    return request.app[JOB_SERVICE]


def _job_id(request: web.Request) -> str:
    return request.match_info["job_id"]


# ------------------------------------------------------------------------------------------- jobs


async def submit_job(request: web.Request) -> web.Response:
    body = await read_json(request, request.app[MAX_BODY_BYTES])
    if not isinstance(body, dict):
        raise InvalidJobConfigError([FieldError("(body)", "must be a JSON object (the job)")])
    config = await asyncio.to_thread(JobConfig.from_dict, body)  # compiles expressions: off the loop
    from_savepoint = _query(request, "from_savepoint")
    if from_savepoint == "":
        raise InvalidParameterError("from_savepoint", "must be a savepoint location, got ''")
    jm = _manager(request)
    if bool_param(request, "dry_run", False):
        plan = await jm.validate_job(config, from_savepoint=from_savepoint)
        checked = schemas.JobValidationResponse(
            valid=True,
            name=config.name,
            parallelism=config.parallelism,
            plan=plan,
            message="Job is valid (dry run: nothing was submitted)",
        )
        return _json(checked)
    job_id = await jm.submit_job(config, from_savepoint=from_savepoint)
    details = await jm.get_job_details(job_id)
    answer = schemas.SubmitJobResponse(
        job_id=job_id,
        status=JobStatus.SUBMITTED,
        submitted_at=details.submitted_at,
        message="Job submitted successfully",
    )
    return _json(answer, 201, {"Location": f"/api/v1/jobs/{job_id}"})


async def list_jobs(request: web.Request) -> web.Response:
    status = enum_param(request, "status", JobStatus)
    limit = int_param(request, "limit", 100, 1, LIST_LIMIT_MAX)
    offset = int_param(request, "offset", 0, 0, 2**62)
    body = await _manager(request).list_jobs_json(status, limit, offset)  # = schemas.JobListResponse
    return web.Response(body=body, content_type="application/json")


async def get_job(request: web.Request) -> web.Response:
    details = await _manager(request).get_job_details(_job_id(request))
    return _json(schemas.JobDetailsResponse.of(details))


async def cancel_job(request: web.Request) -> web.Response:
    with_savepoint = bool_param(request, "savepoint", False)
    purge = bool_param(request, "purge", False)
    jm = _manager(request)
    job_id = _job_id(request)
    if purge:
        if with_savepoint:
            raise InvalidParameterError("purge", "a purge takes no savepoint: not with savepoint=true")
        return await _purge_job(jm, job_id)
    savepoint_id = None
    if with_savepoint:
        savepoint_id = await jm.cancel_job_with_savepoint(job_id)
    else:
        await jm.cancel_job(job_id)
    details = await jm.get_job_details(job_id)
    answer = schemas.CancelJobResponse(
        job_id=job_id,
        status=details.status,
        cancelled_at=details.finished_at or datetime.now(UTC),
        savepoint_id=savepoint_id,
    )
    return _json(answer)


async def _purge_job(jm: JobService, job_id: str) -> web.Response:
    """Removes a terminal job; the answer names the status and end time it had."""
    details = await jm.get_job_details(job_id)
    await jm.purge_job(job_id)  # re-checks that the job is terminal and holds no savepoint
    answer = schemas.CancelJobResponse(
        job_id=job_id,
        status=details.status,
        cancelled_at=details.finished_at or datetime.now(UTC),
        purged=True,
    )
    return _json(answer)


async def pause_job(request: web.Request) -> web.Response:
    jm = _manager(request)
    job_id = _job_id(request)
    await jm.pause_job(job_id)
    return _json(schemas.JobStatusResponse(job_id=job_id, status=await jm.get_job_status(job_id)))


async def resume_job(request: web.Request) -> web.Response:
    jm = _manager(request)
    job_id = _job_id(request)
    await jm.resume_job(job_id)
    return _json(schemas.JobStatusResponse(job_id=job_id, status=await jm.get_job_status(job_id)))


async def job_metrics(request: web.Request) -> web.Response:
    window = choice_param(request, "window", "5m", METRICS_WINDOWS)
    job_id = _job_id(request)
    metrics = await _manager(request).get_job_metrics(job_id, MetricsWindow.parse(window))
    return _json(schemas.JobMetricsResponse.of(job_id, datetime.now(UTC), window, metrics))


async def job_logs(request: web.Request) -> web.Response:
    level = enum_param(request, "level", LogLevel)
    limit = int_param(request, "limit", 1000, 1, LOG_LIMIT_MAX)
    tail, tail_lines = tail_param(request)
    if tail_lines is not None:
        limit = tail_lines
    job_id = _job_id(request)
    entries = await _manager(request).get_job_logs(job_id, LogOptions(level=level, limit=limit, tail=tail))
    answer = schemas.JobLogsResponse(
        job_id=job_id, logs=[schemas.masked(e) for e in entries], total=len(entries), limit=limit
    )
    return _json(answer)


# ------------------------------------------------------------------------- savepoints and restart


async def create_savepoint(request: web.Request) -> web.Response:
    jm = _manager(request)
    job_id = _job_id(request)
    await jm.get_job_status(job_id)  # 404 before 400: an unknown job is the bigger problem
    body = parse_body(
        schemas.CreateSavepointRequest, await read_optional_object(request, request.app[MAX_BODY_BYTES])
    )
    savepoint_id = await jm.create_savepoint(job_id, body.description)
    info = await jm.get_savepoint(job_id, savepoint_id)
    location = f"/api/v1/jobs/{job_id}/savepoints/{savepoint_id}"
    return _json(info, 201, {"Location": location})


async def list_savepoints(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    savepoints = await _manager(request).list_savepoints(job_id)
    return _json(schemas.SavepointListResponse(job_id=job_id, savepoints=savepoints))


async def get_savepoint(request: web.Request) -> web.Response:
    return _json(await _manager(request).get_savepoint(_job_id(request), request.match_info["savepoint_id"]))


async def delete_savepoint(request: web.Request) -> web.Response:
    savepoint_id = request.match_info["savepoint_id"]
    await _manager(request).delete_savepoint(_job_id(request), savepoint_id)
    return _json(schemas.SavepointDeletedResponse(savepoint_id=savepoint_id, deleted=True))


async def list_checkpoints(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    checkpoints = await _manager(request).list_checkpoints(job_id)
    return _json(schemas.CheckpointListResponse(job_id=job_id, checkpoints=checkpoints))


async def restart_job(request: web.Request) -> web.Response:
    jm = _manager(request)
    job_id = _job_id(request)
    await jm.get_job_status(job_id)  # 404 before 400
    options = parse_body(RestartOptions, await read_optional_object(request, request.app[MAX_BODY_BYTES]))
    restored = options.savepoint_id
    if restored is None:  # restart_job restores the newest restore point: report it if a savepoint
        restored = await jm.restore_savepoint_id(job_id)
    await jm.restart_job(job_id, options)
    restarted_at = datetime.now(UTC)
    status = await _wait_until_started(jm, job_id, RESTART_WAIT_S)
    if status == JobStatus.RUNNING:
        message = "Job restarted successfully"
    else:
        why = (await jm.get_job_details(job_id)).message
        message = f"Job restarted; it is {status.value}" + (f": {mask_secrets(why)}" if why else "")
    answer = schemas.RestartJobResponse(
        job_id=job_id,
        status=status,
        restarted_at=restarted_at,
        restored_from_savepoint=restored,
        message=message,
    )
    return _json(answer)


async def _wait_until_started(jm: JobService, job_id: str, within_s: float) -> JobStatus:
    """The job's status once it has left ``submitted`` (its new run connected), or after ``within_s``."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        status = await jm.get_job_status(job_id)
        if status != JobStatus.SUBMITTED or asyncio.get_running_loop().time() >= deadline:
            return status
        await asyncio.sleep(RESTART_POLL_S)


# ---------------------------------------------------------------------------------------- service


async def health(request: web.Request) -> web.Response:
    return _json(schemas.HealthResponse())


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=openapi.render().encode(), content_type="application/json")


async def prometheus_metrics(request: web.Request) -> web.Response:
    body = await _manager(request).prometheus_exposition()
    return web.Response(body=body, headers={"Content-Type": prometheus.CONTENT_TYPE})


# --------------------------------------------------------------------------------- request parsing


async def read_json(request: web.Request, limit: int) -> Any:
    """The body as JSON; ``PayloadTooLargeError`` past ``limit`` bytes, by Content-Length or while
    reading (a chunked body has no Content-Length)."""
    data = await _read_body(request, limit)
    if not data.strip():
        raise InvalidJsonError("request body is empty: send the job as a JSON object")
    return _parse_json(data)


async def read_optional_object(request: web.Request, limit: int) -> dict[str, Any]:
    """An optional JSON object body: no body (or ``null``) is ``{}``; anything but an object is 400."""
    data = await _read_body(request, limit)
    if not data.strip():
        return {}
    body = _parse_json(data)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise InvalidRequestError(
            "request body must be a JSON object", [{"path": "(body)", "message": "must be a JSON object"}]
        )
    return body


async def _read_body(request: web.Request, limit: int) -> bytearray:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(limit)
    data = bytearray()
    try:
        async for chunk in request.content.iter_any():
            data += chunk
            if len(data) > limit:
                raise PayloadTooLargeError(limit)
    except ClientPayloadError as e:
        raise InvalidJsonError(f"request body could not be read: {e}") from None
    return data


def _parse_json(data: bytearray) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise InvalidJsonError(f"request body is not valid JSON: {e}") from None


def parse_body(model: type[B], body: dict[str, Any]) -> B:
    """Validates an optional request body; every problem is a detail with its field path."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        problems = field_errors(e)
        summary = "; ".join(f"{p.path}: {p.message}" for p in problems[:5])
        raise InvalidRequestError(
            f"invalid request body: {summary}", [p.to_dict() for p in problems]
        ) from None


def _query(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise InvalidParameterError(name, "given more than once")
    return values[0].strip() if values else None


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = _query(request, name)
    if raw is None:
        return default
    if not raw.lstrip("+-").isdigit() or len(raw) > 20:
        raise InvalidParameterError(name, f"must be an integer from {low} to {high}, got {raw!r}")
    value = int(raw)
    if not low <= value <= high:
        raise InvalidParameterError(name, f"must be an integer from {low} to {high}, got {value}")
    return value


def bool_param(request: web.Request, name: str, default: bool) -> bool:
    raw = _query(request, name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise InvalidParameterError(name, f"must be true or false, got {raw!r}")


def choice_param(request: web.Request, name: str, default: str, choices: Sequence[str]) -> str:
    raw = _query(request, name)
    if raw is None:
        return default
    if raw not in choices:
        raise InvalidParameterError(name, f"must be one of {', '.join(choices)}; got {raw!r}")
    return raw


def enum_param(request: web.Request, name: str, enum: type[E]) -> E | None:
    raw = _query(request, name)
    if raw is None:
        return None
    try:
        return enum(raw.lower())
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise InvalidParameterError(name, f"must be one of {allowed}; got {raw!r}") from None


def tail_param(request: web.Request) -> tuple[bool, int | None]:
    """``tail=true|false`` (the spec), or ``tail=N``: the last N lines (then N is the limit)."""
    raw = _query(request, "tail")
    if raw is None:
        return False, None
    if raw.lower() in _TRUE - {"1"} or raw.lower() in _FALSE - {"0"}:
        return raw.lower() in _TRUE, None
    if raw.isdigit() and len(raw) <= 20:
        n = int(raw)
        if n == 0:
            return False, None
        if n > LOG_LIMIT_MAX:
            raise InvalidParameterError("tail", f"must be true, false or a line count up to {LOG_LIMIT_MAX}")
        return True, n
    raise InvalidParameterError("tail", f"must be true, false or a number of lines; got {raw!r}")
