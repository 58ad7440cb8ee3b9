"""Upgrade modes and the scale subresource: an edit of a running StreamingJob, end to end.

``helios operator`` (a subprocess) against the emulated API server over HTTP, pods run by the test
kubelet as real worker processes. Each job is a bounded keyed window job into SQLite, so what an
upgrade carried over is read back from the sink: exact windows when state and source positions were
kept (savepoint, last-state), every window again when the new spec started without state (stateless).
"""

from __future__ import annotations

import asyncio
from asyncio.subprocess import PIPE, STDOUT
from pathlib import Path
from typing import Any

import pytest
from chart_rbac import enforce_crd_schemas
from k8s_helpers import (
    NS,
    Env,
    OperatorProcess,
    StartOperator,
    events_of,
    eventually,
    expected_windows,
    job_status,
    patch_spec,
    streaming_job,
    table_rows,
    wait_phase,
    window_spec,
    worker_pods,
)

from heliosdb_streaming.kubernetes import crds, kube
from heliosdb_streaming.testing.kube_emulator import start_cluster

pytestmark = pytest.mark.timeout(180)


async def start_job(env: Env, operator: OperatorProcess, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Creates the StreamingJob and returns its status once it has a completed checkpoint."""
    await env.client.create(kube.STREAMINGJOBS, NS, streaming_job(name, spec))
    await wait_phase(env.client, name, "running", log=operator.output())

    async def checkpointed() -> dict[str, Any] | None:
        status = await job_status(env.client, name)
        return status if status.get("lastCheckpoint") else None

    return await eventually(checkpointed, 30, f"a checkpoint of {name}", on_fail=operator.output()[-3000:])


async def upgraded(
    env: Env, operator: OperatorProcess, name: str, generation: int, state: str
) -> dict[str, Any]:
    """The status once the upgrade to ``generation`` is in ``state``."""

    async def probe() -> dict[str, Any] | None:
        status = await job_status(env.client, name)
        upgrade = status.get("upgrade") or {}
        return status if (upgrade.get("generation"), upgrade.get("state")) == (generation, state) else None

    try:
        return await eventually(probe, 60, f"{name}'s upgrade to generation {generation} {state}")
    except AssertionError as e:
        status = await job_status(env.client, name)
        raise AssertionError(f"{e}; status {status}\n{operator.output()[-4000:]}") from None


async def kubectl(kubeconfig: Path, *args: str) -> tuple[int, str]:
    command = ["kubectl", "--kubeconfig", str(kubeconfig), "-n", NS, *args]
    process = await asyncio.create_subprocess_exec(*command, stdout=PIPE, stderr=STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return int(process.returncode or 0), out.decode()


def attempts(pods: list[dict[str, Any]]) -> list[str]:
    return [p["metadata"]["labels"][f"{crds.GROUP}/attempt"] for p in pods]


async def test_kubectl_scale_rescales_through_a_savepoint_with_exact_windows(
    cluster: Env, start_operator: StartOperator
) -> None:
    client, db = cluster.client, cluster.tmp / "out.db"
    operator = await start_operator()
    await start_job(cluster, operator, "scaled", window_spec(db, parallelism=2, rate=2000))
    scale_path = kube.STREAMINGJOBS.path(NS, "scaled", "scale")
    scale = await client._request("GET", scale_path)
    assert (scale["kind"], scale["spec"]["replicas"], scale["status"]["replicas"]) == ("Scale", 2, 2)
    assert scale["status"]["selector"] == f"app.kubernetes.io/name=heliosdb-streaming,{crds.GROUP}/job=scaled"

    # what `kubectl scale sj/scaled --replicas=3` sends (test_kubectl_scale_... runs kubectl itself)
    scale = await client.patch(
        kube.STREAMINGJOBS, NS, "scaled", {"spec": {"replicas": 3}}, subresource="scale"
    )
    assert scale["spec"]["replicas"] == 3
    resource = await client.get(kube.STREAMINGJOBS, NS, "scaled")
    assert (resource["spec"]["config"]["parallelism"], resource["metadata"]["generation"]) == (3, 2)

    status = await upgraded(cluster, operator, "scaled", 2, "completed")  # the default mode: savepoint
    upgrade = status["upgrade"]
    assert (upgrade["mode"], upgrade["changes"]) == ("savepoint", ["config.parallelism"])
    assert upgrade["restoredFrom"].startswith("savepoint savepoint-"), upgrade
    assert status["parallelism"] == 3 and status["observedGeneration"] == 2
    assert status["lastSavepoint"]["savepointId"] in upgrade["restoredFrom"]
    assert attempts(await worker_pods(client, "scaled")) == ["2", "2", "2"]
    scale = await client._request("GET", scale_path)
    assert (scale["spec"]["replicas"], scale["status"]["replicas"]) == (3, 3)

    await wait_phase(client, "scaled", "finished", timeout=90, log=operator.output())
    assert table_rows(db) == await expected_windows()  # nothing lost, nothing twice across the rescale
    reasons = [r for r, _ in await events_of(client, "scaled")]
    assert {"Upgrading", "Upgraded", "Finished"} <= set(reasons)
    await operator.stop()


async def test_last_state_keeps_state_and_stateless_starts_over(
    cluster: Env, start_operator: StartOperator
) -> None:
    client = cluster.client
    kept_db, fresh_db = cluster.tmp / "kept.db", cluster.tmp / "fresh.db"
    operator = await start_operator()
    await start_job(
        cluster, operator, "kept", window_spec(kept_db, parallelism=1, rate=2000, upgradeMode="last-state")
    )
    fresh_spec = window_spec(fresh_db, parallelism=1, rate=2000, upgradeMode="stateless")
    await start_job(cluster, operator, "fresh", fresh_spec)

    async def committed() -> bool:  # some windows are in the sink before the edit
        return fresh_db.exists() and bool(table_rows(fresh_db)) and bool(table_rows(kept_db))

    await eventually(committed, 30, "windows in both sinks", on_fail=operator.output()[-3000:])
    for name in ("kept", "fresh"):
        await patch_spec(client, name, {"config": {**fresh_spec["config"], "parallelism": 2}})

    kept = (await upgraded(cluster, operator, "kept", 2, "completed"))["upgrade"]
    assert kept["mode"] == "last-state" and kept["restoredFrom"].startswith("checkpoint "), kept
    fresh = (await upgraded(cluster, operator, "fresh", 2, "completed"))["upgrade"]
    assert (fresh["mode"], fresh["restoredFrom"]) == ("stateless", ""), fresh
    assert "empty state" in fresh["message"]

    for name in ("kept", "fresh"):
        await wait_phase(client, name, "finished", timeout=90, log=operator.output())
    expected = await expected_windows()
    assert table_rows(kept_db) == expected  # positions and window state carried over: exact
    rows = table_rows(fresh_db)
    # no state: the sources read from their start again, so the windows committed before are there twice
    assert set(rows) == set(expected) and len(rows) > len(expected)
    assert (await job_status(client, "kept")).get("lastSavepoint") is None  # last-state takes no savepoint
    await operator.stop()


async def test_failed_savepoint_keeps_the_old_spec_running(
    cluster: Env, start_operator: StartOperator
) -> None:
    client = cluster.client
    operator = await start_operator(args=["--all-namespaces", "--max-parallelism", "3"])
    spec = window_spec(cluster.tmp / "out.db", parallelism=1, rate=400)  # 50 s of data: still running
    status = await start_job(cluster, operator, "stuck", spec)
    chk = next(operator.home.rglob(f"{status['jobId']}/chk-*"))
    (chk.parent / "savepoints").write_text("not a directory: a savepoint cannot be written")

    await patch_spec(client, "stuck", {"config": {**spec["config"], "parallelism": 2}})
    status = await upgraded(cluster, operator, "stuck", 2, "failed")
    assert "savepoint failed" in status["upgrade"]["message"], status["upgrade"]
    assert status["phase"] == "running" and status["parallelism"] == 1
    assert status["observedGeneration"] == 1  # the edited spec is not applied
    assert attempts(await worker_pods(client, "stuck")) == ["1"]  # the old run goes on
    assert "UpgradeFailed" in [r for r, _ in await events_of(client, "stuck")]

    # another edit tries again: in last-state mode no savepoint is needed
    await patch_spec(client, "stuck", {"upgradeMode": "last-state"})
    status = await upgraded(cluster, operator, "stuck", 3, "completed")
    assert status["parallelism"] == 2 and status["observedGeneration"] == 3
    assert status["upgrade"]["restoredFrom"].startswith("checkpoint ")
    assert attempts(await worker_pods(client, "stuck")) == ["2", "2"]

    # more than the operator's slots: refused before anything stops, the job runs on at 2
    await patch_spec(client, "stuck", {"config": {**spec["config"], "parallelism": 4}})
    status = await upgraded(cluster, operator, "stuck", 4, "failed")
    assert "max_parallelism 3" in status["upgrade"]["message"], status["upgrade"]
    assert (status["phase"], status["parallelism"], status["observedGeneration"]) == ("running", 2, 3)
    assert attempts(await worker_pods(client, "stuck")) == ["2", "2"]

    # a paused job is upgraded too, and stays paused
    await patch_spec(client, "stuck", {"state": "paused"})
    await wait_phase(client, "stuck", "paused", log=operator.output())
    await patch_spec(client, "stuck", {"config": {**spec["config"], "parallelism": 1}})
    await upgraded(cluster, operator, "stuck", 6, "completed")
    status = await wait_phase(client, "stuck", "paused", log=operator.output())
    assert (status["parallelism"], status["observedGeneration"]) == (1, 6)
    assert attempts(await worker_pods(client, "stuck")) == ["3"]
    await operator.stop()


async def test_kubectl_scale_sets_the_parallelism_through_the_scale_subresource(tmp_path: Path) -> None:
    """The real kubectl against the emulated API server (no authentication: kubectl sends no token
    over plain HTTP): discovery finds the subresource, ``scale`` patches it, the schema still applies."""
    async with start_cluster(tmp_path) as emulated:
        enforce_crd_schemas(emulated.emulator)
        client = kube.KubeClient(emulated.connection())
        try:
            await client.create(
                kube.STREAMINGJOBS,
                NS,
                streaming_job("x", window_spec(tmp_path / "o.db", parallelism=2, rate=1)),
            )
            code, out = await kubectl(emulated.kubeconfig, "scale", "sj/x", "--replicas=4")
            assert code == 0 and "scaled" in out, out
            resource = await client.get(kube.STREAMINGJOBS, NS, "x")
            assert (resource["spec"]["config"]["parallelism"], resource["metadata"]["generation"]) == (4, 2)
            code, out = await kubectl(emulated.kubeconfig, "scale", "sj/x", "--replicas=0")
            assert code != 0 and "spec.config.parallelism" in out, out  # the CRD's minimum is 1
            code, out = await kubectl(emulated.kubeconfig, "get", "sj/x", "--subresource=scale", "-o", "json")
            assert code == 0 and '"replicas": 4' in out, out
        finally:
            await client.close()
