"""A new job manager rebuilds its job's record from the checkpoint storage and the resource's status.

A job manager keeps its job store in its pod's emptyDir: fast, but gone with the pod. What must
outlive it is durable elsewhere, as with Flink's HA services: the snapshots are in the job's checkpoint
storage (each with its ``_manifest.json``), and whether the job was running or paused is in the
StreamingJob's ``status.phase``. So a job manager that starts for a job whose status says it is active,
and finds no record of its own, writes the record and its snapshots back into its store before the
control plane starts; the control plane then recovers the job from its latest checkpoint exactly as
after an operator restart (``RunSupervisor.recover``), and checkpoint ids go on from the newest one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from heliosdb_streaming.control.store import JobRecord, JobStore, SnapshotRecord
from heliosdb_streaming.kubernetes.operator.bindings import Binding, Bindings
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.types import JobStatus
from heliosdb_streaming.runtime.checkpoint.storage import CheckpointStorage
from heliosdb_streaming.runtime.checkpoint.tasks import MANIFEST

logger = logging.getLogger(__name__)

ACTIVE_PHASES = {JobStatus.RUNNING.value: JobStatus.RUNNING, JobStatus.PAUSED.value: JobStatus.PAUSED}


def _timestamp(raw: Any) -> datetime:
    try:
        return datetime.fromisoformat(str(raw))
    except ValueError:
        return datetime.now(UTC)


async def stored_snapshots(storage: CheckpointStorage, job_id: str) -> list[SnapshotRecord]:
    """The job's completed snapshots, from the manifests under ``<job_id>/`` (oldest first).

    Only a completed snapshot has a manifest (the coordinator writes it last), so a checkpoint that
    was cut short by the job manager's death is not among them."""
    found: list[SnapshotRecord] = []
    for path in await storage.list(f"{job_id}/"):
        if not path.endswith(f"/{MANIFEST}"):
            continue
        try:
            manifest = orjson.loads(await storage.read(path))
            if str(manifest["job_id"]) != job_id:
                continue
            directory = path[: -len(MANIFEST) - 1]
            found.append(
                SnapshotRecord(
                    job_id=job_id,
                    checkpoint_id=int(manifest["checkpoint_id"]),
                    kind=str(manifest.get("kind") or "checkpoint"),
                    status="completed",
                    timestamp=_timestamp(manifest.get("timestamp")),
                    size_bytes=int(manifest.get("size_bytes") or 0),
                    directory=directory,
                    location=storage.uri(directory),
                    savepoint_id=manifest.get("savepoint_id"),
                    description=manifest.get("description"),
                    shared_files=list(manifest.get("shared_files") or []),
                )
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning("ignoring unreadable manifest %s: %s", path, e)
    return sorted(found, key=lambda s: s.checkpoint_id)


async def rebuild(
    store: JobStore,
    bindings: Bindings,
    body: Mapping[str, Any],
    job_id: str,
    config: JobConfig,
    storage: CheckpointStorage,
) -> bool:
    """Writes the record of the StreamingJob ``body`` back into an empty ``store`` when its status says
    the job was active; True when it did (the control plane will recover it at start)."""
    if any(r.job_id == job_id for r in store.load_all()):
        return False  # this pod's store outlived a container restart: nothing was lost
    status: Mapping[str, Any] = body.get("status") or {}
    phase = ACTIVE_PHASES.get(str(status.get("phase") or ""))
    if phase is None or str(status.get("jobId") or job_id) != job_id:
        return False  # a new job, or a stopped one: the reconciler submits or leaves it
    snapshots = await stored_snapshots(storage, job_id)
    checkpoints = [s for s in snapshots if s.kind == "checkpoint"]
    latest = max(snapshots, key=lambda s: s.checkpoint_id, default=None)
    parallelism = int(status.get("parallelism") or config.parallelism)
    if latest is not None:
        manifest = orjson.loads(await storage.read(f"{latest.directory}/{MANIFEST}"))
        parallelism = int(manifest.get("parallelism") or parallelism)
    stored = config.model_copy(update={"parallelism": parallelism}) if parallelism else config
    record = JobRecord(
        job_id=job_id,
        name=config.name,
        status=phase,
        config=stored.to_dict(),
        submitted_at=_timestamp(status.get("submittedAt")),
        started_at=_timestamp(status["startedAt"]) if status.get("startedAt") else None,
        restarts=int(status.get("restarts") or 0),
        last_checkpoint_id=latest.checkpoint_id if latest else 0,
    )
    store.save(record)
    for snapshot in snapshots:
        store.save_snapshot(snapshot)
    meta: Mapping[str, Any] = body.get("metadata") or {}
    spec: Mapping[str, Any] = body.get("spec") or {}
    bindings.save(
        Binding(
            job_id=job_id,
            namespace=str(meta["namespace"]),
            name=str(meta["name"]),
            uid=str(meta.get("uid") or ""),
            applied_nonce=int(status.get("observedRestartNonce") or spec.get("restartNonce") or 0),
            observed_generation=status.get("observedGeneration"),
            generation=status.get("observedGeneration"),
        )
    )
    logger.info(
        "job %s was %s: recovering it from %s (%d checkpoints in storage)",
        job_id,
        phase.value,
        f"snapshot {latest.checkpoint_id}" if latest else "the beginning",
        len(checkpoints),
    )
    return True
