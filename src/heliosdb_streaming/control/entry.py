"""What the control plane holds for each job while it runs: its entry and its current run.

``JobEntry`` is one job in memory: the durable ``JobRecord``, the compiled config, the metrics
aggregator, the log, the current ``Run`` if any, and which snapshot the next run restores (the
restore-point rules of invariant 3 in ``control.controller``). ``Run`` is one attempt of a job: its
workers, their channels and what each reported. Both are plain data with small pure rules; the
scheduler, the supervisor, the channel server and the snapshot service share them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from heliosdb_streaming.control.autoscaler import AutoscalerState
from heliosdb_streaming.control.checkpoint_coordinator import CheckpointCoordinator
from heliosdb_streaming.control.files import JobLog
from heliosdb_streaming.control.launcher import WorkerHandle
from heliosdb_streaming.control.metrics import JobMetricsAggregator
from heliosdb_streaming.control.store import JobRecord, SnapshotRecord
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.types import JobStatus
from heliosdb_streaming.runtime.checkpoint.storage import CheckpointStorage
from heliosdb_streaming.runtime.checkpoint.tasks import SnapshotLocation
from heliosdb_streaming.runtime.connectors.secrets import mask_secrets
from heliosdb_streaming.runtime.protocol import Channel

FRESH = "fresh"  # in ``JobRecord.restore_point``: the run starts without state (``JobEntry.restore``)


@dataclass(slots=True)
class Run:
    """One attempt of a job: its workers, their channels and what each reported at the end."""

    job_id: str
    attempt: int
    token: str
    parallelism: int
    handles: dict[int, WorkerHandle] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    drained_channels: dict[int, asyncio.Event] = field(default_factory=dict)  # set once read to the end
    outcomes: dict[int, tuple[str, str | None]] = field(default_factory=dict)
    exit_codes: dict[int, int] = field(default_factory=dict)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    stop_requested: str | None = None  # why: "cancel", "shutdown", "restart"
    paused: bool = False
    supervisor: asyncio.Task[None] | None = None
    coordinator: CheckpointCoordinator | None = None
    checkpointer: asyncio.Task[None] | None = None
    savepointer: asyncio.Task[None] | None = None  # periodic savepoints (``savepoint_interval_ms``)
    problems: dict[int, tuple[str, ...]] = field(default_factory=dict)  # by worker, from heartbeats
    problem_message: str | None = None  # the job message shown for them, and the one it replaced
    message_before_problems: str | None = None
    slots: int = 0  # taken at launch, given back once when the workers are gone
    # workers the control plane stopped because another of the run exited: not failures of their own
    stopped_for_peer: dict[int, int] = field(default_factory=dict)  # index -> the worker that exited

    def ready(self) -> bool:
        """All workers connected, nobody stopping them: a savepoint can be taken."""
        coordinator = self.coordinator
        return (
            self.connected.is_set()
            and self.stop_requested is None
            and coordinator is not None
            and coordinator.ended is None
        )


@dataclass(slots=True)
class JobEntry:
    """One job of the control plane: its record, config, metrics, log, run and restore point."""

    record: JobRecord
    config: JobConfig
    metrics: JobMetricsAggregator
    log: JobLog
    run: Run | None = None
    waiting_reason: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    snapshots: list[SnapshotRecord] = field(default_factory=list)
    restore_from: str | None = None  # directory the next run restores from (None: fresh start)
    restore_storage: str | None = None  # the storage restore_from is in (None: the job's own)
    storage: CheckpointStorage | None = None
    relaunch: asyncio.Task[None] | None = None  # the pending automatic restart, while it waits
    restoring: str | None = None  # the directory a restart in progress is about to restore
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)  # set (and replaced) on every change
    autoscaling: AutoscalerState = field(default_factory=AutoscalerState)  # ``control.autoscaling``

    def changed(self) -> None:
        """Wakes whoever waits for this job's run or status to change."""
        self.wakeup.set()
        self.wakeup = asyncio.Event()

    def recovering(self) -> bool:
        """Active (running or paused) with no run of it working yet: after a failure its automatic
        restart is pending or starting, or the control plane came back and is starting it again."""
        if self.record.status not in (JobStatus.RUNNING, JobStatus.PAUSED):
            return False
        run = self.run
        return run is None or (run.stop_requested is None and not run.connected.is_set())

    def latest_restore_point(self) -> SnapshotRecord | None:
        """The newest completed checkpoint or savepoint (ids grow, so the newest has the largest id)."""
        done = [s for s in self.snapshots if s.status == "completed"]
        return max(done, key=lambda s: s.checkpoint_id) if done else None

    def pinned_point(self) -> SnapshotRecord | None:
        """The own snapshot the last run restored and has not yet replaced with one of its own."""
        point = self.record.restore_point
        if point is None or point.get("storage_uri"):
            return None
        return next(
            (s for s in self.snapshots if s.directory == point["directory"] and s.status == "completed"), None
        )

    def restore_point(self) -> SnapshotRecord | None:
        """What "restore the newest state" means: the snapshot the last run restored, as long as it
        took none of its own (restoring an older savepoint must not jump to newer checkpoints), else
        the newest completed one. Nothing after a fresh start that has no snapshot of its own yet."""
        if self.starts_fresh():
            return None
        return self.pinned_point() or self.latest_restore_point()

    def starts_fresh(self) -> bool:
        """Whether the next or current run starts without state (a stateless upgrade) and has no
        snapshot of its own yet: a recovery then starts without state too, not from older snapshots."""
        point = self.record.restore_point
        return bool(point and point.get(FRESH))

    def restore(self, point: SnapshotRecord | None, *, fresh: bool = False) -> None:
        """The next run restores ``point``, else the snapshot the job started from, else nothing;
        with ``fresh`` nothing at all (the snapshots stay, but are not this run's state).

        Recorded as the job's ``restore_point`` until the run completes a snapshot of its own.
        """
        start = self.record.start_from
        if fresh:
            self.restore_from, self.restore_storage = None, None
            self.record.restore_point = {"directory": None, "storage_uri": None, FRESH: True}
            return
        if point is None and start is not None:
            self.restore_from, self.restore_storage = str(start["directory"]), str(start["storage_uri"])
        else:
            self.restore_from, self.restore_storage = (point.directory if point else None), None
        self.record.restore_point = (
            {"directory": self.restore_from, "storage_uri": self.restore_storage}
            if self.restore_from
            else None
        )

    def restore_latest(self) -> None:
        """The next run restores the newest state (``restore_point``), else the start snapshot; after a
        fresh start without a snapshot of its own, nothing."""
        self.restore(self.restore_point(), fresh=self.starts_fresh())

    def restores(self, directory: str) -> bool:
        """Whether this job still needs the snapshot at ``directory`` (a restart in progress, or its
        next or current run restores it and has no snapshot of its own yet). Terminal jobs hold
        nothing: restarting one is a new decision of the user."""
        if self.restoring == directory:
            return True
        point = self.record.restore_point
        return not self.record.status.terminal and point is not None and point["directory"] == directory

    def savepoint(self, savepoint_id: str) -> SnapshotRecord | None:
        return next(
            (s for s in self.snapshots if s.savepoint_id == savepoint_id and s.status == "completed"), None
        )


def utcnow() -> datetime:
    return datetime.now(UTC)


def describe_start(start: dict[str, Any]) -> str:
    """How a log line names the snapshot a job was started from (``JobRecord.start_from``)."""
    point = SnapshotLocation(**start)
    what = f"savepoint {point.savepoint_id}" if point.savepoint_id else "checkpoint"
    return f"{what} of job {point.job_id} ({point.uri})"


def problems_message(problems: dict[int, tuple[str, ...]]) -> str | None:
    """The job message for what workers report retrying (None: nothing); masked, as a worker's
    problem may quote the connection string it cannot reach (the message is stored and shown)."""
    parts = [f"worker {i} {p}" for i, found in sorted(problems.items()) for p in found]
    return mask_secrets("Running with problems: " + "; ".join(parts)) if parts else None
