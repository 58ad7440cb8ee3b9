"""The Events the operator posts on its resources (the domain's, beside kopf's own warnings).

One place for the reporting component and the involved-object reference, so the StreamingJob
reconciler, the Savepoint controller and the status writer post Events that look alike.
"""

from __future__ import annotations

from typing import Any

from heliosdb_streaming.kubernetes import crds, kube
from heliosdb_streaming.kubernetes.operator.bindings import Binding

COMPONENT = "heliosdb-streaming-operator"


def involved(namespace: str, name: str, uid: str | None, kind: str) -> dict[str, Any]:
    """Enough of an object for an Event's involvedObject."""
    return {
        "apiVersion": crds.API_VERSION,
        "kind": kind,
        "metadata": {"namespace": namespace, "name": name, "uid": uid},
    }


async def post(client: kube.KubeClient, ref: dict[str, Any], type_: str, reason: str, message: str) -> None:
    await client.post_event(ref, type_=type_, reason=reason, message=message, component=COMPONENT)


async def job_event(client: kube.KubeClient, binding: Binding, type_: str, reason: str, message: str) -> None:
    """An Event on the StreamingJob a job is bound to."""
    ref = involved(binding.namespace, binding.name, binding.uid, crds.STREAMING_JOB_KIND)
    await post(client, ref, type_, reason, message)
