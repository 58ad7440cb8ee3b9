"""The periodic resync (``operator/resync.py``) end to end: ``helios operator`` against the emulated API
server (chart RBAC enforced), pods run by the test kubelet. A running job's worker Service, job Secret
and PodDisruptionBudget, deleted behind the operator's back, come back without any spec change; the
job keeps running and an Event (counted, not repeated) says what was recreated."""

from __future__ import annotations

from typing import Any

import pytest
from k8s_helpers import NS, Env, StartOperator, events_of, eventually, streaming_job, wait_phase

from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.kubernetes.operator import pods, resync

pytestmark = pytest.mark.timeout(180)


def endless_spec() -> dict[str, Any]:
    return {
        "config": {"parallelism": 1, "checkpoint_interval_ms": 500},
        "sources": [{"type": "datagen", "config": {"partitions": 1, "seed": 3, "rate_per_sec": 100}}],
        "transformations": [],
        "sinks": [{"type": "discard", "config": {}}],
        "podDisruptionBudget": {"enabled": True, "maxUnavailable": 0},
    }


async def test_deleted_service_secret_and_budget_are_recreated(
    cluster: Env, start_operator: StartOperator
) -> None:
    client = cluster.client
    operator = await start_operator(env={resync.RESYNC_ENV: "1"})
    await client.create(kube.STREAMINGJOBS, NS, streaming_job("steady", endless_spec()))
    await wait_phase(client, "steady", "running", log=operator.output())
    owned = (
        (kube.SERVICES, pods.service_name("steady")),
        (kube.SECRETS, pods.job_secret_name("steady")),
        (kube.PODDISRUPTIONBUDGETS, pods.disruption_budget_name("steady")),
    )

    async def all_there() -> bool:
        return all([await client.get_or_none(r, NS, n) is not None for r, n in owned])

    await eventually(all_there, 30, "the job's objects", on_fail=operator.output()[-3000:])
    before = {n: (await client.get(r, NS, n))["metadata"]["uid"] for r, n in owned}
    for round_ in (1, 2):
        for resource, name in owned:
            await client.delete(resource, NS, name)

        async def recreated(old: dict[str, str] = before) -> bool:
            found = [await client.get_or_none(r, NS, n) for r, n in owned]
            return all(o is not None and o["metadata"]["uid"] != old[o["metadata"]["name"]] for o in found)

        await eventually(
            recreated, 20, f"the deleted objects back (round {round_})", on_fail=operator.output()[-3000:]
        )
        before = {n: (await client.get(r, NS, n))["metadata"]["uid"] for r, n in owned}
    secret = await client.get(kube.SECRETS, NS, pods.job_secret_name("steady"))
    assert secret["metadata"]["ownerReferences"][0]["name"] == "steady" and secret["data"]
    status = await wait_phase(client, "steady", "running", log=operator.output())
    assert status["restarts"] == 0
    reasons = [m for r, m in await events_of(client, "steady") if r == "OwnedObjectsRecreated"]
    assert reasons == ["recreated what was deleted: Service, Secret, PodDisruptionBudget"], reasons
    items = [e for e in await client.list(kube.EVENTS, NS) if e.get("reason") == "OwnedObjectsRecreated"]
    assert [e["count"] for e in items] == [2]  # the second time counted on the first Event
    await operator.stop()
