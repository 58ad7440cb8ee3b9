"""Expression and plan limits over real HTTP: a ``helios server`` subprocess refuses oversized
expressions at once, validates big ones off its event loop, and starts quickly with stored jobs whose
expressions an older version accepted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from heliosdb_streaming.control.store import JobRecord
from heliosdb_streaming.embedded.sqlite_store import SqliteJobStore
from heliosdb_streaming.model.types import JobStatus
from heliosdb_streaming.testing.server import HeliosServerProcess

pytestmark = pytest.mark.timeout(240)

HUGE = "a" + ".c" * 450_000  # 900 KB: parsing it took minutes on the event loop
BIG = "x in (" + ",".join(["a.b.c"] * 6_000) + ")"  # 36 KB, 18002 nodes: allowed


def job(*conditions: str, **settings: Any) -> dict[str, Any]:
    return {
        "name": "limits",
        "config": {"restart_strategy": "none", **settings},
        "sources": [{"type": "datagen", "config": {"count": 10}}],
        "transformations": [{"type": "filter", "config": {"condition": c}} for c in conditions],
        "sinks": [{"type": "discard"}],
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeliosServerProcess]:
    home = tmp_path_factory.mktemp("limits") / "home"
    # a job an older version accepted and stored, with an expression today's limits refuse
    store = SqliteJobStore(home / "jobs.db")
    store.save(
        JobRecord(
            job_id="job-stored-huge",
            name="stored",
            status=JobStatus.FAILED,
            config=job(HUGE),
            submitted_at=datetime.now(UTC),
            finished_at=datetime.now(UTC),
        )
    )
    store.close()
    started = time.monotonic()
    process = HeliosServerProcess(home, max_parallelism=2, startup_timeout_s=60)
    process.startup_s = time.monotonic() - started  # type: ignore[attr-defined]
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log_tail()


async def test_a_stored_job_with_a_huge_expression_does_not_slow_the_start(
    server: HeliosServerProcess,
) -> None:
    assert server.startup_s < 30  # type: ignore[attr-defined]  # was minutes: every stored job re-parsed
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/api/v1/jobs/job-stored-huge") as r:
        assert r.status == 200
        body = await r.json()
    assert body["status"] == "failed"
    assert body["name"] == "stored"


@pytest.mark.parametrize(
    ("body", "path", "words"),
    [
        (job(HUGE), "transformations[0].config.condition", "too long"),
        (
            job("x in (" + ",".join(["1"] * 400_000) + ")"),
            "transformations[0].config.condition",
            "too long",
        ),
        (
            job("x in (" + ",".join(["1"] * 10_001) + ")"),
            "transformations[0].config.condition",
            "more than 10000 items",
        ),
        (
            job("concat(" + ",".join(["a"] * 200_000) + ")"),
            "transformations[0].config.condition",
            "too long",
        ),
        (
            job("concat(" + ",".join(["a"] * 101) + ")"),
            "transformations[0].config.condition",
            "more than 100 items",
        ),
        (job(parallelism=True), "config.parallelism", "integer"),
        (job(parallelism="4"), "config.parallelism", "integer"),
        (job(parallelism=2.0), "config.parallelism", "integer"),
    ],
    ids=[
        "900KB-path",
        "400k-in-list",
        "10001-in-list",
        "200k-concat",
        "101-concat",
        "bool",
        "string",
        "float",
    ],
)
async def test_oversized_or_mistyped_jobs_are_refused_with_the_path(
    server: HeliosServerProcess, body: dict[str, Any], path: str, words: str
) -> None:
    started = time.monotonic()
    async with aiohttp.ClientSession() as http, http.post(f"{server.url}/api/v1/jobs", json=body) as r:
        answer = await r.json()
        status = r.status
    assert status == 400, answer
    assert time.monotonic() - started < 10  # refused after reading a bounded part (was seconds to minutes)
    details = {d["path"]: d["message"] for d in answer["error"]["details"]}
    assert path in details, answer
    assert words in str(details[path]), answer


async def test_healthz_answers_while_a_big_job_is_validated(server: HeliosServerProcess) -> None:
    """Five filters of 18002 nodes each: allowed, and their compilation takes a while; it runs off the
    loop, so /healthz keeps answering quickly meanwhile (it answered only after the submit before)."""
    body = job(*[BIG.replace("a.b.c", f"a.b.c{i}") for i in range(5)])
    latencies: list[float] = []
    async with aiohttp.ClientSession() as http:
        submit = asyncio.create_task(http.post(f"{server.url}/api/v1/jobs", json=body))
        started = time.monotonic()
        while not submit.done():
            t0 = time.monotonic()
            async with http.get(f"{server.url}/healthz") as r:
                assert r.status == 200
            latencies.append(time.monotonic() - t0)
        response = await submit
        assert response.status == 201, await response.text()
        duration = time.monotonic() - started
    assert len(latencies) >= 3, (duration, latencies)
    assert max(latencies) < max(duration / 2, 0.05), (duration, latencies)
