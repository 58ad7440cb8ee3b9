"""The REST backend's commands: each one a change of resources, checked first and waited for after.

Submit creates a StreamingJob, cancel/pause/resume patch ``spec.state``, restart bumps
``spec.restartNonce`` (with ``restoreFrom`` and the overrides), a savepoint is a Savepoint resource.
Each command is checked against the job state machine first (``control.lifecycle``: 409 as on the
embedded substrate) and then waits, bounded, until the operator's status shows its effect, so the
answer tells the truth. Kept apart from the reads (``apiserver``) because this is where the waits,
their deadlines and the take-backs after a timeout live.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from heliosdb_streaming.control import lifecycle
from heliosdb_streaming.control.lifecycle import Event
from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.kubernetes.operator import mapping
from heliosdb_streaming.kubernetes.restapi import jobviews
from heliosdb_streaming.kubernetes.restapi.clients import NamespaceClients, Obj, name_of
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.errors import (
    IllegalStateTransitionError,
    JobHasSavepointsError,
    JobNotFoundError,
    JobNotTerminalError,
    SavepointFailedError,
    SavepointInUseError,
    SavepointNotFoundError,
)
from heliosdb_streaming.model.types import JobPlanInfo, JobStatus, RestartOptions

logger = logging.getLogger(__name__)

COMMAND_WAIT_S = 30.0  # until the status shows a cancel, pause, resume or restart
SAVEPOINT_WAIT_S = 120.0  # until a savepoint completes (the operator waits for a starting job)
POLL_S = 0.1
CREATE_ATTEMPTS = 3  # random name suffixes tried before giving up on a conflict


class SavepointNotDeletableError(IllegalStateTransitionError):
    """A savepoint without a Savepoint resource (taken on cancel): the API deletes savepoints by
    deleting their resource, whose finalizer removes the files, so this one stays (HTTP 409)."""

    def __init__(self, job_id: str, savepoint_id: str) -> None:
        super().__init__(job_id, "a savepoint without a Savepoint resource", f"delete {savepoint_id} of")
        self.message = (
            f"savepoint {savepoint_id!r} of job {job_id!r} was taken on cancel and has no Savepoint "
            "resource; only savepoints created as Savepoint resources can be deleted"
        )
        self.args = (self.message,)


class JobCommands:
    """The ``JobService`` commands over one namespace's resources (``KubernetesJobService`` delegates)."""

    def __init__(self, clients: NamespaceClients, command_wait_s: float, savepoint_wait_s: float) -> None:
        self.clients = clients
        self.command_wait_s = command_wait_s
        self.savepoint_wait_s = savepoint_wait_s

    @property
    def kube(self) -> kube.KubeClient:
        return self.clients.kube

    @property
    def namespace(self) -> str:
        return self.clients.namespace

    # ------------------------------------------------------------------------------ jobs

    async def submit_job(self, config: JobConfig, from_savepoint: str | None = None) -> str:
        """A StreamingJob; ``from_savepoint`` becomes its ``restoreFrom``: the Savepoint resource at that
        location if there is one (the operator takes any of the namespace's), else the location (the
        operator checks it: no savepoint there, or one of another namespace's job, fails the job)."""
        if from_savepoint is not None:
            from_savepoint = await self.clients.savepoint_name_at(from_savepoint) or from_savepoint
        limit = await self.clients.max_parallelism()
        if limit is not None:
            jobviews.check_submit_parallelism(config, limit)
        for _ in range(CREATE_ATTEMPTS):
            name = jobviews.resource_name(config.name)
            try:
                created = await self.kube.create(
                    kube.STREAMINGJOBS,
                    self.namespace,
                    jobviews.streaming_job(self.namespace, name, config, datetime.now(UTC), from_savepoint),
                )
            except kube.ConflictError:
                continue
            job_id = mapping.job_id_for((created.get("metadata") or {}).get("uid"))
            if job_id is None:
                raise kube.ApiError(500, "NoUid", f"the API server gave StreamingJob {name} no uid")
            self.clients.remember(job_id, name)
            logger.info("%s submitted as StreamingJob %s/%s", job_id, self.namespace, name)
            return job_id
        raise kube.ConflictError(409, "AlreadyExists", f"no free StreamingJob name for {config.name!r}")

    async def validate_job(self, config: JobConfig, from_savepoint: str | None = None) -> JobPlanInfo:
        """A submit's dry run: the checks ``submit_job`` makes here (the parallelism limit), then the
        ones the operator makes when it reconciles the StreamingJob (paths, python allow-list, the
        start snapshot), asked of it now. Creates no resource."""
        limit = await self.clients.max_parallelism()
        if limit is not None:
            jobviews.check_submit_parallelism(config, limit)
        bare = from_savepoint is not None and await self.clients.savepoint_name_at(from_savepoint) is None
        return await self.clients.operator.validate(config.to_dict(), from_savepoint, bare_location=bare)

    async def cancel_job(self, job_id: str) -> None:
        patch = {"state": mapping.DesiredState.CANCELLED.value, "savepointOnCancel": False}
        await self._command(job_id, Event.CANCEL, "cancel", patch, JobStatus.CANCELLED)

    async def pause_job(self, job_id: str) -> None:
        patch = {"state": mapping.DesiredState.PAUSED.value}
        await self._command(job_id, Event.PAUSE, "pause", patch, JobStatus.PAUSED)

    async def resume_job(self, job_id: str) -> None:
        patch = {"state": mapping.DesiredState.RUNNING.value}
        await self._command(job_id, Event.RESUME, "resume", patch, JobStatus.RUNNING)

    async def cancel_job_with_savepoint(self, job_id: str) -> str:
        """``savepointOnCancel`` + ``cancelled``; the savepoint is the job's last act. If none comes
        within the wait, the spec goes back to what it was (the job keeps running, as embedded)."""
        obj = await self.clients.find(job_id)
        _check(obj, job_id, Event.CANCEL, "cancel")
        phase = jobviews.phase_of(obj)
        if phase == JobStatus.SUBMITTED:
            raise IllegalStateTransitionError(job_id, phase.value, "cancel with a savepoint")
        before = _last_savepoint_id(obj)
        spec = obj.get("spec") or {}
        await self._patch_spec(
            job_id, obj, {"state": mapping.DesiredState.CANCELLED.value, "savepointOnCancel": True}
        )

        def settled(current: Obj) -> bool:
            new = _last_savepoint_id(current) not in (None, before)
            return jobviews.phase_of(current).terminal and (
                new or jobviews.phase_of(current) != JobStatus.CANCELLED
            )

        final = await self._wait(job_id, obj, settled, self.savepoint_wait_s)
        savepoint_id = _last_savepoint_id(final) if final is not None else None
        if final is not None and savepoint_id not in (None, before):
            assert savepoint_id is not None
            return savepoint_id
        if final is None:  # still running: take the cancel back
            await self._patch_spec(
                job_id,
                obj,
                {"state": spec.get("state") or "running", "savepointOnCancel": spec.get("savepointOnCancel")},
            )
        why = await self.clients.last_event(name_of(obj), "SavepointFailed")
        raise SavepointFailedError(
            job_id, why or f"no savepoint within {self.savepoint_wait_s:g}s (see the StreamingJob's events)"
        )

    async def restart_job(self, job_id: str, options: RestartOptions | None = None) -> None:
        """Bumps ``restartNonce`` (from ``restoreFrom``, with the overrides in the spec) and waits until
        the operator has applied it."""
        options = options or RestartOptions()
        obj = await self.clients.find(job_id)
        _check(obj, job_id, Event.RESTART, "restart")
        restore_from = None
        if options.savepoint_id is not None:
            restore_from = await self.clients.savepoint_ref(job_id, options.savepoint_id)
        limit = await self.clients.max_parallelism()
        spec = obj.get("spec") or {}
        if limit is not None:
            jobviews.check_restart_parallelism(
                jobviews.restart_parallelism(spec, options.config_overrides), limit
            )
        if options.config_overrides is not None:  # compiles expressions: off the loop
            await asyncio.to_thread(jobviews.check_restart_plan, obj, options.config_overrides)
        patch = jobviews.restart_patch(spec, restore_from, options.config_overrides)
        await self._patch_spec(job_id, obj, patch)
        nonce = patch["restartNonce"]

        def applied(current: Obj) -> bool:
            observed = (current.get("status") or {}).get("observedRestartNonce")
            return isinstance(observed, int) and observed >= nonce

        if await self._wait(job_id, obj, applied, self.command_wait_s) is None:
            logger.warning(
                "%s: the operator did not apply restart %d within %gs", job_id, nonce, self.command_wait_s
            )

    # ------------------------------------------------------------------------------ savepoints

    async def create_savepoint(self, job_id: str, description: str | None = None) -> str:
        """A Savepoint resource, waited for until completed (its id) or failed (``SavepointFailedError``,
        and the resource is deleted: the answer carries its message)."""
        obj = await self.clients.find(job_id)
        phase = jobviews.phase_of(obj)
        if phase not in (JobStatus.RUNNING, JobStatus.PAUSED):
            raise IllegalStateTransitionError(job_id, phase.value, "take a savepoint of")
        resource = jobviews.savepoint_resource(self.namespace, name_of(obj), description)
        created = await self.kube.create(kube.SAVEPOINTS, self.namespace, resource)
        name = name_of(created)
        deadline = asyncio.get_running_loop().time() + self.savepoint_wait_s
        status: Mapping[str, Any] = {}
        while asyncio.get_running_loop().time() < deadline:
            current = await self.kube.get_or_none(kube.SAVEPOINTS, self.namespace, name)
            status = (current or {}).get("status") or {}
            if current is None or status.get("state") in ("completed", "failed"):
                break
            await asyncio.sleep(POLL_S)
        if status.get("state") == "completed" and status.get("savepointId"):
            return str(status["savepointId"])
        await self.kube.delete(kube.SAVEPOINTS, self.namespace, name)
        reason = str(status.get("message") or f"not completed within {self.savepoint_wait_s:g}s")
        raise SavepointFailedError(job_id, reason)

    async def purge_job(self, job_id: str) -> None:
        """Deletes the StreamingJob of a terminal job that has no savepoints (the embedded checks); the
        operator's finalizer then purges the job from its control plane (checkpoints, logs, record)."""
        obj = await self.clients.find(job_id)
        phase = jobviews.phase_of(obj)
        if not phase.terminal:
            raise JobNotTerminalError(job_id, phase.value)
        savepoints = await self.clients.operator.savepoints(job_id) or []
        if savepoints:
            raise JobHasSavepointsError(job_id, sorted(s.savepoint_id for s in savepoints))
        name = name_of(obj)
        await self.kube.delete(kube.STREAMINGJOBS, self.namespace, name, uid=_uid(obj))
        deadline = asyncio.get_running_loop().time() + self.command_wait_s
        while await self.kube.get_or_none(kube.STREAMINGJOBS, self.namespace, name) is not None:
            if asyncio.get_running_loop().time() >= deadline:
                logger.warning("StreamingJob %s is still being deleted after %gs", name, self.command_wait_s)
                return
            await asyncio.sleep(POLL_S)

    async def delete_savepoint(self, job_id: str, savepoint_id: str) -> None:
        """Deletes the Savepoint resource (its finalizer deletes the files) and waits until it is gone."""
        obj = await self.clients.find(job_id)
        resource = await self.clients.savepoint_resource(obj, job_id, savepoint_id)
        if resource is None:
            if await self.clients.operator.savepoint(job_id, savepoint_id) is None:
                raise SavepointNotFoundError(job_id, savepoint_id)
            # taken on cancel: the operator records it as a resource a moment after the job stopped
            resource = await self._recorded_savepoint(obj, job_id, savepoint_id)
        if resource is None:
            raise SavepointNotDeletableError(job_id, savepoint_id)
        # a job restoring it would keep the finalizer waiting: say so now, as the embedded API does
        jobs = await self.kube.list(kube.STREAMINGJOBS, self.namespace)
        if users := mapping.savepoint_restorers(resource, jobs):
            raise SavepointInUseError(job_id, savepoint_id, users)
        name = name_of(resource)
        await self.kube.delete(kube.SAVEPOINTS, self.namespace, name)
        deadline = asyncio.get_running_loop().time() + self.command_wait_s
        while await self.kube.get_or_none(kube.SAVEPOINTS, self.namespace, name) is not None:
            if asyncio.get_running_loop().time() >= deadline:
                logger.warning("Savepoint %s is still being deleted after %gs", name, self.command_wait_s)
                return
            await asyncio.sleep(POLL_S)

    async def _recorded_savepoint(self, obj: Obj, job_id: str, savepoint_id: str) -> Obj | None:
        """The operator's record of a savepoint it took itself, waited for a while: it follows the
        job's stop, which the cancel's answer may have beaten."""
        deadline = asyncio.get_running_loop().time() + self.command_wait_s
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(POLL_S)
            resource = await self.clients.savepoint_resource(obj, job_id, savepoint_id)
            if resource is not None:
                return resource
        return None

    # ------------------------------------------------------------------------------ patch and wait

    async def _patch_spec(self, job_id: str, obj: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
        try:
            await self.kube.patch(kube.STREAMINGJOBS, self.namespace, name_of(obj), {"spec": dict(patch)})
        except kube.NotFoundError:
            raise JobNotFoundError(job_id) from None

    async def _wait(
        self, job_id: str, obj: Mapping[str, Any], done: Callable[[Obj], bool], within_s: float
    ) -> Obj | None:
        """Polls the StreamingJob until ``done(obj)``; the object, or None after ``within_s``."""
        deadline = asyncio.get_running_loop().time() + within_s
        while True:
            current = await self.kube.get_or_none(kube.STREAMINGJOBS, self.namespace, name_of(obj))
            if current is None:
                raise JobNotFoundError(job_id)
            if done(current):
                return current
            if asyncio.get_running_loop().time() >= deadline:
                return None
            await asyncio.sleep(POLL_S)

    async def _command(
        self, job_id: str, event: Event, action: str, patch: Mapping[str, Any], wanted: JobStatus
    ) -> None:
        """Checks ``event`` against the current phase, patches the spec and waits for ``wanted``."""
        obj = await self.clients.find(job_id)
        _check(obj, job_id, event, action)
        await self._patch_spec(job_id, obj, patch)

        def applied(current: Obj) -> bool:
            phase = jobviews.phase_of(current)
            return phase == wanted or phase.terminal

        if await self._wait(job_id, obj, applied, self.command_wait_s) is None:
            logger.warning("%s: the operator did not %s it within %gs", job_id, action, self.command_wait_s)


def _check(obj: Mapping[str, Any], job_id: str, event: Event, action: str) -> None:
    phase = jobviews.phase_of(obj)
    if lifecycle.next_status(phase, event) is None:
        raise IllegalStateTransitionError(job_id, phase.value, action)


def _uid(obj: Mapping[str, Any]) -> str | None:
    uid = (obj.get("metadata") or {}).get("uid")
    return str(uid) if uid else None


def _last_savepoint_id(obj: Mapping[str, Any]) -> str | None:
    last = (obj.get("status") or {}).get("lastSavepoint") or {}
    return str(last.get("savepointId")) if isinstance(last, dict) and last.get("savepointId") else None
