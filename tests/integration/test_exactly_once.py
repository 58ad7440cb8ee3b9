"""Exactly-once under chaos: Kafka -> keyed window / CEP -> PostgreSQL while workers are SIGKILLed at
random moments and the control plane itself is SIGKILLed once. The final tables must equal the
result computed independently from the produced data: no row lost, none duplicated."""

from __future__ import annotations

import asyncio
import random
import re
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from heliosdb_streaming.embedded.launcher import worker_processes
from heliosdb_streaming.job import JobManager, JobStatus
from heliosdb_streaming.testing.waits import wait_until

pytestmark = [pytest.mark.timeout(300), pytest.mark.kafka, pytest.mark.postgres]

CARDS = 40
EVENTS_PER_CARD = 150
PARTITIONS = 4
BASE_TS = 1_767_225_600_000
SENTINEL_TS = BASE_TS + 10 * 86_400_000
HERE = Path(__file__).parent


def make_events(
    seed: int, cards: int = CARDS, per_card: int = EVENTS_PER_CARD
) -> list[tuple[int, dict[str, Any]]]:
    """(partition, event) in production order: time-ordered, each card on one partition."""
    rng = random.Random(seed)
    events = []
    for i in range(per_card):
        for card in range(cards):
            amount = rng.choice([rng.uniform(1, 99), rng.uniform(100, 999), rng.uniform(1000, 5000)])
            event = {
                "tx": f"tx-{card}-{i}",
                "card_id": f"card-{card:03d}",
                "amount": round(amount, 2),
                "timestamp": BASE_TS + i * 1000 + card,
            }
            events.append((card % PARTITIONS, event))
    return events


def expected_windows(events: list[tuple[int, dict[str, Any]]]) -> list[tuple[Any, ...]]:
    sums: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0, 0.0])
    for _, e in events:
        acc = sums[(e["card_id"], e["timestamp"] - e["timestamp"] % 60_000)]
        acc[0] += 1
        acc[1] += e["amount"]
    return sorted((c, s, s + 60_000, int(n), round(t, 4)) for (c, s), (n, t) in sums.items())


def expected_matches(events: list[tuple[int, dict[str, Any]]]) -> list[tuple[Any, ...]]:
    """A B+ C with disjoint conditions is the regex ab+c over each card's letters (leftmost, greedy,
    skip past last row); every event of a card is 1 s apart, so the 1 h window never cuts a match."""
    per_card: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _, e in events:
        per_card[e["card_id"]].append(e)
    out = []
    for card, seq in per_card.items():
        letters = "".join("a" if e["amount"] < 100 else "b" if e["amount"] < 1000 else "c" for e in seq)
        for m in re.finditer("ab+c", letters):
            first, last = seq[m.start()], seq[m.end() - 1]
            assert last["timestamp"] - first["timestamp"] <= 3_600_000
            out.append((card, first["timestamp"], last["timestamp"], m.end() - m.start()))
    return sorted(out)


def jobs(source: dict[str, Any], dsn: str, schema: str, backend: str) -> list[dict[str, Any]]:
    common = {
        "parallelism": 2,
        "state_backend": backend,
        "checkpoint_interval_ms": 300,
        "restart_strategy": {"type": "fixed_delay", "attempts": 100, "delay_ms": 100},
    }
    window = {
        "name": f"windows-{backend}",
        "config": common,
        "sources": [source],
        "transformations": [
            {
                "type": "window",
                "config": {
                    "size": "1m",
                    "key": "card_id",
                    "aggregates": {"n": "count(*)", "total": "sum(amount)"},
                },
            }
        ],
        "sinks": [{"type": "database", "config": {"connection_string": dsn, "table": f"{schema}.windows"}}],
    }
    cep = {
        "name": f"cep-{backend}",
        "config": common,
        "sources": [source],
        "transformations": [
            {"type": "key_by", "config": {"key": "card_id"}},
            {
                "type": "cep",
                "config": {
                    "pattern": "A B+ C",
                    "define": {
                        "A": "amount < 100",
                        "B": "amount >= 100 and amount < 1000",
                        "C": "amount >= 1000",
                    },
                    "window": "1h",
                },
            },
        ],
        "sinks": [{"type": "database", "config": {"connection_string": dsn, "table": f"{schema}.matches"}}],
    }
    return [window, cep]


async def produce(bootstrap: str, topic: str, events: list[tuple[int, dict[str, Any]]], rounds: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        step = len(events) // rounds + 1
        for start in range(0, len(events), step):
            for partition, e in events[start : start + step]:
                await producer.send(topic, orjson.dumps(e), key=e["card_id"].encode(), partition=partition)
            await producer.flush()
            await asyncio.sleep(0.4)
        for partition in range(PARTITIONS):  # move every partition's watermark past the last window
            sentinel = {"card_id": f"sentinel-{partition}", "amount": 1.0, "timestamp": SENTINEL_TS}
            await producer.send(topic, orjson.dumps(sentinel), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def kill_a_worker(rng: random.Random, job_ids: list[str]) -> bool:
    workers = worker_processes(rng.choice(job_ids))
    if not workers:
        return False
    rng.choice(workers).send_signal(signal.SIGKILL)
    return True


async def kill_any_worker(rng: random.Random, job_ids: list[str]) -> bool:
    """Kills one live worker of any of the jobs (bounded jobs may already have finished)."""
    workers = [w for j in job_ids for w in worker_processes(j)]
    if not workers:
        return False
    rng.choice(workers).send_signal(signal.SIGKILL)
    return True


async def table(dsn: str, query: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(query)]
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
async def test_exactly_once_through_worker_and_control_plane_kills(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: Any, pg_dsn: str, pg_schema: str, backend: str
) -> None:
    rng = random.Random(f"chaos-{backend}")
    topic = await kafka_topic(partitions=PARTITIONS)
    events = make_events(seed=42)
    files = []
    source = {
        "type": "kafka",
        "config": {"bootstrap_servers": [kafka_bootstrap], "topic": topic, "start_from": "earliest"},
    }
    for i, body in enumerate(jobs(source, pg_dsn, pg_schema, backend)):
        path = tmp_path / f"job{i}.json"
        path.write_bytes(orjson.dumps(body))
        files.append(str(path))
    home = tmp_path / "home"
    control = subprocess.Popen(
        [sys.executable, str(HERE / "control_plane_process.py"), str(home), *files],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert control.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(control.stdout.readline), 60)
        job_ids: list[str] = orjson.loads(line)
        producer = asyncio.create_task(produce(kafka_bootstrap, topic, events, rounds=30))

        kills = 0
        for _ in range(3):
            await asyncio.sleep(rng.uniform(1.0, 2.5))
            kills += await kill_a_worker(rng, job_ids)
        control.send_signal(signal.SIGKILL)  # the control plane dies with its jobs running
        control.wait(10)
    finally:
        if control.poll() is None:
            control.kill()
            control.wait()

    async with JobManager(16, home=home) as jm:
        for _ in range(2):
            await asyncio.sleep(rng.uniform(1.5, 3.0))
            kills += await kill_a_worker(rng, job_ids)
        await producer
        assert kills >= 3

        want_windows = expected_windows(events)
        want_matches = expected_matches(events)
        window_query = f'SELECT key, window_start, window_end, n, total FROM "{pg_schema}".windows'
        match_query = f'SELECT key, start_time, end_time, event_count FROM "{pg_schema}".matches'
        deadline = asyncio.get_running_loop().time() + 120
        while True:
            got_windows = await table(pg_dsn, window_query)
            got_matches = await table(pg_dsn, match_query)
            if len(got_windows) >= len(want_windows) and len(got_matches) >= len(want_matches):
                break
            statuses = [await jm.get_job_status(j) for j in job_ids]
            assert JobStatus.FAILED not in statuses, [(await jm.get_job_details(j)).message for j in job_ids]
            progress = (len(got_windows), len(want_windows), len(got_matches), len(want_matches))
            assert asyncio.get_running_loop().time() < deadline, progress
            await asyncio.sleep(0.5)
        # two checkpoints of every job later (the sinks commit with each; the first may have been in
        # flight), anything written twice would be there
        seen_at = {j: (await jm.get_job_metrics(j)).checkpoint_count for j in job_ids}

        async def two_more_checkpoints() -> bool:
            counts = {j: (await jm.get_job_metrics(j)).checkpoint_count for j in job_ids}
            return all(counts[j] >= seen_at[j] + 2 for j in job_ids)

        await wait_until(two_more_checkpoints, what="two more checkpoints of every job", within=30)
        got_windows = sorted((k, s, e, n, round(t, 4)) for k, s, e, n, t in await table(pg_dsn, window_query))
        got_matches = sorted(await table(pg_dsn, match_query))
        assert got_windows == want_windows
        assert got_matches == want_matches
        restarts = [(await jm.get_job_details(j)).restarts for j in job_ids]
        assert sum(restarts) >= 1
        for job_id in job_ids:
            await jm.cancel_job(job_id)
    assert not any(worker_processes(j) for j in job_ids)


FILE_CARDS = 400
FILE_EVENTS_PER_CARD = 600  # 240k events per job: long enough for kills to land mid-run


def write_event_files(directory: Path, events: list[tuple[int, dict[str, Any]]]) -> str:
    """One JSON-lines file per partition, so each card's events are in one file and in time order."""
    directory.mkdir()
    handles = [(directory / f"part-{p}.jsonl").open("wb") for p in range(PARTITIONS)]
    try:
        for partition, event in events:
            handles[partition].write(orjson.dumps(event) + b"\n")
    finally:
        for handle in handles:
            handle.close()
    return str(directory / "part-*.jsonl")


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
async def test_exactly_once_from_files_through_worker_and_control_plane_kills(
    tmp_path: Path, pg_dsn: str, pg_schema: str, backend: str
) -> None:
    """Bounded file input: every job must finish, with the exact result, however often it was killed."""
    rng = random.Random(f"file-chaos-{backend}")
    events = make_events(seed=7, cards=FILE_CARDS, per_card=FILE_EVENTS_PER_CARD)
    # each card lives in one file (write_event_files): declared, so the keyed steps need no repartition
    path = write_event_files(tmp_path / "input", events)
    source = {"type": "file", "config": {"path": path, "partitioned_by": "card_id"}}
    files = []
    for i, body in enumerate(jobs(source, pg_dsn, pg_schema, backend)):
        body["config"]["checkpoint_interval_ms"] = 200
        path = tmp_path / f"job{i}.json"
        path.write_bytes(orjson.dumps(body))
        files.append(str(path))
    home = tmp_path / "home"
    control = subprocess.Popen(
        [sys.executable, str(HERE / "control_plane_process.py"), str(home), *files],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    kills = 0
    try:
        assert control.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(control.stdout.readline), 60)
        job_ids: list[str] = orjson.loads(line)
        for _ in range(3):
            await asyncio.sleep(rng.uniform(0.3, 0.8))
            kills += await kill_any_worker(rng, job_ids)
        control.send_signal(signal.SIGKILL)
        control.wait(10)
    finally:
        if control.poll() is None:
            control.kill()
            control.wait()

    async with JobManager(16, home=home) as jm:
        await asyncio.sleep(rng.uniform(0.5, 1.0))
        kills += await kill_any_worker(rng, job_ids)
        assert kills >= 3
        deadline = asyncio.get_running_loop().time() + 150
        while True:
            statuses = [await jm.get_job_status(j) for j in job_ids]
            assert JobStatus.FAILED not in statuses, [(await jm.get_job_details(j)).message for j in job_ids]
            if all(s == JobStatus.FINISHED for s in statuses):
                break
            assert asyncio.get_running_loop().time() < deadline, statuses
            await asyncio.sleep(0.5)
        restarts = [(await jm.get_job_details(j)).restarts for j in job_ids]
        assert sum(restarts) >= 1

    window_query = f'SELECT key, window_start, window_end, n, total FROM "{pg_schema}".windows'
    match_query = f'SELECT key, start_time, end_time, event_count FROM "{pg_schema}".matches'
    got_windows = sorted((k, s, e, n, round(t, 4)) for k, s, e, n, t in await table(pg_dsn, window_query))
    assert got_windows == expected_windows(events)
    assert sorted(await table(pg_dsn, match_query)) == expected_matches(events)
    assert not any(worker_processes(j) for j in job_ids)
