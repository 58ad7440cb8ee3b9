"""The Kafka source and sink against a real broker (tansu): splits, resume, start points, decode errors."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from heliosdb_streaming.runtime.connectors.kafka import KafkaSinkWriter, KafkaSourceError, KafkaSourceReader
from heliosdb_streaming.runtime.contracts import SplitBatch

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


async def produce(
    bootstrap: str,
    topic: str,
    messages: list[tuple[int, bytes | None, bytes | None]],
    timestamp_ms: int | None = None,
) -> None:
    """Writes (partition, key, value) messages and waits for every acknowledgement."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, partition=partition, timestamp_ms=timestamp_ms)
            for partition, key, value in messages
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def json_messages(
    partitions: int, per_partition: int, start: int = 0
) -> list[tuple[int, bytes | None, bytes | None]]:
    return [
        (p, None, orjson.dumps({"p": p, "i": i}))
        for i in range(start, start + per_partition)
        for p in range(partitions)
    ]


def reader(bootstrap: str, topic: str, *, source_index: int = 0, **kw: Any) -> KafkaSourceReader:
    settings: dict[str, Any] = {
        "group_id": None,
        "start_from": "earliest",
        "format": "json",
        "event_time_field": None,
    }
    settings.update(kw)
    return KafkaSourceReader(
        bootstrap_servers=[bootstrap], topic=topic, source_index=source_index, **settings
    )


async def read_until(
    r: KafkaSourceReader, want: int, *, max_records: int = 1000, deadline_s: float = 20.0
) -> list[SplitBatch]:
    batches: list[SplitBatch] = []
    got = 0
    deadline = time.monotonic() + deadline_s
    while got < want:
        assert time.monotonic() < deadline, f"only {got} of {want} records within {deadline_s}s"
        for b in await r.poll(max_records, 0.2):
            batches.append(b)
            got += len(b.records)
    return batches


async def assert_nothing_more(r: KafkaSourceReader, seconds: float = 1.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        extra = [rec for b in await r.poll(1000, 0.2) for rec in b.records]
        assert extra == []


async def test_discover_splits_one_per_partition(kafka_bootstrap: str, kafka_topic: Any) -> None:
    topic = await kafka_topic(partitions=3)
    splits = await reader(kafka_bootstrap, topic, source_index=2).discover_splits()
    assert [s.split_id for s in splits] == ["s2-p0", "s2-p1", "s2-p2"]
    assert [s.params["partition"] for s in splits] == [0, 1, 2]
    assert {s.source_index for s in splits} == {2}


async def test_missing_topic_is_a_clear_error_and_not_created(kafka_bootstrap: str) -> None:
    r = KafkaSourceReader(
        bootstrap_servers=[kafka_bootstrap],
        topic="helios-test-no-such-topic",
        group_id=None,
        start_from="earliest",
        format="json",
        event_time_field=None,
        source_index=0,
        missing_topic_timeout_s=0.5,
    )
    with pytest.raises(KafkaSourceError, match=r"helios-test-no-such-topic.*does not exist"):
        await r.discover_splits()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert "helios-test-no-such-topic" not in await admin.list_topics()
    finally:
        await admin.close()


async def test_unreachable_broker_is_a_clear_error() -> None:
    r = KafkaSourceReader(
        bootstrap_servers=["127.0.0.1:1"],
        topic="t",
        group_id=None,
        start_from="earliest",
        format="json",
        event_time_field=None,
        source_index=0,
        metadata_timeout_s=1.0,
    )
    started = time.monotonic()
    with pytest.raises(KafkaSourceError, match=r"no metadata for topic 't' from 127\.0\.0\.1:1"):
        await r.discover_splits()
    assert time.monotonic() - started < 15
    # while it retried, the source said why (the worker's heartbeats carry it to the job's message)
    assert r.problem is not None and "127.0.0.1:1 unreachable" in r.problem, r.problem


async def test_reads_every_partition_and_resumes_without_loss_or_duplicates(
    kafka_bootstrap: str, kafka_topic: Any
) -> None:
    topic = await kafka_topic(partitions=3)
    await produce(kafka_bootstrap, topic, json_messages(3, 200))
    expected = {(p, i) for p in range(3) for i in range(200)}

    first = reader(kafka_bootstrap, topic)
    splits = await first.discover_splits()
    await first.open(splits, {})
    seen: list[tuple[int, int]] = []
    positions: dict[str, int] = {}
    for batch in await read_until(first, 250, max_records=50):
        partition = int(batch.split_id.rsplit("-p", 1)[1])
        assert all(r["p"] == partition for r in batch.records)
        assert batch.finished is False
        assert batch.ingest_ms > 0
        seen.extend((r["p"], r["i"]) for r in batch.records)
        positions[batch.split_id] = batch.position
    await first.close()
    # The position is the next offset: records of a partition are i = 0..position-1.
    for split_id, position in positions.items():
        partition = int(split_id.rsplit("-p", 1)[1])
        assert sorted(i for p, i in seen if p == partition) == list(range(position))

    second = reader(kafka_bootstrap, topic)
    await second.open(splits, positions)
    rest = await read_until(second, 600 - len(seen))
    seen.extend((r["p"], r["i"]) for b in rest for r in b.records)
    await assert_nothing_more(second, 0.5)
    await second.close()
    assert len(seen) == len(expected)
    assert set(seen) == expected


async def test_reader_reads_only_its_assigned_splits(kafka_bootstrap: str, kafka_topic: Any) -> None:
    topic = await kafka_topic(partitions=3)
    await produce(kafka_bootstrap, topic, json_messages(3, 20))
    r = reader(kafka_bootstrap, topic)
    splits = await r.discover_splits()
    await r.open([splits[1]], {})
    batches = await read_until(r, 20)
    await assert_nothing_more(r, 0.5)
    await r.close()
    assert {b.split_id for b in batches} == {"s0-p1"}
    assert sorted(rec["i"] for b in batches for rec in b.records) == list(range(20))


async def test_start_from_latest_skips_what_was_there(kafka_bootstrap: str, kafka_topic: Any) -> None:
    topic = await kafka_topic(partitions=2)
    # Several producer runs make several record batches per partition (the tansu end-offset quirk).
    for k in range(3):
        await produce(kafka_bootstrap, topic, json_messages(2, 5, start=k * 5))
    r = reader(kafka_bootstrap, topic, start_from="latest")
    await r.open(await r.discover_splits(), {})
    await assert_nothing_more(r, 1.0)
    await produce(kafka_bootstrap, topic, json_messages(2, 4, start=100))
    batches = await read_until(r, 8)
    await assert_nothing_more(r, 0.5)
    await r.close()
    assert sorted((rec["p"], rec["i"]) for b in batches for rec in b.records) == sorted(
        (p, i) for p in range(2) for i in range(100, 104)
    )
    last_positions = {b.split_id: b.position for b in batches}
    assert last_positions == {"s0-p0": 19, "s0-p1": 19}


async def test_start_from_group_uses_committed_offsets(kafka_bootstrap: str, kafka_topic: Any) -> None:
    topic = await kafka_topic(partitions=2)
    await produce(kafka_bootstrap, topic, json_messages(2, 10))
    group = f"g-{topic}"

    a = reader(kafka_bootstrap, topic, group_id=group, start_from="group")
    splits = await a.discover_splits()
    await a.open(splits, {})
    await read_until(a, 20)  # nothing committed yet: starts at the beginning
    await a.commit({"s0-p0": 6, "s0-p1": 3, "s0-unknown": 1})
    await a.close()

    b = reader(kafka_bootstrap, topic, group_id=group, start_from="group")
    await b.open(splits, {})
    batches = await read_until(b, 4 + 7)
    await assert_nothing_more(b, 0.5)
    await b.close()
    got = sorted((rec["p"], rec["i"]) for batch in batches for rec in batch.records)
    assert got == sorted([(0, i) for i in range(6, 10)] + [(1, i) for i in range(3, 10)])

    # A restored position wins over the group offset; another group starts at the beginning.
    c = reader(kafka_bootstrap, topic, group_id=group, start_from="group")
    await c.open(splits, {"s0-p0": 9})
    batches = await read_until(c, 1 + 7)
    await c.close()
    assert sorted(rec["i"] for batch in batches for rec in batch.records if rec["p"] == 0) == [9]

    d = reader(kafka_bootstrap, topic, group_id=f"other-{group}", start_from="group")
    await d.open(splits, {})
    assert sum(len(x.records) for x in await read_until(d, 20)) == 20
    await d.close()


async def test_undecodable_records_are_reported_not_dropped_silently(
    kafka_bootstrap: str, kafka_topic: Any
) -> None:
    topic = await kafka_topic(partitions=1)
    await produce(
        kafka_bootstrap,
        topic,
        [
            (0, None, b'{"ok": 1}'),
            (0, None, b"not json"),
            (0, None, b"[1, 2]"),
            (0, b"k", None),
            (0, None, b'{"ok": 2}'),
        ],
    )
    r = reader(kafka_bootstrap, topic)
    await r.open(await r.discover_splits(), {})
    deadline = time.monotonic() + 10
    batches: list[SplitBatch] = []
    while sum(len(b.records) for b in batches) < 2 or len(r.decode_errors) < 3:
        assert time.monotonic() < deadline
        batches.extend(await r.poll(100, 0.2))
    await r.close()
    assert [rec for b in batches for rec in b.records] == [{"ok": 1}, {"ok": 2}]
    assert batches[-1].position == 5
    assert [(split, offset) for split, offset, _ in r.decode_errors] == [
        ("s0-p0", 1),
        ("s0-p0", 2),
        ("s0-p0", 3),
    ]
    messages = [m for _, _, m in r.decode_errors]
    assert "expected a JSON object, got list" in messages[1]
    assert "tombstone" in messages[2]


async def test_a_batch_of_only_bad_records_still_advances_the_position(
    kafka_bootstrap: str, kafka_topic: Any
) -> None:
    topic = await kafka_topic(partitions=1)
    await produce(kafka_bootstrap, topic, [(0, None, b"{bad"), (0, None, b"also bad")])
    r = reader(kafka_bootstrap, topic)
    await r.open(await r.discover_splits(), {})
    deadline = time.monotonic() + 10
    batches: list[SplitBatch] = []
    while len(r.decode_errors) < 2:
        assert time.monotonic() < deadline
        batches.extend(await r.poll(100, 0.2))
    await r.close()
    assert all(b.records == [] for b in batches)
    assert batches[-1].position == 2


async def test_raw_format_and_event_time_from_the_kafka_timestamp(
    kafka_bootstrap: str, kafka_topic: Any
) -> None:
    topic = await kafka_topic(partitions=1)
    ts = 1_700_000_000_123
    await produce(kafka_bootstrap, topic, [(0, b"k1", b"hello \xff"), (0, None, b"x")], timestamp_ms=ts)
    raw = reader(kafka_bootstrap, topic, format="raw")
    await raw.open(await raw.discover_splits(), {})
    records = [rec for b in await read_until(raw, 2) for rec in b.records]
    await raw.close()
    assert records == [{"value": "hello \ufffd", "key": "k1"}, {"value": "x", "key": None}]

    await produce(
        kafka_bootstrap, topic, [(0, None, b'{"a": 1}'), (0, None, b'{"a": 2, "ts": 5}')], timestamp_ms=ts
    )
    js = reader(kafka_bootstrap, topic, event_time_field="ts")
    await js.open(await js.discover_splits(), {"s0-p0": 2})
    records = [rec for b in await read_until(js, 2) for rec in b.records]
    await js.close()
    assert records == [{"a": 1, "ts": ts}, {"a": 2, "ts": 5}]


async def test_sink_writes_json_with_keys_and_reads_back(kafka_bootstrap: str, kafka_topic: Any) -> None:
    topic = await kafka_topic(partitions=3)
    sink = KafkaSinkWriter(bootstrap_servers=[kafka_bootstrap], topic=topic, key_field="card")
    await sink.open()
    records = [{"card": f"c{i % 7}", "n": i, "nested": {"x": [1, 2]}} for i in range(500)]
    await sink.write("task-a", records[:250])
    await sink.write("task-b", records[250:])
    await sink.flush()
    await sink.close()

    r = reader(kafka_bootstrap, topic, format="json")
    await r.open(await r.discover_splits(), {})
    batches = await read_until(r, 500)
    await r.close()
    got = [rec for b in batches for rec in b.records]
    assert sorted(got, key=lambda x: x["n"]) == records
    # Same key -> same partition, and order per key is kept.
    partition_of: dict[str, set[str]] = {}
    for b in batches:
        for rec in b.records:
            partition_of.setdefault(rec["card"], set()).add(b.split_id)
    assert all(len(parts) == 1 for parts in partition_of.values())
    for card in partition_of:
        ns = [rec["n"] for b in batches for rec in b.records if rec["card"] == card]
        assert ns == sorted(ns)

    raw = reader(kafka_bootstrap, topic, format="raw")
    await raw.open(await raw.discover_splits(), {})
    keys = {rec["key"] for b in await read_until(raw, 500) for rec in b.records}
    await raw.close()
    assert keys == {f"c{i}" for i in range(7)}


async def test_sink_without_key_and_idempotence_fallback(kafka_bootstrap: str, kafka_topic: Any) -> None:
    topic = await kafka_topic(partitions=1)
    sink = KafkaSinkWriter(bootstrap_servers=[kafka_bootstrap], topic=topic, key_field=None)
    await sink.open()
    if not os.environ.get("HELIOS_TEST_KAFKA"):
        # tansu 0.6 refuses InitProducerId: the sink falls back to acks=all (at-least-once).
        assert sink.idempotent is False
    await sink.write("t", [{"i": i} for i in range(10)])
    await sink.flush()
    await sink.flush()  # nothing pending: no-op
    await sink.close()
    r = reader(kafka_bootstrap, topic, format="raw")
    await r.open(await r.discover_splits(), {})
    got = [rec for b in await read_until(r, 10) for rec in b.records]
    await r.close()
    assert [orjson.loads(rec["value"]) for rec in got] == [{"i": i} for i in range(10)]
    assert {rec["key"] for rec in got} == {None}


async def test_poll_raises_after_the_broker_is_gone_for_too_long(tansu_broker: Any) -> None:
    bootstrap = tansu_broker.bootstrap
    topic = "gone"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    await admin.close()
    await produce(bootstrap, topic, [(0, None, b'{"i": 0}')])
    r = KafkaSourceReader(
        bootstrap_servers=[bootstrap],
        topic=topic,
        group_id=None,
        start_from="earliest",
        format="json",
        event_time_field=None,
        source_index=0,
        broker_timeout_s=3.0,
    )
    await r.open(await r.discover_splits(), {})
    assert len((await read_until(r, 1))[0].records) == 1
    tansu_broker.kill()
    started = time.monotonic()
    polls = 0
    with pytest.raises(KafkaSourceError, match=r"unreachable|failed"):
        while time.monotonic() - started < 60:
            polls += 1
            await r.poll(100, 0.1)
    elapsed = time.monotonic() - started
    await r.close()
    assert 3.0 <= elapsed < 40, elapsed
    assert polls < elapsed / 0.05, "poll must not hot-loop while the broker is down"
