"""The exchange's Kafka transport (runtime/exchange/kafka_transport.py) on a real broker: each
partition keeps its order through batches that fail (before the write, and after it with the
acknowledgement lost), the only trace being a duplicate the reader drops by position; the reader
resumes from offsets and starts a recreated (shorter) partition from its beginning."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

import pytest
from aiokafka.errors import KafkaTimeoutError, RequestTimedOutError

from heliosdb_streaming.runtime.exchange import topics, wire
from heliosdb_streaming.runtime.exchange.kafka_transport import (
    ExchangeTransportError,
    Fetched,
    OrderedProducer,
    PartitionReader,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


class FlakyProducer(OrderedProducer):
    """Fails chosen sends on a real broker: ``lost`` ones after the write (the ack is lost, the
    batch is in the log), ``refused`` ones before it (nothing written)."""

    def __init__(self, *args: object, lost: set[int], refused: set[int], **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.lost, self.refused = lost, refused
        self.sends = 0
        self.lost_messages = 0

    async def _send_once(self, partition: int, values: list[bytes]) -> None:
        self.sends += 1
        n = self.sends
        if n in self.refused:
            raise KafkaTimeoutError(f"send {n} refused on purpose")
        await super()._send_once(partition, values)
        if n in self.lost:
            self.lost_messages += len(values)
            raise RequestTimedOutError(f"acknowledgement of send {n} lost on purpose")


async def read_all(
    bootstrap: str,
    topic: str,
    partitions: list[int],
    want: int,
    offsets: dict[int, int] | None = None,
    reset: set[int] | None = None,
) -> list[Fetched]:
    reader = PartitionReader([bootstrap], topic, partitions)
    await reader.open(offsets or {})
    got: list[Fetched] = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < want:
            assert time.monotonic() < deadline, f"only {len(got)} of {want} messages"
            got.extend(await reader.poll(0.2))
        got.extend(await reader.poll(0.5))  # nothing more may come
    finally:
        await reader.close()
    if reset is not None:
        reset.update(reader.reset)
    return got


async def test_each_partition_keeps_its_order_through_failed_batches(
    kafka_bootstrap: str, kafka_topic: Callable[..., Awaitable[str]]
) -> None:
    topic = await kafka_topic(partitions=4)
    producer = FlakyProducer([kafka_bootstrap], topic, lost={3, 9}, refused={5, 6, 14}, retry_backoff_s=0.01)
    await producer.open()
    per_partition = 600
    try:
        for position in range(1, per_partition + 1):
            for partition in range(4):
                producer.write(partition, wire.encode_delivery(1, "o", position, position, [{"i": position}]))
            if position % 10 == 0:  # many batches: writes while earlier ones are in flight
                await producer.wait_for_room()
                await asyncio.sleep(0.002)
        await producer.flush()
    finally:
        await producer.close()
    assert producer.sends > 14 and producer.lost_messages > 0

    fetched = await read_all(kafka_bootstrap, topic, [0, 1, 2, 3], 4 * per_partition + producer.lost_messages)

    assert len(fetched) == 4 * per_partition + producer.lost_messages
    applied: dict[int, list[int]] = defaultdict(list)
    duplicates = 0
    for f in fetched:
        position = wire.decode(f.value).position
        seen = applied[f.partition]
        if seen and position <= seen[-1]:
            duplicates += 1  # a resent batch: the reader drops it
            continue
        assert position == (seen[-1] if seen else 0) + 1, f"partition {f.partition} skips to {position}"
        seen.append(position)
    assert duplicates == producer.lost_messages
    assert {p: len(v) for p, v in applied.items()} == dict.fromkeys(range(4), per_partition)


async def test_a_partition_that_keeps_failing_fails_the_writer(
    kafka_bootstrap: str, kafka_topic: Callable[..., Awaitable[str]]
) -> None:
    topic = await kafka_topic(partitions=1)
    producer = FlakyProducer(
        [kafka_bootstrap], topic, lost=set(), refused=set(range(1, 100)), retries=2, retry_backoff_s=0.01
    )
    await producer.open()
    try:
        producer.write(0, b"x")
        with pytest.raises(ExchangeTransportError, match="refused on purpose"):
            await producer.flush()
        with pytest.raises(ExchangeTransportError):
            producer.write(0, b"y")
    finally:
        await producer.close()
    assert producer.sends == 3


async def test_the_reader_resumes_from_offsets_and_restarts_a_recreated_topic(kafka_bootstrap: str) -> None:
    job = f"j{int(time.time() * 1000)}"
    name = topics.topic_name(job, 1)
    await topics.ensure_topic([kafka_bootstrap], name, 2)
    producer = OrderedProducer([kafka_bootstrap], name)
    await producer.open()
    try:
        for i in range(100):
            producer.write(i % 2, wire.encode_barrier(1, "o", i // 2 + 1, i))
        await producer.flush()
        resumed = await read_all(kafka_bootstrap, name, [0, 1], 30, offsets={0: 30, 1: 40})
        assert sorted(f.offset for f in resumed if f.partition == 0) == list(range(30, 50))
        assert sorted(f.offset for f in resumed if f.partition == 1) == list(range(40, 50))

        await topics.delete_job_topics([kafka_bootstrap], job)
        await topics.ensure_topic([kafka_bootstrap], name, 2)
        await producer.close()
        producer = OrderedProducer([kafka_bootstrap], name)
        await producer.open()
        for i in range(10):
            producer.write(0, wire.encode_barrier(2, "o", i + 1, i))
        await producer.flush()
        # offsets saved before the topic was created anew: partition 0 has 10 messages now
        reset: set[int] = set()
        again = await read_all(kafka_bootstrap, name, [0, 1], 10, offsets={0: 30, 1: 40}, reset=reset)
        assert reset == {0, 1}
        assert [f.offset for f in again] == list(range(10))
        assert {wire.decode(f.value).attempt for f in again} == {2}
    finally:
        await producer.close()
        await topics.delete_job_topics([kafka_bootstrap], job)
