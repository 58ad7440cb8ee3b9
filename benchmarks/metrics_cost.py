"""Throughput cost of metrics: ``python -m benchmarks.metrics_cost [--events N] [--repeat R]``.

Pipeline (b) of the engine benchmark, datagen -> filter -> CEP -> discard, as a real job (control
plane here, one worker subprocess), once as shipped and once with the worker's metrics off
(``HELIOS_WORKER_METRICS=0``: no latency recording, no heartbeats, so the control plane aggregates
nothing), alternating ``--repeat`` times; prints median events/s of each and the cost in percent.
Wall-clock throughput suffers from whatever else runs on the machine, so it also prints the CPU time
per event of the workers (reaped children) plus the control plane (this process), which does not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.engine import CEP, DISCARD, FILTER
from benchmarks.jobs import events_per_second
from heliosdb_streaming.job import JobManager


def job_body(events: int) -> dict[str, Any]:
    return {
        "name": "metrics-cost",
        "config": {"parallelism": 1, "checkpoint_interval_ms": 60_000, "restart_strategy": "none"},
        "sources": [
            {"type": "datagen", "config": {"count": events, "partitions": 1, "seed": 1, "keys": 10_000}}
        ],
        "transformations": [FILTER, CEP],
        "sinks": [DISCARD],
    }


def cpu_seconds() -> float:
    """CPU time of this process (the control plane) and of its reaped children (the workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


Runs = dict[str, tuple[list[float], list[float]]]  # "on"/"off" -> (events/s, CPU us per event)


async def measure(events: int, repeat: int, home: Path) -> Runs:
    runs: Runs = {"on": ([], []), "off": ([], [])}
    async with JobManager(2, home=home) as jm:
        for _ in range(repeat):
            for label, switch in (("on", "1"), ("off", "0")):
                os.environ["HELIOS_WORKER_METRICS"] = switch  # the launcher passes its environment on
                cpu_before = cpu_seconds()
                eps, _ = await events_per_second(jm, job_body(events), events)
                await asyncio.sleep(0.2)  # let the control plane reap the worker
                runs[label][0].append(eps)
                runs[label][1].append((cpu_seconds() - cpu_before) / events * 1e6)
    os.environ.pop("HELIOS_WORKER_METRICS", None)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = asyncio.run(measure(args.events, args.repeat, Path(tmp)))
    (on_eps, on_cpu), (off_eps, off_cpu) = (
        (statistics.median(runs[k][0]), statistics.median(runs[k][1])) for k in ("on", "off")
    )
    print()
    print(f"{'pipeline (b) datagen -> filter -> CEP':<40} {'events/s':>12} {'CPU us/event':>13}")
    print("-" * 67)
    print(f"{'metrics off':<40} {off_eps:>12,.0f} {off_cpu:>13.3f}")
    print(f"{'metrics on (as shipped)':<40} {on_eps:>12,.0f} {on_cpu:>13.3f}")
    print(f"{'cost':<40} {(off_eps - on_eps) / off_eps:>12.1%} {(on_cpu - off_cpu) / off_cpu:>13.1%}")
    print(
        f"\n{args.events:,} events, medians of {args.repeat} alternating runs; "
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"
    )


if __name__ == "__main__":
    main()
