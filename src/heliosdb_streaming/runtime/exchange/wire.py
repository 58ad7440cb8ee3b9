"""The encoding of messages on a job's internal (repartition) topics.

One Kafka message is one *delivery* of one origin (upstream task) to one partition (= key group):
its records, in the origin's order, and the origin's event-time watermark after them; or a
checkpoint barrier. Every message carries the writer's ``attempt`` (the job's run number, which grows
on every restart) and its ``position``: 1, 2, 3... per *channel* (origin, partition) within one
attempt. Positions are per channel, not per origin, because a reader reads partitions independently:
only within one partition is the origin's order the reading order.

The value is a compact orjson array, first element the format version::

    [1, 0, attempt, origin, position, watermark, [record, ...], ingest_ms]   # delivery
    [1, 1, attempt, origin, position, checkpoint_id]                        # barrier of checkpoint_id
    [1, 2, attempt, origin, position, watermark, [[partition, position], ...]]  # a task's mark

A task's mark goes to the first partition of a downstream task's key groups only (not to each of
them: with 128 key groups, marks to every group were most of the messages); it says the origin's
watermark is ``watermark`` once the task has applied, on each listed partition, the origin's
message at the listed position (the last the origin had written there before this mark).

A delivery's records may be empty (a watermark mark). ``ingest_ms`` is the earliest ingestion time
(wall clock, ms) of its records, or null; it is optional (a delivery of 7 elements has none), so
messages written before it existed still decode. Records are the engine's JSON objects; their event
time is a field of the record (the watermark is what the reader's event time is derived from), so no
per-record header is needed: one message carries up to a few thousand records of one channel, and
the header is paid once per message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from heliosdb_streaming.runtime.contracts import Batch

VERSION = 1
DELIVERY = 0
BARRIER = 1
TASK_MARK = 2


class WireFormatError(ValueError):
    """A message on an internal topic that this version cannot read (corrupt, or a newer format)."""


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded internal-topic message (``records`` empty and ``checkpoint_id`` set for a barrier)."""

    kind: int
    attempt: int
    origin: str
    position: int
    watermark: int = 0
    records: Batch | None = None
    checkpoint_id: int = 0
    ingest_ms: float | None = None
    requires: list[list[int]] | None = None  # a task's mark: [partition, position] pairs

    @property
    def is_barrier(self) -> bool:
        return self.kind == BARRIER


def encode_delivery(
    attempt: int,
    origin: str,
    position: int,
    watermark: int,
    records: Batch,
    ingest_ms: float | None = None,
) -> bytes:
    if ingest_ms is None:
        return orjson.dumps([VERSION, DELIVERY, attempt, origin, position, watermark, records])
    return orjson.dumps([VERSION, DELIVERY, attempt, origin, position, watermark, records, ingest_ms])


def encode_task_mark(
    attempt: int, origin: str, position: int, watermark: int, requires: list[list[int]]
) -> bytes:
    return orjson.dumps([VERSION, TASK_MARK, attempt, origin, position, watermark, requires])


def encode_barrier(attempt: int, origin: str, position: int, checkpoint_id: int) -> bytes:
    return orjson.dumps([VERSION, BARRIER, attempt, origin, position, checkpoint_id])


def decode(value: bytes | None) -> Message:
    """Decodes one message value; raises :class:`WireFormatError` for anything it does not know."""
    if value is None:
        raise WireFormatError("empty message (tombstone) on an internal topic")
    try:
        data: Any = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise WireFormatError(f"not JSON: {e}") from e
    if type(data) is not list or len(data) < 6:
        raise WireFormatError(f"not an internal-topic message: {value[:80]!r}")
    if data[0] != VERSION:
        raise WireFormatError(f"message format version {data[0]!r}, this engine reads {VERSION}")
    kind, attempt, origin, position = data[1], data[2], data[3], data[4]
    if type(attempt) is not int or type(origin) is not str or type(position) is not int:
        raise WireFormatError(f"malformed header: {value[:80]!r}")
    if kind == DELIVERY and 7 <= len(data) <= 8 and type(data[6]) is list and type(data[5]) is int:
        ingest = data[7] if len(data) == 8 else None
        if ingest is not None and type(ingest) not in (int, float):
            raise WireFormatError(f"malformed ingestion time: {value[:80]!r}")
        return Message(
            DELIVERY, attempt, origin, position, watermark=data[5], records=data[6], ingest_ms=ingest
        )
    if kind == TASK_MARK and len(data) == 7 and type(data[5]) is int and type(data[6]) is list:
        requires = data[6]
        if not all(type(r) is list and len(r) == 2 and type(r[0]) is type(r[1]) is int for r in requires):
            raise WireFormatError(f"malformed task mark: {value[:80]!r}")
        return Message(TASK_MARK, attempt, origin, position, watermark=data[5], requires=requires)
    if kind == BARRIER and len(data) == 6 and type(data[5]) is int:
        return Message(BARRIER, attempt, origin, position, checkpoint_id=data[5])
    raise WireFormatError(f"malformed message of kind {kind!r}: {value[:80]!r}")
