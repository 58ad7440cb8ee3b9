"""The autoscaler's decisions: measured load in, a parallelism and the reason for it out. Pure.

As the Flink Kubernetes operator's autoscaler: the job should run each worker at
``target_utilization`` of its time busy, so the parallelism it needs is

    required = ceil(current * utilization / target_utilization)

where utilization is the workers' mean busy fraction over the metrics window (time the processing
loop spent running records through the chains, timers and sinks, over wall time). Then:

1. nothing is decided while the run stabilizes (``stabilization_ms`` after it started), during the
   ``cooldown_ms`` after a rescale, or before the metrics window is covered;
2. within ``UTILIZATION_BOUNDARY`` of the target nothing changes (no flapping around it);
3. a backpressured job (sources waiting on the processing more than ``BACKPRESSURE_HIGH`` of the
   time) or one whose source lag grows is never scaled down; a growing lag asks for at least one
   more worker. The lag grows when it rose by at least ``LAG_GROWTH_FLOOR`` records over the window:
   a source read in batches has a lag that swings by about a batch between heartbeats, and that
   jitter, read as growth, would keep an idle job from ever scaling down (and scale it up);
4. the result is clamped to [``min_parallelism``, ``max_parallelism``], and never above what can
   run: the source's splits (stage 0 has one task per split, extra workers would idle) or, when the
   plan has keyed stages, their key groups; nor above the slots the server has free (the job's own
   come back at the restart).

``decide`` has no side effects and reads no clock: the control plane (``control.autoscaling``)
measures, calls it, records the decision and applies it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from heliosdb_streaming.model.config import AutoscalerSettings

UTILIZATION_BOUNDARY = 0.1  # no change while utilization is within this of the target
BACKPRESSURE_HIGH = 0.5  # sources waiting this fraction of the time: the processing is the bottleneck
SAMPLE_SLACK_MS = 1_500  # heartbeats come every second: a window is covered this much short of it
LAG_GROWTH_FLOOR = 1_000  # records the lag must rise by over the window to count as growing


class Action(StrEnum):
    NONE = "none"
    SCALE_UP = "scale_up"
    SCALE_DOWN = "scale_down"


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """One worker over the metrics window: fractions of wall time, 0..1."""

    busy: float
    backpressure: float = 0.0


@dataclass(frozen=True, slots=True)
class Inputs:
    """What one decision is made from (all times in ms of one clock)."""

    now_ms: int
    parallelism: int
    run_started_ms: int  # when the current run's workers all connected
    last_rescale_ms: int | None
    workers: tuple[WorkerLoad, ...] = ()
    window_covered_ms: int = 0  # the span the workers' samples cover
    split_count: int | None = None  # stage 0's splits (None: not reported yet)
    keyed_stages: bool = False  # the plan has later stages, routed by key group
    repartition_brokers: bool = True  # keyed stages can cross worker processes (Kafka internal topics)
    key_groups: int = 128  # ``config.max_parallelism``
    free_slots: int = 0  # slots of the server not in use (the job's own are in use)
    source_lag: int | None = None  # records behind the newest offset (None: not measured)
    lag_growth_per_s: float | None = None  # how fast that lag grows (None: not measured)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["workers"] = [asdict(w) for w in self.workers]
        return d


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    parallelism: int  # what the job should run at (the current one for NONE)
    reason: str
    kind: str = "evaluated"  # or why nothing was weighed: "stabilizing", "cooldown", "collecting"
    utilization: float | None = None  # mean busy fraction (None: not evaluated)
    backpressure: float | None = None
    required: int | None = None  # before the limits
    limited_by: str | None = None  # the limit that capped ``required``, if any
    inputs: dict[str, Any] = field(default_factory=dict)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def load_over_window(
    samples: Sequence[tuple[float, float, float]], window_ms: float
) -> tuple[WorkerLoad, int]:
    """A worker's load from its heartbeat samples ``(at_ms, busy_ms, backpressure_ms)`` (cumulative
    counters, oldest first): the increase over the newest ``window_ms``, over the time it took.
    Returns the load and the span covered (0 with fewer than two samples in the window)."""
    if len(samples) < 2:
        return WorkerLoad(0.0, 0.0), 0
    newest = samples[-1]
    oldest = next((s for s in samples if newest[0] - s[0] <= window_ms), samples[-2])
    if oldest is newest:
        oldest = samples[-2]
    span = newest[0] - oldest[0]
    if span <= 0:
        return WorkerLoad(0.0, 0.0), 0
    busy = min(max((newest[1] - oldest[1]) / span, 0.0), 1.0)
    backpressure = min(max((newest[2] - oldest[2]) / span, 0.0), 1.0)
    return WorkerLoad(round(busy, 4), round(backpressure, 4)), int(span)


def decide(settings: AutoscalerSettings, inputs: Inputs) -> Decision:
    """The parallelism the job should run at, and why (see the module docstring)."""
    p = inputs.parallelism
    recorded = inputs.to_dict()

    def hold(reason: str, kind: str) -> Decision:
        return Decision(Action.NONE, p, reason, kind, inputs=recorded)

    since_start = inputs.now_ms - inputs.run_started_ms
    if since_start < settings.stabilization_ms:
        return hold(
            f"stabilizing: run started {since_start} ms ago (stabilization {settings.stabilization_ms} ms)",
            "stabilizing",
        )
    if inputs.last_rescale_ms is not None:
        since_rescale = inputs.now_ms - inputs.last_rescale_ms
        if since_rescale < settings.cooldown_ms:
            return hold(
                f"cooling down: rescaled {since_rescale} ms ago (cooldown {settings.cooldown_ms} ms)",
                "cooldown",
            )
    needed = settings.metrics_window_ms - SAMPLE_SLACK_MS
    if not inputs.workers or inputs.window_covered_ms < needed:
        return hold(
            f"collecting metrics: {inputs.window_covered_ms} ms of the {settings.metrics_window_ms} ms "
            f"window measured for {len(inputs.workers)} of {p} worker(s)",
            "collecting",
        )
    utilization = round(_mean([w.busy for w in inputs.workers]), 4)
    backpressure = round(_mean([w.backpressure for w in inputs.workers]), 4)
    target = settings.target_utilization
    required = max(math.ceil(p * utilization / target - 1e-9), 1)
    why = (
        f"utilization {utilization:.2f} vs target {target:.2f}: "
        f"required {required} = ceil({p} * {utilization:.2f} / {target:.2f})"
    )
    if abs(utilization - target) <= UTILIZATION_BOUNDARY:
        required = p
        why = f"utilization {utilization:.2f} within {UTILIZATION_BOUNDARY} of target {target:.2f}"
    growth = inputs.lag_growth_per_s
    growing = growth is not None and growth * settings.metrics_window_ms / 1000 >= LAG_GROWTH_FLOOR
    if growing and required <= p:
        required = p + 1
        why = f"source lag {inputs.source_lag} growing by {inputs.lag_growth_per_s:.1f}/s: one more worker"
    if required < p and backpressure >= BACKPRESSURE_HIGH:
        required = p
        why += f"; not scaling down: backpressure {backpressure:.2f}"

    # the limits: the configured range, then what can run (hard limits win over min_parallelism)
    limited_by: str | None = None
    wanted = min(max(required, settings.min_parallelism), settings.max_parallelism)
    if wanted != required:
        limited_by = "min_parallelism" if wanted > required else "max_parallelism"
    hard: list[tuple[str, int]] = [("free slots", p + max(inputs.free_slots, 0))]
    if inputs.keyed_stages:
        hard.append(("key groups", inputs.key_groups))
        if not inputs.repartition_brokers:  # without brokers a keyed plan runs at parallelism 1 only
            hard.append(("no repartition brokers", 1))
    elif inputs.split_count is not None:
        hard.append(("source splits", inputs.split_count))
    for name, limit in hard:
        if wanted > limit:
            wanted, limited_by = max(limit, 1), name
    if limited_by is not None:
        why += f"; {'raised' if wanted > required else 'capped'} to {wanted} by {limited_by}"
    action = Action.NONE if wanted == p else Action.SCALE_UP if wanted > p else Action.SCALE_DOWN
    return Decision(
        action,
        wanted,
        why,
        utilization=utilization,
        backpressure=backpressure,
        required=required,
        limited_by=limited_by,
        inputs=recorded,
    )


# ------------------------------------------------------------------------------- what a job keeps

HISTORY = 20  # recorded decisions kept per job
Sample = tuple[float, float, float]  # (at_ms, busy_ms, backpressure_ms), cumulative counters


@dataclass(frozen=True, slots=True)
class Recorded:
    """A decision as the job's details show it: when, and what."""

    at_ms: int
    decision: Decision
    applied: bool  # a rescale was started for it (mode ``apply``)


@dataclass(slots=True)
class AutoscalerState:
    """The autoscaler's memory of one job: samples of the current run, the last decision, the recent
    ones that changed something (a new kind of answer, another parallelism) and counters. Plain data:
    ``control.autoscaling`` fills it, the details and ``/metrics`` read it."""

    attempt: int = 0
    run_started_ms: int | None = None
    last_rescale_ms: int | None = None
    samples: dict[int, list[Sample]] = field(default_factory=dict)
    lag_samples: list[tuple[float, int]] = field(default_factory=list)  # (at_ms, source lag)
    last: Recorded | None = None
    history: list[Recorded] = field(default_factory=list)
    decisions: dict[str, int] = field(default_factory=dict)  # recorded decisions by action
    rescales: int = 0
    rescaling: bool = False
    error: str | None = None  # why the last rescale failed, until one succeeds

    def new_run(self, attempt: int, now_ms: int) -> None:
        """A run of the job is ready: its samples start afresh (its workers' counters do too)."""
        self.attempt, self.run_started_ms = attempt, now_ms
        self.samples.clear()
        self.lag_samples.clear()

    def add_sample(self, index: int, sample: Sample, keep_ms: float) -> None:
        """A worker's new heartbeat; samples older than ``keep_ms`` before it are dropped."""
        samples = self.samples.setdefault(index, [])
        if samples and sample[0] <= samples[-1][0]:
            return
        samples.append(sample)
        while len(samples) > 2 and sample[0] - samples[1][0] >= keep_ms:
            samples.pop(0)

    def record(self, decision: Decision, now_ms: int, applied: bool) -> bool:
        """Keeps ``decision`` as the last one; also in the history (and counted) when it differs from
        the previous recorded one in kind, action or parallelism, or starts a rescale. Returns whether
        it was recorded (the caller logs those)."""
        entry = Recorded(now_ms, decision, applied)
        self.last = entry
        previous = self.history[-1] if self.history else None
        same = (
            previous is not None
            and not applied
            and previous.decision.kind == decision.kind
            and previous.decision.action == decision.action
            and previous.decision.parallelism == decision.parallelism
        )
        if same:
            return False
        self.history.append(entry)
        del self.history[:-HISTORY]
        self.decisions[decision.action.value] = self.decisions.get(decision.action.value, 0) + 1
        return True
