"""The operator end to end: StreamingJob -> operator -> pods (run by the test kubelet) -> workers -> status.

Every scenario runs ``helios operator`` (a subprocess) against the emulated API server over HTTP;
pods are local processes of the real worker, so the output, checkpoints and savepoints are real. The
window job's result is compared with the windows computed straight from the generated records.
"""

from __future__ import annotations

import base64
import json
import signal
from pathlib import Path
from urllib.parse import urlparse

import aiohttp
import pytest
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

from heliosdb_streaming.kubernetes import crds, kube
from heliosdb_streaming.testing import pss

pytestmark = pytest.mark.timeout(180)

UPSERT = {"key": ["key", "window_start"]}  # a replay from an older savepoint rewrites the same rows


def upsert_spec(db: Path, *, parallelism: int, rate: float) -> dict[str, object]:
    spec = window_spec(db, parallelism=parallelism, rate=rate)
    spec["sinks"][0]["config"].update(UPSERT)  # type: ignore[index]
    return spec


async def create(env: Env, name: str, spec: dict[str, object]) -> None:
    await env.client.create(kube.STREAMINGJOBS, NS, streaming_job(name, spec))


async def wait_checkpoint(env: Env, name: str, operator: OperatorProcess) -> str:
    async def probe() -> str | None:
        return (await job_status(env.client, name)).get("lastCheckpoint")

    return await eventually(probe, 30, f"a checkpoint of {name}", on_fail=operator.output()[-3000:])


async def test_create_runs_workers_and_cancel_with_savepoint_then_restart_rescaled(
    cluster: Env, start_operator: StartOperator
) -> None:
    client, db = cluster.client, cluster.tmp / "out.db"
    operator = await start_operator()
    await create(cluster, "spend", {**window_spec(db, parallelism=2, rate=5000), "savepointOnCancel": True})
    status = await wait_phase(client, "spend", "running", log=operator.output())
    health_url = f"http://127.0.0.1:{operator.read_port}/healthz"  # what the chart's probes ask, no token
    async with aiohttp.ClientSession() as http, http.get(health_url) as health:
        assert health.status == 200 and (await health.json())["status"] == "ok"
    assert status["jobId"].startswith("job-") and status["parallelism"] == 2
    assert status["startedAt"] and status["submittedAt"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True",
        "Failed": "False",
        "SpecApplied": "True",
        "SavepointInProgress": "False",
    }
    generation = (await client.get(kube.STREAMINGJOBS, NS, "spend"))["metadata"]["generation"]
    assert status["observedGeneration"] == generation
    assert {c["observedGeneration"] for c in status["conditions"]} == {generation}
    annotations = (await client.get(kube.STREAMINGJOBS, NS, "spend"))["metadata"]["annotations"]
    assert "kopf" not in status and f"{crds.GROUP}/last-handled-configuration" in annotations  # progress

    workers = await worker_pods(client, "spend")
    assert [p["metadata"]["name"] for p in workers] == ["spend-worker-0", "spend-worker-1"]
    owner = workers[0]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == (crds.STREAMING_JOB_KIND, "spend", True)
    assert workers[0]["spec"]["restartPolicy"] == "Never"
    assert [pss.violations(p["spec"]) for p in workers] == [[], []]  # restricted Pod Security Standard
    assert workers[0]["spec"]["containers"][0]["image"] == "heliosdb-streaming:test"
    assert {p["status"]["phase"] for p in workers} == {"Running"}
    job_file = (await client.get(kube.SECRETS, NS, "spend-job"))["data"]["job.json"]
    assert '"parallelism":2' in base64.b64decode(job_file).decode()
    job_volume = {"secretName": "spend-job", "items": [{"key": "job.json", "path": "job.json"}]}
    assert {"name": "job", "secret": job_volume} in workers[0]["spec"]["volumes"]
    assert (await client.get(kube.SERVICES, NS, "spend-workers"))["spec"]["clusterIP"] == "None"
    await wait_checkpoint(cluster, "spend", operator)

    await patch_spec(client, "spend", {"state": "cancelled"})  # with a savepoint (savepointOnCancel)
    status = await wait_phase(client, "spend", "cancelled", log=operator.output())
    assert status["finishedAt"]
    location = status["lastSavepoint"]["location"]
    assert location.startswith("file://") and Path(urlparse(location).path, "_manifest.json").is_file()
    recorded = f"spend-{status['lastSavepoint']['savepointId']}"  # a Savepoint resource records it

    async def recorded_status() -> dict[str, object] | None:
        sp = await client.get_or_none(kube.SAVEPOINTS, NS, recorded)
        return (sp or {}).get("status") or None

    sp_status = await eventually(recorded_status, 10, "the Savepoint resource of the cancel savepoint")
    assert (sp_status["state"], sp_status["location"]) == ("completed", location)

    async def pods_ended() -> bool:
        return all(
            p["status"]["phase"] in ("Succeeded", "Failed") for p in await worker_pods(client, "spend")
        )

    await eventually(pods_ended, 30, "worker pods to end")

    # restart from that savepoint (named by its location) with parallelism 3: the result is exact
    await patch_spec(
        client,
        "spend",
        {"state": "running", "restartNonce": 1, "restoreFrom": location, "config": {"parallelism": 3}},
    )
    status = await wait_phase(client, "spend", "running", "finished", log=operator.output())
    assert status["parallelism"] == 3 and status["observedRestartNonce"] == 1 and status["restarts"] == 1
    status = await wait_phase(client, "spend", "finished", timeout=90, log=operator.output())
    assert table_rows(db) == await expected_windows()
    pods = await worker_pods(client, "spend")
    assert [p["metadata"]["labels"][f"{crds.GROUP}/attempt"] for p in pods] == ["2", "2", "2"]
    reasons = [reason for reason, _ in await events_of(client, "spend")]
    assert {"Running", "Cancelled", "Restarted", "Finished", "SavepointCompleted"} <= set(reasons)
    assert await operator.stop() == 0


async def test_savepoint_resource_and_restart_from_it(cluster: Env, start_operator: StartOperator) -> None:
    client, db = cluster.client, cluster.tmp / "out.db"
    operator = await start_operator()
    await create(cluster, "spend", upsert_spec(db, parallelism=2, rate=5000))
    await wait_phase(client, "spend", "running", log=operator.output())
    await wait_checkpoint(cluster, "spend", operator)

    await client.create(kube.SAVEPOINTS, NS, savepoint("before-upgrade", "spend", "pre-upgrade"))

    async def completed() -> dict[str, object] | None:
        sp = await client.get(kube.SAVEPOINTS, NS, "before-upgrade")
        state = (sp.get("status") or {}).get("state")
        assert state != "failed", sp
        return sp["status"] if state == "completed" else None

    sp_status = await eventually(completed, 30, "the savepoint", on_fail=operator.output()[-3000:])
    assert str(sp_status["savepointId"]).startswith("savepoint-") and int(sp_status["sizeBytes"]) > 0  # type: ignore[call-overload]
    directory = Path(urlparse(str(sp_status["location"])).path)
    assert (directory / "_manifest.json").is_file()
    assert sp_status["jobId"] == (await job_status(client, "spend"))["jobId"]

    # an upgrade in place: a step added after the window, parallelism 3, from the savepoint
    spec = upsert_spec(db, parallelism=3, rate=5000)
    spec["transformations"].append({"type": "filter", "config": {"condition": "n > 0"}})  # type: ignore[attr-defined]
    await patch_spec(
        client,
        "spend",
        {
            "restartNonce": 1,
            "restoreFrom": "before-upgrade",
            "config": spec["config"],
            "transformations": spec["transformations"],
        },
    )
    status = await wait_phase(client, "spend", "finished", timeout=90, log=operator.output())
    assert status["parallelism"] == 3 and status["restarts"] == 1
    assert table_rows(db) == await expected_windows()
    events = await events_of(client, "spend")
    assert any(f"savepoint {sp_status['savepointId']}" in m for _, m in events), events
    assert ("Upgraded", "new transformations from now on") in events
    job_file = json.loads(
        base64.b64decode((await client.get(kube.SECRETS, NS, "spend-job"))["data"]["job.json"])
    )
    assert [t["type"] for t in job_file["transformations"]] == ["window", "filter"]  # what the pods ran

    # deleting the Savepoint resource deletes its files (finalizer), then the resource goes
    await client.delete(kube.SAVEPOINTS, NS, "before-upgrade")

    async def gone() -> bool:
        return await client.get_or_none(kube.SAVEPOINTS, NS, "before-upgrade") is None

    await eventually(gone, 30, "the Savepoint to go", on_fail=operator.output()[-3000:])
    assert not directory.exists()
    await operator.stop()


async def test_new_job_starts_from_the_cancel_savepoint_of_another(
    cluster: Env, start_operator: StartOperator
) -> None:
    """The Flink upgrade: v1 is cancelled with a savepoint, v2 (another pipeline, parallelism 3) is
    created with ``restoreFrom`` naming it and goes on where v1 stopped: the insert-only table ends
    exactly as one uninterrupted run would have left it (a v2 started empty would insert twice)."""
    client, db = cluster.client, cluster.tmp / "out.db"
    operator = await start_operator()
    await create(cluster, "v1", {**window_spec(db, parallelism=2, rate=5000), "savepointOnCancel": True})
    await wait_phase(client, "v1", "running", log=operator.output())
    await wait_checkpoint(cluster, "v1", operator)
    await patch_spec(client, "v1", {"state": "cancelled"})
    savepoint_id = (await wait_phase(client, "v1", "cancelled", log=operator.output()))["lastSavepoint"][
        "savepointId"
    ]

    async def recorded() -> bool:
        sp = await client.get_or_none(kube.SAVEPOINTS, NS, f"v1-{savepoint_id}")
        return ((sp or {}).get("status") or {}).get("state") == "completed"

    await eventually(recorded, 10, "the Savepoint resource of the cancel savepoint")
    # another namespace cannot start from it by location: that would read another tenant's state
    location = (await job_status(client, "v1"))["lastSavepoint"]["location"]
    thief = streaming_job("thief", window_spec(db, parallelism=1, rate=0, restoreFrom=location))
    await client.create(
        kube.STREAMINGJOBS, "other", {**thief, "metadata": {"name": "thief", "namespace": "other"}}
    )

    async def refused() -> str | None:
        obj = await client.get(kube.STREAMINGJOBS, "other", "thief")
        return (
            (obj.get("status") or {}).get("message")
            if (obj.get("status") or {}).get("phase") == "failed"
            else None
        )

    message = await eventually(
        refused, 20, "the other namespace's job to fail", on_fail=operator.output()[-3000:]
    )
    assert message == (
        "invalid spec: spec.restoreFrom: not a savepoint of a StreamingJob in namespace other;"
        " name its Savepoint"
    )

    v2 = window_spec(db, parallelism=3, rate=0, restoreFrom=f"v1-{savepoint_id}")
    v2["transformations"].append({"type": "map", "config": {"fields": {"total": "total"}}})  # type: ignore[attr-defined]
    await create(cluster, "v2", v2)
    status = await wait_phase(client, "v2", "finished", timeout=90, log=operator.output())
    assert status["parallelism"] == 3 and status["jobId"] != (await job_status(client, "v1"))["jobId"]
    assert table_rows(db) == await expected_windows()
    await operator.stop()


async def test_pod_failure_restarts_by_strategy_with_exact_output(
    cluster: Env, start_operator: StartOperator
) -> None:
    client, db = cluster.client, cluster.tmp / "out.db"
    operator = await start_operator()
    await create(cluster, "spend", window_spec(db, parallelism=2, rate=5000))
    await wait_phase(client, "spend", "running", log=operator.output())
    await wait_checkpoint(cluster, "spend", operator)

    cluster.kubelet.kill(NS, "spend-worker-1")  # kill -9 the worker's process

    async def restarted() -> dict[str, object] | None:
        status = await job_status(client, "spend")
        return (
            status if status.get("restarts") == 1 and status.get("phase") in ("running", "finished") else None
        )

    status = await eventually(restarted, 30, "a restart", on_fail=operator.output()[-3000:])
    assert "restart 1 of 5" in str(status["message"]) or status["phase"] == "finished"
    await wait_phase(client, "spend", "finished", timeout=90, log=operator.output())
    assert table_rows(db) == await expected_windows()  # exactly once through the crash
    assert "Restarted" in [r for r, _ in await events_of(client, "spend")]
    attempts = {p["metadata"]["labels"][f"{crds.GROUP}/attempt"] for p in await worker_pods(client, "spend")}
    assert attempts == {"2"}
    await operator.stop()


async def test_pause_resume_and_scale_down_in_a_watched_namespace(
    cluster: Env, start_operator: StartOperator
) -> None:
    client = cluster.client
    operator = await start_operator(args=["--namespace", NS])
    spec = window_spec(cluster.tmp / "out.db", parallelism=2, rate=500)
    await create(cluster, "endless", spec)
    await wait_phase(client, "endless", "running", log=operator.output())
    await patch_spec(client, "endless", {"state": "paused"})
    status = await wait_phase(client, "endless", "paused", log=operator.output())
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "False"
    assert {p["status"]["phase"] for p in await worker_pods(client, "endless")} == {"Running"}  # state kept
    await patch_spec(client, "endless", {"state": "running"})
    await wait_phase(client, "endless", "running", log=operator.output())

    async def running_twice() -> bool:  # the Event follows the status patch
        return [r for r, _ in await events_of(client, "endless")].count("Running") == 2

    await eventually(running_twice, 10, "a second Running event", on_fail=operator.output()[-3000:])

    # a new parallelism and podTemplate apply at once, through a savepoint (the default upgradeMode)
    template = {"metadata": {"labels": {"team": "streaming"}}}
    await patch_spec(
        client, "endless", {"config": {**spec["config"], "parallelism": 1}, "podTemplate": template}
    )

    async def scaled_down() -> bool:
        names = [p["metadata"]["name"] for p in await worker_pods(client, "endless")]
        status = await job_status(client, "endless")
        return (
            names == ["endless-worker-0"] and status.get("parallelism") == 1 and status["phase"] == "running"
        )

    await eventually(scaled_down, 30, "one worker", on_fail=operator.output()[-3000:])

    async def applied_now() -> bool:
        status = await job_status(client, "endless")
        generation = (await client.get(kube.STREAMINGJOBS, NS, "endless"))["metadata"]["generation"]
        spec_applied = {c["type"]: c["status"] for c in status["conditions"]}["SpecApplied"]
        return status.get("observedGeneration") == generation and spec_applied == "True"

    await eventually(applied_now, 20, "the new spec applied", on_fail=operator.output()[-3000:])
    (pod,) = await worker_pods(client, "endless")
    assert pod["metadata"]["labels"]["team"] == "streaming"  # the podTemplate, from the restart on
    upgrade = (await job_status(client, "endless"))["upgrade"]
    assert (upgrade["mode"], upgrade["changes"]) == ("savepoint", ["config.parallelism", "podTemplate"])
    await operator.stop()


async def test_delete_stops_the_job_and_removes_what_it_owns(
    cluster: Env, start_operator: StartOperator
) -> None:
    client = cluster.client
    operator = await start_operator()
    await create(cluster, "doomed", window_spec(cluster.tmp / "out.db", parallelism=2, rate=500))
    job_id = (await wait_phase(client, "doomed", "running", log=operator.output()))["jobId"]
    assert (operator.home / "jobs" / job_id).is_dir()
    assert (await client.get(kube.STREAMINGJOBS, NS, "doomed"))["metadata"]["finalizers"] == [
        f"{crds.GROUP}/finalizer"
    ]
    await client.delete(kube.STREAMINGJOBS, NS, "doomed")

    async def all_gone() -> bool:
        return (
            await client.get_or_none(kube.STREAMINGJOBS, NS, "doomed") is None
            and not await worker_pods(client, "doomed")
            and await client.get_or_none(kube.SECRETS, NS, "doomed-job") is None
            and await client.get_or_none(kube.SERVICES, NS, "doomed-workers") is None
        )

    await eventually(all_gone, 30, "the job and what it owns to go", on_fail=operator.output()[-3000:])

    async def purged() -> bool:  # no savepoint to keep it: the control plane purges the job
        return not (operator.home / "jobs" / job_id).exists()

    await eventually(purged, 30, "the operator to purge the job", on_fail=operator.output()[-3000:])
    assert cluster.gc.collected == 4  # 2 pods, the Secret and the Service, by their owner references
    assert not cluster.kubelet.running or all(
        p.process.returncode is not None for p in cluster.kubelet.running.values()
    )
    await operator.stop()


async def test_operator_restart_keeps_the_job(cluster: Env, start_operator: StartOperator) -> None:
    client, db = cluster.client, cluster.tmp / "out.db"
    first = await start_operator()
    await create(cluster, "spend", window_spec(db, parallelism=2, rate=5000))
    status = await wait_phase(client, "spend", "running", log=first.output())
    await wait_checkpoint(cluster, "spend", first)
    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL  # no goodbye: workers lose their channel

    second = await start_operator(home=first.home, control_port=first.control_port)

    async def relaunched() -> bool:
        attempts = {
            p["metadata"]["labels"][f"{crds.GROUP}/attempt"] for p in await worker_pods(client, "spend")
        }
        return attempts == {"2"}

    await eventually(relaunched, 30, "the workers to be started again", on_fail=second.output()[-3000:])
    final = await wait_phase(client, "spend", "finished", timeout=90, log=second.output())
    assert final["jobId"] == status["jobId"]  # the same job, not a second one
    assert table_rows(db) == await expected_windows()
    await second.stop()


async def test_invalid_spec_is_failed_with_the_field_path(
    cluster: Env, start_operator: StartOperator
) -> None:
    client = cluster.client
    # a namespace pattern: kopf lists and watches the namespaces (the emulator serves them)
    operator = await start_operator(args=["--namespace", "def*"])
    spec = window_spec(cluster.tmp / "out.db", parallelism=1, rate=0)
    spec["transformations"] = [{"type": "filter", "config": {}}]
    # the API server refuses it (the CRD's schema requires the condition), as a cluster does ...
    with pytest.raises(kube.ApiError) as refused:
        await create(cluster, "broken", spec)
    assert refused.value.status == 422 and "spec.transformations.0" in refused.value.message
    # ... and the operator fails what a looser CRD lets through: one left by an older release (helm
    # never upgrades crds/), which the emulator stands for from here on by not checking StreamingJobs
    del cluster.cluster.emulator.schemas[(crds.GROUP, crds.STREAMING_JOB_PLURAL)]
    await create(cluster, "broken", spec)
    status = await wait_phase(client, "broken", "failed", log=operator.output())
    assert "spec.transformations[0].config.condition" in status["message"]
    assert "jobId" not in status
    assert "InvalidSpec" in [r for r, _ in await events_of(client, "broken")]
    assert not await worker_pods(client, "broken")

    # local files outside the operator's home and --allow-path dirs (/etc here) are refused, each named
    outside = {
        **window_spec(Path("/etc/heliosdb-out.db"), parallelism=1, rate=0),
        "checkpointStorage": "file:///etc",
        "restoreFrom": "file:///etc/savepoints/x",
    }
    await create(cluster, "outside", outside)
    status = await wait_phase(client, "outside", "failed", log=operator.output())
    for field in ("spec.sinks[0].config.connectionString", "spec.checkpointStorage", "spec.restoreFrom"):
        assert f"{field}: /etc" in status["message"], status["message"]
    assert "outside the directories this server allows" in status["message"]
    assert "InvalidSpec" in [r for r, _ in await events_of(client, "outside")]
    assert not await worker_pods(client, "outside")
    assert not Path("/etc/heliosdb-out.db").exists()

    # a python step of a module the operator does not allow (--python-modules: none by default)
    python = window_spec(cluster.tmp / "out.db", parallelism=1, rate=0)
    python["transformations"] = [{"type": "python", "config": {"function": "os:system"}}]
    await create(cluster, "python", python)
    status = await wait_phase(client, "python", "failed", log=operator.output())
    assert (
        "spec.transformations[0].config.function: module 'os' is not allowed on this server (allowed: "
        "none); its administrator can allow it with --python-modules os"
    ) in status["message"], status["message"]
    assert "InvalidSpec" in [r for r, _ in await events_of(client, "python")]
    assert not await worker_pods(client, "python")

    # a new job from a location that holds no savepoint would start empty: it is refused instead
    nowhere = (cluster.tmp / "nowhere").as_uri()
    restored = {**window_spec(cluster.tmp / "out.db", parallelism=1, rate=0), "restoreFrom": nowhere}
    await create(cluster, "restored", restored)
    status = await wait_phase(client, "restored", "failed", log=operator.output())
    why = f"no completed savepoint or checkpoint at {nowhere} (no _manifest.json)"
    assert status["message"] == f"invalid spec: spec.restoreFrom: {why}"
    assert not await worker_pods(client, "restored")

    # a plan that cannot run (valid to the CRD): at parallelism 2 the key_by's records would cross
    # worker pods through Kafka, and the job has no brokers for them
    wide = window_spec(cluster.tmp / "wide.db", parallelism=2, rate=0)
    wide["transformations"] = [
        {"type": "key_by", "config": {"key": "merchant"}},
        {"type": "window", "config": {"size": "1s", "aggregates": {"n": "count(*)"}}},
    ]
    await create(cluster, "wide", wide)
    status = await wait_phase(client, "wide", "failed", log=operator.output())
    assert "spec.transformations[0]: this key_by step needs its records regrouped" in status["message"]
    assert "set config.repartition.bootstrap_servers" in status["message"]
    assert "InvalidSpec" in [r for r, _ in await events_of(client, "wide")]
    assert not await worker_pods(client, "wide")
    await operator.stop()
