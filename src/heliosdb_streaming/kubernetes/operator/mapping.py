"""StreamingJob spec -> job config, and the one step that brings a job closer to its spec. Pure: no I/O.

The spec is the REST submit body plus what the operator acts on (``state``, ``restartNonce``,
``restoreFrom``, ``savepointOnCancel``, ``image``, ``resources``, ``podTemplate``,
``checkpointStorage``, ``ttlSecondsAfterFinished``: read by ``expiry``). ``plan`` compares the spec
with what the control plane reports and names the single next action, the way the Flink operator's
reconciler decides one step per pass; the reconciler performs it and asks again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from heliosdb_streaming.kubernetes import casing, crds, podtemplate
from heliosdb_streaming.model.config import JobConfig, JobConfigOverrides
from heliosdb_streaming.model.errors import FieldError, InvalidJobConfigError
from heliosdb_streaming.model.types import JobStatus

JOB_FIELDS = ("name", "config", "sources", "transformations", "sinks")
# what a restart can change without a new job (the rest of the spec is fixed at submit)
OVERRIDABLE = ("parallelism", "checkpoint_interval_ms", "restart_strategy", "on_error", "autoscaler")


class DesiredState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"


class UpgradeMode(StrEnum):
    """What an edit of a running StreamingJob does (``spec.upgradeMode``), as the Flink operator's;
    ``crds.UPGRADE_MODES`` lists the same values (a unit test keeps them in step)."""

    STATELESS = "stateless"  # stop, start the new spec without state (sources from their start)
    SAVEPOINT = "savepoint"  # savepoint, restart the new spec from it; a failed savepoint keeps the old
    LAST_STATE = "last-state"  # restart the new spec from the newest checkpoint, no savepoint


# savepoint: an edit keeps the job's state as a restartNonce restart did, and never loses it when the
# savepoint fails (the Flink operator defaults to stateless; a default that drops state is a surprise here)
DEFAULT_UPGRADE_MODE = UpgradeMode.SAVEPOINT


@dataclass(frozen=True, slots=True)
class JobSpec:
    """The operator's fields of a StreamingJob spec, with the CRD's defaults applied."""

    state: DesiredState = DesiredState.RUNNING
    restart_nonce: int = 0
    restore_from: str | None = None
    upgrade_mode: UpgradeMode = DEFAULT_UPGRADE_MODE  # ``spec.upgradeMode``: what an edit does
    savepoint_on_cancel: bool = False
    image: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    checkpoint_storage: str | None = None
    pod_template: dict[str, Any] = field(default_factory=dict)
    ttl_seconds_after_finished: int | None = None  # None: a terminal job is kept
    disruption_budget: int | None = None  # spec.podDisruptionBudget's maxUnavailable when enabled

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> JobSpec:
        errors = []
        try:
            state = DesiredState(spec.get("state") or "running")
        except ValueError:
            errors.append(FieldError("spec.state", "must be one of running, paused, cancelled"))
            state = DesiredState.RUNNING
        try:
            upgrade_mode = UpgradeMode(spec.get("upgradeMode") or DEFAULT_UPGRADE_MODE)
        except ValueError:
            modes = ", ".join(m.value for m in UpgradeMode)
            errors.append(FieldError("spec.upgradeMode", f"must be one of {modes}"))
            upgrade_mode = DEFAULT_UPGRADE_MODE
        nonce = spec.get("restartNonce") or 0
        if not isinstance(nonce, int) or isinstance(nonce, bool) or nonce < 0:
            errors.append(FieldError("spec.restartNonce", "must be an integer >= 0"))
            nonce = 0
        ttl = spec.get("ttlSecondsAfterFinished")
        if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0):
            errors.append(FieldError("spec.ttlSecondsAfterFinished", "must be an integer >= 0"))
            ttl = None
        budget_spec = spec.get("podDisruptionBudget") or {}
        budget: int | None = None
        if not isinstance(budget_spec, dict):
            errors.append(FieldError("spec.podDisruptionBudget", "must be an object"))
        elif budget_spec.get("enabled"):
            budget = budget_spec.get("maxUnavailable", 1)
            if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
                errors.append(
                    FieldError("spec.podDisruptionBudget.maxUnavailable", "must be an integer >= 0")
                )
                budget = None
        pod_template: dict[str, Any] = {}
        resources: dict[str, Any] = {}
        try:
            pod_template, resources = podtemplate.parse(spec.get("podTemplate"), spec.get("resources"))
        except InvalidJobConfigError as e:
            errors += e.errors
        if errors:
            raise InvalidJobConfigError(errors)
        return cls(
            state=state,
            restart_nonce=nonce,
            restore_from=spec.get("restoreFrom") or None,
            upgrade_mode=upgrade_mode,
            savepoint_on_cancel=bool(spec.get("savepointOnCancel", False)),
            image=spec.get("image") or None,
            resources=resources,
            pod_template=pod_template,
            checkpoint_storage=spec.get("checkpointStorage") or None,
            ttl_seconds_after_finished=ttl,
            disruption_budget=budget,
        )


def job_config(name: str, spec: dict[str, Any]) -> JobConfig:
    """The job of a StreamingJob (a ``v1alpha2`` spec: camelCase): its REST-body fields, renamed to the
    model's snake_case, ``metadata.name`` as the default job name.

    Validation errors name spec paths as the spec has them (``spec.sources[0].config.ratePerSec``).
    """
    body = crds.to_snake({k: spec[k] for k in JOB_FIELDS if k in spec})
    body.setdefault("name", name)
    settings = dict(body.get("config") or {})
    if spec.get("checkpointStorage"):
        settings["checkpoint_storage"] = spec["checkpointStorage"]
    body["config"] = settings
    try:
        return JobConfig.from_dict(body)
    except InvalidJobConfigError as e:
        raise InvalidJobConfigError(
            [FieldError(f"spec.{crds.camel_path(err.path)}", err.message) for err in e.errors]
        ) from None


def restart_overrides(wanted: JobConfig) -> JobConfigOverrides:
    """The settings a restart takes from the current spec (e.g. a new ``config.parallelism``)."""
    return JobConfigOverrides(
        parallelism=wanted.parallelism,
        checkpoint_interval_ms=wanted.checkpoint_interval_ms,
        restart_strategy=wanted.restart_strategy,
        on_error=wanted.on_error,
        autoscaler=wanted.autoscaler,
    )


def setting(field: str) -> str:
    """A JobConfig field as the spec names it (``config.checkpointIntervalMs``), for status and Events."""
    return f"config.{casing.camel(field)}"


PIPELINE = ("sources", "transformations", "sinks")  # a restart applies them: an upgrade in place


def pipeline_changes(current: JobConfig, wanted: JobConfig) -> list[str]:
    """The parts of the pipeline the spec changed: the next restart runs the new ones."""
    a, b = current.to_dict(), wanted.to_dict()
    return [k for k in PIPELINE if a[k] != b[k]]


def autoscaled(current: JobConfig, wanted: JobConfig) -> bool:
    """Whether the autoscaler sets the parallelism, before and after the edit: then the spec's
    ``config.parallelism`` is not the running one by design (the Flink operator's autoscaler keeps its
    overrides out of the spec too), and an upgrade keeps the parallelism the autoscaler chose."""
    return all(c.autoscaler.enabled and c.autoscaler.mode == "apply" for c in (current, wanted))


def upgrade_changes(current: JobConfig, wanted: JobConfig) -> list[str]:
    """What an upgrade (a restart with the new spec) applies: the overridable settings and the pipeline
    parts that differ. Empty: the running job already is the spec, as far as a restart can make it."""
    keep = ("parallelism",) if autoscaled(current, wanted) else ()
    settings = [
        setting(k) for k in OVERRIDABLE if k not in keep and getattr(current, k) != getattr(wanted, k)
    ]
    return settings + pipeline_changes(current, wanted)


def upgrade_overrides(current: JobConfig, wanted: JobConfig) -> JobConfigOverrides:
    """The settings an upgrade restarts with: the spec's, but the autoscaler's parallelism when it scales."""
    overrides = restart_overrides(wanted)
    if autoscaled(current, wanted):
        overrides = overrides.model_copy(update={"parallelism": current.parallelism})
    return overrides


def unapplied_changes(current: JobConfig, wanted: JobConfig) -> list[str]:
    """Spec fields that differ from the running job and that no restart can apply (a new job can:
    where its state lives, how it is kept, the job's name)."""
    a, b = current.to_dict(), wanted.to_dict()
    changed = ["name"] if a["name"] != b["name"] else []
    changed += [
        setting(k)
        for k in sorted(set(a["config"]) | set(b["config"]))
        if k not in OVERRIDABLE and a["config"].get(k) != b["config"].get(k)
    ]
    return changed


def job_id_for(uid: str | None) -> str | None:
    """A job id derived from the resource's uid: a submit retried after an operator crash is a no-op."""
    return f"job-{uid}" if uid else None


class Step(StrEnum):
    NONE = "none"  # the job is where the spec wants it
    WAIT = "wait"  # the wanted change is not possible yet (e.g. pause while starting): ask again soon
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"
    CANCEL_WITH_SAVEPOINT = "cancel_with_savepoint"
    RESTART = "restart"
    UPGRADE = "upgrade"  # apply an edited spec to an active job, as ``spec.upgradeMode`` says


def plan(spec: JobSpec, phase: JobStatus, applied_nonce: int, *, upgrade: bool = False) -> Step:
    """The next step for a job in ``phase`` whose spec is ``spec``; restarts come first.

    A changed ``restartNonce`` restarts from any phase but submitted (wait until it runs);
    ``cancelled`` stops an active job (with a savepoint when asked and the job has workers);
    ``upgrade`` (an edited spec the job does not run yet) upgrades an active job once it runs;
    ``paused``/``running`` toggle an active job. Finished, failed and cancelled jobs only move again
    through a new ``restartNonce``.
    """
    if spec.restart_nonce != applied_nonce:
        return Step.WAIT if phase == JobStatus.SUBMITTED else Step.RESTART
    if phase.terminal:
        return Step.NONE
    if spec.state == DesiredState.CANCELLED:
        if spec.savepoint_on_cancel and phase in (JobStatus.RUNNING, JobStatus.PAUSED):
            return Step.CANCEL_WITH_SAVEPOINT
        return Step.CANCEL
    if upgrade:
        return Step.WAIT if phase == JobStatus.SUBMITTED else Step.UPGRADE
    if spec.state == DesiredState.PAUSED:
        return {JobStatus.RUNNING: Step.PAUSE, JobStatus.SUBMITTED: Step.WAIT}.get(phase, Step.NONE)
    return Step.RESUME if phase == JobStatus.PAUSED else Step.NONE


def savepoint_ref(restore_from: str | None) -> tuple[str | None, str | None]:
    """``restoreFrom`` as (Savepoint resource name, location URI): one of them, or neither."""
    if not restore_from:
        return None, None
    if "://" in restore_from:
        return None, restore_from
    return restore_from, None


ENDED_PHASES = frozenset(s.value for s in JobStatus if s.terminal)


def savepoint_restorers(savepoint: Mapping[str, Any], jobs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The job ids of the StreamingJobs that still need the Savepoint resource ``savepoint``: they name
    it (or its location) in ``restoreFrom``, are not being deleted, have not ended, and either have
    no checkpoint or savepoint of their own yet or have a ``restartNonce`` restart not applied yet.

    The resources' view of ``JobEntry.restores``: with a job manager per job no control plane sees
    the other jobs, so a Savepoint's finalizer (and the REST API, before it deletes) asks the
    StreamingJobs. One judged by its status alone misses a job restarted onto another job's
    savepoint while it still shows an older checkpoint of its own; its job manager's own check
    covers the Savepoints of its own job."""
    meta, status = savepoint.get("metadata") or {}, savepoint.get("status") or {}
    name, location = str(meta.get("name") or ""), str(status.get("location") or "").rstrip("/")
    users: list[str] = []
    for job in jobs:
        job_meta, spec, observed = job.get("metadata") or {}, job.get("spec") or {}, job.get("status") or {}
        by_name, by_location = savepoint_ref(spec.get("restoreFrom") or None)
        named = (by_name is not None and by_name == name) or (
            by_location is not None and bool(location) and by_location.rstrip("/") == location
        )
        if not named or job_meta.get("deletionTimestamp"):
            continue
        if observed.get("phase") in ENDED_PHASES:
            continue
        own = observed.get("lastCheckpoint") or observed.get("lastSavepoint")
        pending = int(spec.get("restartNonce") or 0) != int(observed.get("observedRestartNonce") or 0)
        if not own or pending:
            job_id = observed.get("jobId") or job_id_for(job_meta.get("uid")) or job_meta.get("name")
            users.append(str(job_id))
    return users


def recorded_savepoint_name(job: str, savepoint_id: str) -> str:
    """The Savepoint resource that records a savepoint the operator took itself (on cancel):
    ``<job>-<savepoint id>``, the job's name shortened so that the whole stays a valid object name."""
    return f"{job[: 253 - len(savepoint_id) - 1].rstrip('-.')}-{savepoint_id}"
