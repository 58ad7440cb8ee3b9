"""The operator with the production stack: Kafka (tansu) -> filter -> PostgreSQL, checkpoints on S3.

The S3 settings reach the operator through its environment and the workers through their pod env,
as the Helm chart wires them. A Savepoint lands on S3; a restart from it with parallelism 3 resumes
from its Kafka offsets, and PostgreSQL holds exactly the filtered records of both batches.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from k8s_helpers import NS, Env, StartOperator, eventually, job_status, patch_spec, savepoint, streaming_job
from k8s_helpers import wait_phase as wait_phase_of

from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.runtime.checkpoint.storage import storage_from_uri

pytestmark = [pytest.mark.timeout(180), pytest.mark.kafka, pytest.mark.postgres]


def events(first: int, count: int) -> list[dict[str, Any]]:
    return [
        {"transaction_id": i, "card_id": f"card-{i % 40}", "amount": float(i % 500)}
        for i in range(first, first + count)
    ]


async def produce(bootstrap: str, topic: str, records: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for r in records:
            await producer.send(topic, orjson.dumps(r), key=r["card_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()


async def rows(dsn: str, table: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return sorted(tuple(r) for r in await conn.fetch(f"SELECT transaction_id, amount FROM {table}"))
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()


def expected(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted((r["transaction_id"], r["amount"]) for r in records if r["amount"] > 250)


def payments_job(kafka_bootstrap: str, topic: str, pg_dsn: str, pg_schema: str) -> dict[str, Any]:
    """Kafka -> amount > 250 -> upsert into ``<schema>.big`` by transaction id: replays rewrite rows."""
    return {
        "config": {"parallelism": 2, "checkpoint_interval_ms": 500, "restart_strategy": "none"},
        "sources": [
            {
                "type": "kafka",
                "config": {"bootstrap_servers": kafka_bootstrap, "topic": topic, "start_from": "earliest"},
            }
        ],
        "transformations": [{"type": "filter", "config": {"condition": "amount > 250"}}],
        "sinks": [
            {
                "type": "database",
                "config": {
                    "connection_string": pg_dsn,
                    "table": f"{pg_schema}.big",
                    "key": ["transaction_id"],
                },
            }
        ],
    }


async def test_kafka_to_postgres_with_s3_checkpoints_savepoint_and_rescale(
    cluster: Env,
    start_operator: StartOperator,
    kafka_bootstrap: str,
    kafka_topic: Any,
    pg_dsn: str,
    pg_schema: str,
    s3_options: dict[str, str],
) -> None:
    client = cluster.client
    topic = await kafka_topic(partitions=3)
    table = f'"{pg_schema}".big'
    uri = f"s3://helios-checkpoints/k8s-{uuid.uuid4().hex[:8]}"
    s3_env = {
        "HELIOS_S3_ENDPOINT": s3_options["endpoint"],
        "AWS_ACCESS_KEY_ID": s3_options["access_key"],
        "AWS_SECRET_ACCESS_KEY": s3_options["secret_key"],
        "AWS_REGION": s3_options["region"],
    }
    operator = await start_operator(env=s3_env)

    async def wait_phase(*phases: str) -> dict[str, Any]:
        return await wait_phase_of(client, "payments", *phases, log=operator.output())

    first = events(0, 3000)
    await produce(kafka_bootstrap, topic, first)
    spec = {**payments_job(kafka_bootstrap, topic, pg_dsn, pg_schema), "checkpointStorage": uri}
    await client.create(kube.STREAMINGJOBS, NS, streaming_job("payments", spec))
    await wait_phase("running")

    async def all_rows(want: list[tuple[Any, ...]]) -> bool:
        return await rows(pg_dsn, table) == want

    await eventually(lambda: all_rows(expected(first)), 60, "the first batch in PostgreSQL")

    async def checkpoint_on_s3() -> str | None:
        return (await job_status(client, "payments")).get("lastCheckpoint")

    await eventually(checkpoint_on_s3, 30, "a checkpoint")
    await client.create(kube.SAVEPOINTS, NS, savepoint("sp", "payments"))

    async def completed() -> dict[str, Any] | None:
        status = ((await client.get(kube.SAVEPOINTS, NS, "sp")).get("status")) or {}
        assert status.get("state") != "failed", status
        return status if status.get("state") == "completed" else None

    sp = await eventually(completed, 30, "the savepoint", on_fail=operator.output()[-3000:])
    assert sp["location"].startswith(f"{uri}/")
    storage = storage_from_uri(uri, {k: v for k, v in s3_options.items() if k != "region"})
    directory = sp["location"][len(uri) + 1 :]
    assert f"{directory}/_manifest.json" in await storage.list(directory)

    await patch_spec(
        client, "payments", {"restartNonce": 1, "restoreFrom": "sp", "config": {"parallelism": 3}}
    )

    async def rescaled() -> dict[str, Any] | None:
        status = await job_status(client, "payments")
        return status if status.get("parallelism") == 3 and status.get("phase") == "running" else None

    await eventually(rescaled, 60, "the rescaled job to run", on_fail=operator.output()[-3000:])
    second = events(3000, 2000)
    await produce(kafka_bootstrap, topic, second)
    await eventually(lambda: all_rows(expected(first + second)), 60, "both batches in PostgreSQL")

    await patch_spec(client, "payments", {"state": "cancelled"})
    await wait_phase("cancelled")
    await operator.stop()
