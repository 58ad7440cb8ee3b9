"""Every error the API answers with, mapped to one HTTP status in one place.

Bodies are always ``{"error": {"code", "message", "details"}}``. Domain errors (``model.errors``) keep
their own code; errors of the HTTP layer itself (bad JSON, bad query parameters, body too large, no
token) are ``ApiError``s raised by the views and middlewares. Anything else is a bug: it is logged
with its stack trace and answered with a generic 500, never with the trace.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

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


class NotImplementedApiError(ApiError):
    code = "not_implemented"


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
    code = HTTP_CODES.get(e.status, f"http_{e.status}")
    if e.status == 404:
        message = f"no such endpoint: {request.method} {request.path}"
    elif e.status == 405:
        message = f"method {request.method} is not allowed on {request.path}"
    else:
        message = e.reason
    headers = {k: v for k, v in e.headers.items() if k.lower() == "allow"}
    return error_response(e.status, code, message, headers=headers or None)
