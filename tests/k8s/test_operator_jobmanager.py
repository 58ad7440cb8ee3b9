"""A job manager per StreamingJob: the job outlives the operator, and a new job manager recovers it.

``helios operator --job-managers`` (a subprocess, as the chart's operator account) creates for each
StreamingJob a ``<name>-jobmanager`` pod, which the test kubelet runs as a local ``helios jobmanager``
process with the chart's job manager account (its Role enforced by the emulated API server); the job
manager starts the worker pods, coordinates checkpoints and writes the status. The window job's rows
are compared with the windows computed straight from the generated records.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import pytest
from chart_rbac import JOBMANAGER_ACCOUNT, install_jobmanager_rbac
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
    savepoint,
    streaming_job,
    table_rows,
    wait_phase,
    window_spec,
    worker_pods,
)
from test_chart import NAMESPACE
from test_operator_ha import LEASE, leader_label, operator_pod

from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.kubernetes.operator import jmpods
from heliosdb_streaming.kubernetes.restapi.readclient import OperatorClient
from heliosdb_streaming.model.types import LogOptions
from heliosdb_streaming.testing import pss
from heliosdb_streaming.testing.ports import free_port

pytestmark = pytest.mark.timeout(240)

SCOPE = ["--all-namespaces"]
KEY = "test-jobmanager-key"


async def start(
    cluster: Env, start_operator: StartOperator, extra: list[str] | None = None, **kwargs: Any
) -> OperatorProcess:
    """The operator with job managers; they bind loopback ports the system picks (no cluster DNS here)."""
    await install_jobmanager_rbac(cluster.client, SCOPE)
    loopback = ["--api-host=127.0.0.1", "--api-port=0", "--control-host=127.0.0.1", "--control-port=0"]
    args = [
        *SCOPE,
        "--job-managers",
        "--jobmanager-url-from-status",
        "--jobmanager-service-account",
        JOBMANAGER_ACCOUNT,
        *(f"--jobmanager-arg={a}" for a in [*loopback, "--advertise-host=127.0.0.1"]),
        "--checkpoint-storage",
        f"file://{cluster.tmp / 'checkpoints'}",
        *(extra or []),
    ]
    env = {"HELIOS_JOBMANAGER_KEY": KEY, **kwargs.pop("env", {})}
    return await start_operator(args=args, env=env, **kwargs)


async def jobmanager_pod(client: kube.KubeClient, name: str) -> dict[str, Any] | None:
    return await client.get_or_none(kube.PODS, NS, jmpods.name_of(name))


def checkpoint_number(status: dict[str, Any]) -> int:
    return int(str(status.get("lastCheckpoint") or "checkpoint-0").rsplit("-", 1)[1])


async def checkpoint_after(client: kube.KubeClient, name: str, after: int, timeout: float = 30) -> int:
    async def probe() -> int | None:
        n = checkpoint_number(await job_status(client, name))
        return n if n > after else None

    return await eventually(probe, timeout, f"a checkpoint of {name} after {after}")


def jm_log(cluster: Env, name: str) -> str:
    return cluster.kubelet.log_of(NS, jmpods.name_of(name))[-4000:]


async def test_operator_killed_jobs_run_on_and_checkpoint(
    cluster: Env, start_operator: StartOperator
) -> None:
    client, db = cluster.client, cluster.tmp / "out.db"
    first = await start(cluster, start_operator)
    await client.create(
        kube.STREAMINGJOBS, NS, streaming_job("spend", window_spec(db, parallelism=2, rate=800))
    )
    status = await wait_phase(client, "spend", "running", log=first.output())
    jm = await eventually(lambda: jobmanager_pod(client, "spend"), 10, "the job manager pod")
    assert pss.violations(jm["spec"]) == []  # restricted Pod Security Standard, as the workers
    before = await checkpoint_after(client, "spend", 0)
    workers = {p["metadata"]["name"]: p["metadata"]["uid"] for p in await worker_pods(client, "spend")}
    pids = {name: cluster.kubelet.running[(NS, name)].process.pid for name in workers}
    assert len(workers) == 2

    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
    # while no operator runs, the job manager goes on: checkpoints complete, status is written
    during = await checkpoint_after(client, "spend", before, timeout=20)
    assert during > before

    second = await start(cluster, start_operator)
    final = await wait_phase(client, "spend", "finished", timeout=120, log=jm_log(cluster, "spend"))
    assert final["jobId"] == status["jobId"]
    assert final.get("restarts", 0) == 0  # no worker was restarted, no recovery happened
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in await worker_pods(client, "spend")}
    assert after == workers  # the very pods of the first run
    assert {name: cluster.kubelet.running[(NS, name)].process.pid for name in workers} == pids
    assert table_rows(db) == await expected_windows()
    # the restarted operator still forwards spec changes: a cancel of the finished job is a no-op, a
    # delete goes through its finalizer to the job manager
    await client.delete(kube.STREAMINGJOBS, NS, "spend")

    async def gone() -> bool:
        return await client.get_or_none(kube.STREAMINGJOBS, NS, "spend") is None

    await eventually(gone, 30, "the StreamingJob's finalizer", on_fail=second.output()[-3000:])
    await second.stop()


@pytest.mark.parametrize("how", ["pod deleted", "process killed"])
async def test_jobmanager_killed_recovers_from_latest_checkpoint(
    cluster: Env, start_operator: StartOperator, how: str
) -> None:
    """The pod deleted (its home with it), or its process SIGKILLed (the pod ends Failed, the operator
    replaces it): the new job manager recovers the job from its latest checkpoint in storage."""
    client, db = cluster.client, cluster.tmp / "out.db"
    operator = await start(cluster, start_operator)
    await client.create(
        kube.STREAMINGJOBS, NS, streaming_job("spend", window_spec(db, parallelism=2, rate=800))
    )
    status = await wait_phase(client, "spend", "running", log=operator.output())
    latest = await checkpoint_after(client, "spend", 1)
    old = await jobmanager_pod(client, "spend")
    assert old is not None
    if how == "pod deleted":
        await client.delete(kube.PODS, NS, jmpods.name_of("spend"), grace_period_s=0)
    else:
        cluster.kubelet.kill(NS, jmpods.name_of("spend"))

    async def replaced() -> dict[str, Any] | None:
        pod = await jobmanager_pod(client, "spend")
        new = pod is not None and pod["metadata"]["uid"] != old["metadata"]["uid"]
        return pod if new and (pod.get("status") or {}).get("phase") == "Running" else None

    await eventually(replaced, 30, "a new job manager pod", on_fail=operator.output()[-3000:])

    async def recovered() -> dict[str, Any] | None:
        s = await job_status(client, "spend")
        return s if s.get("restarts", 0) >= 1 else None

    await eventually(recovered, 60, "the recovery", on_fail=jm_log(cluster, "spend"))
    log = cluster.kubelet.log_of(NS, jmpods.name_of("spend"))
    assert "recovering it from snapshot" in log, log[-3000:]
    recovered_from = int(log.split("recovering it from snapshot ", 1)[1].split(" ", 1)[0])
    assert recovered_from >= latest  # its latest checkpoint, found in checkpoint storage
    final = await wait_phase(client, "spend", "finished", timeout=120, log=jm_log(cluster, "spend"))
    assert final["jobId"] == status["jobId"]
    assert checkpoint_number(final) > recovered_from  # ids go on from the recovered one
    assert table_rows(db) == await expected_windows()
    await operator.stop()


async def read_api_answers_from_the_jobmanager(operator: OperatorProcess, job_id: str) -> None:
    """``helios server --substrate kubernetes``'s client, against the operator: what only the job's
    control plane knows comes from its job manager, through the operator."""
    reader = OperatorClient(f"http://127.0.0.1:{operator.read_port}", NS)
    other = OperatorClient(f"http://127.0.0.1:{operator.read_port}", "elsewhere")
    try:
        details = await reader.details(job_id)
        assert details is not None and details["job_id"] == job_id and details["status"] == "running"
        assert await reader.checkpoints(job_id) is not None
        assert await other.details(job_id) is None  # another namespace's client: no such job
        exposition = (await reader.prometheus()).decode()
        assert 'streamingjob="endless"' in exposition and "heliosdb_job_count" in exposition
        assert exposition.count("# TYPE heliosdb_job_count ") == 1
        assert (await reader.info()).max_parallelism == 1024
        log = await reader.control_log(job_id, LogOptions())
        assert log and any("submitted" in e.message for e in log)
    finally:
        await reader.close()
        await other.close()


async def test_pause_resume_through_the_jobmanager(cluster: Env, start_operator: StartOperator) -> None:
    client = cluster.client
    operator = await start(cluster, start_operator)
    spec = window_spec(cluster.tmp / "out.db", parallelism=1, rate=200)
    await client.create(kube.STREAMINGJOBS, NS, streaming_job("endless", spec))
    await wait_phase(client, "endless", "running", log=operator.output())
    await patch_spec(client, "endless", {"state": "paused"})
    await wait_phase(client, "endless", "paused", log=jm_log(cluster, "endless"))
    await patch_spec(client, "endless", {"state": "running"})
    await wait_phase(client, "endless", "running", log=jm_log(cluster, "endless"))
    await read_api_answers_from_the_jobmanager(operator, (await job_status(client, "endless"))["jobId"])
    await patch_spec(client, "endless", {"state": "cancelled"})
    await wait_phase(client, "endless", "cancelled", log=jm_log(cluster, "endless"))
    await operator.stop()


async def test_standby_takeover_recovers_nothing_but_reconciliation(
    cluster: Env, start_operator: StartOperator
) -> None:
    """Two replicas with leader election: the leader SIGKILLed, the standby takes the Lease over and
    only reconciles; the job's pods run on untouched, and a Savepoint made afterwards is taken by the
    job manager through the new leader."""
    client, db = cluster.client, cluster.tmp / "out.db"
    replicas = []
    for pod in ("operator-a", "operator-b"):
        await operator_pod(cluster, pod)
        election = ["--leader-election", "--lease-name", LEASE, "--lease-namespace", NAMESPACE]
        election += ["--lease-duration", "3", "--metrics-port", str(free_port())]
        pod_env = {"POD_NAME": pod, "POD_NAMESPACE": NAMESPACE}
        replicas.append(await start(cluster, start_operator, election, home=cluster.tmp / pod, env=pod_env))
        if pod == "operator-a":

            async def leads() -> bool:
                return await leader_label(cluster, "operator-a") == "true"

            await eventually(leads, 30, "a leader")
    first, second = replicas
    spec = {**window_spec(db, parallelism=2, rate=600), "savepointOnCancel": False}
    await client.create(kube.STREAMINGJOBS, NS, streaming_job("spend", spec))
    await wait_phase(client, "spend", "running", log=first.output())
    before = await checkpoint_after(client, "spend", 0)
    workers = {p["metadata"]["name"]: p["metadata"]["uid"] for p in await worker_pods(client, "spend")}
    assert "standby: waiting for Lease" in second.output()

    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
    await checkpoint_after(client, "spend", before)  # the job goes on meanwhile

    async def led() -> bool:
        return await leader_label(cluster, "operator-b") == "true"

    await eventually(led, 30, "the standby to lead", on_fail=second.output()[-3000:])
    await client.create(kube.SAVEPOINTS, NS, savepoint("sp1", "spend", "after the takeover"))

    async def completed() -> dict[str, Any] | None:
        sp = await client.get_or_none(kube.SAVEPOINTS, NS, "sp1")
        state = ((sp or {}).get("status") or {}).get("state")
        return sp["status"] if sp and state == "completed" else None

    taken = await eventually(completed, 60, "the savepoint", on_fail=jm_log(cluster, "spend"))
    assert taken["location"].startswith("file://")
    final = await wait_phase(client, "spend", "finished", timeout=120, log=jm_log(cluster, "spend"))
    assert final.get("restarts", 0) == 0
    assert {
        p["metadata"]["name"]: p["metadata"]["uid"] for p in await worker_pods(client, "spend")
    } == workers
    assert table_rows(db) == await expected_windows()
    await second.stop()


async def test_kubectl_scale_is_applied_by_the_jobmanager(
    cluster: Env, start_operator: StartOperator
) -> None:
    """``kubectl scale sj/x --replicas=3``: the operator forwards the new spec, the job manager upgrades
    the job through a savepoint (the in-operator reconciler's code), the windows stay exact."""
    client, db = cluster.client, cluster.tmp / "out.db"
    operator = await start(cluster, start_operator)
    await client.create(
        kube.STREAMINGJOBS, NS, streaming_job("scaled", window_spec(db, parallelism=2, rate=800))
    )
    await wait_phase(client, "scaled", "running", log=operator.output())
    await checkpoint_after(client, "scaled", 0)
    await client.patch(kube.STREAMINGJOBS, NS, "scaled", {"spec": {"replicas": 3}}, subresource="scale")

    async def upgraded() -> dict[str, Any] | None:
        s = await job_status(client, "scaled")
        return (
            s if (s.get("upgrade") or {}).get("state") == "completed" and s.get("parallelism") == 3 else None
        )

    status = await eventually(upgraded, 60, "the upgrade", on_fail=jm_log(cluster, "scaled"))
    assert status["upgrade"]["mode"] == "savepoint" and status["observedGeneration"] == 2
    assert len(await worker_pods(client, "scaled")) == 3
    await wait_phase(client, "scaled", "finished", timeout=120, log=jm_log(cluster, "scaled"))
    assert table_rows(db) == await expected_windows()
    await operator.stop()


async def test_a_savepoint_another_job_restores_stays_until_that_job_is_done(
    cluster: Env, start_operator: StartOperator
) -> None:
    """Each job manager sees only its own job, so the Savepoint's finalizer asks the StreamingJobs:
    one deleted while another StreamingJob restores it (no checkpoint of its own yet) keeps its
    resource and its files until that job is cancelled, then goes with them."""
    client = cluster.client
    operator = await start(cluster, start_operator)
    await client.create(
        kube.STREAMINGJOBS,
        NS,
        streaming_job("origin", window_spec(cluster.tmp / "a.db", parallelism=1, rate=200)),
    )
    await wait_phase(client, "origin", "running", log=operator.output())
    await client.create(kube.SAVEPOINTS, NS, savepoint("kept", "origin"))

    async def completed() -> dict[str, Any] | None:
        found = await client.get_or_none(kube.SAVEPOINTS, NS, "kept")
        observed = (found or {}).get("status") or {}
        return observed if observed.get("state") == "completed" else None

    location = (await eventually(completed, 60, "the savepoint", on_fail=jm_log(cluster, "origin")))[
        "location"
    ]
    directory = Path(urlparse(location).path)
    spec = window_spec(cluster.tmp / "b.db", parallelism=1, rate=200, restoreFrom="kept")
    spec["config"]["checkpoint_interval_ms"] = 600_000  # no checkpoint of its own during the test
    await client.create(kube.STREAMINGJOBS, NS, streaming_job("restorer", spec))
    await wait_phase(client, "restorer", "running", log=operator.output())

    await merged_job_list_pages(operator, newest="restorer", older="origin")

    await client.delete(kube.SAVEPOINTS, NS, "kept")
    await eventually(
        lambda: _marked_deleted(client, "kept"),
        10,
        "the deletion to be marked",
        on_fail=operator.output()[-3000:],
    )
    await asyncio.sleep(3)  # the finalizer ran (and refused) meanwhile
    held = await client.get_or_none(kube.SAVEPOINTS, NS, "kept")
    assert held is not None and (directory / "_manifest.json").is_file(), operator.output()[-3000:]
    # said once, as an Event naming the job that restores it; no kopf Warning per retry
    (said,) = [m for reason, m in await events_of(client, "kept") if reason == "SavepointInUse"]
    assert (await job_status(client, "restorer"))["jobId"] in said
    assert {r for r, _ in await events_of(client, "kept")} == {"SavepointCompleted", "SavepointInUse"}

    await patch_spec(client, "restorer", {"state": "cancelled"})
    await wait_phase(client, "restorer", "cancelled", log=jm_log(cluster, "restorer"))

    async def gone() -> bool:
        return await client.get_or_none(kube.SAVEPOINTS, NS, "kept") is None

    await eventually(gone, 30, "the Savepoint to go", on_fail=operator.output()[-3000:])
    assert not directory.exists()
    await operator.stop()


async def _marked_deleted(client: kube.KubeClient, name: str) -> bool:
    found = await client.get_or_none(kube.SAVEPOINTS, NS, name)
    return bool(found and found["metadata"].get("deletionTimestamp"))


async def merged_job_list_pages(operator: OperatorProcess, *, newest: str, older: str) -> None:
    """The operator's read API merges every job manager's list into pages as the embedded list:
    newest first, ``offset`` and ``limit`` over the whole, ``total`` of all."""
    url = f"http://127.0.0.1:{operator.read_port}/api/v1/jobs"
    async with aiohttp.ClientSession() as session:
        pages = []
        for offset in (0, 1, 2):
            async with session.get(url, params={"limit": "1", "offset": str(offset)}) as response:
                assert response.status == 200, await response.text()
                pages.append(await response.json())
        async with session.get(url, params={"status": "running", "limit": "5"}) as response:
            running = await response.json()
    assert [[job["name"] for job in page["jobs"]] for page in pages] == [[newest], [older], []]
    assert [(page["total"], page["limit"], page["offset"]) for page in pages] == [
        (2, 1, 0),
        (2, 1, 1),
        (2, 1, 2),
    ]
    assert {job["name"] for job in running["jobs"]} == {newest, older} and running["total"] == 2
