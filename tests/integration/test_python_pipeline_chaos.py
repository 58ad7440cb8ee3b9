"""The whole Python pipeline under chaos: files (declared ``partitioned_by: card_id``) ->
python map -> python filter -> key_by card_id -> a keyed process class with map state and event-time
timers (``LongSessions``) -> PostgreSQL (exactly once), parallelism 2, memory and rocksdb, workers
SIGKILLed mid-run; and a savepoint restarted at parallelism 1. A python map may rewrite any field, so
the plan regroups by card after it: at parallelism 2 the records cross worker processes through the
job's internal topic on the test broker (at parallelism 1 the regrouping runs in process; the
savepoint moves key groups from two tasks to one). The table must equal the
reference computed here in plain Python from the input: no row lost, none duplicated, none changed."""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from heliosdb_streaming.embedded.launcher import worker_processes
from heliosdb_streaming.job import JobConfigOverrides, JobManager, JobStatus, RestartOptions
from heliosdb_streaming.testing.waits import wait_until

pytestmark = [pytest.mark.timeout(300), pytest.mark.postgres, pytest.mark.kafka]

USERPKG = Path(__file__).resolve().parents[1] / "userpkg"
FILES, PER_FILE, CARDS = 4, 4_000, 10
STAGGER, SPAN = 300, 1_000  # card j of a file is active from event STAGGER*j for SPAN events
BASE_TS = 1_767_225_600_000
SECOND = 1_000  # event i of a file happens at BASE_TS + i seconds (+ the file's index in ms)
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


def reference(files: list[list[dict[str, Any]]]) -> list[tuple[Any, ...]]:
    """What the pipeline must write, computed without the engine: the same map and filter, then per
    card (in its file's order) sessions split where events are more than the gap apart; an alert the
    first time a session's total passes the limit; a session row (at = last event + gap) for each."""
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
        for prev, e in itertools.pairwise(events):
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
    pattern = str(directory / "part-*.jsonl")
    source = {"type": "file", "config": {"path": pattern, "partitioned_by": "card_id"}}
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
        body = file_job(tmp_path / "input", kafka_bootstrap, pg_dsn, pg_schema, backend)
        job_id = await jm.submit_job(body)
        kills = await kill_workers(job_id, random.Random(f"pipeline-{backend}"), 3)
        await wait_finished(jm, job_id)
        details = await jm.get_job_details(job_id)
    assert kills >= 2 and details.restarts >= 1, (kills, details.restarts)
    assert await rows(pg_dsn, pg_schema) == want


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
