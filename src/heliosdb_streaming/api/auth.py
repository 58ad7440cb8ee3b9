"""Bearer-token authentication: with a token configured, every route but ``/healthz`` requires
``Authorization: Bearer <token>``.

``/healthz`` stays open so that liveness probes and load balancers need no secret; it tells nothing
about jobs. Neither do the web console's pages and assets (``api.console``): a browser navigating
there cannot send the header; the console's script sends the token with each API call. ``/metrics``
is protected like the API (Prometheus sends the token with ``authorization.credentials``).
"""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Middleware

from heliosdb_streaming.api.console import is_console_path
from heliosdb_streaming.api.errors import Handler, UnauthorizedError

OPEN_PATHS = frozenset({"/healthz"})


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def token_middleware(expected: str, *, open_console: bool = False) -> Middleware:
    """Requires the token everywhere but ``/healthz`` and, with ``open_console``, the console's files."""
    if not expected:
        raise ValueError("the API token must not be empty")
    expected_bytes = expected.encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS and not (open_console and is_console_path(request.path)):
            given = bearer_token(request.headers.get("Authorization"))
            if given is None:
                raise UnauthorizedError("missing bearer token: send 'Authorization: Bearer <token>'")
            if not hmac.compare_digest(given.encode(), expected_bytes):
                raise UnauthorizedError("invalid bearer token")
        return await handler(request)

    return middleware
