"""Operations as the Flink Kubernetes operator offers them, over real HTTP against ``helios server``
subprocesses with real workers: periodic savepoints and their retention, purging jobs (REST and
``helios jobs purge``) and the server's job retention."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import pytest

from heliosdb_streaming.testing.server import HELIOS, HeliosServerProcess
from heliosdb_streaming.testing.waits import wait_until, wait_until_steady

pytestmark = pytest.mark.timeout(240)


def datagen_job(name: str, *, count: int | None = None, **config: Any) -> dict[str, Any]:
    source: dict[str, Any] = {"partitions": 2, "seed": 5, "keys": 50, "rate_per_sec": 500}
    if count is not None:
        source |= {"count": count, "rate_per_sec": 0}
    return {
        "name": name,
        "config": {"parallelism": 1, "checkpoint_interval_ms": 1000, "restart_strategy": "none", **config},
        "sources": [{"type": "datagen", "config": source}],
        "transformations": [{"type": "filter", "config": {"condition": "amount > 100"}}],
        "sinks": [{"type": "discard", "config": {}}],
    }


@dataclass
class Api:
    session: aiohttp.ClientSession
    base: str

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.session.request(method, self.base + path, **kw) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def ok(self, method: str, path: str, **kw: Any) -> Any:
        status, body = await self.call(method, path, **kw)
        assert status < 300, (method, path, status, body)
        return body

    async def submit(self, body: dict[str, Any]) -> str:
        return str((await self.ok("POST", "/api/v1/jobs", json=body))["job_id"])

    async def status(self, job_id: str) -> str:
        return str((await self.ok("GET", f"/api/v1/jobs/{job_id}"))["status"])

    async def wait_status(self, job_id: str, wanted: set[str], within: float = 60) -> None:
        async def reached() -> bool:
            return await self.status(job_id) in wanted

        await wait_until(reached, what=f"{job_id} to be {wanted}", within=within)

    async def logs(self, job_id: str) -> list[str]:
        body = await self.ok("GET", f"/api/v1/jobs/{job_id}/logs", params={"limit": "1000"})
        return [e["message"] for e in body["logs"]]

    async def savepoints(self, job_id: str) -> list[dict[str, Any]]:
        return list((await self.ok("GET", f"/api/v1/jobs/{job_id}/savepoints"))["savepoints"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeliosServerProcess]:
    process = HeliosServerProcess(tmp_path_factory.mktemp("ops-http") / "home")
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log_tail()


@pytest.fixture
async def api(server: HeliosServerProcess) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, server.url)


def periodic_ids(messages: list[str], verb: str) -> list[str]:
    """Savepoint ids of 'Periodic savepoint <id> completed' / 'Savepoint <id> deleted (periodic ...'."""
    if verb == "completed":
        return [m.split()[2] for m in messages if m.startswith("Periodic savepoint ") and "completed" in m]
    return [m.split()[1] for m in messages if m.startswith("Savepoint ") and "deleted (periodic" in m]


async def test_periodic_savepoints_appear_and_only_the_newest_are_kept(api: Api) -> None:
    job_id = await api.submit(datagen_job("periodic", savepoint_interval_ms=1000, savepoints_retained=2))
    await api.wait_status(job_id, {"running"})
    details = await api.ok("GET", f"/api/v1/jobs/{job_id}")
    assert (details["config"]["savepoint_interval_ms"], details["config"]["savepoints_retained"]) == (1000, 2)
    # a person's savepoint, even one described like the periodic ones, is never trimmed
    manual = await api.ok("POST", f"/api/v1/jobs/{job_id}/savepoints", json={"description": "periodic"})

    async def four_periodic() -> list[str]:
        done = periodic_ids(await api.logs(job_id), "completed")
        return done if len(done) >= 4 else []

    await wait_until(four_periodic, what="four periodic savepoints", within=90)
    # paused, a job takes no periodic savepoints: once the one in flight and its retention are done,
    # the log and the list stop changing
    await api.ok("POST", f"/api/v1/jobs/{job_id}/pause")

    async def periodic_log() -> tuple[list[str], list[str]]:
        messages = await api.logs(job_id)
        return periodic_ids(messages, "completed"), periodic_ids(messages, "deleted")

    completed, deleted = await wait_until_steady(
        periodic_log, what="the periodic savepoints of a paused job", steady_for=3, within=30
    )
    assert deleted == completed[:-2], (completed, deleted)
    listed = await api.savepoints(job_id)
    by_id = {s["savepoint_id"]: s for s in listed}
    assert set(by_id) == {manual["savepoint_id"], *completed[-2:]}, (completed, listed)
    assert all(s["description"] == "periodic" for s in listed)
    for savepoint_id in completed[:-2]:  # the older periodic ones are gone, files and all
        status, body = await api.call("GET", f"/api/v1/jobs/{job_id}/savepoints/{savepoint_id}")
        assert (status, body["error"]["code"]) == (404, "savepoint_not_found")
    kept = {Path(urlparse(s["location"]).path) for s in listed}
    assert all((d / "_manifest.json").is_file() for d in kept)
    on_disk = set(Path(urlparse(manual["location"]).path).parent.iterdir())  # the job's savepoints/
    assert on_disk == kept, (on_disk, kept)
    await api.ok("DELETE", f"/api/v1/jobs/{job_id}")


async def test_savepoint_interval_is_bounded(api: Api) -> None:
    for value in (500, 7 * 86_400_000 + 1, -1):
        status, body = await api.call(
            "POST", "/api/v1/jobs", json=datagen_job("bad", savepoint_interval_ms=value)
        )
        assert status == 400 and body["error"]["code"] == "invalid_job_config", body
        assert [d["path"] for d in body["error"]["details"]] == ["config.savepoint_interval_ms"], body
    status, body = await api.call("POST", "/api/v1/jobs", json=datagen_job("bad", savepoints_retained=0))
    assert status == 400 and [d["path"] for d in body["error"]["details"]] == ["config.savepoints_retained"]


def job_files(home: Path, job_id: str) -> list[Path]:
    """What the server keeps of a job on disk: its directory (job.json, logs) and its checkpoints."""
    return [p for p in (home / "jobs" / job_id, home / "checkpoints" / job_id) if p.exists()]


def assert_error(reply: tuple[int, Any], status: int, code: str) -> list[dict[str, str]]:
    assert reply[0] == status and reply[1]["error"]["code"] == code, reply
    return list(reply[1]["error"]["details"])


async def assert_gone(api: Api, job_id: str, home: Path) -> None:
    assert_error(await api.call("GET", f"/api/v1/jobs/{job_id}"), 404, "job_not_found")
    assert_error(await api.call("GET", f"/api/v1/jobs/{job_id}/logs"), 404, "job_not_found")
    listed = await api.ok("GET", "/api/v1/jobs", params={"limit": "1000"})
    assert job_id not in {j["job_id"] for j in listed["jobs"]}
    assert job_files(home, job_id) == []


async def test_purge_removes_a_terminal_job_and_refuses_live_or_savepoint_holding_ones(
    api: Api, server: HeliosServerProcess
) -> None:
    job_id = await api.submit(datagen_job("purge-me"))
    await api.wait_status(job_id, {"running"})
    details = assert_error(
        await api.call("DELETE", f"/api/v1/jobs/{job_id}?purge=true"), 409, "job_not_terminal"
    )
    assert details == [{"path": "status", "message": "running"}]
    status, body = await api.call("DELETE", f"/api/v1/jobs/{job_id}?purge=true&savepoint=true")
    assert_error((status, body), 400, "invalid_parameter")
    savepoint = await api.ok("POST", f"/api/v1/jobs/{job_id}/savepoints", json={"description": "keep"})

    async def checkpointed() -> bool:
        return bool((await api.ok("GET", f"/api/v1/jobs/{job_id}/checkpoints"))["checkpoints"])

    await wait_until(checkpointed, what="a checkpoint")
    await api.ok("DELETE", f"/api/v1/jobs/{job_id}")
    assert len(job_files(server.home, job_id)) == 2  # the directory with its log, and checkpoints

    refused = await api.call("DELETE", f"/api/v1/jobs/{job_id}?purge=true")
    details = assert_error(refused, 409, "job_has_savepoints")
    assert details == [{"path": "savepoint_id", "message": savepoint["savepoint_id"]}]
    assert await api.status(job_id) == "cancelled"  # a refused purge changes nothing
    await api.ok("DELETE", f"/api/v1/jobs/{job_id}/savepoints/{savepoint['savepoint_id']}")

    purged = await api.ok("DELETE", f"/api/v1/jobs/{job_id}", params={"purge": "true"})
    assert purged["job_id"] == job_id and purged["status"] == "cancelled" and purged["purged"] is True
    assert set(purged) == {"job_id", "status", "cancelled_at", "purged"}
    await assert_gone(api, job_id, server.home)
    assert_error(await api.call("DELETE", f"/api/v1/jobs/{job_id}?purge=true"), 404, "job_not_found")


def helios(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HELIOS_API_TOKEN", "HELIOS_URL")}
    return subprocess.run(
        [str(HELIOS), *args], env=env | {"HELIOS_URL": url}, capture_output=True, text=True, timeout=60
    )


async def test_helios_jobs_purge(api: Api, server: HeliosServerProcess) -> None:
    job_id = await api.submit(datagen_job("purge-cli", count=2000))
    await api.wait_status(job_id, {"finished"})
    assert job_files(server.home, job_id)
    done = helios("jobs", "purge", job_id, url=server.url)
    assert done.returncode == 0 and done.stdout.strip() == f"{job_id}  purged (was finished)", done
    await assert_gone(api, job_id, server.home)
    again = helios("jobs", "purge", job_id, url=server.url)
    assert again.returncode == 1 and "job_not_found" in again.stderr, again
    live = await api.submit(datagen_job("purge-cli-live"))
    refused = helios("jobs", "purge", live, url=server.url)
    assert refused.returncode == 1 and "job_not_terminal" in refused.stderr, refused
    await api.ok("DELETE", f"/api/v1/jobs/{live}")


async def test_job_retention_expires_terminal_jobs_but_keeps_savepoint_holders(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = HeliosServerProcess(home, "--job-retention", "3s")
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, server.url)
            finished = await api.submit(datagen_job("expires", count=2000))
            holder = await api.submit(datagen_job("holds-a-savepoint"))
            live = await api.submit(datagen_job("keeps-running"))
            await api.wait_status(holder, {"running"})
            savepoint = await api.ok("POST", f"/api/v1/jobs/{holder}/savepoints")
            await api.ok("DELETE", f"/api/v1/jobs/{holder}")
            await api.wait_status(finished, {"finished"})

            async def expired() -> bool:
                status, _ = await api.call("GET", f"/api/v1/jobs/{finished}")
                return status == 404

            await wait_until(expired, what="the finished job to expire", within=30)
            await assert_gone(api, finished, home)
            # past the retention since it was cancelled, and a few sweeps later: kept for its savepoint
            ended = datetime.fromisoformat((await api.ok("GET", f"/api/v1/jobs/{holder}"))["finished_at"])
            await asyncio.sleep(max((ended + timedelta(seconds=4) - datetime.now(UTC)).total_seconds(), 0))
            assert await api.status(holder) == "cancelled"
            assert await api.status(live) == "running"
            await api.ok("DELETE", f"/api/v1/jobs/{holder}/savepoints/{savepoint['savepoint_id']}")

            async def holder_expired() -> bool:
                status, _ = await api.call("GET", f"/api/v1/jobs/{holder}")
                return status == 404

            await wait_until(holder_expired, what="the job without savepoints to expire", within=30)
            await assert_gone(api, holder, home)
            assert await api.status(live) == "running"
    finally:
        assert server.stop() == 0, server.log_tail()


async def test_purge_keeps_a_job_whose_checkpoint_another_job_restores(
    api: Api, server: HeliosServerProcess
) -> None:
    """A job started from another's retained checkpoint needs it until it has one of its own."""
    first = await api.submit(datagen_job("origin"))
    await api.wait_status(first, {"running"})

    async def a_checkpoint() -> list[Path]:
        return sorted((server.home / "checkpoints" / first).glob("chk-*/_manifest.json"))

    manifest = (await wait_until(a_checkpoint, what="a checkpoint of the first job"))[-1]
    await api.ok("DELETE", f"/api/v1/jobs/{first}")
    # no checkpoint of its own for an hour: it restores the first job's until then
    second_body = datagen_job("successor", checkpoint_interval_ms=3_600_000)
    location = manifest.parent.as_uri()
    second = str(
        (await api.ok("POST", "/api/v1/jobs", params={"from_savepoint": location}, json=second_body))[
            "job_id"
        ]
    )
    await api.wait_status(second, {"running"})
    refused = await api.call("DELETE", f"/api/v1/jobs/{first}?purge=true")
    assert_error(refused, 409, "illegal_state_transition")
    assert second in refused[1]["error"]["message"], refused
    assert manifest.is_file()
    await api.ok("DELETE", f"/api/v1/jobs/{second}")
    await api.ok("DELETE", f"/api/v1/jobs/{first}?purge=true")
    await assert_gone(api, first, server.home)
