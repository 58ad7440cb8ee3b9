"""Disruptions and pods that cannot start, end to end (operator subprocess, emulated API over HTTP).

An evicted worker pod (the Eviction API, ``kubectl drain``: ``DisruptionTarget`` then a graceful
delete) restarts the job from its latest checkpoint without using up the restart strategy: with
``restart_strategy: none`` the job survives two evictions and its result is still exact. Pods the
scheduler cannot place or whose image cannot be pulled are reported in the StreamingJob status and by
one Event per pod, however long they wait. The live worker pods carry the job's podTemplate and meet
the restricted Pod Security Standard, with the operator's S3 credentials only behind a Secret.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from k8s_helpers import (
    NS,
    Env,
    StartOperator,
    events_of,
    eventually,
    expected_windows,
    job_status,
    streaming_job,
    table_rows,
    wait_phase,
    window_spec,
    worker_pods,
)

from heliosdb_streaming.kubernetes import crds, kube
from heliosdb_streaming.testing import pss
from heliosdb_streaming.testing.kubelet import evict

pytestmark = pytest.mark.timeout(180)


async def test_evictions_do_not_use_up_the_restart_strategy(
    cluster: Env, start_operator: StartOperator
) -> None:
    client, db = cluster.client, cluster.tmp / "out.db"
    operator = await start_operator()
    spec = window_spec(db, parallelism=2, rate=1500)
    spec["config"]["restart_strategy"] = {"type": "none"}  # any failure fails the job
    await client.create(kube.STREAMINGJOBS, NS, streaming_job("spend", spec))
    await wait_phase(client, "spend", "running", log=operator.output())

    last = 0
    for restarts, pod in ((1, "spend-worker-0"), (2, "spend-worker-1")):

        async def progressed(run: int = restarts, before: int = last) -> int | None:
            status = await job_status(client, "spend")
            assert status.get("phase") not in ("failed", "cancelled"), status
            pods = await worker_pods(client, "spend")
            attempts = {p["metadata"]["labels"][f"{crds.GROUP}/attempt"] for p in pods}
            running = {(p.get("status") or {}).get("phase") for p in pods} == {"Running"} and attempts == {
                str(run)
            }
            checkpoint = int(str(status.get("lastCheckpoint") or "checkpoint-0").split("-")[1])
            # a checkpoint of this run, so that the eviction interrupts real progress
            return checkpoint if running and checkpoint > before else None

        last = await eventually(
            progressed, 30, f"run {restarts} checkpointing", on_fail=operator.output()[-3000:]
        )
        await evict(client, NS, pod)

        async def restarted(after: int = restarts) -> dict[str, Any] | None:
            status = await job_status(client, "spend")
            assert status.get("phase") != "failed", status  # "none" would have failed it
            return status if status.get("restarts") == after and status.get("phase") == "running" else None

        status = await eventually(restarted, 30, f"restart {restarts}", on_fail=operator.output()[-3000:])
        assert "disruption" in status["message"] and "EvictionByEvictionAPI" in status["message"]

    status = await wait_phase(client, "spend", "finished", timeout=120, log=operator.output())
    assert status["restarts"] == 2
    assert table_rows(db) == await expected_windows()  # exactly once through both evictions
    await operator.stop()


POD_TEMPLATE = {
    "metadata": {"labels": {"team": "payments"}, "annotations": {"example.com/owner": "payments"}},
    "spec": {
        "nodeSelector": {"pool": "streaming"},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "streaming", "effect": "NoSchedule"}
        ],
        "priorityClassName": "streaming",
        "imagePullSecrets": [{"name": "registry"}],
        "volumes": [{"name": "certs", "secret": {"secretName": "kafka-certs"}}],
        "containers": [
            {
                "name": "worker",
                "env": [
                    {"name": "KAFKA_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "kafka", "key": "pw"}}}
                ],
                "volumeMounts": [{"name": "certs", "mountPath": "/etc/kafka", "readOnly": True}],
            }
        ],
    },
}


async def test_pods_that_cannot_start_are_reported_once(cluster: Env, start_operator: StartOperator) -> None:
    client = cluster.client
    cluster.kubelet.missing_images.add("registry.example.com/helios:missing")
    credentials = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"}
    operator = await start_operator(env=credentials)
    base = window_spec(cluster.tmp / "out.db", parallelism=2, rate=100)
    jobs = {
        "pull": ({**base, "image": "registry.example.com/helios:missing"}, "ErrImagePull"),
        "placed": (
            {**base, "podTemplate": POD_TEMPLATE, "resources": {"limits": {"memory": "1Gi", "cpu": 2}}},
            "Unschedulable",
        ),
    }
    for name, (spec, _) in jobs.items():
        await client.create(kube.STREAMINGJOBS, NS, streaming_job(name, spec))

    for name, (_, reason) in jobs.items():

        async def reported(job: str = name) -> dict[str, Any] | None:
            status = await job_status(client, job)
            return status if len(status.get("pendingPods") or []) == 2 else None

        status = await eventually(reported, 30, f"pending pods of {name}", on_fail=operator.output()[-3000:])
        assert [(p["name"], p["reason"]) for p in status["pendingPods"]] == [
            (f"{name}-worker-0", reason),
            (f"{name}-worker-1", reason),
        ]
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", reason)
        assert status["phase"] == "submitted"

    await asyncio.sleep(6)  # three status sweeps and kopf retries later: still one Event per pod
    for name, (_, reason) in jobs.items():
        pending = [m for r, m in await events_of(client, name) if r == "PodPending"]
        message = pending_message(reason)
        assert sorted(pending) == [f"pod {name}-worker-{i} cannot start: {reason}: {message}" for i in (0, 1)]
        assert [r for r, _ in await events_of(client, name)].count("Logging") == 0  # no kopf retry Events

    (pod, _) = await worker_pods(client, "placed")
    spec = pod["spec"]
    assert pss.violations(spec) == [] and spec["automountServiceAccountToken"] is False
    assert pod["metadata"]["labels"]["team"] == "payments"
    assert pod["metadata"]["annotations"]["example.com/owner"] == "payments"
    for key in ("nodeSelector", "tolerations", "priorityClassName", "imagePullSecrets"):
        assert spec[key] == POD_TEMPLATE["spec"][key], key  # type: ignore[index]
    assert {"name": "certs", "secret": {"secretName": "kafka-certs"}} in spec["volumes"]
    container = spec["containers"][0]
    assert container["resources"] == {"limits": {"memory": "1Gi", "cpu": 2}}
    env = {e["name"]: e for e in container["env"]}
    assert env["KAFKA_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "kafka", "key": "pw"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "placed-job"
    assert "s3cr3t-value" not in json.dumps(pod)  # credentials only behind a Secret
    secret = await client.get(kube.SECRETS, NS, "placed-job")
    assert base64.b64decode(secret["data"]["AWS_SECRET_ACCESS_KEY"]).decode() == "s3cr3t-value"

    for name in jobs:
        await client.delete(kube.STREAMINGJOBS, NS, name)
    await operator.stop()


def pending_message(reason: str) -> str:
    if reason == "ErrImagePull":
        return "pull access denied for registry.example.com/helios:missing"
    return "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
