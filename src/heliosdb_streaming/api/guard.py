"""What a web browser must not be able to make the server do: the browser threat model (docs/security.md).

A page the user visits can send requests to ``http://127.0.0.1:8081`` with the user's network position
but cannot read the answers (no CORS headers are ever sent) and cannot set most headers. Three checks
close what is left:

1. Job-changing requests (POST, PUT, PATCH, DELETE) carry JSON or nothing: a body whose
   ``Content-Type`` is not ``application/json`` (or that has none) is 415, and so is a ``text/plain``,
   form or multipart type even without a body. Those are all a cross-site "simple request" may send;
   ``application/json`` needs a CORS preflight, which this server never grants.
2. ``Host`` must name this server (DNS rebinding: a hostile name that resolves to 127.0.0.1 makes the
   browser treat the API as the hostile site's own): the bind address, the address the connection
   arrived on, ``localhost``/``127.0.0.1``/``[::1]`` when it arrived on a loopback address, or a name
   given with ``--allowed-hosts`` (``*``: no Host check, for a proxy that checks it).
3. ``Origin``, when present (browsers send it cross-origin), must be ``http(s)://<allowed host>[:port]``
   or one given with ``--allowed-origins`` (``*``: any). No ``Origin``: not a browser's cross-site
   request.

The decisions are pure (``RequestPolicy``); ``guard_middleware`` only reads headers, so a refused
request is answered before its body is read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from heliosdb_streaming.api.errors import ApiError, Handler

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})
CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON = "application/json"
# The bodies a page may send cross-site without a CORS preflight ("simple requests").
BROWSER_SIMPLE_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})


class ForbiddenError(ApiError):
    status = 403
    code = "forbidden"


class UnsupportedMediaTypeError(ApiError):
    status = 415
    code = "unsupported_media_type"


def split_host(value: str) -> tuple[str, int | None] | None:
    """``Host``'s name (lower case, IPv6 without brackets) and port, or None if it does not parse."""
    text = value.strip().lower()
    if not text:
        return None
    try:
        parts = urlsplit(f"//{text}")
        return (parts.hostname or "").rstrip("."), parts.port
    except ValueError:
        return None


def is_loopback(address: str | None) -> bool:
    if address is None:
        return False
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class RequestPolicy:
    """Which ``Host`` names and ``Origin``s a server answers; built once from its command line."""

    names: frozenset[str]
    any_host: bool = False
    origins: frozenset[str] = frozenset()
    any_origin: bool = False

    @classmethod
    def of(
        cls, bind_host: str, allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = ()
    ) -> RequestPolicy:
        """``bind_host`` is allowed unless it is a wildcard (``0.0.0.0``, ``::``): then each local address
        a connection arrives on is (an IP literal cannot be rebound), and names must be listed."""
        hosts = [h.strip().lower() for h in allowed_hosts if h.strip()]
        names = {h.strip("[]").rstrip(".") for h in hosts if h != "*"}
        bind = bind_host.strip().strip("[]").lower()
        if bind not in WILDCARD_BINDS:
            names.add(bind)
        origins = [o.strip().lower().rstrip("/") for o in allowed_origins if o.strip()]
        return cls(
            names=frozenset(names),
            any_host="*" in hosts,
            origins=frozenset(o for o in origins if o != "*"),
            any_origin="*" in origins,
        )

    def _name_allowed(self, name: str, local_address: str | None) -> bool:
        if name in self.names:
            return True
        local = (local_address or "").split("%", 1)[0].lower()
        if local and name == local:
            return True
        return name in LOOPBACK_NAMES and is_loopback(local_address)

    def host_problem(self, host: str | None, local_address: str | None) -> str | None:
        """Why a request with this ``Host`` header, arrived on ``local_address``, is refused; or None."""
        if host is None or self.any_host:
            return None  # HTTP/1.0 without Host is no browser
        parsed = split_host(host)
        if parsed is None or not self._name_allowed(parsed[0], local_address):
            return f"Host {host!r} is not a name of this server; start it with --allowed-hosts NAME"
        return None

    def origin_problem(self, origin: str | None, local_address: str | None) -> str | None:
        """Why a request with this ``Origin`` header is refused; or None (no header: not cross-site)."""
        if origin is None or self.any_origin:
            return None
        text = origin.strip().lower().rstrip("/")
        if text in self.origins:
            return None
        try:
            parts = urlsplit(text)
            name, _ = parts.hostname, parts.port  # .port raises on a bad port
        except ValueError:
            parts, name = None, None
        if (
            parts is not None
            and parts.scheme in ("http", "https")
            and name
            and not parts.path
            and self._name_allowed(name.rstrip("."), local_address)
        ):
            return None
        return f"Origin {origin!r} is not allowed; start the server with --allowed-origins ORIGIN"


def media_type_problem(method: str, content_type: str | None, has_body: bool) -> str | None:
    """Why a job-changing request's body is refused, or None. A body must be JSON. Without a body the
    type says nothing, except the ones a browser sends cross-site without a preflight (refused, as a
    second wall behind the Origin check); aiohttp clients send ``application/octet-stream`` there."""
    if method not in CHANGING_METHODS:
        return None
    if content_type is None:
        return "a request body needs 'Content-Type: application/json'" if has_body else None
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime != JSON and (has_body or mime in BROWSER_SIMPLE_TYPES):
        return f"Content-Type {mime or '(empty)'!r} is not accepted: send application/json"
    return None


def guard_middleware(policy: RequestPolicy | None) -> Middleware:
    """403 for a foreign Host or Origin (when ``policy`` is given), 415 for a body that is not JSON.

    Decides on headers only, before the body is read: a refused upload costs the server nothing."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if policy is not None:
            local = _local_address(request)
            why = policy.host_problem(request.headers.get("Host"), local) or policy.origin_problem(
                request.headers.get("Origin"), local
            )
            if why is not None:
                raise ForbiddenError(why)
        why = media_type_problem(request.method, request.headers.get("Content-Type"), request.body_exists)
        if why is not None:
            raise UnsupportedMediaTypeError(why, [{"path": "(Content-Type)", "message": why}])
        return await handler(request)

    return middleware


def _local_address(request: web.Request) -> str | None:
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sockname, tuple) and sockname:
        return str(sockname[0])
    return None
