"""Keyed process functions: ``python -m benchmarks.process_functions [--events N] [--quix]``.

A ``process`` step counting events per card in value state (the count emitted per event), run by the
real worker code in this process (one worker, one partition) until N input events are processed, the
better of two runs, with memory and rocksdb state, from datagen and from a Kafka topic prefilled on a
tansu broker started here. Then the cost of the step alone per event over in-memory batches, next to
a bare loop of the same work on a dict, and the cost of a process function call: a no-op function's
step beside a no-op step (one that passes the batch on). ``--quix`` (or ``QUIX=1``; needs
``pip install -e '.[bench]'``) runs Quix Streams' ``sdf.apply(count, stateful=True)`` (rocksdb) on the
same topic and prints our/their ratio against the rocksdb Kafka row.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from benchmarks.engine import DISCARD, best_of_two, datagen_source, job, kafka_source
from benchmarks.quix import Seen, quix_arguments, quix_events_per_second, versus
from benchmarks.services import best_ns_per_event, datagen_batches, prefilled_broker
from benchmarks.table import print_table
from heliosdb_streaming.functions import Context, KeyedProcessFunction, RuntimeContext
from heliosdb_streaming.runtime.state.memory import MemoryStateStore
from heliosdb_streaming.runtime.state.rocksdb import RocksDBStateStore
from heliosdb_streaming.runtime.transformations.process import ProcessTransformation

HERE = "benchmarks.process_functions"
KEY_BY = {"type": "key_by", "config": {"key": "card_id"}}
PROCESS = {"type": "process", "config": {"function": f"{HERE}:CountPerCard"}}
MICRO_BATCH = 500
REPEATS = 5


class CountPerCard(KeyedProcessFunction):
    """Counts the events of each card in value state and emits the running count."""

    def open(self, ctx: RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)

    def process(self, event: dict[str, Any], ctx: Context) -> list[dict[str, Any]]:
        n = self.count.value() + 1
        self.count.update(n)
        return [{"card_id": ctx.key, "count": n}]


class Nothing(KeyedProcessFunction):
    """A no-op process function: what calling it costs (key, context, call), with nothing done."""

    def process(self, event: dict[str, Any], ctx: Context) -> None:
        return None


async def run_pipelines(n: int, bootstrap: str, topic: str, tmp_path: Path) -> list[tuple[str, float, int]]:
    datagen, kafka = datagen_source(n), kafka_source(bootstrap, topic)
    rows: list[tuple[str, float, int]] = []
    for label, source, backend in [
        ("datagen -> process count (memory) -> discard", datagen, "memory"),
        ("datagen -> process count (rocksdb) -> discard", datagen, "rocksdb"),
        ("kafka -> process count (memory) -> discard", kafka, "memory"),
        ("kafka -> process count (rocksdb) -> discard", kafka, "rocksdb"),
    ]:
        config = job(label, source, [KEY_BY, PROCESS], DISCARD, backend)
        rows.append((label, *await best_of_two(config, n, tmp_path)))
    return rows


async def step_costs(n: int, tmp_path: Path) -> list[tuple[str, float]]:
    """ns per event of the step alone over in-memory batches of datagen records, and of a bare loop."""
    batches = await datagen_batches(n, MICRO_BATCH)
    errors: list[Any] = []
    counts: dict[str, int] = {}

    def bare(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for r in batch:
            k = r["card_id"]
            c = counts[k] = counts.get(k, 0) + 1
            out.append({"card_id": k, "count": c})
        return out

    def key(r: dict[str, Any]) -> Any:
        return r.get("card_id")

    def noop_step(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return batch

    def step(store: Any, function: KeyedProcessFunction) -> ProcessTransformation:
        """As the worker builds it for ``key_by card_id``: the bare key field is read inline."""
        return ProcessTransformation(store, function, key_fn=key, function_name="count", key_field="card_id")

    rocks = RocksDBStateStore(tmp_path / "step-rocksdb")
    memory_step = step(MemoryStateStore(), CountPerCard())
    rocks_step = step(rocks, CountPerCard())
    nothing_step = step(MemoryStateStore(), Nothing())
    runs: list[tuple[str, Any]] = [
        ("bare loop: count per card in a dict", bare),
        ("process step, memory state", lambda b: memory_step.process(b, errors)),
        ("process step, rocksdb state", lambda b: rocks_step.process(b, errors)),
        ("no-op step (the batch passed on)", noop_step),
        ("process step, no-op function (returns None)", lambda b: nothing_step.process(b, errors)),
    ]
    try:
        costs = best_ns_per_event(runs, batches, REPEATS)
    finally:
        rocks.close()
    assert not errors, errors[:3]
    return costs


def quix_count(sdf: Any, seen: Seen) -> Any:
    """Quix Streams' side of the rocksdb Kafka row: ``sdf.apply(count, stateful=True)`` (messages are
    keyed by card, which is what Quix keys its state by; rocksdb)."""

    def count(value: Any, state: Any) -> Any:
        seen()
        n = state.get("count", 0) + 1
        state.set("count", n)
        return {"card_id": value["card_id"], "count": n}

    return sdf.apply(count, stateful=True)


def main() -> None:
    args = quix_arguments(__doc__, events=300_000)
    n = args.events
    quix: float | None = None
    with prefilled_broker(n) as (bootstrap, topic, tmp_path):
        rows = asyncio.run(run_pipelines(n, bootstrap, topic, tmp_path))
        costs = asyncio.run(step_costs(min(n, 200_000), tmp_path))
        if args.quix:  # Quix installs signal handlers, so it runs in the main thread, after our loop
            quix = quix_events_per_second(bootstrap, topic, n, str(tmp_path / "quix"), quix_count)
    print_table(
        [("pipeline (one worker)", "<52"), ("events/s", ">12,.0f"), ("events", ">10,"), ("vs Quix", ">9")],
        [
            (
                label,
                eps,
                count,
                versus(eps, quix) if label.startswith("kafka -> process count (rocksdb)") else "",
            )
            for label, eps, count in rows
        ]
        + ([("Quix Streams: kafka -> sdf.apply(count, stateful)", quix)] if quix else []),
    )
    print_table([(f"the step alone, batches of {MICRO_BATCH}", "<52"), ("ns/event", ">12,.0f")], costs)
    ns = dict(costs)
    call = ns["process step, no-op function (returns None)"] - ns["no-op step (the batch passed on)"]
    around = ns["process step, memory state"] - ns["bare loop: count per card in a dict"]
    print(f"\ncost of a process function call (no-op function, beside a no-op step): {call:,.0f} ns/event")
    print(f"cost of the step and state around the count (memory, vs the bare loop): {around:,.0f} ns/event")
    print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, {n:,} events per pipeline")


if __name__ == "__main__":
    main()
