"""``ttlSecondsAfterFinished``: when a StreamingJob's job is due to expire (pure), and the spec field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from heliosdb_streaming.control.entry import JobEntry, Run
from heliosdb_streaming.control.metrics import JobMetricsAggregator
from heliosdb_streaming.control.store import JobRecord, SnapshotRecord
from heliosdb_streaming.embedded.logs import JobLog
from heliosdb_streaming.kubernetes.operator.expiry import due, held_savepoints
from heliosdb_streaming.kubernetes.operator.mapping import JobSpec
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.errors import InvalidJobConfigError
from heliosdb_streaming.model.types import JobStatus

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def entry(tmp_path: Path, status: JobStatus, ended_s_ago: float | None) -> JobEntry:
    config = JobConfig.from_dict(
        {
            "name": "j",
            "sources": [{"type": "datagen", "config": {}}],
            "sinks": [{"type": "discard", "config": {}}],
        }
    )
    record = JobRecord(
        job_id="job-1",
        name="j",
        status=status,
        config=config.to_dict(),
        submitted_at=NOW - timedelta(hours=1),
        finished_at=NOW - timedelta(seconds=ended_s_ago) if ended_s_ago is not None else None,
    )
    return JobEntry(
        record=record, config=config, metrics=JobMetricsAggregator(), log=JobLog(tmp_path / "job.log")
    )


def test_only_a_terminal_job_past_its_ttl_is_due(tmp_path: Path) -> None:
    finished = entry(tmp_path, JobStatus.FINISHED, 30)
    assert due(30, finished, NOW) and due(0, finished, NOW)
    assert not due(31, finished, NOW)
    assert not due(None, finished, NOW)  # no TTL: kept until deleted
    assert not due(0, None, NOW)
    assert not due(0, entry(tmp_path, JobStatus.RUNNING, None), NOW)
    cancelled = entry(tmp_path, JobStatus.CANCELLED, 5)
    assert due(5, cancelled, NOW)
    cancelled.run = Run(job_id="job-1", attempt=1, token="t", parallelism=1)  # workers still stopping
    assert not due(5, cancelled, NOW)


def test_savepoints_being_deleted_still_hold_the_job(tmp_path: Path) -> None:
    failed = entry(tmp_path, JobStatus.FAILED, 100)
    snapshot = SnapshotRecord(
        job_id="job-1", checkpoint_id=3, kind="savepoint", directory="d", timestamp=NOW, duration_ms=1,
        size_bytes=1, status="deleting", savepoint_id="savepoint-a", location="file:///d",
    )  # fmt: skip
    failed.snapshots.append(snapshot)
    assert held_savepoints(failed) == ["savepoint-a"]


def test_the_spec_field_is_an_integer_of_at_least_0() -> None:
    assert JobSpec.from_spec({"ttlSecondsAfterFinished": 60}).ttl_seconds_after_finished == 60
    assert JobSpec.from_spec({}).ttl_seconds_after_finished is None
    for bad in (-1, "60", True):
        with pytest.raises(InvalidJobConfigError) as info:
            JobSpec.from_spec({"ttlSecondsAfterFinished": bad})
        assert info.value.errors[0].path == "spec.ttlSecondsAfterFinished"
