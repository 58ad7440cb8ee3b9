"""How far an upstream stage may run ahead of the next through an internal topic (KafkaExchange's
``max_backlog_messages``), on a real broker: the writer learns from the broker how many messages the
readers have not taken yet (their reported progress against the topic's end), says ``lagging`` past
the bound, and stops lagging once the readers took what was there. A checkpoint barrier written while
it lags is aligned after the downstream took at most that backlog: the alignment's length depends on
the bound, not on how fast the upstream is."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from heliosdb_streaming.runtime.eventtime import MAX_WATERMARK
from heliosdb_streaming.runtime.exchange import topics
from heliosdb_streaming.runtime.exchange.kafka_exchange import KafkaExchange, TaskInput

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

GROUPS = 8
BOUND = 40
TASK = range(GROUPS)


async def until(check: Any, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_the_writer_lags_past_the_bound_until_the_readers_take_the_backlog(
    kafka_bootstrap: str,
) -> None:
    job_id = f"backlog{uuid.uuid4().hex[:6]}"
    common: dict[str, Any] = {
        "bootstrap_servers": [kafka_bootstrap],
        "job_id": job_id,
        "max_parallelism": GROUPS,
    }
    up = KafkaExchange(**common, attempt=1, max_backlog_messages=BOUND, backlog_check_s=0.05)
    down = KafkaExchange(**common, attempt=1, backlog_check_s=0.05)
    await up.open({1: GROUPS}, [])
    await down.open({}, [TaskInput(1, TASK, ["s0-p0"])])
    sent: list[dict[str, Any]] = []
    try:
        # the writer sends rounds of one message per key group, the reader takes nothing yet
        rounds = 0
        while not up.lagging():
            assert rounds < 100, f"never lagging; backlog {up.backlog(1)}"
            batch = [{"n": len(sent) + i, "ts": len(sent) + i} for i in range(GROUPS * 5)]
            sent.extend(batch)
            up.send(1, "s0-p0", {g: batch[g * 5 : g * 5 + 5] for g in range(GROUPS)}, batch[-1]["ts"])
            await up.flush()
            rounds += 1
            await asyncio.sleep(0.12)  # more than a check interval: the writer's figure is current
        backlog = up.backlog(1)
        assert backlog is not None and BOUND < backlog <= BOUND + 2 * GROUPS, backlog
        written = sum(up._positions.values())  # every message written, marks included
        assert backlog == written  # nothing taken: the fetch loop's buffer does not count as taken

        # a barrier while it lags: the downstream aligns after taking exactly what was before it
        up.send_barrier(1, "s0-p0", 1)
        await up.flush()
        got: list[dict[str, Any]] = []

        def take() -> bool:
            for delivery in down.receive(1, TASK):
                got.extend(delivery.records)
            return down.aligned(1, TASK) == 1

        await until(take)
        assert sorted(r["n"] for r in got) == [r["n"] for r in sent]
        down.snapshot(1, TASK)
        down.release(1, TASK, 1)
        await until(lambda: not up.lagging())  # the readers' progress reached the writer
        assert (up.backlog(1) or 0) <= GROUPS  # at most the barriers, taken once the task moved on

        up.send(1, "s0-p0", {0: [{"n": -1, "ts": 10**9}]}, MAX_WATERMARK)
        await up.flush()

        def finished() -> bool:
            for delivery in down.receive(1, TASK):
                got.extend(delivery.records)
            return down.finished(1, TASK)

        await until(finished)
        assert len(got) == len(sent) + 1
    finally:
        await up.close()
        await down.close()
        await topics.delete_job_topics([kafka_bootstrap], job_id)


async def test_without_a_bound_the_writer_never_lags(kafka_bootstrap: str) -> None:
    job_id = f"backlog{uuid.uuid4().hex[:6]}"
    up = KafkaExchange(bootstrap_servers=[kafka_bootstrap], job_id=job_id, max_parallelism=GROUPS, attempt=1)
    await up.open({1: GROUPS}, [])
    try:
        for i in range(20):
            up.send(1, "s0-p0", {g: [{"n": i}] for g in range(GROUPS)}, i)
            await up.flush()
        assert not up.lagging() and up.backlog(1) is None
    finally:
        await up.close()
        await topics.delete_job_topics([kafka_bootstrap], job_id)
