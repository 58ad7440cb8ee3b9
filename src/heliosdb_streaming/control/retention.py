"""Job retention: purging a terminal job, and expiring terminal jobs after the server's retention.

A purge removes everything the control plane keeps of a job: its checkpoints (and any other file under
its prefix in checkpoint storage), its directory with ``job.json`` and its logs, its record and its
snapshot records. Only a terminal job can be purged (``JobNotTerminalError``), and not while it has
savepoints (``JobHasSavepointsError``: a person kept them; they are deleted one by one first) or while
another job still restores one of its checkpoints (it started from it and has none of its own yet).

``expire_forever`` is Flink's finished-job expiry (the history server's, ``ttlSecondsAfterFinished``
on Kubernetes): every terminal job whose ``finished_at`` is older than the retention is purged, except
those that hold savepoints or are still needed; they are tried again at the next sweep.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from heliosdb_streaming.control.entry import JobEntry, utcnow
from heliosdb_streaming.control.jobs import JobTable
from heliosdb_streaming.control.snapshots import SnapshotService
from heliosdb_streaming.model.errors import (
    IllegalStateTransitionError,
    JobError,
    JobHasSavepointsError,
    JobNotTerminalError,
)
from heliosdb_streaming.model.plan import plan_job
from heliosdb_streaming.runtime.exchange.topics import delete_job_topics

logger = logging.getLogger(__name__)


async def delete_internal_topics(entry: JobEntry) -> None:
    """Deletes the job's internal (repartition) topics, if its plan has any: a job that regroups
    records by key has them on its repartition brokers (``runtime/exchange/topics.py``)."""
    config = entry.config
    if not plan_job(config.sources, config.transformations).needs_exchange:
        return
    servers = config.repartition_servers()
    if not servers:
        return
    try:
        deleted = await delete_job_topics(servers, entry.record.job_id, timeout_s=10.0)
    except Exception as e:  # a broker gone for good must not keep the job from being purged
        logger.warning(
            "job %s: could not delete its internal topics on %s (%s: %s); delete topics "
            "helios-%s-* there by hand",
            entry.record.job_id,
            ",".join(servers),
            type(e).__name__,
            e,
            entry.record.job_id,
        )
        return
    if deleted:
        logger.info("job %s: deleted internal topics %s", entry.record.job_id, ", ".join(deleted))


MAX_SWEEP_INTERVAL_S = 60.0
MIN_SWEEP_INTERVAL_S = 0.2


def sweep_interval(retention: timedelta) -> float:
    """How often expiry looks: a tenth of the retention, between 0.2 s and a minute."""
    return min(max(retention.total_seconds() / 10, MIN_SWEEP_INTERVAL_S), MAX_SWEEP_INTERVAL_S)


class JobRetention:
    def __init__(self, table: JobTable, snapshots: SnapshotService) -> None:
        self.table = table
        self.snapshots = snapshots

    def check_purgeable(self, entry: JobEntry) -> None:
        """Raises why ``entry`` cannot be purged now, if it cannot."""
        record = entry.record
        if not record.status.terminal or entry.run is not None:
            raise JobNotTerminalError(record.job_id, record.status.value)
        held = ("completed", "deleting")
        savepoints = [s.savepoint_id for s in entry.snapshots if s.savepoint_id and s.status in held]
        if savepoints:
            raise JobHasSavepointsError(record.job_id, sorted(savepoints))
        users = sorted(
            {
                other.record.job_id
                for other in self.table.jobs.values()
                if other is not entry
                for s in entry.snapshots
                if other.restores(s.directory)
            }
        )
        if users:
            raise IllegalStateTransitionError(
                record.job_id, f"restored by job(s) {', '.join(users)}", "purge"
            )

    async def purge(self, job_id: str) -> None:
        """Removes a terminal job with its logs, checkpoints and files (see the module docstring)."""
        entry = self.table.get(job_id)
        async with entry.lock:
            self.check_purgeable(entry)
            # storage first: if it fails, the job and its record stay and the purge can be tried again
            await self.snapshots.storage_for(entry).delete_prefix(f"{job_id}/")
            await delete_internal_topics(entry)
            self.table.remove(entry)
            await asyncio.to_thread(self.table.files.remove, job_id)
        logger.info("job %s purged", job_id)

    def expired(self, retention: timedelta) -> list[str]:
        """Terminal jobs that finished more than ``retention`` ago, oldest first."""
        cutoff = utcnow() - retention
        done = [
            e.record
            for e in self.table.jobs.values()
            if e.record.status.terminal and e.record.finished_at is not None and e.record.finished_at < cutoff
        ]
        return [r.job_id for r in sorted(done, key=lambda r: (r.finished_at or cutoff, r.job_id))]

    async def expire(self, retention: timedelta) -> list[str]:
        """Purges the expired jobs that can be; returns their ids."""
        purged = []
        for job_id in self.expired(retention):
            try:
                await self.purge(job_id)
            except JobError:
                continue  # savepoints, still restored by another job, or restarted meanwhile: kept
            except Exception:  # storage trouble: logged, tried again at the next sweep
                logger.exception("could not purge expired job %s", job_id)
                continue
            purged.append(job_id)
        return purged

    async def expire_forever(self, retention: timedelta) -> None:
        interval = sweep_interval(retention)
        while True:
            await self.expire(retention)
            await asyncio.sleep(interval)
