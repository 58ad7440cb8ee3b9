"""Internal topics (runtime/exchange/topics.py) on a real broker: created once with one partition per
key group, a second ensure is a no-op, a wrong partition count is refused, and the job's cleanup
deletes exactly its own topics."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from heliosdb_streaming.runtime.exchange import topics

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


async def listed(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def partitions_of(bootstrap: str, name: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return len((await admin.describe_topics([name]))[0]["partitions"])
    finally:
        await admin.close()


async def test_created_idempotently_then_deleted_with_the_job(kafka_bootstrap: str) -> None:
    job, other = f"j{uuid.uuid4().hex[:8]}", f"j{uuid.uuid4().hex[:8]}"
    first, second = topics.topic_name(job, 1), topics.topic_name(job, 2)
    assert first == f"helios-{job}-1"
    assert await topics.ensure_topic([kafka_bootstrap], first, 16) is True
    assert await topics.ensure_topic([kafka_bootstrap], first, 16) is False
    assert await topics.ensure_topic([kafka_bootstrap], second, 16) is True
    assert await topics.ensure_topic([kafka_bootstrap], topics.topic_name(other, 1), 4) is True
    assert await partitions_of(kafka_bootstrap, first) == 16
    assert await topics.job_topics([kafka_bootstrap], job) == [first, second]

    deleted = await topics.delete_job_topics([kafka_bootstrap], job)

    assert deleted == [first, second]
    now = await listed(kafka_bootstrap)
    assert first not in now and second not in now
    assert topics.topic_name(other, 1) in now  # another job's topic stays
    assert await topics.delete_job_topics([kafka_bootstrap], job) == []
    assert await topics.ensure_topic([kafka_bootstrap], first, 16) is True  # a fresh topic again
    await topics.delete_job_topics([kafka_bootstrap], job)
    await topics.delete_job_topics([kafka_bootstrap], other)


async def test_a_topic_with_another_partition_count_is_refused(kafka_bootstrap: str) -> None:
    name = topics.topic_name(f"j{uuid.uuid4().hex[:8]}", 1)
    await topics.ensure_topic([kafka_bootstrap], name, 8)
    with pytest.raises(topics.InternalTopicError, match="has 8 partitions, the job needs 16"):
        await topics.ensure_topic([kafka_bootstrap], name, 16)
