"""What the benchmarks share: a tansu broker with a prefilled topic, datagen records in memory, and
the interleaved timing of steps over them."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from heliosdb_streaming.runtime.connectors.datagen import DatagenSourceReader
from heliosdb_streaming.testing.tansu import create_topic, run_tansu

__all__ = ["best_ns_per_event", "datagen_batches", "prefill_topic", "prefilled_broker"]


async def prefill_topic(bootstrap: str, topic: str, events: int, partitions: int = 1) -> None:
    """Writes ``events`` datagen transactions (JSON, keyed by card) to a new topic."""
    from aiokafka import AIOKafkaProducer

    await create_topic(bootstrap, topic, partitions)
    reader = DatagenSourceReader(
        schema="transactions", rate_per_sec=0, count=events, partitions=1, seed=3, keys=10_000, source_index=0
    )
    splits = await reader.discover_splits()
    await reader.open(splits, {})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        sent = 0
        while sent < events:
            for batch in await reader.poll(10_000, 0.1):
                futures = [
                    await producer.send(topic, orjson.dumps(r), key=r["card_id"].encode())
                    for r in batch.records
                ]
                sent += len(futures)
            await producer.flush()
    finally:
        await producer.stop()
        await reader.close()


@contextlib.contextmanager
def prefilled_broker(events: int, partitions: int = 1) -> Iterator[tuple[str, str, Path]]:
    """A tansu broker with a topic of ``events`` transactions and a scratch directory, for one
    benchmark run: yields ``(bootstrap, topic, tmp_path)``; all of it is gone on exit."""
    with tempfile.TemporaryDirectory() as tmp, run_tansu() as bootstrap:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        asyncio.run(prefill_topic(bootstrap, topic, events, partitions))
        yield bootstrap, topic, Path(tmp)


async def datagen_batches(events: int, size: int) -> list[list[dict[str, Any]]]:
    """``events`` datagen transactions (seed 1, 10,000 cards) in memory, in batches of ``size``: the
    input of the step-alone measurements, the same in every benchmark."""
    reader = DatagenSourceReader(
        schema="transactions", rate_per_sec=0, count=events, partitions=1, seed=1, keys=10_000, source_index=0
    )
    await reader.open(await reader.discover_splits(), {})
    records: list[dict[str, Any]] = []
    while len(records) < events:
        for batch in await reader.poll(10_000, 0.1):
            records.extend(batch.records)
    await reader.close()
    return [records[i : i + size] for i in range(0, len(records), size)]


def best_ns_per_event(
    runs: Sequence[tuple[str, Callable[[list[dict[str, Any]]], Any]]],
    batches: list[list[dict[str, Any]]],
    repeats: int,
) -> list[tuple[str, float]]:
    """ns per event of each ``(label, run)`` over ``batches``, the best of ``repeats`` rounds, the
    runs interleaved within a round: the machine is shared, and noise only ever adds time."""
    events = sum(len(b) for b in batches)
    best = dict.fromkeys((label for label, _ in runs), float("inf"))
    for _ in range(repeats):
        for label, run in runs:
            started = time.perf_counter()
            for b in batches:
                run(b)
            best[label] = min(best[label], time.perf_counter() - started)
    return [(label, seconds / events * 1e9) for label, seconds in best.items()]
