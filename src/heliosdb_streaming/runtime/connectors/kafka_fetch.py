"""Reads an aiokafka consumer's fetched records without a ConsumerRecord per message.

aiokafka hands each record through three generator frames into a ConsumerRecord; at about 1 µs per
message that was the largest cost of the Kafka source. ``RecordDrain`` takes the record batches the
consumer has buffered and lists each batch's records in one C-level pass: aiokafka's own record
objects, which carry the ``offset``, ``timestamp``, ``key`` and ``value`` the source reads.

It uses aiokafka's private fetcher (the one place in the code base that does), so it does so only on
the versions it was written and tested against (``FAST_VERSIONS``), only for partitions read without
deserializers and with read_uncommitted isolation, and falls back to the public ``getmany`` for
anything else. Positions advance exactly as ``getmany`` advances them (``consumed_to`` the offset
after the last record handed out), so seeks and checkpointed offsets behave the same. A consumer
read through a drain must not also be read through ``getmany``: records of a batch split by
``max_records`` wait in the drain.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Any, Protocol

import aiokafka
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import ConsumerStoppedError, CorruptRecordException

log = logging.getLogger(__name__)

FAST_VERSIONS = ("0.14.",)
"""aiokafka versions whose fetcher internals (``Fetcher._records``, ``FetchResult``, ``PartitionRecords``)
this module was checked against."""

_READ_UNCOMMITTED = 0


class FetchedRecord(Protocol):
    """What the source reads of a record: a ConsumerRecord or aiokafka's record object."""

    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


def fast_path_available(version: str = aiokafka.__version__) -> bool:
    """True on the aiokafka versions whose fetcher this module knows."""
    if not version.startswith(FAST_VERSIONS):
        return False
    from aiokafka.consumer import fetcher

    used = {
        "Fetcher": ("_create_fetch_waiter", "_notify"),
        "FetchResult": ("check_assignment", "has_more", "getall", "_update_position"),
        "PartitionRecords": ("_unpack_records",),
        "FetchError": ("check_raise",),
    }
    return all(
        all(hasattr(getattr(fetcher, cls, None), name) for name in names) for cls, names in used.items()
    )


class RecordDrain:
    """``getmany`` of one consumer, fast when ``fast`` (default: when the aiokafka version allows)."""

    def __init__(self, consumer: AIOKafkaConsumer, fast: bool | None = None) -> None:
        self.consumer = consumer
        self.fast = fast_path_available() if fast is None else fast
        # per partition: the records of a batch split by max_records, and the fetch they belong to
        self._rest: dict[TopicPartition, tuple[Any, list[Any]]] = {}

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[FetchedRecord]]:
        """Up to ``max_records`` fetched records by partition, waiting up to ``timeout_ms`` for some."""
        consumer = self.consumer
        if not self.fast:
            data: dict[TopicPartition, list[FetchedRecord]] = await consumer.getmany(
                timeout_ms=timeout_ms, max_records=max_records
            )
            return data
        if consumer._closed:
            raise ConsumerStoppedError()
        consumer._coordinator.check_errors()
        fetcher = consumer._fetcher
        subscription = consumer._subscription
        deadline = time.monotonic() + timeout_ms / 1000
        with subscription.fetch_context():
            while True:
                if subscription.reassignment_in_progress:
                    await subscription.wait_for_assignment()
                drained = self._drain(fetcher, max_records)
                remaining = deadline - time.monotonic()
                if drained or remaining <= 0:
                    return drained
                waiter = fetcher._create_fetch_waiter()
                done, pending = await asyncio.wait([waiter], timeout=remaining)
                if not done or fetcher._closed:
                    for future in pending:
                        future.cancel()
                    return {}
                waiter.result()  # raises the fetcher's authorization errors, as getmany does

    def _drain(self, fetcher: Any, max_records: int) -> dict[TopicPartition, list[FetchedRecord]]:
        """What ``Fetcher.fetched_records`` does once, with ``_take`` in place of ``getall``."""
        from aiokafka.consumer.fetcher import FetchResult

        buffered = fetcher._records
        drained: dict[TopicPartition, list[FetchedRecord]] = {}
        left = max_records
        for tp in list(buffered):
            result = buffered[tp]
            if type(result) is not FetchResult:  # a FetchError: raised once nothing else is handed out
                if drained:
                    return drained
                del buffered[tp]
                fetcher._notify(fetcher._wait_consume_future)
                result.check_raise()
            try:
                records = self._take(tp, result, left)
            except CorruptRecordException:
                if drained:  # the corrupt batch is fetched again, and raises on the next call
                    return drained
                raise
            finally:
                if not result.has_more():
                    del buffered[tp]
                    fetcher._notify(fetcher._wait_consume_future)
            if records:
                drained[tp] = records
                left -= len(records)
                if left <= 0:
                    break
        return drained

    def _take(self, tp: TopicPartition, result: Any, limit: int) -> list[Any]:
        """Up to ``limit`` records of one partition's fetch, advancing its position past them."""
        rest = self._rest.pop(tp, None)
        if not result.check_assignment(tp) or not result.has_more():  # seeked, paused or unassigned
            return []
        partition_records = result._partition_records
        if not _plain(partition_records):
            return list(result.getall(limit))
        out: list[Any] = []
        if rest is not None and rest[0] is partition_records:
            out = rest[1][:limit]
            if len(rest[1]) > limit:
                self._rest[tp] = (partition_records, rest[1][limit:])
            partition_records.next_fetch_offset = out[-1].offset + 1
        memory = partition_records._records
        while len(out) < limit and tp not in self._rest and memory.has_next():
            batch = memory.next_batch()
            if not batch.validate_crc():  # fetched again from the batch before; raised if nothing else
                result._update_position()
                result._partition_records = None
                if out:
                    return out
                raise CorruptRecordException(f"Invalid CRC - {tp}")
            if batch.is_control_batch:
                partition_records.next_fetch_offset = batch.next_offset
                continue
            records = list(batch)
            start = partition_records.next_fetch_offset
            if records and records[0].offset < start:  # a fetch from inside the batch (a seek)
                records = [r for r in records if r.offset >= start]
            need = limit - len(out)
            if len(records) > need:
                out.extend(records[:need])
                self._rest[tp] = (partition_records, records[need:])
                partition_records.next_fetch_offset = out[-1].offset + 1
            else:
                out.extend(records)
                partition_records.next_fetch_offset = batch.next_offset
        result._update_position()
        if tp not in self._rest and not memory.has_next():
            result._partition_records = None
        return out


def _plain(partition_records: Any) -> bool:
    """True for a fetch this module reads: aiokafka has not started reading it itself, no
    deserializers, read_uncommitted, CRC checked."""
    iterator = partition_records._records_iterator
    return (
        iterator is not None
        and inspect.getgeneratorstate(iterator) == inspect.GEN_CREATED
        and partition_records._key_deserializer is None
        and partition_records._value_deserializer is None
        and partition_records._isolation_level == _READ_UNCOMMITTED
        and partition_records._check_crcs
    )
