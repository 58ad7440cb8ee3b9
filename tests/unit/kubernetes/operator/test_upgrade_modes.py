"""Upgrade modes: the spec field, the planner's upgrade step, status.upgrade, and a stateless restart's
restore point (pure parts; ``tests/k8s/test_operator_upgrades.py`` runs them end to end)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from heliosdb_streaming.control.entry import JobEntry
from heliosdb_streaming.control.metrics import JobMetricsAggregator
from heliosdb_streaming.control.store import JobRecord, SnapshotRecord
from heliosdb_streaming.embedded.logs import JobLog
from heliosdb_streaming.kubernetes import crds
from heliosdb_streaming.kubernetes.operator import status
from heliosdb_streaming.kubernetes.operator.mapping import (
    DEFAULT_UPGRADE_MODE,
    JobSpec,
    Step,
    UpgradeMode,
    job_config,
    plan,
    upgrade_changes,
    upgrade_overrides,
)
from heliosdb_streaming.model.config import JobConfigOverrides
from heliosdb_streaming.model.errors import InvalidJobConfigError
from heliosdb_streaming.model.types import JobStatus

S = JobStatus


def spec(**extra: Any) -> dict[str, Any]:
    return {
        "config": {"parallelism": 2},
        "sources": [{"type": "datagen", "config": {"count": 10}}],
        "transformations": [{"type": "filter", "config": {"condition": "amount > 10"}}],
        "sinks": [{"type": "print", "config": {}}],
        **extra,
    }


def test_upgrade_mode_defaults_to_savepoint_and_names_its_path_when_unknown() -> None:
    assert JobSpec.from_spec(spec()).upgrade_mode == UpgradeMode.SAVEPOINT == DEFAULT_UPGRADE_MODE
    assert tuple(UpgradeMode) == crds.UPGRADE_MODES  # the CRD's enum
    upgrade_mode = crds.streaming_job_spec_schema()["properties"]["upgradeMode"]
    assert upgrade_mode["default"] == DEFAULT_UPGRADE_MODE
    assert JobSpec.from_spec(spec(upgradeMode="last-state")).upgrade_mode == UpgradeMode.LAST_STATE
    with pytest.raises(InvalidJobConfigError) as e:
        JobSpec.from_spec(spec(upgradeMode="blue-green"))
    assert [err.path for err in e.value.errors] == ["spec.upgradeMode"]


@pytest.mark.parametrize(
    ("phase", "step"),
    [(S.RUNNING, Step.UPGRADE), (S.PAUSED, Step.UPGRADE), (S.SUBMITTED, Step.WAIT), (S.FINISHED, Step.NONE)],
)
def test_plan_upgrades_an_active_job_once_it_runs(phase: JobStatus, step: Step) -> None:
    assert plan(JobSpec(), phase, 0, upgrade=True) == step


def test_a_restart_nonce_or_a_cancel_comes_before_an_upgrade() -> None:
    assert plan(JobSpec(restart_nonce=1), S.RUNNING, 0, upgrade=True) == Step.RESTART
    cancelled = JobSpec.from_spec(spec(state="cancelled"))
    assert plan(cancelled, S.RUNNING, 0, upgrade=True) == Step.CANCEL


def test_upgrade_changes_are_what_a_restart_applies() -> None:
    running = job_config("j", spec())
    wanted = job_config("j", spec(config={"parallelism": 4}, transformations=[]))
    assert upgrade_changes(running, wanted) == ["config.parallelism", "transformations"]
    assert upgrade_changes(running, job_config("j", spec())) == []
    # a new name cannot be applied by a restart: not an upgrade (reported as SpecNotApplied)
    assert upgrade_changes(running, job_config("j", spec(name="other"))) == []


@pytest.mark.parametrize(
    ("recorded", "phase", "shown"),
    [
        ("restarted", S.SUBMITTED, "in_progress"),
        ("restarted", S.RUNNING, "completed"),
        ("restarted", S.FINISHED, "completed"),
        ("failed", S.RUNNING, "failed"),
        ("in_progress", S.RUNNING, "in_progress"),
    ],
)
def test_status_upgrade_is_in_progress_until_the_new_run_starts(
    recorded: str, phase: JobStatus, shown: str
) -> None:
    upgrade = {"mode": "savepoint", "generation": 3, "state": recorded, "restoredFrom": None}
    assert status.upgrade(upgrade, phase) == {"mode": "savepoint", "generation": 3, "state": shown}


def entry(tmp_path: Path) -> JobEntry:
    config = job_config("j", spec())
    record = JobRecord(
        job_id="j", name="j", status=S.RUNNING, config=config.to_dict(), submitted_at=datetime.now(UTC)
    )
    job = JobEntry(
        record=record, config=config, metrics=JobMetricsAggregator(), log=JobLog(tmp_path / "j.log")
    )
    job.snapshots.append(
        SnapshotRecord("j", 4, "checkpoint", "completed", datetime.now(UTC), directory="j/chk-4")
    )
    return job


def test_a_fresh_start_restores_nothing_until_it_has_a_snapshot_of_its_own(tmp_path: Path) -> None:
    """A stateless upgrade: the old checkpoints stay, but neither that run nor a recovery of it
    before its first checkpoint restores them."""
    job = entry(tmp_path)
    assert job.restore_point() is not None  # before: the newest checkpoint
    job.restore(None, fresh=True)
    assert (job.restore_from, job.starts_fresh(), job.restore_point()) == (None, True, None)
    job.restore_latest()  # what a recovery after a failure does
    assert (job.restore_from, job.starts_fresh()) == (None, True)
    assert not job.restores("j/chk-4")  # the old checkpoint is not in use: retention may drop it
    job.record.restore_point = None  # the run completed a snapshot of its own
    assert job.restore_point() is not None and not job.starts_fresh()


def test_an_upgrade_keeps_the_parallelism_the_autoscaler_chose() -> None:
    """The spec's parallelism is the start; the autoscaler's (running) one is not an edit to undo."""
    scaled = {"parallelism": 2, "autoscaler": {"enabled": True}}
    running = job_config("j", spec(config=scaled)).with_overrides(JobConfigOverrides(parallelism=1))
    edited = job_config("j", spec(config=scaled, transformations=[]))
    assert upgrade_changes(running, edited) == ["transformations"]
    assert upgrade_overrides(running, edited).parallelism == 1
    assert upgrade_changes(running, job_config("j", spec(config=scaled))) == []
    # the autoscaler turned off (or only recommending): the spec's parallelism applies again
    for off in ({"enabled": False}, {"enabled": True, "mode": "recommend"}):
        manual = job_config("j", spec(config={"parallelism": 2, "autoscaler": off}))
        assert "config.parallelism" in upgrade_changes(running, manual)
        assert upgrade_overrides(running, manual).parallelism == 2
