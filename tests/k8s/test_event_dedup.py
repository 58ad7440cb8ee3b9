"""``operator/events.py``: a repeated Event counts on the one already posted (count, lastTimestamp),
against the emulated API server over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from heliosdb_streaming.kubernetes import crds, kube
from heliosdb_streaming.kubernetes.operator import events
from heliosdb_streaming.testing import rbac
from heliosdb_streaming.testing.kube_emulator import Cluster, start_cluster

NS = "apps"


@pytest.fixture
async def emulated(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with start_cluster(tmp_path, {"nobody": rbac.UserInfo("nobody")}) as cluster:
        yield cluster


async def posted(client: kube.KubeClient) -> list[dict[str, Any]]:
    return sorted(await client.list(kube.EVENTS, NS), key=lambda e: (e["reason"], e["message"]))


async def test_a_repeat_within_the_window_counts_on_the_first_event(emulated: Cluster) -> None:
    now = [0.0]
    async with kube.KubeClient(emulated.connection()) as client:
        recorder = events.EventRecorder(client, window=600, clock=lambda: now[0])
        job = events.involved(NS, "spend", "uid-1", crds.STREAMING_JOB_KIND)
        other = events.involved(NS, "other", "uid-2", crds.STREAMING_JOB_KIND)
        for _ in range(3):
            await recorder.post(job, "Warning", "PodPending", "spend-worker-0: Unschedulable")
            now[0] += 60
        await recorder.post(job, "Warning", "PodPending", "spend-worker-1: Unschedulable")  # another message
        await recorder.post(other, "Warning", "PodPending", "spend-worker-0: Unschedulable")  # another object
        found = await posted(client)
        counts = sorted((e["involvedObject"]["name"], e["message"], e["count"]) for e in found)
        assert counts == [
            ("other", "spend-worker-0: Unschedulable", 1),
            ("spend", "spend-worker-0: Unschedulable", 3),
            ("spend", "spend-worker-1: Unschedulable", 1),
        ]
        (first,) = [e for e in found if e["count"] == 3]
        assert first["lastTimestamp"] >= first["firstTimestamp"]

        now[0] += 601  # past the window: a new series
        await recorder.post(job, "Warning", "PodPending", "spend-worker-0: Unschedulable")
        assert len(await posted(client)) == 4

        # the Event of a series expired (deleted by the API server's TTL): posted anew, not lost
        (latest,) = [
            e
            for e in await posted(client)
            if e["count"] == 1
            and e["metadata"]["name"] != first["metadata"]["name"]
            and e["involvedObject"]["name"] == "spend"
            and e["message"].startswith("spend-worker-0")
        ]
        await client.delete(kube.EVENTS, NS, latest["metadata"]["name"])
        await recorder.post(job, "Warning", "PodPending", "spend-worker-0: Unschedulable")
        assert len(await posted(client)) == 4


async def test_events_post_goes_through_one_recorder_per_client(emulated: Cluster) -> None:
    async with kube.KubeClient(emulated.connection()) as client:
        job = events.involved(NS, "spend", "uid-1", crds.STREAMING_JOB_KIND)
        for _ in range(5):
            await events.post(client, job, "Warning", "SavepointFailed", "no worker answered")
        (event,) = await posted(client)
        assert event["count"] == 5 and events.recorder(client) is events.recorder(client)
