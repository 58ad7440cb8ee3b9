"""Both served versions of the StreamingJob end to end: ``helios operator`` (which watches v1alpha2)
against the emulated API server, which stores v1alpha2 and serves v1alpha1 through the conversion the
operator's webhook runs: here the operator's own ``/convert``, over HTTP, as the API server calls it
(``kube_emulator`` point 7, ``chart_rbac.webhook_converter``). A job written
in v1alpha1 (the REST body's snake_case) runs; reads in either version show the same job in their own
names; a v1alpha1 patch acts on it; its immutable fields stay immutable through v1alpha1 too."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from chart_rbac import webhook_converter
from k8s_helpers import NS, Env, StartOperator, eventually, job_status, wait_phase, window_spec

from heliosdb_streaming.kubernetes import crds, kube
from heliosdb_streaming.testing.ports import free_port

pytestmark = pytest.mark.timeout(180)

LEGACY = kube.Resource(crds.GROUP, crds.LEGACY_VERSION, crds.STREAMING_JOB_PLURAL)


async def test_a_v1alpha1_job_runs_and_reads_in_both_versions(
    cluster: Env, start_operator: StartOperator
) -> None:
    client = cluster.client
    metrics_port = free_port()
    operator = await start_operator(args=["--all-namespaces", "--metrics-port", str(metrics_port)])
    calls = []
    webhook = webhook_converter(f"http://127.0.0.1:{metrics_port}{crds.WEBHOOK_PATH}")

    async def counted(objects: list[dict[str, Any]], desired: str) -> list[dict[str, Any]]:
        calls.append(desired)
        return await webhook(objects, desired)

    key = (crds.GROUP, crds.STREAMING_JOB_PLURAL)
    cluster.cluster.emulator.conversions[key] = (crds.VERSION, counted)
    await eventually(
        lambda: healthy(metrics_port), 30, "the operator's metrics port", on_fail=operator.output()
    )
    spec = window_spec(cluster.tmp / "out.db", parallelism=2, rate=300)
    legacy = {
        "apiVersion": crds.LEGACY_API_VERSION,
        "kind": crds.STREAMING_JOB_KIND,
        "metadata": {"name": "old-style", "namespace": NS},
        "spec": spec,
    }
    created = await client.create(LEGACY, NS, legacy)
    assert (
        created["apiVersion"] == crds.LEGACY_API_VERSION
        and created["spec"]["config"]["checkpoint_interval_ms"] == 500
    )
    stored = await client.get(kube.STREAMINGJOBS, NS, "old-style")
    assert stored["apiVersion"] == crds.API_VERSION
    assert (
        stored["spec"]["config"]["checkpointIntervalMs"] == 500
        and "checkpoint_interval_ms" not in stored["spec"]["config"]
    )
    assert stored["spec"]["config"]["restartStrategy"] == {
        "type": "fixed_delay",
        "attempts": 5,
        "delayMs": 300,
    }
    status = await wait_phase(client, "old-style", "running", log=operator.output())
    assert status["parallelism"] == 2
    # kopf's bookkeeping is in annotations (handlers.settings), the status schema has no room for it
    annotations = (await client.get(kube.STREAMINGJOBS, NS, "old-style"))["metadata"]["annotations"]
    assert f"{crds.GROUP}/last-handled-configuration" in annotations and "kopf" not in status

    old_view = await client.get(LEGACY, NS, "old-style")
    assert old_view["spec"]["config"]["restart_strategy"] == {
        "type": "fixed_delay",
        "attempts": 5,
        "delay_ms": 300,
    }
    assert old_view["spec"]["sources"] == spec["sources"] and old_view["status"]["jobId"] == status["jobId"]
    (listed,) = await client.list(LEGACY, NS)
    assert listed["spec"]["config"]["checkpoint_interval_ms"] == 500
    # what kubectl prints for every v1alpha1 request: the CRD's deprecationWarning
    headers = {"Authorization": f"Bearer {cluster.cluster.admin_token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(f"{cluster.cluster.url}{LEGACY.path(NS, 'old-style')}") as r:
            assert r.status == 200 and r.headers["Warning"] == f'299 - "{crds.DEPRECATION_WARNING}"'
        async with session.get(f"{cluster.cluster.url}{kube.STREAMINGJOBS.path(NS, 'old-style')}") as r:
            assert r.status == 200 and "Warning" not in r.headers

    await client.patch(LEGACY, NS, "old-style", {"spec": {"state": "paused"}})
    await wait_phase(client, "old-style", "paused", log=operator.output())
    with pytest.raises(kube.ApiError) as refused:
        await client.patch(LEGACY, NS, "old-style", {"spec": {"config": {"max_parallelism": 64}}})
    assert refused.value.status == 422 and "maxParallelism is immutable" in str(refused.value)
    assert (await job_status(client, "old-style"))["phase"] == "paused"
    assert crds.API_VERSION in calls and crds.LEGACY_API_VERSION in calls  # both ways, by the operator
    await operator.stop()


async def healthy(port: int) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False
