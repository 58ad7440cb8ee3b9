"""The control plane: job records, slots, runs of workers, their channel, restarts and queries.

Substrate-neutral: it starts workers through a ``Launcher``, keeps records in a ``JobStore``, job
directories and logs in ``JobFiles``, and asks ``lifecycle`` whether a change of status is legal;
the substrate passes those in (its composition root: ``job.manager`` embedded, ``operator.app`` on
Kubernetes). ``control.service.JobServiceCore`` (the spec's native API) and through it the REST API
are thin doors onto one ``ControlPlane``.

``ControlPlane`` is the facade: it composes the parts and carries out the user's commands (submit,
cancel, pause, resume, restart, savepoints). The parts, one responsibility each:

* ``jobs.JobTable``: the job entries, their records, status changes and metrics persistence;
* ``scheduler.Scheduler``: the queue and the worker slots;
* ``supervisor.RunSupervisor``: a run from launch to its end, and the restart strategy;
* ``channel.WorkerChannelServer``: the workers' connections and their messages;
* ``snapshots.SnapshotService``: checkpoint bookkeeping and savepoints;
* ``retention.JobRetention``: purging terminal jobs, and their expiry after the job retention;
* ``autoscaling.JobAutoscaler``: the parallelism of autoscaled jobs (``config.autoscaler``), rescaled
  through ``rescale``: a savepoint, then a restart at the new parallelism from it.

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
import dataclasses
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from heliosdb_streaming.control.autoscaling import JobAutoscaler
from heliosdb_streaming.control.channel import WorkerChannelServer, broadcast
from heliosdb_streaming.control.entry import JobEntry, Run, describe_start, utcnow
from heliosdb_streaming.control.files import JobFiles
from heliosdb_streaming.control.jobs import JobTable
from heliosdb_streaming.control.launcher import Launcher, StaleWorkerReaper, no_stale_workers
from heliosdb_streaming.control.lifecycle import Event
from heliosdb_streaming.control.retention import JobRetention
from heliosdb_streaming.control.scheduler import Scheduler
from heliosdb_streaming.control.snapshots import SnapshotService, locate_start
from heliosdb_streaming.control.store import JobRecord, JobStore, SnapshotRecord
from heliosdb_streaming.control.supervisor import RunSupervisor
from heliosdb_streaming.control.tasks import BackgroundTasks
from heliosdb_streaming.model.config import JobConfig, JobConfigOverrides
from heliosdb_streaming.model.errors import (
    FieldError,
    IllegalStateTransitionError,
    InvalidJobConfigError,
    JobNotFoundError,
    SavepointNotFoundError,
)
from heliosdb_streaming.model.types import JobStatus
from heliosdb_streaming.runtime.checkpoint.storage import CheckpointStorage
from heliosdb_streaming.runtime.checkpoint.tasks import SnapshotLocation

# JobEntry, Run and locate_start are imported from here by the substrates and the tests
__all__ = ["ControlPlane", "JobEntry", "Run", "locate_start"]


class ControlPlane:
    """One control plane: the facade over its parts (see the module docstring) and the user's commands.

    Commands that change a job take its ``JobEntry.lock``, check the ``lifecycle`` first and leave
    the job's status to ``JobTable.set_status``; queries read ``jobs`` (``control.service``).
    """

    def __init__(
        self,
        *,
        home: Path,
        store: JobStore,
        launcher: Launcher,
        files: JobFiles,
        max_parallelism: int,
        checkpoint_uri: str | None = None,
        control_host: str = "127.0.0.1",
        control_port: int = 0,
        reap_stale_workers: StaleWorkerReaper = no_stale_workers,
    ) -> None:
        """``files``: where job directories and logs are; ``reap_stale_workers``: how ``start`` stops
        the workers of jobs a previous control plane left running (none: nothing to stop)."""
        self.home = home
        self.launcher = launcher
        self.checkpoint_uri = checkpoint_uri or (home / "checkpoints").resolve().as_uri()
        self.table = JobTable(store, files)
        self.tasks = BackgroundTasks()
        self.scheduler = Scheduler(self.table, max_parallelism, lambda entry, run: self._launch(entry, run))
        self.snapshots = SnapshotService(self.table, self.checkpoint_uri)
        self.channel = WorkerChannelServer(
            self.table,
            control_host,
            control_port,
            on_drained=lambda entry, run: self._final_checkpoint(entry, run),
        )
        self.supervisor = RunSupervisor(
            table=self.table,
            scheduler=self.scheduler,
            snapshots=self.snapshots,
            channel=self.channel,
            launcher=launcher,
            reap_stale_workers=reap_stale_workers,
            tasks=self.tasks,
        )
        self.retention = JobRetention(self.table, self.snapshots)
        self.autoscaler = JobAutoscaler(self.table, self.scheduler, self.rescale, self.tasks)
        self._persister: asyncio.Task[None] | None = None
        self._expiry: asyncio.Task[None] | None = None
        self._autoscaling: asyncio.Task[None] | None = None
        self._closed = False

    def _launch(self, entry: JobEntry, run: Run) -> None:
        self.tasks.spawn(self.supervisor.launch(entry, run))

    def _final_checkpoint(self, entry: JobEntry, run: Run) -> None:
        self.tasks.spawn(self.snapshots.final_checkpoint(entry, run))

    # -------------------------------------------------------------------------------- the parts' state

    @property
    def store(self) -> JobStore:
        return self.table.store

    @property
    def files(self) -> JobFiles:
        return self.table.files

    @property
    def jobs(self) -> dict[str, JobEntry]:
        return self.table.jobs

    @property
    def status_listeners(self) -> list[Callable[[str, JobStatus], None]]:
        """Called with (job_id, new status) on every change of a job's status."""
        return self.table.status_listeners

    @property
    def max_parallelism(self) -> int:
        return self.scheduler.max_parallelism

    @property
    def queue(self) -> list[str]:
        return self.scheduler.queue

    @property
    def slots_in_use(self) -> int:
        return self.scheduler.slots_in_use

    @property
    def control_address(self) -> str:
        """Where workers reach the control channel (``host:port``), once started."""
        return self.channel.address

    @property
    def restart_wait_s(self) -> float:
        """How long a savepoint asked for between two runs waits for the next one."""
        return self.snapshots.restart_wait_s

    @restart_wait_s.setter
    def restart_wait_s(self, value: float) -> None:
        self.snapshots.restart_wait_s = value

    def storage_for(self, entry: JobEntry) -> CheckpointStorage:
        return self.snapshots.storage_for(entry)

    def checkpoint_uri_for(self, entry: JobEntry) -> str:
        return self.snapshots.checkpoint_uri_for(entry)

    def job_dir(self, job_id: str) -> Path:
        return self.table.files.job_dir(job_id)

    # -------------------------------------------------------------------------------- startup

    async def start(self, job_retention: timedelta | None = None) -> None:
        """``job_retention``: terminal jobs are purged that long after they ended (None: kept)."""
        await self.channel.start()
        for entry in self.table.load():
            if not entry.record.status.terminal:
                self.supervisor.recover(entry)
        self._persister = asyncio.create_task(self.table.persist_metrics_forever())
        if job_retention is not None:
            self._expiry = asyncio.create_task(self.retention.expire_forever(job_retention))
        self._autoscaling = asyncio.create_task(self.autoscaler.run_forever())
        self.scheduler.schedule()

    async def close(self) -> None:
        """Stops every run (jobs keep their status, to resume on the next start) and the server."""
        if self._closed:
            return
        self._closed = self.scheduler.closed = True
        runs = [e.run for e in self.jobs.values() if e.run is not None]
        await asyncio.gather(
            *(self.supervisor.stop_run(run, "shutdown") for run in runs), return_exceptions=True
        )
        for timer in (self._persister, self._expiry, self._autoscaling):
            if timer is not None:
                timer.cancel()
        await self.tasks.cancel_all()
        self.table.save_all()
        await self.channel.close()
        self.store.close()

    # -------------------------------------------------------------------------------- commands

    def get(self, job_id: str) -> JobEntry:
        return self.table.get(job_id)

    def check_submit(self, config: JobConfig, start_from: SnapshotLocation | None = None) -> None:
        """What this plane refuses of a new job (its parallelism limit, a start snapshot that is gone),
        as ``submit`` raises it; a dry run calls it alone."""
        if start_from is not None:
            self.snapshots.check_start_exists(start_from)
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
        self.check_submit(config, start_from)
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
        entry = self.table.add(record, config)
        entry.restore_latest()
        self.store.save(record)  # with its restore point: the savepoint it starts from is now in use
        starting = f", starting from {describe_start(record.start_from)}" if record.start_from else ""
        entry.log.write("info", f"Job {config.name!r} submitted (parallelism {config.parallelism}){starting}")
        self.scheduler.enqueue(entry)
        self.scheduler.schedule()
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

    async def cancel(self, job_id: str) -> JobRecord:
        entry = self.table.get(job_id)
        async with entry.lock:
            record = entry.record
            self.table.check(entry, Event.CANCEL, "cancel")
            self.supervisor.cancel_relaunch(entry)
            self.scheduler.dequeue(
                entry
            )  # first: the run's end frees slots, and must not start the job again
            if entry.run is not None:
                await self.supervisor.stop_run(entry.run, "cancel")
            self.table.set_status(entry, Event.CANCEL, "Job cancelled")
            return record

    async def pause(self, job_id: str) -> None:
        entry = self.table.get(job_id)
        async with entry.lock:
            self.table.check(entry, Event.PAUSE, "pause")
            run = entry.run
            if run is not None:
                run.paused = True
                await broadcast(run, {"type": "pause"})
            self.table.set_status(entry, Event.PAUSE, "Job paused: sources stopped, state kept")

    async def resume(self, job_id: str) -> None:
        entry = self.table.get(job_id)
        async with entry.lock:
            self.table.check(entry, Event.RESUME, "resume")
            run = entry.run
            if run is not None:
                run.paused = False
                await broadcast(run, {"type": "resume"})
            self.table.set_status(entry, Event.RESUME, "Job resumed")

    async def savepoint(
        self, job_id: str, description: str | None, *, stop_after: bool = False
    ) -> SnapshotRecord:
        """Takes a savepoint of a running or paused job (``SnapshotService.savepoint``)."""
        return await self.snapshots.savepoint(job_id, description, stop_after=stop_after)

    async def delete_savepoint(self, job_id: str, savepoint_id: str) -> None:
        """Deletes a savepoint no job needs (``SnapshotService.delete_savepoint``)."""
        await self.snapshots.delete_savepoint(job_id, savepoint_id)

    async def purge(self, job_id: str) -> None:
        """Removes a terminal job with its logs, checkpoints and files (``JobRetention.purge``)."""
        await self.retention.purge(job_id)

    async def rescale(self, job_id: str, parallelism: int, reason: str) -> None:
        """The autoscaler's rescale, as Flink's: stop with a savepoint, then restart from it at
        ``parallelism``. Nothing runs past the savepoint (no checkpoint commits output the restored
        run would write again), so exactly-once sinks stay exact. Only a job still running (or
        paused meanwhile) is restarted: a user's cancel meanwhile wins. If the restart at the new
        parallelism fails, the job restarts from the savepoint at its old one. The savepoint is one
        retention may delete (as periodic ones, ``savepoints_retained``) once no run restores it."""
        entry = self.table.get(job_id)
        before = entry.config.parallelism
        snapshot = await self.snapshots.savepoint(
            job_id, f"autoscaler: parallelism {before} -> {parallelism}", stop_after=True, retained=True
        )
        entry.log.write("info", f"Autoscaler: restarting at parallelism {parallelism} ({reason})")
        running = frozenset({JobStatus.RUNNING, JobStatus.PAUSED})  # paused meanwhile: its run is gone
        try:
            await self.restart(
                job_id, snapshot.savepoint_id, JobConfigOverrides(parallelism=parallelism), only_from=running
            )
        except (IllegalStateTransitionError, JobNotFoundError):
            raise  # cancelled or purged meanwhile: nothing to restart
        except Exception:  # the run stopped at the savepoint: it must run again, at its parallelism
            await self.restart(job_id, snapshot.savepoint_id, None, only_from=running)
            raise
        await self.snapshots.retain_periodic(entry)

    async def cancel_with_savepoint(self, job_id: str) -> SnapshotRecord:
        """Stop-with-savepoint: the savepoint is the last thing the job does, so nothing runs past it."""
        entry = self.table.get(job_id)
        self.table.check(entry, Event.CANCEL, "cancel")
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
        only_from: frozenset[JobStatus] | None = None,
        pipeline: JobConfig | None = None,
        fresh: bool = False,
    ) -> SnapshotRecord | None:
        """Restarts from a savepoint, or from the newest checkpoint/savepoint, with config overrides.

        ``only_from``: the statuses the job may be in (checked under its lock), else
        ``IllegalStateTransitionError`` (the autoscaler's rescale: a job cancelled meanwhile stays so).
        ``pipeline``: an upgrade in place (the operator's restart of an edited StreamingJob): the job
        runs these sources, transformations and sinks from then on; state finds its steps as it does
        for a job started from a savepoint (by position and type). ``fresh``: start without any state
        (the operator's stateless upgrade); the snapshots are kept, and none is restored.
        """
        entry = self.table.get(job_id)
        async with entry.lock:
            if self.jobs.get(job_id) is not entry:  # purged while this restart waited for the lock
                raise JobNotFoundError(job_id)
            if only_from is not None and entry.record.status not in only_from:
                raise IllegalStateTransitionError(job_id, entry.record.status.value, "restart")
            self.table.check(entry, Event.RESTART, "restart")
            point = None if fresh else entry.restore_point()
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
            self.supervisor.cancel_relaunch(entry)  # this restart replaces a pending automatic one
            self.scheduler.dequeue(entry)
            entry.restoring = point.directory if point is not None else None  # kept while we stop
            try:
                if entry.run is not None:
                    await self.supervisor.stop_run(entry.run, "restart")
                entry.config = config
                entry.record.config = config.to_dict()
                entry.restore(point, fresh=fresh)  # None: the snapshot it was started from, if any
            finally:
                entry.restoring = None
            entry.record.restarts += 1
            entry.record.failures_since_restart = 0
            entry.record.failure_times = []
            entry.record.started_at = None
            start = entry.record.start_from
            origin = (
                "an empty state (stateless)"
                if fresh
                else f"savepoint {point.savepoint_id}"
                if point and point.savepoint_id
                else f"checkpoint {point.checkpoint_id}"
                if point
                else f"{describe_start(start)} it was started from"
                if start
                else "the beginning (no checkpoint yet)"
            )
            changed = ", with a changed pipeline" if upgraded else ""
            self.table.set_status(
                entry,
                Event.RESTART,
                f"Job restarting from {origin} (parallelism {config.parallelism}){changed}",
            )
            self.scheduler.enqueue(entry)
            self.scheduler.schedule()
            return point

    # -------------------------------------------------------------------------------- queries

    def uptime_seconds(self, record: JobRecord) -> int:
        return self.uptime_ms(record) // 1000

    def uptime_ms(self, record: JobRecord) -> int:
        """From the first start to the end (or now), to the millisecond."""
        if record.started_at is None:
            return 0
        end = record.finished_at or utcnow()
        return max(int((end - record.started_at).total_seconds() * 1000), 0)
