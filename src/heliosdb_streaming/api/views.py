"""Thin request handlers: parse the request, call the ``JobManager``, shape the answer with ``schemas``.

Errors are raised, never answered here: ``errors.error_middleware`` turns them into responses.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

import orjson
from aiohttp import ClientPayloadError, web

from heliosdb_streaming.api import openapi, prometheus, schemas
from heliosdb_streaming.api.errors import (
    InvalidJsonError,
    InvalidParameterError,
    NotImplementedApiError,
    PayloadTooLargeError,
)
from heliosdb_streaming.job.config import JobConfig
from heliosdb_streaming.job.errors import FieldError, InvalidJobConfigError
from heliosdb_streaming.job.manager import JobManager
from heliosdb_streaming.job.types import (
    JobMetrics,
    JobStatus,
    JobSummary,
    ListJobsOptions,
    LogLevel,
    LogOptions,
    MetricsWindow,
)

JOB_MANAGER = web.AppKey("job_manager", JobManager)
MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)

LIST_LIMIT_MAX = 1000
LOG_LIMIT_MAX = 100_000
METRICS_WINDOWS = ("1m", "5m", "1h", "24h")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})

E = TypeVar("E", bound=StrEnum)


def _json(body: schemas.ApiBody, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body.to_json()), content_type="application/json", headers=headers
    )


def _manager(request: web.Request) -> JobManager:
    return request.app[JOB_MANAGER]


def _job_id(request: web.Request) -> str:
    return request.match_info["job_id"]


# ------------------------------------------------------------------------------------------- jobs


async def submit_job(request: web.Request) -> web.Response:
    body = await read_json(request, request.app[MAX_BODY_BYTES])
    if not isinstance(body, dict):
        raise InvalidJobConfigError([FieldError("(body)", "must be a JSON object (the job)")])
    config = JobConfig.from_dict(body)
    jm = _manager(request)
    job_id = await jm.submit_job(config)
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
    jm = _manager(request)
    jobs = await jm.list_jobs(ListJobsOptions(status=status, limit=limit, offset=offset))
    total = await jm.count_jobs(status)
    answer = schemas.JobListResponse(
        jobs=[schemas.JobSummaryBody.of(j) for j in jobs], total=total, limit=limit, offset=offset
    )
    return _json(answer)


async def get_job(request: web.Request) -> web.Response:
    details = await _manager(request).get_job_details(_job_id(request))
    return _json(schemas.JobDetailsResponse.of(details))


async def cancel_job(request: web.Request) -> web.Response:
    if bool_param(request, "savepoint", False):
        raise NotImplementedApiError(
            "cancel with savepoint is not supported yet; cancel without ?savepoint=true",
            [{"path": "savepoint", "message": "not supported yet"}],
        )
    jm = _manager(request)
    job_id = _job_id(request)
    await jm.cancel_job(job_id)
    details = await jm.get_job_details(job_id)
    answer = schemas.CancelJobResponse(
        job_id=job_id, status=details.status, cancelled_at=details.finished_at or datetime.now(UTC)
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
        job_id=job_id, logs=[schemas.LogEntryBody.of(e) for e in entries], total=len(entries), limit=limit
    )
    return _json(answer)


# ---------------------------------------------------------------------------------------- service


async def health(request: web.Request) -> web.Response:
    return _json(schemas.HealthResponse())


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=openapi.render().encode(), content_type="application/json")


async def prometheus_metrics(request: web.Request) -> web.Response:
    jm = _manager(request)
    jobs: list[tuple[JobSummary, JobMetrics]] = []
    offset = 0
    while True:
        page = await jm.list_jobs(ListJobsOptions(limit=1000, offset=offset))
        for summary in page:
            jobs.append((summary, await jm.get_job_metrics(summary.job_id, MetricsWindow.minutes(1))))
        if len(page) < 1000:
            break
        offset += len(page)
    jobs.sort(key=lambda item: item[0].job_id)
    return web.Response(
        body=prometheus.render(jobs).encode(), headers={"Content-Type": prometheus.CONTENT_TYPE}
    )


# --------------------------------------------------------------------------------- request parsing


async def read_json(request: web.Request, limit: int) -> Any:
    """The body as JSON; ``PayloadTooLargeError`` past ``limit`` bytes, by Content-Length or while
    reading (a chunked body has no Content-Length)."""
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
    if not data.strip():
        raise InvalidJsonError("request body is empty: send the job as a JSON object")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise InvalidJsonError(f"request body is not valid JSON: {e}") from None


def _query(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise InvalidParameterError(name, "given more than once")
    return values[0].strip() if values else None


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = _query(request, name)
    if raw is None or raw == "":
        return default
    if not raw.lstrip("+-").isdigit() or len(raw) > 20:
        raise InvalidParameterError(name, f"must be an integer from {low} to {high}, got {raw!r}")
    value = int(raw)
    if not low <= value <= high:
        raise InvalidParameterError(name, f"must be an integer from {low} to {high}, got {value}")
    return value


def bool_param(request: web.Request, name: str, default: bool) -> bool:
    raw = _query(request, name)
    if raw is None or raw == "":
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise InvalidParameterError(name, f"must be true or false, got {raw!r}")


def choice_param(request: web.Request, name: str, default: str, choices: Sequence[str]) -> str:
    raw = _query(request, name)
    if raw is None or raw == "":
        return default
    if raw not in choices:
        raise InvalidParameterError(name, f"must be one of {', '.join(choices)}; got {raw!r}")
    return raw


def enum_param(request: web.Request, name: str, enum: type[E]) -> E | None:
    raw = _query(request, name)
    if raw is None or raw == "":
        return None
    try:
        return enum(raw.lower())
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise InvalidParameterError(name, f"must be one of {allowed}; got {raw!r}") from None


def tail_param(request: web.Request) -> tuple[bool, int | None]:
    """``tail=true|false`` (the spec), or ``tail=N``: the last N lines (then N is the limit)."""
    raw = _query(request, "tail")
    if raw is None or raw == "":
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
