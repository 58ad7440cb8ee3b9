"""The worker's data path and checkpoint participant in process, with fake connectors: the flush and
commit timing rules and exactly-once staging, which the integration tests only see from outside."""

from __future__ import annotations

import time
from typing import Any

import pytest

from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.runtime import datapath
from heliosdb_streaming.runtime.checkpoint.participant import CheckpointParticipant
from heliosdb_streaming.runtime.checkpoint.tasks import OutputStaging
from heliosdb_streaming.runtime.contracts import Batch, Split, SplitBatch
from heliosdb_streaming.runtime.datapath import DataPath
from heliosdb_streaming.runtime.task import Task

CONFIG = JobConfig.from_dict(
    {
        "name": "datapath",
        "sources": [{"type": "datagen", "config": {}}],
        "sinks": [{"type": "discard", "config": {}}],
    }
)


class FakeReader:
    def __init__(self) -> None:
        self.commits: list[dict[str, Any]] = []

    async def commit(self, positions: dict[str, Any]) -> None:
        self.commits.append(dict(positions))


class FakeSink:
    def __init__(self, exactly_once: bool = False) -> None:
        self.exactly_once = exactly_once
        self.written: list[tuple[str, Batch]] = []
        self.flushes = 0
        self.transactions: list[tuple[list[Any], tuple[str, str, int]]] = []

    async def write(self, task_id: str, records: Batch) -> None:
        self.written.append((task_id, records))

    async def flush(self) -> None:
        self.flushes += 1

    async def write_transaction(self, rows: list[Any], marker: tuple[str, str, int]) -> None:
        self.transactions.append((rows, marker))


def data_path(sink: FakeSink, *, exactly_once: bool = False) -> tuple[DataPath, FakeReader]:
    path = DataPath(CONFIG, metrics=True, exactly_once=exactly_once, staging=OutputStaging())
    reader = FakeReader()
    path.readers.append(reader)  # type: ignore[arg-type]
    path.sinks.append(sink)  # type: ignore[arg-type]
    path.tasks["s0"] = Task(split=Split("s0", 0), reader=reader, chain=[])  # type: ignore[arg-type]
    return path, reader


def batch(position: int) -> SplitBatch:
    return SplitBatch("s0", [{"n": position}], position, time.time() * 1000)


async def test_an_empty_queue_flushes_at_once_but_positions_wait_for_the_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(datapath, "FLUSH_INTERVAL_S", 60.0)
    sink = FakeSink()
    path, reader = data_path(sink)
    path.process_batch(batch(1))
    await path.flush_due(time.monotonic())  # the queue is empty: flush now, do not sit on events
    assert sink.written == [("s0", [{"n": 1}])]
    assert sink.flushes == 1
    assert path.counters.latency.total == 1
    assert reader.commits == []  # the last commit (at start) is less than FLUSH_INTERVAL_S ago
    monkeypatch.setattr(datapath, "FLUSH_INTERVAL_S", 0.0)
    path.process_batch(batch(2))
    await path.flush_due(time.monotonic())
    assert reader.commits == [{"s0": 2}]


async def test_a_busy_queue_writes_without_flushing_until_the_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(datapath, "FLUSH_INTERVAL_S", 60.0)
    sink = FakeSink()
    path, _ = data_path(sink)
    path.queue.put_nowait(batch(2))  # more to read right now
    path.process_batch(batch(1))
    await path.flush_due(time.monotonic())
    assert sink.written == [("s0", [{"n": 1}])]
    assert sink.flushes == 0
    await path.flush_due(time.monotonic() + 60.0)
    assert sink.flushes == 1


async def test_exactly_once_output_is_staged_and_committed_when_its_checkpoint_completes() -> None:
    sink = FakeSink(exactly_once=True)
    path, _ = data_path(sink, exactly_once=True)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    participant = CheckpointParticipant(
        job_id="job",
        storage=None,
        restore_from=None,
        restore_storage=None,
        tasks=path.tasks,
        sinks=path.sinks,
        staging=path.staging,
        flush=path.flush_sinks,
        stop=path.stop,
        send=send,
    )
    path.process_batch(batch(1))
    await path.flush_sinks()
    assert sink.written == [] and len(path.staging) == 1
    path.staging.seal(7)
    participant.on_complete({"checkpoint_id": 7, "final": True, "stop": True})
    await participant.handle_messages()
    assert sink.transactions == [([{"n": 1}], ("job", "s0@sink0", 7))]
    assert participant.final_committed
    assert path.stopping.is_set() and path.running.is_set()  # stop-with-savepoint


class SlowStep:
    """A step that costs ``seconds`` a record, as user code calling a service would."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def process(self, records: Batch, errors: list[Any]) -> Batch:
        time.sleep(self.seconds * len(records))
        return records


def test_polls_shrink_for_slow_steps_and_stay_large_for_fast_ones() -> None:
    path, _ = data_path(FakeSink())
    records = [{"n": i} for i in range(200)]
    for position in range(5):  # a fast chain (no steps): polls stay at the maximum
        path.process_batch(SplitBatch("s0", records, position, time.time() * 1000))
    assert path.poll_records == datapath.POLL_MAX_RECORDS
    path.tasks["s0"].chain = [SlowStep(0.001)]
    for position in range(5, 15):  # 1 ms a record: about BATCH_TARGET_S / 1 ms records a poll
        path.process_batch(SplitBatch("s0", records[:64], position, time.time() * 1000))
    assert datapath.POLL_MIN_RECORDS <= path.poll_records <= 2 * datapath.BATCH_TARGET_S / 0.001
