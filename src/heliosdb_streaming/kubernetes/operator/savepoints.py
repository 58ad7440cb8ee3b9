"""What the operator does for a Savepoint resource, as the Flink operator's snapshot controller.

A Savepoint goes pending -> in_progress -> completed | failed: observe the job ``spec.jobRef`` names
(not there yet, or still starting: retried with ``kopf.TemporaryError``, bounded by
``SAVEPOINT_MAX_WAITS``), take the savepoint through the control plane, write the outcome to the
status with an Event. Terminal states are left alone. The finalizer deletes the savepoint's files and
stays while a job still restores from them. A savepoint the operator or the job takes itself (on
cancel, for an upgrade or a blue/green switch, the periodic ones of ``savepoint_interval_ms`` and the
autoscaler's) is recorded as a Savepoint resource too (``record``), so it can be listed, named and
deleted like any other; those but the ones taken on cancel are owned by the StreamingJob (they go
with it), and retention deleting a savepoint deletes its resource (``savepoint_changed``). Kept apart
from the StreamingJob reconciler: it has its own resource, states and finalizer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from typing import Any

import kopf

from heliosdb_streaming.control.controller import ControlPlane
from heliosdb_streaming.control.entry import JobEntry
from heliosdb_streaming.control.store import SnapshotRecord
from heliosdb_streaming.kubernetes import crds, kube
from heliosdb_streaming.kubernetes.operator import events, mapping, pods, status
from heliosdb_streaming.kubernetes.operator.bindings import Binding, Bindings
from heliosdb_streaming.model.errors import (
    IllegalStateTransitionError,
    JobError,
    SavepointFailedError,
    SavepointInUseError,
    SavepointNotFoundError,
)
from heliosdb_streaming.model.types import JobStatus

logger = logging.getLogger(__name__)

# on a Savepoint the operator created for a savepoint it took itself (on cancel): which one it records,
# with the job's id (``pods.ANNOTATION_JOB_ID``)
ANNOTATION_SAVEPOINT_ID = f"{crds.GROUP}/savepoint-id"
WAIT_RETRY_S = 1.0
SAVEPOINT_MAX_WAITS = 120  # retries (of WAIT_RETRY_S) for a job that is still starting


def completed(job_id: str, snapshot: SnapshotRecord) -> dict[str, Any]:
    """The status of a Savepoint whose savepoint is ``snapshot``."""
    return {
        "state": "completed",
        "jobId": job_id,
        "savepointId": snapshot.savepoint_id,
        "location": snapshot.location,
        "sizeBytes": snapshot.size_bytes,
        "createdAt": status.iso(snapshot.timestamp),
        "message": "",
    }


class SavepointController:
    def __init__(self, client: kube.KubeClient, plane: ControlPlane, bindings: Bindings) -> None:
        self.client = client
        self.plane = plane
        self.bindings = bindings
        self._tasks: set[asyncio.Task[Any]] = set()
        plane.snapshots.savepoint_listeners.append(self.savepoint_changed)

    async def take_savepoint(self, body: Mapping[str, Any], retry: int) -> None:
        """pending -> in_progress -> completed | failed, for the job ``spec.jobRef`` names."""
        meta = body.get("metadata") or {}
        namespace, name, uid = str(meta["namespace"]), str(meta["name"]), meta.get("uid")
        current = dict(body.get("status") or {})
        if current.get("state") in ("completed", "failed"):
            return
        annotations = meta.get("annotations") or {}
        if ANNOTATION_SAVEPOINT_ID in annotations:  # a record of a savepoint already taken
            await self._complete_recorded(namespace, name, annotations)
            return
        spec = dict(body.get("spec") or {})
        job_ref = str(spec.get("jobRef") or "")
        ref = events.involved(namespace, name, uid, crds.SAVEPOINT_KIND)
        if not current.get("state"):
            await self._savepoint_status(namespace, name, {"state": "pending"})
        binding = self.bindings.for_object(namespace, job_ref)
        entry = self.plane.jobs.get(binding.job_id) if binding else None
        if binding is None or entry is None:
            if await self.client.get_or_none(kube.STREAMINGJOBS, namespace, job_ref) is None:
                await self._savepoint_failed(ref, namespace, name, f"StreamingJob {job_ref!r} not found")
                return
            return self._wait_or_fail(retry, f"StreamingJob {job_ref} has no job yet")
        if entry.record.status.terminal:
            message = f"StreamingJob {job_ref} is {entry.record.status.value}"
            await self._savepoint_failed(ref, namespace, name, message)
            return
        run = entry.run
        if entry.record.status == JobStatus.SUBMITTED or run is None or not run.connected.is_set():
            return self._wait_or_fail(retry, f"StreamingJob {job_ref} is starting")
        await self._savepoint_status(namespace, name, {"state": "in_progress", "jobId": binding.job_id})
        try:
            snapshot = await self.plane.savepoint(binding.job_id, spec.get("description"))
        except (SavepointFailedError, IllegalStateTransitionError) as e:
            await self._savepoint_failed(ref, namespace, name, str(e))
            return
        await self._savepoint_status(namespace, name, completed(binding.job_id, snapshot))
        message = f"{snapshot.savepoint_id} of {job_ref} at {snapshot.location}"
        await events.post(self.client, ref, "Normal", "SavepointCompleted", message)

    async def delete_savepoint(self, body: Mapping[str, Any]) -> None:
        """The finalizer: the savepoint's files go with the resource."""
        current = dict(body.get("status") or {})
        job_id, savepoint_id = current.get("jobId"), current.get("savepointId")
        if not job_id or not savepoint_id or job_id not in self.plane.jobs:
            return
        try:
            await self.plane.delete_savepoint(str(job_id), str(savepoint_id))
        except SavepointNotFoundError:
            pass
        except SavepointInUseError as e:  # a job still restores it: keep the finalizer, try again later
            raise await events.savepoint_in_use(self.client, body, e.message) from None
        await self._purge_orphan(str(job_id))

    async def _purge_orphan(self, job_id: str) -> None:
        """A terminal job whose StreamingJob is gone was kept for its savepoints (``finalize_job``):
        with the last of them deleted nothing refers to it any more, so it is purged now."""
        entry = self.plane.jobs.get(job_id)
        if entry is None or self.bindings.get(job_id) is not None or not entry.record.status.terminal:
            return
        if any(s.savepoint_id for s in entry.snapshots):
            return
        try:
            await self.plane.purge(job_id)
            logger.info("job %s purged: its StreamingJob and its last savepoint are gone", job_id)
        except JobError as e:
            logger.info("job %s kept: %s", job_id, e)

    def savepoint_changed(self, entry: JobEntry, snapshot: SnapshotRecord, completed: bool) -> None:
        """The control plane's savepoint listener: a periodic (or autoscaler's) savepoint becomes a
        Savepoint owned by its StreamingJob; a deleted savepoint (retention, REST) takes its recorded
        resource along. Others are recorded by whoever asked for them (``record``)."""
        binding = self.bindings.get(entry.record.job_id)
        if binding is None or not snapshot.savepoint_id:
            return
        if completed and not snapshot.periodic:
            return
        work: Coroutine[Any, Any, Any]
        if completed:
            work = self.record(binding, snapshot, snapshot.description or "periodic", owned=True)
        else:
            work = self._delete_recorded(binding, str(snapshot.savepoint_id))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not from the operator's loop (a tool over the same home): nothing to record
            work.close()
            return
        task = loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _delete_recorded(self, binding: Binding, savepoint_id: str) -> None:
        name = mapping.recorded_savepoint_name(binding.name, savepoint_id)
        try:
            await self.client.delete(kube.SAVEPOINTS, binding.namespace, name)
        except kube.ApiError as e:  # the files are gone; only their record stays listed
            logger.warning("could not delete Savepoint %s/%s: %s", binding.namespace, name, e)

    async def record(
        self, binding: Binding, snapshot: SnapshotRecord, description: str, *, owned: bool = False
    ) -> str:
        """A savepoint the operator or the job took on its own becomes a Savepoint resource too, so it
        can be listed, named in ``restoreFrom`` and deleted (with its files) like any other. Named after
        the savepoint, so a retried cancel records it once; the name is returned. ``owned``: the
        StreamingJob owns it (deleted with it); one taken on cancel or delete is not, it outlives it."""
        name = mapping.recorded_savepoint_name(binding.name, str(snapshot.savepoint_id))
        resource: dict[str, Any] = {
            "apiVersion": crds.API_VERSION,
            "kind": crds.SAVEPOINT_KIND,
            "metadata": {
                "name": name,
                "namespace": binding.namespace,
                "annotations": {
                    pods.ANNOTATION_JOB_ID: binding.job_id,
                    ANNOTATION_SAVEPOINT_ID: str(snapshot.savepoint_id),
                },
            },
            "spec": {"jobRef": binding.name, "description": description},
        }
        if owned:
            resource["metadata"]["ownerReferences"] = [
                {
                    "apiVersion": crds.API_VERSION,
                    "kind": crds.STREAMING_JOB_KIND,
                    "name": binding.name,
                    "uid": binding.uid,
                }
            ]
        try:
            await self.client.create(kube.SAVEPOINTS, binding.namespace, resource)
        except kube.ConflictError:
            return name
        except kube.ApiError as e:  # the savepoint exists (job status, REST); only its resource is missing
            logger.warning("could not record savepoint %s as a resource: %s", snapshot.savepoint_id, e)
            return name
        await self._savepoint_status(binding.namespace, name, completed(binding.job_id, snapshot))
        return name

    async def _complete_recorded(self, namespace: str, name: str, annotations: Mapping[str, Any]) -> None:
        """The status of a recorded savepoint, from the control plane (the same the recorder wrote)."""
        job_id = annotations.get(pods.ANNOTATION_JOB_ID)
        savepoint_id = annotations.get(ANNOTATION_SAVEPOINT_ID)
        entry = self.plane.jobs.get(str(job_id))
        snapshot = entry.savepoint(str(savepoint_id)) if entry is not None else None
        if snapshot is None:
            patch = {"state": "failed", "message": f"no savepoint {savepoint_id} of job {job_id}"}
            await self._savepoint_status(namespace, name, patch)
            return
        await self._savepoint_status(namespace, name, completed(str(job_id), snapshot))

    def _wait_or_fail(self, retry: int, why: str) -> None:
        if retry < SAVEPOINT_MAX_WAITS:
            raise events.waiting(why, WAIT_RETRY_S)
        raise kopf.PermanentError(f"{why} for too long")

    async def _savepoint_failed(self, ref: dict[str, Any], namespace: str, name: str, message: str) -> None:
        await self._savepoint_status(namespace, name, {"state": "failed", "message": message})
        await events.post(self.client, ref, "Warning", "SavepointFailed", message)

    async def _savepoint_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        await self.client.patch(kube.SAVEPOINTS, namespace, name, {"status": patch}, subresource="status")
