"""``helios server`` against what a web page (and a careless client) may send it: real server processes,
real HTTP. The browser threat model is docs/security.md; the decisions are unit-tested in
tests/unit/api/test_guard.py and tests/unit/control/test_paths.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from rest_call import call

from heliosdb_streaming.job.manager import JobManager
from heliosdb_streaming.testing.server import HeliosServerProcess

pytestmark = pytest.mark.timeout(240)

ERROR_KEYS = {"code", "message", "details"}
MIB = 1 << 20
HEALTHZ_MAX_S = 0.050


def datagen_job(name: str, *, count: int = 10, sink: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "config": {"parallelism": 1, "restart_strategy": "none"},
        "sources": [{"type": "datagen", "config": {"partitions": 1, "count": count, "seed": 1}}],
        "sinks": [sink or {"type": "discard", "config": {}}],
    }


def file_job(name: str, source: str, sink: str, **settings: Any) -> dict[str, Any]:
    return {
        "name": name,
        "config": {"parallelism": 1, "restart_strategy": "none", **settings},
        "sources": [{"type": "file", "config": {"path": source}}],
        "sinks": [{"type": "file", "config": {"path": sink}}],
    }


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("security")
    dirs = {name: root / name for name in ("home", "data", "outside")}
    for d in dirs.values():
        d.mkdir()
    (dirs["data"] / "in.jsonl").write_text("".join(json.dumps({"n": i}) + "\n" for i in range(5)))
    (dirs["outside"] / "secret.jsonl").write_text('{"password": "hunter2"}\n')
    return dirs


@pytest.fixture(scope="module")
def server(layout: dict[str, Path]) -> Iterator[HeliosServerProcess]:
    """Defaults (loopback, no token), plus one allowed directory for job files."""
    process = HeliosServerProcess(layout["home"], "--allow-path", str(layout["data"]))
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log_tail()


def error_of(status: int, body: dict[str, Any], wanted: int, code: str) -> dict[str, Any]:
    assert status == wanted, body
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    assert body["error"]["code"] == code, body
    error: dict[str, Any] = body["error"]
    return error


async def job_count(session: aiohttp.ClientSession, base: str) -> int:
    status, body = await call(session, "GET", f"{base}/api/v1/jobs")
    assert status == 200, body
    return int(body["total"])


# ----------------------------------------------------------------------------------------- 415


async def test_a_cross_site_simple_request_cannot_submit_or_restart(
    server: HeliosServerProcess, session: aiohttp.ClientSession
) -> None:
    base = server.url
    before = await job_count(session, base)
    job = json.dumps(datagen_job("csrf")).encode()
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ):
        status, body = await call(
            session, "POST", f"{base}/api/v1/jobs", data=job, headers={"Content-Type": content_type}
        )
        error = error_of(status, body, 415, "unsupported_media_type")
        assert "application/json" in error["message"]
    # a body must say it is JSON: none at all is refused too
    status, body = await call(
        session, "POST", f"{base}/api/v1/jobs", data=job, skip_auto_headers={"Content-Type"}
    )
    error_of(status, body, 415, "unsupported_media_type")
    assert await job_count(session, base) == before

    status, body = await call(session, "POST", f"{base}/api/v1/jobs", json=datagen_job("mine", count=5))
    assert status == 201, body
    job_id = body["job_id"]
    for method, suffix in (("POST", "/restart"), ("POST", "/pause"), ("DELETE", ""), ("POST", "/savepoints")):
        status, body = await call(
            session,
            method,
            f"{base}/api/v1/jobs/{job_id}{suffix}",
            data=b"",
            headers={"Content-Type": "text/plain"},
        )
        error_of(status, body, 415, "unsupported_media_type")
    # the helios CLI's requests: JSON bodies, and body-less POSTs (aiohttp adds application/octet-stream)
    status, body = await call(session, "POST", f"{base}/api/v1/jobs/{job_id}/restart")
    assert status in (200, 409), body  # 409: it finished already; either way not refused for its type
    status, body = await call(session, "POST", f"{base}/api/v1/jobs/{job_id}/restart", json={})
    assert status in (200, 409), body


# ----------------------------------------------------------------------------------------- 403


async def test_foreign_host_and_origin_are_403(
    server: HeliosServerProcess, session: aiohttp.ClientSession
) -> None:
    base = server.url
    port = urlsplit(base).port
    jobs = f"{base}/api/v1/jobs"
    before = await job_count(session, base)
    # DNS rebinding: a hostile name resolving to 127.0.0.1 makes the browser send its own Host
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
        for method, kw in (("GET", {}), ("POST", {"json": datagen_job("rebound")})):
            status, body = await call(session, method, jobs, headers={"Host": host}, **kw)
            error = error_of(status, body, 403, "forbidden")
            assert "--allowed-hosts" in error["message"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost:1", "LOCALHOST"):
        status, body = await call(session, "GET", jobs, headers={"Host": host})
        assert status == 200, (host, body)

    for origin in ("https://evil.example", "null", f"http://evil.example:{port}"):
        status, body = await call(
            session, "POST", jobs, json=datagen_job("cross"), headers={"Origin": origin}
        )
        error = error_of(status, body, 403, "forbidden")
        assert "--allowed-origins" in error["message"]
        status, body = await call(session, "GET", jobs, headers={"Origin": origin})
        error_of(status, body, 403, "forbidden")
    assert await job_count(session, base) == before
    for origin in (f"http://127.0.0.1:{port}", "http://localhost:3000"):
        status, body = await call(session, "GET", jobs, headers={"Origin": origin})
        assert status == 200, (origin, body)


async def test_allowed_hosts_and_origins(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    server = HeliosServerProcess(
        tmp_path / "home",
        "--allowed-hosts",
        "helios.example",
        "--allowed-origins",
        "https://console.example:8443",
    )
    try:
        jobs = f"{server.url}/api/v1/jobs"
        for headers in (
            {"Host": "helios.example"},
            {"Host": "HELIOS.example:8081", "Origin": "https://helios.example"},
            {"Origin": "https://console.example:8443"},
        ):
            status, body = await call(session, "GET", jobs, headers=headers)
            assert status == 200, (headers, body)
        for headers in ({"Host": "other.example"}, {"Origin": "https://console.example"}):
            status, body = await call(session, "GET", jobs, headers=headers)
            error_of(status, body, 403, "forbidden")
    finally:
        assert server.stop() == 0, server.log_tail()


# ------------------------------------------------------------------------ refusing a big upload


async def _slow_upload(
    address: tuple[str, int], content_type: str, *, chunked: bool, total: int
) -> tuple[int, int, bool]:
    """Sends a ``total``-byte body in paced chunks; returns (status, bytes sent when the answer came,
    whether the upload was still going on then)."""
    reader, writer = await asyncio.open_connection(*address)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    head = (
        f"POST /api/v1/jobs HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\n"
        f"Content-Type: {content_type}\r\n{framing}\r\n\r\n"
    )
    writer.write(head.encode())
    sent = 0
    answered_at: int | None = None

    async def send() -> None:
        nonlocal sent
        chunk = b" " * (16 * 1024)
        with contextlib.suppress(ConnectionError):
            while sent < total and answered_at is None:
                piece = chunk[: total - sent]
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
                await writer.drain()
                sent += len(piece)
                await asyncio.sleep(0.01)  # paces the upload (~1.6 MB/s): it lasts while /healthz is asked

    sender = asyncio.create_task(send())
    try:
        status_line = await asyncio.wait_for(reader.readline(), 60)
        answered_at = sent
        still_uploading = not sender.done()
        return int(status_line.split()[1]), answered_at, still_uploading
    finally:
        await sender
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.mark.parametrize(
    ("content_type", "chunked", "status"),
    [("text/plain", True, 415), ("application/json", False, 413)],
    ids=["text-plain-chunked", "json-over-the-limit"],
)
async def test_healthz_stays_fast_while_a_big_body_is_refused(
    server: HeliosServerProcess, session: aiohttp.ClientSession, content_type: str, chunked: bool, status: int
) -> None:
    parts = urlsplit(server.url)
    assert parts.hostname is not None and parts.port is not None
    healthz = f"{server.url}/healthz"
    async with session.get(healthz) as warm:  # one pooled connection for the measurements
        assert warm.status == 200
    upload = asyncio.create_task(
        _slow_upload((parts.hostname, parts.port), content_type, chunked=chunked, total=MIB + 1)
    )
    latencies: list[float] = []
    while len(latencies) < 10 or not upload.done():
        started = time.perf_counter()
        async with session.get(healthz) as reply:
            assert reply.status == 200
            await reply.read()
        latencies.append(time.perf_counter() - started)
    answered, sent_before_answer, still_uploading = await upload
    assert answered == status
    assert sent_before_answer < MIB and still_uploading, "refused only after the body was read"
    assert max(latencies) < HEALTHZ_MAX_S, sorted(latencies)[-3:]


# ---------------------------------------------------------------------------------------- paths


async def test_job_files_must_stay_in_the_allowed_roots(
    server: HeliosServerProcess, session: aiohttp.ClientSession, layout: dict[str, Path]
) -> None:
    jobs = f"{server.url}/api/v1/jobs"
    before = await job_count(session, server.url)
    outside, data, home = layout["outside"], layout["data"], layout["home"]
    (home / "escape").symlink_to(outside)
    try:
        cases = {
            "sources[0].config.path": file_job("a", "/etc/passwd", "out/{task}.jsonl"),
            "sinks[0].config.path": file_job("b", str(data / "in.jsonl"), str(outside / "out")),
            "config.checkpoint_storage": file_job(
                "c", str(data / "in.jsonl"), "out", checkpoint_storage="file:///etc"
            ),
        }
        cases["sources[0].config.path "] = file_job(
            "d", "../outside/secret.jsonl", "out"
        )  # '..' from the home
        cases["sources[0].config.path  "] = file_job(
            "e", str(home / "escape" / "secret.jsonl"), "out"
        )  # symlink
        for field, body in cases.items():
            status, reply = await call(session, "POST", jobs, json=body)
            error = error_of(status, reply, 400, "invalid_job_config")
            assert [d["path"] for d in error["details"]] == [field.strip()], error
            assert "outside the directories this server allows" in error["details"][0]["message"]
        status, reply = await call(
            session, "POST", jobs, params={"from_savepoint": outside.as_uri()}, json=datagen_job("sp")
        )
        error = error_of(status, reply, 400, "invalid_job_config")
        assert [d["path"] for d in error["details"]] == ["from_savepoint"]
        assert await job_count(session, server.url) == before
    finally:
        (home / "escape").unlink()

    # inside: an --allow-path source, a sink relative to the home (where the workers run)
    status, reply = await call(
        session, "POST", jobs, json=file_job("ok", str(data / "in.jsonl"), "out/{task}.jsonl")
    )
    assert status == 201, reply
    job_id = reply["job_id"]
    deadline = time.monotonic() + 120
    while True:
        status, details = await call(session, "GET", f"{jobs}/{job_id}")
        if details["status"] in ("finished", "failed") or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert details["status"] == "finished", details
    written = [
        json.loads(line)
        for f in sorted((home / "out").glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    assert sorted(r["n"] for r in written) == [0, 1, 2, 3, 4]


async def test_restart_through_the_server_checks_paths_again(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """A job stored by the native API (full access) over the same home does not run again through the
    server with a path outside its roots."""
    home, outside = tmp_path / "home", tmp_path / "outside"
    outside.mkdir()
    async with JobManager(2, home=home) as jm:
        job_id = await jm.submit_job(
            datagen_job("native", sink={"type": "file", "config": {"path": str(outside / "out")}})
        )
        deadline = time.monotonic() + 120
        while not (await jm.get_job_status(job_id)).terminal:
            assert time.monotonic() < deadline, await jm.get_job_details(job_id)
            await asyncio.sleep(0.1)
    assert list(outside.glob("out-*.jsonl"))  # the native API may write there
    server = HeliosServerProcess(home)
    try:
        status, body = await call(session, "POST", f"{server.url}/api/v1/jobs/{job_id}/restart", json={})
        error = error_of(status, body, 400, "invalid_job_config")
        assert [d["path"] for d in error["details"]] == ["sinks[0].config.path"]
        status, body = await call(
            session,
            "POST",
            f"{server.url}/api/v1/jobs/{job_id}/restart",
            json={"config_overrides": {"parallelism": 1}},
        )
        error_of(status, body, 400, "invalid_job_config")
    finally:
        assert server.stop() == 0, server.log_tail()
