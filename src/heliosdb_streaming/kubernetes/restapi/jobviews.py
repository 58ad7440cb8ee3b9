"""StreamingJob resources as the REST API sees them, and REST commands as spec patches. Pure: no I/O.

``helios server --substrate kubernetes`` keeps no state of its own: a job is a StreamingJob, its id is
``job-<metadata.uid>`` (the id the operator gives its control-plane job, ``mapping.job_id_for``) and
its status, times and restarts are the status the operator projects onto the resource. This module
turns those objects into the native types the views render, and REST commands (submit, restart with
overrides) into the objects and merge patches the API server sends.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from heliosdb_streaming.api import schemas
from heliosdb_streaming.kubernetes import crds
from heliosdb_streaming.kubernetes.operator import mapping
from heliosdb_streaming.model.config import JobConfig, JobConfigOverrides
from heliosdb_streaming.model.errors import FieldError, InvalidJobConfigError
from heliosdb_streaming.model.types import (
    CheckpointInfo,
    JobStatus,
    JobSummary,
    SavepointInfo,
    TaskInfo,
)
from heliosdb_streaming.runtime.graph import operator_names

Obj = Mapping[str, Any]

# when the API server submitted the job, to the microsecond: creationTimestamp has whole seconds only,
# and the job list is newest first like the embedded one, also for jobs submitted in the same second
ANNOTATION_SUBMITTED_AT = f"{crds.GROUP}/submitted-at"
NAME_STEM_MAX = 40  # leaves room for "-<suffix>-workers" and "-worker-<n>" within a 63-character label
SUFFIX_LENGTH = 5
_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits


def _meta(obj: Obj) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _status(obj: Obj) -> Mapping[str, Any]:
    return obj.get("status") or {}


def _spec(obj: Obj) -> Mapping[str, Any]:
    return obj.get("spec") or {}


def parse_time(value: Any) -> datetime | None:
    """A Kubernetes timestamp (``2025-10-29T10:00:00Z``) as an aware datetime; None if absent or bad."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# ----------------------------------------------------------------------------------- identity


def job_id_of(obj: Obj) -> str:
    """The job id of a StreamingJob: the one its status names, else the one its uid gives."""
    return str(_status(obj).get("jobId") or mapping.job_id_for(_meta(obj).get("uid")) or "")


def is_job(obj: Obj, job_id: str) -> bool:
    return job_id in (_status(obj).get("jobId"), mapping.job_id_for(_meta(obj).get("uid")))


def resource_name(job_name: str, suffix: str | None = None) -> str:
    """A StreamingJob name for a job: a DNS-1123 (and DNS-1035) slug of its name and a random suffix.

    ``"Fraud Detection!"`` -> ``fraud-detection-x7k2q``. The stem is short enough for the names the
    operator derives from it (``<name>-workers`` Service, ``<name>-worker-<i>`` pods).
    """
    stem = re.sub(r"[^a-z0-9]+", "-", job_name.lower()).strip("-")[:NAME_STEM_MAX].strip("-")
    if not stem or not stem[0].isalpha():
        stem = f"job-{stem}".strip("-")[:NAME_STEM_MAX].strip("-")
    suffix = suffix or "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(SUFFIX_LENGTH))
    return f"{stem}-{suffix}"


def streaming_job(
    namespace: str, name: str, config: JobConfig, now: datetime, restore_from: str | None = None
) -> dict[str, Any]:
    """The StreamingJob of a job submitted at ``now``: the REST body as the spec (camelCase), running."""
    spec = {**crds.to_camel(config.to_dict()), "state": mapping.DesiredState.RUNNING.value}
    if restore_from is not None:
        spec["restoreFrom"] = restore_from
    return {
        "apiVersion": crds.API_VERSION,
        "kind": crds.STREAMING_JOB_KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {ANNOTATION_SUBMITTED_AT: now.astimezone(UTC).isoformat().replace("+00:00", "Z")},
        },
        "spec": spec,
    }


def savepoint_resource(namespace: str, job_name: str, description: str | None) -> dict[str, Any]:
    """A Savepoint of a StreamingJob; the server names it (``<job>-sp-<random>``)."""
    spec: dict[str, Any] = {"jobRef": job_name}
    if description is not None:
        spec["description"] = description
    return {
        "apiVersion": crds.API_VERSION,
        "kind": crds.SAVEPOINT_KIND,
        "metadata": {"generateName": f"{job_name}-sp-", "namespace": namespace},
        "spec": spec,
    }


# ----------------------------------------------------------------------------------- status


def phase_of(obj: Obj) -> JobStatus:
    """The status the operator last wrote; ``submitted`` until it has written one."""
    try:
        return JobStatus(str(_status(obj).get("phase") or JobStatus.SUBMITTED.value))
    except ValueError:
        return JobStatus.SUBMITTED


def submitted_at(obj: Obj) -> datetime:
    """When the job was submitted: when its resource was created (stable from the first answer on)."""
    return (
        parse_time((_meta(obj).get("annotations") or {}).get(ANNOTATION_SUBMITTED_AT))
        or parse_time(_meta(obj).get("creationTimestamp"))
        or parse_time(_status(obj).get("submittedAt"))
        or datetime.now(UTC)
    )


def uptime_seconds(obj: Obj, now: datetime) -> int:
    started = parse_time(_status(obj).get("startedAt"))
    if started is None:
        return 0
    end = parse_time(_status(obj).get("finishedAt")) or now
    return max(int((end - started).total_seconds()), 0)


def restarts_of(obj: Obj) -> int:
    value = _status(obj).get("restarts")
    return value if isinstance(value, int) else 0


def message_of(obj: Obj) -> str | None:
    return str(_status(obj).get("message") or "") or None


def parallelism_of(obj: Obj) -> int:
    value = _status(obj).get("parallelism") or (_spec(obj).get("config") or {}).get("parallelism")
    return value if isinstance(value, int) and value > 0 else 1


def job_name_of(obj: Obj) -> str:
    return str(_spec(obj).get("name") or _meta(obj).get("name") or "")


def summary_of(obj: Obj, now: datetime) -> JobSummary:
    status = _status(obj)
    return JobSummary(
        job_id=job_id_of(obj),
        name=job_name_of(obj),
        status=phase_of(obj),
        submitted_at=submitted_at(obj),
        started_at=parse_time(status.get("startedAt")),
        finished_at=parse_time(status.get("finishedAt")),
        uptime_seconds=uptime_seconds(obj, now),
        parallelism=parallelism_of(obj),
    )


def list_body(objs: Iterable[Obj], status: JobStatus | None, limit: int, offset: int, now: datetime) -> bytes:
    """``GET /api/v1/jobs``: the jobs newest first, filtered by status, one page."""
    summaries = [summary_of(o, now) for o in objs]
    summaries.sort(key=lambda s: (s.submitted_at, s.job_id), reverse=True)
    matching = [s for s in summaries if status is None or s.status == status]
    body = schemas.JobListResponse(
        jobs=matching[offset : offset + limit],
        total=len(matching),
        limit=limit,
        offset=offset,
    )
    return orjson.dumps(body.to_json())


# ----------------------------------------------------------------------------------- details


def config_of(obj: Obj, settings: Mapping[str, Any] | None = None) -> JobConfig:
    """The job of a StreamingJob; ``settings`` (the operator's ``config``, overrides applied) win.

    A spec that is not a valid job (written with kubectl; the operator marked it failed) becomes a
    job with its name and no operators, so that its details can still be shown.
    """
    spec = dict(_spec(obj))
    if settings is not None:  # the job model's names: as the spec has them
        spec["config"] = crds.to_camel({"config": dict(settings)})["config"]
    try:
        return mapping.job_config(str(_meta(obj).get("name") or "job"), spec)
    except InvalidJobConfigError:
        return JobConfig.model_construct(name=job_name_of(obj) or "job", sources=[], sinks=[])


def planned_tasks(config: JobConfig, status: JobStatus) -> list[TaskInfo]:
    """The tasks of a job the operator has not started yet: every operator at the job's parallelism."""
    return [
        TaskInfo(task_id=op.task_id, name=op.name, status=status, parallelism=config.parallelism)
        for op in operator_names(config)
    ]


def source_tasks(config: JobConfig, tasks: Sequence[TaskInfo]) -> int | None:
    """The first stage's tasks as the operator reports them (its source tasks' parallelism)."""
    return tasks[0].parallelism if config.sources and tasks else None


def restore_savepoint(
    checkpoints: Sequence[CheckpointInfo], savepoints: Sequence[SavepointInfo]
) -> str | None:
    """The savepoint a restart without one restores: the newest savepoint, unless a completed
    checkpoint is newer (then None: a checkpoint). Times are whole seconds; a tie goes to the savepoint,
    as after a cancel with savepoint, when the savepoint is the job's last snapshot."""
    if not savepoints:
        return None
    newest = max(savepoints, key=lambda s: s.created_at)
    done = [c.timestamp for c in checkpoints if c.status == "completed"]
    if done and max(done) > newest.created_at:
        return None
    return newest.savepoint_id


# ----------------------------------------------------------------------------------- patches


def replace_patch(old: Any, new: Any) -> Any:
    """A merge patch that sets ``new`` where ``old`` was (merge patches merge objects key by key,
    so keys of ``old`` that ``new`` lacks are removed with ``None``)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return {**{k: None for k in old if k not in new}, **new}
    return new


def config_patch(spec: Obj, overrides: JobConfigOverrides | None) -> dict[str, Any]:
    """The ``spec.config`` merge patch (camelCase) that applies restart overrides (they stay in the spec)."""
    if overrides is None:
        return {}
    current = spec.get("config") or {}
    settings = overrides.model_dump(exclude_none=True)
    if overrides.restart_strategy is not None:
        settings["restart_strategy"] = overrides.restart_strategy.to_wire()
    patch: dict[str, Any] = crds.to_camel({"config": settings})["config"]
    if "restartStrategy" in patch:
        patch["restartStrategy"] = replace_patch(current.get("restartStrategy"), patch["restartStrategy"])
    return patch


def check_submit_parallelism(config: JobConfig, max_parallelism: int) -> None:
    """Rejects a job wider than the operator's ``--max-parallelism`` as the embedded control plane
    does (``ControlPlane.submit``: 400 ``invalid_job_config`` at ``config.parallelism``), before a
    resource exists that the operator could only mark failed."""
    if config.parallelism > max_parallelism:
        raise InvalidJobConfigError(
            [
                FieldError(
                    "config.parallelism",
                    f"{config.parallelism} exceeds this control plane's max_parallelism {max_parallelism}",
                )
            ]
        )


def restart_parallelism(spec: Obj, overrides: JobConfigOverrides | None) -> int:
    """The parallelism the next run would have: the override's, else the spec's."""
    if overrides is not None and overrides.parallelism is not None:
        return overrides.parallelism
    value = (spec.get("config") or {}).get("parallelism")
    return value if isinstance(value, int) and value > 0 else 1


def check_restart_parallelism(parallelism: int, max_parallelism: int) -> None:
    """Rejects a restart wider than the operator can run, as ``ControlPlane.restart`` does (400
    ``invalid_job_config`` at ``config_overrides.parallelism``), instead of a restart the operator
    would accept into the spec and then fail to apply."""
    if parallelism > max_parallelism:
        raise InvalidJobConfigError(
            [FieldError("config_overrides.parallelism", f"exceeds max_parallelism {max_parallelism}")]
        )


def check_restart_plan(obj: Obj, overrides: JobConfigOverrides) -> None:
    """Rejects a restart whose overrides make the job's plan impossible, as ``ControlPlane.restart``
    does (``JobConfig.with_overrides``: 400 at ``config_overrides.parallelism``). A spec that is not a
    valid job has nothing to check here: the operator has marked it invalid already."""
    config = config_of(obj)
    if config.sources:
        config.with_overrides(overrides)


def restart_patch(
    spec: Obj, restore_from: str | None, overrides: JobConfigOverrides | None
) -> dict[str, Any]:
    """The spec patch of ``POST /restart``: a new ``restartNonce``, where from, the new settings."""
    nonce = spec.get("restartNonce")
    patch: dict[str, Any] = {
        "restartNonce": (nonce if isinstance(nonce, int) else 0) + 1,
        "restoreFrom": restore_from,  # None removes a previous one: restore the newest snapshot
        "state": mapping.DesiredState.RUNNING.value,
    }
    config = config_patch(spec, overrides)
    if config:
        patch["config"] = config
    return patch
