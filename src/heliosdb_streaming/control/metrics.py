"""Job metrics gathered from worker heartbeats: lifetime totals, a per-minute history and live rates.

Workers send cumulative counters; this module turns them into deltas per worker run, so job totals
never go backwards when workers restart, and a minute-by-minute history (24 h) answers windowed
questions (throughput and latency over the last 5 minutes) exactly.

The figures and their definitions (docs/observability.md, "What each figure means", tells users):

* ``running_ms``: the job's real running time, the sum over its runs of the longest-running worker's
  time (workers report theirs, to the millisecond); ``average_throughput`` is events / that time.
* ``backpressure_level``: the share of the last heartbeat interval a worker's sources spent blocked
  on a full queue (waiting on downstream), per source poll loop, the highest over the live workers:
  0 when nothing waits, 1 when the sources wait all the time.
* ``source_lag``: records the sources are behind their newest offset (Kafka: high watermark minus
  position, summed over partitions; datagen: records due not yet read; files: lines not yet read),
  summed over the live workers that know theirs; None when none does.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from heliosdb_streaming.runtime.histogram import MAX_BUCKET, bucket_upper_ms, merge_all, quantile_of

HISTORY_MINUTES = 24 * 60
_COUNTERS = ("events_in", "events_out", "errors", "backpressure_events")

# Upper bounds (seconds) of the coarse, cumulative histograms exported to Prometheus; +Inf is implied.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
CHECKPOINT_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


def _coarse_index(upper_s: float, bounds: tuple[float, ...]) -> int:
    """Index of the first bound >= ``upper_s`` (``len(bounds)`` is the +Inf bucket)."""
    return next((i for i, le in enumerate(bounds) if upper_s <= le), len(bounds))


# A fine latency bucket i holds (bucket_upper_ms(i-1), bucket_upper_ms(i)]: it goes to the first coarse
# bucket whose bound is at least its upper bound, so a coarse bucket never counts a value above its
# bound (values in a fine bucket straddling a bound land one coarse bucket higher: at most 4% off).
_FINE_TO_COARSE: tuple[int, ...] = tuple(
    _coarse_index(bucket_upper_ms(i) / 1000, LATENCY_BUCKETS_S) for i in range(MAX_BUCKET + 1)
)
# Midpoint (seconds) of each fine bucket, for the histogram's approximate _sum.
_FINE_MID_S: tuple[float, ...] = tuple(
    ((bucket_upper_ms(i - 1) if i else 0.0) + bucket_upper_ms(i)) / 2000 for i in range(MAX_BUCKET + 1)
)


@dataclass(slots=True)
class CoarseHistogram:
    """Non-cumulative counts per bucket of ``bounds`` plus one for +Inf, their sum and count."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.bounds) + 1:
            self.counts = [0] * (len(self.bounds) + 1)

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass(slots=True)
class MinuteBucket:
    minute: int  # epoch seconds of the minute's start
    events_in: int = 0
    errors: int = 0
    latency: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class WorkerView:
    last: dict[str, Any]
    cpu_percent: float = 0.0
    rss_bytes: int = 0
    seen_at: float = 0.0
    running_ms: float = 0.0
    backpressure_level: float = 0.0
    source_lag: int | None = None


class JobMetricsAggregator:
    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self.totals: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self.late_dropped_base = 0
        self.latency: dict[int, int] = {}
        self.backpressure_ms = 0.0
        self.run_ms_base = 0.0  # the running time of the runs that ended
        self.history: deque[MinuteBucket] = deque(maxlen=HISTORY_MINUTES)
        self.workers: dict[tuple[int, int], WorkerView] = {}
        self.rate_samples: deque[tuple[float, int]] = deque(maxlen=64)
        self.first_seen: float | None = None
        self.checkpoint_count = 0
        self.checkpoint_failures = 0
        self.last_checkpoint_duration_ms = 0
        self.checkpoint_durations: deque[int] = deque(maxlen=1000)
        self.task_progress: dict[str, dict[str, Any]] = {}
        # key-group tasks of later stages (not splits): their counters in the current run
        self.stage_task_progress: dict[str, dict[str, Any]] = {}
        # Lifetime, cumulative histograms for Prometheus (never go backwards, survive restarts).
        self.latency_coarse = CoarseHistogram(LATENCY_BUCKETS_S)
        self.checkpoint_histogram = CoarseHistogram(CHECKPOINT_BUCKETS_S)

    # --------------------------------------------------------------------------------- ingest

    def on_heartbeat(self, attempt: int, index: int, beat: dict[str, Any]) -> None:
        now = self._clock()
        if self.first_seen is None:
            self.first_seen = now
        key = (attempt, index)
        view = self.workers.get(key)
        previous = view.last if view else {}
        deltas = {name: max(int(beat.get(name, 0)) - int(previous.get(name, 0)), 0) for name in _COUNTERS}
        for name, d in deltas.items():
            self.totals[name] += d
        latency_now = {int(k): int(v) for k, v in (beat.get("latency") or {}).items()}
        latency_before = {int(k): int(v) for k, v in (previous.get("latency") or {}).items()}
        latency_delta = {b: c - latency_before.get(b, 0) for b, c in latency_now.items()}
        latency_delta = {b: c for b, c in latency_delta.items() if c > 0}
        for b, c in latency_delta.items():
            self.latency[b] = self.latency.get(b, 0) + c
        self._add_coarse_latency(latency_delta)
        self.backpressure_ms += max(
            float(beat.get("backpressure_ms", 0)) - float(previous.get("backpressure_ms", 0)), 0
        )
        stored = {**beat, "latency": latency_now}
        if view is None:
            view = WorkerView(last=stored)
            self.workers[key] = view
        view.last = stored
        view.cpu_percent = float(beat.get("cpu_percent", 0.0))
        view.rss_bytes = int(beat.get("rss_bytes", 0))
        view.seen_at = now
        running_ms = float(beat.get("running_ms", view.running_ms))
        elapsed_ms = running_ms - view.running_ms
        if elapsed_ms > 0:  # blocked time over the interval, per poll loop (each may block at once)
            blocked_ms = float(beat.get("backpressure_ms", 0)) - float(previous.get("backpressure_ms", 0))
            pollers = max(int(beat.get("pollers", 1)), 1)
            view.backpressure_level = min(max(blocked_ms / (elapsed_ms * pollers), 0.0), 1.0)
        view.running_ms = max(running_ms, view.running_ms)
        lag = beat.get("source_lag")
        view.source_lag = int(lag) if lag is not None else None
        for split_id, progress in (beat.get("tasks") or {}).items():
            self.task_progress[split_id] = progress
        for task_id, progress in (beat.get("stage_tasks") or {}).items():
            self.stage_task_progress[task_id] = progress
        bucket = self._bucket(now)
        bucket.events_in += deltas["events_in"]
        bucket.errors += deltas["errors"]
        for b, c in latency_delta.items():
            bucket.latency[b] = bucket.latency.get(b, 0) + c
        self.rate_samples.append((now, self.totals["events_in"]))

    def record_checkpoint_duration(self, duration_ms: int) -> None:
        """A completed checkpoint's duration: the recent list and the lifetime duration histogram."""
        self.checkpoint_durations.append(duration_ms)
        seconds = duration_ms / 1000
        h = self.checkpoint_histogram
        h.counts[_coarse_index(seconds, h.bounds)] += 1
        h.sum += seconds

    def _add_coarse_latency(self, fine: dict[int, int]) -> None:
        h = self.latency_coarse
        counts = h.counts
        total = 0.0
        for b, c in fine.items():
            b = min(max(b, 0), MAX_BUCKET)
            counts[_FINE_TO_COARSE[b]] += c
            total += _FINE_MID_S[b] * c
        h.sum += total

    def forget_workers(self) -> None:
        """Drops live worker views when a run ends (their totals are kept)."""
        for view in self.workers.values():
            self.late_dropped_base += int(view.last.get("late_dropped", 0))
        self.run_ms_base += self._current_run_ms()
        self.workers.clear()

    def _bucket(self, now: float) -> MinuteBucket:
        minute = int(now // 60 * 60)
        if not self.history or self.history[-1].minute != minute:
            self.history.append(MinuteBucket(minute))
        return self.history[-1]

    # --------------------------------------------------------------------------------- query

    @property
    def late_dropped(self) -> int:
        return self.late_dropped_base + sum(int(v.last.get("late_dropped", 0)) for v in self.workers.values())

    def _current_run_ms(self) -> float:
        """The live run's running time: its longest-running worker's (they run side by side)."""
        return max((v.running_ms for v in self.workers.values()), default=0.0)

    @property
    def running_ms(self) -> int:
        """The job's real running time over all its runs, in milliseconds."""
        return int(self.run_ms_base + self._current_run_ms())

    def average_throughput(self) -> float:
        """Events/s over the job's whole running time (a finished job's run rate)."""
        running_s = self.running_ms / 1000
        return round(self.totals["events_in"] / running_s, 1) if running_s > 0 else 0.0

    @property
    def backpressure_level(self) -> float:
        """Share of time the live workers' sources wait on downstream (the highest worker's); 0 idle."""
        live = [v for v in self.workers.values() if self._clock() - v.seen_at < 10]
        return max((v.backpressure_level for v in live), default=0.0)

    def source_lag(self) -> int | None:
        """Records the live workers' sources are behind their newest offset (None: unknown)."""
        known = [v.source_lag for v in self.workers.values() if v.source_lag is not None]
        return sum(known) if known else None

    def current_throughput(self, horizon_s: float = 10.0) -> float:
        """Events/s over the last ``horizon_s`` seconds of heartbeats."""
        now = self._clock()
        samples = [s for s in self.rate_samples if now - s[0] <= horizon_s + 1.0]
        if len(samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = samples[0], samples[-1]
        if now - t1 > 5.0:
            return 0.0  # no heartbeat recently: nothing is flowing
        return round((n1 - n0) / (t1 - t0), 1) if t1 > t0 else 0.0

    def window(self, seconds: int) -> dict[str, Any]:
        """Throughput, latency quantiles, error rate and per-minute history over the last ``seconds``."""
        now = self._clock()
        start = now - seconds
        buckets = [b for b in self.history if b.minute + 60 > start]
        events = sum(b.events_in for b in buckets)
        errors = sum(b.errors for b in buckets)
        span = min(float(seconds), now - self.first_seen) if self.first_seen else 0.0
        latency = merge_all(b.latency for b in buckets)
        history = []
        for b in buckets:
            elapsed = min(60.0, max(now - b.minute, 1.0))
            history.append({"minute": b.minute, "throughput_per_sec": round(b.events_in / elapsed, 1)})
        return {
            "events": events,
            "throughput_per_sec": round(events / span, 1) if span > 0 else 0.0,
            "errors": errors,
            "errors_rate_per_min": round(errors / (span / 60), 3) if span > 0 else 0.0,
            "latency_p50_ms": quantile_of(latency, 0.50),
            "latency_p95_ms": quantile_of(latency, 0.95),
            "latency_p99_ms": quantile_of(latency, 0.99),
            "latency_p999_ms": quantile_of(latency, 0.999),
            "history": history,
        }

    def resources(self) -> tuple[float, int]:
        """CPU percent and resident memory (bytes) summed over the job's live workers."""
        live = [v for v in self.workers.values() if self._clock() - v.seen_at < 10]
        return round(sum(v.cpu_percent for v in live), 1), sum(v.rss_bytes for v in live)

    # --------------------------------------------------------------------------------- persistence

    def to_state(self) -> dict[str, Any]:
        return {
            "totals": self.totals,
            "latency": self.latency,
            "late_dropped": self.late_dropped,
            "backpressure_ms": self.backpressure_ms,
            "running_ms": self.running_ms,
            "checkpoint_count": self.checkpoint_count,
            "checkpoint_failures": self.checkpoint_failures,
            "last_checkpoint_duration_ms": self.last_checkpoint_duration_ms,
            "history": [[b.minute, b.events_in, b.errors, b.latency] for b in self.history],
            "first_seen": self.first_seen,
            "checkpoint_histogram": {
                "counts": self.checkpoint_histogram.counts,
                "sum": self.checkpoint_histogram.sum,
            },
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], clock: Any = time.time) -> JobMetricsAggregator:
        agg = cls(clock)
        agg.totals.update({k: int(v) for k, v in state.get("totals", {}).items() if k in agg.totals})
        agg.latency = {int(k): int(v) for k, v in state.get("latency", {}).items()}
        agg._add_coarse_latency(agg.latency)
        agg.late_dropped_base = int(state.get("late_dropped", 0))
        agg.backpressure_ms = float(state.get("backpressure_ms", 0.0))
        agg.run_ms_base = float(state.get("running_ms", 0.0))
        agg.checkpoint_count = int(state.get("checkpoint_count", 0))
        agg.checkpoint_failures = int(state.get("checkpoint_failures", 0))
        agg.last_checkpoint_duration_ms = int(state.get("last_checkpoint_duration_ms", 0))
        for minute, events, errors, latency in state.get("history", []):
            agg.history.append(
                MinuteBucket(
                    int(minute), int(events), int(errors), {int(k): int(v) for k, v in latency.items()}
                )
            )
        agg.first_seen = state.get("first_seen")
        saved = state.get("checkpoint_histogram") or {}
        counts = [int(c) for c in saved.get("counts", [])]
        if len(counts) == len(CHECKPOINT_BUCKETS_S) + 1:  # same buckets as when saved
            agg.checkpoint_histogram = CoarseHistogram(CHECKPOINT_BUCKETS_S, counts, float(saved["sum"]))
        return agg
