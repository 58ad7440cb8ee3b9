"""The scheduler: one FIFO queue of jobs waiting for worker slots, and the slots in use.

A job needs ``parallelism`` slots for its run; ``max_parallelism`` is all there are. ``schedule``
starts queued jobs first come first served while the head of the queue fits (a big job is not
starved by smaller ones behind it), and tells every job still waiting why, with its place. A run
holds its slots from launch until its workers are gone and gives them back once (``release``,
invariant 2 of ``control.controller``). Starting the run itself is the supervisor's: the scheduler
calls ``start_run`` with the new ``Run`` and does no I/O of its own beyond saving the waiting message.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from heliosdb_streaming.control.entry import JobEntry, Run
from heliosdb_streaming.control.jobs import JobTable
from heliosdb_streaming.model.types import JobStatus

logger = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self, table: JobTable, max_parallelism: int, start_run: Callable[[JobEntry, Run], None]
    ) -> None:
        self.table = table
        self.max_parallelism = max_parallelism
        self.start_run = start_run
        self.queue: list[str] = []  # job ids waiting for slots, FIFO, each at most once
        self.slots_in_use = 0
        self.closed = False  # set on close: nothing starts any more

    def enqueue(self, entry: JobEntry, *, front: bool = False) -> None:
        """Queues the job for a run, unless it is queued already or has one (invariant 1)."""
        job_id = entry.record.job_id
        if job_id in self.queue or entry.run is not None:
            return
        if front:
            self.queue.insert(0, job_id)
        else:
            self.queue.append(job_id)

    def dequeue(self, entry: JobEntry) -> None:
        if entry.record.job_id in self.queue:
            self.queue.remove(entry.record.job_id)
        entry.waiting_reason = None

    def schedule(self) -> None:
        """Starts queued jobs, first come first served, while their parallelism fits the free slots.

        Every job that still waits then says why, with its place in the queue.
        """
        if self.closed:
            return
        jobs = self.table.jobs
        for job_id in list(self.queue):
            entry = jobs[job_id]
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
            self.start_run(entry, self.new_run(entry, slots=need))
        free = self.max_parallelism - self.slots_in_use
        for position, job_id in enumerate(self.queue, start=1):
            entry = jobs[job_id]
            need = entry.config.parallelism
            reason = (
                f"waiting for slots: needs {need}, {free} of {self.max_parallelism} free, "
                f"position {position} in the queue"
            )
            if entry.waiting_reason != reason:
                entry.waiting_reason = reason
                entry.record.message = reason
                self.table.store.save(entry.record)
                entry.log.write("info", reason)

    def new_run(self, entry: JobEntry, *, slots: int) -> Run:
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

    def release(self, run: Run) -> None:
        """Gives the run's slots back, once."""
        if run.slots:
            self.slots_in_use -= run.slots
            run.slots = 0
