"""The REST API on the kubernetes substrate, end to end over real HTTP.

REST client -> ``KubernetesJobService`` -> StreamingJob/Savepoint resources in kmock's emulated API
server -> ``helios operator`` (a subprocess) -> worker pods run as local processes by the test kubelet
-> status, the operator's read API and the pod log API -> REST answers. The REST API's own contract
scenarios (``tests/integration/test_api.py``, which run them on the embedded substrate) run here
unchanged; the rest checks what is particular to this substrate: resources, logs merged from the
control plane and the pods, one namespace's view of a shared operator, savepoint resources, restart
from a savepoint with a new parallelism and an exact result, ``helios server --substrate kubernetes``
itself.

Scenarios of ``test_api.py`` that do not run here, and why: ``list_contract_filters_and_paging``
compares the list byte for byte with what an embedded ``JobManager`` lists (here:
``test_submit_creates_a_streaming_job_and_list_filters``); ``failed_savepoint_is_503`` needs a
``JobManager`` subclass whose savepoints fail, and the operator's cannot be made to fail on demand;
``concurrent_clients`` runs 200 jobs against its own ``JobManager(8)``, too many pods for this
machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import aiohttp
import pytest
import test_operator_kafka as kafka  # its Kafka/PostgreSQL helpers
from apiserver_fixtures import (
    AUTH,
    MAX_PARALLELISM,
    TOKEN,
    K8sApi,
    KubeSubstrate,
    k8s_api,
    k8s_api_server,
    substrate,
)
from chart_rbac import API, install_api_rbac, install_jobmanager_rbac
from k8s_helpers import eventually, expected_windows, table_rows, window_spec

from heliosdb_streaming.job import JobManager
from heliosdb_streaming.kubernetes import crds, kube
from heliosdb_streaming.kubernetes.operator import jmpods
from heliosdb_streaming.testing.ports import free_port
from heliosdb_streaming.testing.server import HeliosServerProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import test_api as rest  # the REST contract scenarios and their client (found through sys.path)

__all__ = ["k8s_api", "substrate"]  # fixtures used by this module

pytestmark = pytest.mark.timeout(180)

Scenario = Callable[[rest.Api], Awaitable[None]]


@contextlib.asynccontextmanager
async def rest_client(url: str) -> AsyncIterator[rest.Api]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield rest.Api(session, url)


@pytest.fixture
async def api(k8s_api: K8sApi) -> AsyncIterator[rest.Api]:
    async with rest_client(k8s_api.url) as client:
        yield client


async def resources(api: K8sApi, kind: kube.Resource = kube.STREAMINGJOBS) -> list[dict[str, Any]]:
    return await api.substrate.client.list(kind, api.namespace)


async def resource_of(api: K8sApi, job_id: str) -> dict[str, Any]:
    (obj,) = [o for o in await resources(api) if f"job-{o['metadata']['uid']}" == job_id]
    return obj


def no_server_errors(client: rest.Api) -> None:
    assert not [s for s in client.statuses if s >= 500], client.statuses


def _parameters(scenario: Callable[..., Awaitable[None]]) -> list[Any]:
    """The argument sets of a ``pytest.mark.parametrize``d scenario of ``test_api.py``."""
    (mark,) = [m for m in getattr(scenario, "pytestmark", []) if m.name == "parametrize"]
    return list(mark.args[1])


# ------------------------------------------------------------------ the REST contract, unchanged


@pytest.mark.parametrize(
    "scenario",
    [
        rest.test_unknown_job_route_and_method,
        rest.test_health_and_openapi_document,
        rest.test_submit_and_details_contract,
        rest.test_cancel_contract_and_conflicts,
        rest.test_pause_and_resume,
        rest.test_metrics_contract,
        rest.test_checkpoints_contract,
        rest.test_savepoints_contract,
        rest.test_a_savepoint_a_job_restores_is_409_on_delete,  # judged from the StreamingJobs
        rest.test_spec_example_body_is_accepted_and_cancellable,
        rest.test_logs_contract_level_limit_tail,
        rest.test_cancel_with_savepoint_and_restart_contract,  # 9 > --max-parallelism 8: 400
        rest.test_a_plan_that_cannot_run_is_400_at_submit_and_restart,  # the plan in details too
        rest.test_prometheus_metrics,  # only this namespace's jobs, though others' are in the operator
        rest.test_prometheus_metrics_pass_promtool,
    ],
    ids=lambda scenario: scenario.__name__.removeprefix("test_"),
)
async def test_rest_contract(api: rest.Api, scenario: Scenario) -> None:
    """The embedded substrate's REST tests, key for key and against the OpenAPI document."""
    await scenario(api)
    no_server_errors(api)


def as_job_manager(k8s_api: K8sApi) -> JobManager:
    """The service where a scenario takes a ``JobManager``: it serves it with ``create_app`` and asks
    it ``count_jobs()``, both of which ``CountingJobService`` answers."""
    return cast(JobManager, k8s_api.service)


async def test_rest_contract_bad_bodies(api: rest.Api, k8s_api: K8sApi) -> None:
    """400 with field paths, a job wider than ``--max-parallelism`` included; no StreamingJob created."""
    assert MAX_PARALLELISM == 8  # the scenario's "too wide" job has 9
    await rest.test_bad_bodies_are_400_with_field_paths(api, as_job_manager(k8s_api))
    no_server_errors(api)


@pytest.mark.parametrize(
    "scenario",
    [
        rest.test_body_size_limit_by_header_and_while_reading,
        rest.test_bearer_token,
        rest.test_unexpected_exception_is_a_generic_500,
    ],
    ids=lambda scenario: scenario.__name__.removeprefix("test_"),
)
async def test_rest_contract_own_app(
    k8s_api: K8sApi, scenario: Callable[[JobManager], Awaitable[None]]
) -> None:
    """The scenarios that serve their own app (a body limit, a token) over the substrate's service."""
    await scenario(as_job_manager(k8s_api))


@pytest.mark.parametrize(("path", "params", "parameter"), _parameters(rest.test_bad_query_parameters_are_400))
async def test_rest_contract_bad_query_parameters(
    api: rest.Api, path: str, params: Any, parameter: str
) -> None:
    await rest.test_bad_query_parameters_are_400(api, path, params, parameter)


# ------------------------------------------------------------------ what is particular to Kubernetes


async def test_submit_creates_a_streaming_job_and_list_filters(api: rest.Api, k8s_api: K8sApi) -> None:
    endless_body = rest.datagen_job("endless one", count=None, rate=500, parallelism=2, partitions=4)
    endless = (await api.ok("POST", "/api/v1/jobs", 201, json=endless_body))["job_id"]
    obj = await resource_of(k8s_api, endless)
    assert obj["metadata"]["name"].startswith("endless-one-")
    spec = obj["spec"]
    assert spec["state"] == "running" and spec["name"] == "endless one"
    assert spec["config"]["parallelism"] == 2 and spec["sources"][0]["type"] == "datagen"

    done = []
    for i in range(2):
        done.append(
            (await api.ok("POST", "/api/v1/jobs", 201, json=rest.datagen_job(f"done-{i}", count=500)))[
                "job_id"
            ]
        )
    details = await api.wait_status(endless, {"running"})
    assert [(t["name"], t["parallelism"], t["status"]) for t in details["tasks"]] == [
        ("datagen-source", 2, "running"),
        ("filter", 2, "running"),
        ("discard-sink", 2, "running"),
    ]
    pods = await k8s_api.substrate.client.list(
        kube.PODS, k8s_api.namespace, {f"{crds.GROUP}/job": obj["metadata"]["name"]}
    )
    assert sorted(p["metadata"]["name"] for p in pods) == [
        f"{obj['metadata']['name']}-worker-{i}" for i in (0, 1)
    ]
    for job_id in done:
        await api.wait_status(job_id, {"finished"})

    listing = await api.ok("GET", "/api/v1/jobs")
    rest.conforms(listing, "JobListResponse")
    assert (listing["total"], listing["limit"], listing["offset"]) == (3, 100, 0)
    assert [j["job_id"] for j in listing["jobs"]] == [done[1], done[0], endless]  # newest first
    by_id = {j["job_id"]: j for j in listing["jobs"]}
    assert set(by_id[endless]) == rest.LIST_JOB_KEYS
    assert (by_id[endless]["status"], by_id[endless]["parallelism"], by_id[endless]["finished_at"]) == (
        "running",
        2,
        None,
    )
    assert by_id[done[0]]["status"] == "finished" and rest.TS.match(by_id[done[0]]["finished_at"])
    running = await api.ok("GET", "/api/v1/jobs", params={"status": "running"})
    assert [j["job_id"] for j in running["jobs"]] == [endless] and running["total"] == 1
    finished = await api.ok("GET", "/api/v1/jobs", params={"status": "finished", "limit": "1", "offset": "1"})
    assert [j["job_id"] for j in finished["jobs"]] == [done[0]] and finished["total"] == 2

    cancelled = await api.ok("DELETE", f"/api/v1/jobs/{endless}")
    assert cancelled["status"] == "cancelled"
    assert (await resource_of(k8s_api, endless))["spec"]["state"] == "cancelled"
    no_server_errors(api)


async def test_invalid_job_is_400_and_creates_nothing(api: rest.Api, k8s_api: K8sApi) -> None:
    body = rest.datagen_job("x", count=1)
    body["bogus"] = 1
    body["transformations"][0]["config"]["condition"] = "amount >"
    details = rest.assert_error(await api.call("POST", "/api/v1/jobs", json=body), 400, "invalid_job_config")
    assert sorted(d["path"] for d in details) == ["bogus", "transformations[0].config.condition"]
    rest.assert_error(await api.call("POST", "/api/v1/jobs", data=b"{nope"), 400, "invalid_json")
    assert await resources(k8s_api) == []
    assert (await api.ok("GET", "/api/v1/jobs"))["total"] == 0


async def test_logs_merge_the_control_plane_and_the_worker_pods(api: rest.Api, k8s_api: K8sApi) -> None:
    """The control plane's lines (from the operator) and the workers' (from their pods), each once:
    the lines workers also ship to the control plane are not repeated."""
    body = rest.datagen_job("noisy", count=None, rate=200, parallelism=2, partitions=2)
    body["transformations"][0]["config"]["condition"] = "amount / 0 > 1"  # every record: a warning
    job_id = (await api.ok("POST", "/api/v1/jobs", 201, json=body))["job_id"]
    await api.wait_status(job_id, {"running"})
    await api.ok("POST", f"/api/v1/jobs/{job_id}/pause")
    await api.ok("POST", f"/api/v1/jobs/{job_id}/resume")
    full: dict[str, Any] = {}

    async def both_workers_logged() -> bool:
        nonlocal full
        full = await api.ok("GET", f"/api/v1/jobs/{job_id}/logs")
        messages = [e["message"] for e in full["logs"]]
        return (
            all(any(f"assigned to worker {i}" in m for m in messages) for i in (0, 1))
            and any(e["level"] == "warn" for e in full["logs"])
            and messages.count("resumed") >= 2
        )

    await api.wait_until(both_workers_logged, "both workers' logs", within=30)
    messages = [e["message"] for e in full["logs"]]
    assert messages[0] == "Job 'noisy' submitted (parallelism 2)"  # the control plane's, first
    assert messages.count("resumed") == 2  # once per worker: from its pod, not again from the operator
    paused = messages.index("Job paused: sources stopped, state kept")
    resumed = messages.index("Job resumed")
    assert messages.index("Job started successfully") < paused < resumed
    rest.conforms(full, "JobLogsResponse")
    assert full["limit"] == 1000 and full["total"] == len(full["logs"])
    for entry in full["logs"]:
        assert set(entry) == rest.LOG_ENTRY_KEYS and rest.TS_MS.match(entry["timestamp"])
    assert [e["timestamp"] for e in full["logs"]] == sorted(e["timestamp"] for e in full["logs"])
    assert any(
        "division by zero" in e["message"] and e["task_id"] for e in full["logs"] if e["level"] == "warn"
    )
    await api.ok("DELETE", f"/api/v1/jobs/{job_id}")  # the pods end; their logs stay

    full = await api.ok("GET", f"/api/v1/jobs/{job_id}/logs")
    assert "Job cancelled" in [e["message"] for e in full["logs"]]
    warn = await api.ok("GET", f"/api/v1/jobs/{job_id}/logs", params={"level": "warn"})
    assert warn["logs"] == [e for e in full["logs"] if e["level"] in ("warn", "error")] and warn["logs"]
    first = await api.ok("GET", f"/api/v1/jobs/{job_id}/logs", params={"limit": "3"})
    assert first["logs"] == full["logs"][:3] and first["total"] == 3
    last = await api.ok("GET", f"/api/v1/jobs/{job_id}/logs", params={"limit": "4", "tail": "true"})
    assert last["logs"] == full["logs"][-4:]
    last2 = await api.ok("GET", f"/api/v1/jobs/{job_id}/logs", params={"tail": "2"})
    assert last2["logs"] == full["logs"][-2:] and last2["limit"] == 2
    info_tail = await api.ok("GET", f"/api/v1/jobs/{job_id}/logs", params={"tail": "3", "level": "info"})
    assert info_tail["logs"] == [e for e in full["logs"] if e["level"] != "debug"][-3:]
    no_server_errors(api)


async def test_a_namespace_sees_only_its_own_jobs(api: rest.Api, k8s_api: K8sApi) -> None:
    """Two API servers, two namespaces, one operator: ``/metrics``, logs and every job route of each
    show its own job only; the operator's read API answers 404 for the other namespace's job."""
    body = rest.datagen_job("mine", count=None, rate=200)
    mine = (await api.ok("POST", "/api/v1/jobs", 201, json=body))["job_id"]
    substrate = k8s_api.substrate
    namespace = f"{k8s_api.namespace}-other"
    try:
        async with k8s_api_server(substrate, namespace) as other_k8s, rest_client(other_k8s.url) as other:
            body = rest.datagen_job("theirs", count=None, rate=200)
            theirs = (await other.ok("POST", "/api/v1/jobs", 201, json=body))["job_id"]
            await api.wait_status(mine, {"running"})
            await other.wait_status(theirs, {"running"})
            servers = ((api, k8s_api.namespace, mine, theirs), (other, namespace, theirs, mine))
            for client, ns, own, foreign in servers:
                reply = await client.call("GET", "/metrics")
                assert reply.status == 200, reply.text
                series = rest.parse_exposition(reply.text)
                assert {labels["job_id"] for labels, _ in series["heliosdb_job_status"]} == {own}
                # each series names its StreamingJob: the namespace's one resource
                (resource,) = [
                    o["metadata"]["name"] for o in await substrate.client.list(kube.STREAMINGJOBS, ns)
                ]
                for name in ("heliosdb_job_status", "heliosdb_job_events_processed_total"):
                    assert {(labels["namespace"], labels["streamingjob"]) for labels, _ in series[name]} == {
                        (ns, resource)
                    }
                assert series["heliosdb_job_count"] == [({}, 1.0)]  # its active jobs, not every one
                for suffix in ("", "/logs", "/metrics", "/checkpoints", "/savepoints"):
                    reply = await client.call("GET", f"/api/v1/jobs/{foreign}{suffix}")
                    rest.assert_error(reply, 404, "job_not_found")
                logs = (await client.ok("GET", f"/api/v1/jobs/{own}/logs"))["logs"]
                submitted = [e["message"] for e in logs if e["message"].startswith("Job '")]
                assert (
                    submitted[0] == f"Job '{'mine' if own == mine else 'theirs'}' submitted (parallelism 1)"
                )
            async with rest_client(substrate.operator_url) as operator:
                everything = (await operator.call("GET", "/metrics")).text  # the operator's own: both
                assert f'job_id="{mine}"' in everything and f'job_id="{theirs}"' in everything
                for _, ns, own, foreign in servers:
                    asked = {"namespace": ns}
                    for route in (
                        "/internal/v1/jobs/{}/control-log",
                        "/api/v1/jobs/{}",
                        "/api/v1/jobs/{}/logs",
                    ):
                        reply = await operator.call("GET", route.format(foreign), params=asked)
                        rest.assert_error(reply, 404, "job_not_found")
                        assert (await operator.call("GET", route.format(own), params=asked)).status == 200
            await other.ok("DELETE", f"/api/v1/jobs/{theirs}")
            no_server_errors(other)
    finally:
        for obj in await substrate.client.list(kube.STREAMINGJOBS, namespace):
            await substrate.client.delete(kube.STREAMINGJOBS, namespace, obj["metadata"]["name"])
    await api.ok("DELETE", f"/api/v1/jobs/{mine}")
    no_server_errors(api)


async def test_savepoints_cancel_with_savepoint_and_restart_rescaled(api: rest.Api, k8s_api: K8sApi) -> None:
    """Savepoint resources, stop-with-savepoint, then a restart from it at parallelism 3: the windows
    in SQLite are exactly the ones computed from the generated records."""
    db = k8s_api.substrate.tmp / f"{k8s_api.namespace}.db"
    body = {"name": "spend", **window_spec(db, parallelism=2, rate=5000)}
    body["sinks"][0]["config"]["key"] = ["key", "window_start"]  # a replay rewrites the same rows
    storage = (k8s_api.substrate.tmp / f"{k8s_api.namespace}-checkpoints").as_uri()
    body["config"]["checkpoint_storage"] = storage  # the job's own, not the operator's default
    job_id = (await api.ok("POST", "/api/v1/jobs", 201, json=body))["job_id"]
    await api.wait_status(job_id, {"running"})
    await rest.wait_checkpoint(api, job_id)
    url = f"/api/v1/jobs/{job_id}/savepoints"

    created = await api.ok("POST", url, 201, json={"description": "before upgrade"})
    rest.conforms(created, "SavepointResponse")
    assert created["description"] == "before upgrade" and created["size_bytes"] > 0
    (resource,) = await resources(k8s_api, kube.SAVEPOINTS)
    name = (await resource_of(k8s_api, job_id))["metadata"]["name"]
    assert resource["spec"] == {"jobRef": name, "description": "before upgrade"}
    assert resource["status"]["savepointId"] == created["savepoint_id"]
    assert created["location"].startswith(f"{storage}/")
    directory = Path(urlparse(created["location"]).path)
    assert (directory / "_manifest.json").is_file()
    assert await api.ok("DELETE", f"{url}/{created['savepoint_id']}") == {
        "savepoint_id": created["savepoint_id"],
        "deleted": True,
    }
    assert await resources(k8s_api, kube.SAVEPOINTS) == [] and not directory.exists()
    rest.assert_error(
        await api.call("DELETE", f"{url}/{created['savepoint_id']}"), 404, "savepoint_not_found"
    )

    cancelled = await api.ok("DELETE", f"/api/v1/jobs/{job_id}", params={"savepoint": "true"})
    assert cancelled["status"] == "cancelled"
    savepoint_id = cancelled["savepoint_id"]
    assert rest.SAVEPOINT_ID.match(savepoint_id)
    assert [s["savepoint_id"] for s in (await api.ok("GET", url))["savepoints"]] == [savepoint_id]

    async def recorded() -> list[dict[str, Any]] | None:  # the savepoint taken on cancel gets a resource
        found = [r for r in await resources(k8s_api, kube.SAVEPOINTS) if r.get("status", {}).get("state")]
        return found or None

    (resource,) = await eventually(recorded, 10, "the Savepoint resource of the cancel savepoint")
    assert resource["metadata"]["name"] == f"{name}-{savepoint_id}"
    assert resource["spec"] == {"jobRef": name, "description": "taken on cancel"}
    assert (resource["status"]["state"], resource["status"]["savepointId"]) == ("completed", savepoint_id)

    reply = await api.call(
        "POST",
        f"/api/v1/jobs/{job_id}/restart",
        json={"savepoint_id": savepoint_id, "config_overrides": {"parallelism": 3}},
    )
    assert reply.status == 200, reply.text
    rest.conforms(reply.body, "RestartJobResponse")
    assert reply.body["restored_from_savepoint"] == savepoint_id
    assert reply.body["status"] in ("running", "finished"), reply.body
    spec = (await resource_of(k8s_api, job_id))["spec"]
    assert (spec["restartNonce"], spec["state"], spec["config"]["parallelism"]) == (1, "running", 3)
    assert spec["restoreFrom"] == resource["metadata"]["name"]  # named by its Savepoint resource
    details = await api.wait_status(job_id, {"finished"}, within=90)
    assert details["config"]["parallelism"] == 3 and details["metrics"]["restarts"] == 1
    assert table_rows(db) == await expected_windows()
    directory = Path(urlparse(resource["status"]["location"]).path)
    assert (directory / "_manifest.json").is_file()

    # an upgrade over REST: from_savepoint names the location, the StreamingJob its Savepoint resource
    upgrade = {**body, "name": "spend-v2"}
    params = {"from_savepoint": resource["status"]["location"]}
    v2 = (await api.ok("POST", "/api/v1/jobs", 201, json=upgrade, params=params))["job_id"]
    assert (await resource_of(k8s_api, v2))["spec"]["restoreFrom"] == resource["metadata"]["name"]
    if (await api.wait_status(v2, {"running", "finished"}))["status"] == "running":
        await api.ok("DELETE", f"/api/v1/jobs/{v2}")
    assert (await api.ok("DELETE", f"{url}/{savepoint_id}"))["deleted"] is True

    # a deletion on Kubernetes is asynchronous (the finalizer deletes the files): the API waits a
    # while for it, and a loaded machine may take longer; a stuck finalizer shows in what is left
    left = await resources(k8s_api, kube.SAVEPOINTS)
    for _ in range(600):
        if not left:
            break
        await asyncio.sleep(0.1)
        left = await resources(k8s_api, kube.SAVEPOINTS)
    if left:  # printed whole: pytest shortens an assertion's message
        print(json.dumps(left, indent=1), k8s_api.substrate.operator_output(), sep="\n")
        if k8s_api.substrate.job_managers:
            jm = jmpods.name_of(str(left[0]["spec"]["jobRef"]))
            print(k8s_api.substrate.kubelet.log_of(k8s_api.namespace, jm)[-4000:])
    assert left == []
    assert not directory.exists()
    no_server_errors(api)


async def test_restart_from_the_latest_snapshot_reports_the_savepoint(api: rest.Api, k8s_api: K8sApi) -> None:
    job_id = (await api.ok("POST", "/api/v1/jobs", 201, json=rest.checkpointed_job("again")))["job_id"]
    details = rest.assert_error(
        await api.call("POST", f"/api/v1/jobs/{job_id}/restart"), 409, "illegal_state_transition"
    )
    assert details == [{"path": "status", "message": "submitted"}]
    await api.wait_status(job_id, {"running"})
    await rest.wait_checkpoint(api, job_id)
    savepoint_id = (await api.ok("DELETE", f"/api/v1/jobs/{job_id}", params={"savepoint": "true"}))[
        "savepoint_id"
    ]
    too_wide = {"config_overrides": {"parallelism": MAX_PARALLELISM + 1}}
    details = rest.assert_error(
        await api.call("POST", f"/api/v1/jobs/{job_id}/restart", json=too_wide), 400, "invalid_job_config"
    )
    assert details == [{"path": "config_overrides.parallelism", "message": "exceeds max_parallelism 8"}]
    # nothing restarted: the nonce is still the default the API server filled in on create
    assert (await resource_of(k8s_api, job_id))["spec"]["restartNonce"] == 0
    restarted = await api.ok("POST", f"/api/v1/jobs/{job_id}/restart")  # no body: the newest snapshot
    assert restarted["status"] == "running" and restarted["restored_from_savepoint"] == savepoint_id
    assert restarted["message"] == "Job restarted successfully"
    await api.ok("POST", f"/api/v1/jobs/{job_id}/pause")
    details = rest.assert_error(
        await api.call("POST", f"/api/v1/jobs/{job_id}/restart"), 409, "illegal_state_transition"
    )
    assert details == [{"path": "status", "message": "paused"}]
    await api.ok("DELETE", f"/api/v1/jobs/{job_id}")
    no_server_errors(api)


async def test_purge_deletes_the_streaming_job_and_the_operator_purges_its_job(
    api: rest.Api, k8s_api: K8sApi
) -> None:
    """As embedded: 409 while live or holding savepoints; then the StreamingJob goes and the operator's
    finalizer removes the job's checkpoints, logs and record from its control plane."""
    home = k8s_api.substrate.tmp / "operator-home"
    job_id = (await api.ok("POST", "/api/v1/jobs", 201, json=rest.checkpointed_job("purged")))["job_id"]
    await api.wait_status(job_id, {"running"})
    await rest.wait_checkpoint(api, job_id)
    purge = f"/api/v1/jobs/{job_id}?purge=true"
    assert rest.assert_error(await api.call("DELETE", purge), 409, "job_not_terminal") == [
        {"path": "status", "message": "running"}
    ]
    savepoint_id = (await api.ok("POST", f"/api/v1/jobs/{job_id}/savepoints", 201))["savepoint_id"]
    await api.ok("DELETE", f"/api/v1/jobs/{job_id}")
    assert rest.assert_error(await api.call("DELETE", purge), 409, "job_has_savepoints") == [
        {"path": "savepoint_id", "message": savepoint_id}
    ]
    await api.ok("DELETE", f"/api/v1/jobs/{job_id}/savepoints/{savepoint_id}")
    owned = [home / "jobs" / job_id, home / "checkpoints" / job_id]
    if k8s_api.substrate.job_managers:  # its record went with its job manager's pod; checkpoints shared
        owned = [k8s_api.substrate.tmp / "checkpoints" / job_id]
    assert all(p.exists() for p in owned), owned

    purged = await api.ok("DELETE", purge)
    assert (purged["job_id"], purged["status"], purged["purged"]) == (job_id, "cancelled", True)
    rest.assert_error(await api.call("GET", f"/api/v1/jobs/{job_id}"), 404, "job_not_found")
    assert not [o for o in await resources(k8s_api) if f"job-{o['metadata']['uid']}" == job_id]

    async def files_gone() -> bool:
        return not any(p.exists() for p in owned)

    await eventually(
        files_gone, 30, "the operator to purge the job", on_fail=k8s_api.substrate.operator_output()
    )
    no_server_errors(api)


async def test_operator_unreachable_is_503_for_what_only_it_knows(substrate: KubeSubstrate) -> None:
    namespace = "apitest-no-operator"
    async with k8s_api_server(substrate, namespace) as k8s:
        k8s.service.operator_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        await k8s.service.close()
        await k8s.service.start()
        async with rest_client(k8s.url) as api:
            job_id = (await api.ok("POST", "/api/v1/jobs", 201, json=rest.datagen_job("x", count=10)))[
                "job_id"
            ]
            details = await api.ok("GET", f"/api/v1/jobs/{job_id}")  # the resource's part still answers
            assert details["job_id"] == job_id and "metrics unavailable" in details["message"]
            reply = await api.call("GET", f"/api/v1/jobs/{job_id}/metrics")
            rest.assert_error(reply, 503, "service_unavailable")
            rest.assert_error(await api.call("GET", "/metrics"), 503, "service_unavailable")
            await api.wait_status(job_id, {"finished"})  # the operator runs it all the same
            logs = (await api.ok("GET", f"/api/v1/jobs/{job_id}/logs"))["logs"]  # the pods' lines still
            assert logs[-1]["level"] == "warn"
            assert logs[-1]["message"].startswith("the control plane's log lines are missing: ")


async def test_helios_server_substrate_kubernetes(substrate: KubeSubstrate) -> None:
    """The real command: ``helios server --substrate kubernetes`` with a kubeconfig and a token."""
    home = substrate.tmp / "server-home"
    await install_api_rbac(substrate.client, "apitest-cli")
    if substrate.job_managers:
        await install_jobmanager_rbac(substrate.client, ["--all-namespaces"], "apitest-cli")
    server = HeliosServerProcess(
        home,
        "--substrate",
        "kubernetes",
        "--namespace",
        "apitest-cli",
        "--operator-url",
        substrate.operator_url,
        env={"KUBECONFIG": str(substrate.cluster.kubeconfig_of(API)), "HELIOS_API_TOKEN": TOKEN},
    )
    try:
        assert "namespace apitest-cli" in server.output() and "auth bearer token" in server.output()
        async with aiohttp.ClientSession() as anonymous:
            async with anonymous.get(f"{server.url}/healthz") as response:
                assert response.status == 200
            async with anonymous.get(f"{server.url}/api/v1/jobs") as response:
                assert response.status == 401
            # the web console: its pages need no token (the page asks for it), as on the embedded one
            async with anonymous.get(f"{server.url}/jobs/any") as response:
                assert response.status == 200 and response.content_type == "text/html"
                assert '<script type="module" src="/console/app.js">' in await response.text()
            async with anonymous.get(f"{server.url}/console/api.js") as response:
                assert response.status == 200 and "Authorization" in await response.text()
        async with rest_client(server.url) as api:
            assert (await api.ok("GET", "/api/v1/jobs"))["total"] == 0
            job_id = (
                await api.ok("POST", "/api/v1/jobs", 201, json=rest.datagen_job("via cli", count=2000))
            )["job_id"]
            details = await api.wait_status(job_id, {"finished"})
            assert details["metrics"]["events_processed"] == 2000
            reply = await api.call("GET", "/metrics")
            assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
            assert f'heliosdb_job_events_processed_total{{job_id="{job_id}"' in reply.text
    finally:
        assert server.stop(signal.SIGTERM) == 0, server.log_tail()
    assert "helios server: stopped" in server.output()


@pytest.mark.kafka
@pytest.mark.postgres
async def test_kafka_to_postgres_through_the_api_with_savepoint_and_rescale(
    api: rest.Api, kafka_bootstrap: str, kafka_topic: Any, pg_dsn: str, pg_schema: str
) -> None:
    """The production stack over REST: Kafka -> filter -> PostgreSQL; cancel with a savepoint, more
    records arrive, restart from the savepoint at parallelism 3: PostgreSQL holds exactly the
    filtered records of both batches (the restored offsets neither skip nor repeat one)."""
    topic = await kafka_topic(partitions=3)
    table = f'"{pg_schema}".big'
    first = kafka.events(0, 3000)
    await kafka.produce(kafka_bootstrap, topic, first)
    body = {"name": "payments", **kafka.payments_job(kafka_bootstrap, topic, pg_dsn, pg_schema)}
    job_id = (await api.ok("POST", "/api/v1/jobs", 201, json=body))["job_id"]
    await api.wait_status(job_id, {"running"})

    async def rows_are(want: list[tuple[Any, ...]]) -> bool:
        return await kafka.rows(pg_dsn, table) == want

    await api.wait_until(lambda: rows_are(kafka.expected(first)), "the first batch in PostgreSQL", 60)
    await rest.wait_checkpoint(api, job_id)
    savepoint_id = (await api.ok("DELETE", f"/api/v1/jobs/{job_id}", params={"savepoint": "true"}))[
        "savepoint_id"
    ]

    second = kafka.events(3000, 2000)
    await kafka.produce(kafka_bootstrap, topic, second)  # while the job is cancelled
    restarted = await api.ok(
        "POST",
        f"/api/v1/jobs/{job_id}/restart",
        json={"savepoint_id": savepoint_id, "config_overrides": {"parallelism": 3}},
    )
    assert restarted["status"] == "running" and restarted["restored_from_savepoint"] == savepoint_id
    await api.wait_until(lambda: rows_are(kafka.expected(first + second)), "both batches in PostgreSQL", 60)
    details = await api.ok("GET", f"/api/v1/jobs/{job_id}")
    assert [t["parallelism"] for t in details["tasks"]] == [3, 3, 3]  # 3 partitions, 3 workers
    assert details["metrics"]["restarts"] == 1
    await api.ok("DELETE", f"/api/v1/jobs/{job_id}")
    no_server_errors(api)


async def test_operator_read_api_is_read_only_and_takes_the_token(substrate: KubeSubstrate) -> None:
    url = substrate.operator_url
    async with aiohttp.ClientSession() as anonymous, rest_client(url) as api:
        async with anonymous.get(f"{url}/healthz") as response:
            assert response.status == 200
        async with anonymous.get(f"{url}/api/v1/jobs") as response:
            assert response.status == 401
        for internal in ("info", "metrics?namespace=x", "jobs/job-x/control-log?namespace=x"):
            async with anonymous.get(f"{url}/internal/v1/{internal}") as response:
                assert response.status == 401, internal
        assert await api.ok("GET", "/internal/v1/info") == {"max_parallelism": MAX_PARALLELISM}
        rest.conforms(await api.ok("GET", "/api/v1/jobs"), "JobListResponse")  # every namespace's jobs
        reply = await api.call("POST", "/api/v1/jobs", json=rest.datagen_job("x", count=1))
        rest.assert_error(reply, 405, "method_not_allowed")
        assert reply.headers["Allow"] == "GET"
        rest.assert_error(await api.call("DELETE", "/api/v1/jobs/job-x"), 405, "method_not_allowed")
        rest.assert_error(await api.call("POST", "/api/v1/jobs/job-x/pause"), 404, "not_found")
        rest.assert_error(await api.call("POST", "/api/v1/jobs/job-x/savepoints"), 405, "method_not_allowed")
        assert (await api.call("GET", "/metrics")).status == 200
