"""``spec.ttlSecondsAfterFinished`` end to end (issue 16): ``helios operator`` against the emulated API
server, pods run by the test kubelet. A job that ended is deleted with its files once its TTL is up;
one that a Savepoint resource refers to is kept until that Savepoint is deleted."""

from __future__ import annotations

from typing import Any

import pytest
from k8s_helpers import NS, Env, StartOperator, events_of, eventually, savepoint, streaming_job, wait_phase

from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.testing.ports import free_port

pytestmark = pytest.mark.timeout(180)


def datagen_spec(*, count: int | None, rate: float, ttl: int) -> dict[str, Any]:
    source: dict[str, Any] = {"partitions": 1, "seed": 2, "rate_per_sec": rate}
    if count is not None:
        source["count"] = count
    return {
        "config": {"parallelism": 1, "checkpoint_interval_ms": 500},
        "sources": [{"type": "datagen", "config": source}],
        "transformations": [],
        "sinks": [{"type": "discard", "config": {}}],
        "ttlSecondsAfterFinished": ttl,
    }


async def test_a_finished_job_expires_with_its_files_unless_a_savepoint_refers_to_it(
    cluster: Env, start_operator: StartOperator
) -> None:
    client = cluster.client
    # a read API port of its own: 8082, the default, may be another operator's on a shared machine
    operator = await start_operator(args=["--all-namespaces", "--read-port", str(free_port())])
    log = operator.output
    await client.create(
        kube.STREAMINGJOBS, NS, streaming_job("brief", datagen_spec(count=2000, rate=0, ttl=2))
    )
    await client.create(
        kube.STREAMINGJOBS, NS, streaming_job("kept", datagen_spec(count=None, rate=200, ttl=1))
    )
    brief_id = (await wait_phase(client, "brief", "running", "finished", log=log()))["jobId"]
    kept_id = (await wait_phase(client, "kept", "running", log=log()))["jobId"]
    await client.create(kube.SAVEPOINTS, NS, savepoint("keep-it", "kept"))

    async def completed() -> bool:
        sp = await client.get(kube.SAVEPOINTS, NS, "keep-it")
        return (sp.get("status") or {}).get("state") == "completed"

    await eventually(completed, 30, "the savepoint", on_fail=log()[-3000:])
    await client.patch(kube.STREAMINGJOBS, NS, "kept", {"spec": {"state": "cancelled"}})
    await wait_phase(client, "kept", "cancelled", log=log())

    async def brief_gone() -> bool:
        return (
            await client.get_or_none(kube.STREAMINGJOBS, NS, "brief") is None
            and not (operator.home / "jobs" / brief_id).exists()
        )

    await eventually(brief_gone, 30, "the finished job to expire and be purged", on_fail=log()[-3000:])

    async def held() -> bool:
        return any(reason == "ExpiryHeld" for reason, _ in await events_of(client, "kept"))

    await eventually(held, 30, "the kept job's ExpiryHeld event", on_fail=log()[-3000:])
    assert await client.get_or_none(kube.STREAMINGJOBS, NS, "kept") is not None
    assert (operator.home / "jobs" / kept_id).is_dir()
    messages = [m for reason, m in await events_of(client, "kept") if reason == "ExpiryHeld"]
    assert messages == ["Kept: Savepoint resource(s) keep-it refer to it"], messages

    await client.delete(kube.SAVEPOINTS, NS, "keep-it")  # its files go; nothing keeps the job now

    async def kept_gone() -> bool:
        return (
            await client.get_or_none(kube.STREAMINGJOBS, NS, "kept") is None
            and not (operator.home / "jobs" / kept_id).exists()
        )

    await eventually(
        kept_gone, 30, "the cancelled job to expire once its savepoint is gone", on_fail=log()[-3000:]
    )
    await operator.stop()
