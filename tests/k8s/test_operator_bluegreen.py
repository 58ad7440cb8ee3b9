"""Blue/green deployment (``StreamingJobDeployment``) end to end: ``helios operator`` (a subprocess)
against the emulated API server over HTTP, pods run by the test kubelet as real worker processes.

The template is a bounded keyed window job into SQLite through the exactly-once database sink, keyed
by the window (upserts), so both colors may write while they run side by side. A template change
starts green from a savepoint of blue; after the switch every window is in the table once with the
values computed straight from the generated records (nothing lost, nothing twice), and the windows
green committed carry its new column. A green that does not catch up in time is deleted and blue runs on.
Both with the control planes in the operator and with a job manager pod per StreamingJob.
"""

from __future__ import annotations

import asyncio
import copy
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from k8s_helpers import (
    NS,
    Env,
    OperatorProcess,
    StartOperator,
    eventually,
    expected_windows,
    job_status,
    table_rows,
    wait_phase,
    window_spec,
    worker_pods,
)
from test_operator_jobmanager import start as start_with_job_managers

from heliosdb_streaming.kubernetes import crds, deployment_crd, kube
from heliosdb_streaming.kubernetes.operator import bluegreen

pytestmark = pytest.mark.timeout(240)

# the controller acts through resources only: the same code with the control plane in the operator
# and with a job manager pod per StreamingJob
LAYOUTS = ["in-operator", "job-managers"]


async def start(layout: str, cluster: Env, start_operator: StartOperator) -> OperatorProcess:
    if layout == "job-managers":
        return await start_with_job_managers(cluster, start_operator)
    return await start_operator()


def template(db: Path, *, rate: float) -> dict[str, Any]:
    """A v1alpha2 (camelCase) StreamingJob spec, as the template takes it."""
    spec = window_spec(db, parallelism=1, rate=rate)
    spec["sinks"][0]["config"]["key"] = ["key", "window_start"]  # exactly once, upserted per window
    return crds.to_camel(spec)


def deployment(name: str, spec: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {
        "apiVersion": crds.API_VERSION,
        "kind": deployment_crd.KIND,
        "metadata": {"name": name, "namespace": NS},
        "spec": {"template": {"metadata": {"labels": {"team": "payments"}}, "spec": spec}, **settings},
    }


async def deployment_status(env: Env, name: str) -> dict[str, Any]:
    obj = await env.client.get_or_none(kube.STREAMINGJOBDEPLOYMENTS, NS, name)
    return dict((obj or {}).get("status") or {})


async def until_history(
    env: Env, operator: OperatorProcess, name: str, result: str, timeout: float = 90
) -> dict[str, Any]:
    """The status once the newest history entry is ``result`` and no switch is in progress."""

    async def probe() -> dict[str, Any] | None:
        status = await deployment_status(env, name)
        history = status.get("history") or []
        done = history and history[-1]["result"] == result and not status.get("transition")
        return status if done else None

    try:
        return await eventually(probe, timeout, f"{name}'s history to end with {result}")
    except AssertionError as e:
        status = await deployment_status(env, name)
        raise AssertionError(f"{e}; status {status}\n{operator.output()[-5000:]}") from None


def versions(db: Path) -> dict[Any, int]:
    with sqlite3.connect(db) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(spend)")]
        if "version" not in columns:
            return {}
        rows = conn.execute("SELECT version, count(*) FROM spend GROUP BY version").fetchall()
    return {v: n for v, n in rows}


def committed_rows(db: Path) -> list[tuple[Any, ...]]:
    """The windows in the sink so far (none before the first commit creates the table)."""
    try:
        return table_rows(db)
    except sqlite3.OperationalError:
        return []


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_a_template_change_switches_to_green_from_blues_savepoint_with_exact_results(
    cluster: Env, start_operator: StartOperator, layout: str
) -> None:
    client, db = cluster.client, cluster.tmp / "out.db"
    operator = await start(layout, cluster, start_operator)
    blue_spec = template(db, rate=1000)  # 20 s of data: blue is mid-stream when the template changes
    await client.create(kube.STREAMINGJOBDEPLOYMENTS, NS, deployment("pay", blue_spec))
    await wait_phase(client, "pay-blue", "running", log=operator.output())
    blue = await client.get(kube.STREAMINGJOBS, NS, "pay-blue")
    assert blue["metadata"]["labels"] == {
        "team": "payments",
        f"{crds.GROUP}/deployment": "pay",
        f"{crds.GROUP}/color": "blue",
    }
    owner = (await client.get(kube.STREAMINGJOBDEPLOYMENTS, NS, "pay"))["metadata"]["uid"]
    assert [r["uid"] for r in blue["metadata"]["ownerReferences"]] == [owner]

    async def committed() -> bool:  # some windows of blue are in the sink before the change
        return db.exists() and len(committed_rows(db)) > 100

    await eventually(committed, 30, "blue's first windows", on_fail=operator.output()[-3000:])
    status = await deployment_status(cluster, "pay")
    assert (status["phase"], status["activeColor"], status["activeJob"]) == ("Running", "blue", "pay-blue")
    assert condition(status, "Ready")["status"] == "True"

    green_spec = copy.deepcopy(blue_spec)  # v2: the same windows, with a version column
    green_spec["transformations"].append({"type": "map", "config": {"fields": {"version": "2"}}})
    await client.patch(kube.STREAMINGJOBDEPLOYMENTS, NS, "pay", {"spec": {"template": {"spec": green_spec}}})

    async def switching() -> dict[str, Any] | None:
        status = await deployment_status(cluster, "pay")
        transition = status.get("transition") or {}  # savepointing first, then catching_up
        return status if transition.get("state") == "catching_up" else None

    transition = (await eventually(switching, 30, "the switch to start", on_fail=operator.output()[-3000:]))[
        "transition"
    ]
    assert (transition["toColor"], transition["job"]) == ("green", "pay-green")
    savepoint = await client.get(kube.SAVEPOINTS, NS, transition["savepoint"])
    assert savepoint["spec"]["jobRef"] == "pay-blue" and savepoint["status"]["state"] == "completed"
    green = await client.get(kube.STREAMINGJOBS, NS, "pay-green")
    assert green["spec"]["restoreFrom"] == transition["savepoint"]
    # the template as written (camelCase), with the defaults the API server adds
    assert (green["apiVersion"], green["spec"]["config"]["checkpointIntervalMs"]) == (crds.API_VERSION, 500)
    assert green["spec"]["sources"][0]["config"]["ratePerSec"] == 1000
    assert green["spec"]["transformations"][-1] == green_spec["transformations"][-1]
    assert (await job_status(client, "pay-blue"))["phase"] == "running"  # blue runs on meanwhile

    status = await until_history(cluster, operator, "pay", "switched")
    assert (status["activeColor"], status["activeJob"]) == ("green", "pay-green")
    switched = status["history"][-1]
    assert switched["savepoint"] == transition["savepoint"] and "caught up" in switched["message"]
    assert [h["result"] for h in status["history"]] == ["deployed", "switched"]
    assert condition(status, "Progressing")["status"] == "False"

    async def blue_gone() -> bool:
        return await client.get_or_none(kube.STREAMINGJOBS, NS, "pay-blue") is None and not await worker_pods(
            client, "pay-blue"
        )

    await eventually(blue_gone, 30, "blue to be deleted", on_fail=operator.output()[-3000:])
    await wait_phase(client, "pay-green", "finished", timeout=90, log=operator.output())

    assert table_rows(db) == await expected_windows()  # every window once, exact, across the switch
    written = versions(db)
    assert written.get(2, 0) > 0 and sum(written.values()) == len(table_rows(db)), written
    reasons = [
        e.get("reason")
        for e in await client.list(kube.EVENTS, NS)
        if (e.get("involvedObject") or {}).get("name") == "pay"
    ]
    assert "Switching" in reasons and "Switched" in reasons

    # the switch's savepoint was blue's: it went with blue once green no longer needed it
    async def savepoint_gone() -> bool:
        return await client.get_or_none(kube.SAVEPOINTS, NS, transition["savepoint"]) is None

    await eventually(
        savepoint_gone, 30, "blue's savepoint to go with blue", on_fail=operator.output()[-3000:]
    )

    # deleting the deployment deletes its StreamingJob (owner reference), whose finalizer purges the job
    green_job = (await job_status(client, "pay-green"))["jobId"]
    await client.delete(kube.STREAMINGJOBDEPLOYMENTS, NS, "pay")

    async def all_gone() -> bool:
        return (
            await client.get_or_none(kube.STREAMINGJOBDEPLOYMENTS, NS, "pay") is None
            and await client.get_or_none(kube.STREAMINGJOBS, NS, "pay-green") is None
            # in-operator: the job is purged from the operator's home (a job manager's goes with its pod)
            and (layout == "job-managers" or not (operator.home / "jobs" / green_job).exists())
        )

    await eventually(
        all_gone, 30, "the deployment, green and its job to go", on_fail=operator.output()[-3000:]
    )
    await operator.stop()


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_a_green_that_does_not_catch_up_in_time_is_deleted_and_blue_runs_on(
    cluster: Env, start_operator: StartOperator, layout: str
) -> None:
    client, db = cluster.client, cluster.tmp / "out.db"
    operator = await start(layout, cluster, start_operator)
    spec = template(db, rate=400)  # 50 s of data: still running throughout
    # never caught up: a thousand checkpoints of green within 3 s
    settings = {"caughtUpTimeoutMs": 3000, "caughtUpCheckpoints": 1000}
    await client.create(kube.STREAMINGJOBDEPLOYMENTS, NS, deployment("slow", spec, **settings))
    await wait_phase(client, "slow-blue", "running", log=operator.output())
    blue_pods = [p["metadata"]["name"] for p in await worker_pods(client, "slow-blue")]

    changed = copy.deepcopy(spec)
    changed["config"]["parallelism"] = 2
    await client.patch(kube.STREAMINGJOBDEPLOYMENTS, NS, "slow", {"spec": {"template": {"spec": changed}}})
    status = await until_history(cluster, operator, "slow", "aborted")
    assert (status["phase"], status["activeColor"], status["activeJob"]) == ("Running", "blue", "slow-blue")
    assert "did not catch up within 3000ms" in status["message"], status["message"]
    assert "slow-blue keeps running" in status["message"]
    assert status["abortedTemplateHash"] != status["activeTemplateHash"]
    progressing = condition(status, "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "SwitchAborted")
    assert condition(status, "Ready")["status"] == "True"

    async def green_gone() -> bool:
        return await client.get_or_none(kube.STREAMINGJOBS, NS, "slow-green") is None

    await eventually(green_gone, 30, "green to be deleted", on_fail=operator.output()[-3000:])
    aborted_savepoint = status["history"][-1]["savepoint"]
    assert aborted_savepoint.startswith("slow-blue-switch-"), status["history"]

    async def aborted_savepoint_gone() -> bool:  # taken for that switch only: deleted with its files
        return await client.get_or_none(kube.SAVEPOINTS, NS, aborted_savepoint) is None

    await eventually(aborted_savepoint_gone, 30, "the aborted switch's savepoint to go")
    assert (await job_status(client, "slow-blue"))["phase"] == "running"
    assert [p["metadata"]["name"] for p in await worker_pods(client, "slow-blue")] == blue_pods  # untouched
    # the aborted template is not tried again: a few ticks later nothing new has started
    await asyncio.sleep(3 * bluegreen.TICK_S)
    later = await deployment_status(cluster, "slow")
    assert later["history"] == status["history"] and not later.get("transition")

    # a new template whose job the operator refuses (an expression that does not compile): green fails
    broken = copy.deepcopy(spec)
    broken["transformations"].insert(0, {"type": "filter", "config": {"condition": "amount >"}})
    await client.patch(kube.STREAMINGJOBDEPLOYMENTS, NS, "slow", {"spec": {"template": {"spec": broken}}})

    async def aborted_twice() -> dict[str, Any] | None:
        status = await deployment_status(cluster, "slow")
        results = [h["result"] for h in status.get("history") or []]
        return (
            status if results == ["deployed", "aborted", "aborted"] and not status.get("transition") else None
        )

    status = await eventually(
        aborted_twice, 60, "the broken green's abort", on_fail=operator.output()[-3000:]
    )
    assert "slow-green is failed (invalid spec: spec.transformations[0]" in status["message"], status[
        "message"
    ]
    assert (status["activeJob"], (await job_status(client, "slow-blue"))["phase"]) == ("slow-blue", "running")
    await operator.stop()
