"""Leader election over a ``coordination.k8s.io/v1`` Lease, as client-go's ``leaderelection``.

The job control plane runs inside the operator process, so two operators must never run it at once:
both would relaunch every job's worker pods and write its checkpoints. kopf's peering only pauses
kopf's handlers, not the control plane, hence a Lease that gates the whole operator: a replica runs
nothing but its health and metrics endpoint until it holds the Lease.

* Acquire: create the Lease, or take it over when its holder has not renewed it for
  ``lease_duration_s`` as observed on *this* replica's monotonic clock (the time the Lease's
  ``resourceVersion`` last changed here, so clock skew between nodes does not matter), or when it
  is released (no holder).
* Every write carries the ``resourceVersion`` read before it (optimistic concurrency: a concurrent
  writer gets 409 Conflict), so two standbys cannot both take one expired Lease.
* Renew every ``retry_period_s``; a holder that could not renew for ``renew_deadline_s`` (less than
  the lease duration) has lost it and must stop at once: ``hold`` returns.
* ``release`` clears the holder on a clean shutdown so the standby takes over at its next try,
  not after a whole lease duration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from heliosdb_streaming.kubernetes import kube

logger = logging.getLogger(__name__)

DEFAULT_LEASE_NAME = "heliosdb-streaming-operator"
DEFAULT_LEASE_DURATION_S = 15.0
DEFAULT_RENEW_DEADLINE_S = 10.0
DEFAULT_RETRY_PERIOD_S = 2.0


def default_identity() -> str:
    """The pod name (``HOSTNAME`` in a pod) plus a random suffix: a restarted container is a new
    holder, so it never mistakes its previous incarnation's Lease for its own."""
    host = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{host}_{uuid.uuid4().hex[:8]}"


def _micro_time(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # the MicroTime format of Lease times


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    namespace: str
    name: str = DEFAULT_LEASE_NAME
    lease_duration_s: float = DEFAULT_LEASE_DURATION_S
    renew_deadline_s: float = DEFAULT_RENEW_DEADLINE_S
    retry_period_s: float = DEFAULT_RETRY_PERIOD_S

    def __post_init__(self) -> None:
        if not 0 < self.retry_period_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError("leader election needs retry period < renew deadline < lease duration")


class LeaderElector:
    """Acquires, renews and releases one Lease for ``identity``."""

    def __init__(
        self,
        client: kube.KubeClient,
        settings: LeaseSettings,
        identity: str | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.identity = identity or default_identity()
        self.clock = clock
        self.on_change = on_change  # called with True when this replica leads, False when it stops
        self.leading = False
        self.transitions = 0  # takeovers this replica made
        self._observed_version: str | None = None
        self._observed_at = 0.0

    def _spec(self, current: dict[str, Any], *, acquiring: bool) -> dict[str, Any]:
        now = _micro_time(datetime.now(UTC))
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.settings.lease_duration_s)),
            "renewTime": now,
        }
        if acquiring:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0) + (1 if current else 0)
        return spec

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this replica holds the Lease afterwards."""
        s = self.settings
        try:
            lease = await self.client.get_or_none(kube.LEASES, s.namespace, s.name)
            if lease is None:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": s.name, "namespace": s.namespace},
                    "spec": self._spec({}, acquiring=True),
                }
                created = await self.client.create(kube.LEASES, s.namespace, body)
                self._observe(created, force=True)
                return self._set_leading(True)
            spec = dict(lease.get("spec") or {})
            self._observe(lease)
            holder = spec.get("holderIdentity") or ""
            mine = holder == self.identity
            expired = self.clock() - self._observed_at >= s.lease_duration_s
            if not mine and holder and not expired:
                return self._set_leading(False)
            version = str((lease.get("metadata") or {}).get("resourceVersion") or "")
            patch = {"metadata": {"resourceVersion": version}, "spec": self._spec(spec, acquiring=not mine)}
            updated = await self.client.patch(kube.LEASES, s.namespace, s.name, patch)
            self._observe(updated, force=True)
            if not mine:
                self.transitions += 1
                logger.info("took over Lease %s/%s from %r", s.namespace, s.name, holder or None)
            return self._set_leading(True)
        except kube.ConflictError:
            return self._set_leading(False)  # another replica wrote it first: read it again next time
        except (kube.ApiError, OSError, TimeoutError) as e:
            logger.warning("Lease %s/%s: %s", s.namespace, s.name, e)
            return False  # unknown: a leader keeps leading until its renew deadline

    def _observe(self, lease: dict[str, Any], *, force: bool = False) -> None:
        version = str((lease.get("metadata") or {}).get("resourceVersion") or "")
        if force or version != self._observed_version:
            self._observed_version, self._observed_at = version, self.clock()

    def _set_leading(self, leading: bool) -> bool:
        if leading != self.leading:
            self.leading = leading
            if self.on_change is not None:
                self.on_change(leading)
        return leading

    async def acquire(self) -> None:
        """Returns once this replica holds the Lease (tries every retry period)."""
        logger.info(
            "standby: waiting for Lease %s/%s as %s",
            self.settings.namespace,
            self.settings.name,
            self.identity,
        )
        while True:
            if await self.try_acquire_or_renew():
                break
            await asyncio.sleep(self.settings.retry_period_s)
        logger.info(
            "leading: holding Lease %s/%s as %s", self.settings.namespace, self.settings.name, self.identity
        )

    async def hold(self) -> None:
        """Renews the Lease until it cannot for the renew deadline (or another replica took it):
        returns then, and the caller must stop leading at once."""
        last_renew = self.clock()
        while True:
            await asyncio.sleep(self.settings.retry_period_s)
            if await self.try_acquire_or_renew():
                last_renew = self.clock()
                continue
            if not self.leading or self.clock() - last_renew >= self.settings.renew_deadline_s:
                self._set_leading(False)
                logger.error("lost Lease %s/%s", self.settings.namespace, self.settings.name)
                return

    async def release(self) -> None:
        """Clears the holder (only if still this replica), so a standby takes over at once."""
        if not self.leading:
            return
        s = self.settings
        try:
            lease = await self.client.get_or_none(kube.LEASES, s.namespace, s.name)
            spec = (lease or {}).get("spec") or {}
            if lease is None or spec.get("holderIdentity") != self.identity:
                return
            version = str((lease.get("metadata") or {}).get("resourceVersion") or "")
            patch = {"metadata": {"resourceVersion": version}, "spec": {"holderIdentity": None}}
            await self.client.patch(kube.LEASES, s.namespace, s.name, patch)
            logger.info("released Lease %s/%s", s.namespace, s.name)
        except (kube.ApiError, OSError, TimeoutError) as e:
            logger.warning("could not release Lease %s/%s: %s", s.namespace, s.name, e)
        finally:
            self._set_leading(False)
