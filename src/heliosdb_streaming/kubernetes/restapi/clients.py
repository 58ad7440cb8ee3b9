"""The REST backend's two clients for one namespace, and the lookups its reads and commands share.

Both halves of ``KubernetesJobService`` (its reads in ``apiserver``, its commands in ``commands``) ask
the same questions: which StreamingJob is job ``X`` (a job id -> name cache, verified on every use),
which Savepoint resource holds savepoint ``Y``, what the operator's parallelism limit is. They live
here, beside the Kubernetes API client and the operator's read-API client they go through, which
``start()`` opens and ``close()`` closes together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.kubernetes.restapi import jobviews
from heliosdb_streaming.kubernetes.restapi.readclient import OperatorClient, OperatorUnavailableError
from heliosdb_streaming.model.errors import JobNotFoundError, SavepointNotFoundError

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

LIMITS_TTL_S = 60.0  # how long the operator's max parallelism is trusted before asking again


def name_of(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"]["name"])


class NamespaceClients:
    """The Kubernetes API and the operator's read API, as one namespace's REST backend uses them."""

    def __init__(
        self, connection: kopf.ConnectionInfo, namespace: str, operator_url: str, api_token: str | None
    ) -> None:
        self.connection = connection
        self.namespace = namespace
        self.operator_url = operator_url
        self.api_token = api_token
        self._kube: kube.KubeClient | None = None
        self._operator: OperatorClient | None = None
        self._names: dict[str, str] = {}  # job id -> StreamingJob name, verified on every use
        self._max_parallelism: tuple[float, int] | None = None  # (when asked, the operator's answer)

    async def start(self) -> None:
        if self._kube is None:
            self._kube = kube.KubeClient(self.connection)
        if self._operator is None:
            self._operator = OperatorClient(self.operator_url, self.namespace, self.api_token)

    async def close(self) -> None:
        if self._kube is not None:
            await self._kube.close()
            self._kube = None
        if self._operator is not None:
            await self._operator.close()
            self._operator = None

    @property
    def kube(self) -> kube.KubeClient:
        if self._kube is None:
            raise RuntimeError("KubernetesJobService is not started: await start()")
        return self._kube

    @property
    def operator(self) -> OperatorClient:
        if self._operator is None:
            raise RuntimeError("KubernetesJobService is not started: await start()")
        return self._operator

    # ------------------------------------------------------------------------------ StreamingJobs

    async def find(self, job_id: str) -> Obj:
        """The StreamingJob of ``job_id``; ``JobNotFoundError`` when there is none in the namespace."""
        name = self._names.get(job_id)
        if name is not None:
            obj = await self.kube.get_or_none(kube.STREAMINGJOBS, self.namespace, name)
            if obj is not None and jobviews.is_job(obj, job_id):
                return obj
            self._names.pop(job_id, None)
        for obj in await self.list_jobs():
            if jobviews.is_job(obj, job_id):
                return obj
        raise JobNotFoundError(job_id)

    async def list_jobs(self) -> list[Obj]:
        objs = await self.kube.list(kube.STREAMINGJOBS, self.namespace)
        for obj in objs:
            self._names[jobviews.job_id_of(obj)] = name_of(obj)
        return objs

    def remember(self, job_id: str, name: str) -> None:
        """``job_id`` is the StreamingJob ``name`` (just created)."""
        self._names[job_id] = name

    async def max_parallelism(self) -> int | None:
        """The operator's ``--max-parallelism`` (asked at most every ``LIMITS_TTL_S``); the last known
        value, or None, while its read API does not answer (the operator still enforces it)."""
        now = asyncio.get_running_loop().time()
        known = self._max_parallelism
        if known is not None and now - known[0] < LIMITS_TTL_S:
            return known[1]
        try:
            info = await self.operator.info()
        except OperatorUnavailableError as e:
            logger.warning("cannot check parallelism against the operator's limit: %s", e.message)
            return known[1] if known is not None else None
        self._max_parallelism = (now, info.max_parallelism)
        return info.max_parallelism

    # ------------------------------------------------------------------------------ Savepoints, Events

    async def savepoint_resource(self, obj: Obj, job_id: str, savepoint_id: str) -> Obj | None:
        """The completed Savepoint resource of this job with this savepoint id, if any."""
        for sp in await self.kube.list(kube.SAVEPOINTS, self.namespace):
            status = sp.get("status") or {}
            mine = status.get("jobId") == job_id or (sp.get("spec") or {}).get("jobRef") == name_of(obj)
            if mine and status.get("savepointId") == savepoint_id and status.get("state") == "completed":
                return sp
        return None

    async def savepoint_name_at(self, location: str) -> str | None:
        """The completed Savepoint resource of this namespace whose files are at ``location``."""
        for sp in await self.kube.list(kube.SAVEPOINTS, self.namespace):
            status = sp.get("status") or {}
            if status.get("state") == "completed" and status.get("location") == location.strip():
                return name_of(sp)
        return None

    async def savepoint_ref(self, job_id: str, savepoint_id: str) -> str:
        """What ``restoreFrom`` names a savepoint by: its Savepoint resource, else its location."""
        obj = await self.find(job_id)
        resource = await self.savepoint_resource(obj, job_id, savepoint_id)
        if resource is not None:
            return name_of(resource)
        info = await self.operator.savepoint(job_id, savepoint_id)
        if info is None:
            raise SavepointNotFoundError(job_id, savepoint_id)
        return info.location

    async def last_event(self, name: str, reason: str) -> str | None:
        """The message of the newest ``reason`` Event on ``name`` (the why of a failure), if readable."""
        try:
            items = await self.kube.list(kube.EVENTS, self.namespace)
        except kube.ApiError as e:
            logger.warning("cannot read the events of %s: %s", name, e)
            return None
        events = [
            e
            for e in items
            if (e.get("involvedObject") or {}).get("name") == name and e.get("reason") == reason
        ]
        events.sort(key=lambda e: str(e.get("lastTimestamp") or ""))
        return str(events[-1].get("message") or "") or None if events else None
