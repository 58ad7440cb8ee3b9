"""The REST API on Kubernetes: ``JobService`` over StreamingJob and Savepoint resources in one namespace.

``helios server --substrate kubernetes`` keeps nothing of its own. Commands become resources and are
waited for until the operator's status shows them (``commands``). Reads, here, come from the
resources' status (``jobviews``), from the operator's read API for what only its control plane knows
(tasks, checkpoints, savepoints, metrics, the control plane's log lines and its ``--max-parallelism``:
``readclient``) and from the pod log API for the workers' log lines (``podlogs``). What the read API
gives about jobs it gives for this server's namespace only. Both halves share one namespace's clients
and lookups (``clients``); this class is the ``JobService`` face over them.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import kopf

from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.kubernetes.operator import pods
from heliosdb_streaming.kubernetes.restapi import jobviews, podlogs
from heliosdb_streaming.kubernetes.restapi.clients import NamespaceClients, Obj, name_of
from heliosdb_streaming.kubernetes.restapi.commands import COMMAND_WAIT_S, SAVEPOINT_WAIT_S, JobCommands
from heliosdb_streaming.kubernetes.restapi.readclient import (
    OperatorClient,
    OperatorUnavailableError,
    checkpoints_of,
    metrics_of_details,
    tasks_of,
)
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.errors import SavepointNotFoundError
from heliosdb_streaming.model.types import (
    AutoscalerInfo,
    CheckpointInfo,
    JobDetails,
    JobMetrics,
    JobPlanInfo,
    JobStatus,
    LogEntry,
    LogLevel,
    LogOptions,
    MetricsWindow,
    RestartOptions,
    SavepointInfo,
)

logger = logging.getLogger(__name__)


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
        self.namespace = namespace
        self.clients = NamespaceClients(connection, namespace, operator_url, api_token)
        self.commands = JobCommands(self.clients, command_wait_s, savepoint_wait_s)

    async def start(self) -> None:
        await self.clients.start()

    async def close(self) -> None:
        await self.clients.close()

    @property
    def operator_url(self) -> str:
        return self.clients.operator_url

    @operator_url.setter
    def operator_url(self, url: str) -> None:
        """Used from the next ``start()`` on."""
        self.clients.operator_url = url

    @property
    def kube(self) -> kube.KubeClient:
        return self.clients.kube

    @property
    def operator(self) -> OperatorClient:
        return self.clients.operator

    async def max_parallelism(self) -> int | None:
        return await self.clients.max_parallelism()

    # ------------------------------------------------------------------------------ commands

    async def submit_job(self, config: JobConfig, from_savepoint: str | None = None) -> str:
        return await self.commands.submit_job(config, from_savepoint)

    async def validate_job(self, config: JobConfig, from_savepoint: str | None = None) -> JobPlanInfo:
        return await self.commands.validate_job(config, from_savepoint)

    async def cancel_job(self, job_id: str) -> None:
        await self.commands.cancel_job(job_id)

    async def pause_job(self, job_id: str) -> None:
        await self.commands.pause_job(job_id)

    async def resume_job(self, job_id: str) -> None:
        await self.commands.resume_job(job_id)

    async def cancel_job_with_savepoint(self, job_id: str) -> str:
        return await self.commands.cancel_job_with_savepoint(job_id)

    async def purge_job(self, job_id: str) -> None:
        await self.commands.purge_job(job_id)

    async def restart_job(self, job_id: str, options: RestartOptions | None = None) -> None:
        await self.commands.restart_job(job_id, options)

    async def create_savepoint(self, job_id: str, description: str | None = None) -> str:
        return await self.commands.create_savepoint(job_id, description)

    async def delete_savepoint(self, job_id: str, savepoint_id: str) -> None:
        await self.commands.delete_savepoint(job_id, savepoint_id)

    # ------------------------------------------------------------------------------ jobs

    async def list_jobs_json(self, status: JobStatus | None, limit: int, offset: int) -> bytes:
        return jobviews.list_body(await self.clients.list_jobs(), status, limit, offset, datetime.now(UTC))

    async def get_job_status(self, job_id: str) -> JobStatus:
        return jobviews.phase_of(await self.clients.find(job_id))

    async def get_job_details(self, job_id: str) -> JobDetails:
        obj = await self.clients.find(job_id)
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
        uptime = jobviews.uptime_seconds(obj, now)
        return JobDetails(
            job_id=job_id,
            name=jobviews.job_name_of(obj),
            status=phase,
            config=config,
            submitted_at=jobviews.submitted_at(obj),
            started_at=jobviews.parse_time(status.get("startedAt")),
            finished_at=jobviews.parse_time(status.get("finishedAt")),
            uptime_secs=uptime,
            # the operator's own figures, to the millisecond, when it answered
            uptime_ms=int(body.get("uptime_ms", uptime * 1000)) if body is not None else uptime * 1000,
            recovering=bool(body.get("recovering")) if body is not None else False,
            metrics=metrics,
            tasks=tasks,
            checkpoints=checkpoints,
            message=message,
            restarts=jobviews.restarts_of(obj),
            plan=JobPlanInfo.of(config, jobviews.source_tasks(config, tasks)),
            autoscaler=AutoscalerInfo.model_validate(body["autoscaler"])
            if body and body.get("autoscaler")
            else None,
        )

    async def get_job_metrics(self, job_id: str, window: MetricsWindow) -> JobMetrics:
        obj = await self.clients.find(job_id)
        restarts = jobviews.restarts_of(obj)
        metrics = await self.operator.metrics(job_id, window, restarts)
        return metrics or JobMetrics(restarts=restarts, window_seconds=window.seconds)

    async def get_job_logs(self, job_id: str, options: LogOptions) -> list[LogEntry]:
        """The control plane's lines about the job (from the operator) and its worker pods' logs,
        merged by time; a pod whose container has not started yet has none."""
        obj = await self.clients.find(job_id)
        labels = {**pods.job_labels(name_of(obj)), pods.LABEL_COMPONENT: "worker"}
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
        name = name_of(pod)
        try:
            text = await self.kube.pod_log(self.namespace, name, tail_lines=tail_lines)
        except kube.ApiError as e:  # not started yet (400) or deleted meanwhile (404): no lines
            logger.debug("no log of pod %s: %s", name, e)
            return []
        started = jobviews.parse_time((pod.get("status") or {}).get("startTime"))
        return podlogs.parse_pod_log(text, started)

    async def restore_savepoint_id(self, job_id: str) -> str | None:
        await self.clients.find(job_id)
        known, savepoint_id = await self.operator.restore_point(job_id)
        if known:  # the control plane knows which snapshot the last run restored and took since
            return savepoint_id
        checkpoints = await self.operator.checkpoints(job_id) or []
        savepoints = await self.operator.savepoints(job_id) or []
        return jobviews.restore_savepoint(checkpoints, savepoints)

    # ------------------------------------------------------------------------------ snapshots

    async def get_savepoint(self, job_id: str, savepoint_id: str) -> SavepointInfo:
        await self.clients.find(job_id)
        info = await self.operator.savepoint(job_id, savepoint_id)
        if info is None:
            raise SavepointNotFoundError(job_id, savepoint_id)
        return info

    async def list_savepoints(self, job_id: str) -> list[SavepointInfo]:
        await self.clients.find(job_id)
        return await self.operator.savepoints(job_id) or []

    async def list_checkpoints(self, job_id: str) -> list[CheckpointInfo]:
        await self.clients.find(job_id)
        return await self.operator.checkpoints(job_id) or []

    # ------------------------------------------------------------------------------ service

    async def prometheus_exposition(self) -> bytes:
        """The exposition of this namespace's jobs: the operator's control plane has every job's
        counters and histograms, and renders only those whose StreamingJob is in this namespace."""
        return await self.operator.prometheus()
