"""Keyed steps after a stage boundary, in one worker (parallelism 1): a real in-process worker reads
four JSON files whose keys are spread over all of them, routes by key group to the later stage and
must give what one task seeing every event in event-time order gives (a brute-force oracle computed
here), also through a checkpoint and restore mid-run; a job without a boundary runs as before."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.runtime.checkpoint.storage import storage_from_uri
from heliosdb_streaming.runtime.checkpoint.tasks import MANIFEST, Barrier
from heliosdb_streaming.runtime.worker import Worker

HOUR = 3_600_000
FILES = 4
MERCHANTS = [f"m{k:02d}" for k in range(17)]


def write_files(directory: Path, per_file: int, seed: int = 7) -> list[dict[str, Any]]:
    """Card transactions, cards spread over the files (card % 4), merchants over all of them; each
    file in event-time order, every timestamp distinct across files (so 'time order' is one order)."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    events: list[dict[str, Any]] = []
    for f in range(FILES):
        ts = 1_700_000_000_000 + f
        lines = []
        for _ in range(per_file):
            ts += rng.randrange(1, 400) * FILES * 1000  # distinct across files: ts % FILES == f
            card = rng.randrange(50) * FILES + f
            event = {
                "card_id": card,
                "merchant": rng.choice(MERCHANTS),
                "amount": rng.randrange(1, 1000),
                "timestamp": ts,
            }
            lines.append(orjson.dumps(event))
            events.append(event)
        (directory / f"part-{f}.json").write_bytes(b"\n".join(lines) + b"\n")
    return events


def job(source_dir: Path, out: Path, steps: list[dict[str, Any]], **config: Any) -> JobConfig:
    return JobConfig.from_dict(
        {
            "name": "stages",
            "config": {"parallelism": 1, "restart_strategy": "none", **config},
            "sources": [{"type": "file", "config": {"path": str(source_dir)}}],
            "transformations": steps,
            "sinks": [{"type": "file", "config": {"path": str(out / "{task}.jsonl")}}],
        }
    )


KEYED_WINDOW = [
    {"type": "key_by", "config": {"key": "merchant"}},
    {
        "type": "window",
        "config": {"kind": "tumbling", "size": "1h", "aggregates": {"n": "count(*)", "total": "sum(amount)"}},
    },
]


def run(config: JobConfig, job_dir: Path, **kwargs: Any) -> Worker:
    worker = Worker(config, job_id="stages-job", index=0, attempt=1, job_dir=job_dir, channel=None, **kwargs)
    code = asyncio.run(asyncio.wait_for(worker.run(), 120))
    assert code == 0
    return worker


def rows(out: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for f in sorted(out.glob("*.jsonl")) for line in f.read_bytes().splitlines()]


def window_oracle(events: list[dict[str, Any]], key: str | None) -> dict[tuple[Any, int], tuple[int, int]]:
    """(key, window start) -> (count, sum of amount), by brute force."""
    out: dict[tuple[Any, int], list[int]] = defaultdict(lambda: [0, 0])
    for e in events:
        cell = out[(e[key] if key else None, e["timestamp"] - e["timestamp"] % HOUR)]
        cell[0] += 1
        cell[1] += e["amount"]
    return {k: (v[0], v[1]) for k, v in out.items()}


def window_rows(found: list[dict[str, Any]]) -> dict[tuple[Any, int], tuple[int, int]]:
    result: dict[tuple[Any, int], tuple[int, int]] = {}
    for r in found:
        cell = (r["key"], r["window_start"])
        assert cell not in result, f"two rows for {cell}"
        assert r["window_end"] - r["window_start"] == HOUR
        result[cell] = (r["n"], r["total"])
    return result


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_key_by_merchant_over_four_files_gives_one_row_per_merchant_and_window(
    tmp_path: Path, backend: str
) -> None:
    events = write_files(tmp_path / "in", 3000)
    worker = run(
        job(tmp_path / "in", tmp_path / "out", KEYED_WINDOW, state_backend=backend), tmp_path / "job"
    )
    found = rows(tmp_path / "out")
    assert window_rows(found) == window_oracle(events, "merchant")
    assert [p.name for p in (tmp_path / "out").glob("*.jsonl")] == ["s1-kg0-127.jsonl"]
    assert worker.counters.events_in == len(events)
    assert worker.counters.late_dropped == 0
    # the per-split answer this replaces had a row per (file, merchant, window)
    assert len(found) < len({(e["merchant"], e["timestamp"] // HOUR, e["timestamp"] % FILES) for e in events})


def test_an_unkeyed_window_over_several_splits_gives_one_result_per_window(tmp_path: Path) -> None:
    events = write_files(tmp_path / "in", 2000)
    steps = [
        {"type": "filter", "config": {"condition": "amount >= 100"}},
        {
            "type": "window",
            "config": {
                "kind": "tumbling",
                "size": "1h",
                "aggregates": {"n": "count(*)", "total": "sum(amount)"},
            },
        },
    ]
    run(job(tmp_path / "in", tmp_path / "out", steps), tmp_path / "job")
    kept = [e for e in events if e["amount"] >= 100]
    assert window_rows(rows(tmp_path / "out")) == window_oracle(kept, None)
    assert [p.name for p in (tmp_path / "out").glob("*.jsonl")] == ["s1-kg0-0.jsonl"]


def cep_oracle(events: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """Pattern ``A B`` (strict, skip past last row): per merchant, in time order, an event with
    amount < 100 directly followed by one with amount >= 900; (merchant, start, end) per match."""
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in sorted(events, key=lambda e: e["timestamp"]):
        by_key[e["merchant"]].append(e)
    matches = []
    for merchant, seq in by_key.items():
        i = 0
        while i + 1 < len(seq):
            if seq[i]["amount"] < 100 and seq[i + 1]["amount"] >= 900:
                matches.append((merchant, seq[i]["timestamp"], seq[i + 1]["timestamp"]))
                i += 2
            else:
                i += 1
    return sorted(matches)


def test_cep_keyed_by_a_key_spread_over_splits_matches_on_each_keys_events_in_time_order(
    tmp_path: Path,
) -> None:
    events = write_files(tmp_path / "in", 3000)
    steps = [
        {
            "type": "cep",
            "config": {
                "pattern": "A B",
                "define": {"A": "amount < 100", "B": "amount >= 900"},
                "key": "merchant",
            },
        }
    ]
    worker = run(job(tmp_path / "in", tmp_path / "out", steps), tmp_path / "job")
    found = sorted((r["key"], r["start_time"], r["end_time"]) for r in rows(tmp_path / "out"))
    expected = cep_oracle(events)
    assert len(expected) > 20
    assert found == expected
    assert worker.counters.late_dropped == 0


def test_a_job_without_a_boundary_runs_per_split_as_before(tmp_path: Path) -> None:
    """Files partitioned by card (declared): a keyed window on card_id needs no exchange."""
    events = write_files(tmp_path / "in", 1000)
    config = JobConfig.from_dict(
        {
            "name": "no-boundary",
            "config": {"parallelism": 1, "restart_strategy": "none"},
            "sources": [
                {"type": "file", "config": {"path": str(tmp_path / "in"), "partitioned_by": "card_id"}}
            ],
            "transformations": [
                {"type": "key_by", "config": {"key": "card_id"}},
                KEYED_WINDOW[1],
            ],
            "sinks": [{"type": "file", "config": {"path": str(tmp_path / "out" / "{task}.jsonl")}}],
        }
    )
    worker = run(config, tmp_path / "job")
    assert worker.data.stages is None and not worker.data.stage_tasks
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jsonl")) == [
        f"s0-f{k}.jsonl" for k in range(FILES)
    ]
    assert window_rows(rows(tmp_path / "out")) == window_oracle(events, "card_id")


def test_a_checkpoint_mid_run_and_a_restore_give_the_uninterrupted_result(tmp_path: Path) -> None:
    events = write_files(tmp_path / "in", 20_000)
    config = job(tmp_path / "in", tmp_path / "out-a", KEYED_WINDOW, state_backend="rocksdb")
    storage = storage_from_uri(str(tmp_path / "checkpoints"))
    barrier = Barrier(1, "stages-job/chk-1", "stages-job/shared")

    async def interrupted() -> Worker:
        worker = Worker(
            config,
            job_id="stages-job",
            index=0,
            attempt=1,
            job_dir=tmp_path / "job",
            channel=None,
            storage=storage,
        )

        async def checkpoint_then_stop() -> None:
            while worker.counters.events_in < len(events) // 3:
                await asyncio.sleep(0.001)
            worker.running.clear()  # pause reading: the snapshot is taken mid-input
            worker.checkpoints.on_barrier(
                {"checkpoint_id": 1, "directory": barrier.directory, "shared": barrier.shared}
            )
            while not await storage.exists(f"{barrier.directory}/s1-kg0-127.snap"):
                await asyncio.sleep(0.01)
            worker.stopping.set()

        stopper = asyncio.create_task(checkpoint_then_stop())
        assert await asyncio.wait_for(worker.run(), 120) == 0
        await stopper
        return worker

    first = asyncio.run(interrupted())
    assert first.counters.events_in < len(events)
    # the coordinator's part: the manifest lists every task snapshot of the checkpoint
    names = [p.stem for p in (tmp_path / "checkpoints" / "stages-job" / "chk-1").glob("*.snap")]
    assert sorted(names) == ["s0-f0", "s0-f1", "s0-f2", "s0-f3", "s1-kg0-127"]
    manifest = {
        "checkpoint_id": 1,
        "job_id": "stages-job",
        "tasks": {name: {"path": f"{barrier.directory}/{name}.snap"} for name in names},
    }
    asyncio.run(storage.write(f"{barrier.directory}/{MANIFEST}", orjson.dumps(manifest)))

    resumed_config = job(tmp_path / "in", tmp_path / "out-b", KEYED_WINDOW, state_backend="rocksdb")
    second = Worker(
        resumed_config,
        job_id="stages-job",
        index=0,
        attempt=2,
        job_dir=tmp_path / "job",
        channel=None,
        storage=storage,
        restore_from=barrier.directory,
    )
    assert asyncio.run(asyncio.wait_for(second.run(), 120)) == 0
    assert 0 < second.counters.events_in < len(events)  # it resumed from the positions

    expected = window_oracle(events, "merchant")
    # rows emitted after the checkpoint by the first run are emitted again by the second
    # (at-least-once file sink): every row of either run is the uninterrupted one, none is missing
    both = rows(tmp_path / "out-a") + rows(tmp_path / "out-b")
    distinct = {(r["key"], r["window_start"], r["n"], r["total"]) for r in both}
    assert {(k, w): (n, t) for k, w, n, t in distinct} == expected
    assert len(distinct) == len(expected)
    # and the second run alone finishes every window still open at the checkpoint
    assert window_rows(rows(tmp_path / "out-b")).items() <= expected.items()


def test_the_stage_tasks_snapshot_is_partitioned_by_key_group(tmp_path: Path) -> None:
    events = write_files(tmp_path / "in", 500)
    worker = run(job(tmp_path / "in", tmp_path / "out", KEYED_WINDOW), tmp_path / f"job-{uuid.uuid4()}")
    task = worker.data.stage_tasks["s1-kg0-127"]
    assert set(task.chains) == {g for g in range(128) if any(_group(e["merchant"]) == g for e in events)}
    keys = [key for key, _ in task.stores["1-window"].items()]
    assert keys
    for key in keys:
        assert key.startswith("g") and key[6] == "|"


def _group(merchant: str) -> int:
    from heliosdb_streaming.runtime.exchange.keygroups import key_group

    return key_group(merchant, 128)


def test_one_split_needs_no_exchange(tmp_path: Path) -> None:
    """One task reading the only split already sees every key: the plan's boundary is not applied."""
    events = write_files(tmp_path / "in", 500)
    single = tmp_path / "single.json"
    single.write_bytes(
        b"".join(orjson.dumps(e) + b"\n" for e in sorted(events, key=lambda e: e["timestamp"]))
    )
    worker = run(job(single, tmp_path / "out", KEYED_WINDOW), tmp_path / "job")
    assert worker.data.stages is None
    assert window_rows(rows(tmp_path / "out")) == window_oracle(events, "merchant")


def test_two_boundaries_flush_stage_by_stage(tmp_path: Path) -> None:
    """Per-merchant hourly counts (stage 1), then per merchant a count of those rows per 3 h by their
    window start (stage 2: the window's output is new records, regrouped): at the end of input
    stage 1's windows fire first and reach stage 2 before it flushes."""
    events = write_files(tmp_path / "in", 2000)
    steps = [
        *KEYED_WINDOW,
        {
            "type": "window",
            "config": {
                "kind": "tumbling",
                "size": "3h",
                "time_field": "window_start",
                "key": "key",  # the merchant, as the window before it emits it
                "aggregates": {"rows": "count(*)", "n": "sum(n)"},
            },
        },
    ]
    worker = run(job(tmp_path / "in", tmp_path / "out", steps), tmp_path / "job")
    assert sorted(worker.data.stage_tasks) == ["s1-kg0-127", "s2-kg0-127"]
    hourly = window_oracle(events, "merchant")
    expected: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    for (merchant, start), (n, _) in hourly.items():
        cell = expected[(merchant, start - start % (3 * HOUR))]
        cell[0] += 1
        cell[1] += n
    found = [((r["key"], r["window_start"]), [r["rows"], r["n"]]) for r in rows(tmp_path / "out")]
    assert len(found) == len(expected)
    assert dict(found) == dict(expected)
    assert worker.counters.late_dropped == 0


def test_a_run_across_processes_goes_through_its_brokers_or_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Parallelism 2: records cross worker processes through internal topics on the repartition
    brokers. With the brokers out of reach the worker fails at open, naming them, instead of
    running each keyed step per split (the answer that is wrong when a key spans splits)."""
    write_files(tmp_path / "in", per_file=50)
    config = job(
        tmp_path / "in",
        tmp_path / "out",
        KEYED_WINDOW,
        parallelism=2,
        repartition={"bootstrap_servers": ["127.0.0.1:9"]},
    )
    worker = Worker(config, job_id="stages-job", index=0, attempt=1, job_dir=tmp_path / "job", channel=None)
    with caplog.at_level("WARNING", logger="heliosdb_streaming.worker"):
        code = asyncio.run(asyncio.wait_for(worker.run(), 60))
    assert code == 1
    assert worker.remote is not None and worker.remote.bootstrap_servers == ["127.0.0.1:9"]
    assert not list((tmp_path / "out").glob("*.jsonl"))  # nothing computed per split
    assert not [r for r in caplog.records if "split it reads" in r.getMessage()]
