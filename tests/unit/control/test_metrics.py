"""Heartbeats to totals and windows: counters never go backwards, windows are windows."""

from __future__ import annotations

from heliosdb_streaming.control.metrics import JobMetricsAggregator
from heliosdb_streaming.runtime.histogram import LatencyHistogram, bucket_of, quantile_of


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def beat(events: int, errors: int = 0, latency: dict[int, int] | None = None) -> dict[str, object]:
    return {"events_in": events, "events_out": events // 2, "errors": errors, "latency": latency or {}}


def test_totals_survive_a_worker_restart() -> None:
    clock = Clock(1_000_000.0)
    agg = JobMetricsAggregator(clock)
    agg.on_heartbeat(1, 0, beat(100))
    clock.t += 1
    agg.on_heartbeat(1, 0, beat(250))
    agg.forget_workers()
    clock.t += 1
    agg.on_heartbeat(2, 0, beat(30))  # a new run counts from zero again
    assert agg.totals["events_in"] == 280
    assert agg.totals["events_out"] == 125 + 15


def test_windows_only_count_their_minutes() -> None:
    clock = Clock(6_000_000.0)  # a minute boundary
    agg = JobMetricsAggregator(clock)
    agg.on_heartbeat(1, 0, beat(6000, latency={bucket_of(2.0): 6000}))
    clock.t += 600  # ten minutes later
    agg.on_heartbeat(1, 0, beat(6600, errors=3, latency={bucket_of(2.0): 6000, bucket_of(50.0): 600}))
    last_minute = agg.window(60)
    assert last_minute["events"] == 600
    assert last_minute["errors"] == 3
    assert 48 <= last_minute["latency_p50_ms"] <= 52
    everything = agg.window(3600)
    assert everything["events"] == 6600
    assert 1.9 <= everything["latency_p50_ms"] <= 2.1
    assert len(everything["history"]) == 2


def test_state_round_trip() -> None:
    clock = Clock(1_000_000.0)
    agg = JobMetricsAggregator(clock)
    agg.on_heartbeat(1, 0, beat(10, errors=1, latency={3: 10}))
    again = JobMetricsAggregator.from_state(agg.to_state(), clock)
    assert again.totals == agg.totals
    assert again.latency == agg.latency
    assert again.window(300)["events"] == 10


def test_histogram_quantiles_within_bucket_resolution() -> None:
    h = LatencyHistogram()
    for ms in range(1, 1001):
        h.record(float(ms))
    for q, exact in [(0.5, 500), (0.99, 990), (0.999, 999)]:
        assert abs(h.quantile(q) - exact) / exact < 0.05
    assert quantile_of({}, 0.5) == 0.0


def test_average_throughput_is_over_the_real_running_time_of_every_run() -> None:
    clock = Clock(1_000_000.0)
    agg = JobMetricsAggregator(clock)
    # two workers side by side: the run lasts as long as the longer one, not the sum
    agg.on_heartbeat(1, 0, {**beat(600), "running_ms": 1500.0})
    agg.on_heartbeat(1, 1, {**beat(400), "running_ms": 1400.0})
    assert agg.running_ms == 1500
    assert agg.average_throughput() == round(1000 / 1.5, 1)
    agg.forget_workers()  # the run ended; a second one runs 500 ms more
    agg.on_heartbeat(2, 0, {**beat(500), "running_ms": 500.0})
    assert agg.running_ms == 2000
    assert agg.average_throughput() == 750.0
    restored = JobMetricsAggregator.from_state(agg.to_state(), clock)  # a control plane restart
    assert restored.running_ms == 2000 and restored.average_throughput() == 750.0


def test_backpressure_level_is_the_share_of_time_blocked_on_downstream() -> None:
    clock = Clock(1_000_000.0)
    agg = JobMetricsAggregator(clock)
    idle = {"backpressure_ms": 0.0, "pollers": 1}
    agg.on_heartbeat(1, 0, {**beat(10), **idle, "running_ms": 1000.0})
    agg.on_heartbeat(1, 0, {**beat(20), **idle, "running_ms": 2000.0})
    assert agg.backpressure_level == 0.0  # a lightly loaded job: nothing waits
    clock.t += 1
    # blocked 750 of the next 1000 ms, over two poll loops (each may block at once): 0.375
    agg.on_heartbeat(1, 0, {**beat(30), "backpressure_ms": 750.0, "pollers": 2, "running_ms": 3000.0})
    agg.on_heartbeat(1, 1, {**beat(5), "backpressure_ms": 0.0, "pollers": 1, "running_ms": 3000.0})
    assert agg.backpressure_level == 0.375  # the most backpressured worker
    clock.t += 1
    blocked_all_second = {"backpressure_ms": 750.0 + 2000.0, "pollers": 1, "running_ms": 4000.0}
    agg.on_heartbeat(1, 0, {**beat(40), **blocked_all_second})
    assert agg.backpressure_level == 1.0  # capped: blocked all the time
    agg.forget_workers()
    assert agg.backpressure_level == 0.0


def test_source_lag_sums_the_workers_that_know_theirs() -> None:
    agg = JobMetricsAggregator(Clock(1_000_000.0))
    assert agg.source_lag() is None
    agg.on_heartbeat(1, 0, {**beat(1), "source_lag": 120})
    agg.on_heartbeat(1, 1, {**beat(1), "source_lag": None})
    assert agg.source_lag() == 120
    agg.on_heartbeat(1, 1, {**beat(2), "source_lag": 30})
    assert agg.source_lag() == 150
