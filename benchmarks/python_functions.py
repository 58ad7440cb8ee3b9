"""Python steps against expression steps: ``python -m benchmarks.python_functions [--events N] [--quix]``.

Each pipeline runs the real worker code in this process (one worker, one partition) until N input
events are processed, twice, and prints the better events/s: a python ``map`` beside the equivalent
expression ``map`` (the same output), a python ``filter`` and ``flat_map``, from datagen and from a
Kafka topic prefilled on a tansu broker started here. Then the cost of the step alone per event, over
in-memory batches: what a user function call costs inside the step, next to a bare call of it, and
the cost of a user function call itself: a no-op function's step beside a no-op step.
``--quix`` (or ``QUIX=1``; needs ``pip install -e '.[bench]'``) runs Quix Streams'
``sdf.apply(double)`` with the same function on the same topic and prints our/their ratio.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from benchmarks.engine import DISCARD, best_of_two, datagen_source, job, kafka_source
from benchmarks.quix import Seen, counted, quix_arguments, quix_events_per_second, versus
from benchmarks.services import best_ns_per_event, datagen_batches, prefilled_broker
from benchmarks.table import print_table
from heliosdb_streaming.runtime.transformations.basic import MapTransformation
from heliosdb_streaming.runtime.transformations.python import PythonTransformation

HERE = "benchmarks.python_functions"
EXPR_MAP = {"type": "map", "config": {"fields": {"amount2": "amount * 2"}}}
PY_MAP = {"type": "python", "config": {"function": f"{HERE}:double", "kind": "map"}}
PY_FILTER = {"type": "python", "config": {"function": f"{HERE}:large", "kind": "filter"}}
EXPR_FILTER = {"type": "filter", "config": {"condition": "amount > 100"}}
PY_FLAT_MAP = {"type": "python", "config": {"function": f"{HERE}:twice", "kind": "flat_map"}}
MICRO_BATCH = 500
REPEATS = 7


def double(record: dict[str, Any]) -> dict[str, Any]:
    """The user function of the map rows: what the expression map ``amount2 = amount * 2`` does."""
    out = dict(record)
    out["amount2"] = record["amount"] * 2
    return out


def same(record: dict[str, Any]) -> dict[str, Any]:
    """A no-op user function: what calling user code costs, with nothing done in it."""
    return record


def large(record: dict[str, Any]) -> bool:
    return bool(record["amount"] > 100)


def twice(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [record, record]


async def run_pipelines(n: int, bootstrap: str, topic: str, tmp_path: Path) -> list[tuple[str, float, int]]:
    datagen, kafka = datagen_source(n), kafka_source(bootstrap, topic)
    rows: list[tuple[str, float, int]] = []
    for label, source, steps in [
        ("(a) datagen -> expression map -> discard", datagen, [EXPR_MAP]),
        ("(a) datagen -> python map -> discard", datagen, [PY_MAP]),
        ("(b) datagen -> expression filter -> discard", datagen, [EXPR_FILTER]),
        ("(b) datagen -> python filter -> discard", datagen, [PY_FILTER]),
        ("(c) datagen -> python flat_map (x2) -> discard", datagen, [PY_FLAT_MAP]),
        ("(d) kafka -> expression map -> discard", kafka, [EXPR_MAP]),
        ("(d) kafka -> python map -> discard", kafka, [PY_MAP]),
    ]:
        config = job(label, source, steps, DISCARD, "memory")
        rows.append((label, *await best_of_two(config, n, tmp_path)))
    return rows


async def step_costs(n: int) -> list[tuple[str, float]]:
    """ns per event of the step alone over in-memory batches of datagen records, and of a bare loop."""
    batches = await datagen_batches(n, MICRO_BATCH)

    errors: list[Any] = []
    py_map = PythonTransformation(f"{HERE}:double", "map")
    py_noop = PythonTransformation(f"{HERE}:same", "map")
    expr_map = MapTransformation({"amount2": "amount * 2"})
    fn = double

    def bare(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [fn(r) for r in batch]

    def noop_step(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return batch

    runs: list[tuple[str, Any]] = [
        ("bare loop: [double(r) for r in batch]", bare),
        ("python map step (double)", lambda b: py_map.process(b, errors)),
        ("expression map step (amount2 = amount * 2)", lambda b: expr_map.process(b, errors)),
        ("no-op step (the batch passed on)", noop_step),
        ("python map step, no-op function (returns r)", lambda b: py_noop.process(b, errors)),
    ]
    return best_ns_per_event(runs, batches, REPEATS)


def quix_map(sdf: Any, seen: Seen) -> Any:
    """Quix Streams' side of (d): ``sdf.apply(double)`` with the same function."""
    return sdf.apply(double).apply(counted(seen))


def main() -> None:
    args = quix_arguments(__doc__, events=300_000)
    n = args.events
    quix: float | None = None
    with prefilled_broker(n) as (bootstrap, topic, tmp_path):
        rows = asyncio.run(run_pipelines(n, bootstrap, topic, tmp_path))
        costs = asyncio.run(step_costs(min(n, 200_000)))
        if args.quix:  # Quix installs signal handlers, so it runs in the main thread, after our loop
            quix = quix_events_per_second(bootstrap, topic, n, str(tmp_path / "quix"), quix_map)
    print_table(
        [
            ("pipeline (one worker, memory state)", "<52"),
            ("events/s", ">12,.0f"),
            ("events", ">10,"),
            ("vs Quix", ">9"),
        ],
        [
            (label, eps, count, versus(eps, quix) if label.startswith("(d) kafka -> python map") else "")
            for label, eps, count in rows
        ]
        + ([("Quix Streams: kafka -> sdf.apply(double)", quix)] if quix else []),
    )
    print_table([(f"the step alone, batches of {MICRO_BATCH}", "<52"), ("ns/event", ">12,.0f")], costs)
    ns = dict(costs)
    bare, step = ns["bare loop: [double(r) for r in batch]"], ns["python map step (double)"]
    call = ns["python map step, no-op function (returns r)"] - ns["no-op step (the batch passed on)"]
    print(f"\ncost of a user function call (no-op function, beside a no-op step): {call:,.0f} ns/event")
    print(f"cost of the step around a user function call (double): {step - bare:,.0f} ns/event")
    print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, {n:,} events per pipeline")


if __name__ == "__main__":
    main()
