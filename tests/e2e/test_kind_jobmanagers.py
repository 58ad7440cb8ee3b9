"""Job managers on a real cluster (kind): the chart's ``jobManagers``, real pods, Services and DNS.

The cases of tests/k8s/test_operator_jobmanager.py where Kubernetes does it all: the operator's pods
deleted mid-run (no worker restarts, checkpoints go on, exact output), and a job manager pod deleted
(a new one recovers the job from its latest checkpoint in MinIO, exact output). Skipped without
Docker, kind and kubectl (conftest.py); ``make e2e-kind`` runs them.
"""

from __future__ import annotations

import uuid
from typing import Any

import e2e_support as support
import pytest
from e2e_cluster import KindEnv, eventually

from heliosdb_streaming.kubernetes.operator import jmpods
from heliosdb_streaming.testing.expected import datagen_tumbling_windows

pytestmark = [pytest.mark.kind, pytest.mark.timeout(1800)]

OPERATOR_PODS = "app.kubernetes.io/component=operator"


async def expected_windows() -> list[tuple[Any, ...]]:
    return await datagen_tumbling_windows(
        count=support.COUNT, partitions=support.PARTITIONS, seed=support.SEED, keys=support.KEYS
    )


def checkpoint_number(status: dict[str, Any]) -> int:
    return int(str(status.get("lastCheckpoint") or "checkpoint-0").rsplit("-", 1)[1])


async def jobmanager_pod(e2e: KindEnv, name: str) -> dict[str, Any] | None:
    return await e2e.kubectl.get("pod", jmpods.name_of(name))


async def test_deleting_the_operator_pods_touches_no_job(e2e: KindEnv) -> None:
    name, table = "outlive", f"outlive_{uuid.uuid4().hex[:8]}"
    await e2e.kubectl.apply(support.streaming_job(name, support.window_job(table, parallelism=2)))
    await e2e.wait_phase(name, "running")
    first = await e2e.wait_checkpoint(name)
    assert await jobmanager_pod(e2e, name) is not None
    workers = {p["metadata"]["name"]: p["metadata"]["uid"] for p in await e2e.worker_pods(name)}
    await e2e.kubectl("delete", "pod", "-l", OPERATOR_PODS, "--wait=false")  # both replicas at once
    await e2e.wait_checkpoint(name, after=first)  # the job manager checkpoints while they come back
    final = await e2e.wait_phase(name, "finished", timeout=300)
    assert final.get("restarts", 0) == 0
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in await e2e.worker_pods(name)} == workers
    assert await e2e.rows(table) == await expected_windows()


async def test_deleting_the_jobmanager_pod_recovers_from_the_latest_checkpoint(e2e: KindEnv) -> None:
    name, table = "jmloss", f"jmloss_{uuid.uuid4().hex[:8]}"
    await e2e.kubectl.apply(support.streaming_job(name, support.window_job(table, parallelism=2)))
    await e2e.wait_phase(name, "running")
    await e2e.wait_checkpoint(name)
    old = await jobmanager_pod(e2e, name)
    assert old is not None
    await e2e.kubectl("delete", "pod", jmpods.name_of(name), "--wait=false")

    async def recovered() -> dict[str, Any] | None:
        pod = await jobmanager_pod(e2e, name)
        status = await e2e.job_status(name)
        new = pod is not None and pod["metadata"]["uid"] != old["metadata"]["uid"]
        return status if new and status.get("restarts", 0) >= 1 else None

    status = await eventually(recovered, 180, "a new job manager to recover the job", e2e.diagnostics)
    assert checkpoint_number(status) >= 1
    await e2e.wait_phase(name, "finished", timeout=300)
    assert await e2e.rows(table) == await expected_windows()
