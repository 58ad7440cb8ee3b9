"""The autoscaler on the kubernetes substrate, end to end over real HTTP: a StreamingJob submitted
through the REST API with ``config.autoscaler`` (the CRD carries it), the operator's control plane
measures its worker pods (local processes run by the test kubelet), decides, and rescales an idle job
from 2 pods to 1 with a stop-with-savepoint and a restart; the 1 s windows in SQLite equal those
computed straight from the generated records (exactly once across the rescale).

The StreamingJob's ``spec.config.parallelism`` stays what the user wrote (as the Flink operator's
autoscaler keeps its overrides out of the spec); the job's details show the parallelism it runs at.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from apiserver_fixtures import AUTH, K8sApi, k8s_api, k8s_api_server, substrate
from k8s_helpers import eventually, expected_windows, table_rows, window_spec

from heliosdb_streaming.kubernetes import kube

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import test_api as rest  # the REST client and the OpenAPI check (found through sys.path)

__all__ = ["k8s_api", "k8s_api_server", "substrate"]  # fixtures used by this module

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def api(k8s_api: K8sApi) -> AsyncIterator[rest.Api]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield rest.Api(session, k8s_api.url)


async def test_an_idle_streaming_job_scales_down_with_exact_results(api: rest.Api, k8s_api: K8sApi) -> None:
    db = k8s_api.substrate.tmp / f"{k8s_api.namespace}-autoscaled.db"
    body: dict[str, Any] = {"name": "idle-spend", **window_spec(db, parallelism=2, rate=1500)}
    body["config"]["autoscaler"] = {
        "enabled": True,
        "stabilization_ms": 1000,
        "cooldown_ms": 60_000,
        "metrics_window_ms": 2000,
    }
    job_id = (await api.ok("POST", "/api/v1/jobs", 201, json=body))["job_id"]
    (resource,) = await k8s_api.substrate.client.list(kube.STREAMINGJOBS, k8s_api.namespace)
    assert resource["spec"]["config"]["autoscaler"]["enabled"] is True  # the CRD keeps it

    async def scaled_down() -> dict[str, Any] | None:
        details: dict[str, Any] = await api.ok("GET", f"/api/v1/jobs/{job_id}")
        assert details["status"] != "failed", details["message"]
        decisions = (details["autoscaler"] or {}).get("history", [])[-3:]  # None before its first pass
        assert details["status"] != "finished", f"finished without scaling down: {decisions}"
        return details if details["config"]["parallelism"] == 1 else None

    details = await eventually(scaled_down, 60, "the autoscaler to scale the job down")
    rest.conforms(details, "JobDetailsResponse")
    down = [d for d in details["autoscaler"]["history"] if d["action"] == "scale_down"]
    assert down and down[0]["applied"] and down[0]["current_parallelism"] == 2, details["autoscaler"]
    assert down[0]["utilization"] < 0.3 and down[0]["inputs"]["split_count"] == 6

    final = await api.wait_status(job_id, {"finished"}, within=90)
    assert final["config"]["parallelism"] == 1 and final["metrics"]["restarts"] == 1
    assert table_rows(db) == await expected_windows()
    (resource,) = await k8s_api.substrate.client.list(kube.STREAMINGJOBS, k8s_api.namespace)
    assert resource["spec"]["config"]["parallelism"] == 2  # the user's spec is not rewritten
