"""The Kafka source hands a record on as soon as the broker has it, not at the end of a fetch wait:
tansu answers a waiting fetch only when its max wait runs out, so with Kafka's default wait (500 ms)
a record produced while the source idles sat up to half a second before the engine saw it."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from heliosdb_streaming.runtime.connectors.kafka import KafkaSourceReader

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


async def test_a_record_produced_while_the_source_idles_is_polled_within_milliseconds(
    kafka_bootstrap: str, kafka_topic: Any
) -> None:
    topic = await kafka_topic(partitions=1)
    reader = KafkaSourceReader(bootstrap_servers=[kafka_bootstrap], topic=topic, start_from="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    await reader.open(await reader.discover_splits(), {})
    waits_ms: list[float] = []
    rng = random.Random(17)
    try:
        for i in range(9):
            assert await reader.poll(100, 0.2) == []  # idle: a fetch is waiting at the broker
            await asyncio.sleep(rng.uniform(0.0, 0.5))  # at any point of the broker's fetch wait
            await producer.send_and_wait(topic, orjson.dumps({"i": i}))
            acked = time.monotonic()
            batches = []
            while not batches:
                batches = await reader.poll(100, 1.0)
            waits_ms.append((time.monotonic() - acked) * 1000)
            assert [r["i"] for b in batches for r in b.records] == [i]
    finally:
        await producer.stop()
        await reader.close()
    # with the default fetch wait the median was ~75-250 ms; with 10 ms it is a few ms
    assert statistics.median(waits_ms) < 50, waits_ms
