"""The restart policy as pure logic: failure counts in a row, and Flink's sliding failure rate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from heliosdb_streaming.control.restart_policy import RestartDecision, decide
from heliosdb_streaming.model.config import JobConfig, RestartStrategy
from heliosdb_streaming.model.errors import InvalidJobConfigError

T0 = datetime(2026, 12, 6, 0, 0, 0, tzinfo=UTC)
RATE = RestartStrategy.failure_rate(2, timedelta(seconds=10), timedelta(milliseconds=500))


def failures_at(strategy: RestartStrategy, *seconds: float) -> list[RestartDecision]:
    """Feeds failures at these offsets from T0, keeping what each decision says as the store would."""
    count, times, out = 0, (), []
    for s in seconds:
        decision = decide(strategy, count, times, T0 + timedelta(seconds=s))
        out.append(decision)
        count, times = decision.failures_since_restart, decision.failure_times
    return out


def test_two_failures_within_the_interval_restart_the_third_fails() -> None:
    first, second, third = failures_at(RATE, 0, 3, 6)
    assert (first.restart, first.delay_s, second.restart) == (True, 0.5, True)
    assert not third.restart
    assert "3 failures within 10000 ms, more than 2" in third.why


def test_failures_that_leave_the_interval_no_longer_count() -> None:
    decisions = failures_at(RATE, 0, 3, 10.5, 13.5, 20.5, 23.6)
    assert [d.restart for d in decisions] == [True] * 6  # never three within 10 s
    assert decisions[-1].failure_times == (T0 + timedelta(seconds=20.5), T0 + timedelta(seconds=23.6))
    # the window is sliding, not a fixed bucket: 13.5, 20.5 and 23.4 are within 10 s of each other
    assert not failures_at(RATE, 0, 3, 10.5, 13.5, 20.5, 23.4)[-1].restart


def test_the_interval_boundary_is_exclusive() -> None:
    """A failure exactly one interval ago is outside the window that ends now."""
    assert failures_at(RATE, 0, 5, 10)[-1].restart
    assert not failures_at(RATE, 0, 5, 9.999)[-1].restart


def test_a_kept_window_is_bounded_by_the_limit() -> None:
    one = RestartStrategy.failure_rate(1, timedelta(minutes=1), timedelta(0))
    decision = failures_at(one, 0)[0]
    assert decision.restart and decision.failure_times == (T0,)
    assert not failures_at(one, 0, 59)[-1].restart


def test_fixed_delay_and_exponential_backoff_keep_their_meaning() -> None:
    fixed = RestartStrategy.fixed_delay(2, timedelta(seconds=6))
    decisions = failures_at(fixed, 0, 100, 200)  # time plays no part: attempts in a row
    assert [d.restart for d in decisions] == [True, True, False]
    assert decisions[0].why == "restart 1 of 2 in 6s (fixed_delay)"
    assert decisions[-1].why == "restart strategy fixed_delay exhausted after 2 restart(s)"
    backoff = RestartStrategy.exponential_backoff(3, timedelta(seconds=1), timedelta(seconds=3))
    assert [d.delay_s for d in failures_at(backoff, 0, 1, 2)] == [1.0, 2.0, 3.0]
    assert failures_at(RestartStrategy.none(), 0)[0].why == "restart strategy is none"


def test_failure_rate_on_the_wire() -> None:
    body = {
        "name": "rate",
        "config": {
            "restart_strategy": {
                "type": "failure_rate",
                "max_failures_per_interval": 2,
                "failure_rate_interval_ms": 10_000,
                "delay_ms": 500,
            }
        },
        "sources": [{"type": "datagen", "config": {}}],
        "sinks": [{"type": "discard", "config": {}}],
    }
    config = JobConfig.from_dict(body)
    assert config.restart_strategy == RATE
    assert config.settings_dict()["restart_strategy"] == body["config"]["restart_strategy"]
    assert JobConfig.from_dict({**body, "config": {"restart_strategy": "failure_rate"}}).restart_strategy == (
        RestartStrategy.failure_rate(1, timedelta(minutes=1), timedelta(seconds=10))
    )
    zero = {"type": "failure_rate", "max_failures_per_interval": 0}
    with pytest.raises(InvalidJobConfigError) as e:
        JobConfig.from_dict({**body, "config": {"restart_strategy": zero}})
    assert "config.restart_strategy.max_failures_per_interval" in {err.path for err in e.value.errors}


# ------------------------------------------------------------------ reset after a stable period

FIXED = RestartStrategy(type="fixed_delay", attempts=2, delay_ms=100, reset_after_ms=60_000)


def test_a_stable_run_gives_fixed_delay_its_attempts_back() -> None:
    """Two failures in a row exhaust 2 attempts unless the run before the failure lasted 60 s."""
    at = T0 + timedelta(seconds=30)
    exhausted = decide(FIXED, 2, (), at, run_since=at - timedelta(seconds=59))
    assert not exhausted.restart and "exhausted after 2" in exhausted.why
    earned = decide(FIXED, 2, (), at, run_since=at - timedelta(seconds=60))
    assert (earned.restart, earned.failures_since_restart) == (True, 1)
    assert earned.why == "restart 1 of 2 in 0.1s (fixed_delay)"


def test_no_reset_when_disabled_or_the_start_is_unknown() -> None:
    at = T0 + timedelta(hours=5)
    never = FIXED.model_copy(update={"reset_after_ms": 0})
    assert not decide(never, 2, (), at, run_since=T0).restart
    assert not decide(FIXED, 2, (), at).restart  # no run_since: the count stands


def test_exponential_backoff_starts_again_from_the_initial_delay() -> None:
    exp = RestartStrategy(
        type="exponential_backoff",
        max_attempts=5,
        initial_delay_ms=1000,
        max_delay_ms=60_000,
        reset_after_ms=10_000,
    )
    at = T0 + timedelta(minutes=1)
    assert decide(exp, 3, (), at, run_since=at - timedelta(seconds=1)).delay_s == 8.0
    assert decide(exp, 3, (), at, run_since=at - timedelta(seconds=10)).delay_s == 1.0


def test_default_reset_is_one_hour_and_on_the_wire_only_when_changed() -> None:
    assert RestartStrategy().reset_after_ms == 3_600_000
    assert RestartStrategy(type="fixed_delay").to_wire() == "fixed_delay"
    assert FIXED.to_wire() == {
        "type": "fixed_delay",
        "attempts": 2,
        "delay_ms": 100,
        "reset_after_ms": 60_000,
    }

    def config(reset_after_ms: int) -> JobConfig:
        return JobConfig.from_dict(
            {
                "name": "j",
                "sources": [{"type": "datagen", "config": {}}],
                "sinks": [{"type": "discard", "config": {}}],
                "config": {"restart_strategy": {"type": "fixed_delay", "reset_after_ms": reset_after_ms}},
            }
        )

    assert config(5000).restart_strategy.reset_after_ms == 5000
    with pytest.raises(InvalidJobConfigError, match="reset_after_ms"):
        config(-1)
