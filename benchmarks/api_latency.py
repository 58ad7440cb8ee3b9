"""REST API latency under concurrency: ``python -m benchmarks.api_latency [--jobs N] [--concurrency C]``.

Starts ``helios server`` (a subprocess, free port, temporary home, 10 worker slots), fills its store
with ``--jobs`` jobs (default 1,000): 10 endless, rate-limited datagen jobs that keep running and take
every slot, then bounded jobs that therefore wait in the queue and are cancelled there (no worker
starts for them). Then ``--concurrency`` clients (default 16, one aiohttp session) call each endpoint
in turn, and the client-side latency of every call is recorded: p50 / p99 / max per endpoint, printed
as a table with the goal of each (reads p99 < 10 ms, submit < 50 ms, the list of 1,000 < 20 ms).

Endpoints: submit (POST /jobs, a job that queues), list (GET /jobs?limit=1000), get (GET /jobs/{id}),
metrics, logs (the last 100 lines), savepoint (POST /jobs/{id}/savepoints on the running jobs: a real
checkpoint round trip through the workers) and cancel (DELETE /jobs/{id} of the submitted ones).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from heliosdb_streaming.testing.server import HeliosServerProcess

RUNNING = 10


def endless_job(i: int) -> dict[str, Any]:
    return {
        "name": f"bench-running-{i}",
        "config": {"parallelism": 1, "checkpoint_interval_ms": 5000, "restart_strategy": "none"},
        "sources": [{"type": "datagen", "config": {"rate_per_sec": 100, "partitions": 1, "keys": 10}}],
        "transformations": [{"type": "filter", "config": {"condition": "amount > 100"}}],
        "sinks": [{"type": "discard", "config": {}}],
    }


def queued_job(i: int) -> dict[str, Any]:
    return {
        "name": f"bench-queued-{i}",
        "config": {"parallelism": 1, "restart_strategy": "none"},
        "sources": [{"type": "datagen", "config": {"count": 100, "partitions": 1, "keys": 10}}],
        "transformations": [{"type": "filter", "config": {"condition": "amount > 100"}}],
        "sinks": [{"type": "discard", "config": {}}],
    }


@dataclass
class Endpoint:
    name: str
    goal_ms: float | None
    latencies_ms: list[float]

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def call(session: aiohttp.ClientSession, method: str, url: str, expect: int, **kw: Any) -> Any:
    async with session.request(method, url, **kw) as response:
        body = await response.read()
        if response.status != expect:
            raise RuntimeError(f"{method} {url}: {response.status} {body[:300]!r}")
        return orjson.loads(body) if body else None


async def measure(
    endpoint: Endpoint, n: int, concurrency: int, request: Callable[[int], Awaitable[Any]]
) -> None:
    """``n`` calls of ``request(i)`` by ``concurrency`` clients; records each call's latency."""
    counter = iter(range(n))

    async def client() -> None:
        for i in counter:
            started = time.perf_counter()
            await request(i)
            endpoint.latencies_ms.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(client() for _ in range(concurrency)))


async def run(jobs: int, concurrency: int, requests_per_endpoint: int, url: str | None) -> list[Endpoint]:
    if url:
        return await bench(url.rstrip("/"), jobs, concurrency, requests_per_endpoint)
    with tempfile.TemporaryDirectory(prefix="helios-api-bench-") as tmp:
        server = HeliosServerProcess(Path(tmp) / "home", max_parallelism=RUNNING)
        try:
            return await bench(server.url, jobs, concurrency, requests_per_endpoint)
        finally:
            server.stop()


async def bench(base: str, jobs: int, concurrency: int, n: int) -> list[Endpoint]:
    api = f"{base}/api/v1"
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        running = [
            (await call(session, "POST", f"{api}/jobs", 201, json=endless_job(i)))["job_id"]
            for i in range(RUNNING)
        ]
        deadline = time.monotonic() + 60
        while True:
            states = [(await call(session, "GET", f"{api}/jobs/{j}", 200))["status"] for j in running]
            if all(s == "running" for s in states):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the {RUNNING} endless jobs did not all start: {states}")
            await asyncio.sleep(0.2)

        print(f"filling the store: {jobs - RUNNING} queued jobs, submitted and cancelled ...", flush=True)
        started = time.perf_counter()
        sem = asyncio.Semaphore(concurrency)

        async def fill(i: int) -> None:
            async with sem:
                job_id = (await call(session, "POST", f"{api}/jobs", 201, json=queued_job(i)))["job_id"]
                await call(session, "DELETE", f"{api}/jobs/{job_id}", 200)

        await asyncio.gather(*(fill(i) for i in range(jobs - RUNNING)))
        listing = await call(session, "GET", f"{api}/jobs", 200, params={"limit": "1000"})
        print(f"  {listing['total']} jobs in the store in {time.perf_counter() - started:.1f}s", flush=True)

        endpoints = {
            name: Endpoint(name, goal, [])
            for name, goal in (
                ("health", 10.0),
                ("submit", 50.0),
                ("list 1000", 20.0),
                ("get", 10.0),
                ("metrics", 10.0),
                ("logs", 10.0),
                ("savepoint", None),
                ("cancel", None),
            )
        }
        submitted: list[str] = []

        async def submit(i: int) -> None:
            submitted.append(
                (await call(session, "POST", f"{api}/jobs", 201, json=queued_job(10_000 + i)))["job_id"]
            )

        async def list_all(i: int) -> None:
            await call(session, "GET", f"{api}/jobs", 200, params={"limit": "1000"})

        async def get(i: int) -> None:
            await call(session, "GET", f"{api}/jobs/{running[i % RUNNING]}", 200)

        async def metrics(i: int) -> None:
            await call(session, "GET", f"{api}/jobs/{running[i % RUNNING]}/metrics", 200)

        async def logs(i: int) -> None:
            await call(session, "GET", f"{api}/jobs/{running[i % RUNNING]}/logs", 200, params={"tail": "100"})

        async def savepoint(i: int) -> None:
            await call(session, "POST", f"{api}/jobs/{running[i % RUNNING]}/savepoints", 201)

        async def cancel(i: int) -> None:
            await call(session, "DELETE", f"{api}/jobs/{submitted[i]}", 200)

        async def health(i: int) -> None:
            await call(session, "GET", f"{base}/healthz", 200)

        plan: list[tuple[str, int, Callable[[int], Awaitable[Any]]]] = [
            ("health", n, health),
            ("submit", n, submit),
            ("list 1000", n, list_all),
            ("get", n, get),
            ("metrics", n, metrics),
            ("logs", n, logs),
            ("savepoint", max(RUNNING, n // 10), savepoint),
            ("cancel", n, cancel),
        ]
        for name, count, request in plan:
            if name not in ("submit", "cancel"):  # a few warm-up calls, not counted
                await measure(endpoints[name], 3, 1, request)
                endpoints[name].latencies_ms.clear()
            await measure(endpoints[name], count, concurrency, request)
        return list(endpoints.values())


def report(endpoints: list[Endpoint], concurrency: int) -> str:
    lines = [
        f"{'endpoint':<12} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  goal (p99)",
        "-" * 62,
    ]
    for e in endpoints:
        p99 = e.percentile(0.99)
        goal = "-" if e.goal_ms is None else f"< {e.goal_ms:g} ms {'ok' if p99 < e.goal_ms else 'MISSED'}"
        lines.append(
            f"{e.name:<12} {len(e.latencies_ms):>6} {e.percentile(0.5):>8.2f} {p99:>8.2f} "
            f"{max(e.latencies_ms):>8.2f}  {goal}"
        )
    lines.append(f"({concurrency} concurrent clients; latency measured at the client, over loopback)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.api_latency", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--jobs", type=int, default=1000, help="jobs in the store (default 1000)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--requests", type=int, default=500, help="calls per endpoint (default 500)")
    parser.add_argument(
        "--url", help="measure this running server (empty, started with --max-parallelism 10) instead"
    )
    args = parser.parse_args()
    if args.jobs < RUNNING:
        raise SystemExit(f"--jobs must be at least {RUNNING}")
    endpoints = asyncio.run(run(args.jobs, args.concurrency, args.requests, args.url))
    print(report(endpoints, args.concurrency))


if __name__ == "__main__":
    main()
