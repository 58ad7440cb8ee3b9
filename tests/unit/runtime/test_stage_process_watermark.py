"""A keyed process step after a stage boundary takes the stage's event time (the minimum over its
origins), not its key group's own: a card that goes quiet still gets its session timer fired when
other cards (in other key groups, from other splits) move event time past it. Before, the step of
each key group derived its watermark from that group's events only, so on unbounded input the
last session of every card stayed open forever (the Kafka chaos test's missing session rows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.plan import plan_job
from heliosdb_streaming.runtime import graph
from heliosdb_streaming.runtime.contracts import Record, StateStore
from heliosdb_streaming.runtime.exchange.keygroups import key_group
from heliosdb_streaming.runtime.exchange.local import LocalExchange
from heliosdb_streaming.runtime.stages import StageRunner
from heliosdb_streaming.runtime.state.memory import MemoryStateStore
from heliosdb_streaming.runtime.transformations.process import ProcessTransformation

USERPKG = Path(__file__).resolve().parents[2] / "userpkg"
T0 = 1_700_000_000_000
GAP = 60_000  # helios_userpkg.fraud:CardSessions.gap_ms
QUIET, BUSY = "card-quiet", "card-busy"


@pytest.fixture(autouse=True)
def userpkg_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(USERPKG))


def job(ooo: str = "0s") -> JobConfig:
    return JobConfig.from_dict(
        {
            "name": "sessions",
            "config": {"state_backend": "memory"},
            "sources": [{"type": "file", "config": {"path": "unused.jsonl"}}],
            "transformations": [
                {"type": "key_by", "config": {"key": "card_id"}},
                {
                    "type": "process",
                    "config": {"function": "helios_userpkg.fraud:CardSessions", "max_out_of_orderness": ooo},
                },
            ],
            "sinks": [{"type": "print", "config": {}}],
        }
    )


def runner(config: JobConfig, origins: list[str]) -> StageRunner:
    def open_store(task_id: str, stores: dict[str, StateStore], name: str) -> StateStore:
        return stores.setdefault(name, MemoryStateStore())

    def on_errors(errors: list[tuple[Record, Exception]], task_id: str, position: Any) -> None:
        raise AssertionError(errors)

    plan = plan_job(config.sources, config.transformations)
    assert len(plan.stages) == 2
    return StageRunner(
        config, plan, LocalExchange(), index=0, split_ids=origins, open_store=open_store, on_errors=on_errors
    )


def pay(card: str, ts: int) -> Record:
    return {"card_id": card, "merchant": "m1", "amount": 10, "timestamp": ts}


def sessions(stages: StageRunner) -> list[tuple[str, int]]:
    return [
        (r["card_id"], r["ended"]) for _, out in stages.take_output() for r in out if r["kind"] == "session"
    ]


def test_a_quiet_keys_timer_fires_when_the_other_origins_move_the_stage_watermark() -> None:
    assert key_group(QUIET, 128) != key_group(BUSY, 128)  # the quiet card's group sees none of BUSY
    stages = runner(job(), ["split-a", "split-b"])
    stages.push(0, "split-a", [pay(QUIET, T0)])
    stages.push(0, "split-b", [pay(BUSY, T0 + 1)])
    stages.pump()
    assert sessions(stages) == []
    later = T0 + 5 * GAP
    stages.push(0, "split-a", [pay(BUSY, later)])
    stages.pump()
    assert sessions(stages) == [], "split-b still holds event time at T0: nothing is due yet"
    stages.push(0, "split-b", [pay(BUSY, later + 1)])
    stages.pump()
    # both origins passed T0 + GAP: the quiet card's session ends (BUSY's goes on)
    assert sessions(stages) == [(QUIET, T0 + GAP)]


def test_the_exchange_reads_the_process_steps_time_field_and_lag() -> None:
    config = job(ooo="5s")
    assert graph.first_event_time_step(config, [0, 1]) == (1, "timestamp", 5_001)
    chain = graph.build_chain(config, lambda name: MemoryStateStore(), [0, 1], external_watermark=True)
    step = chain[1]
    assert isinstance(step, ProcessTransformation) and step.external_watermark
    assert not graph.build_chain(config, lambda name: MemoryStateStore(), [0, 1])[1].external_watermark  # type: ignore[attr-defined]


def test_an_external_watermark_survives_a_snapshot_and_restore_without_a_timer_firing() -> None:
    """``advance_watermark`` writes the store only when a timer fires; ``before_snapshot`` writes the
    rest, so a restored step resumes at the exact watermark (a timer at or before it waits for the
    next rise, as without the restore)."""
    config = job()
    store = MemoryStateStore()
    step = graph.build_chain(config, lambda name: store, [0, 1], external_watermark=True)[1]
    assert isinstance(step, ProcessTransformation)
    errors: list[tuple[Record, Exception]] = []
    assert step.process([pay(QUIET, T0)], errors) == []
    assert step.watermark < T0, "its own events do not move an external step's event time"
    assert step.advance_watermark(T0 + GAP - 1, errors) == []
    step.before_snapshot()
    restored = graph.build_chain(config, lambda name: store, [0, 1], external_watermark=True)[1]
    assert isinstance(restored, ProcessTransformation)
    assert restored.watermark == T0 + GAP - 1
    assert restored.advance_watermark(T0 + GAP - 1, errors) == []
    fired = restored.advance_watermark(T0 + GAP, errors)
    assert [(r["kind"], r["card_id"], r["ended"]) for r in fired] == [("session", QUIET, T0 + GAP)]
    assert not errors
