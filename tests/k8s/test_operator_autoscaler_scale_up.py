"""A saturated StreamingJob scales up on Kubernetes (issue 16), as tests/integration/
test_autoscaler_rescale.py does on the embedded substrate: datagen at full speed through a python filter
that takes about 0.1 ms a record (a sleep: the shared cores stay free), keyed 1 s windows into SQLite
(exactly once). ``helios operator`` (a subprocess, ``--python-modules helios_userpkg``) against the
emulated API server, worker pods run by the test kubelet as real processes. The autoscaler stops the
job with a savepoint and restarts it at parallelism 2 (one more worker pod); that savepoint is a
Savepoint owned by the StreamingJob; the windows read back equal those computed from the records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from k8s_helpers import NS, Env, StartOperator, eventually, job_status, streaming_job, table_rows, wait_phase

from heliosdb_streaming.kubernetes import crds, kube
from heliosdb_streaming.testing.expected import datagen_tumbling_windows, tumbling_window_per_card

pytestmark = pytest.mark.timeout(180)

USERPKG = Path(__file__).resolve().parents[1] / "userpkg"
SLOW_STEP = {"type": "python", "config": {"function": "helios_userpkg.records:slow_keep", "kind": "filter"}}
DATAGEN = {"count": 60_000, "partitions": 4, "seed": 7, "keys": 40}


def saturated_spec(db: Path) -> dict[str, Any]:
    return {
        "config": {
            "parallelism": 1,
            "checkpoint_interval_ms": 400,
            "restart_strategy": "none",
            "autoscaler": {
                "enabled": True,
                "min_parallelism": 1,
                "max_parallelism": 2,
                "target_utilization": 0.4,
                "stabilization_ms": 1000,
                "cooldown_ms": 60_000,  # one rescale
                "metrics_window_ms": 2000,
            },
        },
        "sources": [{"type": "datagen", "config": {**DATAGEN, "rate_per_sec": 0}}],
        "transformations": [SLOW_STEP, tumbling_window_per_card()],
        "sinks": [{"type": "database", "config": {"connection_string": f"sqlite:///{db}", "table": "spend"}}],
    }


async def test_a_saturated_streaming_job_scales_up_with_exact_results(
    cluster: Env, start_operator: StartOperator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(USERPKG))  # what the test kubelet's worker processes inherit
    client, db = cluster.client, cluster.tmp / "scaled.db"
    operator = await start_operator(args=["--all-namespaces", "--python-modules", "helios_userpkg"])
    await client.create(kube.STREAMINGJOBS, NS, streaming_job("busy", saturated_spec(db)))
    await wait_phase(client, "busy", "running", log=operator.output())

    async def scaled_up() -> dict[str, Any] | None:
        status = await job_status(client, "busy")
        assert status.get("phase") != "failed", status
        return status if status.get("parallelism") == 2 else None

    await eventually(scaled_up, 60, "the autoscaler to scale busy up", on_fail=operator.output()[-4000:])
    savepoints = [
        s
        for s in await client.list(kube.SAVEPOINTS, NS)
        if s["spec"]["description"] == "autoscaler: parallelism 1 -> 2"
    ]
    uid = (await client.get(kube.STREAMINGJOBS, NS, "busy"))["metadata"]["uid"]
    assert [s["metadata"]["ownerReferences"][0]["uid"] for s in savepoints] == [uid], savepoints
    assert savepoints[0]["metadata"]["ownerReferences"][0]["kind"] == crds.STREAMING_JOB_KIND

    status = await wait_phase(client, "busy", "finished", timeout=90, log=operator.output())
    assert status["parallelism"] == 2
    workers = {p["metadata"]["name"] for p in await client.list(kube.PODS, NS, {f"{crds.GROUP}/job": "busy"})}
    assert "busy-worker-1" in workers  # the second worker exists only at parallelism 2
    expected = await datagen_tumbling_windows(**DATAGEN)
    assert len(expected) > 100 and sum(r[3] for r in expected) == DATAGEN["count"]
    assert table_rows(db) == expected  # nothing lost, nothing twice across the savepoint and the rescale
    await operator.stop()
