"""What the key-group tasks of a later stage do reaches the job's metrics when they run in other
worker processes, fed through the job's internal Kafka topic.

Four files, parallelism 2: ``key_by merchant`` -> a map that fails on even amounts (records skipped,
counted as errors) -> a slow Python map (0.3 ms a record) -> 1 h tumbling count -> discard. Every step
after ``key_by`` runs in key-group tasks (two stages: the map's new records are regrouped for the
window), so:

- nothing is late in the window although the map's output merges four files' records out of order:
  the map's task passes on its input's watermark (the least over its origins), not the largest
  event time it emitted;

- their counters arrive in heartbeats: the records in are every event (each crosses the boundary
  once), the errors are the even amounts, the records out are what the sinks wrote;
- the latency histogram is end to end: the records' ingestion time travels through the exchange
  and the latency is taken where the last stage's output is flushed. The slow map makes the later
  stage lag the fast first stage by about a second, so a latency taken before the exchange (a few
  milliseconds) cannot pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from stage_chaos import HOUR, write_files

from heliosdb_streaming.job import JobManager, JobStatus
from heliosdb_streaming.testing.waits import wait_until

pytestmark = [pytest.mark.timeout(300), pytest.mark.kafka]

USERPKG = Path(__file__).resolve().parents[1] / "userpkg"


@pytest.fixture
def userpkg_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test package of user functions: for the control plane's submit check and its workers."""
    monkeypatch.syspath_prepend(str(USERPKG))
    monkeypatch.setenv("PYTHONPATH", str(USERPKG))


def job(source: dict[str, Any], bootstrap: str, backlog: int | None = None) -> dict[str, Any]:
    fields = {"merchant": "merchant", "timestamp": "timestamp", "amount": "amount"}
    return {
        "name": "stage-metrics",
        "config": {
            "parallelism": 2,
            "restart_strategy": "none",
            "repartition": {
                "bootstrap_servers": [bootstrap],
                **({"max_backlog_messages": backlog} if backlog is not None else {}),
            },
        },
        "sources": [source],
        "transformations": [
            {"type": "key_by", "config": {"key": "merchant"}},
            {"type": "map", "config": {"fields": {**fields, "odd": "amount / (amount % 2)"}}},
            {"type": "python", "config": {"function": "helios_userpkg.records:slow_fee", "kind": "map"}},
            # the Python map's new records cross a second boundary to the window: the four files'
            # records merged, in order per file only; the window's event time is the least of them
            {"type": "window", "config": {"size": "1h", "aggregates": {"n": "count(*)"}}},
        ],
        "sinks": [{"type": "discard", "config": {}}],
    }


# the smallest bound: the first stage pauses often, the workers keep feeding their own later stages
@pytest.mark.parametrize("backlog", [None, 100])
async def test_stage_task_counters_and_end_to_end_latency_through_kafka(
    tmp_path: Path, kafka_bootstrap: str, userpkg_on_path: None, backlog: int | None
) -> None:
    events = write_files(tmp_path / "in", seed=5, per_file=1_500 if backlog is None else 6_000)
    odd = [e for e in events if e["amount"] % 2]
    windows = {(e["merchant"], e["timestamp"] - e["timestamp"] % HOUR) for e in odd}
    source = {"type": "file", "config": {"path": str(tmp_path / "in")}}
    async with JobManager(4, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job(job(source, kafka_bootstrap, backlog))

        async def ended() -> bool:
            status = await jm.get_job_status(job_id)
            assert status != JobStatus.FAILED, (await jm.get_job_details(job_id)).message
            return status == JobStatus.FINISHED

        await wait_until(ended, what="the job finished", within=240, interval=0.2)
        metrics = await jm.get_job_metrics(job_id)
    tasks = {t.task_id: t for t in metrics.stage_tasks}
    first = [t for task_id, t in tasks.items() if task_id.startswith("s1-")]
    last_stage = max(task_id.split("-")[0] for task_id in tasks)
    last = [t for task_id, t in tasks.items() if task_id.startswith(f"{last_stage}-")]
    assert sorted(t.task_id for t in first) == ["s1-kg0-63", "s1-kg64-127"]
    assert sum(t.events_in for t in first) == len(events) == metrics.events_processed
    assert all(t.events_in > 0 for t in first)
    assert sum(t.errors for t in tasks.values()) == len(events) - len(odd) == metrics.errors
    assert metrics.late_events_dropped == 0
    assert sum(t.events_out for t in last) == len(windows) == metrics.events_out
    # thousands of records a worker at 0.3 ms behind a first stage that reads them in milliseconds
    print(f"\nlatency p50 {metrics.latency_p50_ms} ms, p99 {metrics.latency_p99_ms} ms")
    assert metrics.latency_p50_ms >= 100, metrics
    assert metrics.latency_p99_ms >= metrics.latency_p50_ms
