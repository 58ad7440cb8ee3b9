"""The spec's 10 integration tests, over real HTTP against a ``helios server`` subprocess.

Every pipeline is the spec's own fraud pipeline body (``examples/fraud_pipeline.json``: Kafka source ->
filter ``amount > 10000`` -> CEP ``A B+ C`` within 1h -> database sink), pointed at the session's
Kafka-protocol broker and a per-test PostgreSQL schema, with ``checkpoint_interval_ms`` lowered to 1000
(the database sink commits exactly once per checkpoint). Known transactions go to a 4-partition topic,
and the PostgreSQL rows are compared with a result computed here, independently of the engine.

The CEP semantics the expected result follows: every variable is undefined (any event matches) and
there is no key, so per task (one Kafka partition) the filtered events form one sequence; a match is
the longest run of consecutive events within 1h of its first event (greedy ``B+``), at least 3 events,
reported once the partition's next event is more than 1h after the first (or the watermark passes it);
the next match starts after the reported one. Each partition ends with one sentinel event 10 days later,
so that every real run is followed; no two filtered events are exactly 1h apart.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import asyncpg
import orjson
import psutil
import pytest
from aiokafka import AIOKafkaProducer

from heliosdb_streaming.embedded.launcher import worker_processes
from heliosdb_streaming.testing.server import HeliosServerProcess

pytestmark = [pytest.mark.timeout(240), pytest.mark.kafka, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4
HOUR_MS = 3_600_000
BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
SERVER_SLOTS = 16

Events = dict[int, list[dict[str, Any]]]  # partition -> its events in order


# ------------------------------------------------------------------------------------------- data


def make_events(
    seed: int, per_partition: int, start_ms: int = BASE_MS, after: Events | None = None
) -> Events:
    """Transactions per partition in time order: small and big amounts, bursts and long gaps.

    No big (filtered) transaction is within 2 s of exactly 1h after another one, ``after``'s included.
    """
    rng = random.Random(seed)
    out: Events = {}
    for p in range(PARTITIONS):
        clock = start_ms + p * 7_919  # partitions never share a timestamp
        big = filtered_times((after or {}).get(p, []))
        events: list[dict[str, Any]] = []
        for i in range(per_partition):
            gap_min = rng.uniform(1, 25) if rng.random() < 0.7 else rng.uniform(40, 150)
            clock += int(gap_min * 60_000) + rng.randint(0, 999)
            if rng.random() < 0.6:
                amount = round(rng.uniform(10_001, 50_000), 2)
                while any(abs(clock - t - HOUR_MS) <= 2_000 for t in big[-200:]):
                    clock += 5_000
                big.append(clock)
            else:
                amount = round(rng.uniform(5, 9_999), 2)
            card = f"card-{p}-{rng.randrange(3)}"
            events.append(
                {
                    "transaction_id": f"tx-{seed}-{p}-{i}",
                    "card_id": card,
                    "amount": amount,
                    "timestamp": clock,
                }
            )
        out[p] = events
    return out


def continue_events(previous: Events, seed: int, per_partition: int) -> Events:
    """More events for each partition, after the last one of ``previous``."""
    start = max(e["timestamp"] for events in previous.values() for e in events) + 30 * 60_000
    return make_events(seed, per_partition, start, after=previous)


def with_sentinels(events: Events) -> Events:
    """One filtered event per partition, 10 days after its last: every real run gets followed."""
    out: Events = {}
    for p, seq in events.items():
        last = seq[-1]["timestamp"] if seq else BASE_MS
        sentinel = {"transaction_id": f"sentinel-{p}", "card_id": f"card-{p}-0", "amount": 99_999.0}
        out[p] = [*seq, {**sentinel, "timestamp": last + 10 * 24 * HOUR_MS}]
    return out


def concat(*parts: Events) -> Events:
    return {p: [e for part in parts for e in part.get(p, [])] for p in range(PARTITIONS)}


def filtered_times(seq: list[dict[str, Any]]) -> list[int]:
    return [e["timestamp"] for e in seq if e["amount"] > 10_000]


def expected_matches(events: Events) -> list[tuple[int, int, int]]:
    """(start_time, end_time, event_count) of every match, per the semantics in the module docstring."""
    out = []
    for seq in events.values():
        ts = filtered_times(seq)
        for a in range(len(ts)):
            for b in range(a + 1, len(ts)):
                if ts[b] - ts[a] > HOUR_MS + 5_000:
                    break
                assert abs(ts[b] - ts[a] - HOUR_MS) > 1_000, "test data sits on the 1h boundary"
        n, i = len(ts), 0
        while i < n:
            j = i
            while j + 1 < n and ts[j + 1] - ts[i] <= HOUR_MS:
                j += 1
            if j - i + 1 >= 3 and j + 1 < n:
                out.append((ts[i], ts[j], j - i + 1))
                i = j + 1
            else:
                i += 1
    return sorted(out)


def count(events: Events) -> int:
    return sum(len(seq) for seq in events.values())


async def produce(
    bootstrap: str, topic: str, events: Events, *, extra: Sequence[tuple[int, bytes]] = ()
) -> None:
    """Writes the events to their partitions, keyed by card, with the event time as Kafka timestamp."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for p, seq in events.items():
            for e in seq:
                await producer.send(
                    topic,
                    orjson.dumps(e),
                    key=e["card_id"].encode(),
                    partition=p,
                    timestamp_ms=e["timestamp"],
                )
        for p, raw in extra:
            await producer.send(topic, raw, partition=p)
        await producer.flush()
    finally:
        await producer.stop()


# ----------------------------------------------------------------------------------------- server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeliosServerProcess]:
    process = HeliosServerProcess(tmp_path_factory.mktemp("spec-http") / "home", max_parallelism=SERVER_SLOTS)
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log_tail()


# ----------------------------------------------------------------------------------------- client


@dataclass
class Reply:
    status: int
    body: Any
    text: str


@dataclass
class Api:
    session: aiohttp.ClientSession
    base: str
    statuses: list[int] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)

    async def call(self, method: str, path: str, **kw: Any) -> Reply:
        async with self.session.request(method, self.base + path, **kw) as response:
            text = await response.text()
            self.statuses.append(response.status)
            body = json.loads(text) if response.content_type == "application/json" else None
            return Reply(response.status, body, text)

    async def ok(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        reply = await self.call(method, path, **kw)
        assert reply.status == status, f"{method} {path}: {reply.status} {reply.text}"
        return reply.body

    async def submit(self, body: dict[str, Any]) -> str:
        created = await self.ok("POST", "/api/v1/jobs", 201, json=body)
        assert created["status"] == "submitted" and TS.match(created["submitted_at"])
        job_id: str = created["job_id"]
        self.submitted.append(job_id)
        return job_id

    async def details(self, job_id: str) -> dict[str, Any]:
        details: dict[str, Any] = await self.ok("GET", f"/api/v1/jobs/{job_id}")
        return details

    async def wait_status(self, job_id: str, wanted: set[str], within: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            details = await self.details(job_id)
            if details["status"] in wanted:
                return details
            assert time.monotonic() < deadline, (
                f"{job_id} is {details['status']}, not {wanted}: {details['message']}"
            )
            await asyncio.sleep(0.1)

    async def metrics(self, job_id: str) -> dict[str, Any]:
        body: dict[str, Any] = await self.ok("GET", f"/api/v1/jobs/{job_id}/metrics", params={"window": "1m"})
        return body

    async def wait_consumed(self, job_id: str, n: int, within: float = 60) -> dict[str, Any]:
        """Waits until the job has read ``n`` records; fails at once if it reads more."""
        deadline = time.monotonic() + within
        while True:
            body = await self.metrics(job_id)
            seen = body["metrics"]["events_processed_total"]
            assert seen <= n, f"{job_id} read {seen} records, only {n} were produced"
            if seen == n:
                return body
            assert time.monotonic() < deadline, f"{job_id} read {seen} of {n} records"
            await asyncio.sleep(0.1)


@pytest.fixture
async def api(server: HeliosServerProcess, pg_schema: str) -> AsyncIterator[Api]:
    """A client of the server; cancels the test's jobs that are still active (before its schema goes)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:
        client = Api(session, server.url)
        try:
            yield client
        finally:
            for job_id in client.submitted:
                reply = await client.call("DELETE", f"/api/v1/jobs/{job_id}")
                assert reply.status in (200, 409), reply.text
            assert all(s < 500 for s in client.statuses), sorted(set(client.statuses))


# --------------------------------------------------------------------------------------- pipeline


def fraud_pipeline(bootstrap: str, topic: str, dsn: str, table: str) -> dict[str, Any]:
    """The spec's body as written, on this test's broker, topic and table, checkpointing every second."""
    body: dict[str, Any] = json.loads((REPO / "examples" / "fraud_pipeline.json").read_text())
    assert body["config"] == {
        "parallelism": 4,
        "checkpoint_interval_ms": 60000,
        "state_backend": "rocksdb",
        "restart_strategy": "fixed_delay",
    }
    assert [t["type"] for t in body["transformations"]] == ["filter", "cep"]
    body["config"]["checkpoint_interval_ms"] = 1000
    body["sources"][0]["config"].update(bootstrap_servers=[bootstrap], topic=topic)
    body["sinks"][0]["config"].update(connection_string=dsn, table=table)
    return body


@dataclass
class Pipeline:
    bootstrap: str
    topic: str
    dsn: str
    schema: str
    table: str = "fraud_alerts"

    @property
    def body(self) -> dict[str, Any]:
        return fraud_pipeline(self.bootstrap, self.topic, self.dsn, f"{self.schema}.{self.table}")

    async def produce(self, events: Events, **kw: Any) -> None:
        await produce(self.bootstrap, self.topic, events, **kw)

    async def rows(self) -> list[tuple[int, int, int]]:
        conn = await asyncpg.connect(self.dsn)
        try:
            records = await conn.fetch(
                f'SELECT start_time, end_time, event_count FROM "{self.schema}"."{self.table}"'
            )
        except asyncpg.UndefinedTableError:
            return []
        finally:
            await conn.close()
        return sorted((r[0], r[1], r[2]) for r in records)

    async def wait_rows(
        self, api: Api, job_id: str, want: list[tuple[int, int, int]], within: float = 60
    ) -> None:
        """Waits for as many rows as expected, then checks they are exactly the expected ones, and stay."""
        deadline = time.monotonic() + within
        while True:
            rows = await self.rows()
            assert len(rows) <= len(want), "more rows than matches: duplicates?"
            if len(rows) == len(want):
                break
            details = await api.details(job_id)
            assert details["status"] in ("submitted", "running"), details["message"]
            assert time.monotonic() < deadline, f"{len(rows)} of {len(want)} rows after {within}s"
            await asyncio.sleep(0.2)
        assert rows == want
        # two checkpoints later (the sink commits with each; the first may have been in flight when the
        # rows were read): still exactly these rows
        seen_at = (await api.details(job_id))["metrics"]["checkpoint_count"]

        async def two_more_checkpoints() -> bool:
            details = await api.details(job_id)
            assert details["status"] == "running", details["message"]
            return bool(details["metrics"]["checkpoint_count"] >= seen_at + 2)

        await wait_for(two_more_checkpoints, "two more checkpoints", within=30)
        assert await self.rows() == want


@pytest.fixture
async def pipeline(kafka_bootstrap: str, kafka_topic: Any, pg_dsn: str, pg_schema: str) -> Pipeline:
    topic = await kafka_topic(partitions=PARTITIONS, prefix="transactions")
    return Pipeline(kafka_bootstrap, topic, pg_dsn, pg_schema)


def datagen_job(name: str, *, count: int | None, rate: float = 0) -> dict[str, Any]:
    source: dict[str, Any] = {"partitions": 1, "seed": 1, "keys": 10, "rate_per_sec": rate}
    if count is not None:
        source["count"] = count
    return {
        "name": name,
        "config": {"parallelism": 1, "restart_strategy": "none"},
        "sources": [{"type": "datagen", "config": source}],
        "transformations": [{"type": "filter", "config": {"condition": "amount > 100"}}],
        "sinks": [{"type": "discard", "config": {}}],
    }


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


# -------------------------------------------------------------------------------------------- tests


# 1. Submit job and verify status
async def test_1_submit_job_and_verify_status(api: Api, pipeline: Pipeline) -> None:
    job_id = await api.submit(pipeline.body)
    assert re.fullmatch(r"job-[0-9a-f-]{36}", job_id)
    details = await api.wait_status(job_id, {"running"})
    assert details["name"] == "fraud_detection_pipeline"
    assert details["config"] == {
        "parallelism": 4,
        "checkpoint_interval_ms": 1000,
        "state_backend": "rocksdb",
        "restart_strategy": "fixed_delay",
        "on_error": "skip",
        "checkpoints_retained": 3,
        "max_state_mb": 1024,  # (addition)
        "max_parallelism": 128,  # (addition)
        "idle_timeout_ms": 30000,  # (addition)
        "repartition": None,  # (addition)
        "savepoint_interval_ms": 0,  # (addition)
        "savepoints_retained": 3,  # (addition)
        "autoscaler": {
            "enabled": False,
            "min_parallelism": 1,
            "max_parallelism": 1024,
            "target_utilization": 0.7,
            "stabilization_ms": 300000,
            "cooldown_ms": 300000,
            "metrics_window_ms": 60000,
            "mode": "apply",
        },  # (addition)
    }
    assert [(t["name"], t["status"]) for t in details["tasks"]] == [
        ("kafka-source", "running"),
        ("filter", "running"),
        ("cep-matcher", "running"),
        ("database-sink", "running"),
    ]
    assert TS.match(details["started_at"]) and details["finished_at"] is None
    assert details["submitted_at"] <= details["started_at"]

    events = with_sentinels(make_events(1, 120))
    want = expected_matches(events)
    assert len(want) >= 12 and any(c > 3 for _, _, c in want)  # the data exercises B+
    await pipeline.produce(events)
    await pipeline.wait_rows(api, job_id, want)
    listed = await api.ok("GET", "/api/v1/jobs", params={"status": "running"})
    assert job_id in [j["job_id"] for j in listed["jobs"]]
    assert (await api.details(job_id))["status"] == "running"


# 2. Cancel job
async def test_2_cancel_job(api: Api, pipeline: Pipeline) -> None:
    job_id = await api.submit(pipeline.body)
    await api.wait_status(job_id, {"running"})
    first = with_sentinels(make_events(2, 60))
    await pipeline.produce(first)
    await pipeline.wait_rows(api, job_id, expected_matches(first))
    rows = await pipeline.rows()

    cancelled = await api.ok("DELETE", f"/api/v1/jobs/{job_id}")
    assert set(cancelled) == {"job_id", "status", "cancelled_at"}
    assert cancelled["job_id"] == job_id and cancelled["status"] == "cancelled"
    details = await api.details(job_id)
    assert details["status"] == "cancelled" and details["finished_at"] == cancelled["cancelled_at"]
    assert all(t["status"] == "cancelled" for t in details["tasks"])
    again = await api.call("DELETE", f"/api/v1/jobs/{job_id}")
    assert again.status == 409 and again.body["error"]["code"] == "illegal_state_transition"
    assert again.body["error"]["details"] == [{"path": "status", "message": "cancelled"}]

    await pipeline.produce(with_sentinels(continue_events(first, 3, 40)))
    await asyncio.sleep(2.5)  # more than two checkpoint intervals: a running job would have written
    assert await pipeline.rows() == rows
    metrics = await api.metrics(job_id)
    assert metrics["metrics"]["events_processed_total"] == count(first)
    assert metrics["metrics"]["throughput_per_sec"] == 0


# 3. Create savepoint
async def test_3_create_savepoint(api: Api, pipeline: Pipeline, server: HeliosServerProcess) -> None:
    job_id = await api.submit(pipeline.body)
    await api.wait_status(job_id, {"running"})
    first = make_events(4, 80)
    await pipeline.produce(first)
    await api.wait_consumed(job_id, count(first))  # the CEP state now holds open runs

    reply = await api.call(
        "POST", f"/api/v1/jobs/{job_id}/savepoints", json={"description": "Pre-upgrade savepoint"}
    )
    assert reply.status == 201, reply.text
    savepoint = reply.body
    assert set(savepoint) == {"savepoint_id", "job_id", "created_at", "size_bytes", "location", "description"}
    assert re.fullmatch(r"savepoint-[0-9a-f-]{36}", savepoint["savepoint_id"])
    assert savepoint["job_id"] == job_id and savepoint["description"] == "Pre-upgrade savepoint"
    assert TS.match(savepoint["created_at"]) and savepoint["size_bytes"] > 0
    directory = Path(urlparse(savepoint["location"]).path)
    assert directory.is_relative_to(server.home) and (directory / "_manifest.json").is_file()
    listed = await api.ok("GET", f"/api/v1/jobs/{job_id}/savepoints")
    assert listed == {"job_id": job_id, "savepoints": [savepoint]}

    # the job keeps running through the savepoint, and its result stays exact
    assert (await api.details(job_id))["status"] == "running"
    rest = with_sentinels(continue_events(first, 5, 40))
    await pipeline.produce(rest)
    await pipeline.wait_rows(api, job_id, expected_matches(concat(first, rest)))

    deleted = await api.ok("DELETE", f"/api/v1/jobs/{job_id}/savepoints/{savepoint['savepoint_id']}")
    assert deleted == {"savepoint_id": savepoint["savepoint_id"], "deleted": True}
    assert not directory.exists()
    assert (await api.ok("GET", f"/api/v1/jobs/{job_id}/savepoints"))["savepoints"] == []


# 4. Restart from savepoint
async def test_4_restart_from_savepoint(api: Api, pipeline: Pipeline) -> None:
    job_id = await api.submit(pipeline.body)
    await api.wait_status(job_id, {"running"})
    first = make_events(6, 90)
    await pipeline.produce(first)
    await api.wait_consumed(job_id, count(first))

    stopped = await api.ok("DELETE", f"/api/v1/jobs/{job_id}", params={"savepoint": "true"})
    assert stopped["status"] == "cancelled"
    savepoint_id = stopped["savepoint_id"]
    assert [
        s["savepoint_id"] for s in (await api.ok("GET", f"/api/v1/jobs/{job_id}/savepoints"))["savepoints"]
    ] == [savepoint_id]
    rows_at_stop = await pipeline.rows()
    assert rows_at_stop, "the first part of the data completes matches"

    rest = with_sentinels(continue_events(first, 7, 60))
    await pipeline.produce(rest)  # produced while the job is stopped
    restarted = await api.ok(
        "POST",
        f"/api/v1/jobs/{job_id}/restart",
        json={"savepoint_id": savepoint_id, "config_overrides": {"parallelism": 2}},
    )
    assert set(restarted) == {"job_id", "status", "restarted_at", "restored_from_savepoint", "message"}
    assert restarted["job_id"] == job_id and restarted["status"] == "running"
    assert restarted["restored_from_savepoint"] == savepoint_id
    assert restarted["message"] == "Job restarted successfully" and TS.match(restarted["restarted_at"])
    details = await api.details(job_id)
    assert details["config"]["parallelism"] == 2 and details["metrics"]["restarts"] == 1
    assert [t["parallelism"] for t in details["tasks"]] == [2, 2, 2, 2]

    all_events = concat(first, rest)
    await pipeline.wait_rows(api, job_id, expected_matches(all_events))  # nothing lost, nothing twice
    assert set(rows_at_stop) <= set(await pipeline.rows())
    await api.wait_consumed(job_id, count(all_events))  # no record read twice across the restart


# 5. Get job metrics
async def test_5_get_job_metrics(api: Api, pipeline: Pipeline) -> None:
    job_id = await api.submit(pipeline.body)
    await api.wait_status(job_id, {"running"})
    batches = [make_events(10 + i, 150, BASE_MS + i * 400 * HOUR_MS) for i in range(4)]
    throughput_seen = 0.0

    async def feed() -> None:
        for batch in batches:
            await pipeline.produce(batch)
            await asyncio.sleep(0.5)

    feeder = asyncio.create_task(feed())
    try:
        while not feeder.done():
            body = await api.metrics(job_id)
            throughput_seen = max(throughput_seen, body["metrics"]["throughput_per_sec"])
            await asyncio.sleep(0.2)
        await feeder
    finally:
        feeder.cancel()
    total = sum(count(b) for b in batches)
    body = await api.wait_consumed(job_id, total)

    async def flowing() -> bool:
        nonlocal throughput_seen
        current: float = (await api.metrics(job_id))["metrics"]["throughput_per_sec"]
        throughput_seen = max(throughput_seen, current)
        return throughput_seen > 0

    await wait_for(flowing, "a throughput above 0", within=10)
    assert set(body) == {"job_id", "timestamp", "window", "metrics", "history"}
    m = body["metrics"]
    assert m["events_processed_total"] == total
    latency = m["latency"]
    assert set(latency) == {"p50_ms", "p95_ms", "p99_ms", "p999_ms"}
    assert 0 < latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"] <= latency["p999_ms"]
    assert m["checkpoint"]["count"] >= 1 and m["checkpoint"]["failures"] == 0
    assert m["errors"] == {"count": 0, "rate_per_min": 0.0}
    assert m["resources"]["memory_used_mb"] > 0 and m["resources"]["memory_total_mb"] > 0
    assert body["history"] and all(p["throughput_per_sec"] >= 0 for p in body["history"])
    details = await api.details(job_id)
    assert details["metrics"]["events_processed"] == total
    assert details["metrics"]["latency_p99_ms"] > 0 and details["metrics"]["restarts"] == 0
    for window in ("5m", "1h", "24h"):
        windowed = await api.ok("GET", f"/api/v1/jobs/{job_id}/metrics", params={"window": window})
        assert windowed["window"] == window and windowed["metrics"]["events_processed_total"] == total


# 6. Get job logs
async def test_6_get_job_logs(api: Api, pipeline: Pipeline) -> None:
    job_id = await api.submit(pipeline.body)
    await api.wait_status(job_id, {"running"})
    events = make_events(20, 30)
    await pipeline.produce(events, extra=[(1, b"{not json")])

    async def warned() -> bool:
        body = await api.ok("GET", f"/api/v1/jobs/{job_id}/logs", params={"level": "warn"})
        return any("undecodable record" in e["message"] for e in body["logs"])

    await wait_for(warned, "the warning about the undecodable record")
    await api.ok("DELETE", f"/api/v1/jobs/{job_id}")  # the log stops growing
    url = f"/api/v1/jobs/{job_id}/logs"
    full = await api.ok("GET", url)
    assert set(full) == {"job_id", "logs", "total", "limit"} and full["limit"] == 1000
    logs = full["logs"]
    assert full["total"] == len(logs) >= 4
    messages = [e["message"] for e in logs]
    assert messages[0].startswith("Job 'fraud_detection_pipeline' submitted")
    assert "Job started successfully" in messages and messages[-1] == "Job cancelled"
    assert [e["timestamp"] for e in logs] == sorted(e["timestamp"] for e in logs)
    assert all(set(e) == {"timestamp", "level", "message", "task_id"} for e in logs)

    warn = (await api.ok("GET", url, params={"level": "warn"}))["logs"]
    assert warn == [e for e in logs if e["level"] in ("warn", "error")]
    assert any("undecodable record" in e["message"] and e["task_id"] for e in warn)  # names its task
    errors = (await api.ok("GET", url, params={"level": "error"}))["logs"]
    assert errors == [e for e in logs if e["level"] == "error"]
    limited = await api.ok("GET", url, params={"limit": "2"})
    assert limited["logs"] == logs[:2] and limited["limit"] == 2 and limited["total"] == 2
    tail = await api.ok("GET", url, params={"tail": "true", "limit": "3"})
    assert tail["logs"] == logs[-3:]
    tail2 = await api.ok("GET", url, params={"tail": "2"})
    assert tail2["logs"] == logs[-2:] and tail2["limit"] == 2
    bad = await api.call("GET", url, params={"level": "loud"})
    assert bad.status == 400 and bad.body["error"]["details"][0]["path"] == "level"


# 7. List jobs with filters
async def test_7_list_jobs_with_filters(api: Api, pipeline: Pipeline) -> None:
    running = await api.submit(pipeline.body)
    finished = await api.submit(datagen_job("bounded", count=2000))
    cancelled = await api.submit(datagen_job("endless", count=None, rate=200))
    await api.wait_status(running, {"running"})
    await api.wait_status(finished, {"finished"})
    await api.wait_status(cancelled, {"running"})
    await api.ok("DELETE", f"/api/v1/jobs/{cancelled}")

    everything = await api.ok("GET", "/api/v1/jobs", params={"limit": "1000"})
    assert everything["total"] == len(everything["jobs"])
    ids = [j["job_id"] for j in everything["jobs"]]
    assert ids[:3] == [cancelled, finished, running]  # newest first
    for status, mine in (("running", running), ("finished", finished), ("cancelled", cancelled)):
        listed = await api.ok("GET", "/api/v1/jobs", params={"status": status, "limit": "1000"})
        assert all(j["status"] == status for j in listed["jobs"]), status
        assert mine in [j["job_id"] for j in listed["jobs"]]
        assert listed["total"] == sum(1 for j in everything["jobs"] if j["status"] == status)
    by_id = {j["job_id"]: j for j in everything["jobs"]}
    assert by_id[running]["parallelism"] == 4 and by_id[running]["name"] == "fraud_detection_pipeline"
    assert by_id[finished]["finished_at"] is not None and by_id[running]["finished_at"] is None

    pages = []
    for offset in range(0, 4, 2):
        page = await api.ok("GET", "/api/v1/jobs", params={"limit": "2", "offset": str(offset)})
        assert page["limit"] == 2 and page["offset"] == offset and page["total"] == everything["total"]
        pages += [j["job_id"] for j in page["jobs"]]
    assert pages == ids[:4]
    bad = await api.call("GET", "/api/v1/jobs", params={"status": "sleeping"})
    assert bad.status == 400 and bad.body["error"]["code"] == "invalid_parameter"


# 8. Job failure and automatic restart
async def test_8_job_failure_and_automatic_restart(api: Api, pipeline: Pipeline) -> None:
    job_id = await api.submit(pipeline.body)
    await api.wait_status(job_id, {"running"})
    first = make_events(30, 80)
    await pipeline.produce(first)
    await api.wait_consumed(job_id, count(first))
    checkpoints = await api.ok("GET", f"/api/v1/jobs/{job_id}/checkpoints")
    seen = {c["checkpoint_id"] for c in checkpoints["checkpoints"]}

    async def checkpointed_after_reading() -> bool:
        listing = await api.ok("GET", f"/api/v1/jobs/{job_id}/checkpoints")
        return any(
            c["status"] == "completed" and c["checkpoint_id"] not in seen for c in listing["checkpoints"]
        )

    await wait_for(checkpointed_after_reading, "a checkpoint after the first records")
    second = continue_events(first, 31, 30)
    await pipeline.produce(second)  # read after the checkpoint: replayed after the restart
    await api.wait_consumed(job_id, count(first) + count(second))

    workers = worker_processes(job_id)
    assert len(workers) == 4, workers
    victim = workers[1]
    victim.send_signal(signal.SIGKILL)
    gone, _ = psutil.wait_procs(workers, timeout=15)  # one failed worker stops the whole run
    assert len(gone) == 4

    async def restarted() -> bool:
        details = await api.details(job_id)
        assert details["status"] == "running", details["message"]
        fresh = worker_processes(job_id)
        return details["metrics"]["restarts"] == 1 and len(fresh) == 4 and victim not in fresh

    await wait_for(restarted, "the automatic restart (fixed_delay: 10 s)", within=40)
    details = await api.details(job_id)
    assert details["metrics"]["restarts"] == 1
    warnings = (await api.ok("GET", f"/api/v1/jobs/{job_id}/logs", params={"level": "warn"}))["logs"]
    assert any("restart 1 of 3" in e["message"] and "fixed_delay" in e["message"] for e in warnings)

    rest = with_sentinels(continue_events(concat(first, second), 32, 40))
    await pipeline.produce(rest)
    await pipeline.wait_rows(api, job_id, expected_matches(concat(first, second, rest)), within=90)
    assert (await api.details(job_id))["metrics"]["restarts"] == 1


# 9. Concurrent job management
async def test_9_concurrent_job_management(
    api: Api, pipeline: Pipeline, kafka_topic: Any, pg_schema: str
) -> None:
    other = Pipeline(
        pipeline.bootstrap, await kafka_topic(partitions=PARTITIONS), pipeline.dsn, pg_schema, "alerts_b"
    )
    bodies = [pipeline.body, other.body] + [datagen_job(f"small-{i}", count=3000) for i in range(8)]
    ids = await asyncio.gather(*(api.submit(b) for b in bodies))
    assert len(set(ids)) == len(bodies)
    pipelines = dict(zip(ids[:2], (pipeline, other), strict=True))
    data = {job_id: with_sentinels(make_events(40 + i, 60)) for i, job_id in enumerate(pipelines)}

    async def client(n: int) -> None:
        for k in range(6):
            job_id = ids[(n + k) % len(ids)]
            for path, params in (
                (f"/api/v1/jobs/{job_id}", None),
                ("/api/v1/jobs", {"limit": "20"}),
                (f"/api/v1/jobs/{job_id}/metrics", {"window": "1m"}),
                (f"/api/v1/jobs/{job_id}/logs", {"tail": "5"}),
                (f"/api/v1/jobs/{job_id}/checkpoints", None),
            ):
                await api.ok("GET", path, params=params)

    await asyncio.gather(
        *(client(n) for n in range(16)),
        *(p.produce(data[job_id]) for job_id, p in pipelines.items()),
    )
    for job_id in ids[2:]:
        await api.wait_status(job_id, {"finished"}, within=90)
    await asyncio.gather(
        *(
            p.wait_rows(api, job_id, expected_matches(data[job_id]), within=90)
            for job_id, p in pipelines.items()
        )
    )
    listing = await api.ok("GET", "/api/v1/jobs", params={"limit": "1000"})
    assert set(ids) <= {j["job_id"] for j in listing["jobs"]}
    assert all(s < 500 for s in api.statuses)


# 10. Resource cleanup after job completion
async def test_10_resource_cleanup_after_job_completion(
    api: Api, pipeline: Pipeline, server: HeliosServerProcess
) -> None:
    bounded = await api.submit(datagen_job("finishes", count=5000))
    job_id = await api.submit(pipeline.body)
    await api.wait_status(job_id, {"running"})
    events = with_sentinels(make_events(50, 60))
    await pipeline.produce(events)
    await pipeline.wait_rows(api, job_id, expected_matches(events))
    workers = worker_processes(job_id)
    assert len(workers) == 4
    assert all(w.parent() is not None and w.parent().pid == server.process.pid for w in workers)
    pg_port = urlparse(pipeline.dsn).port or 5432
    pg_ports = {
        c.laddr.port for w in workers for c in w.net_connections("tcp") if c.raddr and c.raddr.port == pg_port
    }
    assert pg_ports, "the database sinks hold PostgreSQL sessions while running"

    await api.ok("DELETE", f"/api/v1/jobs/{job_id}")
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == [], f"workers left running after cancel: {alive}"
    assert worker_processes(job_id) == []
    await api.wait_status(bounded, {"finished"})

    async def bounded_gone() -> bool:
        return worker_processes(bounded) == []

    await wait_for(bounded_gone, "the finished job's workers to exit", within=10)
    for finished_id in (job_id, bounded):
        details = await api.details(finished_id)
        assert details["metrics"]["cpu_usage_percent"] == 0 and details["metrics"]["memory_used_mb"] == 0
        assert details["metrics"]["throughput_per_sec"] == 0
    retained = list((server.home / "checkpoints" / job_id).glob("chk-*"))
    assert 1 <= len(retained) <= 3, retained  # checkpoints_retained: older ones are deleted
    children = psutil.Process(server.process.pid).children(recursive=True)
    assert not [c for c in children if job_id in (c.cmdline() or [])]
    conn = await asyncpg.connect(pipeline.dsn)
    try:
        sessions = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY($1::int[])", sorted(pg_ports)
        )
    finally:
        await conn.close()
    assert sessions == 0, "the sink's PostgreSQL sessions are still open"
