"""A repartitioned job in real worker processes: ``python -m benchmarks.repartition_jobs [--events N]``.

Datagen (4 partitions, keyed by card) -> ``key_by merchant`` -> 1 h tumbling count and sum ->
discard, run by the embedded control plane at parallelism 1 (in process), 2 and 3 (records cross
worker processes through the job's internal topic on a tansu broker started here), checkpoints every
second (``--checkpoint-ms``). The rate is taken from the moment 10% of the events were read to the
job's end (the later stages have then processed everything), so start-up is not in it. All workers
share this machine's cores with the broker: the figure is per machine, not per worker. On a machine
shared with other work the rate varies by tens of percent from run to run, so each run also prints
the CPU time the workers and the broker spent per million events (from the kernel's accounting of
this process's children), which other load does not change much: compare that between versions.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from heliosdb_streaming.job import JobManager, JobStatus
from heliosdb_streaming.testing.tansu import run_tansu


def body(events: int, parallelism: int, bootstrap: str, checkpoint_ms: int) -> dict[str, Any]:
    return {
        "name": f"repartition-p{parallelism}",
        "config": {
            "parallelism": parallelism,
            "checkpoint_interval_ms": checkpoint_ms,
            "restart_strategy": "none",
            "repartition": {"bootstrap_servers": [bootstrap]},
        },
        "sources": [
            {"type": "datagen", "config": {"partitions": 4, "seed": 1, "keys": 10_000, "count": events}}
        ],
        "transformations": [
            {"type": "key_by", "config": {"key": "merchant"}},
            {
                "type": "window",
                "config": {"size": "1h", "aggregates": {"n": "count(*)", "total": "sum(amount)"}},
            },
        ],
        "sinks": [{"type": "discard", "config": {}}],
    }


async def run(events: int, parallelism: int, bootstrap: str, home: Path, checkpoint_ms: int) -> float:
    async with JobManager(4, home=home) as jm:
        job_id = await jm.submit_job(body(events, parallelism, bootstrap, checkpoint_ms))
        start: float | None = None
        while (status := await jm.get_job_status(job_id)) != JobStatus.FINISHED:
            if status == JobStatus.FAILED:
                raise RuntimeError((await jm.get_job_details(job_id)).message)
            done = (await jm.get_job_metrics(job_id)).events_processed
            if start is None and done >= 0.1 * events:
                start = time.perf_counter()
            await asyncio.sleep(0.05)
        end = time.perf_counter()
        return 0.9 * events / max(end - (start or end), 1e-9)


def children_cpu_s() -> float:
    """CPU seconds of this process's children: the finished ones (reaped workers) and the running
    ones (the broker)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--parallelism", type=int, nargs="*", default=[1, 2, 3])
    parser.add_argument("--checkpoint-ms", type=int, default=1000)
    args = parser.parse_args()
    with run_tansu() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        for p in args.parallelism:
            cpu_before = children_cpu_s()
            rate = asyncio.run(run(args.events, p, bootstrap, Path(tmp) / f"p{p}", args.checkpoint_ms))
            cpu = (children_cpu_s() - cpu_before) / args.events * 1_000_000
            where = "in process" if p == 1 else "through Kafka"
            print(
                f"parallelism {p} ({where}): {rate:>10,.0f} ev/s, "
                f"workers + broker {cpu:5.1f} CPU s per 1M events",
                flush=True,
            )


if __name__ == "__main__":
    main()
