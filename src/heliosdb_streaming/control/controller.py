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
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from heliosdb_streaming.control import lifecycle
from heliosdb_streaming.control.launcher import Launcher, WorkerHandle, WorkerSpec
from heliosdb_streaming.control.lifecycle import Event
from heliosdb_streaming.control.metrics import JobMetricsAggregator
from heliosdb_streaming.control.store import JobRecord, JobStore
from heliosdb_streaming.job.config import JobConfig
from heliosdb_streaming.job.errors import (
    FieldError,
    IllegalStateTransitionError,
    InvalidJobConfigError,
    JobNotFoundError,
)
from heliosdb_streaming.job.types import JobStatus
from heliosdb_streaming.local.logs import JobLog
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
    outcomes: dict[int, tuple[str, str | None]] = field(default_factory=dict)
    exit_codes: dict[int, int] = field(default_factory=dict)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    stop_requested: str | None = None  # why: "cancel", "shutdown", "restart"
    paused: bool = False
    supervisor: asyncio.Task[None] | None = None


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


def utcnow() -> datetime:
    return datetime.now(UTC)


class ControlPlane:
    def __init__(self, *, home: Path, store: JobStore, launcher: Launcher, max_parallelism: int) -> None:
        self.home = home
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
        self._server = await asyncio.start_server(self._on_connection, "127.0.0.1", 0, limit=2**24)
        port = self._server.sockets[0].getsockname()[1]
        self.control_address = f"127.0.0.1:{port}"
        for record in self.store.load_all():
            entry = self._entry_for(record)
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
        self.queue.append(record.job_id)

    def _entry_for(self, record: JobRecord) -> JobEntry:
        config = JobConfig.from_dict(record.config)
        metrics = JobMetricsAggregator.from_state(record.metrics_state)
        log = JobLog(self.job_dir(record.job_id) / "job.log")
        return JobEntry(record=record, config=config, metrics=metrics, log=log)

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

    def submit(self, config: JobConfig) -> JobRecord:
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
        job_id = f"job-{uuid.uuid4()}"
        record = JobRecord(
            job_id=job_id,
            name=config.name,
            status=JobStatus.SUBMITTED,
            config=config.to_dict(),
            submitted_at=utcnow(),
        )
        self.store.save(record)
        entry = JobEntry(
            record=record,
            config=config,
            metrics=JobMetricsAggregator(),
            log=JobLog(self.job_dir(job_id) / "job.log"),
        )
        self.jobs[job_id] = entry
        entry.log.write("info", f"Job {config.name!r} submitted (parallelism {config.parallelism})")
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

    def _set_status(self, entry: JobEntry, event: Event, message: str | None = None, level: str = "info") -> None:
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
                reason = (
                    f"waiting for slots: needs {need}, {free} of {self.max_parallelism} free"
                )
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
        self._tokens[run.token] = run
        job_dir = self.job_dir(record.job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "job.json").write_bytes(entry.config.model_dump_json().encode())
        try:
            for index in range(run.parallelism):
                spec = WorkerSpec(record.job_id, job_dir, index, run.attempt, self.control_address, run.token)
                run.handles[index] = await self.launcher.launch(spec)
        except Exception as e:
            for handle in run.handles.values():
                handle.kill()
            entry.log.write("error", f"could not start workers: {e}")
            run.outcomes[0] = ("failed", f"could not start workers: {e}")
        record.worker_pids = [h.pid for h in run.handles.values()]
        self.store.save(record)
        entry.log.write("info", f"Run {run.attempt}: started {len(run.handles)} worker(s)")
        run.supervisor = self._spawn(self._supervise(entry, run))

    async def _supervise(self, entry: JobEntry, run: Run) -> None:
        """Waits for the run's workers, then decides what the job does next."""
        record = entry.record

        async def watch(index: int, handle: WorkerHandle) -> None:
            code = await handle.wait()
            run.exit_codes[index] = code
            if code != 0 and run.stop_requested is None:
                # one worker failed: the run is over, stop the others at once
                reported = run.outcomes.get(index, ("", None))[1]
                entry.log.write("error", f"worker {index} exited with code {code}" + ("" if reported else " without a report"))
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
        await asyncio.gather(*watchers)
        connect_wait.cancel()
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
            i: (run.outcomes.get(i, ("failed", None))[1] or f"exit code {code}")
            for i, code in run.exit_codes.items()
            if code != 0 or run.outcomes.get(i, ("", None))[0] == "failed"
        }
        if not failures and all(run.outcomes.get(i, ("",))[0] == "finished" for i in run.handles):
            self._set_status(entry, Event.FINISH, "Job finished: all splits read and all sinks flushed")
            self._schedule()
            return
        reason = "; ".join(f"worker {i}: {why}" for i, why in sorted(failures.items())) or "workers stopped"
        strategy = entry.config.restart_strategy
        if record.status in (JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.SUBMITTED):
            if record.restarts < strategy.max_restarts():
                record.restarts += 1
                delay = strategy.delay_for(record.restarts)
                self._set_status(
                    entry,
                    Event.RECOVER,
                    f"Job failed ({reason}); restart {record.restarts} of {strategy.max_restarts()} "
                    f"in {delay:g}s ({strategy.type})",
                    level="warn",
                )
                self._spawn(self._delayed_relaunch(entry, delay))
                return
            exhausted = (
                f"restart strategy {strategy.type} exhausted after {record.restarts} restart(s)"
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
        if len(run.channels) == run.parallelism:
            run.connected.set()
        try:
            while True:
                message = await channel.receive()
                if message is None:
                    break
                self._on_message(entry, run, index, message)
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            await channel.close()

    def _on_message(self, entry: JobEntry, run: Run, index: int, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "heartbeat":
            entry.metrics.on_heartbeat(run.attempt, index, message)
        elif kind == "log":
            entry.log.write(
                str(message.get("level", "info")),
                str(message.get("message", "")),
                message.get("task_id"),
                message.get("ts"),
            )
        elif kind in ("finished", "stopped", "failed"):
            run.outcomes[index] = (kind, message.get("error"))

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

    def wait_reason(self, job_id: str) -> str | None:
        return self.get(job_id).waiting_reason

    def now(self) -> float:
        return time.time()
