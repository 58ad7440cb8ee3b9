"""The control plane: job records, slots, runs of workers, their channel, restarts and queries.

Substrate-neutral: it starts workers through a ``Launcher``, keeps records in a ``JobStore`` and
asks ``lifecycle`` whether a change of status is legal. The native ``JobManager`` and the REST API
are thin doors onto one ``ControlPlane``.

A run is one attempt of a job: ``parallelism`` workers started together, each connecting back over
the control channel with a per-run token. A run ends when every worker has exited; how it ended
(all finished, stopped on request, or a failure) decides the next status.

Invariants (the tests in ``tests/integration/test_job_lifecycle.py`` hold them):

1. a job has at most one run, and is at most once in the queue; a pending automatic restart is
   replaced by a user's restart and dropped by a cancel;
2. a run holds its slots from launch until its workers are gone, however they died, and gives them
   back exactly once;
3. the snapshot a job's next or current run restores stays until that run has completed a
   snapshot of its own (``JobRecord.restore_point``); it cannot be deleted before;
4. the restart strategy's failure count and the due time of a pending restart are in the job
   store, so a control plane restart neither resets nor skips them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from heliosdb_streaming.control import lifecycle
from heliosdb_streaming.control.checkpoint_coordinator import (
    CheckpointCoordinator,
    CheckpointFailedError,
    RunEndedError,
)
from heliosdb_streaming.control.launcher import Launcher, WorkerHandle, WorkerSpec
from heliosdb_streaming.control.lifecycle import Event
from heliosdb_streaming.control.metrics import JobMetricsAggregator
from heliosdb_streaming.control.store import JobRecord, JobStore, SnapshotRecord
from heliosdb_streaming.embedded import private
from heliosdb_streaming.embedded.logs import JobLog
from heliosdb_streaming.model.config import JobConfig, JobConfigOverrides
from heliosdb_streaming.model.errors import (
    FieldError,
    IllegalStateTransitionError,
    InvalidJobConfigError,
    JobNotFoundError,
    JobRestartingError,
    SavepointFailedError,
    SavepointInUseError,
    SavepointNotFoundError,
)
from heliosdb_streaming.model.types import JobStatus
from heliosdb_streaming.runtime.checkpoint.storage import CheckpointStorage, storage_from_uri
from heliosdb_streaming.runtime.checkpoint.tasks import SnapshotLocation, locate_snapshot
from heliosdb_streaming.runtime.connectors.secrets import mask_secrets
from heliosdb_streaming.runtime.protocol import Channel

logger = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
METRICS_PERSIST_INTERVAL_S = 10.0
RESTART_WAIT_S = 30.0  # how long a savepoint asked for between two runs waits for the next one


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
    problems: dict[int, tuple[str, ...]] = field(default_factory=dict)  # by worker, from heartbeats
    problem_message: str | None = None  # the job message shown for them, and the one it replaced
    message_before_problems: str | None = None
    slots: int = 0  # taken at launch, given back once when the workers are gone

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

    def changed(self) -> None:
        """Wakes whoever waits for this job's run or status to change."""
        self.wakeup.set()
        self.wakeup = asyncio.Event()

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
        the newest completed one."""
        return self.pinned_point() or self.latest_restore_point()

    def restore(self, point: SnapshotRecord | None) -> None:
        """The next run restores ``point``, else the snapshot the job started from, else nothing.

        Recorded as the job's ``restore_point`` until the run completes a snapshot of its own.
        """
        start = self.record.start_from
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
        """The next run restores the newest state (``restore_point``), else the start snapshot."""
        self.restore(self.restore_point())

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


async def locate_start(location: str, field: str) -> SnapshotLocation:
    """The snapshot a new job is to start from, or ``InvalidJobConfigError`` at ``field`` saying why."""
    try:
        return await locate_snapshot(location)
    except ValueError as e:
        raise InvalidJobConfigError([FieldError(field, str(e))]) from None


def _describe_start(start: dict[str, Any]) -> str:
    point = SnapshotLocation(**start)
    what = f"savepoint {point.savepoint_id}" if point.savepoint_id else "checkpoint"
    return f"{what} of job {point.job_id} ({point.uri})"


def problems_message(problems: dict[int, tuple[str, ...]]) -> str | None:
    """The job message for what workers report retrying (None: nothing)."""
    parts = [f"worker {i} {p}" for i, found in sorted(problems.items()) for p in found]
    return "Running with problems: " + "; ".join(parts) if parts else None


class ControlPlane:
    def __init__(
        self,
        *,
        home: Path,
        store: JobStore,
        launcher: Launcher,
        max_parallelism: int,
        checkpoint_uri: str | None = None,
        control_host: str = "127.0.0.1",
        control_port: int = 0,
    ) -> None:
        self.home = home
        # where workers reach the control channel: loopback for local subprocesses; the operator
        # binds all interfaces on a fixed port so that pods can connect through its Service
        self.control_host = control_host
        self.control_port = control_port
        self.checkpoint_uri = checkpoint_uri or (home / "checkpoints").resolve().as_uri()
        self.store = store
        self.launcher = launcher
        self.max_parallelism = max_parallelism
        self.jobs: dict[str, JobEntry] = {}
        self.queue: list[str] = []  # job ids waiting for slots, FIFO, each at most once
        self.slots_in_use = 0
        self.restart_wait_s = RESTART_WAIT_S
        self._server: asyncio.Server | None = None
        self._tokens: dict[str, Run] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._persister: asyncio.Task[None] | None = None
        self._closed = False
        self.control_address = ""
        self.status_listeners: list[Callable[[str, JobStatus], None]] = []

    # -------------------------------------------------------------------------------- startup

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, self.control_host, self.control_port, limit=2**24
        )
        port = self._server.sockets[0].getsockname()[1]
        host = "127.0.0.1" if self.control_host in ("0.0.0.0", "", "::") else self.control_host
        self.control_address = f"{host}:{port}"
        snapshots: dict[str, list[SnapshotRecord]] = {}
        for snapshot in self.store.load_snapshots():
            snapshots.setdefault(snapshot.job_id, []).append(snapshot)
        for record in self.store.load_all():
            entry = self._entry_for(record)
            entry.snapshots = snapshots.get(record.job_id, [])
            self.jobs[record.job_id] = entry
            if not record.status.terminal:
                await self._recover(entry)
        self._persister = asyncio.create_task(self._persist_metrics_forever())
        self._schedule()

    async def _recover(self, entry: JobEntry) -> None:
        """A job that was active when the previous control plane died runs again."""
        from heliosdb_streaming.embedded.launcher import kill_stale_workers

        record = entry.record
        killed = kill_stale_workers(record.worker_pids, record.job_id)
        due = record.relaunch_at
        delay = max((due - utcnow()).total_seconds(), 0.0) if due is not None else 0.0
        entry.log.write(
            "warn" if record.status != JobStatus.SUBMITTED else "info",
            f"control plane restarted; job was {record.status.value}"
            + (f", stopped {killed} orphaned worker(s)" if killed else "")
            + (f"; its automatic restart is due in {delay:.1f}s" if delay else "; scheduling it again"),
        )
        entry.restore_latest()
        if delay:  # the restart strategy's backoff goes on where the previous control plane left it
            entry.relaunch = self._spawn(self._delayed_relaunch(entry, delay))
        else:
            self._enqueue(entry)

    def _entry_for(self, record: JobRecord) -> JobEntry:
        config = JobConfig.from_stored(record.config)  # not compiled again: fast, whatever the job holds
        metrics = JobMetricsAggregator.from_state(record.metrics_state)
        log = JobLog(self.job_dir(record.job_id) / "job.log")
        return JobEntry(record=record, config=config, metrics=metrics, log=log)

    def storage_for(self, entry: JobEntry) -> CheckpointStorage:
        if entry.storage is None:
            entry.storage = storage_from_uri(entry.config.checkpoint_storage or self.checkpoint_uri)
        return entry.storage

    def checkpoint_uri_for(self, entry: JobEntry) -> str:
        return entry.config.checkpoint_storage or self.checkpoint_uri

    def job_dir(self, job_id: str) -> Path:
        return self.home / "jobs" / job_id

    async def close(self) -> None:
        """Stops every run (jobs keep their status, to resume on the next start) and the server."""
        if self._closed:
            return
        self._closed = True
        runs = [e.run for e in self.jobs.values() if e.run is not None]
        await asyncio.gather(*(self._stop_run(run, "shutdown") for run in runs), return_exceptions=True)
        if self._persister:
            self._persister.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for entry in self.jobs.values():
            entry.record.metrics_state = entry.metrics.to_state()
            self.store.save(entry.record)
            entry.log.close()
        if self._server:
            self._server.close()
            await self._server.wait_closed()
        self.store.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -------------------------------------------------------------------------------- commands

    def submit(
        self, config: JobConfig, job_id: str | None = None, start_from: SnapshotLocation | None = None
    ) -> JobRecord:
        """Records and queues a job. A caller-chosen ``job_id`` makes a retried submit idempotent.

        With ``start_from`` (``checkpoint.tasks.locate_snapshot``) the job starts from another job's
        savepoint or retained checkpoint, as Flink's ``--fromSavepoint``: source positions and state
        whose operator and split still exist are restored, the rest starts empty. It stays the job's
        restore point until the job has a snapshot of its own.
        """
        if job_id is not None and job_id in self.jobs:
            return self.jobs[job_id].record
        if start_from is not None:
            self._check_start_exists(start_from)
        if config.parallelism > self.max_parallelism:
            raise InvalidJobConfigError(
                [
                    FieldError(
                        "config.parallelism",
                        f"{config.parallelism} exceeds this control plane's max_parallelism "
                        f"{self.max_parallelism}",
                    )
                ]
            )
        job_id = job_id or f"job-{uuid.uuid4()}"
        record = JobRecord(
            job_id=job_id,
            name=config.name,
            status=JobStatus.SUBMITTED,
            config=config.to_dict(),
            submitted_at=utcnow(),
            start_from=dataclasses.asdict(start_from) if start_from else None,
        )
        self.store.save(record)
        entry = JobEntry(
            record=record,
            config=config,
            metrics=JobMetricsAggregator(),
            log=JobLog(self.job_dir(job_id) / "job.log"),
        )
        self.jobs[job_id] = entry
        entry.restore_latest()
        self.store.save(record)  # with its restore point: the savepoint it starts from is now in use
        starting = f", starting from {_describe_start(record.start_from)}" if record.start_from else ""
        entry.log.write("info", f"Job {config.name!r} submitted (parallelism {config.parallelism}){starting}")
        self._enqueue(entry)
        self._schedule()
        return record

    def _check_start_exists(self, start: SnapshotLocation) -> None:
        """A savepoint of a job of this control plane that was deleted since ``locate_start`` read it."""
        owner = self.jobs.get(start.job_id)
        if owner is None or start.savepoint_id is None:
            return
        snapshot = owner.savepoint(start.savepoint_id)
        if snapshot is None or snapshot.directory != start.directory:
            raise InvalidJobConfigError(
                [
                    FieldError(
                        "from_savepoint", f"savepoint {start.savepoint_id} of job {start.job_id} was deleted"
                    )
                ]
            )

    def get(self, job_id: str) -> JobEntry:
        entry = self.jobs.get(job_id)
        if entry is None:
            raise JobNotFoundError(job_id)
        return entry

    async def cancel(self, job_id: str) -> JobRecord:
        entry = self.get(job_id)
        async with entry.lock:
            record = entry.record
            self._check(entry, Event.CANCEL, "cancel")
            self._cancel_relaunch(entry)
            self._dequeue(entry)  # first: the run's end frees slots, and must not start the job again
            if entry.run is not None:
                await self._stop_run(entry.run, "cancel")
            self._set_status(entry, Event.CANCEL, "Job cancelled")
            return record

    async def pause(self, job_id: str) -> None:
        entry = self.get(job_id)
        async with entry.lock:
            self._check(entry, Event.PAUSE, "pause")
            run = entry.run
            if run is not None:
                run.paused = True
                await self._broadcast(run, {"type": "pause"})
            self._set_status(entry, Event.PAUSE, "Job paused: sources stopped, state kept")

    async def resume(self, job_id: str) -> None:
        entry = self.get(job_id)
        async with entry.lock:
            self._check(entry, Event.RESUME, "resume")
            run = entry.run
            if run is not None:
                run.paused = False
                await self._broadcast(run, {"type": "resume"})
            self._set_status(entry, Event.RESUME, "Job resumed")

    def _check(self, entry: JobEntry, event: Event, action: str) -> None:
        if lifecycle.next_status(entry.record.status, event) is None:
            raise IllegalStateTransitionError(entry.record.job_id, entry.record.status.value, action)

    def _set_status(
        self, entry: JobEntry, event: Event, message: str | None = None, level: str = "info"
    ) -> None:
        record = entry.record
        new = lifecycle.next_status(record.status, event)
        if new is None:
            raise IllegalStateTransitionError(record.job_id, record.status.value, event.value)
        now = utcnow()
        if new == JobStatus.RUNNING and record.started_at is None:
            record.started_at = now
        if new.terminal:
            record.finished_at = now
            record.worker_pids = []
        if new == JobStatus.SUBMITTED:
            record.finished_at = None
        record.status = new
        if message:
            record.message = mask_secrets(message)  # a worker's error may quote a connection string
            entry.log.write(level, message)
        record.metrics_state = entry.metrics.to_state()
        self.store.save(record)
        entry.changed()
        for listener in self.status_listeners:
            listener(record.job_id, new)

    # -------------------------------------------------------------------------------- scheduling

    def _enqueue(self, entry: JobEntry, *, front: bool = False) -> None:
        """Queues the job for a run, unless it is queued already or has one (invariant 1)."""
        job_id = entry.record.job_id
        if job_id in self.queue or entry.run is not None:
            return
        if front:
            self.queue.insert(0, job_id)
        else:
            self.queue.append(job_id)

    def _dequeue(self, entry: JobEntry) -> None:
        if entry.record.job_id in self.queue:
            self.queue.remove(entry.record.job_id)
        entry.waiting_reason = None

    def _cancel_relaunch(self, entry: JobEntry) -> None:
        """Drops the pending automatic restart (a user's restart or cancel replaces it)."""
        self._cancel_relaunch_task(entry)
        entry.record.relaunch_at = None

    def _cancel_relaunch_task(self, entry: JobEntry) -> None:
        if entry.relaunch is not None:
            entry.relaunch.cancel()
            entry.relaunch = None

    def _schedule(self) -> None:
        """Starts queued jobs, first come first served, while their parallelism fits the free slots.

        Every job that still waits then says why, with its place in the queue.
        """
        if self._closed:
            return
        for job_id in list(self.queue):
            entry = self.jobs[job_id]
            if entry.run is not None or entry.record.status.terminal:
                self.queue.remove(job_id)  # defensive: invariant 1 says this never happens
                logger.warning(
                    "job %s was queued while it %s", job_id, "runs" if entry.run else "is terminal"
                )
                continue
            need = entry.config.parallelism
            if need > self.max_parallelism - self.slots_in_use:
                break  # FIFO: do not let smaller jobs starve a bigger one
            self.queue.remove(job_id)
            entry.waiting_reason = None
            self.slots_in_use += need
            self._spawn(self._launch(entry, self._new_run(entry, slots=need)))
        free = self.max_parallelism - self.slots_in_use
        for position, job_id in enumerate(self.queue, start=1):
            entry = self.jobs[job_id]
            need = entry.config.parallelism
            reason = (
                f"waiting for slots: needs {need}, {free} of {self.max_parallelism} free, "
                f"position {position} in the queue"
            )
            if entry.waiting_reason != reason:
                entry.waiting_reason = reason
                entry.record.message = reason
                self.store.save(entry.record)
                entry.log.write("info", reason)

    def _new_run(self, entry: JobEntry, *, slots: int) -> Run:
        """The job's run, set at once: a cancel before its workers start finds it and stops it."""
        record = entry.record
        record.attempt += 1
        record.relaunch_at = None
        run = Run(
            job_id=record.job_id,
            attempt=record.attempt,
            token=secrets.token_urlsafe(24),
            parallelism=entry.config.parallelism,
            paused=record.status == JobStatus.PAUSED,
            slots=slots,
        )
        entry.run = run
        return run

    async def _launch(self, entry: JobEntry, run: Run) -> None:
        """Starts the run that ``_schedule`` took slots for; its supervisor gives them back."""
        try:
            await self._start_workers(entry, run)
        finally:
            if run.supervisor is None:  # nothing will wait for these workers: give everything back
                for handle in run.handles.values():
                    handle.kill()
                self._end_run(entry, run)

    async def _start_workers(self, entry: JobEntry, run: Run) -> None:
        record = entry.record
        self._create_coordinator(entry, run)  # before any worker connects: a fast one may drain at once
        self._tokens[run.token] = run
        job_dir = self.job_dir(record.job_id)
        private.private_dir(job_dir)
        private.write_private(job_dir / "job.json", entry.config.model_dump_json().encode())
        try:
            for index in range(run.parallelism):
                spec = WorkerSpec(
                    record.job_id,
                    job_dir,
                    index,
                    run.attempt,
                    self.control_address,
                    run.token,
                    checkpoint_uri=self.checkpoint_uri_for(entry),
                    restore_from=entry.restore_from,
                    restore_storage=entry.restore_storage,
                )
                run.handles[index] = await self.launcher.launch(spec)
        except Exception as e:
            for handle in run.handles.values():
                handle.kill()
            entry.log.write("error", f"could not start workers: {e}")
            run.outcomes[0] = ("failed", f"could not start workers: {e}")
        if run.stop_requested is not None:
            # cancelled while its workers were starting: nobody could tell them to stop yet
            for handle in run.handles.values():
                handle.kill()
        record.worker_pids = [h.pid for h in run.handles.values()]
        self.store.save(record)
        restored = f", restoring {entry.restore_from}" if entry.restore_from else ""
        if entry.restore_storage:
            restored += f" of {entry.restore_storage}"
        entry.log.write("info", f"Run {run.attempt}: started {len(run.handles)} worker(s){restored}")
        run.supervisor = self._spawn(self._supervise(entry, run))

    async def _supervise(self, entry: JobEntry, run: Run) -> None:
        """Waits for the run's workers, then decides what the job does next."""
        try:
            await self._watch_run(entry, run)
        finally:  # however the watch ended, the run's slots and token go (invariant 2)
            entry.metrics.forget_workers()
            self._end_run(entry, run)
        if run.stop_requested is not None:
            return  # whoever stopped the run decides the status
        async with entry.lock:
            await self._after_run(entry, run)

    async def _watch_run(self, entry: JobEntry, run: Run) -> None:
        """Until every worker of the run has exited and its last messages are read."""
        record = entry.record

        async def watch(index: int, handle: WorkerHandle) -> None:
            code = await handle.wait()
            run.exit_codes[index] = code
            if run.stop_requested is not None:
                return
            if code == 0:
                # 'finished' may still be unread; a clean exit without it was a stop from outside
                # (SIGTERM, `kubectl delete pod`): the others cannot go on without this worker's splits
                drained = run.drained_channels.get(index)
                if drained is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(drained.wait(), 5)
                if run.stop_requested is not None or run.outcomes.get(index, ("",))[0] == "finished":
                    return
                entry.log.write("error", f"worker {index} stopped without being asked to (terminated?)")
            else:
                reported = run.outcomes.get(index, ("", None))[1]
                entry.log.write(
                    "error",
                    f"worker {index} exited with code {code}" + ("" if reported else " without a report"),
                )
            # one worker is gone: the run is over, stop the others at once
            for other in run.handles.values():
                if other is not handle:
                    other.kill()

        watchers = [asyncio.create_task(watch(i, h)) for i, h in run.handles.items()]
        connect_wait = asyncio.create_task(run.connected.wait())
        done: set[asyncio.Task[Any]] = set()
        if watchers:  # none: no worker could be started, nothing can connect
            done, _ = await asyncio.wait([connect_wait, *watchers], return_when=asyncio.FIRST_COMPLETED)
        if connect_wait in done and run.stop_requested is None:
            async with entry.lock:
                if record.status == JobStatus.SUBMITTED:
                    self._set_status(entry, Event.START, "Job started successfully")
                elif record.status in (JobStatus.RUNNING, JobStatus.PAUSED):
                    entry.log.write("info", f"Run {run.attempt} running")
                entry.changed()
                if run.paused:
                    await self._broadcast(run, {"type": "pause"})
                interval = entry.config.checkpoint_interval_ms / 1000
                assert run.coordinator is not None
                run.checkpointer = self._spawn(run.coordinator.periodic(interval, lambda: run.paused))
        await asyncio.gather(*watchers)
        connect_wait.cancel()
        # a worker's last messages ('finished', its final heartbeat) may still be unread when it exits
        pending_reads = [e.wait() for e in run.drained_channels.values()]
        if pending_reads:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*pending_reads), 5)
        if run.checkpointer is not None:
            run.checkpointer.cancel()
        if run.coordinator is not None:
            run.coordinator.close("the run ended")
        self._tokens.pop(run.token, None)
        for channel in run.channels.values():
            await channel.close()

    def _end_run(self, entry: JobEntry, run: Run) -> None:
        """The run's workers are gone: its token, its checkpoints and its slots go too (once)."""
        self._tokens.pop(run.token, None)
        if run.coordinator is not None and run.coordinator.ended is None:
            run.coordinator.close("the run ended")
        if entry.run is run:
            entry.run = None
        if run.slots:
            self.slots_in_use -= run.slots
            run.slots = 0
        entry.changed()
        self._schedule()

    async def _after_run(self, entry: JobEntry, run: Run) -> None:
        record = entry.record
        failures = {
            i: (run.outcomes.get(i, ("failed", None))[1] or (f"exit code {code}" if code else "stopped"))
            for i, code in run.exit_codes.items()
            if code != 0 or run.outcomes.get(i, ("", None))[0] != "finished"
        }
        for i, (kind, why) in run.outcomes.items():  # workers that could not even be started
            if kind == "failed" and i not in run.exit_codes:
                failures[i] = why or "failed"
        if (
            not failures
            and run.handles
            and all(run.outcomes.get(i, ("",))[0] == "finished" for i in run.handles)
        ):
            self._set_status(entry, Event.FINISH, "Job finished: all splits read and all sinks flushed")
            self._schedule()
            return
        reason = "; ".join(f"worker {i}: {why}" for i, why in sorted(failures.items())) or "workers stopped"
        strategy = entry.config.restart_strategy
        if record.status in (JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.SUBMITTED):
            if record.failures_since_restart < strategy.max_restarts():
                record.restarts += 1
                record.failures_since_restart += 1
                delay = strategy.delay_for(record.failures_since_restart)
                record.relaunch_at = utcnow() + timedelta(seconds=delay)  # saved with the status
                entry.restore_latest()
                self._set_status(
                    entry,
                    Event.RECOVER,
                    f"Job failed ({reason}); restart {record.failures_since_restart} of "
                    f"{strategy.max_restarts()} in {delay:g}s ({strategy.type})",
                    level="warn",
                )
                self._cancel_relaunch_task(entry)
                entry.relaunch = self._spawn(self._delayed_relaunch(entry, delay))
                return
            exhausted = (
                f"restart strategy {strategy.type} exhausted after {record.failures_since_restart} restart(s)"
                if strategy.max_restarts()
                else "restart strategy is none"
            )
            self._set_status(entry, Event.FAIL, f"Job failed: {reason}; {exhausted}", level="error")
        self._schedule()

    async def _delayed_relaunch(self, entry: JobEntry, delay: float) -> None:
        """The restart strategy's restart: queued first once its delay is over."""
        await asyncio.sleep(delay)
        if entry.relaunch is asyncio.current_task():
            entry.relaunch = None
        if entry.record.status.terminal or self._closed or entry.run is not None:
            return
        self._enqueue(entry, front=True)
        self._schedule()

    async def _stop_run(self, run: Run, why: str) -> None:
        """Asks every worker to stop, kills those that do not within the grace period, waits."""
        run.stop_requested = why
        await self._broadcast(run, {"type": "stop"})
        supervisor = run.supervisor
        if supervisor is None:
            for handle in run.handles.values():
                handle.kill()
            return
        try:
            await asyncio.wait_for(asyncio.shield(supervisor), STOP_GRACE_S)
        except TimeoutError:
            for handle in run.handles.values():
                handle.kill()
            with contextlib.suppress(Exception):
                await supervisor

    async def _broadcast(self, run: Run, message: dict[str, Any]) -> None:
        for channel in list(run.channels.values()):
            with contextlib.suppress(ConnectionError, OSError):
                await channel.send(message)

    # -------------------------------------------------------------------------------- channel

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel = Channel(reader, writer)
        try:
            hello = await asyncio.wait_for(channel.receive(), 10)
        except (TimeoutError, ValueError, ConnectionError, orjson.JSONDecodeError):
            hello = None
        run = self._tokens.get(str((hello or {}).get("token", "")))
        if hello is None or run is None or hello.get("job_id") != run.job_id:
            await channel.close()
            return
        index = int(hello["index"])
        entry = self.jobs[run.job_id]
        run.channels[index] = channel
        drained = run.drained_channels.setdefault(index, asyncio.Event())
        if run.stop_requested is not None:
            await channel.send({"type": "stop"})
        if len(run.channels) == run.parallelism:
            run.connected.set()
        try:
            while True:
                message = await channel.receive()
                if message is None:
                    break
                await self._on_message(entry, run, index, message)
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            drained.set()
            await channel.close()

    async def _on_message(self, entry: JobEntry, run: Run, index: int, message: dict[str, Any]) -> None:
        kind = message.get("type")
        coordinator = run.coordinator
        if kind == "ack" and coordinator is not None:
            await coordinator.on_ack(index, message)
        elif kind == "checkpoint_failed" and coordinator is not None:
            coordinator.on_worker_failed(index, message)
        elif kind == "drained" and coordinator is not None:
            if coordinator.on_drained(index):
                self._spawn(self._final_checkpoint(entry, run))
        elif kind == "heartbeat":
            entry.metrics.on_heartbeat(run.attempt, index, message)
            self._on_problems(entry, run, index, message.get("problems"))
        elif kind == "log":
            entry.log.write(
                str(message.get("level", "info")),
                str(message.get("message", "")),
                message.get("task_id"),
                message.get("ts"),
                worker=index,
            )
        elif kind in ("finished", "stopped", "failed"):
            run.outcomes[index] = (kind, message.get("error"))

    def _on_problems(self, entry: JobEntry, run: Run, index: int, reported: Any) -> None:
        """Shows what a run's workers are retrying (a broker out of reach) in the job's message and
        log while it lasts, and puts the message back once it is over."""
        problems = tuple(str(p) for p in reported or ())
        if run.problems.get(index, ()) == problems:
            return
        run.problems[index] = problems
        record = entry.record
        if record.status.terminal:
            return
        text = problems_message(run.problems)
        if text is not None:
            if record.message != text:
                if record.message != run.problem_message:
                    run.message_before_problems = record.message
                record.message = run.problem_message = text
                entry.log.write("warn", text)
                self.store.save(record)
            return
        entry.log.write("info", "Recovered: every worker reports its connectors working")
        if run.problem_message is not None and record.message == run.problem_message:
            record.message = run.message_before_problems
            self.store.save(record)
        run.problem_message = run.message_before_problems = None

    # -------------------------------------------------------------------------------- checkpoints

    def _create_coordinator(self, entry: JobEntry, run: Run) -> None:
        record = entry.record

        def next_id() -> int:
            record.last_checkpoint_id += 1
            self.store.save(record)
            return record.last_checkpoint_id

        async def send(message: dict[str, Any]) -> None:
            await self._broadcast(run, message)

        run.coordinator = CheckpointCoordinator(
            job_id=record.job_id,
            parallelism=run.parallelism,
            storage=self.storage_for(entry),
            next_id=next_id,
            send=send,
            on_complete=lambda snap: self._checkpoint_completed(entry, snap),
            on_failed=lambda snap, why: self._checkpoint_failed(entry, snap, why),
            retained=entry.config.checkpoints_retained,
            retained_snapshots=lambda: list(entry.snapshots),
            forget=lambda snap: self._forget_snapshot(entry, snap),
        )

    def _checkpoint_completed(self, entry: JobEntry, snapshot: SnapshotRecord) -> None:
        self.store.save_snapshot(snapshot)
        entry.snapshots.append(snapshot)
        if entry.record.restore_point is not None:  # the job no longer needs what it restored
            entry.record.restore_point = None
            self.store.save(entry.record)
        metrics = entry.metrics
        metrics.checkpoint_count += 1
        metrics.last_checkpoint_duration_ms = snapshot.duration_ms
        metrics.record_checkpoint_duration(snapshot.duration_ms)
        what = (
            f"Savepoint {snapshot.savepoint_id}"
            if snapshot.savepoint_id
            else f"Checkpoint {snapshot.checkpoint_id}"
        )
        entry.log.write("info", f"{what} completed ({snapshot.duration_ms}ms, {snapshot.size_bytes} bytes)")

    def _checkpoint_failed(self, entry: JobEntry, snapshot: SnapshotRecord, reason: str) -> None:
        entry.metrics.checkpoint_failures += 1
        failed = [s for s in entry.snapshots if s.status == "failed"]
        if len(failed) >= 10:  # keep the recent failures for the API, not all of them
            entry.snapshots.remove(failed[0])
        entry.snapshots.append(snapshot)
        what = "Savepoint" if snapshot.kind == "savepoint" else f"Checkpoint {snapshot.checkpoint_id}"
        entry.log.write("warn", f"{what} failed: {reason}")

    def _forget_snapshot(self, entry: JobEntry, snapshot: SnapshotRecord) -> None:
        self.store.delete_snapshot(snapshot.job_id, snapshot.checkpoint_id)
        if snapshot in entry.snapshots:
            entry.snapshots.remove(snapshot)

    async def _final_checkpoint(self, entry: JobEntry, run: Run) -> None:
        """Every split is exhausted: one last checkpoint commits the remaining output, then workers finish."""
        coordinator = run.coordinator
        assert coordinator is not None
        for attempt in range(1, 4):
            try:
                await coordinator.trigger("checkpoint", final=True)
                return
            except CheckpointFailedError as e:
                entry.log.write("warn", f"final checkpoint attempt {attempt} failed: {e}")
        entry.log.write("error", "final checkpoint failed three times; stopping the run")
        for handle in run.handles.values():
            handle.kill()

    async def _ready_run(self, entry: JobEntry, action: str) -> Run:
        """The job's run once it can act; between two runs, waits up to ``restart_wait_s`` for the next.

        A job that never ran (waiting for slots) or is terminal is refused at once; a job that is
        still between runs when the wait is over answers ``JobRestartingError``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.restart_wait_s
        while True:
            record, run = entry.record, entry.run
            between_runs = record.status in (JobStatus.RUNNING, JobStatus.PAUSED) or (
                record.status == JobStatus.SUBMITTED and record.attempt > 0
            )
            if not between_runs:
                raise IllegalStateTransitionError(record.job_id, record.status.value, action)
            if run is not None and run.ready() and record.status != JobStatus.SUBMITTED:
                return run
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise JobRestartingError(
                    record.job_id,
                    action,
                    f"it is restarting (no run ready within {self.restart_wait_s:g}s); try again later",
                )
            wakeup = entry.wakeup
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), remaining)

    async def savepoint(
        self, job_id: str, description: str | None, *, stop_after: bool = False
    ) -> SnapshotRecord:
        """Takes a savepoint of a running or paused job; with ``stop_after`` the workers stop right after.

        Between two runs (restart delay, a restart in progress) it waits for the next run, bounded.
        """
        entry = self.get(job_id)
        action = "take a savepoint of"
        run = await self._ready_run(entry, action)
        assert run.coordinator is not None
        if stop_after:
            run.stop_requested = "cancel"  # the workers stop by themselves once the savepoint completes
        try:
            return await run.coordinator.trigger("savepoint", description=description, stop_after=stop_after)
        except RunEndedError:
            if stop_after and run.stop_requested == "cancel":
                run.stop_requested = None
            raise JobRestartingError(
                job_id, action, "its run ended before the savepoint could start; the job is between runs"
            ) from None
        except CheckpointFailedError as e:
            if stop_after:
                run.stop_requested = None
            raise SavepointFailedError(job_id, str(e)) from None

    def _restorers(self, snapshot: SnapshotRecord) -> list[str]:
        """The jobs that still need ``snapshot`` (``JobEntry.restores``), this one included."""
        return [e.record.job_id for e in self.jobs.values() if e.restores(snapshot.directory)]

    async def delete_savepoint(self, job_id: str, savepoint_id: str) -> None:
        """Deletes a savepoint no job needs: one that a restart or a job started from it is restoring
        is kept (``SavepointInUseError``) until that job has a completed snapshot of its own."""
        entry = self.get(job_id)
        snapshot = entry.savepoint(savepoint_id)
        if snapshot is None:
            raise SavepointNotFoundError(job_id, savepoint_id)
        users = self._restorers(snapshot)
        if users:
            raise SavepointInUseError(job_id, savepoint_id, users)
        snapshot.status = "deleting"  # no restart picks it from now on
        try:
            await self.storage_for(entry).delete_prefix(snapshot.directory)
        except BaseException:
            snapshot.status = "completed"
            raise
        self._forget_snapshot(entry, snapshot)
        entry.log.write("info", f"Savepoint {savepoint_id} deleted")

    async def cancel_with_savepoint(self, job_id: str) -> SnapshotRecord:
        """Stop-with-savepoint: the savepoint is the last thing the job does, so nothing runs past it."""
        entry = self.get(job_id)
        self._check(entry, Event.CANCEL, "cancel")
        if entry.record.status == JobStatus.SUBMITTED:
            raise IllegalStateTransitionError(job_id, entry.record.status.value, "cancel with a savepoint")
        snapshot = await self.savepoint(job_id, "savepoint on cancel", stop_after=True)
        await self.cancel(job_id)
        return snapshot

    async def restart(
        self,
        job_id: str,
        savepoint_id: str | None,
        overrides: JobConfigOverrides | None,
        *,
        pipeline: JobConfig | None = None,
    ) -> SnapshotRecord | None:
        """Restarts from a savepoint, or from the newest checkpoint/savepoint, with config overrides.

        ``pipeline``: an upgrade in place (the operator's restart of an edited StreamingJob): the job
        runs these sources, transformations and sinks from then on; state finds its steps as it does
        for a job started from a savepoint (by position and type).
        """
        entry = self.get(job_id)
        async with entry.lock:
            self._check(entry, Event.RESTART, "restart")
            point = entry.restore_point()
            if savepoint_id is not None:
                point = entry.savepoint(savepoint_id)
                if point is None:
                    raise SavepointNotFoundError(job_id, savepoint_id)
            base = entry.config
            if pipeline is not None:
                base = base.model_copy(
                    update={
                        "sources": pipeline.sources,
                        "transformations": pipeline.transformations,
                        "sinks": pipeline.sinks,
                    }
                )
            upgraded = pipeline is not None and base.to_dict() != entry.config.to_dict()
            config = base.with_overrides(overrides)
            if config.parallelism > self.max_parallelism:
                raise InvalidJobConfigError(
                    [
                        FieldError(
                            "config_overrides.parallelism", f"exceeds max_parallelism {self.max_parallelism}"
                        )
                    ]
                )
            self._cancel_relaunch(entry)  # this restart replaces a pending automatic one
            self._dequeue(entry)
            entry.restoring = point.directory if point is not None else None  # kept while we stop
            try:
                if entry.run is not None:
                    await self._stop_run(entry.run, "restart")
                entry.config = config
                entry.record.config = config.to_dict()
                entry.restore(point)  # None: the snapshot it was started from, if any
            finally:
                entry.restoring = None
            entry.record.restarts += 1
            entry.record.failures_since_restart = 0
            entry.record.started_at = None
            start = entry.record.start_from
            origin = (
                f"savepoint {point.savepoint_id}"
                if point and point.savepoint_id
                else f"checkpoint {point.checkpoint_id}"
                if point
                else f"{_describe_start(start)} it was started from"
                if start
                else "the beginning (no checkpoint yet)"
            )
            changed = ", with a changed pipeline" if upgraded else ""
            self._set_status(
                entry,
                Event.RESTART,
                f"Job restarting from {origin} (parallelism {config.parallelism}){changed}",
            )
            self._enqueue(entry)
            self._schedule()
            return point

    # -------------------------------------------------------------------------------- persistence

    async def _persist_metrics_forever(self) -> None:
        while True:
            await asyncio.sleep(METRICS_PERSIST_INTERVAL_S)
            for entry in self.jobs.values():
                if entry.run is not None:
                    entry.record.metrics_state = entry.metrics.to_state()
                    self.store.save(entry.record)

    # -------------------------------------------------------------------------------- queries

    def uptime_seconds(self, record: JobRecord) -> int:
        if record.started_at is None:
            return 0
        end = record.finished_at or utcnow()
        return max(int((end - record.started_at).total_seconds()), 0)
