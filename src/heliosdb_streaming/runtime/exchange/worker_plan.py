"""Which internal topics one worker writes and reads, derived from the job's plan (pure).

A worker writes to boundary ``b`` when it runs a task of stage ``b - 1`` (a split task of stage 0,
or a key-group task of a later stage), and reads boundary ``b`` for the key groups its task of
stage ``b`` owns, fed by every task of stage ``b - 1`` over all workers (the origins whose barriers
it aligns and whose watermarks it takes the minimum of). The composition root (the worker's
``main``) turns this into ``KafkaExchange.open`` arguments, adding each task's restored offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from heliosdb_streaming.model.plan import JobPlan
from heliosdb_streaming.runtime.stages import stage_groups, stage_task_ids


@dataclass(frozen=True, slots=True)
class StageInput:
    """The input of this worker's task of stage ``boundary``."""

    boundary: int
    groups: range
    origins: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WorkerExchangePlan:
    outputs: dict[int, int]  # boundary -> key groups of the stage it feeds (1 for a global stage)
    inputs: tuple[StageInput, ...]
    # boundary written -> the key groups of each task reading it, over all workers (where the
    # writer sends one watermark mark per task instead of one per key group)
    readers: dict[int, tuple[range, ...]]


def needs_kafka(plan: JobPlan, parallelism: int) -> bool:
    """Records cross worker processes: the plan has boundaries and more than one worker runs it."""
    return plan.needs_exchange and parallelism > 1


def worker_exchange_plan(
    plan: JobPlan,
    *,
    index: int,
    parallelism: int,
    max_parallelism: int,
    every_split: Sequence[str],
    own_splits: Sequence[str],
) -> WorkerExchangePlan:
    """What worker ``index`` of ``parallelism`` writes and reads; ``every_split`` lists the split
    ids of all workers (stage 1's origins), ``own_splits`` those this worker reads."""
    outputs: dict[int, int] = {}
    readers: dict[int, tuple[range, ...]] = {}
    inputs: list[StageInput] = []
    origins: tuple[str, ...] = tuple(every_split)
    runs_previous = bool(own_splits)
    for stage in plan.stages[1:]:
        fanout = 1 if stage.input == "global" else max_parallelism
        if runs_previous:
            outputs[stage.index] = fanout
            every = (stage_groups(stage, i, parallelism, max_parallelism) for i in range(parallelism))
            readers[stage.index] = tuple(g for g in every if len(g))
        groups = stage_groups(stage, index, parallelism, max_parallelism)
        if len(groups):
            inputs.append(StageInput(stage.index, groups, origins))
        runs_previous = bool(len(groups))
        origins = tuple(stage_task_ids(stage, parallelism, max_parallelism))
    return WorkerExchangePlan(outputs, tuple(inputs), readers)
