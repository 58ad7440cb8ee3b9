"""The failure-rate restart strategy on Kubernetes (issue 16): worker pods (real processes run by the
test kubelet) that fail on their first record, as in tests/integration/test_ops_failure_rate.py. Three
failures within the interval fail the StreamingJob after two restarts; failures spread wider than the
interval keep restarting it. What the status and the Events say is read back from the API server.
"""

from __future__ import annotations

from typing import Any

import pytest
from k8s_helpers import NS, Env, StartOperator, events_of, eventually, job_status, streaming_job, wait_phase

from heliosdb_streaming.kubernetes import kube

pytestmark = pytest.mark.timeout(180)


def crashing_spec(strategy: dict[str, Any]) -> dict[str, Any]:
    """Compares a string field with a number under ``on_error: fail``: every run fails at once."""
    return {
        "config": {"parallelism": 1, "on_error": "fail", "restart_strategy": strategy},
        "sources": [{"type": "datagen", "config": {"partitions": 1, "seed": 3, "rate_per_sec": 200}}],
        "transformations": [{"type": "filter", "config": {"condition": "merchant > 5"}}],
        "sinks": [{"type": "discard", "config": {}}],
    }


async def test_three_failures_within_the_interval_fail_the_job_and_spread_ones_do_not(
    cluster: Env, start_operator: StartOperator
) -> None:
    client = cluster.client
    operator = await start_operator()
    exceeded = {
        "type": "failure_rate",
        "max_failures_per_interval": 2,
        "failure_rate_interval_ms": 120_000,
        "delay_ms": 100,
    }
    spread = {
        "type": "failure_rate",
        "max_failures_per_interval": 1,
        "failure_rate_interval_ms": 500,
        "delay_ms": 1500,
    }
    await client.create(kube.STREAMINGJOBS, NS, streaming_job("exceeded", crashing_spec(exceeded)))
    await client.create(kube.STREAMINGJOBS, NS, streaming_job("spread", crashing_spec(spread)))

    status = await wait_phase(client, "exceeded", "failed", timeout=120, log=operator.output())
    assert status["restarts"] == 2, status  # two failures restarted it, the third did not
    assert "3 failures within 120000 ms, more than 2" in status["message"], status["message"]
    reasons = [r for r, _ in await events_of(client, "exceeded")]
    assert "Failed" in reasons, reasons

    async def restarted_three_times() -> dict[str, Any] | None:
        status = await job_status(client, "spread")
        assert status.get("phase") != "failed", status
        return status if (status.get("restarts") or 0) >= 3 else None

    await eventually(
        restarted_three_times, 120, "three restarts of spread", on_fail=operator.output()[-3000:]
    )
    assert (await job_status(client, "spread"))["phase"] != "failed"
    await operator.stop()
