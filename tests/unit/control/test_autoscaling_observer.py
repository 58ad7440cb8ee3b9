"""``control.autoscaling``: what the control plane samples from heartbeats, the inputs it builds, what
it records and when it starts a rescale; with a fixed clock, real job table, store and coordinator."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from heliosdb_streaming.control.autoscaler import Action
from heliosdb_streaming.control.autoscaling import JobAutoscaler
from heliosdb_streaming.control.checkpoint_coordinator import CheckpointCoordinator
from heliosdb_streaming.control.entry import JobEntry, Run
from heliosdb_streaming.control.jobs import JobTable
from heliosdb_streaming.control.metrics import JobMetricsAggregator
from heliosdb_streaming.control.scheduler import Scheduler
from heliosdb_streaming.control.store import JobRecord
from heliosdb_streaming.control.tasks import BackgroundTasks
from heliosdb_streaming.embedded.logs import LocalJobFiles
from heliosdb_streaming.embedded.sqlite_store import SqliteJobStore
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.types import JobStatus, LogOptions
from heliosdb_streaming.runtime.checkpoint.storage import storage_from_uri


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


class Harness:
    def __init__(self, tmp_path: Path, mode: str) -> None:
        self.clock = Clock()
        self.table = JobTable(SqliteJobStore(tmp_path / "jobs.db"), LocalJobFiles(tmp_path))
        self.scheduler = Scheduler(self.table, 4, lambda entry, run: None)
        self.rescales: list[tuple[str, int, str]] = []
        self.tasks = BackgroundTasks()
        self.autoscaler = JobAutoscaler(self.table, self.scheduler, self.rescale, self.tasks, self.clock)
        config = JobConfig.from_dict(
            {
                "name": "scaled",
                "config": {
                    "parallelism": 2,
                    "autoscaler": {
                        "enabled": True,
                        "stabilization_ms": 1000,
                        "metrics_window_ms": 2000,
                        "mode": mode,
                    },
                },
                "sources": [{"type": "datagen", "config": {"partitions": 4}}],
                "sinks": [{"type": "discard", "config": {}}],
            }
        )
        record = JobRecord(
            job_id="job-1",
            name="scaled",
            status=JobStatus.RUNNING,
            config=config.to_dict(),
            submitted_at=datetime.now(UTC),
        )
        self.entry: JobEntry = self.table.add(record, config)
        self.entry.metrics = JobMetricsAggregator(self.clock)
        self.run = self.new_run(tmp_path, attempt=1)
        self.scheduler.slots_in_use = 2

    def new_run(self, tmp_path: Path, attempt: int) -> Run:
        run = Run(job_id="job-1", attempt=attempt, token="t", parallelism=2)
        run.connected.set()
        run.coordinator = CheckpointCoordinator(
            job_id="job-1",
            parallelism=2,
            storage=storage_from_uri((tmp_path / "checkpoints").as_uri()),
            next_id=lambda: 1,
            send=lambda message: None,
            on_complete=lambda snapshot: None,
            on_failed=lambda snapshot, why: None,
            retained=1,
            retained_snapshots=list,
            forget=lambda snapshot: None,
        )
        self.entry.run = run
        return run

    async def rescale(self, job_id: str, parallelism: int, reason: str) -> None:
        self.rescales.append((job_id, parallelism, reason))

    def beat(self, busy: float, lag: int | None = None, attempt: int = 1) -> None:
        """One heartbeat a second from both workers, ``busy`` of the time busy."""
        self.clock.t += 1
        for index in range(2):
            previous = self.entry.metrics.workers.get((attempt, index))
            busy_ms = (previous.last["busy_ms"] if previous else 0.0) + 1000 * busy
            beat: dict[str, Any] = {"busy_ms": busy_ms, "backpressure_ms": 0.0, "events_in": 0}
            if lag is not None:
                beat["source_lag"] = lag
            self.entry.metrics.on_heartbeat(attempt, index, beat)
            self.entry.metrics.task_progress[f"split-{index}"] = {}
            self.entry.metrics.task_progress[f"split-{index + 2}"] = {}


async def test_it_samples_decides_records_and_rescales(tmp_path: Path) -> None:
    h = Harness(tmp_path, "apply")
    first = h.autoscaler.evaluate(h.entry)
    assert first is not None and first.kind == "stabilizing"
    h.beat(0.9)
    assert h.autoscaler.evaluate(h.entry).kind == "collecting"  # type: ignore[union-attr]
    h.beat(0.9)
    h.beat(0.9)
    d = h.autoscaler.evaluate(h.entry)
    assert d is not None and (d.action, d.parallelism, d.utilization) == (Action.SCALE_UP, 3, 0.9)
    assert d.inputs["split_count"] == 4 and d.inputs["free_slots"] == 2 and d.inputs["source_lag"] is None
    assert h.entry.autoscaling.rescaling
    assert h.autoscaler.evaluate(h.entry) is None  # not evaluated while the rescale is in progress
    for _ in range(3):  # the rescale task runs
        await asyncio.sleep(0)
    assert h.rescales == [("job-1", 3, d.reason)]
    state = h.entry.autoscaling
    assert (state.rescaling, state.rescales, state.last_rescale_ms) == (False, 1, int(h.clock.t * 1000))
    assert [r.decision.kind for r in state.history] == ["stabilizing", "collecting", "evaluated"]
    assert state.history[-1].applied
    log = [e.message for e in h.entry.log.read(LogOptions(limit=100))]
    assert any("Autoscaler rescaling scale up 2 -> 3" in line for line in log), log


async def test_recommend_a_new_run_and_a_growing_lag(tmp_path: Path) -> None:
    h = Harness(tmp_path, "recommend")
    h.autoscaler.evaluate(h.entry)
    for lag in (100, 300, 600):
        h.beat(0.7, lag=lag)
        h.autoscaler.evaluate(h.entry)
    d = h.autoscaler.evaluate(h.entry)
    assert d is not None and (d.action, d.parallelism) == (Action.SCALE_UP, 3)
    assert d.inputs["source_lag"] == 1200 and d.inputs["lag_growth_per_s"] == 500.0  # 2 workers
    assert "growing" in d.reason and h.rescales == [] and not h.entry.autoscaling.rescaling
    # paused: nothing decided; when it runs again it stabilizes afresh
    h.run.paused = True
    assert h.autoscaler.evaluate(h.entry) is None
    h.run.paused = False
    assert h.autoscaler.evaluate(h.entry).kind == "stabilizing"  # type: ignore[union-attr]
    # a new run (attempt 2): the old run's samples are gone
    h.new_run(tmp_path, attempt=2)
    h.clock.t += 5
    d = h.autoscaler.evaluate(h.entry)
    assert d is not None and d.kind == "stabilizing" and h.entry.autoscaling.samples == {}


async def test_a_draining_bounded_job_is_left_alone(tmp_path: Path) -> None:
    h = Harness(tmp_path, "apply")
    h.autoscaler.evaluate(h.entry)
    for _ in range(3):
        h.beat(1.0)
    assert h.run.coordinator is not None
    h.run.coordinator.drained.add(0)  # worker 0 read all its splits: the final checkpoint is coming
    assert h.autoscaler.evaluate(h.entry) is None and h.rescales == []
