"""Helpers for the operator tests: the emulated cluster and ``helios operator`` against it (one place for
the conftest's fixtures and the API server's module fixture), resources to apply, status polling with
deadlines, expected output."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from chart_rbac import (
    JOBMANAGER,
    JOBMANAGER_ACCOUNT,
    OPERATOR,
    USERS,
    assert_never_denied,
    enforce_crd_schemas,
    install_operator_rbac,
    save_audit,
)

from heliosdb_streaming.kubernetes import crds, kube
from heliosdb_streaming.testing.expected import datagen_tumbling_windows, tumbling_window_per_card
from heliosdb_streaming.testing.kube_emulator import Cluster, start_cluster
from heliosdb_streaming.testing.kubelet import GarbageCollector, ProcessKubelet
from heliosdb_streaming.testing.ports import free_port
from heliosdb_streaming.testing.server import operator_command, operator_env

NS = "default"
COUNT = 20_000
PARTITIONS = 6
T = TypeVar("T")


@dataclass
class Env:
    cluster: Cluster
    client: kube.KubeClient
    kubelet: ProcessKubelet
    gc: GarbageCollector
    tmp: Path


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    log: Path
    home: Path
    control_port: int
    args: list[str] = field(default_factory=list)
    read_port: int = 0  # its read API (and /healthz, what the chart's probes ask)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        deadline = asyncio.get_running_loop().time() + timeout
        while self.process.poll() is None:
            if asyncio.get_running_loop().time() > deadline:
                self.process.kill()
            await asyncio.sleep(0.05)
        return self.process.returncode


StartOperator = Callable[..., Awaitable[OperatorProcess]]
TEST_IMAGE = "heliosdb-streaming:test"


@contextlib.asynccontextmanager
async def emulated_env(tmp: Path) -> AsyncIterator[Env]:
    """The emulated API server (the chart's RBAC and the CRDs' schemas, CEL rules and version
    conversion enforced), an admin client, the test kubelet (its pod logs served) and the garbage
    collector; on exit, fails if any request of any identity was denied."""
    async with start_cluster(tmp, USERS) as emulated:
        enforce_crd_schemas(emulated.emulator)
        client = kube.KubeClient(emulated.connection())
        try:
            # a job manager pod runs as its service account, with that account's token
            accounts = {JOBMANAGER_ACCOUNT: emulated.kubeconfig_of(JOBMANAGER)}
            kubelet_ = ProcessKubelet(client, tmp / "node", kubeconfigs=accounts)
            async with kubelet_ as kubelet, GarbageCollector(client) as gc:
                emulated.emulator.pod_logs = kubelet.pod_log
                yield Env(emulated, client, kubelet, gc, tmp)
        finally:
            await client.close()
            save_audit(emulated.emulator)
        assert_never_denied(emulated.emulator)


async def launch_operator(
    env: Env,
    home: Path,
    log: Path,
    scope: list[str],
    *extra: str,
    environ: dict[str, str] | None = None,
    control_port: int | None = None,
) -> OperatorProcess:
    """``helios operator`` as a subprocess, as the chart's operator service account (its Roles for
    ``scope`` installed first), its read API on a free loopback port (8082 on all interfaces collides
    with any other operator on the machine), the test's directory allowed for SQLite files and
    checkpoints, output appended to ``log``."""
    port = control_port or free_port()
    await install_operator_rbac(env.client, scope)
    read_port = free_port()
    argv = operator_command(
        home,
        port,
        *scope,
        *("--allow-path", str(env.tmp), "--read-host", "127.0.0.1", "--read-port", str(read_port)),
        *("--image", TEST_IMAGE, *extra),
    )
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv,
            env=operator_env(env.cluster.kubeconfig_of(OPERATOR), environ),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return OperatorProcess(process, log, home, port, argv, read_port)


def window_spec(db: Path, *, parallelism: int, rate: float, **extra: Any) -> dict[str, Any]:
    """Bounded datagen -> tumbling 1 s windows per card -> SQLite: an exact, checkable result."""
    return {
        "config": {
            "parallelism": parallelism,
            "checkpoint_interval_ms": 500,
            "restart_strategy": {"type": "fixed_delay", "attempts": 5, "delay_ms": 300},
        },
        "sources": [
            {
                "type": "datagen",
                "config": {
                    "count": COUNT,
                    "partitions": PARTITIONS,
                    "seed": 11,
                    "keys": 60,
                    "rate_per_sec": rate,
                },
            }
        ],
        "transformations": [tumbling_window_per_card()],
        "sinks": [{"type": "database", "config": {"connection_string": f"sqlite:///{db}", "table": "spend"}}],
        **extra,
    }


async def expected_windows() -> list[tuple[Any, ...]]:
    """The windows computed straight from the generated records, without the engine."""
    return await datagen_tumbling_windows(count=COUNT, partitions=PARTITIONS, seed=11, keys=60)


def table_rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT key, window_start, window_end, n, total FROM spend").fetchall()
    return sorted((k, s, e, n, round(t, 6)) for k, s, e, n, t in rows)


def streaming_job(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A v1alpha2 StreamingJob; ``spec``'s job fields may be written as the REST body has them
    (snake_case): they are renamed as the CRD has them (camelCase), as ``helios k8s convert`` does."""
    return {
        "apiVersion": crds.API_VERSION,
        "kind": crds.STREAMING_JOB_KIND,
        "metadata": {"name": name, "namespace": NS},
        "spec": crds.to_camel(spec),
    }


def savepoint(name: str, job: str, description: str = "") -> dict[str, Any]:
    return {
        "apiVersion": crds.API_VERSION,
        "kind": crds.SAVEPOINT_KIND,
        "metadata": {"name": name, "namespace": NS},
        "spec": {"jobRef": job, "description": description},
    }


async def eventually(
    probe: Callable[[], Awaitable[T | None]], timeout: float = 60, what: str = "condition", on_fail: str = ""
) -> T:
    """Polls ``probe`` until it returns something other than None or False; fails after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while True:
        last = await probe()
        if last is not None and last is not False:
            return last
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {last!r}){on_fail}")
        await asyncio.sleep(0.1)


async def job_status(client: kube.KubeClient, name: str) -> dict[str, Any]:
    obj = await client.get_or_none(kube.STREAMINGJOBS, NS, name)
    return dict((obj or {}).get("status") or {})


async def wait_phase(
    client: kube.KubeClient, name: str, *phases: str, timeout: float = 60, log: str = ""
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        status = await job_status(client, name)
        return status if status.get("phase") in phases else None

    try:
        return await eventually(probe, timeout, f"{name} to be {'/'.join(phases)}")
    except AssertionError as e:
        raise AssertionError(f"{e}; status {await job_status(client, name)}\n{log[-4000:]}") from None


async def patch_spec(client: kube.KubeClient, name: str, changes: dict[str, Any]) -> None:
    """A merge patch of the spec; job fields as in ``streaming_job`` (renamed to camelCase)."""
    await client.patch(kube.STREAMINGJOBS, NS, name, {"spec": crds.to_camel(changes)})


async def events_of(client: kube.KubeClient, name: str) -> list[tuple[str, str]]:
    items = await client.list(kube.EVENTS, NS)
    return [
        (e.get("reason", ""), e.get("message", ""))
        for e in items
        if (e.get("involvedObject") or {}).get("name") == name
    ]


async def worker_pods(client: kube.KubeClient, name: str) -> list[dict[str, Any]]:
    pods = await client.list(kube.PODS, NS, {f"{crds.GROUP}/job": name})
    return sorted(pods, key=lambda p: p["metadata"]["name"])
