"""The StreamingJob status projection, its conditions and the Events a change deserves (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from heliosdb_streaming.control.store import JobRecord, SnapshotRecord
from heliosdb_streaming.kubernetes.operator import status
from heliosdb_streaming.model.types import JobStatus

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def record(**fields: object) -> JobRecord:
    base: dict[str, object] = {
        "job_id": "job-1",
        "name": "spend",
        "status": JobStatus.RUNNING,
        "config": {},
        "submitted_at": T0,
        "started_at": T0 + timedelta(seconds=2),
        "restarts": 0,
        "message": "Job started successfully",
    }
    return JobRecord(**{**base, **fields})  # type: ignore[arg-type]


def snapshot(checkpoint_id: int, kind: str = "checkpoint", state: str = "completed") -> SnapshotRecord:
    return SnapshotRecord(
        job_id="job-1",
        checkpoint_id=checkpoint_id,
        kind=kind,
        status=state,
        timestamp=T0,
        location=f"s3://b/job-1/{kind}-{checkpoint_id}",
        savepoint_id=f"savepoint-{checkpoint_id}" if kind == "savepoint" else None,
    )


def test_projection_of_a_running_job() -> None:
    snaps = (snapshot(3), snapshot(4, "savepoint"), snapshot(5, state="failed"), snapshot(2))
    observed = status.Observed(
        parallelism=3, snapshots=snaps, observed_generation=7, observed_nonce=1, generation=7
    )
    s = status.project(record(), observed, {}, T0)
    assert s["phase"] == "running" and s["jobId"] == "job-1" and s["parallelism"] == 3
    assert s["submittedAt"] == "2026-01-02T03:04:05Z" and s["startedAt"] == "2026-01-02T03:04:07Z"
    assert s["finishedAt"] is None
    assert s["lastCheckpoint"] == "checkpoint-3"  # the newest completed checkpoint, not the failed one
    assert s["lastSavepoint"]["savepointId"] == "savepoint-4"
    assert (s["observedGeneration"], s["observedRestartNonce"]) == (7, 1)
    assert {c["type"]: c["status"] for c in s["conditions"]} == {
        "Ready": "True",
        "Failed": "False",
        "SpecApplied": "True",
        "SavepointInProgress": "False",
    }
    for c in s["conditions"]:  # API conventions: each says what it was computed from, and why
        assert c["observedGeneration"] == 7 and c["reason"] and c["lastTransitionTime"]
    assert s["pendingPods"] == []


def test_spec_not_applied_pending_pods_and_savepoint_in_progress() -> None:
    """A newer generation waiting for a restart: no observedGeneration for it, SpecApplied False with
    the reason; a pod that cannot start makes Ready False with its reason, and one Event."""
    snaps = (snapshot(3), snapshot(4, "savepoint", state="in_progress"))
    observed = status.Observed(
        parallelism=2,
        snapshots=snaps,
        observed_generation=None,
        generation=2,
        spec_pending="config.parallelism not applied: change spec.restartNonce to restart with it",
        pending_pods=(("spend-worker-1", "Unschedulable", "0/3 nodes are available"),),
    )
    s = status.project(record(), observed, {}, T0)
    assert "observedGeneration" not in s
    cond = {c["type"]: c for c in s["conditions"]}
    assert (cond["SpecApplied"]["status"], cond["SpecApplied"]["reason"]) == ("False", "Pending")
    assert "restartNonce" in cond["SpecApplied"]["message"] and cond["SpecApplied"]["observedGeneration"] == 2
    assert (cond["Ready"]["status"], cond["Ready"]["reason"]) == ("False", "Unschedulable")
    assert cond["Ready"]["message"] == "pod spend-worker-1: 0/3 nodes are available"
    assert (cond["SavepointInProgress"]["status"], cond["SavepointInProgress"]["reason"]) == (
        "True",
        "Triggered",
    )
    assert s["pendingPods"] == [
        {"name": "spend-worker-1", "reason": "Unschedulable", "message": "0/3 nodes are available"}
    ]
    before = status.project(record(), status.Observed(2), {}, T0)
    assert (
        "Warning",
        "PodPending",
        "pod spend-worker-1 cannot start: Unschedulable: 0/3 nodes are available",
    ) in status.events(before, s)
    again = status.project(record(), observed, s, T0 + timedelta(seconds=30))
    assert status.events(s, again) == []  # deduplicated: the same pod and reason is one Event


def _wanted(phase: JobStatus, message: str) -> list[status.Wanted]:
    return status.job_conditions(phase, message, status.Observed(1), None)


def test_condition_transition_time_moves_only_on_change() -> None:
    first = status.conditions(_wanted(JobStatus.RUNNING, "ok"), [], T0, 1)
    later = T0 + timedelta(minutes=5)
    same = status.conditions(_wanted(JobStatus.RUNNING, "ok"), first, later, 1)
    assert [c["lastTransitionTime"] for c in same] == [c["lastTransitionTime"] for c in first]
    failed = {c["type"]: c for c in status.conditions(_wanted(JobStatus.FAILED, "boom"), first, later, 2)}
    assert (
        failed["Failed"]["status"] == "True"
        and failed["Failed"]["lastTransitionTime"] == "2026-01-02T03:09:05Z"
    )
    assert failed["Ready"]["lastTransitionTime"] == "2026-01-02T03:09:05Z"


def test_diff_and_events() -> None:
    before = status.project(record(status=JobStatus.SUBMITTED, started_at=None), status.Observed(2), {}, T0)
    after = status.project(record(), status.Observed(2), before, T0)
    patch = status.diff(before, after)
    assert patch["phase"] == "running" and "jobId" not in patch
    assert status.diff(after, after) == {}
    assert status.events(before, after) == [("Normal", "Running", "Job started successfully")]
    failed = status.project(
        record(status=JobStatus.FAILED, restarts=3, message="exhausted"), status.Observed(2), after, T0
    )
    assert status.events(after, failed) == [
        ("Warning", "Failed", "exhausted"),
        ("Warning", "Restarted", "exhausted"),
    ]


def test_invalid_spec_status() -> None:
    s = status.invalid("invalid spec: spec.sources: field required", 4, {}, T0)
    assert s["phase"] == "failed" and "jobId" not in s
    assert "observedGeneration" not in s  # seen, not applied: the conditions carry the generation
    cond = {c["type"]: c for c in s["conditions"]}
    assert (cond["SpecApplied"]["status"], cond["SpecApplied"]["reason"]) == ("False", "InvalidSpec")
    assert cond["Failed"]["status"] == "True" and cond["Failed"]["observedGeneration"] == 4


def test_status_messages_never_carry_a_password() -> None:
    """``kubectl get`` and ``describe`` show them: masked whatever wrote the record or the spec error."""
    leaky = "Running with problems: worker 0 lost postgresql://bob:pa/ss@db/x (password=s3cr/et user=bob)"
    s = status.project(record(message=leaky), status.Observed(parallelism=1), {}, T0)
    masked = "Running with problems: worker 0 lost postgresql://bob:***@db/x (password=*** user=bob)"
    assert s["message"] == masked
    assert all(c["message"] == masked for c in s["conditions"] if c["message"])
    invalid = status.invalid("invalid spec: no savepoint at s3://AK:wJa/lr@bucket/x", 1, {}, T0)
    assert invalid["message"] == "invalid spec: no savepoint at s3://AK:***@bucket/x"
