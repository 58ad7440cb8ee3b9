"""Every error the API answers with, mapped to one HTTP status in one place.

Bodies are always ``{"error": {"code", "message", "details"}}``. Domain errors (``model.errors``) keep
their own code; errors of the HTTP layer itself (bad JSON, bad query parameters, body too large, no
token) are ``ApiError``s raised by the views and middlewares. Anything else is a bug: it is logged
with its stack trace and answered with a generic 500, never with the trace.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import orjson
from aiohttp import web

from heliosdb_streaming.model.errors import (
    IllegalStateTransitionError,
    InvalidJobConfigError,
    JobError,
    JobNotFoundError,
    SavepointFailedError,
    SavepointNotFoundError,
)
from heliosdb_streaming.runtime.connectors.secrets import mask_secrets

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """What one ``error.code`` means to a client, and the one status it always comes with."""

    status: int
    meaning: str


# Every code the server (and the operator's read API, which shares this middleware) can answer with:
# the one table clients, the OpenAPI document and docs/errors.md are checked against (a test walks
# every error class in src). A new error class needs its row here.
ERROR_CODES: Mapping[str, ErrorCode] = {
    "bad_request": ErrorCode(400, "a request the HTTP layer could not read (malformed headers or body)"),
    "invalid_json": ErrorCode(400, "the body is not JSON, or not a JSON object"),
    "invalid_job_config": ErrorCode(400, "the job is invalid; details name every field path at fault"),
    "python_not_allowed": ErrorCode(400, "a step names user code of a module the server does not allow"),
    "invalid_request": ErrorCode(400, "a body other than a job does not fit its schema"),
    "invalid_parameter": ErrorCode(400, "a query parameter is invalid; details name it"),
    "job_error": ErrorCode(400, "a job error of no more specific kind (none is raised today)"),
    "unauthorized": ErrorCode(401, "a token is configured and the bearer token is missing or wrong"),
    "forbidden": ErrorCode(403, "the Host or Origin header names no host this server allows"),
    "job_not_found": ErrorCode(404, "no job with this id (in this namespace)"),
    "savepoint_not_found": ErrorCode(404, "the job has no savepoint with this id"),
    "not_found": ErrorCode(404, "no such endpoint"),
    "method_not_allowed": ErrorCode(405, "the endpoint exists but not with this method (see Allow)"),
    "illegal_state_transition": ErrorCode(409, "the action is not allowed in the job's current status"),
    "job_restarting": ErrorCode(409, "the job is between two runs and no run was ready for the savepoint"),
    "savepoint_in_use": ErrorCode(409, "a job restores from this savepoint; details name those jobs"),
    "job_not_terminal": ErrorCode(409, "a purge of a job that is not finished, failed or cancelled"),
    "job_has_savepoints": ErrorCode(409, "a purge of a job that still has savepoints; details name them"),
    "payload_too_large": ErrorCode(413, "the body is over 1 MiB"),
    "unsupported_media_type": ErrorCode(415, "a body that is not Content-Type application/json"),
    "internal_error": ErrorCode(500, "a bug; the server log has the stack trace"),
    "savepoint_failed": ErrorCode(503, "a worker failed the savepoint or it timed out; the job runs on"),
    "service_unavailable": ErrorCode(503, "a service the substrate needs (the operator's read API) is down"),
}

# Domain error type -> HTTP status; the most specific class wins (checked in this order).
DOMAIN_STATUS: tuple[tuple[type[JobError], int], ...] = (
    (InvalidJobConfigError, 400),
    (JobNotFoundError, 404),
    (SavepointNotFoundError, 404),
    (IllegalStateTransitionError, 409),
    (SavepointFailedError, 503),  # the job keeps running: the savepoint may be tried again
    (JobError, 400),
)

# Codes for aiohttp's own HTTP exceptions (unknown route, wrong method, ...).
HTTP_CODES: Mapping[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error of the HTTP layer, with its status and code."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, details: Sequence[Mapping[str, str]] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = [dict(d) for d in details]


class InvalidJsonError(ApiError):
    code = "invalid_json"


class InvalidRequestError(ApiError):
    """A request body (other than a job) that does not fit its schema; details name each field path."""

    code = "invalid_request"


class InvalidParameterError(ApiError):
    code = "invalid_parameter"

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(
            f"invalid query parameter {parameter!r}: {message}", [{"path": parameter, "message": message}]
        )
        self.parameter = parameter


class PayloadTooLargeError(ApiError):
    status = 413
    code = "payload_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"request body is larger than {limit} bytes",
            [{"path": "(body)", "message": f"at most {limit} bytes"}],
        )


class UnauthorizedError(ApiError):
    status = 401
    code = "unauthorized"


class ServiceUnavailableError(ApiError):
    """A service the substrate depends on does not answer (on Kubernetes: the operator's read API)."""

    status = 503
    code = "service_unavailable"


def error_response(
    status: int,
    code: str,
    message: str,
    details: Sequence[Mapping[str, str]] = (),
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    masked = [{k: mask_secrets(v) if k == "message" else v for k, v in d.items()} for d in details]
    body = {"error": {"code": code, "message": mask_secrets(message), "details": masked}}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def domain_status(error: JobError) -> int:
    for cls, status in DOMAIN_STATUS:
        if isinstance(error, cls):
            return status
    return 400  # unreachable: JobError is last in the table


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turns every exception into the JSON error body; the outermost middleware."""
    try:
        return await handler(request)
    except ApiError as e:
        headers = {"WWW-Authenticate": 'Bearer realm="heliosdb"'} if e.status == 401 else None
        return error_response(e.status, e.code, e.message, e.details, headers)
    except JobError as e:
        return error_response(domain_status(e), e.code, e.message, e.details())
    except web.HTTPException as e:
        if e.status < 400:
            raise  # redirects and successes raised as exceptions pass through
        return _http_exception_response(request, e)
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal server error; see the server log")


def _http_exception_response(request: web.Request, e: web.HTTPException) -> web.Response:
    # any other status aiohttp raises is answered as the table says (one code, one status)
    code = HTTP_CODES.get(e.status, "bad_request" if e.status < 500 else "internal_error")
    status = ERROR_CODES[code].status
    if e.status == 404:
        message = f"no such endpoint: {request.method} {request.path}"
    elif e.status == 405:
        message = f"method {request.method} is not allowed on {request.path}"
    else:
        message = e.reason
    headers = {k: v for k, v in e.headers.items() if k.lower() == "allow"}
    return error_response(status, code, message, headers=headers or None)
