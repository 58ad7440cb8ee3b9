"""A Kafka source whose broker is not there yet, over real HTTP against a ``helios server`` subprocess.

The job's ``message`` and its log say within seconds that the broker is unreachable while the
source retries; once a broker listens on that port the message clears and records flow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from heliosdb_streaming.testing.server import HeliosServerProcess
from heliosdb_streaming.testing.tansu import TansuBroker, create_topic

pytestmark = [pytest.mark.timeout(180), pytest.mark.kafka]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[HeliosServerProcess]:
    process = await asyncio.to_thread(HeliosServerProcess, tmp_path / "home")
    try:
        yield process
    finally:
        await asyncio.to_thread(process.stop)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def wait_for(
    check: Callable[[], Awaitable[Any]], timeout_s: float, what: str, last: Callable[[], Any]
) -> Any:
    """``check()``'s first truthy value within ``timeout_s``; fails showing ``last()`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s}s; last seen: {last()}")
        await asyncio.sleep(0.2)


async def test_unreachable_broker_is_in_the_message_until_it_comes(
    server: HeliosServerProcess, http: aiohttp.ClientSession
) -> None:
    broker = TansuBroker()  # a free port, nothing listening on it until broker.start()
    try:
        await _unreachable_then_reachable(server, http, broker)
    finally:
        broker.cleanup()


async def _unreachable_then_reachable(
    server: HeliosServerProcess, http: aiohttp.ClientSession, broker: TansuBroker
) -> None:
    topic = "helios-test-late-broker"
    body = {
        "name": "late-broker",
        "config": {"parallelism": 1, "restart_strategy": "none"},
        "sources": [
            {
                "type": "kafka",
                "config": {"bootstrap_servers": broker.bootstrap, "topic": topic, "start_from": "earliest"},
            }
        ],
        "transformations": [],
        "sinks": [{"type": "print", "config": {"prefix": "out "}}],
    }
    async with http.post(f"{server.url}/api/v1/jobs", json=body) as response:
        assert response.status == 201, await response.text()
        job_id = (await response.json())["job_id"]
    submitted = time.monotonic()
    seen: dict[str, Any] = {}

    async def details() -> dict[str, Any]:
        async with http.get(f"{server.url}/api/v1/jobs/{job_id}") as response:
            assert response.status == 200, await response.text()
            seen["details"] = await response.json()
            return seen["details"]  # type: ignore[no-any-return]

    async def says_unreachable() -> bool:
        d = await details()
        return d["status"] == "running" and "unreachable" in (d["message"] or "")

    await wait_for(says_unreachable, 15, "message about the broker", lambda: seen.get("details"))
    assert time.monotonic() - submitted < 15
    message = seen["details"]["message"]
    assert broker.bootstrap in message and "retrying" in message, message

    async def logs() -> list[dict[str, Any]]:
        async with http.get(f"{server.url}/api/v1/jobs/{job_id}/logs", params={"limit": "1000"}) as r:
            assert r.status == 200, await r.text()
            seen["logs"] = (await r.json())["logs"]
            return seen["logs"]  # type: ignore[no-any-return]

    warned = [e for e in await logs() if e["level"] == "warn" and broker.bootstrap in e["message"]]
    assert warned, seen["logs"]

    broker.start()
    await broker.wait_ready()
    await create_topic(broker.bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(50):
            await producer.send_and_wait(topic, orjson.dumps({"i": i}))
    finally:
        await producer.stop()

    out = server.home / "jobs" / job_id / "worker-0.out"

    async def all_out() -> bool:
        lines = out.read_text().splitlines() if out.exists() else []
        return {orjson.loads(line.removeprefix("out "))["i"] for line in lines} == set(range(50))

    await wait_for(all_out, 60, "50 records in the print sink", lambda: seen.get("details"))

    async def cleared() -> bool:
        d = await details()
        return d["status"] == "running" and "unreachable" not in (d["message"] or "")

    await wait_for(cleared, 15, "message to clear", lambda: seen.get("details"))
    assert seen["details"]["metrics"]["restarts"] == 0, seen["details"]
    assert any("Recovered" in e["message"] for e in await logs()), seen["logs"]
    async with http.delete(f"{server.url}/api/v1/jobs/{job_id}") as response:
        assert response.status in (200, 202), await response.text()
