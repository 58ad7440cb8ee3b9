"""The scenarios of tests/k8s on a real cluster: kind, the image built from the Dockerfile, the Helm
chart, worker pods run by a real kubelet, PostgreSQL, MinIO and Kafka in the cluster.

Where tests/k8s emulate the API server and play the kubelet, here everything is Kubernetes' own:
scheduling, the pod log API, pod deletion with a grace period, owner references collected by the
garbage collector, DNS between the operator, the workers and the services. Results are checked as
there: the window job's table in PostgreSQL equals the windows computed straight from the generated
records, and savepoint files are looked for in MinIO. Skipped without Docker, kind and kubectl
(see conftest.py); ``make e2e-kind`` runs them.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import e2e_support as support
import pytest
import yaml
from e2e_cluster import KindEnv, eventually

from heliosdb_streaming.kubernetes import crds
from heliosdb_streaming.kubernetes.operator import pods
from heliosdb_streaming.testing.expected import datagen_tumbling_windows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
sys.path.insert(0, str(support.USERPKG))  # helios_userpkg: the python job's reference, computed here
import test_api as rest  # the REST client and contract checks of the API tests

# The first test also waits for the session's set-up: cluster, image build, services, chart.
pytestmark = [pytest.mark.kind, pytest.mark.timeout(1800)]


@pytest.fixture
async def api(e2e: KindEnv) -> AsyncIterator[rest.Api]:
    async with aiohttp.ClientSession(headers=support.AUTH) as session:
        yield rest.Api(session, e2e.api_url)


def new_table(tag: str) -> str:
    return f"{tag}_{uuid.uuid4().hex[:8]}"


async def expected_windows() -> list[tuple[Any, ...]]:
    return await datagen_tumbling_windows(
        count=support.COUNT, partitions=support.PARTITIONS, seed=support.SEED, keys=support.KEYS
    )


async def resource_of(e2e: KindEnv, job_id: str) -> dict[str, Any]:
    """The StreamingJob behind a REST job id (``job-<metadata.uid>``)."""
    (obj,) = [o for o in await e2e.kubectl.items("streamingjobs") if f"job-{o['metadata']['uid']}" == job_id]
    return obj


def attempts(worker_pods: list[dict[str, Any]]) -> set[str]:
    return {p["metadata"]["labels"][pods.LABEL_ATTEMPT] for p in worker_pods}


def no_server_errors(client: rest.Api) -> None:
    assert not [s for s in client.statuses if s >= 500], client.statuses


# ----------------------------------------------------------------------------------- examples


async def test_examples_apply_as_is(e2e: KindEnv, api: rest.Api) -> None:
    """``kubectl apply -f examples/k8s/...`` unchanged, in a namespace where ``kafka:9092`` and
    ``postgres:5432`` are: the job reads Kafka on 4 worker pods, the Savepoint lands on MinIO."""
    job = yaml.safe_load((support.EXAMPLES / "fraud-pipeline.yaml").read_text())
    sp = yaml.safe_load((support.EXAMPLES / "savepoint.yaml").read_text())
    name, parallelism = job["metadata"]["name"], job["spec"]["config"]["parallelism"]
    need_cpu, need_memory = support.job_requests(job)
    free_cpu, free_memory = support.free_capacity(
        await e2e.kubectl.items("nodes"), await e2e.kubectl.items("pods", all_namespaces=True)
    )
    if free_cpu < need_cpu or free_memory < need_memory:
        pytest.skip(
            f"examples/k8s/fraud-pipeline.yaml requests {need_cpu}m CPU and {need_memory >> 20} MiB for its "
            f"workers; the kind node has {free_cpu}m and {free_memory >> 20} MiB free: give Docker more"
        )
    (source,) = job["spec"]["sources"]
    topic = source["config"]["topic"]
    await e2e.kubectl(
        "exec", f"deployment/{support.KAFKA_SERVICE}", "--",
        "/opt/kafka/bin/kafka-topics.sh", "--bootstrap-server", f"localhost:{support.KAFKA_PORT}",
        "--create", "--if-not-exists", "--topic", topic, "--partitions", str(parallelism),
        "--replication-factor", "1",
        timeout=120,
    )  # fmt: skip

    await e2e.kubectl("apply", "--filename", str(support.EXAMPLES / "fraud-pipeline.yaml"))
    status = await e2e.wait_phase(name, "running", timeout=240)
    workers = await e2e.worker_pods(name)
    assert [p["metadata"]["name"] for p in workers] == [pods.pod_name(name, i) for i in range(parallelism)]
    assert {p["status"]["phase"] for p in workers} == {"Running"}
    assert workers[0]["spec"]["containers"][0]["resources"] == job["spec"]["resources"]

    transactions = [
        {"transaction_id": i, "card_id": f"card-{i % 7}", "amount": float(20_000 if i % 3 == 0 else i)}
        for i in range(300)
    ]
    lines = "".join(json.dumps(t) + "\n" for t in transactions)  # the console producer: a record a line
    await e2e.kubectl(
        "exec", "--stdin", f"deployment/{support.KAFKA_SERVICE}", "--",
        "/opt/kafka/bin/kafka-console-producer.sh", "--bootstrap-server", f"localhost:{support.KAFKA_PORT}",
        "--topic", topic,
        input=lines.encode(), timeout=120,
    )  # fmt: skip

    async def all_read() -> bool:
        metrics = await api.ok("GET", f"/api/v1/jobs/{status['jobId']}/metrics")
        return bool(metrics["metrics"]["events_processed_total"] == len(transactions))

    await eventually(all_read, 120, f"the job to read the {len(transactions)} records", e2e.diagnostics)

    await e2e.kubectl("apply", "--filename", str(support.EXAMPLES / "savepoint.yaml"))
    sp_name = sp["metadata"]["name"]
    done = await eventually(lambda: e2e.savepoint_status(sp_name), 180, "the savepoint", e2e.diagnostics)
    assert done["location"].startswith(f"{job['spec']['checkpointStorage']}/")
    assert await e2e.storage(done["location"]).exists("_manifest.json")
    no_server_errors(api)


# ------------------------------------------------------------------------------- REST door


async def test_rest_submit_runs_worker_pods_with_exact_output(e2e: KindEnv, api: rest.Api) -> None:
    table = new_table("spend")
    body = {"name": "spend", **support.window_job(table, parallelism=2)}
    job_id = (await api.ok("POST", "/api/v1/jobs", 201, json=body))["job_id"]
    details = await api.wait_status(job_id, {"running"}, within=180)
    assert details["tasks"] and {t["parallelism"] for t in details["tasks"]} == {2}
    obj = await resource_of(e2e, job_id)
    name = obj["metadata"]["name"]
    assert obj["spec"]["state"] == "running" and obj["spec"]["config"]["parallelism"] == 2
    status = await e2e.wait_phase(name, "running")
    assert status["jobId"] == job_id and status["parallelism"] == 2

    workers = await e2e.worker_pods(name)
    assert [p["metadata"]["name"] for p in workers] == [pods.pod_name(name, i) for i in (0, 1)]
    for pod in workers:
        assert pod["spec"]["nodeName"] and pod["spec"]["containers"][0]["image"] == support.IMAGE
        owner = pod["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            crds.STREAMING_JOB_KIND,
            name,
            obj["metadata"]["uid"],
        )

    async def both_workers_logged() -> bool:
        messages = [e["message"] for e in (await api.ok("GET", f"/api/v1/jobs/{job_id}/logs"))["logs"]]
        return all(any(f"assigned to worker {i}" in m for m in messages) for i in (0, 1))

    await eventually(both_workers_logged, 60, "both workers' pod logs", e2e.diagnostics)

    details = await api.wait_status(job_id, {"finished"}, within=240)
    assert details["metrics"]["restarts"] == 0
    assert await e2e.rows(table) == await expected_windows()
    assert "Finished" in [reason for reason, _ in await e2e.kubectl.events(name)]
    no_server_errors(api)


async def test_rest_savepoint_cancel_with_savepoint_and_restart_rescaled(e2e: KindEnv, api: rest.Api) -> None:
    """A savepoint over REST (a Savepoint resource, files on MinIO, deleted again), stop with a
    savepoint, restart from it at parallelism 3: the windows in PostgreSQL are exact."""
    table = new_table("rescale")
    body = {"name": "rescale", **support.window_job(table, parallelism=2, upsert=True)}
    job_id = (await api.ok("POST", "/api/v1/jobs", 201, json=body))["job_id"]
    await api.wait_status(job_id, {"running"}, within=180)
    name = (await resource_of(e2e, job_id))["metadata"]["name"]
    await rest.wait_checkpoint(api, job_id)
    url = f"/api/v1/jobs/{job_id}/savepoints"

    created = await api.ok("POST", url, 201, json={"description": "before upgrade"})
    rest.conforms(created, "SavepointResponse")
    assert created["size_bytes"] > 0
    assert created["location"].startswith(f"{support.CHECKPOINTS}/")  # the chart's checkpointStorage
    storage = e2e.storage(created["location"])
    assert await storage.exists("_manifest.json")
    (resource,) = await e2e.kubectl.items("savepoints")
    assert resource["spec"]["jobRef"] == name
    assert resource["status"]["savepointId"] == created["savepoint_id"]
    deleted = await api.ok("DELETE", f"{url}/{created['savepoint_id']}")
    assert deleted == {"savepoint_id": created["savepoint_id"], "deleted": True}
    assert await e2e.kubectl.items("savepoints") == []
    assert not await storage.exists("_manifest.json")

    cancelled = await api.ok("DELETE", f"/api/v1/jobs/{job_id}", params={"savepoint": "true"})
    assert cancelled["status"] == "cancelled"
    savepoint_id = cancelled["savepoint_id"]
    assert rest.SAVEPOINT_ID.match(savepoint_id)
    assert (await e2e.job_status(name))["phase"] == "cancelled"

    reply = await api.call(
        "POST",
        f"/api/v1/jobs/{job_id}/restart",
        json={"savepoint_id": savepoint_id, "config_overrides": {"parallelism": 3}},
    )
    assert reply.status == 200, reply.text
    assert reply.body["restored_from_savepoint"] == savepoint_id
    spec = (await resource_of(e2e, job_id))["spec"]
    assert (spec["restartNonce"], spec["state"], spec["config"]["parallelism"]) == (1, "running", 3)
    details = await api.wait_status(job_id, {"finished"}, within=240)
    assert details["config"]["parallelism"] == 3 and details["metrics"]["restarts"] == 1
    workers = await e2e.worker_pods(name)
    assert [p["metadata"]["name"] for p in workers] == [pods.pod_name(name, i) for i in range(3)]
    assert len(attempts(workers)) == 1  # all three of the restarted run
    assert await e2e.rows(table) == await expected_windows()
    no_server_errors(api)


# ---------------------------------------------------------------------------- kubectl door


async def test_savepoint_resource_and_restart_from_it(e2e: KindEnv) -> None:
    name, table = "from-savepoint", new_table("from_savepoint")
    await e2e.kubectl.apply(
        support.streaming_job(name, support.window_job(table, parallelism=2, upsert=True))
    )
    await e2e.wait_phase(name, "running")
    await e2e.wait_checkpoint(name)

    await e2e.kubectl.apply(support.savepoint("before-upgrade", name, "pre-upgrade"))
    sp = await eventually(
        lambda: e2e.savepoint_status("before-upgrade"), 180, "the savepoint", e2e.diagnostics
    )
    assert str(sp["savepointId"]).startswith("savepoint-") and int(sp["sizeBytes"]) > 0
    assert sp["jobId"] == (await e2e.job_status(name))["jobId"]
    storage = e2e.storage(sp["location"])
    assert await storage.exists("_manifest.json")

    await e2e.kubectl.patch_spec(
        "streamingjobs",
        name,
        {"restartNonce": 1, "restoreFrom": "before-upgrade", "config": {"parallelism": 3}},
    )
    status = await e2e.wait_phase(name, "finished", timeout=240)
    assert status["parallelism"] == 3 and status["restarts"] == 1
    assert len(await e2e.worker_pods(name)) == 3
    assert await e2e.rows(table) == await expected_windows()
    messages = [m for _, m in await e2e.kubectl.events(name)]
    assert any(f"savepoint {sp['savepointId']}" in m for m in messages), messages

    # deleting the Savepoint deletes its files first (finalizer), then the resource goes
    await e2e.kubectl("delete", "savepoint", "before-upgrade", "--wait=true", "--timeout=60s", timeout=70)
    assert await e2e.kubectl.get("savepoints", "before-upgrade") is None
    assert not await storage.exists("_manifest.json")


async def test_deleting_a_worker_pod_restarts_the_job_exactly_once(e2e: KindEnv) -> None:
    """``kubectl delete pod`` (SIGTERM, then the pod is gone) -> the job's restart strategy -> a new
    run from the newest checkpoint; the table is still exact (exactly-once sink)."""
    name, table = "crash", new_table("crash")
    await e2e.kubectl.apply(support.streaming_job(name, support.window_job(table, parallelism=2)))
    await e2e.wait_phase(name, "running")
    await e2e.wait_checkpoint(name)
    victim = next(p for p in await e2e.worker_pods(name) if p["metadata"]["name"] == pods.pod_name(name, 1))
    await e2e.kubectl("delete", "pod", victim["metadata"]["name"], "--wait=false")

    async def restarted() -> dict[str, Any] | None:
        status = await e2e.job_status(name)
        return (
            status if status.get("restarts") == 1 and status.get("phase") in ("running", "finished") else None
        )

    await eventually(restarted, 120, "a restart by the restart strategy", e2e.diagnostics)

    next_attempt = str(int(victim["metadata"]["labels"][pods.LABEL_ATTEMPT]) + 1)

    async def replaced() -> bool:
        """Both workers are pods of the next run (the deleted one is not the only one replaced)."""
        workers = await e2e.worker_pods(name)
        uids = {p["metadata"]["uid"] for p in workers}
        return (
            len(workers) == 2
            and victim["metadata"]["uid"] not in uids
            and attempts(workers) == {next_attempt}
        )

    await eventually(replaced, 120, f"both workers to be pods of attempt {next_attempt}", e2e.diagnostics)
    await e2e.wait_phase(name, "finished", timeout=240)
    assert await e2e.rows(table) == await expected_windows()
    assert "Restarted" in [reason for reason, _ in await e2e.kubectl.events(name)]


async def test_pause_and_resume(e2e: KindEnv, api: rest.Api) -> None:
    """Pause over REST stops reading and keeps the pods; resume with kubectl reads on."""
    name = "endless"
    spec = support.window_job(new_table("endless"), parallelism=2, rate=200, count=None)
    await e2e.kubectl.apply(support.streaming_job(name, spec))
    job_id = (await e2e.wait_phase(name, "running"))["jobId"]

    async def processed() -> int:
        metrics = await api.ok("GET", f"/api/v1/jobs/{job_id}/metrics")
        return int(metrics["metrics"]["events_processed_total"])

    async def started() -> int | None:
        return await processed() or None

    await eventually(started, 60, "the first events", e2e.diagnostics)
    assert await api.ok("POST", f"/api/v1/jobs/{job_id}/pause") == {"job_id": job_id, "status": "paused"}
    status = await e2e.wait_phase(name, "paused")
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "False"
    assert (await e2e.kubectl.get("streamingjobs", name) or {})["spec"]["state"] == "paused"
    assert {p["status"]["phase"] for p in await e2e.worker_pods(name)} == {"Running"}  # state kept

    async def settled() -> int | None:
        """The count once it stays put for 3 s (no record read while paused); None while it moves."""
        first = await processed()
        await asyncio.sleep(3)
        second = await processed()
        return second if second == first else None

    paused_at = await eventually(settled, 60, "reading to stop while paused", e2e.diagnostics)

    await e2e.kubectl.patch_spec("streamingjobs", name, {"state": "running"})
    await e2e.wait_phase(name, "running")

    async def reading_again() -> bool:
        return await processed() > paused_at

    await eventually(reading_again, 60, "reading to go on after resume", e2e.diagnostics)
    reasons = [reason for reason, _ in await e2e.kubectl.events(name)]
    assert "Paused" in reasons and reasons.count("Running") >= 2
    no_server_errors(api)


async def test_delete_streaming_job_removes_what_it_owns(e2e: KindEnv) -> None:
    name = "doomed"
    spec = support.window_job(new_table("doomed"), parallelism=2, rate=200, count=None)
    await e2e.kubectl.apply(support.streaming_job(name, spec))
    await e2e.wait_phase(name, "running")
    obj = await e2e.kubectl.get("streamingjobs", name)
    assert obj is not None and f"{crds.GROUP}/finalizer" in obj["metadata"]["finalizers"]
    owned = await e2e.owned(name)
    assert {f"pod/{pods.pod_name(name, i)}" for i in (0, 1)} <= set(owned)
    assert f"service/{pods.service_name(name)}" in owned
    assert f"secret/{pods.job_secret_name(name)}" in owned

    await e2e.kubectl("delete", "streamingjob", name, "--wait=true", "--timeout=120s", timeout=130)
    assert await e2e.kubectl.get("streamingjobs", name) is None

    async def all_gone() -> bool:
        return not await e2e.owned(name)

    await eventually(all_gone, 120, "the garbage collector to remove the job's objects", e2e.diagnostics)


# --------------------------------------------------------------------------- user code images


async def test_python_functions_run_from_the_user_image(e2e: KindEnv) -> None:
    """``spec.image`` = the image built from the Dockerfile of docs/python-functions.md (pip-installing
    tests/userpkg): a python map and filter and a keyed process function with map state and
    event-time timers run on 2 worker pods (the chart allows ``helios_userpkg.*``), the records
    regrouped by card between them, and the table equals the reference computed here."""
    name, table = "user-code", new_table("user_code")
    want = support.python_reference(support.datagen_splits())
    assert any(r[0] == "alert" for r in want) and any(r[0] == "session" for r in want)
    await e2e.kubectl.apply(support.streaming_job(name, support.python_job(table, image=support.USER_IMAGE)))
    # a short job: it may be over by the first look (its pods stay, as completed pods)
    await e2e.wait_phase(name, "running", "finished", "failed", timeout=240)
    workers = await e2e.worker_pods(name)
    assert [p["metadata"]["name"] for p in workers] == [pods.pod_name(name, i) for i in (0, 1)]
    for pod in workers:
        (c,) = pod["spec"]["containers"]
        assert c["image"] == support.USER_IMAGE
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert env["HELIOS_PYTHON_MODULES"] == ",".join(support.USER_MODULES)  # the chart's value
    status = await e2e.wait_phase(name, "finished", "failed", timeout=300)
    assert status["phase"] == "finished", (status, await e2e.diagnostics())
    assert status.get("restarts", 0) == 0
    assert await e2e.python_rows(table) == want


async def test_an_image_without_the_package_fails_its_first_run_with_the_import_message(
    e2e: KindEnv,
) -> None:
    """The same job on the stock image (allowed by the chart, but the package is not installed): the
    operator does not import user code, so the first run fails in the worker pods, with the reason."""
    name = "no-user-code"
    spec = support.python_job(new_table("no_user_code"), image=support.IMAGE, restarts=0)
    await e2e.kubectl.apply(support.streaming_job(name, spec))
    status = await e2e.wait_phase(name, "failed", timeout=240)
    message = status.get("message", "")
    assert support.MISSING_PACKAGE in message, status
    assert status.get("restarts", 0) == 0
    failed = {c["type"]: c for c in status.get("conditions", [])}.get("Failed") or {}
    assert failed.get("status") == "True", status
