"""Which internal topics each worker writes and reads (runtime/exchange/worker_plan.py): over all
workers, every key group of a keyed stage is read by exactly one task, a global stage by worker 0
alone, each reader expects every task of the stage before as an origin, and writers exist for every
boundary whose previous stage runs on them."""

from __future__ import annotations

from heliosdb_streaming.model.plan import Boundary, JobPlan, Stage
from heliosdb_streaming.runtime.exchange.worker_plan import (
    WorkerExchangePlan,
    needs_kafka,
    worker_exchange_plan,
)

PLAN = JobPlan(
    stages=(
        Stage(0, (0,), "splits", None),
        Stage(1, (1, 2), "key_groups", "merchant"),
        Stage(2, (3,), "global", None),
    ),
    boundaries=(Boundary(1, 1, "merchant", "key_by merchant"), Boundary(2, 3, None, "global window")),
    declared_key=None,
)
SPLITS = ["s0-p0", "s0-p1", "s0-p2"]


def plans(parallelism: int, max_parallelism: int = 8) -> list[WorkerExchangePlan]:
    return [
        worker_exchange_plan(
            PLAN,
            index=i,
            parallelism=parallelism,
            max_parallelism=max_parallelism,
            every_split=SPLITS,
            own_splits=[s for k, s in enumerate(SPLITS) if k % parallelism == i],
        )
        for i in range(parallelism)
    ]


def test_every_key_group_has_one_reader_and_the_global_stage_one_task() -> None:
    workers = plans(3)
    stage1 = [g for w in workers for i in w.inputs if i.boundary == 1 for g in i.groups]
    assert sorted(stage1) == list(range(8))
    stage2 = [(n, i.groups) for n, w in enumerate(workers) for i in w.inputs if i.boundary == 2]
    assert stage2 == [(0, range(0, 1))]


def test_readers_expect_every_task_of_the_stage_before() -> None:
    workers = plans(3)
    for w in workers:
        by_boundary = {i.boundary: i for i in w.inputs}
        assert by_boundary[1].origins == tuple(SPLITS)
    assert workers[0].inputs[1].origins == ("s1-kg0-2", "s1-kg3-5", "s1-kg6-7")


def test_writers_and_fanout() -> None:
    workers = plans(2)
    assert [w.outputs for w in workers] == [{1: 8, 2: 1}, {1: 8, 2: 1}]
    idle = plans(4)[3]  # no split: writes nothing to stage 1, still runs key groups of it
    assert idle.outputs == {2: 1} and [i.boundary for i in idle.inputs] == [1]


def test_kafka_only_across_processes() -> None:
    assert needs_kafka(PLAN, 2) and not needs_kafka(PLAN, 1)
    assert not needs_kafka(JobPlan((Stage(0, (0,), "splits", None),), (), None), 3)
