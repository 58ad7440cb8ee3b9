"""``kubernetes/kube.py`` (over kubernetes_asyncio) against the emulated API server, over real HTTP.

The calls the operator and the REST backend make: objects stay plain dicts, errors keep their status,
a watch streams changes, a pod log comes back as the text the kubelet served.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.testing import rbac
from heliosdb_streaming.testing.kube_emulator import Cluster, start_cluster

NS = "apps"


def pod(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    }


@pytest.fixture
async def emulated(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with start_cluster(tmp_path, {"nobody": rbac.UserInfo("nobody")}) as cluster:
        yield cluster


async def test_calls_answer_plain_dicts_and_typed_errors(emulated: Cluster) -> None:
    async with kube.KubeClient(emulated.connection()) as client:
        created = await client.create(kube.PODS, NS, pod("p-0", app="a"))
        assert created["metadata"]["uid"] and created["metadata"]["namespace"] == NS
        await client.create(kube.PODS, NS, pod("p-1", app="b"))
        with pytest.raises(kube.ConflictError):
            await client.create(kube.PODS, NS, pod("p-0", app="a"))

        assert [p["metadata"]["name"] for p in await client.list(kube.PODS, NS, {"app": "a"})] == ["p-0"]
        assert len(await client.list(kube.PODS, None)) == 2

        status = {"status": {"phase": "Running"}}
        assert (await client.patch(kube.PODS, NS, "p-0", status, subresource="status"))["status"] == {
            "phase": "Running"
        }
        merged = await client.patch(kube.PODS, NS, "p-0", {"metadata": {"labels": {"app": None, "x": "1"}}})
        assert merged["metadata"]["labels"] == {"x": "1"}  # a merge patch: None removes the key

        assert await client.get_or_none(kube.PODS, NS, "missing") is None
        with pytest.raises(kube.NotFoundError) as missing:
            await client.get(kube.PODS, NS, "missing")
        assert missing.value.status == 404 and missing.value.message

        uid = created["metadata"]["uid"]
        assert await client.delete(kube.PODS, NS, "p-0", grace_period_s=0, uid=uid)
        assert await client.get_or_none(kube.PODS, NS, "p-0") is None
        assert not await client.delete(kube.PODS, NS, "p-0")  # already gone


async def test_watch_streams_changes_of_the_selected_objects(emulated: Cluster) -> None:
    async with kube.KubeClient(emulated.connection()) as client:
        await client.create(kube.PODS, NS, pod("w-0", app="w"))
        await client.create(kube.PODS, NS, pod("other", app="x"))
        seen: list[tuple[str, str]] = []
        changed = asyncio.Event()

        async def watch() -> None:
            async for kind, obj in client.watch(kube.PODS, NS, {"app": "w"}, timeout_s=30):
                seen.append((kind, obj["metadata"]["name"]))
                changed.set()

        task = asyncio.create_task(watch())
        try:
            await asyncio.wait_for(changed.wait(), 10)
            assert seen == [("ADDED", "w-0")]  # the other pod's label does not match
            changed.clear()
            await client.patch(kube.PODS, NS, "w-0", {"metadata": {"annotations": {"k": "v"}}})
            await client.delete(kube.PODS, NS, "w-0")
            async with asyncio.timeout(10):
                while len(seen) < 3:
                    await changed.wait()
                    changed.clear()
            assert seen == [("ADDED", "w-0"), ("MODIFIED", "w-0"), ("DELETED", "w-0")]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_error_answers_keep_their_status(emulated: Cluster) -> None:
    async with kube.KubeClient(emulated.connection("nobody")) as client:
        with pytest.raises(kube.ApiError) as listed:
            await client.list(kube.PODS, NS)
        assert listed.value.status == 403 and listed.value.reason == "Forbidden"
        with pytest.raises(kube.ApiError) as watched:
            async for _ in client.watch(kube.PODS, NS, timeout_s=5):
                pass
        assert watched.value.status == 403 and watched.value.reason == "Forbidden"


async def test_pod_log_is_the_text_served(emulated: Cluster) -> None:
    logs = {"l-0": '{"level": "INFO", "message": "one"}\n{"level": "INFO", "message": "two"}\n'}
    emulated.emulator.pod_logs = lambda namespace, name: logs.get(name)
    async with kube.KubeClient(emulated.connection()) as client:
        await client.create(kube.PODS, NS, pod("l-0"))
        await client.create(kube.PODS, NS, pod("l-1"))
        assert await client.pod_log(NS, "l-0") == logs["l-0"]  # JSON lines stay text
        assert await client.pod_log(NS, "l-0", tail_lines=1) == '{"level": "INFO", "message": "two"}\n'
        with pytest.raises(kube.ApiError) as waiting:
            await client.pod_log(NS, "l-1")  # its container has not started
        assert waiting.value.status == 400
        with pytest.raises(kube.NotFoundError):
            await client.pod_log(NS, "missing")


async def test_an_event_never_carries_a_password(emulated: Cluster) -> None:
    """Events are readable by anyone who may list them in the namespace: the message is masked by the
    one masking function, every form of password (URL user info with '/', '@', '%'; a DSN's
    password=...)."""
    async with kube.KubeClient(emulated.connection()) as client:
        job = await client.create(kube.PODS, NS, pod("evented"))
        message = (
            "cannot write to postgresql://bob:pa/ss@w%40rd@db/x (dsn host=db password='s3cr/et' user=bob)"
        )
        await client.post_event(job, type_="Warning", reason="Failed", message=message, component="test")
        [event] = await client.list(kube.EVENTS, NS)
    assert event["message"] == "cannot write to postgresql://bob:***@db/x (dsn host=db password=*** user=bob)"
    assert event["involvedObject"]["name"] == "evented" and event["reason"] == "Failed"
