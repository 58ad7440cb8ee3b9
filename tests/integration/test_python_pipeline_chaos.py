"""The whole Python pipeline under chaos: files or Kafka (declared ``partitioned_by: card_id``) ->
python map -> python filter -> key_by card_id -> a keyed process class with map state and event-time
timers (``LongSessions``) -> PostgreSQL (exactly once), parallelism 2, memory and rocksdb, workers
SIGKILLed mid-run; and a savepoint restarted at parallelism 1. A python map may rewrite any field, so
the plan regroups by card after it: at parallelism 2 the records cross worker processes through the
job's internal topic on the test broker (at parallelism 1 the regrouping runs in process; the
savepoint moves key groups from two tasks to one). The table must equal the
reference computed here in plain Python from the input: no row lost, none duplicated, none changed."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from python_chaos import (
    kafka_partition,
    kill_workers,
    produce_between_kills,
    python_job,
    settled_rows,
    use_userpkg,
    wait_finished,
)

from heliosdb_streaming.job import JobConfigOverrides, JobManager, RestartOptions
from heliosdb_streaming.testing.waits import wait_until

pytestmark = [pytest.mark.timeout(300), pytest.mark.postgres, pytest.mark.kafka]

FILES, PER_FILE, CARDS = 4, 4_000, 10
STAGGER, SPAN = 300, 1_000  # card j of a file is active from event STAGGER*j for SPAN events
BASE_TS = 1_767_225_600_000
SECOND = 1_000  # event i of a file happens at BASE_TS + i seconds (+ the file's index in ms)
MARGIN = 50 * SECOND  # no session of the Kafka cut ends this close to the final watermark
PARTITIONS, TAIL_PER_PARTITION = 4, 4
COLUMNS = "kind, card_id, total, count, merchants, at"


@pytest.fixture(autouse=True)
def userpkg_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    use_userpkg(monkeypatch)


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
            if until is None or ends <= until:
                rows.append(("session", card, total, len(session), len(merchants), ends))
    return sorted(rows)


def job_body(
    name: str, source: dict[str, Any], dsn: str, schema: str, backend: str, fee: str = "slow_fee"
) -> dict[str, Any]:
    steps = [
        {"type": "python", "config": {"function": f"helios_userpkg.records:{fee}"}},
        {"type": "python", "config": {"function": "helios_userpkg.records:is_large", "kind": "filter"}},
        {"type": "key_by", "config": {"key": "card_id"}},
        {"type": "process", "config": {"function": "helios_userpkg.fraud:LongSessions"}},
    ]
    return python_job(name, source, steps, dsn=dsn, table=f"{schema}.sessions", backend=backend)


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


def tail_events(after: int) -> list[dict[str, Any]]:
    """One event each on fresh cards, ``TAIL_PER_PARTITION`` per partition, just after ``after``: an
    unbounded source never ends, so an event-time timer fires only once its watermark passes it, and
    a process step's watermark moves only with the events of its own split (one Kafka partition).
    A partition that got no tail event (16 names left to the hash once put none in partition 2) keeps
    its watermark at its own last event, far before the end, and its sessions open."""
    cards: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    for k in itertools.count():
        if all(len(c) == TAIL_PER_PARTITION for c in cards.values()):
            break
        chosen = cards[kafka_partition(f"tail-{k:03d}".encode(), PARTITIONS)]
        if len(chosen) < TAIL_PER_PARTITION:
            chosen.append(f"tail-{k:03d}")
    names = sorted(itertools.chain.from_iterable(cards.values()))
    return [
        {"tx": f"tx-{card}", "card_id": card, "merchant": "m00", "amount": 100.0, "timestamp": after + 1 + i}
        for i, card in enumerate(names)
    ]


def split_watermarks(events: list[dict[str, Any]]) -> dict[int, int]:
    """The watermark each partition's process step reaches (latest time - 1 of what passes the filter)."""
    from helios_userpkg.records import is_large

    last: dict[int, int] = {}
    for e in filter(is_large, events):
        p = kafka_partition(e["card_id"].encode(), PARTITIONS)
        last[p] = max(last.get(p, e["timestamp"]), e["timestamp"])
    return {p: ts - 1 for p, ts in last.items()}


async def test_kafka_pipeline_is_exact_through_worker_kills(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: Any, pg_dsn: str, pg_schema: str
) -> None:
    """Kafka (4 partitions, the card as message key, produced while the job runs, a worker killed
    after each quarter). The input never ends, so sessions still open at the final watermark stay
    open: the reference cuts there, and a tail on fresh cards in every partition brings every
    split's watermark past it (checked here, before the engine runs)."""
    topic = await kafka_topic(partitions=PARTITIONS)
    files = make_events(seed=7)
    events = sorted((e for f in files for e in f), key=lambda e: e["timestamp"])
    final_watermark = events[-1]["timestamp"]
    tail = tail_events(final_watermark)
    events += tail
    want = reference([*files, tail], until=final_watermark)
    marks = split_watermarks(events)
    assert len(marks) == PARTITIONS and min(marks.values()) >= final_watermark, marks
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

    def missing(got: list[tuple[Any, ...]]) -> list[tuple[int, tuple[Any, ...]]]:
        """Rows not (yet) written, with the partition (split) of their card."""
        return [(kafka_partition(r[1].encode(), PARTITIONS), r) for r in sorted(set(want) - set(got))]

    async with JobManager(4, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job(job_body("py-pipeline-kafka", source, pg_dsn, pg_schema, "rocksdb"))
        rng = random.Random("pipeline-kafka")
        kills = await produce_between_kills(
            kafka_bootstrap, topic, events, job_id=job_id, rng=rng, partitions=PARTITIONS
        )
        got = await settled_rows(jm, job_id, lambda: rows(pg_dsn, pg_schema), want, explain=missing)
        assert got == want
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
