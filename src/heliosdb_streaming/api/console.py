"""The web console: static pages served by the API's own app, a pure client of ``/api/v1``.

The pages hold no job data (every number comes from the API with the user's bearer token, asked once
and kept in the browser's sessionStorage), so they are served without a token: a browser navigating
to ``/`` cannot send an ``Authorization`` header. They are sent with a strict Content-Security-Policy
(own scripts only, no framing: a hostile page cannot overlay the console's buttons), and only the
files of the packaged ``console_assets/`` directory are ever read.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

ASSETS = "/console/"
# The console's page routes: each answers the same shell, whose script shows the page of the path.
PAGES = ("/", "/submit", "/jobs/{job_id}")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def is_console_path(path: str) -> bool:
    """Whether ``path`` is one of the console's pages or assets (served without the bearer token)."""
    if path in ("/", "/submit") or path.startswith(ASSETS):
        return True
    parts = path.split("/")
    return len(parts) == 3 and parts[1] == "jobs" and bool(parts[2])


def _asset(name: str) -> bytes | None:
    """The packaged file ``console_assets/<name>``, or None: a plain file name with a known suffix only."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    if not any(name.endswith(suffix) for suffix in CONTENT_TYPES):
        return None
    entry = resources.files("heliosdb_streaming.api").joinpath("console_assets", name)
    if not entry.is_file():
        return None
    return entry.read_bytes()


def _answer(name: str) -> web.Response:
    body = _asset(name)
    if body is None:
        raise web.HTTPNotFound(text=f"no console file {name!r}")
    suffix = name[name.rfind(".") :]
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPES[suffix], **SECURITY_HEADERS})


async def page(request: web.Request) -> web.Response:
    return _answer("index.html")


async def asset(request: web.Request) -> web.Response:
    return _answer(request.match_info["name"])


def setup_console(app: web.Application) -> None:
    """The console's page routes and its assets (``/console/<file>``)."""
    app.add_routes([web.get(path, page, allow_head=False) for path in PAGES])
    app.add_routes([web.get(ASSETS + "{name}", asset, allow_head=False)])
