"""Real services for the benchmarks: a tansu broker and a prefilled topic."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson

from heliosdb_streaming.runtime.connectors.datagen import DatagenSourceReader
from heliosdb_streaming.testing.tansu import create_topic, run_tansu

__all__ = ["prefill_topic", "prefilled_broker"]


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
