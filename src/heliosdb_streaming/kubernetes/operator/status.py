"""A StreamingJob's status as a projection of the control plane's record, and the Events it implies. Pure.

The control plane's job store is the truth; ``status`` is what ``kubectl get`` shows. ``project``
computes the whole status from a record; the writer patches only what differs from the last status,
and ``events`` says which differences a user should see as Kubernetes Events.
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
    """What the operator knows about one job beyond its record."""

    parallelism: int
    snapshots: tuple[SnapshotRecord, ...] = ()
    upgrade: Mapping[str, Any] | None = None  # ``Binding.upgrade``: the latest upgrade of an edited spec
    selector: str | None = None  # the worker pods' label selector (the scale subresource's)
    observed_generation: int | None = None
    observed_nonce: int = 0


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


def conditions(phase: JobStatus, message: str | None, previous: Any, now: datetime) -> list[dict[str, Any]]:
    """``Ready`` (workers running) and ``Failed``; a condition's transition time moves only on a change."""
    before = {c.get("type"): c for c in previous or [] if isinstance(c, Mapping)}
    wanted = {
        "Ready": (phase == JobStatus.RUNNING, phase.value.capitalize()),
        "Failed": (phase == JobStatus.FAILED, "JobFailed" if phase == JobStatus.FAILED else "NotFailed"),
    }
    out = []
    for kind, (true, reason) in wanted.items():
        value = "True" if true else "False"
        old = before.get(kind) or {}
        changed = old.get("status") != value
        out.append(
            {
                "type": kind,
                "status": value,
                "reason": reason,
                "message": message or "",
                "lastTransitionTime": iso(now) if changed else old.get("lastTransitionTime", iso(now)),
            }
        )
    return out


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
        "conditions": conditions(record.status, message, previous.get("conditions"), now),
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
    """The status of a StreamingJob whose spec is not a valid job: failed, nothing submitted."""
    message = mask_secrets(message)
    status: Status = {
        "phase": JobStatus.FAILED.value,
        "message": message,
        "conditions": conditions(JobStatus.FAILED, message, previous.get("conditions"), now),
    }
    if generation is not None:
        status["observedGeneration"] = generation
    return status


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
    return out
