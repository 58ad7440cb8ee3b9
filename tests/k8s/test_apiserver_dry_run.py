"""``POST /api/v1/jobs?dry_run=true`` on the kubernetes substrate: the API server's checks and the
operator's (allowed paths, the python allow-list, which it otherwise applies only when it reconciles a
StreamingJob, failing the job afterwards) answer synchronously, and no StreamingJob is ever created."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from apiserver_fixtures import AUTH, K8sApi, k8s_api, substrate

from heliosdb_streaming.kubernetes import kube

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import test_api as rest  # the REST client and job bodies (found through sys.path)
import test_api_dry_run as dry  # the substrate-neutral scenario

__all__ = ["k8s_api", "substrate"]  # fixtures used by this module

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def api(k8s_api: K8sApi) -> AsyncIterator[rest.Api]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield rest.Api(session, k8s_api.url)


async def streaming_jobs(k8s_api: K8sApi) -> list[str]:
    objs = await k8s_api.substrate.client.list(kube.STREAMINGJOBS, k8s_api.namespace)
    return [o["metadata"]["name"] for o in objs]


async def test_dry_run_scenario_on_kubernetes(api: rest.Api, k8s_api: K8sApi) -> None:
    await dry.dry_run_scenario(api)
    assert await streaming_jobs(k8s_api) == []
    assert not [s for s in api.statuses if s >= 500], api.statuses


async def test_the_operators_checks_answer_the_dry_run(api: rest.Api, k8s_api: K8sApi) -> None:
    """The operator runs without ``--python-modules`` (no user code) and with ``--allow-path`` the
    test's directory: a python step and a file outside it are 400 at their paths, as the embedded
    server answers them, before any resource exists; the valid job passes."""
    url = "/api/v1/jobs?dry_run=true"
    job = rest.datagen_job("with-python", count=10)
    job["transformations"].append({"type": "python", "config": {"function": "json:loads"}})
    details = rest.assert_error(await api.call("POST", url, json=job), 400, "python_not_allowed")
    assert [d["path"] for d in details] == ["transformations[1].config.function"]

    outside = rest.datagen_job("outside", count=10)
    outside["sinks"] = [{"type": "file", "config": {"path": "/etc/helios-dry-run/{task}.jsonl"}}]
    details = rest.assert_error(await api.call("POST", url, json=outside), 400, "invalid_job_config")
    assert [d["path"] for d in details] == ["sinks[0].config.path"]

    inside = rest.datagen_job("inside", count=10)
    inside["sinks"] = [{"type": "file", "config": {"path": str(k8s_api.substrate.tmp / "out/{task}.jsonl")}}]
    body = await api.ok("POST", url, 200, json=inside)
    assert body["plan"]["stages"][0]["steps"] == [{"index": 0, "type": "filter"}]
    assert await streaming_jobs(k8s_api) == []
    assert not (k8s_api.substrate.tmp / "out").exists()
    # submitted for real, the python step is refused only later, by the operator: the dry run is sooner
    reply = await api.call("POST", "/api/v1/jobs", json=job)
    assert reply.status == 201, reply.text
    assert len(await streaming_jobs(k8s_api)) == 1
