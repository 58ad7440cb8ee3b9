"""The scheduler and the job table without workers: in-memory store and log, no I/O, no event loop."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from heliosdb_streaming.control.entry import JobEntry, Run
from heliosdb_streaming.control.jobs import JobTable
from heliosdb_streaming.control.lifecycle import Event
from heliosdb_streaming.control.scheduler import Scheduler
from heliosdb_streaming.control.store import JobRecord, SnapshotRecord
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.errors import IllegalStateTransitionError, JobNotFoundError
from heliosdb_streaming.model.types import JobStatus, LogEntry, LogOptions


class MemoryStore:
    def __init__(self) -> None:
        self.saved: dict[str, JobRecord] = {}
        self.saves = 0

    def load_all(self) -> list[JobRecord]:
        return list(self.saved.values())

    def save(self, record: JobRecord) -> None:
        self.saved[record.job_id] = record
        self.saves += 1

    def load_snapshots(self) -> list[SnapshotRecord]:
        return []

    def save_snapshot(self, snapshot: SnapshotRecord) -> None: ...

    def delete_snapshot(self, job_id: str, checkpoint_id: int) -> None: ...

    def delete_job(self, job_id: str) -> None:
        self.saved.pop(job_id, None)

    def close(self) -> None: ...


class MemoryLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def write(
        self,
        level: str,
        message: str,
        task_id: str | None = None,
        ts: float | None = None,
        worker: int | None = None,
    ) -> None:
        self.lines.append((level, message))

    def read(self, options: LogOptions, *, workers: bool = True) -> list[LogEntry]:
        return []

    def close(self) -> None: ...


class MemoryFiles:
    def __init__(self) -> None:
        self.logs: dict[str, MemoryLog] = {}

    def job_dir(self, job_id: str) -> Path:
        return Path("/nonexistent") / job_id

    def write_config(self, job_id: str, data: bytes) -> None: ...

    def open_log(self, job_id: str) -> MemoryLog:
        return self.logs.setdefault(job_id, MemoryLog())

    def remove(self, job_id: str) -> None:
        self.logs.pop(job_id, None)


def config(parallelism: int) -> JobConfig:
    return JobConfig.from_dict(
        {
            "name": f"p{parallelism}",
            "config": {"parallelism": parallelism},
            "sources": [{"type": "datagen", "config": {}}],
            "sinks": [{"type": "discard", "config": {}}],
        }
    )


class Harness:
    """A table and a scheduler over 4 slots; ``started`` lists the runs the scheduler started."""

    def __init__(self, slots: int = 4) -> None:
        self.files = MemoryFiles()
        self.store = MemoryStore()
        self.table = JobTable(self.store, self.files)
        self.started: list[tuple[str, Run]] = []
        self.scheduler = Scheduler(self.table, slots, lambda e, r: self.started.append((e.record.job_id, r)))

    def add(self, job_id: str, parallelism: int) -> JobEntry:
        c = config(parallelism)
        record = JobRecord(
            job_id=job_id,
            name=c.name,
            status=JobStatus.SUBMITTED,
            config=c.to_dict(),
            submitted_at=datetime.now(UTC),
        )
        self.store.save(record)
        entry = self.table.add(record, c)
        self.scheduler.enqueue(entry)
        return entry

    def log(self, job_id: str) -> list[str]:
        return [message for _, message in self.files.logs[job_id].lines]


def test_jobs_start_first_come_first_served_while_they_fit() -> None:
    h = Harness(slots=4)
    a, b, c = h.add("a", 2), h.add("b", 2), h.add("c", 1)
    h.scheduler.schedule()
    assert [job_id for job_id, _ in h.started] == ["a", "b"]
    assert h.scheduler.slots_in_use == 4
    assert h.scheduler.queue == ["c"]
    assert a.run is not None and a.run.slots == 2 and a.run.attempt == 1 and a.record.attempt == 1
    assert b.run is not None and c.run is None
    assert c.record.message == "waiting for slots: needs 1, 0 of 4 free, position 1 in the queue"
    assert h.log("c") == [c.record.message]


def test_a_big_job_at_the_head_is_not_overtaken_by_smaller_ones() -> None:
    h = Harness(slots=4)
    h.add("a", 3)
    h.add("big", 4)
    h.add("small", 1)
    h.scheduler.schedule()
    assert [job_id for job_id, _ in h.started] == ["a"]
    assert h.scheduler.queue == ["big", "small"]
    assert h.table.get("small").waiting_reason == (
        "waiting for slots: needs 1, 1 of 4 free, position 2 in the queue"
    )


def test_slots_come_back_once_and_the_queue_moves_on() -> None:
    h = Harness(slots=2)
    a = h.add("a", 2)
    h.add("b", 2)
    h.scheduler.schedule()
    run = a.run
    assert run is not None
    h.scheduler.release(run)
    h.scheduler.release(run)  # a second release gives nothing back (invariant 2)
    assert h.scheduler.slots_in_use == 0
    a.run = None
    h.scheduler.schedule()
    assert [job_id for job_id, _ in h.started] == ["a", "b"]
    assert h.scheduler.slots_in_use == 2


def test_a_job_is_queued_at_most_once_and_never_while_it_runs() -> None:
    h = Harness(slots=1)
    a = h.add("a", 1)
    h.scheduler.enqueue(a)
    assert h.scheduler.queue == ["a"]
    h.scheduler.schedule()
    h.scheduler.enqueue(a)  # it has a run now
    assert h.scheduler.queue == []
    b = h.add("b", 1)
    c = h.add("c", 1)
    h.scheduler.enqueue(c, front=True)  # already queued: stays where it is
    assert h.scheduler.queue == ["b", "c"]
    h.scheduler.dequeue(b)
    assert h.scheduler.queue == ["c"] and b.waiting_reason is None


def test_the_waiting_message_is_written_only_when_it_changes() -> None:
    h = Harness(slots=1)
    h.add("a", 1)
    h.add("b", 1)
    h.scheduler.schedule()
    saves = h.store.saves
    h.scheduler.schedule()
    assert h.store.saves == saves
    assert len(h.log("b")) == 1


def test_nothing_starts_once_closed() -> None:
    h = Harness()
    h.add("a", 1)
    h.scheduler.closed = True
    h.scheduler.schedule()
    assert h.started == [] and h.scheduler.queue == ["a"]


def test_status_changes_go_through_the_lifecycle_and_reach_the_listeners() -> None:
    h = Harness()
    a = h.add("a", 1)
    seen: list[tuple[str, JobStatus]] = []
    h.table.status_listeners.append(lambda job_id, status: seen.append((job_id, status)))
    wakeup = a.wakeup
    h.table.set_status(a, Event.START, "Job started successfully")
    assert a.record.status == JobStatus.RUNNING and a.record.started_at is not None
    assert wakeup.is_set() and a.wakeup is not wakeup
    h.table.set_status(a, Event.CANCEL, "Job cancelled password=hunter2")
    assert a.record.finished_at is not None and a.record.worker_pids == []
    assert "hunter2" not in (a.record.message or "")
    assert seen == [("a", JobStatus.RUNNING), ("a", JobStatus.CANCELLED)]
    with pytest.raises(IllegalStateTransitionError):
        h.table.check(a, Event.PAUSE, "pause")
    with pytest.raises(IllegalStateTransitionError):
        h.table.set_status(a, Event.PAUSE)
    with pytest.raises(JobNotFoundError):
        h.table.get("nope")
