"""The Kafka source's two read paths (kafka_fetch's drain of aiokafka's buffered batches, and the public
getmany it falls back to) against a real broker: the same records, positions and resumes either way."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition

from heliosdb_streaming.runtime.connectors import kafka_fetch
from heliosdb_streaming.runtime.connectors.kafka import KafkaSourceReader
from heliosdb_streaming.runtime.contracts import SplitBatch

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

PER_PARTITION = 500


async def produce_in_big_batches(bootstrap: str, topic: str, partitions: int) -> None:
    """``PER_PARTITION`` JSON records per partition, a few hundred per Kafka record batch: the
    records a small ``max_records`` splits."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=50, max_batch_size=1 << 20)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, orjson.dumps({"p": p, "i": i}), partition=p)
            for i in range(PER_PARTITION)
            for p in range(partitions)
        ]
        for f in futures:
            await f
    finally:
        await producer.stop()


async def opened(bootstrap: str, topic: str, fast: bool, positions: dict[str, Any]) -> KafkaSourceReader:
    r = KafkaSourceReader(bootstrap_servers=[bootstrap], topic=topic, group_id=None, start_from="earliest")
    r.fast_fetch = fast
    await r.open(await r.discover_splits(), positions)
    return r


async def read(r: KafkaSourceReader, want: int, max_records: int) -> list[SplitBatch]:
    batches: list[SplitBatch] = []
    got = 0
    deadline = time.monotonic() + 20
    while got < want:
        assert time.monotonic() < deadline, f"only {got} of {want} records within 20s"
        for b in await r.poll(max_records, 0.2):
            assert len(b.records) <= max_records
            batches.append(b)
            got += len(b.records)
    return batches


def by_partition(batches: list[SplitBatch]) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for b in batches:
        seen.setdefault(b.split_id, []).extend(r["i"] for r in b.records)
        assert b.position == seen[b.split_id][-1] + 1  # the next offset, after the last record handed out
    return seen


@pytest.mark.parametrize("fast", [True, False], ids=["drain", "getmany"])
async def test_split_batches_resume_in_their_middle_without_loss_or_duplicates(
    kafka_bootstrap: str, kafka_topic: Any, fast: bool
) -> None:
    topic = await kafka_topic(partitions=2)
    await produce_in_big_batches(kafka_bootstrap, topic, 2)

    first = await opened(kafka_bootstrap, topic, fast, {})
    head = await read(first, 333, max_records=37)  # 37 never divides a record batch
    await first.close()
    seen = by_partition(head)
    positions = {split: offsets[-1] + 1 for split, offsets in seen.items()}

    second = await opened(kafka_bootstrap, topic, fast, positions)  # seeks into the middle of batches
    for split, offsets in by_partition(await read(second, 2 * PER_PARTITION - 333, max_records=4096)).items():
        seen.setdefault(split, []).extend(offsets)
    assert await second.poll(4096, 0.3) == []
    await second.close()
    assert seen == {"s0-p0": list(range(PER_PARTITION)), "s0-p1": list(range(PER_PARTITION))}


@pytest.mark.parametrize("fast", [True, False], ids=["drain", "getmany"])
async def test_a_seek_while_a_batch_is_split_reads_from_the_seek(
    kafka_bootstrap: str, kafka_topic: Any, fast: bool
) -> None:
    topic = await kafka_topic(partitions=1)
    await produce_in_big_batches(kafka_bootstrap, topic, 1)
    r = await opened(kafka_bootstrap, topic, fast, {})
    assert by_partition(await read(r, 10, max_records=10)) == {"s0-p0": list(range(10))}
    assert r._consumer is not None
    r._consumer.seek(TopicPartition(topic, 0), 3)  # what a restore onto a live consumer would do
    again = by_partition(await read(r, PER_PARTITION - 3, max_records=100))
    await r.close()
    assert again == {"s0-p0": list(range(3, PER_PARTITION))}


@pytest.mark.parametrize("fast", [True, False], ids=["drain", "getmany"])
async def test_each_path_is_the_one_taken(kafka_bootstrap: str, kafka_topic: Any, fast: bool) -> None:
    """The drain hands out aiokafka's record objects, getmany ConsumerRecords: the parametrized
    tests above really cover both paths."""
    topic = await kafka_topic(partitions=1)
    await produce_in_big_batches(kafka_bootstrap, topic, 1)
    r = await opened(kafka_bootstrap, topic, fast, {})
    drain = r._drain
    assert drain is not None and drain.fast is fast
    data = await drain.getmany(5000, 50)
    await r.close()
    records = [m for messages in data.values() for m in messages]
    assert [orjson.loads(m.value)["i"] for m in records] == list(range(len(records)))
    assert records and all(isinstance(m, ConsumerRecord) is not fast for m in records)


def test_the_drain_is_used_only_on_aiokafka_versions_it_knows() -> None:
    assert kafka_fetch.fast_path_available("0.14.0")
    assert not kafka_fetch.fast_path_available("0.13.0")
    assert not kafka_fetch.fast_path_available("0.15.0")
