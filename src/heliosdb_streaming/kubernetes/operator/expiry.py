"""``spec.ttlSecondsAfterFinished``: a StreamingJob whose job ended that long ago is deleted, as the
TTL-after-finished controller deletes a ``batch/v1`` Job.

Deleting the resource runs the operator's finalizer (``reconciler.finalize_job``), which purges the job
from the control plane: its checkpoints, logs, files and record. A job that still has Savepoint
resources (``spec.jobRef`` naming it), or savepoints in the control plane, is kept until they are
deleted: they are somebody's decision to keep its state, and a purge refuses them anyway. The decision
(``due``) is pure; ``JobExpiry.sweep`` does the I/O, and tells once per job why it keeps one (an Event).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from heliosdb_streaming.control.controller import ControlPlane, JobEntry
from heliosdb_streaming.control.entry import utcnow
from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.kubernetes.operator import events
from heliosdb_streaming.kubernetes.operator.bindings import Binding, Bindings

logger = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 1.0  # in-memory checks; the API server is asked only about jobs that are due


def due(ttl_s: int | None, entry: JobEntry | None, now: datetime) -> bool:
    """Whether the job's time is up: it has a TTL, is terminal, and ended at least ``ttl_s`` ago."""
    if ttl_s is None or entry is None or not entry.record.status.terminal or entry.run is not None:
        return False
    finished = entry.record.finished_at
    return finished is not None and now - finished >= timedelta(seconds=ttl_s)


def held_savepoints(entry: JobEntry) -> list[str]:
    """The control plane's savepoints of the job (taken through REST or a Savepoint resource), those
    being deleted included: a purge refuses them too."""
    held = ("completed", "deleting")
    return sorted(s.savepoint_id for s in entry.snapshots if s.savepoint_id and s.status in held)


class JobExpiry:
    def __init__(self, client: kube.KubeClient, plane: ControlPlane, bindings: Bindings) -> None:
        self.client = client
        self.plane = plane
        self.bindings = bindings
        self._kept: dict[str, str] = {}  # job id -> why it was last kept (said once per reason)

    async def expire_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except kube.ApiError as e:  # the API server's trouble: the next sweep tries again
                logger.warning("job expiry: %s", e)
            await asyncio.sleep(SWEEP_INTERVAL_S)

    async def sweep(self) -> list[str]:
        """Deletes the StreamingJobs whose job expired and holds no savepoint; returns their names."""
        now = utcnow()
        deleted = []
        for binding in self.bindings.all():
            entry = self.plane.jobs.get(binding.job_id)
            if not due(binding.ttl_seconds_after_finished, entry, now):
                continue
            assert entry is not None
            why = await self._kept_because(binding, entry)
            if why is not None:
                if self._kept.get(binding.job_id) != why:
                    self._kept[binding.job_id] = why
                    logger.info("%s/%s expired but kept: %s", binding.namespace, binding.name, why)
                    await events.job_event(self.client, binding, "Normal", "ExpiryHeld", f"Kept: {why}")
                continue
            self._kept.pop(binding.job_id, None)
            ttl = binding.ttl_seconds_after_finished
            message = f"{entry.record.status.value} more than {ttl}s ago (ttlSecondsAfterFinished): deleting"
            await events.job_event(self.client, binding, "Normal", "Expired", message)
            if await self.client.delete(kube.STREAMINGJOBS, binding.namespace, binding.name, uid=binding.uid):
                logger.info("%s/%s %s", binding.namespace, binding.name, message)
                deleted.append(binding.name)
        return deleted

    async def _kept_because(self, binding: Binding, entry: JobEntry) -> str | None:
        resources = sorted(
            str((s.get("metadata") or {}).get("name"))
            for s in await self.client.list(kube.SAVEPOINTS, binding.namespace)
            if (s.get("spec") or {}).get("jobRef") == binding.name
        )
        if resources:
            return f"Savepoint resource(s) {', '.join(resources)} refer to it"
        held = held_savepoints(entry)
        if held:
            return f"it holds savepoint(s) {', '.join(held)}"
        return None
