"""The autoscaler at work: measures every autoscaled job, asks ``control.autoscaler`` and acts.

One loop for the control plane (``JobAutoscaler.run_forever``), once a second: for each job with
``config.autoscaler.enabled`` whose run is ready and running (not paused, not stopping), it samples
the workers' last heartbeats (cumulative ``busy_ms`` and ``backpressure_ms``), builds the decision's
``Inputs`` (current parallelism, splits, key groups, free slots, source lag), calls the pure
``decide`` and records the answer in the job's ``AutoscalerState`` (the details' ``autoscaler``
section and ``/metrics`` read it). A recorded decision is logged with its inputs, in the job's log
and this module's logger. In ``apply`` mode a decision to scale starts the rescale (a savepoint, then
a restart at the new parallelism from it: ``ControlPlane.rescale``) in the background; the job is not
evaluated again until it is over. ``recommend`` only records.

Source lag: a worker's heartbeat may carry ``source_lag`` (records behind the newest offset, summed
over its splits); ``source_lag`` below reads it and the lag's growth over the metrics window. Until
the workers report it (a separate change adds the metric), both are None and decisions rest on busy
time and backpressure alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from heliosdb_streaming.control import autoscaler
from heliosdb_streaming.control.entry import JobEntry
from heliosdb_streaming.control.jobs import JobTable
from heliosdb_streaming.control.scheduler import Scheduler
from heliosdb_streaming.control.tasks import BackgroundTasks
from heliosdb_streaming.model.config import repartition_servers
from heliosdb_streaming.model.plan import plan_job
from heliosdb_streaming.model.types import JobStatus

logger = logging.getLogger(__name__)

TICK_S = 1.0
Rescale = Callable[[str, int, str], Awaitable[None]]  # (job id, new parallelism, why)


class JobAutoscaler:
    """``rescale(job_id, parallelism, reason)``: the control plane's savepoint-and-restart."""

    def __init__(
        self,
        table: JobTable,
        scheduler: Scheduler,
        rescale: Rescale,
        tasks: BackgroundTasks,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.scheduler = scheduler
        self.rescale = rescale
        self.tasks = tasks
        self._clock = clock

    async def run_forever(self, tick_s: float = TICK_S) -> None:
        while True:
            await asyncio.sleep(tick_s)
            for entry in list(self.table.jobs.values()):
                try:
                    self.evaluate(entry)
                except Exception:  # one job's trouble must not stop the others' autoscaling
                    logger.exception("autoscaler: evaluating job %s failed", entry.record.job_id)

    def evaluate(self, entry: JobEntry) -> autoscaler.Decision | None:
        """Samples, decides and records for one job (None: not autoscaled now); may start a rescale."""
        settings = entry.config.autoscaler
        state = entry.autoscaling
        run = entry.run
        if not settings.enabled or state.rescaling:
            return None
        if run is None or not run.ready() or run.paused or entry.record.status != JobStatus.RUNNING:
            state.run_started_ms = None  # when it runs again: stabilization and samples afresh
            return None
        if run.coordinator is not None and run.coordinator.drained:
            return None  # a bounded job's input is exhausted: it is finishing, not worth a rescale
        now_ms = int(self._clock() * 1000)
        if state.attempt != run.attempt or state.run_started_ms is None:
            state.new_run(run.attempt, now_ms)
        keep_ms = settings.metrics_window_ms + 2 * autoscaler.SAMPLE_SLACK_MS
        for (attempt, index), view in list(entry.metrics.workers.items()):
            if attempt == run.attempt and "busy_ms" in view.last:
                sample = (
                    view.seen_at * 1000,
                    float(view.last["busy_ms"]),
                    float(view.last.get("backpressure_ms", 0.0)),
                )
                state.add_sample(index, sample, keep_ms)
        loads, covered = [], []
        for index in range(run.parallelism):
            load, span = autoscaler.load_over_window(state.samples.get(index, []), settings.metrics_window_ms)
            if span:
                loads.append(load)
                covered.append(span)
        config = entry.config
        lag, growth = source_lag(entry, run.attempt, settings.metrics_window_ms)
        inputs = autoscaler.Inputs(
            now_ms=now_ms,
            parallelism=config.parallelism,
            run_started_ms=state.run_started_ms or now_ms,
            last_rescale_ms=state.last_rescale_ms,
            workers=tuple(loads) if len(loads) == run.parallelism else (),
            window_covered_ms=min(covered) if len(covered) == run.parallelism else 0,
            split_count=len(entry.metrics.task_progress) or None,
            keyed_stages=plan_job(config.sources, config.transformations).needs_exchange,
            repartition_brokers=repartition_servers(config.repartition, config.sources) is not None,
            key_groups=config.max_parallelism,
            free_slots=self.scheduler.max_parallelism - self.scheduler.slots_in_use,
            source_lag=lag,
            lag_growth_per_s=growth,
        )
        decision = autoscaler.decide(settings, inputs)
        apply = decision.action != autoscaler.Action.NONE and settings.mode == "apply"
        if state.record(decision, now_ms, applied=apply):
            self._log(entry, decision, settings.mode)
        if apply:
            state.rescaling = True
            self.tasks.spawn(self._apply(entry, decision))
        return decision

    def _log(self, entry: JobEntry, decision: autoscaler.Decision, mode: str) -> None:
        job_id = entry.record.job_id
        inputs = decision.inputs
        measured = (
            f"utilization {decision.utilization}, backpressure {decision.backpressure}, "
            f"workers {[w['busy'] for w in inputs.get('workers', [])]}, "
            f"splits {inputs.get('split_count')}, free slots {inputs.get('free_slots')}, "
            f"source lag {inputs.get('source_lag')}"
        )
        if decision.action == autoscaler.Action.NONE:
            line = f"Autoscaler: keep parallelism {decision.parallelism}: {decision.reason}"
        else:
            verb = "rescaling" if mode == "apply" else "recommends"
            line = (
                f"Autoscaler {verb} {decision.action.value.replace('_', ' ')} "
                f"{inputs.get('parallelism')} -> {decision.parallelism}: {decision.reason}"
            )
        entry.log.write("info", f"{line} ({measured})" if decision.kind == "evaluated" else line)
        logger.info("job %s: %s; inputs %s", job_id, line, inputs)

    async def _apply(self, entry: JobEntry, decision: autoscaler.Decision) -> None:
        state = entry.autoscaling
        job_id = entry.record.job_id
        try:
            await self.rescale(job_id, decision.parallelism, decision.reason)
            state.rescales += 1
            state.error = None
        except Exception as e:  # the job keeps running at its parallelism; tried again after cooldown
            state.error = f"{type(e).__name__}: {e}"
            entry.log.write("warn", f"Autoscaler: rescale to {decision.parallelism} failed: {state.error}")
            logger.warning("job %s: rescale to %d failed: %s", job_id, decision.parallelism, state.error)
        finally:
            state.last_rescale_ms = int(self._clock() * 1000)
            state.rescaling = False


def source_lag(entry: JobEntry, attempt: int, window_ms: int) -> tuple[int | None, float | None]:
    """The job's source lag (records behind the newest offsets, summed over the workers whose
    heartbeats report ``source_lag``) and its growth per second over the window; (None, None) while
    no worker reports it (sources that do not measure it, or workers before the source-lag metric)."""
    views = [v for (a, _), v in entry.metrics.workers.items() if a == attempt]
    known = [int(lag) for v in views if (lag := v.last.get("source_lag")) is not None]
    if not known:
        return None, None
    lag = sum(known)
    history = entry.autoscaling.lag_samples
    now_ms = max(v.seen_at for v in views) * 1000
    if not history or history[-1][0] < now_ms:
        history.append((now_ms, lag))
    while len(history) > 2 and now_ms - history[1][0] >= window_ms:
        history.pop(0)
    first = history[0]
    growth = (lag - first[1]) / ((now_ms - first[0]) / 1000) if now_ms > first[0] else None
    return lag, growth
