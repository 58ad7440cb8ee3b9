"""Cost of a Prometheus scrape: ``python -m benchmarks.metrics_overhead [--jobs 100] [--rounds 200]``.

Builds ``--jobs`` running jobs whose aggregators are fed synthetic heartbeats (``--workers`` workers
each, 30 s of 1 s heartbeats with ~100 latency buckets, checkpoint durations), no worker processes,
and times, p50/p99 over ``--rounds``:

* ``render_entries``: the exposition from the control plane's entries (what ``/metrics`` renders);
* ``render_entries_async``: the same, collected on the loop and formatted in a thread (what the
  request handlers call), and the event loop's longest stall during each scrape of either (a 1 ms
  ticker on the loop): how long heartbeats and other requests wait behind a scrape;
* ``GET /metrics``: the whole HTTP request to the API app on a real socket (whatever view is wired).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from heliosdb_streaming.api import prometheus
from heliosdb_streaming.api.app import create_app
from heliosdb_streaming.control.controller import JobEntry, Run
from heliosdb_streaming.control.metrics import JobMetricsAggregator
from heliosdb_streaming.control.store import JobRecord
from heliosdb_streaming.embedded.logs import JobLog
from heliosdb_streaming.job import JobManager
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.types import JobStatus
from heliosdb_streaming.runtime.histogram import bucket_of


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def synthetic_entry(home: Path, i: int, workers: int, clock: Clock, rng: random.Random) -> JobEntry:
    job_id = f"job-{i:08d}-bench"
    config = JobConfig.from_dict(
        {
            "name": f"bench job {i}",
            "config": {"parallelism": workers},
            "sources": [{"type": "datagen", "config": {}}],
            "sinks": [{"type": "discard", "config": {}}],
        }
    )
    record = JobRecord(
        job_id=job_id,
        name=config.name,
        status=JobStatus.RUNNING,
        config=config.to_dict(),
        submitted_at=datetime.now(UTC),
        started_at=datetime.now(UTC),
    )
    metrics = JobMetricsAggregator(clock)
    entry = JobEntry(record=record, config=config, metrics=metrics, log=JobLog(home / job_id / "job.log"))
    entry.run = Run(job_id=job_id, attempt=1, token="bench", parallelism=workers)
    start = clock.t
    for second in range(30):
        clock.t = start + second
        for w in range(workers):
            n = (second + 1) * 5_000
            latency: dict[int, int] = {}
            for _ in range(100):
                b = bucket_of(rng.lognormvariate(1.5, 1.0))
                latency[b] = latency.get(b, 0) + (second + 1) * 3
            beat = {
                "events_in": n,
                "events_out": n // 2,
                "errors": second,
                "backpressure_events": second // 3,
                "latency": latency,
                "cpu_percent": 40.0,
                "rss_bytes": 80_000_000,
            }
            metrics.on_heartbeat(1, w, beat)
        if second % 5 == 0:
            metrics.checkpoint_count += 1
            metrics.record_checkpoint_duration(rng.randint(5, 400))
    clock.t = start
    return entry


def percentiles(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"p50 {statistics.median(ms):7.2f} ms   p99 {p99:7.2f} ms"


async def timed(rounds: int, call: Callable[[], Awaitable[object]]) -> list[float]:
    await call()  # warm caches
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await call()
        out.append(time.perf_counter() - t0)
    return out


async def tick(stalls: list[float], period_s: float = 0.001) -> None:
    """Appends how late each 1 ms sleep of the loop wakes up."""
    while True:
        t0 = time.perf_counter()
        await asyncio.sleep(period_s)
        stalls.append(time.perf_counter() - t0 - period_s)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="workers (heartbeat sources) per job")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="helios-metrics-bench-") as tmp:
        home = Path(tmp)
        async with JobManager(16, home=home / "home") as jm:
            plane = jm.control_plane
            base = time.time() - 30
            for i in range(args.jobs):
                clock = Clock(base)
                entry = synthetic_entry(home, i, args.workers, clock, rng)
                clock.t = base + 30  # "now": the last heartbeats are fresh
                plane.jobs[entry.record.job_id] = entry
            text = prometheus.render_entries(plane.jobs.values())
            print(
                f"{args.jobs} running jobs x {args.workers} workers: {len(text.splitlines())} lines, "
                f"{len(text) / 1024:.0f} KiB per scrape"
            )

            async def render_entries() -> object:
                return prometheus.render_entries(plane.jobs.values())

            async def render_entries_async() -> object:
                return await prometheus.render_entries_async(plane.jobs.values())

            print(f"render_entries          {percentiles(await timed(args.rounds, render_entries))}")
            print(f"render_entries_async    {percentiles(await timed(args.rounds, render_entries_async))}")
            stalls: list[float] = []  # how late each tick of a 1 ms ticker woke up
            ticker = asyncio.create_task(tick(stalls))
            try:
                for name, call in (
                    ("render_entries", render_entries),
                    ("render_entries_async", render_entries_async),
                ):
                    longest = []
                    for _ in range(args.rounds):
                        await asyncio.sleep(0.002)
                        first = len(stalls)
                        await call()
                        await asyncio.sleep(0.002)  # the ticker wakes up (late, if the call held the loop)
                        longest.append(max(stalls[first:], default=0.0))
                    print(f"loop stall, {name:21} {percentiles(longest)}   (longest per scrape)")
            finally:
                ticker.cancel()
            server = TestServer(create_app(jm), host="127.0.0.1", port=0)
            await server.start_server()
            try:
                async with aiohttp.ClientSession() as session:
                    url = str(server.make_url("/metrics"))

                    async def scrape() -> object:
                        async with session.get(url) as response:
                            return await response.read()

                    print(f"GET /metrics (HTTP)     {percentiles(await timed(args.rounds, scrape))}")
            finally:
                await server.close()
            for entry in list(plane.jobs.values()):
                entry.run = None  # synthetic: there are no workers to stop
                entry.log.close()
            plane.jobs.clear()


if __name__ == "__main__":
    asyncio.run(main())
