"""The autoscaler's pure decisions (``control.autoscaler``), its settings' validation, what a job keeps
of its decisions, and the ``heliosdb_job_autoscaler_*`` families."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heliosdb_streaming.api import prometheus
from heliosdb_streaming.control import autoscaler
from heliosdb_streaming.control.autoscaler import Action, AutoscalerState, Inputs, WorkerLoad, decide
from heliosdb_streaming.control.controller import JobEntry, Run
from heliosdb_streaming.control.metrics import JobMetricsAggregator
from heliosdb_streaming.control.store import JobRecord
from heliosdb_streaming.embedded.logs import JobLog
from heliosdb_streaming.model.config import AutoscalerSettings, JobConfig, JobConfigOverrides
from heliosdb_streaming.model.errors import InvalidJobConfigError
from heliosdb_streaming.model.types import JobStatus

SETTINGS = AutoscalerSettings(
    enabled=True, min_parallelism=1, max_parallelism=8, stabilization_ms=1000, cooldown_ms=5000,
    metrics_window_ms=2000,
)  # fmt: skip
NOW = 100_000


def inputs(p: int, busy: float, **kw: Any) -> Inputs:
    """A run of ``p`` workers, started long ago, measured over the whole window, each ``busy``."""
    backpressure = kw.pop("backpressure", 0.0)
    fields: dict[str, Any] = {
        "now_ms": NOW,
        "parallelism": p,
        "run_started_ms": 0,
        "last_rescale_ms": None,
        "workers": tuple(WorkerLoad(busy, backpressure) for _ in range(p)),
        "window_covered_ms": 2000,
        "split_count": 16,
        "free_slots": 16,
    }
    return Inputs(**{**fields, **kw})


def test_required_parallelism_is_current_times_utilization_over_target() -> None:
    d = decide(SETTINGS, inputs(2, 0.95))  # 2 * 0.95 / 0.7 = 2.71
    assert (d.action, d.parallelism, d.required, d.utilization) == (Action.SCALE_UP, 3, 3, 0.95)
    assert d.reason.startswith("utilization 0.95 vs target 0.70: required 3 = ceil(2 * 0.95 / 0.70)")
    assert d.inputs["parallelism"] == 2 and d.inputs["workers"][0] == {"busy": 0.95, "backpressure": 0.0}
    down = decide(SETTINGS, inputs(4, 0.2))  # 4 * 0.2 / 0.7 = 1.14
    assert (down.action, down.parallelism) == (Action.SCALE_DOWN, 2)


def test_nothing_within_the_boundary_around_the_target() -> None:
    for busy in (0.61, 0.7, 0.79):
        d = decide(SETTINGS, inputs(3, busy))
        assert (d.action, d.parallelism) == (Action.NONE, 3), busy
        assert "within 0.1 of target" in d.reason


def test_stabilization_cooldown_and_a_window_not_yet_covered_decide_nothing() -> None:
    d = decide(SETTINGS, inputs(2, 1.0, run_started_ms=NOW - 500))
    assert (d.action, d.kind, d.utilization) == (Action.NONE, "stabilizing", None)
    d = decide(SETTINGS, inputs(2, 1.0, last_rescale_ms=NOW - 4999))
    assert (d.action, d.kind) == (Action.NONE, "cooldown")
    assert decide(SETTINGS, inputs(2, 1.0, last_rescale_ms=NOW - 5000)).action == Action.SCALE_UP
    d = decide(SETTINGS, inputs(2, 1.0, window_covered_ms=200))
    assert (d.action, d.kind) == (Action.NONE, "collecting")
    assert decide(SETTINGS, inputs(2, 1.0, workers=())).kind == "collecting"


def test_limits_splits_key_groups_free_slots_and_the_configured_range() -> None:
    d = decide(SETTINGS, inputs(2, 1.0, split_count=2))
    assert (d.action, d.parallelism, d.limited_by) == (Action.NONE, 2, "source splits")
    d = decide(SETTINGS, inputs(3, 1.0, free_slots=1))  # required 5, the job's 3 slots + 1 free
    assert (d.action, d.parallelism, d.limited_by) == (Action.SCALE_UP, 4, "free slots")
    # keyed stages: key groups bound it, not the splits (workers beyond them run key groups)
    d = decide(SETTINGS, inputs(2, 1.0, split_count=1, keyed_stages=True, key_groups=128))
    assert (d.parallelism, d.limited_by) == (3, None)
    d = decide(SETTINGS, inputs(2, 1.0, split_count=1, keyed_stages=True, key_groups=2))
    assert (d.parallelism, d.limited_by) == (2, "key groups")
    d = decide(SETTINGS, inputs(1, 1.0, keyed_stages=True, repartition_brokers=False))
    assert (d.action, d.limited_by) == (Action.NONE, "no repartition brokers")
    d = decide(SETTINGS, inputs(6, 1.0))  # 6 / 0.7 = 8.6 -> 9, max 8
    assert (d.parallelism, d.limited_by) == (8, "max_parallelism")
    assert d.reason.endswith("required 9 = ceil(6 * 1.00 / 0.70); capped to 8 by max_parallelism")
    narrow = SETTINGS.model_copy(update={"min_parallelism": 3})
    d = decide(narrow, inputs(4, 0.0))
    assert (d.action, d.parallelism, d.limited_by) == (Action.SCALE_DOWN, 3, "min_parallelism")


def test_backpressure_and_a_growing_lag_prevent_scaling_down() -> None:
    d = decide(SETTINGS, inputs(4, 0.1, backpressure=0.8))
    assert (d.action, d.parallelism) == (Action.NONE, 4) and "backpressure 0.80" in d.reason
    d = decide(SETTINGS, inputs(4, 0.1, source_lag=5000, lag_growth_per_s=600.0))  # +1200 in 2 s
    assert (d.action, d.parallelism) == (Action.SCALE_UP, 5) and "source lag 5000 growing" in d.reason
    d = decide(SETTINGS, inputs(4, 0.1, source_lag=5000, lag_growth_per_s=-50.0))  # catching up
    assert d.action == Action.SCALE_DOWN


def test_lag_jitter_of_batched_reads_is_not_growth() -> None:
    """A lag that rose by less than ``LAG_GROWTH_FLOOR`` over the window (a fetch batch between two
    heartbeats) neither blocks a scale-down nor asks for a worker; one that rose by it does."""
    window_s = SETTINGS.metrics_window_ms / 1000
    below = (autoscaler.LAG_GROWTH_FLOOR - 1) / window_s
    d = decide(SETTINGS, inputs(4, 0.1, source_lag=400, lag_growth_per_s=below))
    assert (d.action, d.parallelism) == (Action.SCALE_DOWN, 1)
    at = autoscaler.LAG_GROWTH_FLOOR / window_s
    d = decide(SETTINGS, inputs(4, 0.1, source_lag=1400, lag_growth_per_s=at))
    assert (d.action, d.parallelism) == (Action.SCALE_UP, 5)


@given(
    p=st.integers(1, 64),
    busy=st.lists(st.floats(0, 1), min_size=1, max_size=8),
    target=st.floats(0.05, 1.0),
    lo=st.integers(1, 32),
    span=st.integers(0, 64),
    splits=st.none() | st.integers(1, 128),
    keyed=st.booleans(),
    key_groups=st.integers(1, 256),
    free=st.integers(0, 64),
    backpressure=st.floats(0, 1),
)
def test_a_decision_always_respects_every_limit(
    p: int,
    busy: list[float],
    target: float,
    lo: int,
    span: int,
    splits: int | None,
    keyed: bool,
    key_groups: int,
    free: int,
    backpressure: float,
) -> None:
    settings = SETTINGS.model_copy(
        update={"target_utilization": target, "min_parallelism": lo, "max_parallelism": lo + span}
    )
    workers = tuple(WorkerLoad(busy[i % len(busy)], backpressure) for i in range(p))
    d = decide(
        settings,
        inputs(
            p,
            0,
            workers=workers,
            split_count=splits,
            keyed_stages=keyed,
            key_groups=key_groups,
            free_slots=free,
        ),
    )
    assert d.parallelism >= 1
    assert (d.action == Action.NONE) == (d.parallelism == p)
    assert (d.action == Action.SCALE_UP) == (d.parallelism > p)
    if d.action != Action.NONE:  # a change never goes past what can run
        assert d.parallelism <= p + free
        assert d.parallelism <= (key_groups if keyed else splits or d.parallelism)
        assert d.parallelism <= lo + span
        if d.parallelism < lo:  # below the configured minimum only when a hard limit says so
            assert d.limited_by in ("free slots", "source splits", "key groups")
    if d.action == Action.SCALE_DOWN and backpressure >= autoscaler.BACKPRESSURE_HIGH:
        assert d.limited_by is not None  # only a limit below the current parallelism forces it
    mean = sum(w.busy for w in workers) / p
    runnable = p <= (key_groups if keyed else splits or p)
    if lo <= p <= lo + span and runnable and abs(mean - target) <= autoscaler.UTILIZATION_BOUNDARY - 1e-3:
        assert d.action == Action.NONE


@given(st.lists(st.tuples(st.integers(1, 1500), st.floats(0, 1), st.floats(0, 1)), min_size=2, max_size=30))
def test_load_over_window_is_the_busy_fraction_of_the_newest_window(
    steps: list[tuple[int, float, float]],
) -> None:
    samples, at, busy, bp = [], 0.0, 0.0, 0.0
    for dt, b, p in steps:
        at, busy, bp = at + dt, busy + dt * b, bp + dt * p
        samples.append((at, busy, bp))
    load, span = autoscaler.load_over_window(samples, 3000)
    assert 0 <= load.busy <= 1 and 0 <= load.backpressure <= 1 and span > 0
    oldest = (
        next(s for s in samples if samples[-1][0] - s[0] <= 3000 and s is not samples[-1])
        if any(samples[-1][0] - s[0] <= 3000 for s in samples[:-1])
        else samples[-2]
    )
    assert span == int(samples[-1][0] - oldest[0])
    assert math.isclose(load.busy, (samples[-1][1] - oldest[1]) / span, abs_tol=1e-4)


def test_load_needs_two_samples() -> None:
    assert autoscaler.load_over_window([(0.0, 0.0, 0.0)], 1000) == (WorkerLoad(0.0, 0.0), 0)


def test_the_history_keeps_decisions_that_change_something() -> None:
    state = AutoscalerState()
    hold = decide(SETTINGS, inputs(2, 0.7))
    assert state.record(hold, 1, applied=False)
    assert not state.record(decide(SETTINGS, inputs(2, 0.72)), 2, applied=False)  # same answer again
    assert state.last is not None and state.last.at_ms == 2
    up = decide(SETTINGS, inputs(2, 1.0))
    assert state.record(up, 3, applied=False)
    assert not state.record(up, 4, applied=False)  # a repeated recommendation is not recorded twice
    assert state.record(up, 5, applied=True)  # but each rescale is
    assert [r.at_ms for r in state.history] == [1, 3, 5]
    assert state.decisions == {"none": 1, "scale_up": 2}
    for i in range(40):
        state.record(decide(SETTINGS, inputs(2, 1.0, run_started_ms=NOW - i)), 10 + i, applied=True)
    assert len(state.history) == autoscaler.HISTORY and state.history[-1].at_ms == 49


def test_settings_are_bounded_and_unknown_fields_refused() -> None:
    base = {
        "name": "j",
        "sources": [{"type": "datagen", "config": {}}],
        "sinks": [{"type": "print", "config": {}}],
    }

    def paths(autoscaler: dict[str, Any]) -> list[str]:
        with pytest.raises(InvalidJobConfigError) as e:
            JobConfig.from_dict({**base, "config": {"autoscaler": autoscaler}})
        return [d.path for d in e.value.errors]

    assert paths({"target_utilization": 0}) == ["config.autoscaler.target_utilization"]
    assert paths({"target_utilization": 1.5}) == ["config.autoscaler.target_utilization"]
    assert paths({"min_parallelism": 0}) == ["config.autoscaler.min_parallelism"]
    assert paths({"max_parallelism": 5000}) == ["config.autoscaler.max_parallelism"]
    assert paths({"cooldown_ms": -1}) == ["config.autoscaler.cooldown_ms"]
    assert paths({"metrics_window_ms": 10}) == ["config.autoscaler.metrics_window_ms"]
    assert paths({"mode": "auto"}) == ["config.autoscaler.mode"]
    assert paths({"enabled": "yes"}) == ["config.autoscaler.enabled"]
    assert paths({"scale": 2}) == ["config.autoscaler.scale"]
    assert paths({"min_parallelism": 4, "max_parallelism": 2}) == ["config.autoscaler"]
    config = JobConfig.from_dict({**base, "config": {"autoscaler": {"enabled": True, "mode": "recommend"}}})
    assert config.autoscaler == AutoscalerSettings(enabled=True, mode="recommend")
    assert config.to_dict()["config"]["autoscaler"]["target_utilization"] == 0.7
    assert JobConfig.from_stored(config.to_dict()).autoscaler == config.autoscaler


def entry(tmp_path: Path, job_id: str, enabled: bool) -> JobEntry:
    config = JobConfig.from_dict(
        {
            "name": job_id,
            "config": {"parallelism": 2, "autoscaler": {"enabled": enabled}},
            "sources": [{"type": "datagen", "config": {"partitions": 4}}],
            "sinks": [{"type": "print", "config": {}}],
        }
    )
    record = JobRecord(
        job_id=job_id,
        name=job_id,
        status=JobStatus.RUNNING,
        config=config.to_dict(),
        submitted_at=datetime.now(UTC),
    )
    log = JobLog(tmp_path / job_id / "job.log")
    e = JobEntry(record=record, config=config, metrics=JobMetricsAggregator(), log=log)
    e.run = Run(job_id=job_id, attempt=1, token="t", parallelism=2)
    return e


def test_autoscaler_families_only_for_autoscaled_jobs(tmp_path: Path) -> None:
    plain = entry(tmp_path, "job-plain", enabled=False)
    assert b"autoscaler" not in prometheus.render_entries([plain])
    scaled = entry(tmp_path, "job-scaled", enabled=True)
    up = decide(SETTINGS, inputs(2, 1.0))
    scaled.autoscaling.record(up, 1, applied=True)
    scaled.autoscaling.rescales = 1
    text = prometheus.render_entries([plain, scaled]).decode()
    labels = 'job_id="job-scaled",job_name="job-scaled"'
    for line in (
        f"heliosdb_job_autoscaler_parallelism{{{labels}}} 2.0",
        f"heliosdb_job_autoscaler_recommended_parallelism{{{labels}}} 3.0",
        f"heliosdb_job_autoscaler_utilization{{{labels}}} 1.0",
        f'heliosdb_job_autoscaler_decisions_total{{action="scale_up",{labels}}} 1.0',
        f'heliosdb_job_autoscaler_decisions_total{{action="none",{labels}}} 0.0',
        f"heliosdb_job_autoscaler_rescales_total{{{labels}}} 1.0",
        "# TYPE heliosdb_job_autoscaler_rescales_total counter",
    ):
        assert line in text, line
    assert "job-plain" not in "\n".join(ln for ln in text.splitlines() if "autoscaler" in ln)


def test_a_restart_may_change_the_autoscaler_settings() -> None:
    config = JobConfig.from_dict(
        {
            "name": "j",
            "config": {"autoscaler": {"enabled": True, "mode": "recommend", "max_parallelism": 4}},
            "sources": [{"type": "datagen", "config": {}}],
            "sinks": [{"type": "print", "config": {}}],
        }
    )
    overrides = JobConfigOverrides.model_validate({"autoscaler": {"enabled": True, "mode": "apply"}})
    changed = config.with_overrides(overrides)
    assert changed.autoscaler == AutoscalerSettings(enabled=True, mode="apply")  # the whole object
    assert config.with_overrides(JobConfigOverrides(parallelism=2)).autoscaler == config.autoscaler
