"""Two worker processes exchanging records by key through a job's internal topic on a real broker
(runtime/exchange/kafka_exchange.py): the per-key count and sum equal what one task computes over
every event, and stay equal when both processes are SIGKILLed after a checkpoint, with records of
the killed attempt after the checkpoint left in the topic, and restarted from it in a new attempt
(also when the topic was deleted in between, so the restored offsets point past its end).
Events in order per origin are never behind the downstream task's watermark (the minimum over its
origins, each origin's the least over the task's partitions)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from heliosdb_streaming.runtime.exchange import topics
from heliosdb_streaming.runtime.exchange.keygroups import key_group, owned_groups

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

HERE = Path(__file__).parent
EVENTS = 6000
PARALLELISM = 2
MAX_PARALLELISM = 16


def reference() -> dict[str, list[int]]:
    """What one task computes over every event."""
    out: dict[str, list[int]] = {}
    for n in range(EVENTS):
        entry = out.setdefault(f"k{(n * 7919) % 53}", [0, 0])
        entry[0] += 1
        entry[1] += n
    return out


def start(
    tmp: Path, bootstrap: str, job_id: str, index: int, attempt: int, mode: str
) -> subprocess.Popen[bytes]:
    config: dict[str, Any] = {
        "bootstrap": bootstrap,
        "job_id": job_id,
        "index": index,
        "parallelism": PARALLELISM,
        "max_parallelism": MAX_PARALLELISM,
        "events": EVENTS,
        "attempt": attempt,
        "dir": str(tmp),
        "mode": mode,
    }
    path = tmp / f"config-{index}-{attempt}.json"
    path.write_bytes(orjson.dumps(config))
    return subprocess.Popen(
        [sys.executable, str(HERE / "exchange_worker_process.py"), str(path)],
        stdout=subprocess.PIPE,
        stderr=(tmp / f"stderr-{index}-{attempt}.log").open("wb"),
    )


async def wait_for_line(
    process: subprocess.Popen[bytes], line: bytes, tmp: Path, timeout_s: float = 90
) -> None:
    assert process.stdout is not None
    got = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout_s)
    if got.strip() != line:
        logs = "\n".join(p.read_text()[-3000:] for p in tmp.glob("stderr-*.log"))
        raise AssertionError(f"expected {line!r}, got {got!r} (exit {process.poll()}); logs:\n{logs}")


def results(tmp: Path) -> dict[str, list[int]]:
    merged: dict[str, list[int]] = {}
    for index in range(PARALLELISM):
        result = orjson.loads((tmp / f"result-{index}.json").read_bytes())
        assert result["late"] == 0, "events in order per origin came late downstream"
        for key, value in result["state"].items():
            assert key not in merged, f"key {key} in two tasks"
            assert key_group(key, MAX_PARALLELISM) in owned_groups(index, PARALLELISM, MAX_PARALLELISM)
            merged[key] = value
    return merged


async def test_two_processes_give_the_per_key_result_of_one_task(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    job_id = f"x{uuid.uuid4().hex[:8]}"
    workers = [start(tmp_path, kafka_bootstrap, job_id, i, 1, "run") for i in range(PARALLELISM)]
    try:
        for w in workers:
            await wait_for_line(w, b"done", tmp_path)
            assert await asyncio.to_thread(w.wait, 30) == 0
        assert results(tmp_path) == reference()
    finally:
        for w in workers:
            w.kill()
            w.wait()
        await topics.delete_job_topics([kafka_bootstrap], job_id)


@pytest.mark.parametrize("recreated", [False, True], ids=["same-topic", "topic-created-anew"])
async def test_sigkill_after_a_checkpoint_and_restore_in_a_new_attempt_gives_the_same_result(
    kafka_bootstrap: str, tmp_path: Path, recreated: bool
) -> None:
    job_id = f"x{uuid.uuid4().hex[:8]}"
    first = [
        start(tmp_path, kafka_bootstrap, job_id, i, 1, "checkpoint_then_hang") for i in range(PARALLELISM)
    ]
    try:
        for w in first:
            await wait_for_line(w, b"checkpointed", tmp_path)
        for w in first:
            await wait_for_line(w, b"sent", tmp_path)  # the whole stream of attempt 1 is in the topic
    finally:
        for w in first:
            w.kill()
            w.wait()
    assert all((tmp_path / f"snapshot-{i}.json").exists() for i in range(PARALLELISM))
    if recreated:  # the snapshot's offsets now point past the end of a fresh, empty topic
        assert await topics.delete_job_topics([kafka_bootstrap], job_id) == [topics.topic_name(job_id, 1)]

    second = [start(tmp_path, kafka_bootstrap, job_id, i, 2, "run") for i in range(PARALLELISM)]
    try:
        for w in second:
            await wait_for_line(w, b"done", tmp_path)
            assert await asyncio.to_thread(w.wait, 30) == 0
        assert results(tmp_path) == reference()
    finally:
        for w in second:
            w.kill()
            w.wait()
        await topics.delete_job_topics([kafka_bootstrap], job_id)
