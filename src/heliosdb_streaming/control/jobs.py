"""The job table: every job entry, its durable record, and the one place a job's status changes.

Every part of the control plane changes a job's status through ``JobTable.set_status``: it asks
``lifecycle`` whether the change is legal, stamps the times, masks secrets in the message, writes the
log line, saves the record, wakes whoever waits for the job and tells the status listeners (the
operator's status writer, the REST job list cache). Metrics persistence lives here too: the live
aggregators' state goes into the records every ``METRICS_PERSIST_INTERVAL_S`` while a job runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from heliosdb_streaming.control import lifecycle
from heliosdb_streaming.control.entry import JobEntry, utcnow
from heliosdb_streaming.control.files import JobFiles
from heliosdb_streaming.control.lifecycle import Event
from heliosdb_streaming.control.metrics import JobMetricsAggregator
from heliosdb_streaming.control.store import JobRecord, JobStore, SnapshotRecord
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.errors import IllegalStateTransitionError, JobNotFoundError
from heliosdb_streaming.model.types import JobStatus
from heliosdb_streaming.runtime.connectors.secrets import mask_secrets

METRICS_PERSIST_INTERVAL_S = 10.0


class JobTable:
    """The jobs by id, the store that keeps their records and the files that keep their logs."""

    def __init__(self, store: JobStore, files: JobFiles) -> None:
        self.store = store
        self.files = files
        self.jobs: dict[str, JobEntry] = {}
        self.status_listeners: list[Callable[[str, JobStatus], None]] = []
        self.removed = 0  # jobs purged so far: caches of the job list (``listing``) look at it

    def get(self, job_id: str) -> JobEntry:
        entry = self.jobs.get(job_id)
        if entry is None:
            raise JobNotFoundError(job_id)
        return entry

    def load(self) -> list[JobEntry]:
        """The stored jobs with their snapshots, added to the table; returns them in store order."""
        snapshots: dict[str, list[SnapshotRecord]] = {}
        for snapshot in self.store.load_snapshots():
            snapshots.setdefault(snapshot.job_id, []).append(snapshot)
        loaded = []
        for record in self.store.load_all():
            entry = self._entry_for(record)
            entry.snapshots = snapshots.get(record.job_id, [])
            self.jobs[record.job_id] = entry
            loaded.append(entry)
        return loaded

    def _entry_for(self, record: JobRecord) -> JobEntry:
        config = JobConfig.from_stored(record.config)  # not compiled again: fast, whatever the job holds
        metrics = JobMetricsAggregator.from_state(record.metrics_state)
        return JobEntry(record=record, config=config, metrics=metrics, log=self.files.open_log(record.job_id))

    def add(self, record: JobRecord, config: JobConfig) -> JobEntry:
        """A new job's entry (its record is saved already)."""
        entry = JobEntry(
            record=record,
            config=config,
            metrics=JobMetricsAggregator(),
            log=self.files.open_log(record.job_id),
        )
        self.jobs[record.job_id] = entry
        return entry

    def remove(self, entry: JobEntry) -> None:
        """Forgets a purged job: its record and snapshot records go from the store too."""
        job_id = entry.record.job_id
        self.store.delete_job(job_id)
        if self.jobs.get(job_id) is entry:
            del self.jobs[job_id]
            self.removed += 1
        entry.log.close()
        entry.changed()

    def check(self, entry: JobEntry, event: Event, action: str) -> None:
        if lifecycle.next_status(entry.record.status, event) is None:
            raise IllegalStateTransitionError(entry.record.job_id, entry.record.status.value, action)

    def set_status(
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

    async def persist_metrics_forever(self) -> None:
        """Saves the metrics of every job with a run, every ``METRICS_PERSIST_INTERVAL_S``."""
        while True:
            await asyncio.sleep(METRICS_PERSIST_INTERVAL_S)
            for entry in self.jobs.values():
                if entry.run is not None:
                    entry.record.metrics_state = entry.metrics.to_state()
                    self.store.save(entry.record)

    def save_all(self) -> None:
        """On close: every job's metrics into its record, every log closed."""
        for entry in self.jobs.values():
            entry.record.metrics_state = entry.metrics.to_state()
            self.store.save(entry.record)
            entry.log.close()
