"""The job's internal topics: one per stage boundary, ``helios-<job id>-<stage>``, one partition per
key group (``max_parallelism``), on the job's repartition brokers.

The job creates them (idempotently: every worker of every attempt may call :func:`ensure_topic`) and
deletes them with its data (:func:`delete_job_topics`, for purge and terminal cleanup). A topic that
exists with another partition count belongs to a job with another ``max_parallelism`` (which is
fixed for a job's life): that is refused rather than silently misrouted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

PREFIX = "helios-"
# Kafka's error code for CreateTopics of a name that exists.
_TOPIC_ALREADY_EXISTS = 36


class InternalTopicError(RuntimeError):
    """An internal topic cannot be created, has the wrong shape, or cannot be deleted."""


def topic_name(job_id: str, stage: int) -> str:
    """The internal topic that feeds ``stage`` (>= 1) of job ``job_id``."""
    return f"{PREFIX}{job_id}-{stage}"


def _admin(bootstrap_servers: Sequence[str]) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=list(bootstrap_servers), client_id="heliosdb-admin", request_timeout_ms=10_000
    )


async def ensure_topic(
    bootstrap_servers: Sequence[str], name: str, partitions: int, timeout_s: float = 30.0
) -> bool:
    """Creates topic ``name`` with ``partitions`` partitions unless it exists; True when created now.

    Waits (bounded) until the topic's metadata lists every partition, so a producer or reader that
    starts right after sees all of them.
    """
    admin = _admin(bootstrap_servers)
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        created = False
        if name not in await admin.list_topics():
            response = await admin.create_topics(
                [NewTopic(name, num_partitions=partitions, replication_factor=1)]
            )
            errors = [
                (code, msg)
                for _t, code, msg in response.topic_errors
                if code not in (0, _TOPIC_ALREADY_EXISTS)
            ]
            if errors:
                raise InternalTopicError(f"creating internal topic {name!r} failed: {errors}")
            created = all(code == 0 for _t, code, _m in response.topic_errors)
            if created:
                log.info("created internal topic %r with %d partitions", name, partitions)
        await _wait_for_partitions(admin, name, partitions, timeout_s)
        return created
    finally:
        await admin.close()


async def _wait_for_partitions(
    admin: AIOKafkaAdminClient, name: str, partitions: int, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        described = await admin.describe_topics([name])
        info = described[0] if described else {}
        count = len(info.get("partitions", []))
        if info.get("error_code", 0) == 0 and count:
            if count != partitions:
                raise InternalTopicError(
                    f"internal topic {name!r} has {count} partitions, the job needs {partitions} "
                    "(max_parallelism is fixed for a job's life; delete the topic to start afresh)"
                )
            return
        if time.monotonic() > deadline:
            raise InternalTopicError(
                f"internal topic {name!r} has no metadata after {timeout_s:.0f}s: {info}"
            )
        await asyncio.sleep(0.1)


async def job_topics(bootstrap_servers: Sequence[str], job_id: str) -> list[str]:
    """The internal topics of job ``job_id`` that exist now."""
    admin = _admin(bootstrap_servers)
    await admin.start()
    try:
        return sorted(_of_job(await admin.list_topics(), job_id))
    finally:
        await admin.close()


def _of_job(topics: object, job_id: str) -> list[str]:
    prefix = f"{PREFIX}{job_id}-"
    return [t for t in topics if isinstance(t, str) and t.startswith(prefix) and t[len(prefix) :].isdigit()]  # type: ignore[attr-defined]


async def delete_job_topics(
    bootstrap_servers: Sequence[str], job_id: str, timeout_s: float = 30.0
) -> list[str]:
    """Deletes every internal topic of ``job_id`` (for the job's purge); returns the names deleted.

    Idempotent: a job without internal topics deletes nothing. Waits until the broker no longer lists
    them, so a new job of the same id starts with fresh topics.
    """
    admin = _admin(bootstrap_servers)
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        names = sorted(_of_job(await admin.list_topics(), job_id))
        if not names:
            return []
        try:
            await admin.delete_topics(names, timeout_ms=int(timeout_s * 1000))
        except KafkaError as e:
            raise InternalTopicError(f"deleting internal topics {names} failed: {e}") from e
        deadline = time.monotonic() + timeout_s
        while set(names) & set(await admin.list_topics()):
            if time.monotonic() > deadline:
                raise InternalTopicError(
                    f"internal topics {names} still listed {timeout_s:.0f}s after deletion"
                )
            await asyncio.sleep(0.1)
        log.info("deleted internal topics %s of job %s", names, job_id)
        return names
    finally:
        await admin.close()
