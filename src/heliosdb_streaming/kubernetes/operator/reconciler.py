"""What the operator does for one StreamingJob, as the Flink operator's deployment reconciler.

Each pass observes (the spec, validated and mapped to a job config; the control plane's record of the
job bound to the resource, submitted on the first pass), decides one step (``mapping.plan``, pure),
acts through the control plane, and asks again until nothing is left; a step that cannot happen yet
raises ``kopf.TemporaryError`` so kopf retries it. The reconciler writes status only to reject an
invalid spec; otherwise it marks the job for the ``StatusWriter`` (``statuswriter``), which projects
the control plane's record onto the resource on its own clock. Savepoint resources have their own
controller (``savepoints``); this reconciler only reads them (``restoreFrom``) and hands it the
savepoints it takes on cancel to record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from heliosdb_streaming.control import paths, usercode
from heliosdb_streaming.control.controller import ControlPlane, JobEntry, locate_start
from heliosdb_streaming.control.entry import describe_start
from heliosdb_streaming.control.store import SnapshotRecord
from heliosdb_streaming.kubernetes import crds, kube
from heliosdb_streaming.kubernetes.operator import events, mapping, pods, status
from heliosdb_streaming.kubernetes.operator.bindings import Binding, Bindings
from heliosdb_streaming.kubernetes.operator.launcher import KubernetesLauncher
from heliosdb_streaming.kubernetes.operator.mapping import JobSpec, Step
from heliosdb_streaming.kubernetes.operator.savepoints import SavepointController
from heliosdb_streaming.kubernetes.operator.statuswriter import StatusWriter
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.errors import (
    FieldError,
    IllegalStateTransitionError,
    InvalidJobConfigError,
    JobError,
    JobRestartingError,
    PythonNotAllowedError,
    SavepointFailedError,
)
from heliosdb_streaming.model.types import JobStatus
from heliosdb_streaming.runtime.checkpoint.tasks import SnapshotLocation

logger = logging.getLogger(__name__)

WAIT_RETRY_S = 1.0
MAX_STEPS = 8
UPGRADE_RETRY_S = 2.0


def _now() -> datetime:
    return datetime.now(UTC)


UPGRADE_IN_PROGRESS = "in_progress"
UPGRADE_RESTARTED = "restarted"  # status shows in_progress until the new run runs, then completed
UPGRADE_FAILED = "failed"


def _describe_point(point: SnapshotRecord | None) -> str | None:
    """How ``status.upgrade.restoredFrom`` names the snapshot an upgrade restarted from."""
    if point is None:
        return None
    if point.savepoint_id:
        return f"savepoint {point.savepoint_id} ({point.location})"
    return f"checkpoint {point.checkpoint_id}"


def _started_from(entry: JobEntry, *, location: str) -> bool:
    """Whether ``location`` is the snapshot of another job this job was started from."""
    start = entry.record.start_from
    return start is not None and SnapshotLocation(**start).uri == location.strip().rstrip("/")


class StreamingJobReconciler:
    def __init__(
        self,
        client: kube.KubeClient,
        plane: ControlPlane,
        bindings: Bindings,
        launcher: KubernetesLauncher,
        writer: StatusWriter,
        savepoints: SavepointController,
        allowed_roots: paths.AllowedRoots | None = None,
        user_code: usercode.UserCodePolicy | None = None,
    ) -> None:
        """``allowed_roots``: where the local files a spec names must resolve (None: anywhere).
        ``user_code``: the modules python steps may name (None: any); never imported here, the job's
        image holds them."""
        self.client = client
        self.allowed_roots = allowed_roots
        self.user_code = user_code
        self.plane = plane
        self.bindings = bindings
        self.launcher = launcher
        self.writer = writer
        self.savepoints = savepoints

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
            self._check_user_code(wanted)
        except InvalidJobConfigError as e:
            await self._reject(namespace, name, uid, meta.get("generation"), previous, e)
            raise kopf.PermanentError(str(e)) from None
        binding = await self._bind(namespace, name, uid, desired, previous, wanted)
        if binding.ttl_seconds_after_finished != desired.ttl_seconds_after_finished:
            binding.ttl_seconds_after_finished = desired.ttl_seconds_after_finished  # for ``expiry``
            self.bindings.save(binding)
        await self._ensure_disruption_budget(binding, desired.disruption_budget)
        entry = self.plane.get(binding.job_id)
        generation = meta.get("generation")
        changed = binding.generation not in (None, generation)
        binding.generation = generation
        if changed and desired.restart_nonce == binding.applied_nonce:
            await self._note_pending_changes(binding, entry, wanted)
        for _ in range(MAX_STEPS):
            upgrade = self._upgrade_due(binding, entry, desired, wanted, meta.get("generation"))
            step = mapping.plan(desired, entry.record.status, binding.applied_nonce, upgrade=upgrade)
            if step == Step.NONE:
                break
            if step == Step.WAIT:
                binding.spec_pending = f"waiting for the job to leave {entry.record.status.value}"
                self.bindings.save(binding)
                self.writer.mark(binding.job_id)
                raise events.waiting(f"job is {entry.record.status.value}; will apply spec", WAIT_RETRY_S)
            try:
                if step == Step.UPGRADE:
                    await self._upgrade(binding, entry, desired, wanted, meta.get("generation"))
                else:
                    await self._act(step, binding, entry, desired, wanted)
            except IllegalStateTransitionError as e:
                logger.info("%s/%s: %s; planning again", namespace, name, e)
        # observedGeneration means "applied" (API conventions): not while a change waits for a restart
        # (an edit of a stopped job) or after a failed upgrade (the previous spec runs on)
        waiting = self._unapplied(self.plane.get(binding.job_id), wanted) + binding.pod_changes()
        if waiting:
            binding.spec_pending = f"{', '.join(waiting)} not applied: " + (
                "create a new StreamingJob for that"
                if set(waiting) & set(mapping.unapplied_changes(entry.config, wanted))
                else str((binding.upgrade or {}).get("message"))
                if self._upgrade_failed(binding, generation)
                else "change spec.restartNonce to restart with it"
            )
        else:
            binding.observed_generation, binding.spec_pending = generation, None
        self.bindings.save(binding)
        self.writer.mark(binding.job_id)

    @staticmethod
    def _unapplied(entry: JobEntry, wanted: JobConfig) -> list[str]:
        """The spec's job fields the running job does not have (a restart or a new job applies them;
        not the parallelism the autoscaler chose)."""
        return mapping.upgrade_changes(entry.config, wanted) + mapping.unapplied_changes(entry.config, wanted)

    @staticmethod
    def _upgrade_failed(binding: Binding, generation: Any) -> bool:
        upgrade = binding.upgrade or {}
        return upgrade.get("state") == UPGRADE_FAILED and upgrade.get("generation") == generation

    def _upgrade_due(
        self, binding: Binding, entry: JobEntry, desired: JobSpec, wanted: JobConfig, generation: Any
    ) -> bool:
        """An edited spec (a generation not applied yet) that a restart would change the job for (its
        settings, pipeline or pod settings), and not a restartNonce restart (which applies it anyway)
        nor an upgrade of it that already failed."""
        return (
            binding.observed_generation is not None
            and generation != binding.observed_generation
            and desired.restart_nonce == binding.applied_nonce
            and not self._upgrade_failed(binding, generation)
            and bool(mapping.upgrade_changes(entry.config, wanted) + binding.pod_changes())
        )

    async def _upgrade(
        self, binding: Binding, entry: JobEntry, desired: JobSpec, wanted: JobConfig, generation: Any
    ) -> None:
        """Applies an edited spec to the running job, as ``spec.upgradeMode`` says (the Flink operator's
        upgrade modes): ``savepoint`` takes a savepoint and restarts the new spec from it, and keeps the
        old spec running when the savepoint fails; ``last-state`` restarts from the newest checkpoint;
        ``stateless`` restarts without state. What no restart can change is reported, not applied."""
        job_id, mode = binding.job_id, desired.upgrade_mode
        changes = mapping.upgrade_changes(entry.config, wanted) + binding.pod_changes()
        fixed = mapping.unapplied_changes(entry.config, wanted)
        if fixed:
            message = f"an upgrade cannot change {', '.join(fixed)}; create a new StreamingJob for that"
            await self._job_event(binding, "Warning", "SpecNotApplied", message)
        what = ", ".join(changes)
        binding.upgrade = {
            "mode": mode.value,
            "generation": generation,
            "state": UPGRADE_IN_PROGRESS,
            "changes": changes,
            "startedAt": status.iso(_now()),
            "message": f"{mode.value} upgrade of {what}",
        }
        self.bindings.save(binding)
        self.writer.mark(job_id)
        await self._job_event(binding, "Normal", "Upgrading", f"{mode.value} upgrade of {what}")
        savepoint_id: str | None = None
        if mode == mapping.UpgradeMode.SAVEPOINT:
            try:
                snapshot = await self.plane.savepoint(job_id, f"upgrade to generation {generation}")
            except JobRestartingError as e:  # between two runs (a recovery): upgrade once it runs
                raise kopf.TemporaryError(f"upgrade waits: {e}", delay=UPGRADE_RETRY_S) from None
            except SavepointFailedError as e:
                await self._upgrade_failed_because(binding, f"savepoint failed: {e}")
                return
            savepoint_id = snapshot.savepoint_id
            await self.savepoints.record(binding, snapshot, f"upgrade to generation {generation}", owned=True)
        if entry.record.status == JobStatus.PAUSED:
            await self.plane.resume(job_id)  # restart stops the run anyway; paused cannot restart
        upgrade = mapping.pipeline_changes(entry.config, wanted)
        try:
            point = await self.plane.restart(
                job_id,
                savepoint_id,
                mapping.upgrade_overrides(entry.config, wanted),
                pipeline=wanted if upgrade else None,
                fresh=mode == mapping.UpgradeMode.STATELESS,
            )
        except InvalidJobConfigError as e:  # refused before the run stops (over --max-parallelism)
            await self._upgrade_failed_because(binding, "; ".join(f"{x.path}: {x.message}" for x in e.errors))
            return
        binding.applied_pod = binding.pod_settings  # the new run's pods have them
        start = entry.record.start_from
        origin = (
            None
            if mode == mapping.UpgradeMode.STATELESS
            else _describe_point(point) or (describe_start(start) if start else None)
        )
        binding.upgrade |= {
            "state": UPGRADE_RESTARTED,
            "restoredFrom": origin or "",
            "message": f"{mode.value} upgrade of {what}, restarted from {origin or 'an empty state'}",
        }
        self.bindings.save(binding)
        self.writer.mark(job_id)
        await self._job_event(binding, "Normal", "Upgraded", str(binding.upgrade["message"]))

    async def _upgrade_failed_because(self, binding: Binding, why: str) -> None:
        """The upgrade did not happen and the old spec runs on: said in status and as a Warning."""
        message = f"{why}; the job keeps running its previous spec"
        binding.upgrade = {**(binding.upgrade or {}), "state": UPGRADE_FAILED, "message": message}
        self.bindings.save(binding)
        self.writer.mark(binding.job_id)
        await self._job_event(binding, "Warning", "UpgradeFailed", message)

    async def _check_paths(self, spec: Mapping[str, Any], wanted: JobConfig) -> None:
        """InvalidJobConfigError for every local path of the spec outside the allowed roots: on every
        reconcile, so a changed spec that a restart would apply is checked too."""
        roots = self.allowed_roots
        if roots is None:
            return

        def problems() -> list[FieldError]:
            found = [  # as the spec (v1alpha2) names the fields
                FieldError(f"spec.{crds.camel_path(e.path)}", e.message)
                for e in paths.job_path_errors(wanted, roots)
            ]
            if spec.get("checkpointStorage"):  # the spec's own field, not the REST body's
                found = [
                    FieldError("spec.checkpointStorage", e.message)
                    if e.path == "spec.config.checkpointStorage"
                    else e
                    for e in found
                ]
            _, location = mapping.savepoint_ref(spec.get("restoreFrom") or None)
            start = paths.location_error(location, roots, "spec.restoreFrom") if location else None
            return found + ([start] if start is not None else [])

        errors = await asyncio.to_thread(problems)  # realpath and glob touch the file system
        if errors:
            raise InvalidJobConfigError(errors)

    def _check_user_code(self, wanted: JobConfig) -> None:
        """PythonNotAllowedError for every python step of a module the operator does not allow: on
        every reconcile, as the paths."""
        if self.user_code is None:
            return
        refused = usercode.not_allowed_errors(wanted, self.user_code, prefix="spec.")
        if refused:
            raise PythonNotAllowedError(refused)

    async def _note_pending_changes(self, binding: Binding, entry: JobEntry, wanted: Any) -> None:
        """A spec change of a stopped job that is not a state or a restart waits for one: say so once,
        as an Event (an active job is upgraded at once, as ``spec.upgradeMode`` says)."""
        if not entry.record.status.terminal:
            return
        settings = [
            mapping.setting(k) for k in mapping.OVERRIDABLE if getattr(entry.config, k) != getattr(wanted, k)
        ]
        settings += mapping.pipeline_changes(entry.config, wanted) + binding.pod_changes()
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
        ref = events.involved(namespace, name, uid, crds.STREAMING_JOB_KIND)
        await events.post(self.client, ref, "Warning", "InvalidSpec", message)

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
        if binding.applied_pod is None:  # a new job (or one bound before this was kept): as it starts
            binding.applied_pod = binding.pod_settings
        binding.image, binding.resources = desired.image, dict(desired.resources)
        binding.pod_template = dict(desired.pod_template)
        if job_id not in self.plane.jobs:
            binding.applied_pod = binding.pod_settings
        self.bindings.save(binding)  # before submit: the launcher needs it for the first pods
        self.writer.track(job_id, previous)
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

    async def _ensure_disruption_budget(self, binding: Binding, wanted: int | None) -> None:
        """Creates, changes or deletes the job's PodDisruptionBudget as ``spec.podDisruptionBudget``
        says, at once; the binding remembers what exists, so a job without one costs no request."""
        if wanted == binding.disruption_budget:
            return
        name = pods.disruption_budget_name(binding.name)
        if wanted is None:
            await self.client.delete(kube.PODDISRUPTIONBUDGETS, binding.namespace, name)
        else:
            try:
                await self.client.create(
                    kube.PODDISRUPTIONBUDGETS,
                    binding.namespace,
                    pods.disruption_budget(binding.target, wanted),
                )
            except kube.ConflictError:  # made before (the binding was not saved), or maxUnavailable changed
                change = {"spec": {"maxUnavailable": wanted}}
                await self.client.patch(kube.PODDISRUPTIONBUDGETS, binding.namespace, name, change)
        binding.disruption_budget = wanted
        self.bindings.save(binding)

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
            await self.savepoints.record(binding, snapshot, "taken on cancel")
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
            binding.applied_pod = binding.pod_settings  # the new run's pods have them
            self.bindings.save(binding)
        self.writer.mark(job_id)

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
                    await self.savepoints.record(binding, snapshot, "taken when the StreamingJob was deleted")
                else:
                    await self.plane.cancel(binding.job_id)
            except (IllegalStateTransitionError, SavepointFailedError) as e:
                logger.warning("%s/%s: %s; cancelling without a savepoint", namespace, name, e)
                with contextlib.suppress(IllegalStateTransitionError):
                    await self.plane.cancel(binding.job_id)
        self.bindings.remove(binding.job_id)
        self.writer.forget(binding.job_id)
        self.launcher.forget(namespace, name)
        if entry is None:
            return
        try:  # nothing refers to the job any more: its checkpoints, logs and record go, unless it
            # holds savepoints (they outlive the StreamingJob) or another job restores its state
            await self.plane.purge(binding.job_id)
            logger.info("%s/%s deleted; job %s stopped and purged", namespace, name, binding.job_id)
        except JobError as e:
            logger.info("%s/%s deleted; job %s stopped and kept: %s", namespace, name, binding.job_id, e)

    async def _job_event(self, binding: Binding, type_: str, reason: str, message: str) -> None:
        await events.job_event(self.client, binding, type_, reason, message)
