"""StreamingJob spec -> job config and the planner's single next step (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest

from heliosdb_streaming.kubernetes.operator.mapping import (
    DesiredState,
    JobSpec,
    Step,
    job_config,
    job_id_for,
    pipeline_changes,
    plan,
    recorded_savepoint_name,
    restart_overrides,
    savepoint_ref,
    savepoint_restorers,
    unapplied_changes,
)
from heliosdb_streaming.model.errors import InvalidJobConfigError
from heliosdb_streaming.model.types import JobStatus

S = JobStatus


def spec(**extra: Any) -> dict[str, Any]:
    return {
        "config": {"parallelism": 2, "checkpoint_interval_ms": 1000},
        "sources": [{"type": "datagen", "config": {"count": 10}}],
        "transformations": [{"type": "filter", "config": {"condition": "amount > 10"}}],
        "sinks": [{"type": "print", "config": {}}],
        **extra,
    }


def test_job_config_takes_the_rest_body_and_defaults_the_name_to_the_resource() -> None:
    config = job_config("fraud", spec(state="paused", restartNonce=3, image="x:1"))
    assert config.name == "fraud" and config.parallelism == 2 and config.checkpoint_interval_ms == 1000
    assert job_config("fraud", spec(name="Fraud detector")).name == "Fraud detector"


def test_checkpoint_storage_of_the_spec_becomes_the_jobs() -> None:
    config = job_config("j", spec(checkpointStorage="s3://bucket/jobs"))
    assert config.checkpoint_storage == "s3://bucket/jobs"


def test_invalid_spec_names_spec_paths() -> None:
    bad = spec()
    bad["transformations"][0]["config"] = {}
    bad["config"]["parallelism"] = 0
    with pytest.raises(InvalidJobConfigError) as e:
        job_config("j", bad)
    paths = {err.path for err in e.value.errors}
    assert {"spec.transformations[0].config.condition", "spec.config.parallelism"} <= paths


def test_operator_fields_with_defaults_and_errors() -> None:
    assert JobSpec.from_spec({}) == JobSpec()
    parsed = JobSpec.from_spec({"state": "cancelled", "restartNonce": 2, "savepointOnCancel": True})
    assert (parsed.state, parsed.restart_nonce, parsed.savepoint_on_cancel) == (
        DesiredState.CANCELLED,
        2,
        True,
    )
    with pytest.raises(InvalidJobConfigError) as e:
        JobSpec.from_spec({"state": "sleeping", "restartNonce": -1})
    assert {err.path for err in e.value.errors} == {"spec.state", "spec.restartNonce"}


@pytest.mark.parametrize(
    ("state", "phase", "step"),
    [
        ("running", S.SUBMITTED, Step.NONE),
        ("running", S.RUNNING, Step.NONE),
        ("running", S.PAUSED, Step.RESUME),
        ("paused", S.RUNNING, Step.PAUSE),
        ("paused", S.SUBMITTED, Step.WAIT),
        ("paused", S.PAUSED, Step.NONE),
        ("cancelled", S.SUBMITTED, Step.CANCEL),
        ("cancelled", S.RUNNING, Step.CANCEL),
        ("cancelled", S.PAUSED, Step.CANCEL),
        ("cancelled", S.CANCELLED, Step.NONE),
        ("running", S.FINISHED, Step.NONE),
        ("running", S.FAILED, Step.NONE),
        ("running", S.CANCELLED, Step.NONE),
    ],
)
def test_plan_state(state: str, phase: JobStatus, step: Step) -> None:
    assert plan(JobSpec(state=DesiredState(state)), phase, 0) == step


def test_plan_cancel_with_savepoint_only_when_workers_run() -> None:
    wanted = JobSpec(state=DesiredState.CANCELLED, savepoint_on_cancel=True)
    assert plan(wanted, S.RUNNING, 0) == Step.CANCEL_WITH_SAVEPOINT
    assert plan(wanted, S.PAUSED, 0) == Step.CANCEL_WITH_SAVEPOINT
    assert plan(wanted, S.SUBMITTED, 0) == Step.CANCEL


@pytest.mark.parametrize("phase", [S.RUNNING, S.PAUSED, S.FINISHED, S.FAILED, S.CANCELLED])
def test_a_new_restart_nonce_restarts_from_every_phase_but_submitted(phase: JobStatus) -> None:
    assert plan(JobSpec(restart_nonce=1), phase, 0) == Step.RESTART
    assert plan(JobSpec(restart_nonce=1), S.SUBMITTED, 0) == Step.WAIT
    assert plan(JobSpec(restart_nonce=1), phase, 1) != Step.RESTART


def test_restart_overrides_and_what_a_restart_cannot_change() -> None:
    current = job_config("j", spec())
    rescaled = job_config("j", {**spec(), "config": {"parallelism": 5, "checkpoint_interval_ms": 2000}})
    overrides = restart_overrides(rescaled)
    assert current.with_overrides(overrides).parallelism == 5
    assert current.with_overrides(overrides).checkpoint_interval_ms == 2000
    assert unapplied_changes(current, rescaled) == []
    other_sink = job_config("j", {**spec(), "sinks": [{"type": "discard", "config": {}}]})
    assert unapplied_changes(current, other_sink) == [] and pipeline_changes(current, other_sink) == ["sinks"]
    assert pipeline_changes(current, rescaled) == []
    assert unapplied_changes(current, job_config("k", spec())) == ["name"]
    other_backend = job_config("j", {**spec(), "config": {"parallelism": 2, "state_backend": "rocksdb"}})
    assert "config.stateBackend" in unapplied_changes(current, other_backend)


def test_restore_from_names_a_resource_or_a_location() -> None:
    assert savepoint_ref(None) == (None, None)
    assert savepoint_ref("before-upgrade") == ("before-upgrade", None)
    assert savepoint_ref("s3://b/p/savepoint-1") == (None, "s3://b/p/savepoint-1")


def test_job_id_follows_the_resource_uid() -> None:
    assert job_id_for("3f2a") == "job-3f2a"
    assert job_id_for(None) is None


def test_recorded_savepoint_names_are_valid_object_names() -> None:
    savepoint_id = "savepoint-0b7e3c1a-6f2d-4a57-9a8e-2f4e8d1c5b90"
    assert recorded_savepoint_name("fraud", savepoint_id) == f"fraud-{savepoint_id}"
    long = recorded_savepoint_name("a" * 230 + "-b", savepoint_id)
    assert len(long) <= 253 and long.endswith(f"a-{savepoint_id}")


SAVEPOINT = {"metadata": {"name": "sp"}, "status": {"location": "s3://bucket/jobs/a/savepoint-1/"}}


def streaming_job(uid: str, restore_from: str | None, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": f"n-{uid}", "uid": uid},
        "spec": {"restoreFrom": restore_from, "restartNonce": status.pop("nonce", 0)},
        "status": status,
    }


@pytest.mark.parametrize(
    ("job", "needs"),
    [
        (streaming_job("a", "sp"), True),  # no status yet: it has not started restoring
        (streaming_job("a", "s3://bucket/jobs/a/savepoint-1"), True),  # by location, either slash
        (streaming_job("a", "sp", phase="running", jobId="job-x"), True),
        (streaming_job("a", "sp", phase="running", lastCheckpoint="checkpoint-3"), False),  # its own now
        (streaming_job("a", "sp", phase="running", lastSavepoint={"savepointId": "s"}), False),
        (streaming_job("a", "sp", phase="running", lastCheckpoint="checkpoint-3", nonce=1), True),  # restart
        (streaming_job("a", "sp", phase="finished"), False),
        (streaming_job("a", "sp", phase="cancelled"), False),
        (streaming_job("a", "other"), False),
        (streaming_job("a", None), False),
    ],
)
def test_savepoint_restorers_are_the_unfinished_jobs_without_state_of_their_own(
    job: dict[str, Any], needs: bool
) -> None:
    users = savepoint_restorers(SAVEPOINT, [job])
    assert users == ([job["status"].get("jobId") or "job-a"] if needs else [])


def test_a_streaming_job_being_deleted_no_longer_holds_a_savepoint() -> None:
    job = streaming_job("a", "sp")
    job["metadata"]["deletionTimestamp"] = "2026-12-06T00:00:00Z"
    assert savepoint_restorers(SAVEPOINT, [job, streaming_job("b", "sp")]) == ["job-b"]
