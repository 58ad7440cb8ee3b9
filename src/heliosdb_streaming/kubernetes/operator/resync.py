"""The periodic resync: recreates what a StreamingJob owns when someone deleted it.

kopf calls the reconciler on changes of the StreamingJob only; a deleted worker Service (the workers
find each other through it), job Secret (new worker pods mount it: without it they never start) or
PodDisruptionBudget goes unnoticed until the next spec change. Every ``RESYNC_INTERVAL_S`` (a kopf
timer per StreamingJob, ``handlers``) this creates each one again if it is missing, as the Flink
operator's periodic reconcile does, and says so in an Event.

Existence is tested by ``create`` (409: it is there), not by a read: the operator's RBAC grants no
``get`` on Secrets (it writes them, never reads them), and a create per object and interval is as
cheap as a get. Worker pods are not this module's: the control plane restarts them.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Final

from heliosdb_streaming.kubernetes import crds, kube
from heliosdb_streaming.kubernetes.operator import events, pods
from heliosdb_streaming.kubernetes.operator.bindings import Bindings
from heliosdb_streaming.kubernetes.operator.launcher import KubernetesLauncher

logger = logging.getLogger(__name__)

RESYNC_ENV: Final = "HELIOS_RESYNC_INTERVAL_S"
RESYNC_INTERVAL_S: Final = 60.0


def resync_interval() -> float:
    """Seconds between two resyncs of a StreamingJob (``HELIOS_RESYNC_INTERVAL_S``, default 60)."""
    value = float(os.environ.get(RESYNC_ENV) or RESYNC_INTERVAL_S)
    return value if value > 0 else RESYNC_INTERVAL_S


class OwnedObjects:
    """Recreates the missing objects of the jobs this operator has bound."""

    def __init__(self, client: kube.KubeClient, bindings: Bindings, launcher: KubernetesLauncher) -> None:
        self.client, self.bindings, self.launcher = client, bindings, launcher

    async def resync(self, namespace: str, name: str) -> list[str]:
        """The kinds recreated for the StreamingJob ``namespace/name`` (empty: all were there)."""
        binding = self.bindings.for_object(namespace, name)
        if binding is None:
            return []
        target = binding.target
        wanted: list[tuple[str, kube.Resource, dict[str, Any]]] = [
            ("Service", kube.SERVICES, pods.workers_service(target))
        ]
        job_json = self.launcher.job_file(namespace, name)
        if job_json is not None:  # pods have been launched: their Secret must stay
            secret = pods.job_secret(target, job_json, pods.credentials(self.launcher.settings))
            wanted.append(("Secret", kube.SECRETS, secret))
        if binding.disruption_budget is not None:
            budget = pods.disruption_budget(target, binding.disruption_budget)
            wanted.append(("PodDisruptionBudget", kube.PODDISRUPTIONBUDGETS, budget))
        recreated = []
        for kind, resource, manifest in wanted:
            try:
                await self.client.create(resource, namespace, manifest)
            except kube.ConflictError:
                continue
            recreated.append(kind)
            logger.warning("%s/%s: recreated its %s %s", namespace, name, kind, manifest["metadata"]["name"])
        if recreated:
            ref = events.involved(namespace, name, binding.uid, crds.STREAMING_JOB_KIND)
            message = f"recreated what was deleted: {', '.join(recreated)}"
            await events.post(self.client, ref, "Warning", "OwnedObjectsRecreated", message)
        return recreated
