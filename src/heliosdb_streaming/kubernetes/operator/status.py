"""A StreamingJob's status as a projection of the control plane's record, and the Events it implies. Pure.

The control plane's job store is the truth; ``status`` is what ``kubectl get`` shows. ``project``
computes the whole status from a record; the writer patches only what differs from the last status,
and ``events`` says which differences a user should see as Kubernetes Events (so they are
deduplicated by construction: a difference is seen once).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from heliosdb_streaming.control.store import JobRecord, SnapshotRecord
from heliosdb_streaming.model.types import JobStatus
from heliosdb_streaming.runtime.connectors.secrets import mask_secrets

Status = dict[str, Any]


def iso(when: datetime | None) -> str | None:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when is not None else None


@dataclass(frozen=True, slots=True)
class Observed:
    """What the operator knows about one job beyond its record.

    ``generation`` is the newest ``metadata.generation`` reconciled, ``observed_generation`` the one
    whose spec is applied (None until one is); ``spec_pending`` says why the newest is not applied yet.
    ``pending_pods`` are ``(pod, reason, message)`` of worker pods that cannot start."""

    parallelism: int
    snapshots: tuple[SnapshotRecord, ...] = ()
    upgrade: Mapping[str, Any] | None = None  # ``Binding.upgrade``: the latest upgrade of an edited spec
    selector: str | None = None  # the worker pods' label selector (the scale subresource's)
    observed_generation: int | None = None
    observed_nonce: int = 0
    generation: int | None = None
    spec_pending: str | None = None
    pending_pods: tuple[tuple[str, str, str], ...] = ()


def last_checkpoint(snapshots: tuple[SnapshotRecord, ...]) -> str | None:
    done = [s.checkpoint_id for s in snapshots if s.kind == "checkpoint" and s.status == "completed"]
    return f"checkpoint-{max(done)}" if done else None


def last_savepoint(snapshots: tuple[SnapshotRecord, ...]) -> dict[str, Any] | None:
    done = [s for s in snapshots if s.savepoint_id and s.status == "completed"]
    if not done:
        return None
    newest = max(done, key=lambda s: s.checkpoint_id)
    return {
        "savepointId": newest.savepoint_id,
        "location": newest.location,
        "createdAt": iso(newest.timestamp),
    }


# (type, status, reason, message) of one condition, before the bookkeeping fields
Wanted = tuple[str, bool, str, str]


def conditions(
    wanted: list[Wanted], previous: Any, now: datetime, generation: int | None
) -> list[dict[str, Any]]:
    """Conditions as the API conventions have them: a transition time that moves only when the status
    does, and the generation they were computed from."""
    before = {c.get("type"): c for c in previous or [] if isinstance(c, Mapping)}
    out = []
    for kind, true, reason, message in wanted:
        value = "True" if true else "False"
        old = before.get(kind) or {}
        changed = old.get("status") != value
        condition = {
            "type": kind,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": iso(now) if changed else old.get("lastTransitionTime", iso(now)),
        }
        if generation is not None:
            condition["observedGeneration"] = generation
        out.append(condition)
    return out


def job_conditions(
    phase: JobStatus, message: str, observed: Observed, savepoint: SnapshotRecord | None
) -> list[Wanted]:
    """``Ready`` (workers running), ``Failed``, ``SpecApplied`` (the newest spec is what runs) and
    ``SavepointInProgress``."""
    failed = phase == JobStatus.FAILED
    if observed.generation is not None and observed.observed_generation == observed.generation:
        applied: Wanted = ("SpecApplied", True, "Applied", "")
    else:
        applied = ("SpecApplied", False, *_not_applied(observed))
    if savepoint is not None:
        taking: Wanted = ("SavepointInProgress", True, "Triggered", f"checkpoint {savepoint.checkpoint_id}")
    else:
        taking = ("SavepointInProgress", False, "NoSavepoint", "")
    if observed.pending_pods and phase in (JobStatus.SUBMITTED, JobStatus.RUNNING, JobStatus.PAUSED):
        name, reason, why = observed.pending_pods[0]
        ready: Wanted = ("Ready", False, reason, f"pod {name}: {why}".rstrip(": "))
    else:
        ready = ("Ready", phase == JobStatus.RUNNING, phase.value.capitalize(), message)
    return [
        ready,
        ("Failed", failed, "JobFailed" if failed else "NotFailed", message),
        applied,
        taking,
    ]


def _not_applied(observed: Observed) -> tuple[str, str]:
    """Why the newest spec does not run: ``Upgrading`` while its upgrade is under way, ``UpgradeFailed``
    when that failed (the previous spec runs on), else ``Pending`` (a restart or a new job needs it)."""
    upgrade = observed.upgrade or {}
    if upgrade.get("generation") == observed.generation and observed.generation is not None:
        if upgrade.get("state") == "failed":
            return "UpgradeFailed", str(upgrade.get("message") or "")
        if upgrade.get("state") in ("in_progress", "restarted"):
            return "Upgrading", str(upgrade.get("message") or "")
    return "Pending", observed.spec_pending or ""


def in_progress_savepoint(snapshots: tuple[SnapshotRecord, ...]) -> SnapshotRecord | None:
    running = [s for s in snapshots if s.kind == "savepoint" and s.status == "in_progress"]
    return max(running, key=lambda s: s.checkpoint_id) if running else None


def project(record: JobRecord, observed: Observed, previous: Mapping[str, Any], now: datetime) -> Status:
    """The status of a StreamingJob whose job is ``record``."""
    message = mask_secrets(record.message or "")  # kubectl shows it: masked whatever wrote the record
    status: Status = {
        "phase": record.status.value,
        "jobId": record.job_id,
        "submittedAt": iso(record.submitted_at),
        "startedAt": iso(record.started_at),
        "finishedAt": iso(record.finished_at),
        "restarts": record.restarts,
        "lastCheckpoint": last_checkpoint(observed.snapshots),
        "lastSavepoint": last_savepoint(observed.snapshots),
        "parallelism": observed.parallelism,
        "observedRestartNonce": observed.observed_nonce,
        "message": message,
        "pendingPods": [{"name": n, "reason": r, "message": m} for n, r, m in observed.pending_pods],
        "conditions": conditions(
            job_conditions(record.status, message, observed, in_progress_savepoint(observed.snapshots)),
            previous.get("conditions"),
            now,
            observed.generation,
        ),
    }
    if observed.observed_generation is not None:
        status["observedGeneration"] = observed.observed_generation
    if observed.upgrade is not None:
        status["upgrade"] = upgrade(observed.upgrade, record.status)
    if observed.selector is not None:
        status["selector"] = observed.selector
    return status


def upgrade(recorded: Mapping[str, Any], phase: JobStatus) -> dict[str, Any]:
    """``status.upgrade``: an upgrade whose restart is issued is in progress until the new run starts."""
    out = {k: v for k, v in recorded.items() if v is not None}
    if out.get("state") == "restarted":
        out["state"] = "in_progress" if phase == JobStatus.SUBMITTED else "completed"
    return out


def invalid(message: str, generation: int | None, previous: Mapping[str, Any], now: datetime) -> Status:
    """The status of a StreamingJob whose spec is not a valid job: failed, nothing submitted. No
    ``observedGeneration``: the spec was seen but is not applied (``SpecApplied`` False, InvalidSpec)."""
    message = mask_secrets(message)
    wanted: list[Wanted] = [
        ("Ready", False, "InvalidSpec", message),
        ("Failed", True, "InvalidSpec", message),
        ("SpecApplied", False, "InvalidSpec", message),
        ("SavepointInProgress", False, "NoSavepoint", ""),
    ]
    return {
        "phase": JobStatus.FAILED.value,
        "message": message,
        "conditions": conditions(wanted, previous.get("conditions"), now, generation),
    }


def diff(previous: Mapping[str, Any], wanted: Status) -> Status:
    """The merge patch that turns ``previous`` into ``wanted`` for the keys the operator owns."""
    return {k: v for k, v in wanted.items() if previous.get(k) != v}


def events(previous: Mapping[str, Any], wanted: Status) -> list[tuple[str, str, str]]:
    """``(type, reason, message)`` of the Events a status change deserves: phase changes and restarts."""
    out = []
    phase = wanted.get("phase")
    if phase and phase != previous.get("phase"):
        kind = "Warning" if phase == JobStatus.FAILED.value else "Normal"
        out.append((kind, str(phase).capitalize(), str(wanted.get("message") or f"Job is {phase}")))
    restarts, before = wanted.get("restarts"), previous.get("restarts")
    if isinstance(restarts, int) and isinstance(before, int) and restarts > before:
        out.append(("Warning", "Restarted", str(wanted.get("message") or f"restart {restarts}")))
    # a pod that cannot start: one Event per pod and reason, not one per kubelet retry or status pass
    seen = {(p.get("name"), p.get("reason")) for p in previous.get("pendingPods") or []}
    for pod in wanted.get("pendingPods") or []:
        if (pod["name"], pod["reason"]) not in seen:
            text = f"pod {pod['name']} cannot start: {pod['reason']}"
            out.append(("Warning", "PodPending", f"{text}: {pod['message']}" if pod["message"] else text))
    return out
