"""The REST API on Kubernetes: ``JobService`` over StreamingJob and Savepoint resources in one namespace.

``helios server --substrate kubernetes`` keeps nothing of its own. Commands become resources: submit
creates a StreamingJob, cancel/pause/resume patch ``spec.state``, a savepoint is a Savepoint resource,
restart bumps ``spec.restartNonce`` (with ``restoreFrom`` and the overrides). Each command is checked
against the job state machine first (``control.lifecycle``: 409 as on the embedded substrate) and then
waits, bounded, until the operator's status shows its effect, so the answer tells the truth. Reads
come from the resources' status (``jobviews``), from the operator's read API for what only its control
plane knows (tasks, checkpoints, savepoints, metrics, the control plane's log lines and its
``--max-parallelism``: ``readclient``) and from the pod log API for the workers' log lines
(``podlogs``). What the read API gives about jobs it gives for this server's namespace only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from heliosdb_streaming.control import lifecycle
from heliosdb_streaming.control.lifecycle import Event
from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.kubernetes.operator import mapping, pods
from heliosdb_streaming.kubernetes.restapi import jobviews, podlogs
from heliosdb_streaming.kubernetes.restapi.readclient import (
    OperatorClient,
    OperatorUnavailableError,
    checkpoints_of,
    metrics_of_details,
    tasks_of,
)
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.errors import (
    IllegalStateTransitionError,
    JobNotFoundError,
    SavepointFailedError,
    SavepointNotFoundError,
)
from heliosdb_streaming.model.types import (
    CheckpointInfo,
    JobDetails,
    JobMetrics,
    JobStatus,
    LogEntry,
    LogLevel,
    LogOptions,
    MetricsWindow,
    RestartOptions,
    SavepointInfo,
)

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

COMMAND_WAIT_S = 30.0  # until the status shows a cancel, pause, resume or restart
LIMITS_TTL_S = 60.0  # how long the operator's max parallelism is trusted before asking again
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


class KubernetesJobService:
    """The REST API's ``JobService`` on Kubernetes. ``start()`` opens the clients, ``close()`` them."""

    def __init__(
        self,
        connection: kopf.ConnectionInfo,
        namespace: str,
        operator_url: str,
        *,
        api_token: str | None = None,
        command_wait_s: float = COMMAND_WAIT_S,
        savepoint_wait_s: float = SAVEPOINT_WAIT_S,
    ) -> None:
        self.connection = connection
        self.namespace = namespace
        self.operator_url = operator_url
        self.api_token = api_token
        self.command_wait_s = command_wait_s
        self.savepoint_wait_s = savepoint_wait_s
        self._kube: kube.KubeClient | None = None
        self._operator: OperatorClient | None = None
        self._names: dict[str, str] = {}  # job id -> StreamingJob name, verified on every use
        self._max_parallelism: tuple[float, int] | None = None  # (when asked, the operator's answer)

    async def start(self) -> None:
        if self._kube is None:
            self._kube = kube.KubeClient(self.connection)
        if self._operator is None:
            self._operator = OperatorClient(self.operator_url, self.namespace, self.api_token)

    async def close(self) -> None:
        if self._kube is not None:
            await self._kube.close()
            self._kube = None
        if self._operator is not None:
            await self._operator.close()
            self._operator = None

    @property
    def kube(self) -> kube.KubeClient:
        if self._kube is None:
            raise RuntimeError("KubernetesJobService is not started: await start()")
        return self._kube

    @property
    def operator(self) -> OperatorClient:
        if self._operator is None:
            raise RuntimeError("KubernetesJobService is not started: await start()")
        return self._operator

    # ------------------------------------------------------------------------------ resources

    async def _find(self, job_id: str) -> Obj:
        """The StreamingJob of ``job_id``; ``JobNotFoundError`` when there is none in the namespace."""
        name = self._names.get(job_id)
        if name is not None:
            obj = await self.kube.get_or_none(kube.STREAMINGJOBS, self.namespace, name)
            if obj is not None and jobviews.is_job(obj, job_id):
                return obj
            self._names.pop(job_id, None)
        for obj in await self._list():
            if jobviews.is_job(obj, job_id):
                return obj
        raise JobNotFoundError(job_id)

    async def _list(self) -> list[Obj]:
        objs = await self.kube.list(kube.STREAMINGJOBS, self.namespace)
        for obj in objs:
            self._names[jobviews.job_id_of(obj)] = str(obj["metadata"]["name"])
        return objs

    async def max_parallelism(self) -> int | None:
        """The operator's ``--max-parallelism`` (asked at most every ``LIMITS_TTL_S``); the last known
        value, or None, while its read API does not answer (the operator still enforces it)."""
        now = asyncio.get_running_loop().time()
        known = self._max_parallelism
        if known is not None and now - known[0] < LIMITS_TTL_S:
            return known[1]
        try:
            info = await self.operator.info()
        except OperatorUnavailableError as e:
            logger.warning("cannot check parallelism against the operator's limit: %s", e.message)
            return known[1] if known is not None else None
        self._max_parallelism = (now, info.max_parallelism)
        return info.max_parallelism

    @staticmethod
    def _name(obj: Mapping[str, Any]) -> str:
        return str(obj["metadata"]["name"])

    async def _patch_spec(self, job_id: str, obj: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
        try:
            await self.kube.patch(kube.STREAMINGJOBS, self.namespace, self._name(obj), {"spec": dict(patch)})
        except kube.NotFoundError:
            raise JobNotFoundError(job_id) from None

    async def _wait(
        self, job_id: str, obj: Mapping[str, Any], done: Callable[[Obj], bool], within_s: float
    ) -> Obj | None:
        """Polls the StreamingJob until ``done(obj)``; the object, or None after ``within_s``."""
        deadline = asyncio.get_running_loop().time() + within_s
        while True:
            current = await self.kube.get_or_none(kube.STREAMINGJOBS, self.namespace, self._name(obj))
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
        obj = await self._find(job_id)
        _check(obj, job_id, event, action)
        await self._patch_spec(job_id, obj, patch)

        def applied(current: Obj) -> bool:
            phase = jobviews.phase_of(current)
            return phase == wanted or phase.terminal

        if await self._wait(job_id, obj, applied, self.command_wait_s) is None:
            logger.warning("%s: the operator did not %s it within %gs", job_id, action, self.command_wait_s)

    # ------------------------------------------------------------------------------ jobs

    async def submit_job(self, config: JobConfig, from_savepoint: str | None = None) -> str:
        """A StreamingJob; ``from_savepoint`` becomes its ``restoreFrom``: the Savepoint resource at that
        location if there is one (the operator takes any of the namespace's), else the location (the
        operator checks it: no savepoint there, or one of another namespace's job, fails the job)."""
        if from_savepoint is not None:
            from_savepoint = await self._savepoint_name_at(from_savepoint) or from_savepoint
        limit = await self.max_parallelism()
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
            self._names[job_id] = name
            logger.info("%s submitted as StreamingJob %s/%s", job_id, self.namespace, name)
            return job_id
        raise kube.ConflictError(409, "AlreadyExists", f"no free StreamingJob name for {config.name!r}")

    async def list_jobs_json(self, status: JobStatus | None, limit: int, offset: int) -> bytes:
        return jobviews.list_body(await self._list(), status, limit, offset, datetime.now(UTC))

    async def get_job_status(self, job_id: str) -> JobStatus:
        return jobviews.phase_of(await self._find(job_id))

    async def get_job_details(self, job_id: str) -> JobDetails:
        obj = await self._find(job_id)
        phase = jobviews.phase_of(obj)
        status = obj.get("status") or {}
        message = jobviews.message_of(obj)
        try:
            body = await self.operator.details(job_id)
        except OperatorUnavailableError as e:  # what the resource says still holds: show it, say why
            logger.warning("details of %s without the operator's part: %s", job_id, e)
            body, message = None, f"{message + '; ' if message else ''}metrics unavailable: {e.message}"
        if body is None:  # the operator has not reconciled the resource yet
            config = await asyncio.to_thread(jobviews.config_of, obj)  # compiles expressions
            metrics = JobMetrics(restarts=jobviews.restarts_of(obj))
            tasks = jobviews.planned_tasks(config, phase)
            checkpoints: list[CheckpointInfo] = []
        else:
            config = await asyncio.to_thread(jobviews.config_of, obj, body["config"])
            metrics = metrics_of_details(body)
            tasks = [t.model_copy(update={"status": phase}) for t in tasks_of(body)]
            checkpoints = checkpoints_of(body)
        now = datetime.now(UTC)
        return JobDetails(
            job_id=job_id,
            name=jobviews.job_name_of(obj),
            status=phase,
            config=config,
            submitted_at=jobviews.submitted_at(obj),
            started_at=jobviews.parse_time(status.get("startedAt")),
            finished_at=jobviews.parse_time(status.get("finishedAt")),
            uptime_secs=jobviews.uptime_seconds(obj, now),
            metrics=metrics,
            tasks=tasks,
            checkpoints=checkpoints,
            message=message,
            restarts=jobviews.restarts_of(obj),
        )

    async def get_job_metrics(self, job_id: str, window: MetricsWindow) -> JobMetrics:
        obj = await self._find(job_id)
        restarts = jobviews.restarts_of(obj)
        metrics = await self.operator.metrics(job_id, window, restarts)
        return metrics or JobMetrics(restarts=restarts, window_seconds=window.seconds)

    async def get_job_logs(self, job_id: str, options: LogOptions) -> list[LogEntry]:
        """The control plane's lines about the job (from the operator) and its worker pods' logs,
        merged by time; a pod whose container has not started yet has none."""
        obj = await self._find(job_id)
        labels = {**pods.job_labels(self._name(obj)), pods.LABEL_COMPONENT: "worker"}
        workers = await self.kube.list(kube.PODS, self.namespace, labels)
        workers.sort(key=lambda p: int((p["metadata"].get("labels") or {}).get(pods.LABEL_INDEX, 0)))
        # without a level filter the last N entries are among each pod's last N lines
        tail_lines = options.limit if options.tail and options.level is None else None
        logs = await asyncio.gather(
            self._control_log(job_id, options), *(self._pod_log(pod, tail_lines) for pod in workers)
        )
        return podlogs.job_log(logs, options)  # the control plane's first: its line wins a tie

    async def _control_log(self, job_id: str, options: LogOptions) -> list[LogEntry]:
        """The control plane's entries (already cut to the first/last ``limit``: so is the merge's
        answer). Without the operator the workers' lines still answer, with a warning that says so."""
        try:
            return await self.operator.control_log(job_id, options) or []
        except OperatorUnavailableError as e:
            logger.warning("logs of %s without the control plane's lines: %s", job_id, e.message)
            missing = f"the control plane's log lines are missing: {e.message}"
            return [LogEntry(timestamp=datetime.now(UTC), level=LogLevel.WARN, message=missing)]

    async def _pod_log(self, pod: Obj, tail_lines: int | None) -> list[LogEntry]:
        name = self._name(pod)
        try:
            text = await self.kube.pod_log(self.namespace, name, tail_lines=tail_lines)
        except kube.ApiError as e:  # not started yet (400) or deleted meanwhile (404): no lines
            logger.debug("no log of pod %s: %s", name, e)
            return []
        started = jobviews.parse_time((pod.get("status") or {}).get("startTime"))
        return podlogs.parse_pod_log(text, started)

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
        obj = await self._find(job_id)
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
        why = await self._last_event(self._name(obj), "SavepointFailed")
        raise SavepointFailedError(
            job_id, why or f"no savepoint within {self.savepoint_wait_s:g}s (see the StreamingJob's events)"
        )

    async def restart_job(self, job_id: str, options: RestartOptions | None = None) -> None:
        """Bumps ``restartNonce`` (from ``restoreFrom``, with the overrides in the spec) and waits until
        the operator has applied it."""
        options = options or RestartOptions()
        obj = await self._find(job_id)
        _check(obj, job_id, Event.RESTART, "restart")
        restore_from = None
        if options.savepoint_id is not None:
            restore_from = await self._savepoint_ref(job_id, options.savepoint_id)
        limit = await self.max_parallelism()
        spec = obj.get("spec") or {}
        if limit is not None:
            jobviews.check_restart_parallelism(
                jobviews.restart_parallelism(spec, options.config_overrides), limit
            )
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

    async def restore_savepoint_id(self, job_id: str) -> str | None:
        await self._find(job_id)
        checkpoints = await self.operator.checkpoints(job_id) or []
        savepoints = await self.operator.savepoints(job_id) or []
        return jobviews.restore_savepoint(checkpoints, savepoints)

    # ------------------------------------------------------------------------------ savepoints

    async def create_savepoint(self, job_id: str, description: str | None = None) -> str:
        """A Savepoint resource, waited for until completed (its id) or failed (``SavepointFailedError``,
        and the resource is deleted: the answer carries its message)."""
        obj = await self._find(job_id)
        phase = jobviews.phase_of(obj)
        if phase not in (JobStatus.RUNNING, JobStatus.PAUSED):
            raise IllegalStateTransitionError(job_id, phase.value, "take a savepoint of")
        resource = jobviews.savepoint_resource(self.namespace, self._name(obj), description)
        created = await self.kube.create(kube.SAVEPOINTS, self.namespace, resource)
        name = self._name(created)
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

    async def get_savepoint(self, job_id: str, savepoint_id: str) -> SavepointInfo:
        await self._find(job_id)
        info = await self.operator.savepoint(job_id, savepoint_id)
        if info is None:
            raise SavepointNotFoundError(job_id, savepoint_id)
        return info

    async def list_savepoints(self, job_id: str) -> list[SavepointInfo]:
        await self._find(job_id)
        return await self.operator.savepoints(job_id) or []

    async def delete_savepoint(self, job_id: str, savepoint_id: str) -> None:
        """Deletes the Savepoint resource (its finalizer deletes the files) and waits until it is gone."""
        obj = await self._find(job_id)
        resource = await self._savepoint_resource(obj, job_id, savepoint_id)
        if resource is None:
            if await self.operator.savepoint(job_id, savepoint_id) is None:
                raise SavepointNotFoundError(job_id, savepoint_id)
            # taken on cancel: the operator records it as a resource a moment after the job stopped
            resource = await self._recorded_savepoint(obj, job_id, savepoint_id)
        if resource is None:
            raise SavepointNotDeletableError(job_id, savepoint_id)
        name = self._name(resource)
        await self.kube.delete(kube.SAVEPOINTS, self.namespace, name)
        deadline = asyncio.get_running_loop().time() + self.command_wait_s
        while await self.kube.get_or_none(kube.SAVEPOINTS, self.namespace, name) is not None:
            if asyncio.get_running_loop().time() >= deadline:
                logger.warning("Savepoint %s is still being deleted after %gs", name, self.command_wait_s)
                return
            await asyncio.sleep(POLL_S)

    async def list_checkpoints(self, job_id: str) -> list[CheckpointInfo]:
        await self._find(job_id)
        return await self.operator.checkpoints(job_id) or []

    async def _savepoint_resource(self, obj: Obj, job_id: str, savepoint_id: str) -> Obj | None:
        """The completed Savepoint resource of this job with this savepoint id, if any."""
        for sp in await self.kube.list(kube.SAVEPOINTS, self.namespace):
            status = sp.get("status") or {}
            mine = status.get("jobId") == job_id or (sp.get("spec") or {}).get("jobRef") == self._name(obj)
            if mine and status.get("savepointId") == savepoint_id and status.get("state") == "completed":
                return sp
        return None

    async def _recorded_savepoint(self, obj: Obj, job_id: str, savepoint_id: str) -> Obj | None:
        """The operator's record of a savepoint it took itself, waited for a while: it follows the
        job's stop, which the cancel's answer may have beaten."""
        deadline = asyncio.get_running_loop().time() + self.command_wait_s
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(POLL_S)
            resource = await self._savepoint_resource(obj, job_id, savepoint_id)
            if resource is not None:
                return resource
        return None

    async def _savepoint_name_at(self, location: str) -> str | None:
        """The completed Savepoint resource of this namespace whose files are at ``location``."""
        for sp in await self.kube.list(kube.SAVEPOINTS, self.namespace):
            status = sp.get("status") or {}
            if status.get("state") == "completed" and status.get("location") == location.strip():
                return self._name(sp)
        return None

    async def _savepoint_ref(self, job_id: str, savepoint_id: str) -> str:
        """What ``restoreFrom`` names a savepoint by: its Savepoint resource, else its location."""
        obj = await self._find(job_id)
        resource = await self._savepoint_resource(obj, job_id, savepoint_id)
        if resource is not None:
            return self._name(resource)
        info = await self.operator.savepoint(job_id, savepoint_id)
        if info is None:
            raise SavepointNotFoundError(job_id, savepoint_id)
        return info.location

    async def _last_event(self, name: str, reason: str) -> str | None:
        """The message of the newest ``reason`` Event on ``name`` (the why of a failure), if readable."""
        try:
            items = await self.kube.list(kube.EVENTS, self.namespace)
        except kube.ApiError as e:
            logger.warning("cannot read the events of %s: %s", name, e)
            return None
        events = [
            e
            for e in items
            if (e.get("involvedObject") or {}).get("name") == name and e.get("reason") == reason
        ]
        events.sort(key=lambda e: str(e.get("lastTimestamp") or ""))
        return str(events[-1].get("message") or "") or None if events else None

    # ------------------------------------------------------------------------------ service

    async def prometheus_exposition(self) -> bytes:
        """The exposition of this namespace's jobs: the operator's control plane has every job's
        counters and histograms, and renders only those whose StreamingJob is in this namespace."""
        return await self.operator.prometheus()


def _check(obj: Mapping[str, Any], job_id: str, event: Event, action: str) -> None:
    phase = jobviews.phase_of(obj)
    if lifecycle.next_status(phase, event) is None:
        raise IllegalStateTransitionError(job_id, phase.value, action)


def _last_savepoint_id(obj: Mapping[str, Any]) -> str | None:
    last = (obj.get("status") or {}).get("lastSavepoint") or {}
    return str(last.get("savepointId")) if isinstance(last, dict) and last.get("savepointId") else None
