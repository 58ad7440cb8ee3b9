"""The Events the operator posts on its resources (the domain's, beside kopf's own warnings).

One place for the reporting component and the involved-object reference, so the StreamingJob
reconciler, the Savepoint controller and the status writer post Events that look alike.

Expected waits (a spec change while the job is still starting, a savepoint of a job not running yet)
are kopf retries; kopf posts every retry's "failed temporarily" line as a Warning Event. ``waiting``
marks such an error and ``QUIET_WAITS`` keeps its lines in the log but out of the Events, so a wait is
not an Event per second.

The same Event again (same object, type, reason and message) within ``DEDUP_WINDOW_S`` is not a new
Event: the one already posted gets ``count`` + 1 and a new ``lastTimestamp``, as client-go's
EventCorrelator (and ``kubectl describe``'s "(x5 over 3m)") does. ``EventRecorder`` keeps what it
posted per client, in memory: an operator restart starts new series, which is what the kubelet does too.
"""

from __future__ import annotations

import collections
import logging
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf

from heliosdb_streaming.kubernetes import crds, kube
from heliosdb_streaming.kubernetes.operator.bindings import Binding

COMPONENT = "heliosdb-streaming-operator"
logger = logging.getLogger(__name__)


def involved(namespace: str, name: str, uid: str | None, kind: str) -> dict[str, Any]:
    """Enough of an object for an Event's involvedObject."""
    return {
        "apiVersion": crds.API_VERSION,
        "kind": kind,
        "metadata": {"namespace": namespace, "name": name, "uid": uid},
    }


SAVEPOINT_IN_USE_RETRY_S = 10.0  # a Savepoint a job still restores: its deletion is asked again then
DEDUP_WINDOW_S = 600.0  # client-go's EventCorrelator aggregates over 10 minutes
MAX_SERIES = 4096  # Events remembered per client: the oldest are forgotten first

EventKey = tuple[str, str, str, str, str, str]  # namespace, kind, name, type, reason, message


@dataclass(slots=True)
class _Series:
    name: str  # the Event object's name
    count: int
    at: float  # when it was last posted (``clock``)


class EventRecorder:
    """Posts Events, one per object, type, reason and message within ``window`` seconds: a repeat
    patches the existing Event's count and lastTimestamp instead of creating another."""

    def __init__(
        self,
        client: kube.KubeClient,
        window: float = DEDUP_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.window, self.clock = client, window, clock
        self._series: collections.OrderedDict[EventKey, _Series] = collections.OrderedDict()

    async def post(self, ref: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = ref.get("metadata") or {}
        namespace = str(meta.get("namespace") or self.client.default_namespace)
        key = (namespace, str(ref.get("kind")), str(meta.get("name")), type_, reason, message)
        now = self.clock()
        series = self._series.get(key)
        if series is not None and now - series.at <= self.window and await self._repeat(namespace, series):
            series.at = now
            self._series.move_to_end(key)
            return
        name = await self.client.post_event(
            ref, type_=type_, reason=reason, message=message, component=COMPONENT
        )
        self._series.pop(key, None)
        if name is not None:
            self._series[key] = _Series(name, 1, now)
            while len(self._series) > MAX_SERIES:
                self._series.popitem(last=False)

    async def _repeat(self, namespace: str, series: _Series) -> bool:
        """Counts one more occurrence on the Event; False when it is gone (expired): post a new one."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        patch = {"count": series.count + 1, "lastTimestamp": stamp}
        try:
            await self.client.patch(kube.EVENTS, namespace, series.name, patch)
        except kube.NotFoundError:
            return False
        except (kube.ApiError, aiohttp.ClientError, TimeoutError) as e:
            logger.warning("could not count event %s again: %s", series.name, e)
            return True  # advisory: not worth a duplicate
        series.count += 1
        return True


_RECORDERS: weakref.WeakKeyDictionary[kube.KubeClient, EventRecorder] = weakref.WeakKeyDictionary()


def recorder(client: kube.KubeClient) -> EventRecorder:
    """The client's recorder: every Event the operator posts through one client is deduplicated."""
    found = _RECORDERS.get(client)
    if found is None:
        found = _RECORDERS[client] = EventRecorder(client)
    return found


async def post(client: kube.KubeClient, ref: dict[str, Any], type_: str, reason: str, message: str) -> None:
    await recorder(client).post(ref, type_, reason, message)


async def job_event(client: kube.KubeClient, binding: Binding, type_: str, reason: str, message: str) -> None:
    """An Event on the StreamingJob a job is bound to."""
    ref = involved(binding.namespace, binding.name, binding.uid, crds.STREAMING_JOB_KIND)
    await post(client, ref, type_, reason, message)


WAITING = "; waiting"


async def savepoint_in_use(
    client: kube.KubeClient, body: Mapping[str, Any], message: str
) -> kopf.TemporaryError:
    """A Savepoint whose deletion waits for the jobs that restore it: one ``SavepointInUse`` Event
    (deduplicated, so a wait of hours is one Event with a count), and the quiet retry in 10 s."""
    meta = body.get("metadata") or {}
    ref = involved(str(meta.get("namespace")), str(meta.get("name")), meta.get("uid"), crds.SAVEPOINT_KIND)
    await post(client, ref, "Normal", "SavepointInUse", f"deletion waits: {message}")
    return waiting(message, SAVEPOINT_IN_USE_RETRY_S)


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
