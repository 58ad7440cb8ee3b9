"""Run supervision and the restart policy: a run from its launch to the job's next status.

``launch`` starts the workers of a run the scheduler made (through the substrate's ``Launcher``),
then a supervisor task waits for all of them to exit, reads their last messages and gives the run's
slots and token back exactly once however it ended (invariant 2 of ``control.controller``). Unless
someone stopped the run on purpose (cancel, restart, shutdown: they decide the status), how it ended
decides what comes next: all workers finished is ``finished``; a failure is an automatic restart
while the job's restart strategy allows one (its delay and failure count saved in the job store,
invariant 4), else ``failed``. ``recover`` picks up a job that was active when the previous control
plane died, stopping the workers it left behind through the substrate's ``StaleWorkerReaper``.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

from heliosdb_streaming.control import restart_policy
from heliosdb_streaming.control.channel import WorkerChannelServer, broadcast
from heliosdb_streaming.control.entry import JobEntry, Run, utcnow
from heliosdb_streaming.control.jobs import JobTable
from heliosdb_streaming.control.launcher import (
    Launcher,
    StaleWorkerReaper,
    WorkerHandle,
    WorkerSpec,
    disruption_of,
)
from heliosdb_streaming.control.lifecycle import Event
from heliosdb_streaming.control.scheduler import Scheduler
from heliosdb_streaming.control.snapshots import SnapshotService
from heliosdb_streaming.control.tasks import BackgroundTasks
from heliosdb_streaming.model.types import JobStatus

STOP_GRACE_S = 10.0
# the job messages of a recovery in progress, replaced once the new run is running
RECOVERY_MESSAGES = ("Recovering:", "Job failed (")


def recovered_message(attempt: int, recovering: str | None) -> str:
    """The job message once a recovery's run runs: that it did, and what it recovered from."""
    cause = (recovering or "").removeprefix("Recovering: ")
    return f"Recovered: run {attempt} running" + (f" (after: {cause})" if cause else "")


class RunSupervisor:
    def __init__(
        self,
        *,
        table: JobTable,
        scheduler: Scheduler,
        snapshots: SnapshotService,
        channel: WorkerChannelServer,
        launcher: Launcher,
        reap_stale_workers: StaleWorkerReaper,
        tasks: BackgroundTasks,
    ) -> None:
        self.table = table
        self.scheduler = scheduler
        self.snapshots = snapshots
        self.channel = channel
        self.launcher = launcher
        self.reap_stale_workers = reap_stale_workers
        self.tasks = tasks

    def recover(self, entry: JobEntry) -> None:
        """A job that was active when the previous control plane died runs again."""
        record = entry.record
        killed = self.reap_stale_workers(record.worker_pids, record.job_id)
        due = record.relaunch_at
        delay = max((due - utcnow()).total_seconds(), 0.0) if due is not None else 0.0
        entry.log.write(
            "warn" if record.status != JobStatus.SUBMITTED else "info",
            f"control plane restarted; job was {record.status.value}"
            + (f", stopped {killed} orphaned worker(s)" if killed else "")
            + (f"; its automatic restart is due in {delay:.1f}s" if delay else "; scheduling it again"),
        )
        entry.restore_latest()
        if record.status in (JobStatus.RUNNING, JobStatus.PAUSED):
            if due is None:  # a pending automatic restart was counted when it was decided
                record.restarts += 1
            point = entry.restore_point()
            origin = f"restoring checkpoint {point.checkpoint_id}" if point else "starting from the beginning"
            record.message = f"Recovering: the control plane restarted; {origin}"
            self.table.store.save(record)
        if delay:  # the restart strategy's backoff goes on where the previous control plane left it
            entry.relaunch = self.tasks.spawn(self._delayed_relaunch(entry, delay))
        else:
            self.scheduler.enqueue(entry)

    # ------------------------------------------------------------------------ one run

    async def launch(self, entry: JobEntry, run: Run) -> None:
        """Starts the run that the scheduler took slots for; its supervisor gives them back."""
        try:
            await self._start_workers(entry, run)
        finally:
            if run.supervisor is None:  # nothing will wait for these workers: give everything back
                for handle in run.handles.values():
                    handle.kill()
                self.end_run(entry, run)

    async def _start_workers(self, entry: JobEntry, run: Run) -> None:
        record = entry.record
        # the run's attempt number is durable before any worker uses it: workers fence off what
        # earlier runs wrote to the job's internal topics by it, so it must grow across restarts of
        # the control plane too
        self.table.store.save(record)
        self.snapshots.create_coordinator(entry, run)  # before any worker connects: one may drain at once
        self.channel.admit(run)
        files = self.table.files
        job_dir = files.job_dir(record.job_id)
        files.write_config(record.job_id, entry.config.model_dump_json().encode())
        try:
            for index in range(run.parallelism):
                spec = WorkerSpec(
                    record.job_id,
                    job_dir,
                    index,
                    run.attempt,
                    self.channel.address,
                    run.token,
                    checkpoint_uri=self.snapshots.checkpoint_uri_for(entry),
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
        self.table.store.save(record)
        restored = f", restoring {entry.restore_from}" if entry.restore_from else ""
        if entry.restore_storage:
            restored += f" of {entry.restore_storage}"
        entry.log.write("info", f"Run {run.attempt}: started {len(run.handles)} worker(s){restored}")
        run.supervisor = self.tasks.spawn(self._supervise(entry, run))

    async def _supervise(self, entry: JobEntry, run: Run) -> None:
        """Waits for the run's workers, then decides what the job does next."""
        try:
            await self._watch_run(entry, run)
        finally:  # however the watch ended, the run's slots and token go (invariant 2)
            entry.metrics.forget_workers()
            self.end_run(entry, run)
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
            peer = run.stopped_for_peer.get(index)
            if peer is not None and run.outcomes.get(index, ("",))[0] == "failed":
                run.stopped_for_peer.pop(index)  # it had failed on its own before we stopped it
                peer = None
            if peer is not None:  # stopped by us: the run was over already, not a failure of its own
                entry.log.write(
                    "info", f"worker {index} stopped (exit code {code}): worker {peer} of the run exited"
                )
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
            for other_index, other in run.handles.items():
                if other is not handle:
                    if other_index not in run.exit_codes and other_index not in run.stopped_for_peer:
                        run.stopped_for_peer[other_index] = index
                    other.kill()

        watchers = [asyncio.create_task(watch(i, h)) for i, h in run.handles.items()]
        connect_wait = asyncio.create_task(run.connected.wait())
        done: set[asyncio.Task[Any]] = set()
        if watchers:  # none: no worker could be started, nothing can connect
            done, _ = await asyncio.wait([connect_wait, *watchers], return_when=asyncio.FIRST_COMPLETED)
        if connect_wait in done and run.stop_requested is None:
            async with entry.lock:
                if record.status == JobStatus.SUBMITTED:
                    self.table.set_status(entry, Event.START, "Job started successfully")
                elif record.status in (JobStatus.RUNNING, JobStatus.PAUSED):
                    entry.log.write("info", f"Run {run.attempt} running")
                    if record.message is not None and record.message.startswith(RECOVERY_MESSAGES):
                        record.message = recovered_message(run.attempt, record.message)
                        self.table.store.save(record)
                entry.changed()
                if run.paused:
                    await broadcast(run, {"type": "pause"})
                interval = entry.config.checkpoint_interval_ms / 1000
                assert run.coordinator is not None
                run.checkpointer = self.tasks.spawn(run.coordinator.periodic(interval, lambda: run.paused))
                if entry.config.savepoint_interval_ms:
                    run.savepointer = self.tasks.spawn(self.snapshots.periodic_savepoints(entry, run))
        await asyncio.gather(*watchers)
        connect_wait.cancel()
        # a worker's last messages ('finished', its final heartbeat) may still be unread when it exits
        pending_reads = [e.wait() for e in run.drained_channels.values()]
        if pending_reads:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*pending_reads), 5)
        for timer in (run.checkpointer, run.savepointer):
            if timer is not None:
                timer.cancel()
        if run.coordinator is not None:
            run.coordinator.close("the run ended")
        self.channel.refuse(run)
        for channel in run.channels.values():
            await channel.close()

    def end_run(self, entry: JobEntry, run: Run) -> None:
        """The run's workers are gone: its token, its checkpoints and its slots go too (once)."""
        self.channel.refuse(run)
        if run.coordinator is not None and run.coordinator.ended is None:
            run.coordinator.close("the run ended")
        if entry.run is run:
            entry.run = None
        self.scheduler.release(run)
        entry.changed()
        self.scheduler.schedule()

    # ------------------------------------------------------------------------ restart policy

    async def _after_run(self, entry: JobEntry, run: Run) -> None:
        record = entry.record
        failures = {
            i: (run.outcomes.get(i, ("failed", None))[1] or (f"exit code {code}" if code else "stopped"))
            for i, code in run.exit_codes.items()
            if (code != 0 or run.outcomes.get(i, ("", None))[0] != "finished")
            and i not in run.stopped_for_peer
        }
        for i, (kind, why) in run.outcomes.items():  # workers that could not even be started
            if kind == "failed" and i not in run.exit_codes:
                failures[i] = why or "failed"
        if (
            not failures
            and run.handles
            and all(run.outcomes.get(i, ("",))[0] == "finished" for i in run.handles)
        ):
            self.table.set_status(entry, Event.FINISH, "Job finished: all splits read and all sinks flushed")
            self.scheduler.schedule()
            return
        reason = "; ".join(f"worker {i}: {why}" for i, why in sorted(failures.items())) or "workers stopped"
        if record.status in (JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.SUBMITTED):
            now = utcnow()
            disrupted = self._disruption(run)
            if disrupted is not None:  # evicted, drained, preempted: restart, but it was no failure
                record.restarts += 1
                record.relaunch_at = now
                entry.restore_latest()
                self.table.set_status(
                    entry,
                    Event.RECOVER,
                    f"Job restarts after a disruption ({disrupted}); not counted as a failure",
                    level="warn",
                )
                self._cancel_relaunch_task(entry)
                entry.relaunch = self.tasks.spawn(self._delayed_relaunch(entry, 0))
                return
            decision = restart_policy.decide(
                entry.config.restart_strategy,
                record.failures_since_restart,
                record.failure_times,
                now,
                run_since=record.relaunch_at or record.started_at,  # the failed run's start
            )
            record.failure_times = list(decision.failure_times)
            if decision.restart:
                record.restarts += 1
                record.failures_since_restart = decision.failures_since_restart
                delay = decision.delay_s
                record.relaunch_at = now + timedelta(seconds=delay)  # saved with the status
                entry.restore_latest()
                self.table.set_status(
                    entry, Event.RECOVER, f"Job failed ({reason}); {decision.why}", level="warn"
                )
                self._cancel_relaunch_task(entry)
                entry.relaunch = self.tasks.spawn(self._delayed_relaunch(entry, delay))
                return
            self.table.set_status(entry, Event.FAIL, f"Job failed: {reason}; {decision.why}", level="error")
        self.scheduler.schedule()

    @staticmethod
    def _disruption(run: Run) -> str | None:
        """``worker N: <reason>`` when the run's first worker to exit was taken away by the substrate
        (the others were then stopped by us, so only the first exit tells why the run ended)."""
        for index in run.exit_codes:  # in the order the workers exited
            handle = run.handles.get(index)
            reason = disruption_of(handle) if handle is not None else None
            return f"worker {index}: {reason}" if reason else None
        return None

    async def _delayed_relaunch(self, entry: JobEntry, delay: float) -> None:
        """The restart strategy's restart: queued first once its delay is over."""
        await asyncio.sleep(delay)
        if entry.relaunch is asyncio.current_task():
            entry.relaunch = None
        if entry.record.status.terminal or self.scheduler.closed or entry.run is not None:
            return
        self.scheduler.enqueue(entry, front=True)
        self.scheduler.schedule()

    def cancel_relaunch(self, entry: JobEntry) -> None:
        """Drops the pending automatic restart (a user's restart or cancel replaces it)."""
        self._cancel_relaunch_task(entry)
        entry.record.relaunch_at = None

    def _cancel_relaunch_task(self, entry: JobEntry) -> None:
        if entry.relaunch is not None:
            entry.relaunch.cancel()
            entry.relaunch = None

    async def stop_run(self, run: Run, why: str) -> None:
        """Asks every worker to stop, kills those that do not within the grace period, waits."""
        run.stop_requested = why
        await broadcast(run, {"type": "stop"})
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
