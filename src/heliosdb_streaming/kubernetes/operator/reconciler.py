"""What the operator does for one StreamingJob or Savepoint, and the writer of their status.

Each pass follows the Flink operator's loop: observe (the control plane's record), decide one step
(``mapping.plan``), act through the control plane, and ask again until nothing is left; a step that
cannot happen yet raises ``kopf.TemporaryError`` so kopf retries it. Status is written by one task that
projects every bound job (``status.project``) and patches only what changed, posting an Event for each
phase change; the control plane's status callback wakes it, so ``running`` shows up within a moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from heliosdb_streaming.control import paths
from heliosdb_streaming.control.controller import ControlPlane, JobEntry, locate_start
from heliosdb_streaming.control.store import SnapshotRecord
from heliosdb_streaming.kubernetes import crds, kube
from heliosdb_streaming.kubernetes.operator import mapping, pods, status
from heliosdb_streaming.kubernetes.operator.bindings import Binding, Bindings
from heliosdb_streaming.kubernetes.operator.launcher import KubernetesLauncher
from heliosdb_streaming.kubernetes.operator.mapping import JobSpec, Step
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.errors import (
    FieldError,
    IllegalStateTransitionError,
    InvalidJobConfigError,
    SavepointFailedError,
    SavepointInUseError,
    SavepointNotFoundError,
)
from heliosdb_streaming.model.types import JobStatus
from heliosdb_streaming.runtime.checkpoint.tasks import SnapshotLocation

logger = logging.getLogger(__name__)

COMPONENT = "heliosdb-streaming-operator"
# on a Savepoint the operator created for a savepoint it took itself (on cancel): which one it records,
# with the job's id (``pods.ANNOTATION_JOB_ID``)
ANNOTATION_SAVEPOINT_ID = f"{crds.GROUP}/savepoint-id"
STATUS_SWEEP_S = 2.0
WAIT_RETRY_S = 1.0
SAVEPOINT_MAX_WAITS = 120  # retries (of WAIT_RETRY_S) for a job that is still starting
MAX_STEPS = 8


def _now() -> datetime:
    return datetime.now(UTC)


def _started_from(entry: JobEntry, *, location: str) -> bool:
    """Whether ``location`` is the snapshot of another job this job was started from."""
    start = entry.record.start_from
    return start is not None and SnapshotLocation(**start).uri == location.strip().rstrip("/")


def _completed(job_id: str, snapshot: SnapshotRecord) -> dict[str, Any]:
    return {
        "state": "completed",
        "jobId": job_id,
        "savepointId": snapshot.savepoint_id,
        "location": snapshot.location,
        "sizeBytes": snapshot.size_bytes,
        "createdAt": status.iso(snapshot.timestamp),
        "message": "",
    }


def _ref(namespace: str, name: str, uid: str | None, kind: str) -> dict[str, Any]:
    """Enough of an object for an Event's involvedObject."""
    return {
        "apiVersion": crds.API_VERSION,
        "kind": kind,
        "metadata": {"namespace": namespace, "name": name, "uid": uid},
    }


class Reconciler:
    def __init__(
        self,
        client: kube.KubeClient,
        plane: ControlPlane,
        bindings: Bindings,
        launcher: KubernetesLauncher,
        allowed_roots: paths.AllowedRoots | None = None,
    ) -> None:
        """``allowed_roots``: where the local files a spec names must resolve (None: anywhere)."""
        self.client = client
        self.allowed_roots = allowed_roots
        self.plane = plane
        self.bindings = bindings
        self.launcher = launcher
        self._written: dict[str, dict[str, Any]] = {}  # job id -> last status written (or seen)
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------------------ StreamingJob

    async def reconcile_job(self, body: Mapping[str, Any]) -> None:
        """Brings the job of a StreamingJob to its spec: submit once, then pause/resume/cancel/restart."""
        meta = body.get("metadata") or {}
        namespace, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta.get("uid") or "")
        spec = dict(body.get("spec") or {})
        previous = dict(body.get("status") or {})
        try:
            desired = JobSpec.from_spec(spec)
            wanted = await asyncio.to_thread(mapping.job_config, name, spec)  # CPU work: off the loop
            await self._check_paths(spec, wanted)
        except InvalidJobConfigError as e:
            await self._reject(namespace, name, uid, meta.get("generation"), previous, e)
            raise kopf.PermanentError(str(e)) from None
        binding = await self._bind(namespace, name, uid, desired, previous, wanted)
        entry = self.plane.get(binding.job_id)
        changed = binding.observed_generation not in (None, meta.get("generation"))
        if changed and desired.restart_nonce == binding.applied_nonce:
            await self._note_pending_changes(binding, entry, wanted)
        for _ in range(MAX_STEPS):
            step = mapping.plan(desired, entry.record.status, binding.applied_nonce)
            if step == Step.NONE:
                break
            if step == Step.WAIT:
                self.mark(binding.job_id)
                raise kopf.TemporaryError(
                    f"job is {entry.record.status.value}; will apply spec", delay=WAIT_RETRY_S
                )
            try:
                await self._act(step, binding, entry, desired, wanted)
            except IllegalStateTransitionError as e:
                logger.info("%s/%s: %s; planning again", namespace, name, e)
        binding.observed_generation = meta.get("generation")
        self.bindings.save(binding)
        self.mark(binding.job_id)

    async def _check_paths(self, spec: Mapping[str, Any], wanted: JobConfig) -> None:
        """InvalidJobConfigError for every local path of the spec outside the allowed roots: on every
        reconcile, so a changed spec that a restart would apply is checked too."""
        roots = self.allowed_roots
        if roots is None:
            return

        def problems() -> list[FieldError]:
            found = paths.job_path_errors(wanted, roots, prefix="spec.")
            if spec.get("checkpointStorage"):  # the spec's own field, not the REST body's
                found = [
                    FieldError("spec.checkpointStorage", e.message)
                    if e.path == "spec.config.checkpoint_storage"
                    else e
                    for e in found
                ]
            _, location = mapping.savepoint_ref(spec.get("restoreFrom") or None)
            start = paths.location_error(location, roots, "spec.restoreFrom") if location else None
            return found + ([start] if start is not None else [])

        errors = await asyncio.to_thread(problems)  # realpath and glob touch the file system
        if errors:
            raise InvalidJobConfigError(errors)

    async def _note_pending_changes(self, binding: Binding, entry: JobEntry, wanted: Any) -> None:
        """A spec change that is not a state or a restart waits for one: say so once, as an Event."""
        settings = [
            f"config.{k}" for k in mapping.OVERRIDABLE if getattr(entry.config, k) != getattr(wanted, k)
        ]
        settings += mapping.pipeline_changes(entry.config, wanted)
        fixed = mapping.unapplied_changes(entry.config, wanted)
        if settings:
            message = f"{', '.join(settings)} will apply at the next restart (spec.restartNonce)"
            await self._job_event(binding, "Normal", "SpecPending", message)
        if fixed:
            message = f"a running job cannot change {', '.join(fixed)}; create a new StreamingJob for that"
            await self._job_event(binding, "Warning", "SpecNotApplied", message)

    async def _reject(
        self,
        namespace: str,
        name: str,
        uid: str,
        generation: Any,
        previous: dict[str, Any],
        error: InvalidJobConfigError,
    ) -> None:
        message = "; ".join(f"{e.path}: {e.message}" for e in error.errors)
        if self.bindings.for_object(namespace, name) is None:
            wanted = status.invalid(f"invalid spec: {message}", generation, previous, _now())
            patch = status.diff(previous, wanted)
            if patch:
                with contextlib.suppress(kube.NotFoundError):
                    await self.client.patch(
                        kube.STREAMINGJOBS, namespace, name, {"status": patch}, subresource="status"
                    )
        await self.client.post_event(
            _ref(namespace, name, uid, crds.STREAMING_JOB_KIND),
            type_="Warning",
            reason="InvalidSpec",
            message=message,
            component=COMPONENT,
        )

    async def _bind(
        self,
        namespace: str,
        name: str,
        uid: str,
        desired: JobSpec,
        previous: dict[str, Any],
        wanted: Any,
    ) -> Binding:
        """The job of this resource: the one its status names if bound to this very object, else the one
        its uid names (submitted now if new). Status is writable by others than the operator, so a
        ``jobId`` there never points this resource at another object's job."""
        job_id = str(previous.get("jobId") or "")
        bound = self.bindings.get(job_id) if job_id else None
        if bound is None or (bound.namespace, bound.name, bound.uid) != (namespace, name, uid):
            job_id = mapping.job_id_for(uid) or f"job-{namespace}-{name}"
        binding = self.bindings.get(job_id) or Binding(
            job_id=job_id, namespace=namespace, name=name, uid=uid, applied_nonce=desired.restart_nonce
        )
        binding.image, binding.resources = desired.image, dict(desired.resources)
        self.bindings.save(binding)  # before submit: the launcher needs it for the first pods
        self._written.setdefault(job_id, previous)
        if job_id not in self.plane.jobs:
            try:
                start = await self._start_point(binding, desired.restore_from)
                await self._ensure_service(binding)
                self.plane.submit(wanted, job_id=job_id, start_from=start)
            except InvalidJobConfigError as e:
                self.bindings.remove(job_id)
                await self._reject(namespace, name, uid, None, previous, e)
                raise kopf.PermanentError(str(e)) from None
            logger.info("%s/%s submitted as %s", namespace, name, job_id)
        return binding

    async def _ensure_service(self, binding: Binding) -> None:
        with contextlib.suppress(kube.ConflictError):
            await self.client.create(kube.SERVICES, binding.namespace, pods.workers_service(binding.target))

    async def _act(
        self, step: Step, binding: Binding, entry: JobEntry, desired: JobSpec, wanted: Any
    ) -> None:
        job_id = binding.job_id
        if step == Step.PAUSE:
            await self.plane.pause(job_id)
        elif step == Step.RESUME:
            await self.plane.resume(job_id)
        elif step == Step.CANCEL:
            await self.plane.cancel(job_id)
        elif step == Step.CANCEL_WITH_SAVEPOINT:
            try:
                snapshot = await self.plane.cancel_with_savepoint(job_id)
            except SavepointFailedError as e:
                await self._job_event(binding, "Warning", "SavepointFailed", f"savepoint on cancel: {e}")
                raise kopf.TemporaryError(f"savepoint on cancel failed: {e}", delay=5) from None
            await self._job_event(
                binding, "Normal", "SavepointCompleted", f"{snapshot.savepoint_id} at {snapshot.location}"
            )
            await self._record_savepoint(binding, snapshot, "taken on cancel")
        elif step == Step.RESTART:
            savepoint_id = await self._restore_point(binding, desired.restore_from)
            changed = mapping.unapplied_changes(entry.config, wanted)
            if changed:
                await self._job_event(
                    binding,
                    "Warning",
                    "SpecNotApplied",
                    f"a restart cannot change {', '.join(changed)}; create a new StreamingJob for that",
                )
            upgrade = mapping.pipeline_changes(entry.config, wanted)
            if entry.record.status == JobStatus.PAUSED:
                await self.plane.resume(job_id)  # restart stops the run anyway; paused cannot restart
            await self.plane.restart(
                job_id, savepoint_id, mapping.restart_overrides(wanted), pipeline=wanted if upgrade else None
            )
            if upgrade:
                await self._job_event(binding, "Normal", "Upgraded", f"new {', '.join(upgrade)} from now on")
            binding.applied_nonce = desired.restart_nonce
            self.bindings.save(binding)
        self.mark(job_id)

    async def _completed_savepoint(self, binding: Binding, resource: str) -> Mapping[str, Any]:
        """The status of the completed Savepoint ``resource``. One that is missing or not completed yet
        may be coming (``kubectl apply -f dir``, a savepoint in progress): retried soon, and said so."""
        savepoint = await self.client.get_or_none(kube.SAVEPOINTS, binding.namespace, resource)
        sp_status: Mapping[str, Any] = (savepoint or {}).get("status") or {}
        if savepoint is None or sp_status.get("state") != "completed" or not sp_status.get("location"):
            why = "not found" if savepoint is None else f"is {sp_status.get('state') or 'pending'}"
            await self._job_event(binding, "Warning", "RestoreFailed", f"Savepoint {resource} {why}")
            raise kopf.TemporaryError(f"Savepoint {resource} {why}", delay=5)
        return sp_status

    async def _start_point(self, binding: Binding, restore_from: str | None) -> SnapshotLocation | None:
        """Where a new job starts, as Flink's initial savepoint: the savepoint ``restoreFrom`` names, a
        completed Savepoint in the namespace (of any job, deleted ones too), or the location of a
        savepoint of a StreamingJob in the namespace. None without one."""
        resource, location = mapping.savepoint_ref(restore_from)
        if resource is not None:  # a Savepoint of this namespace
            sp_status = await self._completed_savepoint(binding, resource)
            return await locate_start(str(sp_status["location"]), "spec.restoreFrom")
        if location is None:
            return None
        start = await locate_start(location, "spec.restoreFrom")
        owner = self.bindings.get(start.job_id)
        if owner is None or owner.namespace != binding.namespace:
            # a bare location could be any tenant's state: only this namespace's jobs are readable so
            why = f"not a savepoint of a StreamingJob in namespace {binding.namespace}; name its Savepoint"
            raise InvalidJobConfigError([FieldError("spec.restoreFrom", why)])
        return start

    async def _restore_point(self, binding: Binding, restore_from: str | None) -> str | None:
        """The savepoint id ``restoreFrom`` names (a Savepoint resource or a location), or None (latest)."""
        resource, location = mapping.savepoint_ref(restore_from)
        entry = self.plane.get(binding.job_id)
        if resource is not None:
            sp_status = await self._completed_savepoint(binding, resource)
            savepoint_id = str(sp_status.get("savepointId") or "")
            if _started_from(entry, location=str(sp_status.get("location") or "")):
                return None  # consumed when the job started: a restart goes on from its own latest state
            if entry.savepoint(savepoint_id) is None:
                message = f"Savepoint {resource} ({savepoint_id}) is not a savepoint of this job"
                await self._job_event(binding, "Warning", "RestoreFailed", message)
                raise kopf.PermanentError(message)
            return savepoint_id
        if location is not None:
            for snapshot in entry.snapshots:
                if snapshot.savepoint_id and snapshot.status == "completed" and snapshot.location == location:
                    return snapshot.savepoint_id
            if _started_from(entry, location=location):
                return None
            message = f"no savepoint of this job is at {location}"
            await self._job_event(binding, "Warning", "RestoreFailed", message)
            raise kopf.PermanentError(message)
        return None

    async def finalize_job(self, body: Mapping[str, Any]) -> None:
        """The StreamingJob is being deleted: stop its job (its pods, Secret and Service are owned)."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta["namespace"]), str(meta["name"])
        binding = self.bindings.for_object(namespace, name)
        if binding is None:
            return
        entry = self.plane.jobs.get(binding.job_id)
        if entry is not None and not entry.record.status.terminal:
            spec = dict(body.get("spec") or {})
            try:
                if spec.get("savepointOnCancel") and entry.record.status in (
                    JobStatus.RUNNING,
                    JobStatus.PAUSED,
                ):
                    snapshot = await self.plane.cancel_with_savepoint(binding.job_id)
                    await self._record_savepoint(binding, snapshot, "taken when the StreamingJob was deleted")
                else:
                    await self.plane.cancel(binding.job_id)
            except (IllegalStateTransitionError, SavepointFailedError) as e:
                logger.warning("%s/%s: %s; cancelling without a savepoint", namespace, name, e)
                with contextlib.suppress(IllegalStateTransitionError):
                    await self.plane.cancel(binding.job_id)
        self.bindings.remove(binding.job_id)
        self._written.pop(binding.job_id, None)
        self.launcher.forget(namespace, name)
        logger.info("%s/%s deleted; job %s stopped", namespace, name, binding.job_id)

    async def _job_event(self, binding: Binding, type_: str, reason: str, message: str) -> None:
        involved = _ref(binding.namespace, binding.name, binding.uid, crds.STREAMING_JOB_KIND)
        await self.client.post_event(
            involved, type_=type_, reason=reason, message=message, component=COMPONENT
        )

    # ------------------------------------------------------------------------------ status writer

    def mark(self, job_id: str, _status: JobStatus | None = None) -> None:
        """The job changed: write its status soon (also the control plane's status listener)."""
        self._dirty.add(job_id)
        self._wake.set()

    async def write_status_forever(self) -> None:
        """Writes marked jobs at once, and every job every ``STATUS_SWEEP_S`` (checkpoints, restarts)."""
        loop = asyncio.get_running_loop()
        last_sweep = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), STATUS_SWEEP_S)
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            if loop.time() - last_sweep >= STATUS_SWEEP_S:
                last_sweep = loop.time()
                job_ids = list(self._written)
            else:
                job_ids = [j for j in dirty if j in self._written]
            for job_id in job_ids:
                try:
                    await self.write_status(job_id)
                except Exception as e:  # the API server is unreachable or refuses: try again next pass
                    logger.warning("could not write the status of %s: %s: %s", job_id, type(e).__name__, e)
                    self._dirty.add(job_id)

    async def write_status(self, job_id: str) -> None:
        binding = self.bindings.get(job_id)
        entry = self.plane.jobs.get(job_id)
        previous = self._written.get(job_id)
        if binding is None or entry is None or previous is None:
            return
        observed = status.Observed(
            parallelism=entry.config.parallelism,
            snapshots=tuple(entry.snapshots),
            observed_generation=binding.observed_generation,
            observed_nonce=binding.applied_nonce,
        )
        wanted = status.project(entry.record, observed, previous, _now())
        patch = status.diff(previous, wanted)
        if not patch:
            return
        try:
            await self.client.patch(
                kube.STREAMINGJOBS, binding.namespace, binding.name, {"status": patch}, subresource="status"
            )
        except kube.NotFoundError:
            self._written.pop(job_id, None)
            return
        self._written[job_id] = {**previous, **wanted}
        for type_, reason, message in status.events(previous, wanted):
            await self._job_event(binding, type_, reason, message)

    # ------------------------------------------------------------------------------ Savepoint

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
        ref = _ref(namespace, name, uid, crds.SAVEPOINT_KIND)
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
        await self._savepoint_status(namespace, name, _completed(binding.job_id, snapshot))
        await self.client.post_event(
            ref,
            type_="Normal",
            reason="SavepointCompleted",
            message=f"{snapshot.savepoint_id} of {job_ref} at {snapshot.location}",
            component=COMPONENT,
        )

    async def _record_savepoint(self, binding: Binding, snapshot: SnapshotRecord, description: str) -> None:
        """A savepoint the operator took on its own (on cancel) becomes a Savepoint resource too, so it
        can be listed, named in ``restoreFrom`` and deleted (with its files) like any other. Named after
        the savepoint, so a retried cancel records it once."""
        resource = {
            "apiVersion": crds.API_VERSION,
            "kind": crds.SAVEPOINT_KIND,
            "metadata": {
                "name": mapping.recorded_savepoint_name(binding.name, str(snapshot.savepoint_id)),
                "namespace": binding.namespace,
                "annotations": {
                    pods.ANNOTATION_JOB_ID: binding.job_id,
                    ANNOTATION_SAVEPOINT_ID: str(snapshot.savepoint_id),
                },
            },
            "spec": {"jobRef": binding.name, "description": description},
        }
        try:
            created = await self.client.create(kube.SAVEPOINTS, binding.namespace, resource)
        except kube.ConflictError:
            return
        except kube.ApiError as e:  # the savepoint exists (job status, REST); only its resource is missing
            logger.warning("could not record savepoint %s as a resource: %s", snapshot.savepoint_id, e)
            return
        name = str((created.get("metadata") or {}).get("name"))
        await self._savepoint_status(binding.namespace, name, _completed(binding.job_id, snapshot))

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
        await self._savepoint_status(namespace, name, _completed(str(job_id), snapshot))

    def _wait_or_fail(self, retry: int, why: str) -> None:
        if retry < SAVEPOINT_MAX_WAITS:
            raise kopf.TemporaryError(why, delay=WAIT_RETRY_S)
        raise kopf.PermanentError(f"{why} for too long")

    async def _savepoint_failed(self, ref: dict[str, Any], namespace: str, name: str, message: str) -> None:
        await self._savepoint_status(namespace, name, {"state": "failed", "message": message})
        await self.client.post_event(
            ref, type_="Warning", reason="SavepointFailed", message=message, component=COMPONENT
        )

    async def _savepoint_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        await self.client.patch(kube.SAVEPOINTS, namespace, name, {"status": patch}, subresource="status")

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
            raise kopf.TemporaryError(e.message, delay=10) from None
