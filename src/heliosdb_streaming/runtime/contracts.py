"""The contracts between the task runner and its parts: sources, transformations, sinks, state.

Records are plain ``dict`` objects (JSON-like values). Everything moves in batches (``list[dict]``):
a source yields a batch per split, a transformation maps a batch to a batch, a sink writes a batch.
Nothing here does I/O; implementations live in ``connectors/``, ``transformations/`` and ``state/``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Record = dict[str, Any]
Batch = list[Record]


@dataclass(frozen=True, slots=True)
class Split:
    """One independently readable piece of a source: a Kafka partition, a datagen partition, a file.

    ``split_id`` is stable across runs (it names the task and its state in checkpoints).
    """

    split_id: str
    source_index: int
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(slots=True)
class SplitBatch:
    """Records read from one split, with the position to resume from after them.

    ``position`` is opaque to the runner (an offset, a line number, a sequence number) and is what a
    checkpoint stores for the split. ``ingest_ms`` is the wall-clock time the batch was read; latency
    is measured from it to the sink. ``finished`` is true once the split has no more records.
    """

    split_id: str
    records: Batch
    position: Any
    ingest_ms: float
    finished: bool = False


class SourceReader(Protocol):
    """Reads the splits assigned to one worker.

    Lifecycle: ``discover_splits`` (any worker may call it; the result is deterministic) ->
    ``open(assigned, positions)`` -> ``poll`` until every split reported ``finished`` (bounded
    sources) or forever (unbounded) -> ``close``. ``positions`` maps split_id to the position to
    resume from, or is missing the split to start at the configured start point.
    """

    async def discover_splits(self) -> list[Split]: ...

    async def open(self, assigned: Sequence[Split], positions: dict[str, Any]) -> None: ...

    async def poll(self, max_records: int, timeout_s: float) -> list[SplitBatch]: ...

    async def commit(self, positions: dict[str, Any]) -> None:
        """Reports progress back to the source system (Kafka group offsets) for monitoring only."""
        ...

    async def close(self) -> None: ...


class SinkWriter(Protocol):
    """Writes the output of the tasks of one worker.

    ``write`` may buffer; ``flush`` makes everything written so far durable. A sink raises on a
    failure it cannot retry away; the runner then applies the job's error policy.
    """

    async def open(self) -> None: ...

    async def write(self, task_id: str, records: Batch) -> None: ...

    async def flush(self) -> None: ...

    async def close(self) -> None: ...


class StateStore(Protocol):
    """Keyed state of one transformation in one task. Keys are strings, values JSON-like."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def put(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None: ...

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]: ...


class Transformation(Protocol):
    """One step of the chain inside a task. Pure logic: no I/O, no clocks of its own.

    ``process`` maps a batch to the batch for the next step. ``on_time`` lets time-driven steps
    (windows, CEP expiry) emit on processing time; ``on_end`` flushes at the end of bounded input
    (the equivalent of Flink's final MAX_WATERMARK). Errors for single records are reported through
    the ``errors`` list passed in as (record, exception) pairs; the step skips those records.

    Optional methods, looked up with ``getattr`` (process steps have them): ``take_errors()`` returns
    the errors of what ``on_time``/``on_end`` ran; ``before_snapshot()`` writes buffered state to the
    step's store before a checkpoint snapshots it; ``close()`` releases user code when the task ends.
    """

    name: str

    def process(self, records: Batch, errors: list[tuple[Record, Exception]]) -> Batch: ...

    def on_time(self, now_ms: int) -> Batch: ...

    def on_end(self) -> Batch: ...
