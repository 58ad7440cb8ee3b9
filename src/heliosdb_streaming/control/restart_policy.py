"""The restart policy: whether a failed job restarts, and after how long. Pure: no I/O, no clock.

The supervisor asks ``decide`` with what the job store keeps (the failures since the last user
restart and, for ``failure_rate``, the times of the recent failures) and saves what it answers, so
the budget survives a control-plane restart (invariant 4 of ``control.controller``).

``failure_rate`` is Flink's failure-rate strategy: the job fails when more than
``max_failures_per_interval`` failures, this one included, fall within the sliding
``failure_rate_interval_ms`` that ends now; otherwise it restarts after ``delay_ms``. The other
strategies count failures in a row until a user restarts the job, or until a run lasts
``reset_after_ms`` without failing (``run_since``: when the failed run started or was due): that
failure is then the first of a new count, as after Flink's exponential-delay
``reset-backoff-threshold``, so failures spread over a long life do not exhaust the strategy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from heliosdb_streaming.model.config import RestartStrategy


@dataclass(frozen=True, slots=True)
class RestartDecision:
    restart: bool
    delay_s: float  # before the restart (0 when the job fails)
    failures_since_restart: int  # the new count, this failure included
    failure_times: tuple[datetime, ...]  # failure_rate: the failures within the interval, kept
    why: str  # for the job message: "restart 2 of 3 in 1s (fixed_delay)" or why it is over


def decide(
    strategy: RestartStrategy,
    failures_since_restart: int,
    failure_times: tuple[datetime, ...] | list[datetime],
    now: datetime,
    run_since: datetime | None = None,
) -> RestartDecision:
    """What a failure at ``now`` means under ``strategy``, given the failures before it and when the
    failed run began (None: unknown, never a reset)."""
    if strategy.type == "failure_rate":
        return _failure_rate(strategy, failures_since_restart + 1, failure_times, now)
    stable = timedelta(milliseconds=strategy.reset_after_ms)
    if (
        strategy.reset_after_ms
        and run_since is not None
        and now - run_since >= stable
        and failures_since_restart
    ):
        failures_since_restart = 0  # the run was stable: its restarts were earned back
    count = failures_since_restart + 1
    allowed = strategy.max_restarts()
    if failures_since_restart < allowed:
        delay = strategy.delay_for(count)
        why = f"restart {count} of {allowed} in {delay:g}s ({strategy.type})"
        return RestartDecision(True, delay, count, (), why)
    why = (
        f"restart strategy {strategy.type} exhausted after {failures_since_restart} restart(s)"
        if allowed
        else "restart strategy is none"
    )
    return RestartDecision(False, 0.0, count, (), why)


def _failure_rate(
    strategy: RestartStrategy, count: int, before: tuple[datetime, ...] | list[datetime], now: datetime
) -> RestartDecision:
    interval = timedelta(milliseconds=strategy.failure_rate_interval_ms)
    recent = (*(t for t in before if now - t < interval), now)
    limit = strategy.max_failures_per_interval
    window = f"{strategy.failure_rate_interval_ms} ms"
    if len(recent) > limit:
        why = f"restart strategy failure_rate: {len(recent)} failures within {window}, more than {limit}"
        return RestartDecision(False, 0.0, count, recent, why)
    delay = strategy.delay_for(count)
    why = f"restart in {delay:g}s (failure_rate: {len(recent)} of at most {limit} failures within {window})"
    # only the newest ``limit`` can matter to the next decision: the store keeps a bounded list
    return RestartDecision(True, delay, count, recent[-limit:], why)
