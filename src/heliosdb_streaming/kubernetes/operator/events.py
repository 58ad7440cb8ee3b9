"""The Events the operator posts on its resources (the domain's, beside kopf's own warnings).

One place for the reporting component and the involved-object reference, so the StreamingJob
reconciler, the Savepoint controller and the status writer post Events that look alike.

Expected waits (a spec change while the job is still starting, a savepoint of a job not running yet)
are kopf retries; kopf posts every retry's "failed temporarily" line as a Warning Event. ``waiting``
marks such an error and ``QUIET_WAITS`` keeps its lines in the log but out of the Events, so a wait is
not an Event per second.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

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


WAITING = "; waiting"


def waiting(why: str, delay: float) -> kopf.TemporaryError:
    """The error of an expected wait, retried by kopf after ``delay`` without an Event per retry."""
    return kopf.TemporaryError(f"{why}{WAITING}", delay=delay)


class QuietWaits(logging.Filter):
    """Marks kopf's retry lines of ``waiting`` errors with kopf's own ``k8s_skip``: logged, not posted."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "failed temporarily" in text and WAITING in text:
            record.k8s_skip = True
        return True


QUIET_WAITS = QuietWaits()  # one instance: ``addFilter`` of it again is a no-op
