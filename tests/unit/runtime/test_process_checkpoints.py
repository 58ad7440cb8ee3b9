"""A process step's state and timers through a real checkpoint: the job graph builds the chain (the
user class imported from a package on the path), the task's stores are snapshotted and restored with
the worker's own functions, memory and RocksDB. A run cut by a checkpoint and a restore emits exactly
what an uninterrupted run emits, and both equal an independent reference."""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Any

import pytest

from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.runtime import graph
from heliosdb_streaming.runtime.checkpoint.storage import FileCheckpointStorage
from heliosdb_streaming.runtime.checkpoint.tasks import Barrier, restore_task, snapshot_task
from heliosdb_streaming.runtime.contracts import Record, Split
from heliosdb_streaming.runtime.state.rocksdb import RocksDBStateStore
from heliosdb_streaming.runtime.task import Task, TaskStores, before_snapshot, run_chain
from heliosdb_streaming.runtime.transformations.process import ProcessTransformation
from heliosdb_streaming.runtime.usercode import UserCodeNotAllowedError

USERPKG = Path(__file__).resolve().parents[2] / "userpkg"
SPLIT = Split("file-0", 0)


@pytest.fixture(autouse=True)
def userpkg_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(USERPKG))


def job(backend: str) -> JobConfig:
    return JobConfig.from_dict(
        {
            "name": "fraud",
            "config": {"state_backend": backend},
            "sources": [{"type": "file", "config": {"path": "unused.jsonl"}}],
            "transformations": [
                {"type": "filter", "config": {"condition": "amount > 0"}},
                {"type": "key_by", "config": {"key": "card_id"}},
                {"type": "process", "config": {"function": "helios_userpkg.fraud:CardSessions"}},
            ],
            "sinks": [{"type": "print", "config": {}}],
        }
    )


def events(n: int, seed: int) -> list[Record]:
    """Payments of 12 cards in time order, with quiet gaps long enough to end sessions."""
    rng = random.Random(seed)
    ts = 1_700_000_000_000
    out = []
    for i in range(n):
        ts += rng.choice([1_000, 5_000, 20_000, 61_000, 150_000])
        card = f"card-{rng.randrange(12)}" if i % 7 else rng.randrange(3)  # some int keys too
        out.append(
            {
                "card_id": card,
                "amount": rng.choice([0, 5, 40, 250, 600]),
                "merchant": f"m{rng.randrange(4)}",
                "timestamp": ts,
            }
        )
    return out


class Run:
    """One task of one worker attempt: its stores and the chain the graph builds over them."""

    def __init__(self, config: JobConfig, job_dir: Path, attempt: int, stores: dict[str, Any] | None = None):
        self.stores = TaskStores(config, job_dir, attempt)
        if stores:
            self.stores.adopt(stores.values())
        self.task = Task(split=SPLIT, reader=None, chain=[], stores=dict(stores or {}))  # type: ignore[arg-type]
        self.task.chain = graph.build_chain(config, functools.partial(self.stores.store, self.task))

    def feed(self, batch: list[Record]) -> list[Record]:
        errors: list[tuple[Record, Exception]] = []
        out = run_chain(self.task.chain, batch, errors, 0)
        assert errors == []
        return out

    def end(self) -> list[Record]:
        out: list[Record] = []
        for i, step in enumerate(self.task.chain):
            out += run_chain(self.task.chain, step.on_end(), [], i + 1)
        return out


async def run_job(backend: str, tmp_path: Path, batches: list[list[Record]], cut: int | None) -> list[Record]:
    config = job(backend)
    storage = FileCheckpointStorage(tmp_path / "checkpoints")
    job_dir = tmp_path / f"job-{cut}"
    run = Run(config, job_dir, 0)
    out: list[Record] = []
    try:
        for i, batch in enumerate(batches):
            if i == cut:
                barrier = Barrier(1, "job/chk-1", "job/shared")
                before_snapshot(run.task.chain)  # as the worker's checkpoint participant does
                path, _, _ = await snapshot_task(storage, barrier, SPLIT.split_id, i, run.task.stores, [])
                run.stores.close()  # the first attempt is gone; the next one starts from the snapshot
                restored = await restore_task(storage, path, job_dir / "restored")
                assert restored.position == i
                run = Run(config, job_dir, 1, restored.stores)
            out += run.feed(batch)
        out += run.end()
    finally:
        run.stores.close()
    assert all(isinstance(s, RocksDBStateStore) == (backend == "rocksdb") for s in run.task.stores.values())
    return out


def ordered(records: list[Record]) -> list[Record]:
    return sorted(records, key=lambda r: (r["kind"], repr(r["card_id"]), r.get("at", r.get("ended"))))


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
async def test_checkpoint_and_restore_mid_stream_gives_the_uninterrupted_output(
    backend: str, tmp_path: Path
) -> None:
    from helios_userpkg.fraud import reference

    data = events(600, seed=11)
    batches = [data[i : i + 50] for i in range(0, len(data), 50)]
    uninterrupted = await run_job(backend, tmp_path, batches, None)
    expected = reference([e for e in data if e["amount"] > 0])
    assert ordered(uninterrupted) == expected
    assert {r["kind"] for r in expected} == {"alert", "session"}
    assert sum(r["count"] for r in expected if r["kind"] == "session") == sum(
        1 for e in data if e["amount"] > 0
    )
    for cut in (1, 5, 11):
        assert await run_job(backend, tmp_path, batches, cut) == uninterrupted, cut


async def test_the_graph_imports_and_keys_the_process_step(tmp_path: Path) -> None:
    run = Run(job("memory"), tmp_path, 0)
    step = run.task.chain[2]
    assert isinstance(step, ProcessTransformation)
    assert step.function_name == "helios_userpkg.fraud:CardSessions"
    assert graph.store_names(job("memory")) == {"2-process"}
    out = run.feed([{"card_id": "x", "amount": 1500, "merchant": "m", "timestamp": 10}])
    assert out == [{"kind": "alert", "card_id": "x", "total": 1500, "at": 10, "recent": [1500]}]
    run.stores.close()


def test_workers_given_an_allow_list_refuse_a_class_outside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELIOS_PYTHON_MODULES", "acme")
    with pytest.raises(UserCodeNotAllowedError, match="not allowed on this server"):
        Run(job("memory"), tmp_path, 0)
    monkeypatch.setenv("HELIOS_PYTHON_MODULES", "helios_userpkg")
    assert isinstance(Run(job("memory"), tmp_path, 1).task.chain[2], ProcessTransformation)
