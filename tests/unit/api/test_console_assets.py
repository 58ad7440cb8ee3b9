"""The console's routes and files: which paths are open without a token, and that only the packaged
files are ever served (an in-process app over a real aiohttp server)."""

from __future__ import annotations

import re
from importlib import resources
from typing import cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from heliosdb_streaming.api.app import create_app
from heliosdb_streaming.api.console import is_console_path, setup_console
from heliosdb_streaming.api.errors import error_middleware
from heliosdb_streaming.api.service import JobService

CONSOLE = resources.files("heliosdb_streaming.api").joinpath("console_assets")


@pytest.mark.parametrize(
    ("path", "open_"),
    [
        ("/", True),
        ("/submit", True),
        ("/jobs/job-1", True),
        ("/console/app.js", True),
        ("/jobs/", False),
        ("/jobs/job-1/metrics", False),
        ("/api/v1/jobs", False),
        ("/metrics", False),
        ("/submit/x", False),
    ],
)
def test_console_paths(path: str, open_: bool) -> None:
    assert is_console_path(path) is open_


def test_every_module_the_console_imports_is_packaged() -> None:
    """A missing file would break the console only in a browser: check the imports and links here."""
    names = {entry.name for entry in CONSOLE.iterdir()}
    index = CONSOLE.joinpath("index.html").read_text()
    wanted = set(re.findall(r'(?:src|href)="/console/([^"]+)"', index))
    for name in names:
        if name.endswith(".js"):
            wanted |= set(re.findall(r'from "\./([^"]+)"', CONSOLE.joinpath(name).read_text()))
    assert wanted <= names, f"referenced but not packaged: {wanted - names}"
    assert {"app.js", "api.js", "chart.js", "jobs.js", "job.js", "submit.js", "style.css"} <= wanted


async def test_only_packaged_files_are_served() -> None:
    app = web.Application(middlewares=[error_middleware])
    setup_console(app)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        for path in ("/", "/jobs/job-1", "/submit"):
            async with session.get(server.make_url(path)) as answer:
                assert answer.status == 200
                assert answer.content_type == "text/html"
                assert "/console/app.js" in await answer.text()
                assert answer.headers["X-Frame-Options"] == "DENY"
        async with session.get(server.make_url("/console/app.js")) as answer:
            assert answer.status == 200 and answer.content_type == "text/javascript"
        refused = ("/console/console.py", "/console/..%2F__init__.py", "/console/.x.js", "/console/nope.js")
        for path in refused:
            async with session.get(server.make_url(path)) as answer:
                assert answer.status == 404, path


@pytest.mark.parametrize(("read_only", "page_status"), [(False, 200), (True, 401)])
async def test_the_console_is_open_on_the_api_and_absent_from_the_read_only_api(
    read_only: bool, page_status: int
) -> None:
    """``helios server`` serves the console without the token; the operator's read API (read_only) has
    none, so ``/`` is an unknown path there and the token is asked first. The API needs it in both."""
    service = cast(JobService, object())  # no route here reaches the service
    app = create_app(service, api_token="secret", read_only=read_only)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/")) as answer:
            assert answer.status == page_status
        async with session.get(server.make_url("/console/app.js")) as answer:
            assert answer.status == page_status
        async with session.get(server.make_url("/api/v1/jobs")) as answer:
            assert answer.status == 401
        async with session.get(server.make_url("/metrics")) as answer:
            assert answer.status == 401
        headers = {"Authorization": "Bearer secret"}
        async with session.get(server.make_url("/"), headers=headers) as answer:
            assert answer.status == (200 if not read_only else 404)
