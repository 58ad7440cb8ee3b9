"""Throughput cost of checkpointing: ``python -m benchmarks.checkpoint_cost [--events N] [--repeat R]``.

Runs a real job (control plane here, a worker subprocess) over a bounded datagen source with keyed
state, datagen -> key_by card -> tumbling 1 min sum -> discard, once with checkpoints every second
and once with the interval set beyond the run (only the final checkpoint of a bounded job is taken),
for each state backend, alternating the two ``--repeat`` times, and prints the median events/s of
each and the cost in percent. Throughput is events / (finished_at - started_at) of the job, so worker
start-up is in both; use enough events that it is small.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.jobs import events_per_second
from heliosdb_streaming.job import JobManager

NO_PERIODIC_CHECKPOINT_MS = 3_600_000


def job_body(events: int, backend: str, interval_ms: int) -> dict[str, Any]:
    return {
        "name": f"checkpoint-cost-{backend}-{interval_ms}",
        "config": {
            "parallelism": 1,
            "state_backend": backend,
            "checkpoint_interval_ms": interval_ms,
            "restart_strategy": "none",
        },
        "sources": [
            {"type": "datagen", "config": {"count": events, "partitions": 1, "seed": 1, "keys": 10_000}}
        ],
        "transformations": [
            {"type": "key_by", "config": {"key": "card_id"}},
            {
                "type": "window",
                "config": {"kind": "tumbling", "size": "1m", "aggregates": {"total": "sum(amount)"}},
            },
        ],
        "sinks": [{"type": "discard", "config": {}}],
    }


async def run_once(jm: JobManager, events: int, backend: str, interval_ms: int) -> tuple[float, int]:
    """Returns (events/s, checkpoints taken) of one run to completion (ids count up from 1)."""
    eps, job_id = await events_per_second(jm, job_body(events, backend, interval_ms), events)
    ids = [int(c.checkpoint_id.removeprefix("checkpoint-")) for c in await jm.list_checkpoints(job_id)]
    return eps, max(ids, default=0)


async def measure(events: int, repeat: int, home: Path) -> list[tuple[str, float, float, int]]:
    rows = []
    async with JobManager(2, home=home) as jm:
        for backend in ("memory", "rocksdb"):
            off: list[float] = []
            on: list[float] = []
            taken = 0
            for _ in range(repeat):
                off.append((await run_once(jm, events, backend, NO_PERIODIC_CHECKPOINT_MS))[0])
                eps, taken = await run_once(jm, events, backend, 1_000)
                on.append(eps)
            rows.append((backend, statistics.median(off), statistics.median(on), taken))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(measure(args.events, args.repeat, Path(tmp)))
    print()
    print(
        f"{'backend':<9} {'no checkpoints ev/s':>20} {'every 1 s ev/s':>15} {'cost':>7} {'checkpoints':>12}"
    )
    print("-" * 67)
    for backend, off, on, taken in rows:
        print(f"{backend:<9} {off:>20,.0f} {on:>15,.0f} {(off - on) / off:>7.1%} {taken:>12}")
    print(
        f"\n{args.events:,} events, 10k keys, medians of {args.repeat} alternating runs; "
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"
    )


if __name__ == "__main__":
    main()
