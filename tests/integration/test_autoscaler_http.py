"""The autoscaler over real HTTP against a ``helios server`` subprocess with real workers: a job's
``config.autoscaler`` is validated at submit (400 naming the field), its details carry the
``autoscaler`` section as the OpenAPI document describes it, and ``/metrics`` exports the
``heliosdb_job_autoscaler_*`` families. Mode ``recommend`` on an idle job: the decision to scale down
is recorded, and nothing restarts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema  # type: ignore[import-untyped]
import pytest

from heliosdb_streaming.testing.server import HeliosServerProcess
from heliosdb_streaming.testing.waits import wait_until

pytestmark = pytest.mark.timeout(120)

OPENAPI = json.loads((Path(__file__).resolve().parents[2] / "docs" / "openapi.json").read_text())


def conforms(body: Any, schema_name: str) -> None:
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": OPENAPI["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


def idle_job(autoscaler: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "idle",
        "config": {"parallelism": 2, "checkpoint_interval_ms": 1000, "autoscaler": autoscaler},
        "sources": [{"type": "datagen", "config": {"partitions": 2, "rate_per_sec": 20}}],
        "sinks": [{"type": "discard", "config": {}}],
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeliosServerProcess]:
    process = HeliosServerProcess(tmp_path_factory.mktemp("autoscaler-http") / "home")
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log_tail()


async def test_recommend_mode_over_rest_and_metrics(
    server: HeliosServerProcess, session: aiohttp.ClientSession
) -> None:
    base = server.url
    bad = idle_job({"enabled": True, "target_utilization": 1.5, "mode": "auto"})
    async with session.post(f"{base}/api/v1/jobs", json=bad) as response:
        body = await response.json()
    assert response.status == 400, body
    assert sorted(d["path"] for d in body["error"]["details"]) == [
        "config.autoscaler.mode",
        "config.autoscaler.target_utilization",
    ]

    settings = {"enabled": True, "mode": "recommend", "stabilization_ms": 1000, "metrics_window_ms": 2000}
    async with session.post(f"{base}/api/v1/jobs", json=idle_job(settings)) as response:
        job_id = (await response.json())["job_id"]

    async def recommended() -> Any:
        async with session.get(f"{base}/api/v1/jobs/{job_id}") as r:
            details = await r.json()
        last = (details.get("autoscaler") or {}).get("last_decision")
        return details if last and last["action"] == "scale_down" else None

    details = await wait_until(recommended, what="a recommendation to scale down", within=40)
    conforms(details, "JobDetailsResponse")
    assert details["config"]["autoscaler"] == {
        "enabled": True,
        "min_parallelism": 1,
        "max_parallelism": 1024,
        "target_utilization": 0.7,
        "stabilization_ms": 1000,
        "cooldown_ms": 300000,
        "metrics_window_ms": 2000,
        "mode": "recommend",
    }
    section = details["autoscaler"]
    last = section["last_decision"]
    assert (section["mode"], section["parallelism"], section["rescales"]) == ("recommend", 2, 0)
    assert (last["current_parallelism"], last["parallelism"], last["applied"]) == (2, 1, False)
    assert last["utilization"] < 0.3 and last["kind"] == "evaluated"
    assert last["inputs"]["split_count"] == 2 and len(last["inputs"]["workers"]) == 2
    assert [d["kind"] for d in section["history"]][:2] == ["stabilizing", "collecting"]
    assert details["config"]["parallelism"] == 2 and details["metrics"]["restarts"] == 0
    assert details["status"] == "running"

    async with session.get(f"{base}/metrics") as r:
        text = await r.text()
    labels = f'job_id="{job_id}",job_name="idle"'
    assert f"heliosdb_job_autoscaler_parallelism{{{labels}}} 2.0" in text
    assert f"heliosdb_job_autoscaler_recommended_parallelism{{{labels}}} 1.0" in text
    assert f'heliosdb_job_autoscaler_decisions_total{{action="scale_down",{labels}}} 1.0' in text
    assert f"heliosdb_job_autoscaler_rescales_total{{{labels}}} 0.0" in text

    async with session.delete(f"{base}/api/v1/jobs/{job_id}") as r:
        assert r.status == 200
