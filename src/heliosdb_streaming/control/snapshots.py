"""The snapshot service: checkpoint and savepoint bookkeeping of every job, and savepoint commands.

Each run gets a ``CheckpointCoordinator`` (``control.coordinator``: the barrier protocol of one
snapshot). This service wires it to the job: checkpoint ids that only grow (in the job store), the
job's checkpoint storage, completed snapshots recorded (store, entry, metrics, log) and old ones
forgotten, failures counted. It also answers the savepoint commands: take one (waiting, bounded, for
the next run when the job is between runs), delete one no job still needs (invariant 3 of
``control.controller``), and checks that a snapshot a new job starts from still exists; and it takes
the periodic savepoints of ``savepoint_interval_ms`` and trims them to ``savepoints_retained``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from heliosdb_streaming.control.channel import broadcast
from heliosdb_streaming.control.checkpoint_coordinator import (
    CheckpointCoordinator,
    CheckpointFailedError,
    RunEndedError,
)
from heliosdb_streaming.control.entry import JobEntry, Run, utcnow
from heliosdb_streaming.control.jobs import JobTable
from heliosdb_streaming.control.store import SnapshotRecord
from heliosdb_streaming.model.errors import (
    FieldError,
    IllegalStateTransitionError,
    InvalidJobConfigError,
    JobRestartingError,
    SavepointFailedError,
    SavepointInUseError,
    SavepointNotFoundError,
)
from heliosdb_streaming.model.types import JobStatus
from heliosdb_streaming.runtime.checkpoint.storage import CheckpointStorage, storage_from_uri
from heliosdb_streaming.runtime.checkpoint.tasks import SnapshotLocation, locate_snapshot

logger = logging.getLogger(__name__)

PERIODIC = "periodic"  # the description of the savepoints ``savepoint_interval_ms`` takes
RESTART_WAIT_S = 30.0  # how long a savepoint asked for between two runs waits for the next one


async def locate_start(location: str, field: str) -> SnapshotLocation:
    """The snapshot a new job is to start from, or ``InvalidJobConfigError`` at ``field`` saying why."""
    try:
        return await locate_snapshot(location)
    except ValueError as e:
        raise InvalidJobConfigError([FieldError(field, str(e))]) from None


class SnapshotService:
    """``checkpoint_uri``: the storage of jobs that name none (``JobConfig.checkpoint_storage``)."""

    def __init__(self, table: JobTable, checkpoint_uri: str) -> None:
        self.table = table
        self.checkpoint_uri = checkpoint_uri
        self.restart_wait_s = RESTART_WAIT_S
        # told of each savepoint completed (True) or deleted (False): the Kubernetes operator keeps a
        # Savepoint resource per savepoint the job takes itself (periodic ones) and deletes it with them
        self.savepoint_listeners: list[Callable[[JobEntry, SnapshotRecord, bool], None]] = []

    def storage_for(self, entry: JobEntry) -> CheckpointStorage:
        if entry.storage is None:
            entry.storage = storage_from_uri(entry.config.checkpoint_storage or self.checkpoint_uri)
        return entry.storage

    def checkpoint_uri_for(self, entry: JobEntry) -> str:
        return entry.config.checkpoint_storage or self.checkpoint_uri

    # ------------------------------------------------------------------------ checkpoints of a run

    def create_coordinator(self, entry: JobEntry, run: Run) -> None:
        record = entry.record
        store = self.table.store

        def next_id() -> int:
            record.last_checkpoint_id += 1
            store.save(record)
            return record.last_checkpoint_id

        async def send(message: dict[str, Any]) -> None:
            await broadcast(run, message)

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
        store = self.table.store
        store.save_snapshot(snapshot)
        entry.snapshots.append(snapshot)
        if entry.record.restore_point is not None:  # the job no longer needs what it restored
            entry.record.restore_point = None
        metrics = entry.metrics
        metrics.checkpoint_count += 1
        metrics.last_checkpoint_duration_ms = snapshot.duration_ms
        metrics.record_checkpoint_duration(snapshot.duration_ms)
        # the counters are saved with each completed checkpoint: a control plane killed later comes
        # back with every completed checkpoint counted and events_processed at least as of the last
        # one; the recovered run replays from that checkpoint and counts the replayed events again
        entry.record.metrics_state = metrics.to_state()
        store.save(entry.record)
        what = (
            f"{'Periodic savepoint' if _is_periodic(snapshot) else 'Savepoint'} {snapshot.savepoint_id}"
            if snapshot.savepoint_id
            else f"Checkpoint {snapshot.checkpoint_id}"
        )
        entry.log.write("info", f"{what} completed ({snapshot.duration_ms}ms, {snapshot.size_bytes} bytes)")
        if snapshot.savepoint_id:
            self._tell(entry, snapshot, True)

    def _checkpoint_failed(self, entry: JobEntry, snapshot: SnapshotRecord, reason: str) -> None:
        entry.metrics.checkpoint_failures += 1
        failed = [s for s in entry.snapshots if s.status == "failed"]
        if len(failed) >= 10:  # keep the recent failures for the API, not all of them
            entry.snapshots.remove(failed[0])
        entry.snapshots.append(snapshot)
        what = "Savepoint" if snapshot.kind == "savepoint" else f"Checkpoint {snapshot.checkpoint_id}"
        entry.log.write("warn", f"{what} failed: {reason}")

    def _forget_snapshot(self, entry: JobEntry, snapshot: SnapshotRecord) -> None:
        self.table.store.delete_snapshot(snapshot.job_id, snapshot.checkpoint_id)
        if snapshot in entry.snapshots:
            entry.snapshots.remove(snapshot)
            if snapshot.savepoint_id:
                self._tell(entry, snapshot, False)

    def _tell(self, entry: JobEntry, snapshot: SnapshotRecord, completed: bool) -> None:
        """A listener's trouble is logged: it never fails the snapshot's bookkeeping."""
        for listener in self.savepoint_listeners:
            try:
                listener(entry, snapshot, completed)
            except Exception:
                logger.exception("savepoint listener failed for %s", snapshot.savepoint_id)

    async def final_checkpoint(self, entry: JobEntry, run: Run) -> None:
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

    # ------------------------------------------------------------------------ savepoints

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
        self, job_id: str, description: str | None, *, stop_after: bool = False, retained: bool = False
    ) -> SnapshotRecord:
        """Takes a savepoint of a running or paused job; with ``stop_after`` the workers stop right after.

        Between two runs (restart delay, a restart in progress) it waits for the next run, bounded.
        ``retained``: one the system takes for itself (the autoscaler's), which retention may delete as
        it does periodic ones; a person's savepoint never is.
        """
        entry = self.table.get(job_id)
        action = "take a savepoint of"
        run = await self._ready_run(entry, action)
        assert run.coordinator is not None
        if stop_after:
            run.stop_requested = "cancel"  # the workers stop by themselves once the savepoint completes
        try:
            return await run.coordinator.trigger(
                "savepoint", description=description, stop_after=stop_after, periodic=retained
            )
        except RunEndedError:
            if stop_after and run.stop_requested == "cancel":
                run.stop_requested = None
            raise JobRestartingError(
                job_id, action, "its run ended before the savepoint could start; the job is between runs"
            ) from None
        except CheckpointFailedError as e:
            if stop_after:
                run.stop_requested = None
            if run.coordinator.ended is not None:  # the run's workers are gone: a 409, not a retryable 503
                raise JobRestartingError(
                    job_id, action, f"the run ended before the savepoint completed ({e})"
                ) from None
            raise SavepointFailedError(job_id, str(e)) from None

    def _restorers(self, snapshot: SnapshotRecord) -> list[str]:
        """The jobs that still need ``snapshot`` (``JobEntry.restores``), this one included."""
        return [e.record.job_id for e in self.table.jobs.values() if e.restores(snapshot.directory)]

    async def delete_savepoint(self, job_id: str, savepoint_id: str) -> None:
        """Deletes a savepoint no job needs: one that a restart or a job started from it is restoring
        is kept (``SavepointInUseError``) until that job has a completed snapshot of its own."""
        entry = self.table.get(job_id)
        snapshot = entry.savepoint(savepoint_id)
        if snapshot is None:
            raise SavepointNotFoundError(job_id, savepoint_id)
        users = self._restorers(snapshot)
        if users:
            raise SavepointInUseError(job_id, savepoint_id, users)
        await self._delete(entry, snapshot)
        entry.log.write("info", f"Savepoint {savepoint_id} deleted")

    async def _delete(self, entry: JobEntry, snapshot: SnapshotRecord) -> None:
        snapshot.status = "deleting"  # no restart picks it from now on
        try:
            await self.storage_for(entry).delete_prefix(snapshot.directory)
        except BaseException:
            snapshot.status = "completed"
            raise
        self._forget_snapshot(entry, snapshot)

    # ------------------------------------------------------------------------ periodic savepoints

    async def periodic_savepoints(self, entry: JobEntry, run: Run) -> None:
        """While ``run`` lasts, a savepoint described ``periodic`` ``savepoint_interval_ms`` after the
        later of the run's start and the job's newest periodic savepoint, then retention. None while
        the job is paused. A failure is logged and counted as any savepoint's; the next is tried an
        interval after it."""
        interval = timedelta(milliseconds=entry.config.savepoint_interval_ms)
        coordinator = run.coordinator
        assert coordinator is not None
        started = utcnow()
        while True:
            previous = [s.timestamp for s in entry.snapshots if s.periodic and s.status == "completed"]
            due = max([started, *previous]) + interval
            await asyncio.sleep(max((due - utcnow()).total_seconds(), 0.0))
            if len(coordinator.drained) == run.parallelism or not run.ready():
                return  # a bounded job's final checkpoint, or the run is ending
            started = utcnow()  # a failed one is tried again an interval later, not at once
            if run.paused:
                continue  # nothing changes while paused: the next one is due an interval after resume
            try:
                await coordinator.trigger("savepoint", description=PERIODIC, periodic=True)
            except RunEndedError:
                return
            except CheckpointFailedError:
                continue  # logged and counted by ``_checkpoint_failed``
            await self.retain_periodic(entry)

    async def retain_periodic(self, entry: JobEntry) -> None:
        """Deletes the job's periodic savepoints beyond the newest ``savepoints_retained``, except one a
        job still restores; savepoints a person asked for are never deleted here."""
        periodic = sorted(
            (s for s in entry.snapshots if s.periodic and s.status == "completed"),
            key=lambda s: s.checkpoint_id,
        )
        keep = entry.config.savepoints_retained
        for snapshot in periodic[:-keep] if len(periodic) > keep else []:
            if self._restorers(snapshot):
                continue
            try:
                await self._delete(entry, snapshot)
            except Exception as e:  # storage trouble: kept, tried again after the next one
                entry.log.write("warn", f"Periodic savepoint {snapshot.savepoint_id} not deleted: {e}")
                continue
            entry.log.write(
                "info", f"Savepoint {snapshot.savepoint_id} deleted (periodic savepoints retained: {keep})"
            )

    def check_start_exists(self, start: SnapshotLocation) -> None:
        """A savepoint of a job of this control plane that was deleted since ``locate_start`` read it."""
        owner = self.table.jobs.get(start.job_id)
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


def _is_periodic(snapshot: SnapshotRecord) -> bool:
    """A savepoint of ``savepoint_interval_ms`` (not another one retention may delete, as the
    autoscaler's)."""
    return snapshot.periodic and snapshot.description == PERIODIC
