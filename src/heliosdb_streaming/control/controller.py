"""The control plane: job records, slots, runs of workers, their channel, restarts and queries.

Substrate-neutral: it starts workers through a ``Launcher``, keeps records in a ``JobStore`` and
asks ``lifecycle`` whether a change of status is legal. The native ``JobManager`` and the REST API
are thin doors onto one ``ControlPlane``.

A run is one attempt of a job: ``parallelism`` workers started together, each connecting back over
the control channel with a per-run token. A run ends when every worker has exited; how it ended
(all finished, stopped on request, or a failure) decides the next status.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from heliosdb_streaming.control import lifecycle
from heliosdb_streaming.control.coordinator import CheckpointCoordinator, CheckpointFailedError
from heliosdb_streaming.control.launcher import Launcher, WorkerHandle, WorkerSpec
from heliosdb_streaming.control.lifecycle import Event
from heliosdb_streaming.control.metrics import JobMetricsAggregator
from heliosdb_streaming.control.store import JobRecord, JobStore, SnapshotRecord
from heliosdb_streaming.job.config import JobConfig, JobConfigOverrides
from heliosdb_streaming.job.errors import (
    FieldError,
    IllegalStateTransitionError,
    InvalidJobConfigError,
    JobNotFoundError,
    SavepointFailedError,
    SavepointNotFoundError,
)
from heliosdb_streaming.job.types import JobStatus
from heliosdb_streaming.local.logs import JobLog
from heliosdb_streaming.runtime.checkpoint.storage import CheckpointStorage, storage_from_uri
from heliosdb_streaming.runtime.checkpointing import SnapshotLocation, locate_snapshot
from heliosdb_streaming.runtime.protocol import Channel

logger = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
METRICS_PERSIST_INTERVAL_S = 10.0


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


@dataclass(slots=True)
class JobEntry:
    record: JobRecord
    config: JobConfig
    metrics: JobMetricsAggregator
    log: JobLog
    run: Run | None = None
    waiting_reason: str | None = None
    slots: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    snapshots: list[SnapshotRecord] = field(default_factory=list)
    restore_from: str | None = None  # directory the next run restores from (None: fresh start)
    restore_storage: str | None = None  # the storage restore_from is in (None: the job's own)
    storage: CheckpointStorage | None = None

    def latest_restore_point(self) -> SnapshotRecord | None:
        """The newest completed checkpoint or savepoint (ids grow, so the newest has the largest id)."""
        done = [s for s in self.snapshots if s.status == "completed"]
        return max(done, key=lambda s: s.checkpoint_id) if done else None

    def restore_latest(self) -> None:
        """The next run restores the newest own snapshot, else the snapshot the job started from."""
        point = self.latest_restore_point()
        start = self.record.start_from
        if point is None and start is not None:
            self.restore_from, self.restore_storage = str(start["directory"]), str(start["storage_uri"])
        else:
            self.restore_from, self.restore_storage = (point.directory if point else None), None

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
        self.queue: list[str] = []  # job ids waiting for slots, FIFO
        self.slots_in_use = 0
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
        from heliosdb_streaming.local.launcher import kill_stale_workers

        record = entry.record
        killed = kill_stale_workers(record.worker_pids, record.job_id)
        entry.log.write(
            "warn" if record.status != JobStatus.SUBMITTED else "info",
            f"control plane restarted; job was {record.status.value}"
            + (f", stopped {killed} orphaned worker(s)" if killed else "")
            + "; scheduling it again",
        )
        entry.restore_latest()
        self.queue.append(record.job_id)

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

        With ``start_from`` (``checkpointing.locate_snapshot``) the job starts from another job's
        savepoint or retained checkpoint, as Flink's ``--fromSavepoint``: source positions and state
        whose operator and split still exist are restored, the rest starts empty. It stays the job's
        restore point until the job has a snapshot of its own.
        """
        if job_id is not None and job_id in self.jobs:
            return self.jobs[job_id].record
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
        starting = f", starting from {_describe_start(record.start_from)}" if record.start_from else ""
        entry.log.write("info", f"Job {config.name!r} submitted (parallelism {config.parallelism}){starting}")
        self.queue.append(job_id)
        self._schedule()
        return record

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
            if entry.run is not None:
                await self._stop_run(entry.run, "cancel")
            if job_id in self.queue:
                self.queue.remove(job_id)
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
            record.message = message
            entry.log.write(level, message)
        record.metrics_state = entry.metrics.to_state()
        self.store.save(record)
        for listener in self.status_listeners:
            listener(record.job_id, new)

    # -------------------------------------------------------------------------------- scheduling

    def _schedule(self) -> None:
        """Starts queued jobs, first come first served, while their parallelism fits the free slots."""
        if self._closed:
            return
        for job_id in list(self.queue):
            entry = self.jobs[job_id]
            need = entry.config.parallelism
            free = self.max_parallelism - self.slots_in_use
            if need > free:
                reason = f"waiting for slots: needs {need}, {free} of {self.max_parallelism} free"
                if entry.waiting_reason != reason:
                    entry.waiting_reason = reason
                    entry.record.message = reason
                    entry.log.write("info", reason)
                break  # FIFO: do not let smaller jobs starve a bigger one
            self.queue.remove(job_id)
            entry.waiting_reason = None
            entry.slots = need
            self.slots_in_use += need
            self._spawn(self._launch(entry))

    async def _launch(self, entry: JobEntry, restore_paused: bool = False) -> None:
        record = entry.record
        record.attempt += 1
        run = Run(
            job_id=record.job_id,
            attempt=record.attempt,
            token=secrets.token_urlsafe(24),
            parallelism=entry.config.parallelism,
            paused=record.status == JobStatus.PAUSED or restore_paused,
        )
        entry.run = run
        self._create_coordinator(entry, run)  # before any worker connects: a fast one may drain at once
        self._tokens[run.token] = run
        job_dir = self.job_dir(record.job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "job.json").write_bytes(entry.config.model_dump_json().encode())
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
        done, _ = await asyncio.wait([connect_wait, *watchers], return_when=asyncio.FIRST_COMPLETED)
        if connect_wait in done and run.stop_requested is None:
            async with entry.lock:
                if record.status == JobStatus.SUBMITTED:
                    self._set_status(entry, Event.START, "Job started successfully")
                elif record.status in (JobStatus.RUNNING, JobStatus.PAUSED):
                    entry.log.write("info", f"Run {run.attempt} running")
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
        if run.coordinator is not None and run.coordinator.pending is not None:
            run.coordinator._fail(run.coordinator.pending, "the run ended")
        self._tokens.pop(run.token, None)
        for channel in run.channels.values():
            await channel.close()
        entry.metrics.forget_workers()
        entry.run = None
        self._release(entry)
        if run.stop_requested is not None:
            return  # whoever stopped the run decides the status
        async with entry.lock:
            await self._after_run(entry, run)

    def _release(self, entry: JobEntry) -> None:
        self.slots_in_use -= entry.slots
        entry.slots = 0
        self._schedule()

    async def _after_run(self, entry: JobEntry, run: Run) -> None:
        record = entry.record
        failures = {
            i: (run.outcomes.get(i, ("failed", None))[1] or (f"exit code {code}" if code else "stopped"))
            for i, code in run.exit_codes.items()
            if code != 0 or run.outcomes.get(i, ("", None))[0] != "finished"
        }
        if not failures and all(run.outcomes.get(i, ("",))[0] == "finished" for i in run.handles):
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
                self._set_status(
                    entry,
                    Event.RECOVER,
                    f"Job failed ({reason}); restart {record.failures_since_restart} of "
                    f"{strategy.max_restarts()} in {delay:g}s ({strategy.type})",
                    level="warn",
                )
                entry.restore_latest()
                self._spawn(self._delayed_relaunch(entry, delay))
                return
            exhausted = (
                f"restart strategy {strategy.type} exhausted after {record.failures_since_restart} restart(s)"
                if strategy.max_restarts()
                else "restart strategy is none"
            )
            self._set_status(entry, Event.FAIL, f"Job failed: {reason}; {exhausted}", level="error")
        self._schedule()

    async def _delayed_relaunch(self, entry: JobEntry, delay: float) -> None:
        await asyncio.sleep(delay)
        if entry.record.status.terminal or self._closed or entry.run is not None:
            return
        self.queue.insert(0, entry.record.job_id)
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

    async def savepoint(
        self, job_id: str, description: str | None, *, stop_after: bool = False
    ) -> SnapshotRecord:
        """Takes a savepoint of a running or paused job; with ``stop_after`` the workers stop right after."""
        entry = self.get(job_id)
        run = entry.run
        if entry.record.status not in (JobStatus.RUNNING, JobStatus.PAUSED) or run is None:
            raise IllegalStateTransitionError(job_id, entry.record.status.value, "take a savepoint of")
        if not run.connected.is_set() or run.coordinator is None:
            raise IllegalStateTransitionError(job_id, "starting", "take a savepoint of")
        if stop_after:
            run.stop_requested = "cancel"  # the workers stop by themselves once the savepoint completes
        try:
            return await run.coordinator.trigger("savepoint", description=description, stop_after=stop_after)
        except CheckpointFailedError as e:
            if stop_after:
                run.stop_requested = None
            raise SavepointFailedError(job_id, str(e)) from None

    async def delete_savepoint(self, job_id: str, savepoint_id: str) -> None:
        entry = self.get(job_id)
        snapshot = entry.savepoint(savepoint_id)
        if snapshot is None:
            raise SavepointNotFoundError(job_id, savepoint_id)
        await self.storage_for(entry).delete_prefix(snapshot.directory)
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
            point = entry.latest_restore_point()
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
            if entry.run is not None:
                await self._stop_run(entry.run, "restart")
            entry.config = config
            entry.record.config = config.to_dict()
            if point is None:
                entry.restore_latest()  # the snapshot it was started from, if any
            else:
                entry.restore_from, entry.restore_storage = point.directory, None
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
            self.queue.append(job_id)
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
