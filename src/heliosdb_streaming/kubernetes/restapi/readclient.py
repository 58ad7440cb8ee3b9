"""The API server's client of the operator's read API (``kubernetes.operator.readapi``), as native types.

The operator's control plane is the truth about a running job (tasks, checkpoints, savepoints,
metrics); the API server asks it over HTTP and turns the REST bodies back into the ``model.types`` the
views render, so both substrates answer with the same shapes. ``None`` means "the operator does not
know this job (yet)": a StreamingJob that was just created has no job in the control plane until the
operator has reconciled it. An unreachable operator is ``OperatorUnavailableError``.

A client serves the API server of one namespace and names it in every job request: the operator
answers only for jobs of that namespace (``kubernetes.operator.readapi``), so a job id cannot reach another
namespace's job. The ``/internal/v1`` routes give the operator's limits and, for the namespace, a
job's control-plane log lines and the Prometheus exposition.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from heliosdb_streaming.api.errors import ServiceUnavailableError
from heliosdb_streaming.model.errors import FieldError, InvalidJobConfigError, PythonNotAllowedError
from heliosdb_streaming.model.types import (
    CheckpointInfo,
    DetailsMetrics,
    JobMetrics,
    JobPlanInfo,
    LogEntry,
    LogOptions,
    MetricsWindow,
    SavepointInfo,
    StageTaskMetrics,
    TaskInfo,
    ThroughputPoint,
)

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0


class OperatorUnavailableError(ServiceUnavailableError):
    """The operator's read API did not answer (or answered with an error it should not give): 503."""


@dataclass(frozen=True, slots=True)
class OperatorInfo:
    """The operator's settings that bound what the API server may accept."""

    max_parallelism: int


def log_params(options: LogOptions) -> dict[str, str]:
    """The query of ``/internal/v1/jobs/{id}/control-log`` for ``options``."""
    params = {"limit": str(options.limit), "tail": "true" if options.tail else "false"}
    if options.level is not None:
        params["level"] = options.level.value
    return params


def metrics_of_details(body: dict[str, Any]) -> JobMetrics:
    """``JobMetrics`` from the ``metrics`` object of a details body: ``DetailsMetrics``' keys (others,
    from a newer operator, are left out)."""
    m = body["metrics"]
    return JobMetrics.model_validate({key: m[key] for key in DetailsMetrics.model_fields if key in m})


def metrics_of_body(body: dict[str, Any], restarts: int) -> JobMetrics:
    """``JobMetrics`` from a metrics body (``schemas.JobMetricsResponse``)."""
    m = body["metrics"]
    window = MetricsWindow.parse(body["window"])
    return JobMetrics(
        events_processed=m["events_processed_total"],
        throughput_per_sec=m["throughput_per_sec"],
        latency_p50_ms=m["latency"]["p50_ms"],
        latency_p95_ms=m["latency"]["p95_ms"],
        latency_p99_ms=m["latency"]["p99_ms"],
        latency_p999_ms=m["latency"]["p999_ms"],
        checkpoint_count=m["checkpoint"]["count"],
        last_checkpoint_duration_ms=m["checkpoint"]["last_duration_ms"],
        checkpoint_failures=m["checkpoint"]["failures"],
        backpressure_events=m["backpressure"]["events_total"],
        backpressure_level=m["backpressure"]["current_level"],
        restarts=restarts,
        cpu_usage_percent=m["resources"]["cpu_usage_percent"],
        memory_used_mb=m["resources"]["memory_used_mb"],
        memory_total_mb=m["resources"]["memory_total_mb"],
        errors=m["errors"]["count"],
        errors_rate_per_min=m["errors"]["rate_per_min"],
        average_throughput_per_sec=m.get("average_throughput_per_sec", 0.0),
        running_ms=m.get("running_ms", 0),
        late_events_dropped=m.get("late_events_dropped", 0),
        source_lag_records=(m.get("source") or {}).get("lag_records"),
        window_seconds=window.seconds,
        history=[ThroughputPoint.model_validate(p) for p in body["history"]],
        stage_tasks=[StageTaskMetrics.model_validate(t) for t in m.get("stage_tasks", [])],
    )


def tasks_of(body: dict[str, Any]) -> list[TaskInfo]:
    return [TaskInfo.model_validate(t) for t in body["tasks"]]


def checkpoints_of(body: dict[str, Any]) -> list[CheckpointInfo]:
    return [CheckpointInfo.model_validate(c) for c in body["checkpoints"]]


def _config_error(status: int, payload: bytes) -> InvalidJobConfigError | None:
    """The job error of a 400 answer (``invalid_job_config``, ``python_not_allowed``), as raised there."""
    if status != 400:
        return None
    try:
        error = orjson.loads(payload)["error"]
        problems = [FieldError(str(d["path"]), str(d["message"])) for d in error["details"]]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if error.get("code") == PythonNotAllowedError.code:
        return PythonNotAllowedError(problems)
    if error.get("code") == InvalidJobConfigError.code:
        return InvalidJobConfigError(problems)
    return None


class OperatorClient:
    """GETs against ``{url}/api/v1`` and ``{url}/internal/v1`` for the jobs of ``namespace``, with the
    bearer token, if any."""

    def __init__(self, url: str, namespace: str, api_token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.namespace = namespace
        headers = {"Accept": "application/json"}
        if api_token:
            headers["Authorization"] = f"Bearer {api_token}"
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        )

    async def close(self) -> None:
        await self._session.close()

    async def _get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, bytes]:
        try:
            async with self._session.get(self.url + path, params=params) as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise OperatorUnavailableError(f"operator read API at {self.url}: {type(e).__name__}: {e}") from e

    async def _job_json(
        self, job_id: str, sub: str = "", params: dict[str, str] | None = None, prefix: str = "/api/v1"
    ) -> Any:
        """The body of ``GET {prefix}/jobs/{job_id}{sub}`` for a job of this client's namespace; None
        when the operator answers 404 (no such job there)."""
        query = {**(params or {}), "namespace": self.namespace}
        status, payload = await self._get(f"{prefix}/jobs/{quote(job_id, safe='')}{sub}", query)
        if status == 404:
            return None
        if status != 200:
            raise OperatorUnavailableError(
                f"operator read API answered {status}: {payload[:300].decode(errors='replace')}"
            )
        return orjson.loads(payload)

    async def details(self, job_id: str) -> dict[str, Any] | None:
        """The job's details body (``schemas.JobDetailsResponse``), or None if the operator lacks it."""
        body: dict[str, Any] | None = await self._job_json(job_id)
        return body

    async def metrics(self, job_id: str, window: MetricsWindow, restarts: int) -> JobMetrics | None:
        body = await self._job_json(job_id, "/metrics", {"window": window.label()})
        return metrics_of_body(body, restarts) if body is not None else None

    async def checkpoints(self, job_id: str) -> list[CheckpointInfo] | None:
        body = await self._job_json(job_id, "/checkpoints")
        return checkpoints_of(body) if body is not None else None

    async def savepoints(self, job_id: str) -> list[SavepointInfo] | None:
        body = await self._job_json(job_id, "/savepoints")
        if body is None:
            return None
        return [SavepointInfo.model_validate(s) for s in body["savepoints"]]

    async def savepoint(self, job_id: str, savepoint_id: str) -> SavepointInfo | None:
        """One completed savepoint, or None (no such job or savepoint on the operator)."""
        body = await self._job_json(job_id, f"/savepoints/{quote(savepoint_id, safe='')}")
        return SavepointInfo.model_validate(body) if body is not None else None

    async def restore_point(self, job_id: str) -> tuple[bool, str | None]:
        """(known, savepoint id): whether the operator has the job, and the savepoint a restart
        without one would restore there (None: a checkpoint or nothing)."""
        body = await self._job_json(job_id, "/restore-point", None, "/internal/v1")
        if body is None:
            return False, None
        savepoint_id = body.get("savepoint_id")
        return True, str(savepoint_id) if savepoint_id is not None else None

    async def control_log(self, job_id: str, options: LogOptions) -> list[LogEntry] | None:
        """The control plane's own log entries of the job (level, limit and tail applied by the
        operator), without its workers' lines; None when the operator has no such job."""
        body = await self._job_json(job_id, "/control-log", log_params(options), "/internal/v1")
        return [LogEntry.model_validate(e) for e in body["logs"]] if body is not None else None

    async def validate(
        self, job: dict[str, Any], from_savepoint: str | None, *, bare_location: bool = False
    ) -> JobPlanInfo:
        """The operator's dry run of a submit body (``/internal/v1/validate``): the plan, or the
        ``InvalidJobConfigError`` / ``PythonNotAllowedError`` its reconciler would fail the job with.
        ``bare_location``: ``from_savepoint`` is no Savepoint resource's, so it must be a savepoint of a
        job of this client's namespace."""
        params: dict[str, str] = {}
        if from_savepoint is not None:
            params["from_savepoint"] = from_savepoint
            if bare_location:
                params["namespace"] = self.namespace
        try:
            async with self._session.post(
                self.url + "/internal/v1/validate", params=params, json=job
            ) as response:
                status, payload = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise OperatorUnavailableError(f"operator read API at {self.url}: {type(e).__name__}: {e}") from e
        if status == 200:
            return JobPlanInfo.model_validate(orjson.loads(payload)["plan"])
        error = _config_error(status, payload)
        if error is None:
            raise OperatorUnavailableError(
                f"operator /internal/v1/validate answered {status}: {payload[:300].decode(errors='replace')}"
            )
        raise error

    async def info(self) -> OperatorInfo:
        status, payload = await self._get("/internal/v1/info")
        if status != 200:
            raise OperatorUnavailableError(f"operator /internal/v1/info answered {status}")
        return OperatorInfo(max_parallelism=int(orjson.loads(payload)["max_parallelism"]))

    async def prometheus(self) -> bytes:
        """The exposition of this namespace's jobs (the operator's ``/metrics`` has every namespace's)."""
        status, payload = await self._get("/internal/v1/metrics", {"namespace": self.namespace})
        if status != 200:
            raise OperatorUnavailableError(f"operator /internal/v1/metrics answered {status}")
        return payload
