"""``restart_strategy.reset_after_ms`` on the Kubernetes substrate: the operator's control plane runs the
same supervisor as the embedded one. One ``fixed_delay`` attempt, a 2 s reset: a worker pod killed
twice with a stable run of over 2 s in between restarts both times, and the job's windows are exact."""

from __future__ import annotations

import asyncio

import pytest
from k8s_helpers import (
    NS,
    Env,
    StartOperator,
    eventually,
    expected_windows,
    job_status,
    streaming_job,
    table_rows,
    wait_phase,
    window_spec,
)

from heliosdb_streaming.kubernetes import kube

pytestmark = pytest.mark.timeout(180)


async def test_a_stable_run_earns_the_single_attempt_back(
    cluster: Env, start_operator: StartOperator
) -> None:
    client, db = cluster.client, cluster.tmp / "out.db"
    operator = await start_operator()
    spec = window_spec(db, parallelism=2, rate=1200)  # about 17 s of input
    spec["config"]["restart_strategy"] = {  # type: ignore[index]
        "type": "fixed_delay",
        "attempts": 1,
        "delay_ms": 200,
        "reset_after_ms": 2000,
    }
    await client.create(kube.STREAMINGJOBS, NS, streaming_job("spend", spec))
    await wait_phase(client, "spend", "running", log=operator.output())

    for restarts in (1, 2):

        async def checkpointed() -> str | None:
            status = await job_status(client, "spend")
            return status.get("lastCheckpoint") if status.get("phase") == "running" else None

        await eventually(checkpointed, 30, "a running, checkpointed job", on_fail=operator.output()[-3000:])
        await asyncio.sleep(2.5)  # stable for longer than reset_after_ms
        cluster.kubelet.kill(NS, "spend-worker-1")  # kill -9 the worker's process

        async def restarted(n: int = restarts) -> dict[str, object] | None:
            status = await job_status(client, "spend")
            return status if status.get("restarts") == n or status.get("phase") == "failed" else None

        status = await eventually(restarted, 30, f"restart {restarts}", on_fail=operator.output()[-3000:])
        assert status["phase"] != "failed", status["message"]
        assert "restart 1 of 1" in str(status["message"])  # each time the first of a new count

    final = await wait_phase(client, "spend", "finished", timeout=90, log=operator.output())
    assert final["restarts"] == 2
    assert table_rows(db) == await expected_windows()
    await operator.stop()
