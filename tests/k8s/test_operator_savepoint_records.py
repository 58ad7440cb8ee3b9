"""Savepoints a job takes itself are Savepoint resources on Kubernetes (issue 16): the periodic ones of
``config.savepoint_interval_ms`` and an upgrade's are owned by their StreamingJob, and retention
(``savepoints_retained``) deletes the resource with the files; the one taken on cancel is not owned,
so it outlives the StreamingJob and keeps its job (not purged) until that Savepoint is deleted.

``helios operator`` (a subprocess) against the emulated API server, worker pods run by the test
kubelet as real processes, savepoint files on the local disk. Both layouts: the control plane in the
operator, and in a job manager pod per StreamingJob (``--job-managers``), whose process records the
savepoints it takes as its account (the chart's job manager Role, enforced).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from k8s_helpers import (
    NS,
    Env,
    OperatorProcess,
    StartOperator,
    eventually,
    job_status,
    patch_spec,
    streaming_job,
    wait_phase,
    window_spec,
)
from test_operator_jobmanager import start as start_with_job_managers

from heliosdb_streaming.kubernetes import crds, kube
from heliosdb_streaming.kubernetes.operator import jmpods

pytestmark = pytest.mark.timeout(180)


def files_of(savepoint: dict[str, Any]) -> Path:
    location = str(savepoint["status"]["location"])
    return Path(location.removeprefix("file://"))


async def savepoints_of(env: Env, job: str) -> dict[str, dict[str, Any]]:
    items = await env.client.list(kube.SAVEPOINTS, NS)
    return {s["metadata"]["name"]: s for s in items if s["spec"]["jobRef"] == job}


async def start(layout: str, cluster: Env, start_operator: StartOperator) -> OperatorProcess:
    if layout == "job-managers":
        return await start_with_job_managers(cluster, start_operator)
    return await start_operator()


@pytest.mark.parametrize("layout", ["in-operator", "job-managers"])
async def test_periodic_upgrade_and_cancel_savepoints_are_resources_and_retention_deletes_them(
    cluster: Env, start_operator: StartOperator, layout: str
) -> None:
    client = cluster.client
    operator = await start(layout, cluster, start_operator)
    spec = window_spec(cluster.tmp / "out.db", parallelism=1, rate=1000)
    spec["config"] |= {"savepoint_interval_ms": 1000, "savepoints_retained": 2}
    await client.create(kube.STREAMINGJOBS, NS, streaming_job("keeper", spec))
    status = await wait_phase(client, "keeper", "running", log=operator.output())
    job_id = status["jobId"]
    uid = (await client.get(kube.STREAMINGJOBS, NS, "keeper"))["metadata"]["uid"]
    owner = {"apiVersion": crds.API_VERSION, "kind": crds.STREAMING_JOB_KIND, "name": "keeper", "uid": uid}

    seen: dict[str, dict[str, Any]] = {}

    async def periodic_trimmed() -> dict[str, dict[str, Any]] | None:
        now = {
            n: s
            for n, s in (await savepoints_of(cluster, "keeper")).items()
            if (s.get("status") or {}).get("state") == "completed"
        }
        seen.update(now)
        return now if len(seen) >= 4 else None  # two more than are retained: retention has run

    current = await eventually(
        periodic_trimmed, 60, "four periodic savepoints", on_fail=operator.output()[-3000:]
    )
    assert len(current) <= 3, sorted(current)  # a new one completes a moment before retention trims

    async def retained() -> dict[str, dict[str, Any]] | None:
        now = await savepoints_of(cluster, "keeper")
        seen.update(now)
        return now if 1 <= len(now) <= 2 else None

    current = await eventually(
        retained, 10, "two periodic savepoints retained", on_fail=operator.output()[-3000:]
    )
    for name, sp in seen.items():
        assert sp["spec"]["description"] == "periodic", sp
        assert sp["metadata"]["ownerReferences"] == [owner], sp
        assert sp["status"]["jobId"] == job_id and name == f"keeper-{sp['status']['savepointId']}"
    for name in current:
        assert files_of(current[name]).is_dir(), name

    async def trimmed_files_gone() -> bool:  # retention deleted the files and the resource together
        now = await savepoints_of(cluster, "keeper")
        gone = [sp for n, sp in seen.items() if n not in now]
        return len(gone) >= 2 and not any(files_of(sp).exists() for sp in gone)

    await eventually(
        trimmed_files_gone, 30, "trimmed savepoints' files to go", on_fail=operator.output()[-3000:]
    )

    # an upgrade's savepoint is recorded too, owned by the job
    await patch_spec(client, "keeper", {"config": {**spec["config"], "parallelism": 2}})

    async def upgrade_recorded() -> dict[str, Any] | None:
        found = [
            sp
            for sp in (await savepoints_of(cluster, "keeper")).values()
            if sp["spec"]["description"] == "upgrade to generation 2"
        ]
        return found[0] if found else None

    upgrade = await eventually(
        upgrade_recorded, 60, "the upgrade's Savepoint", on_fail=operator.output()[-3000:]
    )
    assert upgrade["metadata"]["ownerReferences"] == [owner] and upgrade["status"]["state"] == "completed"

    # cancelled with a savepoint: that one is not owned, it outlives the StreamingJob
    async def upgraded() -> bool:  # the new run runs (a cancel while it starts takes no savepoint)
        status = await job_status(client, "keeper")
        return (status.get("upgrade") or {}).get("state") == "completed" and status.get("phase") == "running"

    await eventually(upgraded, 60, "the upgraded run", on_fail=operator.output()[-3000:])
    await patch_spec(client, "keeper", {"savepointOnCancel": True, "state": "cancelled"})
    await wait_phase(client, "keeper", "cancelled", log=operator.output())

    async def cancel_recorded() -> dict[str, Any] | None:
        found = [
            sp
            for sp in (await savepoints_of(cluster, "keeper")).values()
            if sp["spec"]["description"] == "taken on cancel" and (sp.get("status") or {}).get("location")
        ]
        return found[0] if found else None

    on_cancel = await eventually(
        cancel_recorded, 30, "the cancel's Savepoint", on_fail=operator.output()[-3000:]
    )
    assert not on_cancel["metadata"].get("ownerReferences")

    await client.delete(kube.STREAMINGJOBS, NS, "keeper")
    home = operator.home / "jobs" / job_id

    async def only_cancel_savepoint_left() -> bool:
        return list(await savepoints_of(cluster, "keeper")) == [on_cancel["metadata"]["name"]]

    await eventually(
        only_cancel_savepoint_left, 30, "the owned Savepoints to go", on_fail=operator.output()[-3000:]
    )
    assert files_of(on_cancel).is_dir()
    assert not files_of(upgrade).exists()
    if layout == "job-managers":
        # the job manager went with its StreamingJob (its pod, and the job's record in its home); the
        # cancel's Savepoint is still listed with its files
        async def jobmanager_gone() -> bool:
            return await client.get_or_none(kube.PODS, NS, jmpods.name_of("keeper")) is None

        await eventually(jobmanager_gone, 30, "the job manager pod to go", on_fail=operator.output()[-3000:])
        # deleted later, its files go too: with the job manager gone the operator deletes them,
        # having checked that the manifest there is of this very savepoint
        await client.delete(kube.SAVEPOINTS, NS, on_cancel["metadata"]["name"])

        async def deleted_with_files() -> bool:
            left = await client.get_or_none(kube.SAVEPOINTS, NS, on_cancel["metadata"]["name"])
            return left is None and not files_of(on_cancel).exists()

        await eventually(
            deleted_with_files, 30, "the orphan's files to go", on_fail=operator.output()[-3000:]
        )
        await operator.stop()
        return
    assert home.is_dir()  # the job is kept for its savepoint

    await client.delete(kube.SAVEPOINTS, NS, on_cancel["metadata"]["name"])

    async def purged() -> bool:
        return not home.exists() and not files_of(on_cancel).exists()

    await eventually(
        purged, 30, "the job to be purged with its last savepoint", on_fail=operator.output()[-3000:]
    )
    await operator.stop()
