"""The spec's native job API over one ``ControlPlane``, whatever substrate runs the workers.

``JobServiceCore`` answers the spec's methods (``submit_job``, ``get_job_details``, savepoints...)
from a control plane's job entries and shapes them into the native types of ``model.types``. Both
substrates use it: the embedded ``JobManager`` (``job.manager``) is this core plus the wiring of the
local parts (SQLite store, subprocess launcher, log files) and a control plane it starts on first use;
the operator's read API serves a core over the plane the operator runs. It also answers what the REST
API's ``JobService`` needs beyond the spec's methods (the serialized job list page, the savepoint a
plain restart restores), so that the API never reaches into the control plane.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from heliosdb_streaming.control import autoscaler, paths, usercode
from heliosdb_streaming.control.controller import ControlPlane
from heliosdb_streaming.control.entry import JobEntry
from heliosdb_streaming.control.listing import JobListCache
from heliosdb_streaming.control.snapshots import locate_start
from heliosdb_streaming.control.store import SnapshotRecord
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.errors import (
    FieldError,
    InvalidJobConfigError,
    PythonNotAllowedError,
    SavepointNotFoundError,
)
from heliosdb_streaming.model.types import (
    AutoscalerDecisionInfo,
    AutoscalerInfo,
    CheckpointInfo,
    JobDetails,
    JobMetrics,
    JobPlanInfo,
    JobStatus,
    JobSummary,
    ListJobsOptions,
    LogEntry,
    LogOptions,
    MetricsWindow,
    RestartOptions,
    SavepointInfo,
    StageTaskMetrics,
    TaskInfo,
    ThroughputPoint,
)
from heliosdb_streaming.runtime.checkpoint.tasks import SnapshotLocation
from heliosdb_streaming.runtime.graph import operator_names


class JobServiceCore:
    """The native job API over ``plane``, which its owner started and will close.

    ``allowed_roots``: None lets jobs use any local path (the native API, ``helios run``); else every
    file a job names must resolve inside them (``control.paths``), checked on submit and restart.
    ``user_code``: which modules python steps may name (``control.usercode``); default any, imported
    at submit to check them.
    """

    def __init__(
        self,
        plane: ControlPlane | None = None,
        *,
        allowed_roots: paths.AllowedRoots | None = None,
        user_code: usercode.UserCodePolicy | None = None,
    ) -> None:
        self._plane = plane
        self.allowed_roots = allowed_roots
        self.user_code = user_code or usercode.UserCodePolicy()
        self._list_cache = JobListCache()

    async def _control(self) -> ControlPlane:
        """The control plane (a subclass may start it here on first use)."""
        return self.control_plane

    async def start(self) -> None:
        """Starts the control plane now instead of on first use (``async with`` calls it)."""
        await self._control()

    async def close(self) -> None:
        """Leaves the plane to its owner."""

    @property
    def control_plane(self) -> ControlPlane:
        if self._plane is None:
            raise RuntimeError("JobManager is not started: use 'async with' or await start()")
        return self._plane

    # ------------------------------------------------------------------------------ commands

    async def submit_job(
        self, config: JobConfig | dict[str, Any], *, from_savepoint: str | None = None
    ) -> str:
        """Validates and submits a job; returns its id (``job-<uuid>``). Raises InvalidJobConfigError.

        ``from_savepoint``: the ``location`` of a savepoint (or retained checkpoint) of any job to start
        from, as Flink's ``--fromSavepoint``: source positions and the state of operators that still
        exist are restored (an upgrade with a changed pipeline); the rest starts empty.
        """
        config, start = await self._checked(config, from_savepoint)
        plane = await self._control()
        return plane.submit(config, start_from=start).job_id

    async def validate_job(
        self, config: JobConfig | dict[str, Any], *, from_savepoint: str | None = None
    ) -> JobPlanInfo:
        """Every check ``submit_job`` makes, and nothing else: the plan the job would run with.

        A dry run (``POST /api/v1/jobs?dry_run=true``): raises exactly what ``submit_job`` would
        raise for the same arguments, and creates no job, no file and no log."""
        config, start = await self._checked(config, from_savepoint)
        plane = await self._control()
        plane.check_submit(config, start)
        return JobPlanInfo.of(config)

    async def _checked(
        self, config: JobConfig | dict[str, Any], from_savepoint: str | None
    ) -> tuple[JobConfig, SnapshotLocation | None]:
        """The config after the model, plan, path and user-code checks, and where it would start."""
        if not isinstance(config, JobConfig):  # compiling expressions is CPU work: off the loop
            config = await asyncio.to_thread(JobConfig.from_dict, config)
        config.check_plan()  # again: a config built with model_copy skipped its validators
        await self._check_paths(config, from_savepoint)
        await self._check_user_code(config, imports=True)
        start = await locate_start(from_savepoint, "from_savepoint") if from_savepoint is not None else None
        return config, start

    async def cancel_job(self, job_id: str) -> None:
        """Stops every worker of the job; it ends ``cancelled``. Raises JobNotFoundError, or
        IllegalStateTransitionError when the job has already ended."""
        plane = await self._control()
        await plane.cancel(job_id)

    async def purge_job(self, job_id: str) -> None:
        """Removes a finished, failed or cancelled job with its logs, checkpoints and files.

        ``JobNotTerminalError`` while it is live, ``JobHasSavepointsError`` while it has savepoints."""
        plane = await self._control()
        await plane.purge(job_id)

    async def cancel_job_with_savepoint(self, job_id: str) -> str:
        """Takes a savepoint and stops the job right after it; returns the savepoint id."""
        plane = await self._control()
        snapshot = await plane.cancel_with_savepoint(job_id)
        assert snapshot.savepoint_id is not None
        return snapshot.savepoint_id

    async def create_savepoint(self, job_id: str, description: str | None = None) -> str:
        """Snapshots a running or paused job; the savepoint is kept until deleted. Returns its id."""
        plane = await self._control()
        snapshot = await plane.savepoint(job_id, description)
        assert snapshot.savepoint_id is not None
        return snapshot.savepoint_id

    async def list_savepoints(self, job_id: str) -> list[SavepointInfo]:
        """The job's completed savepoints, oldest first."""
        plane = await self._control()
        entry = plane.get(job_id)
        return [
            _savepoint_info(s)
            for s in entry.snapshots
            if s.savepoint_id is not None and s.status == "completed"
        ]

    async def get_savepoint(self, job_id: str, savepoint_id: str) -> SavepointInfo:
        """One savepoint; its ``location`` is what ``submit_job(from_savepoint=...)`` takes. Raises
        SavepointNotFoundError."""
        plane = await self._control()
        snapshot = plane.get(job_id).savepoint(savepoint_id)
        if snapshot is None:
            raise SavepointNotFoundError(job_id, savepoint_id)
        return _savepoint_info(snapshot)

    async def delete_savepoint(self, job_id: str, savepoint_id: str) -> None:
        """Deletes the savepoint and its files. Raises SavepointInUseError while a job still restores
        from it (until that job has a completed checkpoint of its own)."""
        plane = await self._control()
        await plane.delete_savepoint(job_id, savepoint_id)

    async def list_checkpoints(self, job_id: str) -> list[CheckpointInfo]:
        """The job's checkpoints, oldest first, failed and in-progress ones included."""
        plane = await self._control()
        return _checkpoint_infos(plane.get(job_id))

    async def restart_job(self, job_id: str, options: RestartOptions | None = None) -> None:
        """Restarts from ``options.savepoint_id``, else from the newest checkpoint or savepoint.

        Allowed from failed, cancelled and finished, and from running (stop, then restore).
        ``options.config_overrides`` (e.g. ``JobConfigOverrides(parallelism=8)``) apply to the new run.
        """
        options = options or RestartOptions()
        plane = await self._control()
        await self._check_paths(plane.get(job_id).config, None)  # overrides name no paths
        await self._check_user_code(plane.get(job_id).config, imports=False)
        await plane.restart(job_id, options.savepoint_id, options.config_overrides)

    async def _check_paths(self, config: JobConfig, from_savepoint: str | None) -> None:
        """InvalidJobConfigError naming each field whose local path is outside the allowed roots.

        Also on restart: a job stored by an unrestricted manager over the same home (or before the
        roots changed) does not run again through a restricted one with paths outside them."""
        roots = self.allowed_roots
        if roots is None:
            return

        def problems() -> list[FieldError]:
            found = paths.job_path_errors(config, roots)
            if from_savepoint is not None:
                start = paths.location_error(from_savepoint, roots, "from_savepoint")
                found += [start] if start is not None else []
            return found

        errors = await asyncio.to_thread(problems)  # realpath and glob touch the file system
        if errors:
            raise InvalidJobConfigError(errors)

    async def _check_user_code(self, config: JobConfig, *, imports: bool) -> None:
        """PythonNotAllowedError naming each field whose module this service does not allow; then, with
        ``imports`` and where the policy says so, InvalidJobConfigError for references that do not import.

        The allow-list also applies on restart, for the same reason as the paths."""
        policy = self.user_code
        if not usercode.function_fields(config):
            return
        refused = usercode.not_allowed_errors(config, policy)
        if refused:
            raise PythonNotAllowedError(refused)
        if imports and policy.import_check:
            refused, errors = await asyncio.to_thread(usercode.import_errors, config, policy)
            if refused:
                raise PythonNotAllowedError(refused)
            if errors:
                raise InvalidJobConfigError(errors)

    async def pause_job(self, job_id: str) -> None:
        """Stops the sources of a running job and keeps all state. Raises IllegalStateTransitionError
        unless the job is running."""
        plane = await self._control()
        await plane.pause(job_id)

    async def resume_job(self, job_id: str) -> None:
        """Lets a paused job's sources go on where they stopped. Raises IllegalStateTransitionError
        unless the job is paused."""
        plane = await self._control()
        await plane.resume(job_id)

    # ------------------------------------------------------------------------------ queries

    async def get_job_status(self, job_id: str) -> JobStatus:
        """The job's status. Raises JobNotFoundError."""
        plane = await self._control()
        return plane.get(job_id).record.status

    async def list_jobs(self, options: ListJobsOptions | None = None) -> list[JobSummary]:
        """Jobs newest first, filtered by ``options.status``, one page (``limit``, ``offset``)."""
        options = options or ListJobsOptions()
        plane = await self._control()
        entries = [
            e for e in plane.jobs.values() if options.status is None or e.record.status == options.status
        ]
        entries.sort(key=lambda e: (e.record.submitted_at, e.record.job_id), reverse=True)
        return [self._summary(plane, e) for e in entries[options.offset : options.offset + options.limit]]

    async def count_jobs(self, status: JobStatus | None = None) -> int:
        """How many jobs there are (in ``status``, when given): the total of a paged list."""
        plane = await self._control()
        return sum(1 for e in plane.jobs.values() if status is None or e.record.status == status)

    async def get_job_details(self, job_id: str) -> JobDetails:
        """Status and message, config, times, metrics of the last 5 minutes, tasks, the 10 newest
        checkpoints and the restart count."""
        plane = await self._control()
        entry = plane.get(job_id)
        record = entry.record
        return JobDetails(
            job_id=record.job_id,
            name=record.name,
            status=record.status,
            config=entry.config,
            submitted_at=record.submitted_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            uptime_secs=plane.uptime_seconds(record),
            uptime_ms=plane.uptime_ms(record),
            recovering=entry.recovering(),
            metrics=self._metrics(entry, MetricsWindow.minutes(5)),
            tasks=self._tasks(entry),
            checkpoints=_checkpoint_infos(entry)[-10:],
            message=record.message,
            restarts=record.restarts,
            plan=JobPlanInfo.of(entry.config, self._source_tasks(entry)),
            autoscaler=_autoscaler_info(entry),
        )

    async def get_job_metrics(self, job_id: str, window: MetricsWindow | None = None) -> JobMetrics:
        """Totals over the job's life; throughput and latency over ``window`` (default 5 minutes)."""
        plane = await self._control()
        return self._metrics(plane.get(job_id), window or MetricsWindow.minutes(5))

    async def get_job_logs(self, job_id: str, options: LogOptions | None = None) -> list[LogEntry]:
        """The job's log lines (control plane and workers), filtered by ``options`` (level, limit, tail)."""
        plane = await self._control()
        log = plane.get(job_id).log  # JobNotFoundError for an unknown job
        # reading (and parsing) the log files is blocking file I/O: keep it off the event loop
        return await asyncio.to_thread(log.read, options or LogOptions())

    # ------------------------------------------------------------------------------ for the REST API

    async def list_jobs_json(self, status: JobStatus | None, limit: int, offset: int) -> bytes:
        """The body of ``GET /api/v1/jobs`` (``JobListResponse``), serialized (``control.listing``)."""
        plane = await self._control()
        return self._list_cache.render(plane, status, limit, offset)

    async def restore_savepoint_id(self, job_id: str) -> str | None:
        """The savepoint a restart without ``savepoint_id`` restores (None: a checkpoint or nothing)."""
        plane = await self._control()
        point = plane.get(job_id).restore_point()
        return point.savepoint_id if point is not None else None

    async def get_control_log(self, job_id: str, options: LogOptions | None = None) -> list[LogEntry]:
        """The control plane's own log entries of the job, without the lines its workers shipped."""
        plane = await self._control()
        log = plane.get(job_id).log
        return await asyncio.to_thread(log.read, options or LogOptions(), workers=False)

    # ------------------------------------------------------------------------------ views

    def _summary(self, plane: ControlPlane, entry: JobEntry) -> JobSummary:
        r = entry.record
        return JobSummary(
            job_id=r.job_id,
            name=r.name,
            status=r.status,
            submitted_at=r.submitted_at,
            started_at=r.started_at,
            finished_at=r.finished_at,
            uptime_seconds=plane.uptime_seconds(r),
            parallelism=entry.config.parallelism,
        )

    def _metrics(self, entry: JobEntry, window: MetricsWindow) -> JobMetrics:
        m = entry.metrics
        w = m.window(window.seconds)
        cpu, rss = m.resources()
        active = entry.run is not None
        return JobMetrics(
            events_processed=m.totals["events_in"],
            events_out=m.totals["events_out"],
            throughput_per_sec=m.current_throughput() if active else 0.0,
            latency_p50_ms=w["latency_p50_ms"],
            latency_p95_ms=w["latency_p95_ms"],
            latency_p99_ms=w["latency_p99_ms"],
            latency_p999_ms=w["latency_p999_ms"],
            checkpoint_count=m.checkpoint_count,
            last_checkpoint_duration_ms=m.last_checkpoint_duration_ms,
            checkpoint_failures=m.checkpoint_failures,
            backpressure_events=m.totals["backpressure_events"],
            backpressure_level=round(m.backpressure_level, 3) if active else 0.0,
            restarts=entry.record.restarts,
            cpu_usage_percent=cpu if active else 0.0,
            memory_used_mb=rss // (1024 * 1024) if active else 0,
            memory_total_mb=_memory_total_mb(),
            errors=m.totals["errors"],
            errors_rate_per_min=w["errors_rate_per_min"],
            late_events_dropped=m.late_dropped,
            average_throughput_per_sec=m.average_throughput(),
            running_ms=m.running_ms,
            source_lag_records=m.source_lag() if active else None,
            window_seconds=window.seconds,
            stage_tasks=[
                StageTaskMetrics(
                    task_id=task_id,
                    events_in=int(p.get("events_in", 0)),
                    events_out=int(p.get("events_out", 0)),
                    errors=int(p.get("errors", 0)),
                )
                for task_id, p in sorted(m.stage_task_progress.items())
            ],
            history=[
                ThroughputPoint(
                    timestamp=datetime.fromtimestamp(p["minute"], UTC),
                    throughput_per_sec=p["throughput_per_sec"],
                )
                for p in w["history"]
            ],
        )

    @staticmethod
    def _source_tasks(entry: JobEntry) -> int:
        """The first stage's tasks: one per split, at most the parallelism (all of it until known)."""
        n_splits = len(entry.metrics.task_progress)
        return min(entry.config.parallelism, n_splits) if n_splits else entry.config.parallelism

    def _tasks(self, entry: JobEntry) -> list[TaskInfo]:
        config = entry.config
        source_parallelism = self._source_tasks(entry)
        n_sources = len(config.sources)
        infos = []
        for i, op in enumerate(operator_names(config)):
            parallelism = source_parallelism if i < n_sources else config.parallelism
            infos.append(
                TaskInfo(
                    task_id=op.task_id, name=op.name, status=entry.record.status, parallelism=parallelism
                )
            )
        return infos


def _savepoint_info(snapshot: SnapshotRecord) -> SavepointInfo:
    assert snapshot.savepoint_id is not None
    return SavepointInfo(
        savepoint_id=snapshot.savepoint_id,
        job_id=snapshot.job_id,
        created_at=snapshot.timestamp,
        size_bytes=snapshot.size_bytes,
        location=snapshot.location,
        description=snapshot.description,
    )


def _checkpoint_infos(entry: JobEntry) -> list[CheckpointInfo]:
    """Checkpoints of the job, oldest first, including failed and in-progress ones."""
    snapshots = [s for s in entry.snapshots if s.kind == "checkpoint"]
    run = entry.run
    if run is not None and run.coordinator is not None and run.coordinator.pending is not None:
        pending = run.coordinator.pending.record
        if pending.kind == "checkpoint":
            snapshots.append(pending)
    snapshots.sort(key=lambda s: s.checkpoint_id)
    return [
        CheckpointInfo(
            checkpoint_id=f"checkpoint-{s.checkpoint_id}",
            timestamp=s.timestamp,
            duration_ms=s.duration_ms,
            size_bytes=s.size_bytes,
            status=s.status,
        )
        for s in snapshots
    ]


def _autoscaler_info(entry: JobEntry) -> AutoscalerInfo | None:
    """The details' ``autoscaler`` section (None when the job is not autoscaled)."""
    settings = entry.config.autoscaler
    if not settings.enabled:
        return None
    state = entry.autoscaling
    return AutoscalerInfo(
        enabled=True,
        mode=settings.mode,
        parallelism=entry.config.parallelism,
        rescaling=state.rescaling,
        rescales=state.rescales,
        last_error=state.error,
        last_decision=_decision_info(state.last) if state.last else None,
        history=[_decision_info(r) for r in state.history],
    )


def _decision_info(recorded: autoscaler.Recorded) -> AutoscalerDecisionInfo:
    d = recorded.decision
    return AutoscalerDecisionInfo(
        timestamp=datetime.fromtimestamp(recorded.at_ms / 1000, UTC),
        action=d.action.value,
        kind=d.kind,
        current_parallelism=int(d.inputs.get("parallelism", d.parallelism)),
        parallelism=d.parallelism,
        reason=d.reason,
        utilization=d.utilization,
        backpressure=d.backpressure,
        required=d.required,
        limited_by=d.limited_by,
        applied=recorded.applied,
        inputs=d.inputs,
    )


def _memory_total_mb() -> int:
    import psutil

    return int(psutil.virtual_memory().total // (1024 * 1024))
