"""The later stages of a job whose plan has boundaries (``model/plan.py``): key-group tasks fed by an
exchange, so a keyed step sees every event of its key whatever split it was read from.

Stage 0 is the worker's split tasks running the steps of stage 0 (``Task``, unchanged). Each later
stage has, per worker, one :class:`StageTask` owning a contiguous range of key groups
(``keygroups.owned_groups``; a global stage has one group) with id ``s<stage>-kg<first>-<last>``. It
runs one chain of the stage's steps per key group it has seen, each over its group's view of the
stage task's stores (one store per step, keys prefixed by group: ``state/keygrouped.py``), so a
snapshot is partitioned by key group and a rescale can move whole groups.

Event time in a later stage is the minimum over its origins (the upstream tasks) of their
watermarks (``exchange/base.py``), applied to the stage's first event-time step through
``advance_watermark`` after the records that came with it; later event-time steps of the same stage
derive theirs from their input, as in stage 0. At the end of bounded input the stages are flushed in
order: stage 0's windows first, their output routed, then stage 1's, and so on.

:class:`StageRunner` wires it: ``push`` hands a task's output to the next boundary (or to the sinks
after the last stage), ``pump`` lets each stage's tasks take what arrived, in stage order.

Latency across worker processes: a record's ingestion time travels with it through the exchange
(the earliest of a delivery's records, ``Delivery.ingest_ms``); with ``track_latency`` the runner
keeps (ingestion time, records) of what the last stage's tasks took in, and the worker records
their latency when its sinks flush the output, as it does for a split task's batch in process. (The
clocks of two machines differ: across hosts the figure is as good as their clock sync.)
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.plan import JobPlan, Stage
from heliosdb_streaming.runtime import graph
from heliosdb_streaming.runtime.contracts import Batch, Record, StateStore, Transformation
from heliosdb_streaming.runtime.eventtime import MAX_WATERMARK, MIN_WATERMARK
from heliosdb_streaming.runtime.exchange.base import Delivery, Exchange, OriginWatermarks
from heliosdb_streaming.runtime.exchange.keygroups import owned_groups
from heliosdb_streaming.runtime.exchange.router import Router
from heliosdb_streaming.runtime.state.keygrouped import KeyGroupStore
from heliosdb_streaming.runtime.task import run_chain
from heliosdb_streaming.runtime.transformations.basic import compile_key

ErrorSink = Callable[[list[tuple[Record, Exception]], str, Any], None]
"""Reports record errors of a task: (errors, task id, position)."""
StoreOpener = Callable[[str, dict[str, StateStore], str], StateStore]
"""Opens (or returns the restored) store ``name`` of a task: (task id, its stores, name)."""


def stage_task_id(stage: int, groups: range) -> str:
    return f"s{stage}-kg{groups.start}-{groups.stop - 1}"


_TASK_ID = re.compile(r"s(\d+)-kg(\d+)-(\d+)")


def parse_stage_task_id(task_id: str) -> tuple[int, range] | None:
    """The stage and key groups of a key-group task id (None for a split task's id)."""
    match = _TASK_ID.fullmatch(task_id)
    if match is None:
        return None
    stage, first, last = (int(g) for g in match.groups())
    return stage, range(first, last + 1)


def merge_positions(parts: list[tuple[dict[str, Any], range]], groups: range) -> dict[str, Any]:
    """The position of a key-group task restored from the snapshots of other tasks (a rescale):
    ``parts`` are their positions with the groups each gives this task. Event time is the least of
    theirs (per origin too), so nothing fires early; the read offsets are each partition's own (a
    partition is a key group, owned by exactly one task of the snapshot)."""
    marks: dict[str, int] = {}
    watermark: int | None = None
    chains: set[int] = set()
    offsets: dict[str, int] = {}
    attempts: list[int] = []
    for position, given in parts:
        saved = position.get("watermarks", {})
        for origin, mark in dict(saved.get("marks", {})).items():
            marks[origin] = min(int(mark), marks.get(origin, int(mark)))
        mark = int(saved.get("watermark", MIN_WATERMARK))
        watermark = mark if watermark is None else min(watermark, mark)
        chains |= {int(g) for g in position.get("groups", []) if int(g) in given}
        exchange = position.get("exchange")
        if exchange:
            attempts.append(int(exchange["attempt"]))
            offsets.update({p: int(o) for p, o in exchange.get("offsets", {}).items() if int(p) in given})
    merged: dict[str, Any] = {
        "watermarks": {"marks": marks, "watermark": MIN_WATERMARK if watermark is None else watermark},
        "groups": sorted(g for g in chains if g in groups),
    }
    if attempts:
        merged["exchange"] = {"attempt": max(attempts), "offsets": offsets}
    return merged


def stage_groups(stage: Stage, index: int, parallelism: int, max_parallelism: int) -> range:
    """The key groups worker ``index`` owns in ``stage`` (a global stage: group 0, on worker 0)."""
    if stage.input == "global":
        return range(0, 1) if index == 0 else range(0, 0)
    return owned_groups(index, parallelism, max_parallelism)


def stage_task_ids(stage: Stage, parallelism: int, max_parallelism: int) -> list[str]:
    """Every task of a later stage, over all workers (the origins of the stage after it)."""
    ids = []
    for index in range(parallelism):
        groups = stage_groups(stage, index, parallelism, max_parallelism)
        if len(groups):
            ids.append(stage_task_id(stage.index, groups))
    return ids


@dataclass(slots=True)
class StageTask:
    """The key groups one worker owns in one later stage, with a chain per group seen."""

    task_id: str
    stage: Stage
    groups: range
    marks: OriginWatermarks
    build: Callable[[int], list[Transformation]]  # the chain of one key group
    timed: int | None  # index in the chain of the step driven by the stage's watermark
    stores: dict[str, StateStore] = field(default_factory=dict)
    chains: dict[int, list[Transformation]] = field(default_factory=dict)
    watermark: int = MIN_WATERMARK
    events_in: int = 0
    events_out: int = 0
    errors: int = 0
    # across worker processes: how far the task read its internal-topic partitions, set when its
    # barriers are aligned (``KafkaExchange.snapshot``), so a restore resumes reading there
    input_position: dict[str, Any] | None = None
    ended: bool = False  # end of input: every origin finished and the task flushed

    @property
    def position(self) -> dict[str, Any]:
        """What a checkpoint keeps besides the stores: origin watermarks and the groups with state
        (and, across processes, the read offsets of its input)."""
        position: dict[str, Any] = {"watermarks": self.marks.snapshot(), "groups": sorted(self.chains)}
        if self.input_position is not None:
            position["exchange"] = self.input_position
        return position

    def restore(self, position: dict[str, Any], now: float) -> None:
        self.marks.restore(position.get("watermarks", {}), now)
        for group in position.get("groups", []):
            self.chain(int(group))
        self.watermark = MIN_WATERMARK  # set again (and pushed into every chain) by the next advance

    def chain(self, group: int) -> list[Transformation]:
        chain = self.chains.get(group)
        if chain is None:
            chain = self.chains[group] = self.build(group)
        return chain

    def deliver(
        self, deliveries: list[Delivery], now: float, errors: list[tuple[Record, Exception]]
    ) -> Batch:
        """Runs each delivery's records through its group's chain, then applies the new watermark."""
        out: Batch = []
        for d in deliveries:
            self.marks.update(d.origin, d.watermark, now)
            if d.records:
                self.events_in += len(d.records)
                result = run_chain(self.chain(d.group), d.records, errors, 0)
                if result:
                    out.extend(result)
        self.advance(now, errors, out)
        return out

    def advance(self, now: float, errors: list[tuple[Record, Exception]], out: Batch) -> None:
        """Moves the stage's event time to the minimum over its origins (idle ones left out)."""
        watermark = self.marks.current(now)
        if watermark <= self.watermark:
            return
        self.watermark = watermark
        i = self.timed
        if i is None:
            return
        for chain in self.chains.values():
            emitted = chain[i].advance_watermark(watermark, errors)  # type: ignore[attr-defined]
            if emitted:
                result = run_chain(chain, emitted, errors, i + 1)
                if result:
                    out.extend(result)

    def on_time(self, now_ms: int, errors: list[tuple[Record, Exception]]) -> Batch:
        return self._each_step(lambda step: step.on_time(now_ms), errors)

    def on_end(self, errors: list[tuple[Record, Exception]]) -> Batch:
        return self._each_step(lambda step: step.on_end(), errors)

    def _each_step(
        self, call: Callable[[Transformation], Batch], errors: list[tuple[Record, Exception]]
    ) -> Batch:
        out: Batch = []
        for group in sorted(self.chains):
            chain = self.chains[group]
            for i, step in enumerate(chain):
                emitted = call(step)
                if emitted:
                    out.extend(run_chain(chain, emitted, errors, i + 1))
        return out

    def late_dropped(self) -> int:
        return sum(getattr(step, "late_dropped", 0) for chain in self.chains.values() for step in chain)


class StageRunner:
    """The later stages of one worker and the routing between all stages (see the module docstring)."""

    def __init__(
        self,
        config: JobConfig,
        plan: JobPlan,
        exchange: Exchange,
        *,
        index: int,
        split_ids: list[str],
        open_store: StoreOpener,
        on_errors: ErrorSink,
    ) -> None:
        self.plan = plan
        self.exchange = exchange
        self.last = len(plan.stages) - 1
        self._on_errors = on_errors
        self._output: list[tuple[str, Batch]] = []
        # (earliest ingestion time, records) taken in by the last stage: set by a worker whose
        # stages cross processes (in process the split task's batch is timed end to end already)
        self.track_latency = False
        self._latency: list[tuple[float, int]] = []
        parallelism = config.parallelism
        max_parallelism = config.max_parallelism
        idle_s = config.idle_timeout_ms / 1000
        now = time.monotonic()
        self.routers: dict[int, Router] = {}
        self.tasks: dict[int, list[StageTask]] = {}
        self.by_id: dict[str, StageTask] = {}
        origins = list(split_ids)
        for stage in plan.stages[1:]:
            boundary = plan.boundaries[stage.index - 1]
            timed = graph.first_event_time_step(config, stage.steps)
            # the event time the origins' watermarks are of: this stage's first event-time step, or
            # a later stage's (a stage of stateless steps passes its input's event time on)
            later = [i for s in plan.stages[stage.index :] for i in s.steps]
            routed = graph.first_event_time_step(config, later)
            self.routers[stage.index] = Router(
                compile_key(boundary.key) if boundary.key is not None else None,
                max_parallelism,
                routed[1] if routed else None,
                routed[2] if routed else 0,
            )
            groups = stage_groups(stage, index, parallelism, max_parallelism)
            tasks: list[StageTask] = []
            if len(groups):
                task_id = stage_task_id(stage.index, groups)
                task = StageTask(
                    task_id=task_id,
                    stage=stage,
                    groups=groups,
                    marks=OriginWatermarks(origins, idle_s, now),
                    build=lambda group: [],
                    timed=None if timed is None else sorted(stage.steps).index(timed[0]),
                )
                task.build = self._builder(config, task, open_store)
                tasks.append(task)
                self.by_id[task_id] = task
            self.tasks[stage.index] = tasks
            origins = stage_task_ids(stage, parallelism, max_parallelism)

    @staticmethod
    def _builder(
        config: JobConfig, task: StageTask, open_store: StoreOpener
    ) -> Callable[[int], list[Transformation]]:
        steps = set(task.stage.steps)

        def build(group: int) -> list[Transformation]:
            def store_for(name: str) -> StateStore:
                return KeyGroupStore(open_store(task.task_id, task.stores, name), group)

            return graph.build_chain(config, store_for, steps, external_watermark=True)

        return build

    # ------------------------------------------------------------------------------ routing

    def push(
        self,
        stage: int,
        origin: str,
        records: Batch,
        *,
        finished: bool = False,
        ingest_ms: float | None = None,
    ) -> None:
        """Hands the output of a task of ``stage`` on: to the next stage, or to the sinks.
        ``ingest_ms``: the earliest ingestion time of the input that produced ``records``."""
        if stage > 0 and records:
            task = self.by_id.get(origin)
            if task is not None:
                task.events_out += len(records)
        if stage == self.last:
            if records:
                self._output.append((origin, records))
            return
        errors: list[tuple[Record, Exception]] = []
        groups, watermark = self.routers[stage + 1].route(origin, records, errors)
        if errors:
            self._on_errors(errors, origin, None)
        if stage > 0 and origin in self.by_id:
            # a key-group task's output merges its origins' records, in order per origin only: the
            # largest event time it emitted says nothing about what is still due, its input
            # watermark (the least over its origins) does, as a Flink operator forwards its own
            watermark = min(watermark, self.by_id[origin].watermark)
        if finished:
            watermark = MAX_WATERMARK
        elif not groups:
            return  # nothing crossed and the watermark did not move
        self.exchange.send(stage + 1, origin, groups, watermark, ingest_ms)

    def pump(self, now: float | None = None) -> None:
        """Lets every later stage, in order, take what arrived for it and pass its output on."""
        now = time.monotonic() if now is None else now
        for stage in range(1, self.last + 1):
            for task in self.tasks[stage]:
                deliveries = self.exchange.receive(stage, task.groups)
                if not deliveries:
                    continue
                errors: list[tuple[Record, Exception]] = []
                out = task.deliver(deliveries, now, errors)
                self._report(errors, task)
                ingest = _earliest_ingest(deliveries)
                if ingest is not None and stage == self.last and self.track_latency:
                    self._latency.append((ingest, sum(len(d.records) for d in deliveries)))
                if out:
                    self.push(stage, task.task_id, out, ingest_ms=ingest)

    def take_latency(self) -> list[tuple[float, int]]:
        """(earliest ingestion time, records) the last stage took in since the last call."""
        latency, self._latency = self._latency, []
        return latency

    def take_output(self) -> list[tuple[str, Batch]]:
        """The last stage's output since the last call, per task id, for the sinks."""
        output, self._output = self._output, []
        return output

    def _report(self, errors: list[tuple[Record, Exception]], task: StageTask) -> None:
        if errors:
            task.errors += len(errors)
            self._on_errors(errors, task.task_id, task.watermark)

    # ------------------------------------------------------------------------------ time

    def on_time(self, now_ms: int) -> None:
        """Idle origins stop holding event time back; processing-time steps emit what is due."""
        self.advance(now_ms)

    def advance(self, now_ms: int | None = None) -> None:
        """Applies every stage's watermark as of now (after a restore: the restored one, before any
        record arrives) and, given ``now_ms``, lets processing-time steps emit what is due."""
        now = time.monotonic()
        self.pump(now)
        for stage in range(1, self.last + 1):
            for task in self.tasks[stage]:
                errors: list[tuple[Record, Exception]] = []
                out: Batch = []
                task.advance(now, errors, out)
                if now_ms is not None:
                    out.extend(task.on_time(now_ms, errors))
                self._report(errors, task)
                if out:
                    self.push(stage, task.task_id, out)
            self.pump(now)

    def end_of_input(self, origins: list[str]) -> None:
        """Every split of ``origins`` (stage 0, already flushed and pushed) is exhausted: each stage
        in order learns its origins finished, fires what that makes due and flushes the rest."""
        for origin in origins:
            self.push(0, origin, [], finished=True)
        self.pump()
        for stage in range(1, self.last + 1):
            for task in self.tasks[stage]:
                errors: list[tuple[Record, Exception]] = []
                out = task.on_end(errors)
                self._report(errors, task)
                self.push(stage, task.task_id, out, finished=True)
            self.pump()

    def finish_step(self, finished: Callable[[int, range], bool]) -> bool:
        """End of input across worker processes, one step at a time (the worker keeps handling
        barriers in between): each task whose origins have all finished (``finished(stage, groups)``:
        every origin sent its end-of-input mark and it was received) flushes what it holds and
        finishes its own output in turn. True once every task of this worker has ended."""
        self.pump()
        for stage in range(1, self.last + 1):
            for task in self.tasks[stage]:
                if task.ended or not finished(stage, task.groups):
                    continue
                errors: list[tuple[Record, Exception]] = []
                out = task.on_end(errors)
                self._report(errors, task)
                self.push(stage, task.task_id, out, finished=True)
                task.ended = True
                self.pump()
        return all(task.ended for task in self.by_id.values())

    def late_dropped(self) -> int:
        return sum(task.late_dropped() for task in self.by_id.values())


def _earliest_ingest(deliveries: list[Delivery]) -> float | None:
    """The earliest ingestion time of the deliveries that carry records (None: none known)."""
    times = [d.ingest_ms for d in deliveries if d.records and d.ingest_ms is not None]
    return min(times) if times else None
