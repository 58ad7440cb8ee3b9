"""``from_savepoint`` on S3 over real HTTP: validation only reads, and an unreachable S3 is a quick 400.

A real server (moto) for the bucket that must not appear, a port nothing listens on, and a socket that
accepts and never answers.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import test_api as rest  # the REST client and helpers of the API tests (found through sys.path)
from minio import Minio

from heliosdb_streaming.api.app import create_app
from heliosdb_streaming.job import JobManager

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[rest.Api]:
    async with JobManager(2, home=tmp_path / "home") as jm, rest.serve(create_app(jm)) as client:
        yield client


def use_s3(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """The S3 settings a server takes from its environment (a from_savepoint URI carries none)."""
    monkeypatch.setenv("HELIOS_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


async def submit_from(api: rest.Api, location: str) -> tuple[list[dict[str, str]], float]:
    started = time.monotonic()
    reply = await api.call(
        "POST",
        "/api/v1/jobs",
        json=rest.datagen_job("from-s3", count=10),
        params={"from_savepoint": location},
    )
    elapsed = time.monotonic() - started
    details = rest.assert_error(reply, 400, "invalid_job_config")
    assert [d["path"] for d in details] == ["from_savepoint"], details
    return details, elapsed


async def test_a_savepoint_in_a_missing_bucket_is_400_and_the_bucket_is_not_created(
    api: rest.Api, s3_options: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_s3(monkeypatch, s3_options["endpoint"])
    bucket = f"helios-missing-{uuid.uuid4().hex[:12]}"
    details, _ = await submit_from(api, f"s3://{bucket}/job-1/savepoints/savepoint-1")
    assert "no completed savepoint or checkpoint" in details[0]["message"]
    client = Minio(
        s3_options["endpoint"].split("://", 1)[1], "testing", "testing", secure=False, region="us-east-1"
    )
    assert not client.bucket_exists(bucket)
    assert (await api.ok("GET", "/api/v1/jobs"))["total"] == 0


@pytest.fixture(params=["refused", "silent"])
def dead_endpoint(request: pytest.FixtureRequest) -> Iterator[str]:
    """``refused``: nothing listens on the port; ``silent``: a socket accepts and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        if request.param == "silent":
            listener.listen(16)
            yield f"http://127.0.0.1:{port}"
            return
    yield f"http://127.0.0.1:{port}"  # closed: refused


async def test_an_unreachable_s3_is_a_400_with_the_reason_within_5_seconds(
    api: rest.Api, dead_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_s3(monkeypatch, dead_endpoint)
    details, elapsed = await submit_from(api, "s3://bucket/job-1/savepoints/savepoint-1")
    assert elapsed < 5.5, elapsed
    message = details[0]["message"]
    assert "cannot read the snapshot" in message
    assert dead_endpoint.split("://", 1)[1] in message or "did not answer within" in message, message
    assert (await api.ok("GET", "/api/v1/jobs"))["total"] == 0
