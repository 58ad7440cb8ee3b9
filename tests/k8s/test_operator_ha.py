"""Two operator replicas over one shared home, one active through a coordination.k8s.io Lease.

Both are real ``helios operator --leader-election`` processes against the emulated API server over
HTTP, as the chart's operator service account with the chart's RBAC (the Lease Role included). The
standby serves only its metrics port until it holds the Lease; SIGKILL of the leader (no release)
leaves the Lease unrenewed, the standby takes it over after the lease duration and recovers the job
from its latest checkpoint, which then finishes with exactly the expected windows.
"""

from __future__ import annotations

import signal

import aiohttp
import pytest
from k8s_helpers import (
    NS,
    Env,
    OperatorProcess,
    StartOperator,
    eventually,
    expected_windows,
    job_status,
    streaming_job,
    table_rows,
    wait_phase,
    window_spec,
    worker_pods,
)
from test_chart import FULLNAME, NAMESPACE

from heliosdb_streaming.kubernetes import crds, kube
from heliosdb_streaming.testing.ports import free_port

pytestmark = pytest.mark.timeout(180)

LEASE = f"{FULLNAME}-operator"  # the chart's --lease-name, in the release namespace
LEASE_DURATION_S = 3.0


async def scrape(port: int) -> dict[str, float]:
    """The operator's own metrics (no labels, plus reconciles summed), from its metrics port."""
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        base = name.split("{", 1)[0]
        values[base] = values.get(base, 0.0) + float(value)
    return values


LEADER_LABEL = "streaming.heliosdb.io/operator-leader"


async def operator_pod(env: Env, name: str) -> None:
    """The replica's own pod (the chart's Deployment makes it), for the leader label; a nodeSelector
    the test kubelet does not satisfy keeps it Pending: the replica runs as a process of the test."""
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/component": "operator"},
        },
        "spec": {
            "nodeSelector": {"test": "no-such-node"},
            "containers": [{"name": "operator", "image": "x"}],
        },
    }
    await env.client.create(kube.PODS, NAMESPACE, body)


async def leader_label(env: Env, name: str) -> str | None:
    pod = await env.client.get(kube.PODS, NAMESPACE, name)
    return (pod["metadata"].get("labels") or {}).get(LEADER_LABEL)


async def start_replica(
    start_operator: StartOperator, env: Env, control_port: int, pod: str
) -> tuple[OperatorProcess, int]:
    await operator_pod(env, pod)
    metrics_port = free_port()
    args = [
        "--all-namespaces",
        "--leader-election",
        "--lease-name",
        LEASE,
        "--lease-namespace",
        NAMESPACE,
        "--lease-duration",
        str(LEASE_DURATION_S),
        "--metrics-port",
        str(metrics_port),
    ]
    pod_env = {"POD_NAME": pod, "POD_NAMESPACE": NAMESPACE}  # the chart's downward API env
    operator = await start_operator(
        home=env.tmp / "shared-home", args=args, control_port=control_port, env=pod_env
    )
    return operator, metrics_port


async def health(port: int) -> dict[str, str]:
    """``/healthz`` of the metrics port, what the chart's probes ask."""
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as r:
        assert r.status == 200
        return dict(await r.json())


async def lease_holder(env: Env) -> str:
    lease = await env.client.get_or_none(kube.LEASES, NAMESPACE, LEASE)
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


async def test_standby_takes_over_when_the_leader_is_killed(
    cluster: Env, start_operator: StartOperator
) -> None:
    client, db = cluster.client, cluster.tmp / "out.db"
    control_port = (
        free_port()
    )  # one address for the workers, as the chart's Service: only the leader binds it
    first, first_metrics = await start_replica(start_operator, cluster, control_port, "operator-a")

    async def held() -> str | None:
        return await lease_holder(cluster) or None

    await eventually(held, 30, "a Lease holder", on_fail=first.output()[-3000:])
    second, second_metrics = await start_replica(start_operator, cluster, control_port, "operator-b")

    async def labelled(pod: str, value: str) -> bool:
        return await leader_label(cluster, pod) == value

    await eventually(lambda: labelled("operator-b", "false"), 30, "the standby's pod labelled false")

    spec = window_spec(db, parallelism=2, rate=5000)
    await client.create(kube.STREAMINGJOBS, NS, streaming_job("spend", spec))
    status = await wait_phase(client, "spend", "running", log=first.output())

    async def checkpointed() -> str | None:
        return (await job_status(client, "spend")).get("lastCheckpoint")

    await eventually(checkpointed, 30, "a checkpoint", on_fail=first.output()[-3000:])
    # exactly one leader: the first; the second waits without having started anything
    assert (await scrape(first_metrics))["heliosdb_operator_leader"] == 1
    standby = await scrape(second_metrics)
    assert standby["heliosdb_operator_leader"] == 0
    assert standby.get("heliosdb_operator_reconciles_total", 0) == 0
    assert (await scrape(first_metrics))["heliosdb_operator_reconciles_total"] >= 1
    assert await health(second_metrics) == {"status": "ok", "role": "standby"}  # probed, ready: PDB counts it
    assert await health(first_metrics) == {"status": "ok", "role": "leader"}
    assert "standby: waiting for Lease" in second.output()
    assert "control plane listening" not in second.output()
    holder = await lease_holder(cluster)
    assert await leader_label(cluster, "operator-a") == "true"  # the operator Service selects it

    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL  # no release: the Lease must expire

    async def took_over() -> bool:
        return (await scrape(second_metrics))["heliosdb_operator_leader"] == 1

    await eventually(took_over, 30, "the standby to lead", on_fail=second.output()[-3000:])
    assert await lease_holder(cluster) not in ("", holder)
    await eventually(lambda: labelled("operator-b", "true"), 30, "the new leader's pod labelled true")

    async def relaunched() -> bool:
        attempts = {
            p["metadata"]["labels"][f"{crds.GROUP}/attempt"] for p in await worker_pods(client, "spend")
        }
        return attempts == {"2"}

    await eventually(
        relaunched, 30, "the new leader to start the workers again", on_fail=second.output()[-3000:]
    )
    final = await wait_phase(client, "spend", "finished", timeout=90, log=second.output())
    assert final["jobId"] == status["jobId"]  # the same job, recovered, not a second one
    assert table_rows(db) == await expected_windows()
    led = await scrape(second_metrics)
    assert led["heliosdb_operator_leader_transitions_total"] == 1
    assert led["heliosdb_operator_reconciles_total"] >= 1

    # a clean stop releases the Lease at once (no wait of a lease duration for the next replica)
    assert await second.stop() == 0
    assert await lease_holder(cluster) == ""


async def test_opt_in_pod_disruption_budget_follows_the_spec(
    cluster: Env, start_operator: StartOperator
) -> None:
    """``spec.podDisruptionBudget``: none by default; enabled, the operator creates one owned by the
    StreamingJob over its worker pods; a new maxUnavailable changes it; disabled, it is deleted."""
    client, db = cluster.client, cluster.tmp / "out.db"
    operator = await start_operator()
    name = "spend-workers"
    await client.create(
        kube.STREAMINGJOBS, NS, streaming_job("plain", window_spec(db, parallelism=1, rate=50))
    )
    await wait_phase(client, "plain", "running", log=operator.output())
    assert await client.get_or_none(kube.PODDISRUPTIONBUDGETS, NS, "plain-workers") is None

    spec = window_spec(cluster.tmp / "out2.db", parallelism=2, rate=50)
    spec["podDisruptionBudget"] = {"enabled": True}
    await client.create(kube.STREAMINGJOBS, NS, streaming_job("spend", spec))
    await wait_phase(client, "spend", "running", log=operator.output())

    async def budget(wanted: int | None) -> dict[str, object] | bool:
        pdb = await client.get_or_none(kube.PODDISRUPTIONBUDGETS, NS, name)
        if wanted is None:
            return pdb is None
        return pdb if pdb is not None and pdb["spec"]["maxUnavailable"] == wanted else False

    pdb = await eventually(
        lambda: budget(1), 30, "the PodDisruptionBudget", on_fail=operator.output()[-3000:]
    )
    assert isinstance(pdb, dict)
    owner = pdb["metadata"]["ownerReferences"][0]
    job = await client.get(kube.STREAMINGJOBS, NS, "spend")
    assert (owner["kind"], owner["uid"]) == (crds.STREAMING_JOB_KIND, job["metadata"]["uid"])
    selector = pdb["spec"]["selector"]["matchLabels"]
    workers = await worker_pods(client, "spend")
    assert len(workers) == 2 and all(selector.items() <= w["metadata"]["labels"].items() for w in workers)

    await client.patch(
        kube.STREAMINGJOBS, NS, "spend", {"spec": {"podDisruptionBudget": {"maxUnavailable": 0}}}
    )
    await eventually(lambda: budget(0), 30, "maxUnavailable 0", on_fail=operator.output()[-3000:])
    await client.patch(kube.STREAMINGJOBS, NS, "spend", {"spec": {"podDisruptionBudget": {"enabled": False}}})
    await eventually(lambda: budget(None), 30, "the budget deleted", on_fail=operator.output()[-3000:])
    assert (await job_status(client, "spend"))["phase"] == "running"  # no restart for it
