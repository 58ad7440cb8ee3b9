"""StreamingJobs as the REST API shows them, and REST commands as spec patches."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from heliosdb_streaming.api import schemas
from heliosdb_streaming.control.controller import ControlPlane
from heliosdb_streaming.embedded.launcher import SubprocessLauncher
from heliosdb_streaming.embedded.logs import LocalJobFiles
from heliosdb_streaming.embedded.sqlite_store import SqliteJobStore
from heliosdb_streaming.kubernetes import crds
from heliosdb_streaming.kubernetes.restapi import jobviews
from heliosdb_streaming.model.config import JobConfig, JobConfigOverrides
from heliosdb_streaming.model.errors import InvalidJobConfigError
from heliosdb_streaming.model.types import CheckpointInfo, JobStatus, SavepointInfo

UID = "123e4567-e89b-12d3-a456-426614174000"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def body(name: str = "fraud_detection_pipeline", parallelism: int = 2) -> dict[str, Any]:
    return {
        "name": name,
        "config": {"parallelism": parallelism, "restart_strategy": {"type": "fixed_delay", "attempts": 5}},
        "sources": [{"type": "datagen", "config": {"count": 10}}],
        "transformations": [{"type": "filter", "config": {"condition": "amount > 100"}}],
        "sinks": [{"type": "discard", "config": {}}],
    }


def resource(
    name: str = "fraud-abcde", uid: str = UID, status: dict[str, Any] | None = None, created: datetime = T0
) -> dict[str, Any]:
    config = JobConfig.from_dict(body())
    obj = jobviews.streaming_job("team-a", name, config, created)
    obj["metadata"].update({"uid": uid, "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ")})
    if status is not None:
        obj["status"] = status
    return obj


@pytest.mark.parametrize(
    ("job_name", "stem"),
    [
        ("fraud_detection_pipeline", "fraud-detection-pipeline"),
        ("Fraud Detection!", "fraud-detection"),
        ("42 answers", "job-42-answers"),
        ("---", "job"),
        ("Ünïcode ✓ job", "n-code-job"),
        ("x" * 200, "x" * 40),
    ],
)
def test_resource_names_are_dns_labels(job_name: str, stem: str) -> None:
    name = jobviews.resource_name(job_name)
    assert name.rsplit("-", 1)[0] == stem
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 46
    assert len(f"{name}-workers") <= 63 and len(f"{name}-worker-999") <= 63
    assert jobviews.resource_name(job_name) != name  # a random suffix each time


def test_submitted_job_spec_is_the_body_and_running() -> None:
    config = JobConfig.from_dict(body())
    obj = jobviews.streaming_job("team-a", "fraud-abcde", config, T0 + timedelta(microseconds=250))
    assert obj["apiVersion"] == "streaming.heliosdb.io/v1alpha2" and obj["kind"] == "StreamingJob"
    assert obj["metadata"] == {
        "name": "fraud-abcde",
        "namespace": "team-a",
        "annotations": {"streaming.heliosdb.io/submitted-at": "2026-01-01T00:00:00.000250Z"},
    }
    assert obj["spec"]["state"] == "running" and "restoreFrom" not in obj["spec"]
    assert obj["spec"]["config"]["restartStrategy"] == {
        "type": "fixed_delay",
        "attempts": 5,
        "delayMs": 10000,
    }
    assert (
        JobConfig.from_dict(crds.to_snake({k: v for k, v in obj["spec"].items() if k != "state"})) == config
    )
    location = "s3://checkpoints/job-1/savepoints/savepoint-1"
    upgrade = jobviews.streaming_job("team-a", "fraud-abcde", config, T0, restore_from=location)
    assert upgrade["spec"]["restoreFrom"] == location  # the operator starts the new job from it


def test_a_new_resource_is_a_submitted_job() -> None:
    obj = resource()
    now = T0 + timedelta(seconds=30)
    summary = jobviews.summary_of(obj, now)
    assert summary.job_id == f"job-{UID}" and summary.name == "fraud_detection_pipeline"
    assert summary.status == JobStatus.SUBMITTED and summary.submitted_at == T0
    assert (summary.started_at, summary.uptime_seconds, summary.parallelism) == (None, 0, 2)
    assert jobviews.is_job(obj, f"job-{UID}") and not jobviews.is_job(obj, "job-other")
    tasks = jobviews.planned_tasks(jobviews.config_of(obj), JobStatus.SUBMITTED)
    assert [(t.name, t.parallelism) for t in tasks] == [
        ("datagen-source", 2),
        ("filter", 2),
        ("discard-sink", 2),
    ]


def test_status_projection_and_list_page() -> None:
    running = resource(
        "a-1",
        "u-1",
        {
            "phase": "running",
            "jobId": "job-u-1",
            "startedAt": "2026-01-01T00:00:05Z",
            "parallelism": 3,
            "restarts": 1,
            "message": "restart 1 of 5",
        },
        T0,
    )
    finished = resource(
        "b-2",
        "u-2",
        {"phase": "finished", "startedAt": "2026-01-01T00:01:00Z", "finishedAt": "2026-01-01T00:01:30Z"},
        T0 + timedelta(minutes=1),
    )
    fresh = resource("c-3", "u-3", None, T0 + timedelta(minutes=2))
    now = T0 + timedelta(minutes=3)
    assert jobviews.uptime_seconds(running, now) == 175 and jobviews.uptime_seconds(finished, now) == 30
    assert (jobviews.restarts_of(running), jobviews.message_of(running)) == (1, "restart 1 of 5")
    assert jobviews.message_of(finished) is None

    page = orjson.loads(jobviews.list_body([running, finished, fresh], None, 2, 0, now))
    schemas.JobListResponse.model_validate(page)
    assert [j["job_id"] for j in page["jobs"]] == ["job-u-3", "job-u-2"]  # newest first
    assert (page["total"], page["limit"], page["offset"]) == (3, 2, 0)
    assert page["jobs"][1] == {
        "job_id": "job-u-2",
        "name": "fraud_detection_pipeline",
        "status": "finished",
        "submitted_at": "2026-01-01T00:01:00Z",
        "started_at": "2026-01-01T00:01:00Z",
        "finished_at": "2026-01-01T00:01:30Z",
        "uptime_seconds": 30,
        "parallelism": 2,
    }
    only_running = orjson.loads(jobviews.list_body([running, finished, fresh], JobStatus.RUNNING, 10, 0, now))
    assert [(j["job_id"], j["parallelism"]) for j in only_running["jobs"]] == [("job-u-1", 3)]
    assert only_running["total"] == 1
    beyond = orjson.loads(jobviews.list_body([running], None, 10, 5, now))
    assert (beyond["jobs"], beyond["total"]) == ([], 1)


def test_jobs_submitted_in_the_same_second_list_newest_first() -> None:
    """creationTimestamp has whole seconds; the API server's annotation orders them."""
    objs = [resource(f"j-{i}", f"u-{i}", None, T0 + timedelta(milliseconds=10 * i)) for i in range(5)]
    for obj in objs:
        obj["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    page = orjson.loads(jobviews.list_body(reversed(objs), None, 10, 0, T0))
    assert [j["job_id"] for j in page["jobs"]] == [f"job-u-{i}" for i in reversed(range(5))]
    del objs[2]["metadata"]["annotations"]  # created with kubectl: by creationTimestamp
    assert jobviews.submitted_at(objs[2]) == T0


def test_config_takes_the_operators_settings_and_survives_a_bad_spec() -> None:
    obj = resource()
    config = jobviews.config_of(obj, {"parallelism": 3, "checkpoint_interval_ms": 500})
    assert (config.parallelism, config.checkpoint_interval_ms) == (3, 500)
    assert [s.type for s in config.sources] == ["datagen"]
    broken = {**obj, "spec": {"name": "broken", "sources": "nope"}}
    fallback = jobviews.config_of(broken)
    assert fallback.name == "broken" and fallback.sources == []
    assert schemas.JobSettingsBody.model_validate(fallback.settings_dict()).parallelism == 1


def test_restart_patch_bumps_the_nonce_and_replaces_settings() -> None:
    spec = {**crds.to_camel(body()), "restartNonce": 2, "restoreFrom": "old-savepoint"}
    overrides = JobConfigOverrides.model_validate(
        {"parallelism": 4, "restart_strategy": {"type": "exponential_backoff", "max_attempts": 3}}
    )
    patch = jobviews.restart_patch(spec, "before-upgrade", overrides)
    assert patch == {
        "restartNonce": 3,
        "restoreFrom": "before-upgrade",
        "state": "running",
        "config": {
            "parallelism": 4,
            "restartStrategy": {  # v1alpha2 names
                "attempts": None,  # merge patches merge objects: the old keys must go explicitly
                "type": "exponential_backoff",
                "maxAttempts": 3,
                "initialDelayMs": 1000,
                "maxDelayMs": 60000,
            },
        },
    }
    plain = jobviews.restart_patch({}, None, None)
    assert plain == {"restartNonce": 1, "restoreFrom": None, "state": "running"}


def test_restore_savepoint_is_the_newest_snapshot() -> None:
    def checkpoint(second: int, status: str = "completed") -> CheckpointInfo:
        return CheckpointInfo(
            checkpoint_id=f"checkpoint-{second}",
            timestamp=T0 + timedelta(seconds=second),
            duration_ms=5,
            size_bytes=10,
            status=status,
        )

    def savepoint(second: int) -> SavepointInfo:
        return SavepointInfo(
            savepoint_id=f"savepoint-{second}",
            job_id="job-1",
            created_at=T0 + timedelta(seconds=second),
            size_bytes=10,
            location="file:///x",
        )

    assert jobviews.restore_savepoint([checkpoint(1)], []) is None
    assert jobviews.restore_savepoint([checkpoint(1)], [savepoint(2), savepoint(0)]) == "savepoint-2"
    assert jobviews.restore_savepoint([checkpoint(3)], [savepoint(2)]) is None
    assert jobviews.restore_savepoint([checkpoint(2)], [savepoint(2)]) == "savepoint-2"  # a tie
    assert jobviews.restore_savepoint([checkpoint(3, "failed")], [savepoint(2)]) == "savepoint-2"


def test_parallelism_over_the_operators_limit_is_the_embedded_error(tmp_path: Path) -> None:
    """A submit or restart wider than ``--max-parallelism`` fails as on the embedded substrate: the
    same ``InvalidJobConfigError`` (400) with the same field path and message."""
    config = JobConfig.from_dict(body(parallelism=9))
    plane = ControlPlane(
        home=tmp_path,
        store=SqliteJobStore(tmp_path / "jobs.db"),
        launcher=SubprocessLauncher(),
        files=LocalJobFiles(tmp_path),
        max_parallelism=8,
    )
    try:
        with pytest.raises(InvalidJobConfigError) as embedded:
            plane.submit(config)
    finally:
        plane.store.close()
    with pytest.raises(InvalidJobConfigError) as kubernetes:
        jobviews.check_submit_parallelism(config, 8)
    assert kubernetes.value.details() == embedded.value.details()
    assert kubernetes.value.details()[0]["path"] == "config.parallelism"
    jobviews.check_submit_parallelism(config, 9)  # at the limit: fine

    with pytest.raises(InvalidJobConfigError) as restart:
        jobviews.check_restart_parallelism(9, 8)
    assert restart.value.details() == [
        {"path": "config_overrides.parallelism", "message": "exceeds max_parallelism 8"}
    ]
    jobviews.check_restart_parallelism(8, 8)


def test_restart_parallelism_is_the_overrides_else_the_specs() -> None:
    spec = resource()["spec"]
    assert jobviews.restart_parallelism(spec, None) == 2
    assert jobviews.restart_parallelism(spec, JobConfigOverrides(checkpoint_interval_ms=1000)) == 2
    assert jobviews.restart_parallelism(spec, JobConfigOverrides(parallelism=12)) == 12
    assert jobviews.restart_parallelism({}, None) == 1
