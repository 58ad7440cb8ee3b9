"""``operator.leader.LeaderElector`` against the emulated API server over HTTP, with clocks of its own.

What the two-operator test cannot show by timing: an unexpired Lease is never taken; two standbys
racing for an expired one cannot both win (the resourceVersion precondition: 409 for the second);
a release hands over at once; a leader that cannot renew gives up after its renew deadline.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import kopf
import pytest

from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.kubernetes.operator.leader import LeaderElector, LeaseSettings
from heliosdb_streaming.testing.kube_emulator import start_cluster

SETTINGS = LeaseSettings("default", "ops", lease_duration_s=10, renew_deadline_s=6, retry_period_s=1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_only_one_elector_leads_and_an_expired_lease_goes_to_one_standby(tmp_path: Path) -> None:
    async with start_cluster(tmp_path) as cluster, kube.KubeClient(cluster.connection()) as client:
        clocks = [Clock(), Clock(), Clock()]
        leader, a, b = (LeaderElector(client, SETTINGS, f"r{i}", clock=c) for i, c in enumerate(clocks))
        assert await leader.try_acquire_or_renew()
        assert not await a.try_acquire_or_renew() and not await b.try_acquire_or_renew()
        lease = await client.get(kube.LEASES, "default", "ops")
        assert lease["spec"]["holderIdentity"] == "r0" and lease["spec"]["leaseDurationSeconds"] == 10
        for c in clocks[1:]:
            c.now += 9.9  # not yet expired for them
        assert not await a.try_acquire_or_renew() and not await b.try_acquire_or_renew()
        for c in clocks[1:]:
            c.now += 0.2  # the leader is silent for longer than the lease duration
        # both read the same version; the second write carries it too and is refused (409)
        stale = await client.get(kube.LEASES, "default", "ops")
        assert await a.try_acquire_or_renew()
        version = stale["metadata"]["resourceVersion"]
        with pytest.raises(kube.ConflictError):
            stale_write = {"metadata": {"resourceVersion": version}, "spec": {"holderIdentity": "r2"}}
            await client.patch(kube.LEASES, "default", "ops", stale_write)
        assert not await b.try_acquire_or_renew()  # it sees a's fresh renewal: not expired for it
        lease = await client.get(kube.LEASES, "default", "ops")
        assert lease["spec"]["holderIdentity"] == "r1" and lease["spec"]["leaseTransitions"] == 1
        assert a.transitions == 1
        # the old leader finds it lost the Lease when it tries to renew
        assert not await leader.try_acquire_or_renew() and not leader.leading


async def test_release_hands_over_at_once(tmp_path: Path) -> None:
    async with start_cluster(tmp_path) as cluster, kube.KubeClient(cluster.connection()) as client:
        first, second = LeaderElector(client, SETTINGS, "one"), LeaderElector(client, SETTINGS, "two")
        changes: list[bool] = []
        first.on_change = changes.append
        assert await first.try_acquire_or_renew()
        assert not await second.try_acquire_or_renew()
        await first.release()
        assert changes == [True, False]
        assert await second.try_acquire_or_renew()  # no lease duration to wait for


async def test_a_leader_that_cannot_renew_gives_up_after_the_deadline(tmp_path: Path) -> None:
    settings = LeaseSettings("default", "ops", lease_duration_s=1.5, renew_deadline_s=1.0, retry_period_s=0.2)
    async with start_cluster(tmp_path) as cluster:
        client = kube.KubeClient(cluster.connection())
        elector = LeaderElector(client, settings, "alone")
        assert await elector.try_acquire_or_renew()
        await client.close()  # every renewal fails from now on, as with an unreachable API server
        client2 = kube.KubeClient(kopf.ConnectionInfo(server="http://127.0.0.1:9"))  # nothing listens
        elector.client = client2
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.wait_for(elector.hold(), 30)
            assert not elector.leading
            assert loop.time() - started >= settings.renew_deadline_s
        finally:
            await client2.close()
