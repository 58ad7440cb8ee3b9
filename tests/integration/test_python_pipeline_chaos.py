"""The whole Python pipeline under chaos: files or Kafka (declared ``partitioned_by: card_id``) ->
python map -> python filter -> key_by card_id -> a keyed process class with map state and event-time
timers (``LongSessions``) -> PostgreSQL (exactly once), parallelism 2, memory and rocksdb, workers
SIGKILLed mid-run; and a savepoint restarted at parallelism 1. A python map may rewrite any field, so
the plan regroups by card after it (internal topics on the test broker). The table must equal the
reference computed here in plain Python from the input: no row lost, none duplicated, none changed."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from heliosdb_streaming.embedded.launcher import worker_processes
from heliosdb_streaming.job import JobConfigOverrides, JobManager, JobStatus, RestartOptions
from heliosdb_streaming.testing.waits import wait_until

pytestmark = [pytest.mark.timeout(300), pytest.mark.postgres, pytest.mark.kafka]

USERPKG = Path(__file__).resolve().parents[1] / "userpkg"
FILES, PER_FILE, CARDS = 4, 4_000, 10
STAGGER, SPAN = 300, 1_000  # card j of a file is active from event STAGGER*j for SPAN events
BASE_TS = 1_767_225_600_000
SECOND = 1_000  # event i of a file happens at BASE_TS + i seconds (+ the file's index in ms)
MARGIN = 50 * SECOND  # no session of the Kafka cut ends this close to the final watermark
COLUMNS = "kind, card_id, total, count, merchants, at"


@pytest.fixture(autouse=True)
def userpkg_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(USERPKG))  # the control plane's submit check
    monkeypatch.setenv("PYTHONPATH", str(USERPKG))  # what its workers inherit


def make_events(seed: int) -> list[list[dict[str, Any]]]:
    """Per file, events in time order; each file has its own cards, a few active at a time, so
    some sessions end mid-stream (their timers fire on the watermark) and the rest at the end."""
    rng = random.Random(seed)
    files = []
    for f in range(FILES):
        events = []
        for i in range(PER_FILE):
            active = [j for j in range(CARDS - 1) if STAGGER * j <= i < STAGGER * j + SPAN]
            active += [CARDS - 1] if i >= STAGGER * (CARDS - 1) else []
            events.append(
                {
                    "tx": f"tx-{f}-{i}",
                    "card_id": f"card-{f}-{rng.choice(active):02d}",
                    "merchant": f"m{rng.randrange(12):02d}",
                    "amount": round(rng.uniform(1, 500), 2),
                    "timestamp": BASE_TS + i * SECOND + f,
                }
            )
        files.append(events)
    return files


def write_files(directory: Path, files: list[list[dict[str, Any]]]) -> None:
    directory.mkdir()
    for f, events in enumerate(files):
        (directory / f"part-{f}.jsonl").write_bytes(b"\n".join(map(orjson.dumps, events)) + b"\n")


def reference(files: list[list[dict[str, Any]]], until: int | None = None) -> list[tuple[Any, ...]]:
    """What the pipeline must write, computed without the engine: the same map and filter, then per
    card (in its file's order) sessions split where events are more than the gap apart; an alert the
    first time a session's total passes the limit; a session row (at = last event + gap) for every
    session, or, with ``until`` (an unbounded source's final watermark), for those ending by then."""
    from helios_userpkg.fraud import LIMIT, LongSessions
    from helios_userpkg.records import is_large, slow_fee

    gap = LongSessions.gap_ms
    per_card: dict[str, list[dict[str, Any]]] = {}
    for events in files:
        for r in map(slow_fee, events):
            if is_large(r):
                per_card.setdefault(r["card_id"], []).append(r)
    rows: list[tuple[Any, ...]] = []
    for card, events in per_card.items():
        sessions: list[list[dict[str, Any]]] = [[events[0]]]
        for prev, e in zip(events, events[1:], strict=False):
            if e["timestamp"] > prev["timestamp"] + gap:
                sessions.append([])
            sessions[-1].append(e)
        for session in sessions:
            total, alerted, merchants = 0.0, False, set()
            for e in session:
                total = round(total + e["amount"], 2)
                merchants.add(e["merchant"])
                if total > LIMIT and not alerted:
                    alerted = True
                    rows.append(("alert", card, total, 0, len(merchants), e["timestamp"]))
            ends = session[-1]["timestamp"] + gap
            if until is None or ends <= until:
                rows.append(("session", card, total, len(session), len(merchants), ends))
    return sorted(rows)


def job_body(
    name: str, source: dict[str, Any], dsn: str, schema: str, backend: str, fee: str = "slow_fee"
) -> dict[str, Any]:
    return {
        "name": name,
        "config": {
            "parallelism": 2,
            "state_backend": backend,
            "checkpoint_interval_ms": 200,
            "restart_strategy": {"type": "fixed_delay", "attempts": 100, "delay_ms": 100},
            "on_error": "fail",
        },
        "sources": [source],
        "transformations": [
            {"type": "python", "config": {"function": f"helios_userpkg.records:{fee}"}},
            {"type": "python", "config": {"function": "helios_userpkg.records:is_large", "kind": "filter"}},
            {"type": "key_by", "config": {"key": "card_id"}},
            {"type": "process", "config": {"function": "helios_userpkg.fraud:LongSessions"}},
        ],
        "sinks": [{"type": "database", "config": {"connection_string": dsn, "table": f"{schema}.sessions"}}],
    }


def file_job(
    directory: Path, kafka: str, dsn: str, schema: str, backend: str, fee: str = "slow_fee"
) -> dict[str, Any]:
    source = {"type": "file", "config": {"path": str(directory / "part-*.jsonl"), "partitioned_by": "card_id"}}
    body = job_body(f"py-pipeline-{backend}", source, dsn, schema, backend, fee)
    body["config"]["repartition"] = {"bootstrap_servers": [kafka]}
    return body


async def rows(dsn: str, schema: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return sorted(tuple(r) for r in await conn.fetch(f'SELECT {COLUMNS} FROM "{schema}".sessions'))
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()


async def kill_workers(job_id: str, rng: random.Random, times: int) -> int:
    kills = 0
    for _ in range(times):
        await asyncio.sleep(rng.uniform(0.8, 1.5))
        if workers := worker_processes(job_id):
            rng.choice(workers).kill()
            kills += 1
    return kills


async def wait_finished(jm: JobManager, job_id: str, within: float = 200) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while (status := await jm.get_job_status(job_id)) != JobStatus.FINISHED:
        assert status != JobStatus.FAILED, (await jm.get_job_details(job_id)).message
        assert asyncio.get_running_loop().time() < deadline, status
        await asyncio.sleep(0.3)


def check_input(want: list[tuple[Any, ...]]) -> None:
    """The input exercises what it should: alerts, and sessions ended by timers mid-stream."""
    sessions = [r for r in want if r[0] == "session"]
    assert len(sessions) == FILES * CARDS  # one session per card: no split decided by timing
    assert any(r[0] == "alert" for r in want)
    assert sum(r[5] < BASE_TS + (PER_FILE - 1) * SECOND for r in sessions) >= 3 * FILES


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
async def test_files_pipeline_is_exact_through_worker_kills(
    tmp_path: Path, kafka_bootstrap: str, pg_dsn: str, pg_schema: str, backend: str
) -> None:
    files = make_events(seed=len(backend))
    write_files(tmp_path / "input", files)
    want = reference(files)
    check_input(want)
    async with JobManager(4, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job(file_job(tmp_path / "input", kafka_bootstrap, pg_dsn, pg_schema, backend))
        kills = await kill_workers(job_id, random.Random(f"pipeline-{backend}"), 3)
        await wait_finished(jm, job_id)
        details = await jm.get_job_details(job_id)
    assert kills >= 2 and details.restarts >= 1, (kills, details.restarts)
    assert await rows(pg_dsn, pg_schema) == want


async def test_kafka_pipeline_is_exact_through_worker_kills(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: Any, pg_dsn: str, pg_schema: str
) -> None:
    """Kafka (4 partitions, the card as message key, produced while the job runs). The input never
    ends, so sessions still open at the final watermark stay open: the reference cuts there. A
    process task's watermark moves only with the cards it owns, so a tail of one event on each of
    many fresh cards (their sessions stay open) brings every task to the end of the input."""
    topic = await kafka_topic(partitions=4)
    files = make_events(seed=7)
    events = sorted((e for f in files for e in f), key=lambda e: e["timestamp"])
    final_watermark = events[-1]["timestamp"]
    tail = [
        {"tx": f"tail-{k}", "card_id": f"tail-{k:02d}", "merchant": "m00", "amount": 100.0, "timestamp": ts}
        for k, ts in enumerate(range(final_watermark + 1, final_watermark + 17))
    ]
    events += tail
    want = reference([*files, tail], until=final_watermark)
    ends = [r[5] for r in reference([*files, tail]) if r[0] == "session"]
    assert not [at for at in ends if final_watermark - MARGIN < at <= final_watermark + MARGIN]
    assert 3 * FILES <= sum(r[0] == "session" for r in want) < FILES * CARDS
    source = {
        "type": "kafka",
        "config": {
            "bootstrap_servers": [kafka_bootstrap],
            "topic": topic,
            "start_from": "earliest",
            "partitioned_by": "card_id",
        },
    }
    rng = random.Random("pipeline-kafka")
    async with JobManager(4, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job(job_body("py-pipeline-kafka", source, pg_dsn, pg_schema, "rocksdb"))
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
        await producer.start()
        kills = 0
        try:
            step = len(events) // 4
            for start in range(0, len(events), step):
                for e in events[start : start + step]:
                    await producer.send(topic, orjson.dumps(e), key=e["card_id"].encode())
                await producer.flush()
                kills += await kill_workers(job_id, rng, 1)
        finally:
            await producer.stop()
        deadline = asyncio.get_running_loop().time() + 60
        while len(got := await rows(pg_dsn, pg_schema)) < len(want):
            status = await jm.get_job_status(job_id)
            assert status != JobStatus.FAILED, (await jm.get_job_details(job_id)).message
            assert asyncio.get_running_loop().time() < deadline, (sorted(set(want) - set(got)), final_watermark)
            await asyncio.sleep(0.5)
        seen = (await jm.get_job_metrics(job_id)).checkpoint_count

        async def two_more_checkpoints() -> bool:  # anything written twice would be committed by then
            return (await jm.get_job_metrics(job_id)).checkpoint_count >= seen + 2

        await wait_until(two_more_checkpoints, what="two more checkpoints", within=30)
        assert await rows(pg_dsn, pg_schema) == want
        assert kills >= 2 and (await jm.get_job_details(job_id)).restarts >= 1
        await jm.cancel_job(job_id)


async def test_savepoint_restarted_at_parallelism_one_is_exact(
    tmp_path: Path, kafka_bootstrap: str, pg_dsn: str, pg_schema: str
) -> None:
    files = make_events(seed=3)
    write_files(tmp_path / "input", files)
    async with JobManager(4, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job(
            file_job(tmp_path / "input", kafka_bootstrap, pg_dsn, pg_schema, "rocksdb", "slower_fee")
        )

        async def running() -> bool:
            return (await jm.get_job_metrics(job_id)).events_processed > 2_000

        await wait_until(running, what="records processed", within=60, interval=0.05)
        savepoint = await jm.cancel_job_with_savepoint(job_id)
        at_savepoint = len(await rows(pg_dsn, pg_schema))
        await jm.restart_job(
            job_id, RestartOptions(savepoint_id=savepoint, config_overrides=JobConfigOverrides(parallelism=1))
        )
        await wait_finished(jm, job_id)
        details = await jm.get_job_details(job_id)
        logs = [e.message for e in await jm.get_job_logs(job_id)]
    assert details.config.parallelism == 1
    assert any(f"restarting from savepoint {savepoint}" in m for m in logs)
    want = reference(files)
    assert at_savepoint < len(want)  # the savepoint was taken mid-run
    assert await rows(pg_dsn, pg_schema) == want
