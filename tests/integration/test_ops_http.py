"""Operations as the Flink Kubernetes operator offers them, over real HTTP against ``helios server``
subprocesses with real workers: periodic savepoints and their retention."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import pytest

from heliosdb_streaming.testing.server import HeliosServerProcess
from heliosdb_streaming.testing.waits import wait_until, wait_until_steady

pytestmark = pytest.mark.timeout(240)


def endless_job(name: str, **config: Any) -> dict[str, Any]:
    return {
        "name": name,
        "config": {"parallelism": 1, "checkpoint_interval_ms": 1000, "restart_strategy": "none", **config},
        "sources": [
            {"type": "datagen", "config": {"partitions": 2, "seed": 5, "keys": 50, "rate_per_sec": 500}}
        ],
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
    job_id = await api.submit(endless_job("periodic", savepoint_interval_ms=1000, savepoints_retained=2))
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
            "POST", "/api/v1/jobs", json=endless_job("bad", savepoint_interval_ms=value)
        )
        assert status == 400 and body["error"]["code"] == "invalid_job_config", body
        assert [d["path"] for d in body["error"]["details"]] == ["config.savepoint_interval_ms"], body
    status, body = await api.call("POST", "/api/v1/jobs", json=endless_job("bad", savepoints_retained=0))
    assert status == 400 and [d["path"] for d in body["error"]["details"]] == ["config.savepoints_retained"]
