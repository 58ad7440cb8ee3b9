"""Repartition across worker processes through the job's internal Kafka topics, under chaos.

``key_by merchant`` -> 1 h tumbling count and sum -> PostgreSQL (exactly once), where every merchant
is in every split, so every window needs events read by several workers:

- 4 JSON files, parallelism 3: three worker processes, each reading its files and owning a third of
  the key groups, the records crossing through ``helios-<job>-1`` on the test broker;
- a topic of 4 partitions keyed by card, parallelism 2, state in RocksDB, while workers are SIGKILLed
  (one at a time: the others run on in the old attempt until the control plane stops them, and
  what they wrote after the checkpoint must never be counted).

The table must equal the brute-force oracle: one row per merchant and hour, none lost, none
duplicated. The internal topic goes with the job's purge. Beside them: the same through a SIGKILL of
the control plane; a savepoint restarted at another parallelism (1 -> 2, 2 -> 1); a global window and
a global CEP over four files at parallelism 2 (one task sees every event, in event-time order); two
boundaries (three stages) across processes.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from stage_chaos import (
    HOUR,
    drive_with_kills,
    hourly_oracle,
    hourly_rows,
    merchant_job,
    transactions,
    write_files,
)

from heliosdb_streaming.job import JobConfigOverrides, JobManager, JobStatus, RestartOptions
from heliosdb_streaming.runtime.exchange import topics
from heliosdb_streaming.testing.waits import wait_until

pytestmark = [pytest.mark.timeout(300), pytest.mark.postgres, pytest.mark.kafka]

USERPKG = Path(__file__).resolve().parents[1] / "userpkg"


async def keyed_topic(
    bootstrap: str, topic: str, per_partition: int, seed: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Fills ``topic`` (4 partitions, keyed by card) and returns its events and the job's source. The
    last hour closes once every partition's event time is past it: a late marker per partition
    (merchant "zz", two hours after everything, not among the returned events) moves each origin's
    watermark past it."""
    splits = transactions(4, per_partition, seed=seed)
    events = [e for split in splits for e in split]
    end = max(e["timestamp"] for e in events) + 2 * HOUR
    for p, split in enumerate(splits):
        split.append({"tx": f"end-{p}", "card_id": p, "merchant": "zz", "amount": 0, "timestamp": end})
    await produce_by_card(bootstrap, topic, splits)
    source = {
        "type": "kafka",
        "config": {"bootstrap_servers": [bootstrap], "topic": topic, "start_from": "earliest"},
    }
    return events, source


@pytest.mark.parametrize("kills", [0, 3])
async def test_files_at_parallelism_3_through_kafka_equal_the_oracle_and_purge_drops_the_topic(
    tmp_path: Path, pg_dsn: str, pg_schema: str, kafka_bootstrap: str, kills: int
) -> None:
    events = write_files(tmp_path / "in", seed=3, per_file=50_000)  # long enough for the kills to land
    table = f"{pg_schema}.hourly"
    source = {"type": "file", "config": {"path": str(tmp_path / "in")}}
    body = merchant_job(
        "merchants-p3",
        source,
        pg_dsn,
        table,
        parallelism=3,
        repartition={"bootstrap_servers": [kafka_bootstrap]},
    )
    async with JobManager(4, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job(body)
        started = time.monotonic()
        killed = await drive_with_kills(jm, job_id, kills=kills, seed=job_id, timeout_s=120)
        elapsed = time.monotonic() - started
        print(f"\n{len(events)} events at parallelism 3 through Kafka, {killed} kills: {elapsed:.1f}s")
        # at least two kills landed mid-run (a fast machine may finish before the third)
        assert killed >= min(kills, 2) and (await jm.get_job_details(job_id)).restarts >= killed
        assert await topics.job_topics([kafka_bootstrap], job_id) == [f"helios-{job_id}-1"]
        assert await hourly_rows(pg_dsn, table) == hourly_oracle(events)
        await jm.purge_job(job_id)
        assert await topics.job_topics([kafka_bootstrap], job_id) == []


async def produce_by_card(bootstrap: str, topic: str, splits: list[list[dict[str, object]]]) -> None:
    """Split ``i`` goes to partition ``i`` keyed by card (as a card-keyed producer would put it)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        for partition, split in enumerate(splits):
            for event in split:
                await producer.send(
                    topic, orjson.dumps(event), key=str(event["card_id"]).encode(), partition=partition
                )
        await producer.flush()
    finally:
        await producer.stop()


async def test_kafka_by_card_at_parallelism_2_rocksdb_is_exact_through_worker_kills(
    tmp_path: Path, pg_dsn: str, pg_schema: str, kafka_bootstrap: str, kafka_topic
) -> None:
    topic = await kafka_topic(partitions=4)
    events, source = await keyed_topic(kafka_bootstrap, topic, 50_000, seed=11)
    table = f"{pg_schema}.hourly"
    body = merchant_job("merchants-kafka", source, pg_dsn, table, parallelism=2, state_backend="rocksdb")
    expected = hourly_oracle(events)

    async def complete() -> bool:
        return await hourly_rows(pg_dsn, table) == expected

    async with JobManager(4, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job(body)
        started = time.monotonic()
        killed = await drive_with_kills(jm, job_id, kills=3, seed=topic, until=complete, timeout_s=150)
        elapsed = time.monotonic() - started
        print(f"\n{len(events)} events at parallelism 2 from Kafka, {killed} kills: {elapsed:.1f}s")
        assert killed >= 2 and (await jm.get_job_details(job_id)).restarts >= killed
        # exactly once: nothing more comes (a duplicate would show as a second row or a larger count)
        seen = (await jm.get_job_details(job_id)).metrics.checkpoint_count

        async def two_more_checkpoints() -> bool:
            return (await jm.get_job_details(job_id)).metrics.checkpoint_count >= seen + 2

        await wait_until(two_more_checkpoints, what="two more checkpoints", within=30)
        assert await hourly_rows(pg_dsn, table) == expected
        await jm.cancel_job(job_id)

        async def cancelled() -> bool:
            return await jm.get_job_status(job_id) == JobStatus.CANCELLED

        await wait_until(cancelled, what="the job cancelled", within=30)


@pytest.fixture
def userpkg_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test package of user functions: for the control plane's submit check and its workers."""
    monkeypatch.syspath_prepend(str(USERPKG))
    monkeypatch.setenv("PYTHONPATH", str(USERPKG))


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)])
async def test_savepoint_restarted_at_another_parallelism_equals_the_oracle(
    tmp_path: Path,
    pg_dsn: str,
    pg_schema: str,
    kafka_bootstrap: str,
    userpkg_on_path: None,
    before: int,
    after: int,
) -> None:
    """A savepoint taken mid-run (key-group state in process at 1, across processes at 2; a python
    map of 0.3 ms a record before the repartition keeps the job running long enough to take it),
    restarted at the other parallelism: key groups move whole to their new tasks, and the table is
    the same."""
    events = write_files(tmp_path / "in", seed=before, per_file=5_000)
    table = f"{pg_schema}.hourly"
    source = {"type": "file", "config": {"path": str(tmp_path / "in")}}
    body = merchant_job(
        f"merchants-{before}-to-{after}",
        source,
        pg_dsn,
        table,
        parallelism=before,
        state_backend="rocksdb",
        repartition={"bootstrap_servers": [kafka_bootstrap]},
    )
    slow = {"type": "python", "config": {"function": "helios_userpkg.records:slow_fee"}}
    body["transformations"].insert(0, slow)
    async with JobManager(4, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job(body)

        async def running() -> bool:
            return (await jm.get_job_metrics(job_id)).events_processed > 2_000

        await wait_until(running, what="records processed", within=60, interval=0.05)
        await jm.pause_job(job_id)  # the sources stop reading: the savepoint is surely mid-input
        savepoint = await jm.cancel_job_with_savepoint(job_id)
        at_savepoint = await hourly_rows(pg_dsn, table)
        await jm.restart_job(
            job_id,
            RestartOptions(savepoint_id=savepoint, config_overrides=JobConfigOverrides(parallelism=after)),
        )
        await drive_with_kills(jm, job_id, kills=0, seed=job_id, timeout_s=120)
        logs = [e.message for e in await jm.get_job_logs(job_id)]
    assert any("snapshot taken at another parallelism" in m for m in logs)
    want = hourly_oracle(events)
    assert len(at_savepoint) < len(want)  # the savepoint was taken mid-run
    assert await hourly_rows(pg_dsn, table) == want


async def test_a_global_window_over_four_files_at_parallelism_2_is_one_task_through_kafka(
    tmp_path: Path, pg_dsn: str, pg_schema: str, kafka_bootstrap: str
) -> None:
    """An unkeyed window over several splits is a global step: its stage has one task (on worker 0),
    fed by the splits of both workers through partition 0 of the internal topic. One row per hour."""
    events = write_files(tmp_path / "in", seed=5, per_file=5_000)
    table = f"{pg_schema}.hourly_all"
    source = {"type": "file", "config": {"path": str(tmp_path / "in")}}
    body = merchant_job(
        "global-hourly",
        source,
        pg_dsn,
        table,
        parallelism=2,
        repartition={"bootstrap_servers": [kafka_bootstrap]},
    )
    body["transformations"] = [body["transformations"][1]]  # the window alone: no key
    async with JobManager(4, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job(body)
        await drive_with_kills(jm, job_id, kills=1, seed=job_id, timeout_s=120)
        plan = (await jm.get_job_details(job_id)).plan
    assert plan is not None and plan.stages[1].input == "global"
    hours = sorted(
        (start, sum(n for _m, s, n, _t in hourly_oracle(events) if s == start))
        for start in {s for _m, s, _n, _t in hourly_oracle(events)}
    )
    assert [(s, n) for _k, s, n, _t in await hourly_rows(pg_dsn, table)] == hours


async def test_kafka_by_card_through_a_control_plane_sigkill_is_exact(
    tmp_path: Path, pg_dsn: str, pg_schema: str, kafka_bootstrap: str, kafka_topic
) -> None:
    """The control plane dies with the job running (its workers end with it); a new one on the same
    home runs the job again from its last checkpoint in a larger attempt (saved before the workers
    of each run start), so what the dead run wrote to the internal topic is never counted."""
    topic = await kafka_topic(partitions=4)
    events, source = await keyed_topic(kafka_bootstrap, topic, 15_000, seed=13)
    table = f"{pg_schema}.hourly"
    job_file = tmp_path / "job.json"
    job_file.write_bytes(orjson.dumps(merchant_job("merchants-cp", source, pg_dsn, table, parallelism=2)))
    home = tmp_path / "home"
    control = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "control_plane_process.py"), str(home), str(job_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert control.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(control.stdout.readline), 60)
        (job_id,) = orjson.loads(line)

        async def checkpointed() -> bool:  # the job's first checkpoint is on disk
            return any(job_id in str(p) for p in home.rglob("_manifest.json"))

        await wait_until(checkpointed, what="a checkpoint", within=60, interval=0.05)
        partial = await hourly_rows(pg_dsn, table)
        control.send_signal(signal.SIGKILL)
        control.wait(10)
    finally:
        if control.poll() is None:
            control.kill()
            control.wait()
    expected = hourly_oracle(events)
    assert len(partial) < len(expected)  # killed mid-run

    async def complete() -> bool:
        return await hourly_rows(pg_dsn, table) == expected

    async with JobManager(4, home=home) as jm:
        await drive_with_kills(jm, job_id, kills=1, seed=job_id, until=complete, timeout_s=120)
        logs = [e.message for e in await jm.get_job_logs(job_id)]
        await jm.cancel_job(job_id)
    assert any("control plane restarted" in m for m in logs)
    runs = [int(m.split()[1].rstrip(":")) for m in logs if m.startswith("Run ") and ": started" in m]
    assert len(runs) >= 2 and runs == sorted(set(runs)), runs  # every run a larger attempt
    assert await hourly_rows(pg_dsn, table) == expected


def cep_oracle(events: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """``A B+ C`` (disjoint conditions on amount) over every event in event-time order is the regex
    ab+c over their letters (leftmost, greedy, skip past last row)."""
    seq = sorted(events, key=lambda e: int(e["timestamp"]))
    letters = "".join("a" if e["amount"] < 100 else "b" if e["amount"] < 800 else "c" for e in seq)
    out = []
    for m in re.finditer("ab+c", letters):
        first, last = int(seq[m.start()]["timestamp"]), int(seq[m.end() - 1]["timestamp"])
        assert last - first <= HOUR  # the window never cuts a match of this input
        out.append((first, last, m.end() - m.start()))
    return out


async def test_a_global_cep_over_four_files_at_parallelism_2_equals_the_time_ordered_reference(
    tmp_path: Path, pg_dsn: str, pg_schema: str, kafka_bootstrap: str
) -> None:
    """An unkeyed CEP over several splits sees every event in event-time order in its one task: the
    records of both workers' files cross through the internal topic, are buffered until the minimum
    over the four origins' watermarks passes them, then matched in time order."""
    events = write_files(tmp_path / "in", seed=17, per_file=5_000)
    want = cep_oracle(events)
    assert len(want) > 100
    table = f"{pg_schema}.matches"
    body = {
        "name": "global-cep",
        "config": {
            "parallelism": 2,
            "checkpoint_interval_ms": 200,
            "restart_strategy": {"type": "fixed_delay", "attempts": 100, "delay_ms": 100},
            "repartition": {"bootstrap_servers": [kafka_bootstrap]},
        },
        "sources": [{"type": "file", "config": {"path": str(tmp_path / "in")}}],
        "transformations": [
            {
                "type": "cep",
                "config": {
                    "pattern": "A B+ C",
                    "define": {
                        "A": "amount < 100",
                        "B": "amount >= 100 and amount < 800",
                        "C": "amount >= 800",
                    },
                    "window": "1h",
                },
            }
        ],
        "sinks": [{"type": "database", "config": {"connection_string": pg_dsn, "table": table}}],
    }
    async with JobManager(4, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job(body)
        await drive_with_kills(jm, job_id, kills=1, seed=job_id, timeout_s=120)
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(f"SELECT start_time, end_time, event_count FROM {table}")
    finally:
        await conn.close()
    assert sorted((r["start_time"], r["end_time"], r["event_count"]) for r in rows) == want


async def test_two_boundaries_at_parallelism_2_hourly_then_daily_per_merchant(
    tmp_path: Path, pg_dsn: str, pg_schema: str, kafka_bootstrap: str
) -> None:
    """Two boundaries, three stages across processes: files -> (key_by merchant) hourly count per
    merchant -> (by the hourly rows' ``key``) daily sum of those counts per merchant. Barriers go on
    from stage 1's tasks to stage 2, and stage 2 ends only after every stage-1 task of both workers
    ended: each merchant's day is its number of events."""
    events = write_files(tmp_path / "in", seed=23, per_file=5_000)
    table = f"{pg_schema}.daily"
    body = merchant_job(
        "daily",
        {"type": "file", "config": {"path": str(tmp_path / "in")}},
        pg_dsn,
        table,
        parallelism=2,
        repartition={"bootstrap_servers": [kafka_bootstrap]},
    )
    daily = {"size": "1d", "key": "key", "time_field": "window_start", "aggregates": {"events": "sum(n)"}}
    body["transformations"].append({"type": "window", "config": daily})
    async with JobManager(4, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job(body)
        await drive_with_kills(jm, job_id, kills=1, seed=job_id, timeout_s=120)
        plan = (await jm.get_job_details(job_id)).plan
    assert plan is not None and [s.input for s in plan.stages] == ["splits", "key_groups", "key_groups"]
    day = 24 * HOUR
    want: dict[tuple[str, int], int] = {}
    for e in events:
        cell = (e["merchant"], e["timestamp"] - e["timestamp"] % day)
        want[cell] = want.get(cell, 0) + 1
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(f"SELECT key, window_start, events FROM {table}")
    finally:
        await conn.close()
    assert sorted((r["key"], r["window_start"], int(r["events"])) for r in rows) == sorted(
        (m, d, n) for (m, d), n in want.items()
    )
