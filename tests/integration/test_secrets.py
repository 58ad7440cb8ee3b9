"""Secrets against real parts: a REST server with real workers on a temporary home.

What a job's connection string holds never comes back in clear (details, logs, errors), the home that
stores it is private to its user, and workers do not get the server's environment.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import test_api as rest  # the REST client and helpers of the API tests (found through sys.path)

from heliosdb_streaming.api.app import create_app
from heliosdb_streaming.job import JobManager

pytestmark = pytest.mark.timeout(240)

PASSWORD = "p%40ss:w0rd%2F"  # 'p@ss:w0rd/' as a URL holds it: ':' as is, '@' and '/' percent-encoded


@pytest.fixture
async def jm(tmp_path: Path) -> AsyncIterator[JobManager]:
    async with JobManager(4, home=tmp_path / "home") as manager:
        yield manager


@pytest.fixture
async def api(jm: JobManager) -> AsyncIterator[rest.Api]:
    async with rest.serve(create_app(jm)) as client:
        yield client


def database_job(connection_string: str) -> dict[str, Any]:
    job = rest.datagen_job("masked", count=100)
    job["sinks"] = [
        {
            "type": "database",
            "config": {
                "connection_string": connection_string,
                "table": "alerts",
                "delivery": "at_least_once",
            },
        }
    ]
    return job


async def test_a_password_with_url_delimiters_never_comes_back_in_clear(api: rest.Api) -> None:
    """The sink cannot connect (nothing listens on port 1); the failure quotes the connection string.

    No user name (the driver's default) and an ``sslpassword``: forms the two maskings this replaced
    each missed.
    """
    dsn = f"postgresql://:{PASSWORD}@127.0.0.1:1/test?sslpassword=k3y-s3cret"
    job_id = (await api.ok("POST", "/api/v1/jobs", 201, json=database_job(dsn)))["job_id"]
    details = await api.wait_status(job_id, {"failed"}, within=120)
    assert "postgresql://:***@127.0.0.1:1/test" in details["message"], details["message"]
    logs = await api.call("GET", f"/api/v1/jobs/{job_id}/logs", params={"limit": "1000"})
    assert "postgresql://:***@127.0.0.1:1/test" in logs.text
    for text in (
        details["message"],
        (await api.call("GET", f"/api/v1/jobs/{job_id}")).text,
        logs.text,
        (await api.call("GET", "/api/v1/jobs")).text,
    ):
        for secret in (PASSWORD, "p@ss:w0rd/", "w0rd", "k3y-s3cret"):
            assert secret not in text, text


@pytest.mark.parametrize("password", ["pa/ss", "p@ss:w0rd", "pa?ss", "pa#ss", "p@/?#"])
async def test_a_password_that_ends_the_url_early_is_refused_without_quoting_it(
    api: rest.Api, password: str
) -> None:
    """``pa/ss`` would hand 'pa' to the driver as a port (and to its error messages): 400 up front."""
    reply = await api.call(
        "POST", "/api/v1/jobs", json=database_job(f"postgresql://helios:{password}@127.0.0.1:5432/test")
    )
    details = rest.assert_error(reply, 400, "invalid_job_config")
    assert [d["path"] for d in details] == ["sinks[0].config.connection_string"]
    assert "percent-encode" in details[0]["message"]
    assert password not in reply.text
