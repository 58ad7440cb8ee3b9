"""The in-process repartition: ``python -m benchmarks.stages [--events N]``.

One worker (parallelism 1) reads datagen with 4 partitions (keyed by card) and counts per merchant
and minute: the keyed window runs after a stage boundary, in key-group tasks fed by the in-process
exchange. Beside it, the same window keyed by card (the declared partitioning: no boundary) shows
what the exchange costs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.engine import DISCARD, job, run_worker

COUNT = {"n": "count(*)", "total": "sum(amount)"}


def window(key: str) -> dict[str, Any]:
    return {"type": "window", "config": {"kind": "tumbling", "size": "1m", "key": key, "aggregates": COUNT}}


async def run(n: int, tmp_path: Path) -> list[tuple[str, float, float, int]]:
    source = {"type": "datagen", "config": {"partitions": 4, "seed": 1, "keys": 10_000, "count": n}}
    rows = []
    for label, steps in [
        ("datagen x4 -> tumbling count/card (no boundary)", [window("card_id")]),
        ("datagen x4 -> tumbling count/merchant (1 repartition)", [window("merchant")]),
    ]:
        config = job(label, source, steps, DISCARD, "memory")
        eps, p99, count = await run_worker(config, n, tmp_path / label[-8:])
        rows.append((label, eps, p99, count))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(run(args.events, Path(tmp)))
    print(f"\n{'pipeline':<56} {'events/s':>12} {'p99 ms':>9} {'events':>10}")
    for label, eps, p99, count in rows:
        print(f"{label:<56} {eps:>12,.0f} {p99:>9.1f} {count:>10,}")
    print(f"\nPython {sys.version.split()[0]}, one worker, in process")


if __name__ == "__main__":
    main()
