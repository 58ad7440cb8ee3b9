"""Every error code the API can answer with and its HTTP status, collected from the code itself: the
``code`` of every domain error (``model.errors``) and HTTP-layer error (``api.errors``, ``api.guard``,
the Kubernetes substrate's), aiohttp's statuses (``api.errors.HTTP_CODES``) and the codes the
``ErrorInfo`` schema lists (``internal_error`` is only there and in the error middleware)."""

from __future__ import annotations

import importlib
import re

from heliosdb_streaming.api import errors as api_errors
from heliosdb_streaming.api import schemas
from heliosdb_streaming.model import errors as model_errors

# Modules that define error classes; imported so that every subclass is registered before the walk.
ERROR_MODULES = (
    "heliosdb_streaming.api.guard",
    "heliosdb_streaming.kubernetes.restapi.commands",
    "heliosdb_streaming.kubernetes.restapi.readclient",
)


def _subclasses(cls: type) -> list[type]:
    out: list[type] = [cls]
    sub: type
    for sub in cls.__subclasses__():
        out += _subclasses(sub)
    return out


def error_codes() -> dict[str, int]:
    """code -> HTTP status, for every code the REST API can put in ``{"error": {"code"}}``."""
    for name in ERROR_MODULES:
        importlib.import_module(name)
    codes: dict[str, int] = {}
    for cls in _subclasses(model_errors.JobError):
        status = next(s for c, s in api_errors.DOMAIN_STATUS if issubclass(cls, c))
        codes.setdefault(cls.code, status)  # type: ignore[attr-defined]
    for cls in _subclasses(api_errors.ApiError):
        codes.setdefault(cls.code, cls.status)  # type: ignore[attr-defined]
    for status, code in api_errors.HTTP_CODES.items():
        codes.setdefault(code, status)
    listed = schemas.ErrorInfo.model_fields["code"].description or ""
    for code in re.findall(r"[a-z]+(?:_[a-z]+)+", listed.split(":", 1)[1]):
        codes.setdefault(code, 500 if code == "internal_error" else 0)
    return dict(sorted(codes.items()))
