"""The operator's side of per-job job managers: create what each job owns, forward what its spec asks.

For each StreamingJob the operator keeps a ``<job>-jobmanager`` Secret (the API token, the storage
credentials), Service and pod (``jmpods``), recreating them on every reconcile and resync when missing
(a deleted pod) or ended; everything else the job needs happens in the job manager, to which the
reconcile, the finalizer and the Savepoint handlers post the resource (``jobmanager.api``). Its answers
become kopf's: 503 a ``TemporaryError`` after its ``retry_after``, 422 a ``PermanentError``. A job
manager that cannot be reached yet (starting, being replaced) is a wait, retried soon.

The operator calls the job manager at its Service (``http://<job>-jobmanager.<ns>.svc:8081``); with
``url_from_status`` (tests, where there is no cluster DNS) at the address the job manager advertised in
``status.jobManager.url``, which anyone who may write the status could change: never in a cluster.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf

from heliosdb_streaming.api.app import API
from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.kubernetes.operator import events, jmpods, mapping
from heliosdb_streaming.kubernetes.operator.jmpods import JobManagerSettings
from heliosdb_streaming.kubernetes.operator.pods import Target
from heliosdb_streaming.kubernetes.operator.readapi import INTERNAL
from heliosdb_streaming.model.errors import SavepointInUseError
from heliosdb_streaming.runtime.checkpoint.storage import storage_from_uri
from heliosdb_streaming.runtime.checkpoint.tasks import locate_snapshot

logger = logging.getLogger(__name__)

UNREACHABLE_RETRY_S = 1.0
STORAGE_RETRY_S = 10.0  # the files of an orphan Savepoint could not be deleted: asked again then
REQUEST_TIMEOUT_S = 120.0  # a savepoint on cancel is part of the call
OWNED_SAVEPOINTS_WAIT_S = 60.0  # how long a deletion waits for the Savepoints the job owns to go
ENDED = ("Succeeded", "Failed")


def target_of(body: Mapping[str, Any]) -> Target:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    return Target(
        str(meta["namespace"]),
        str(meta["name"]),
        str(meta.get("uid") or ""),
        spec.get("image") or None,
        {},
        dict(spec.get("podTemplate") or {}),
    )


class JobManagers:
    def __init__(
        self,
        client: kube.KubeClient,
        settings: JobManagerSettings,
        credentials: Mapping[str, str],
        key: bytes,
        *,
        url_from_status: bool = False,
        namespaces: tuple[str, ...] = (),
    ) -> None:
        """``credentials``: the storage credentials every job manager (and so its workers) gets;
        ``key``: what the job managers' tokens are derived from (the same on every operator replica)."""
        self.client = client
        self.settings = settings
        self.credentials = dict(credentials)
        self.url_from_status = url_from_status
        self.namespaces = namespaces  # what the operator watches (empty: every namespace)
        self.key = key
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The HTTP session every call to a job manager shares."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------------------ resources

    async def ensure(self, body: Mapping[str, Any]) -> None:
        """The job's Secret, Service and pod exist; an ended pod (a job manager that exited) or one of
        another StreamingJob of the same name (an earlier uid) is replaced. Creates only (a conflict is
        what exists): the operator reads no Secret and needs no ``get`` on them."""
        target = target_of(body)
        name = jmpods.name_of(target.name)
        with contextlib.suppress(kube.ConflictError):
            manifest = jmpods.secret(target, self.token(target), self.credentials)
            await self.client.create(kube.SECRETS, target.namespace, manifest)
        with contextlib.suppress(kube.ConflictError):
            await self.client.create(kube.SERVICES, target.namespace, jmpods.service(target))
        current = await self.client.get_or_none(kube.PODS, target.namespace, name)
        if current is not None:
            meta = current.get("metadata") or {}
            stale = bool(target.uid) and all(
                o.get("uid") != target.uid for o in meta.get("ownerReferences") or []
            )
            ended = (current.get("status") or {}).get("phase") in ENDED
            if not (stale or ended) or meta.get("deletionTimestamp"):
                return
            why = "is of an earlier StreamingJob" if stale else "ended"
            logger.warning("%s/%s: job manager pod %s; replacing it", target.namespace, target.name, why)
            await self.client.delete(kube.PODS, target.namespace, name, grace_period_s=0)
            return  # created on the next pass, once the old one is gone
        manifest = jmpods.pod(target, self.settings, tuple(sorted(self.credentials)))
        with contextlib.suppress(kube.ConflictError):
            await self.client.create(kube.PODS, target.namespace, manifest)
            logger.info("%s/%s: job manager pod created", target.namespace, target.name)

    def token(self, target: Target) -> str:
        """The bearer token of a job manager's API: derived from the operator's key and the resource's
        uid, so that any operator replica (a restarted one, a standby) knows it without reading it."""
        message = f"{target.namespace}/{target.name}/{target.uid}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    # ------------------------------------------------------------------------------ forwarding

    async def url_of(self, namespace: str, name: str) -> str | None:
        """Where the job manager of ``name`` answers (None: it has not said yet)."""
        if not self.url_from_status:
            return f"http://{jmpods.name_of(name)}.{namespace}.svc:{jmpods.API_PORT}"
        obj = await self.client.get_or_none(kube.STREAMINGJOBS, namespace, name)
        advertised = ((obj or {}).get("status") or {}).get("jobManager") or {}
        return str(advertised.get("url") or "") or None

    async def call(
        self,
        namespace: str,
        job: str,
        route: str,
        body: Mapping[str, Any],
        query: Mapping[str, str] | None = None,
    ) -> None:
        """Posts ``body`` to the job manager of ``job``; its answer as kopf's outcome."""
        url = await self.url_of(namespace, job)
        obj = await self.client.get_or_none(kube.STREAMINGJOBS, namespace, job)
        if obj is None:
            raise events.waiting(f"StreamingJob {job} not found", UNREACHABLE_RETRY_S)
        token = self.token(target_of(obj))
        if url is None:
            raise events.waiting(f"job manager of {job} is starting", UNREACHABLE_RETRY_S)
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with self.session().post(
                f"{url}{INTERNAL}/{route}", json=dict(body), params=dict(query or {}), headers=headers
            ) as response:
                answer: dict[str, Any] = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
            raise events.waiting(
                f"job manager of {job} is not reachable ({e})", UNREACHABLE_RETRY_S
            ) from None
        message = str((answer or {}).get("message") or (answer or {}).get("error") or answer)
        if status == 200:
            return
        if status == 503:
            raise kopf.TemporaryError(message, delay=float(answer.get("retry_after") or UNREACHABLE_RETRY_S))
        if status == 422:
            raise kopf.PermanentError(message)
        raise events.waiting(f"job manager of {job} answered {status}: {message}", UNREACHABLE_RETRY_S)

    async def progress(self, obj: Mapping[str, Any]) -> tuple[int, int | None] | None:
        """The completed checkpoints and source lag (None: not measured) of the StreamingJob ``obj``'s
        job, from its job manager's REST metrics; None while it cannot tell (no job yet, unreachable)."""
        meta, observed = obj.get("metadata") or {}, obj.get("status") or {}
        job_id = str(observed.get("jobId") or "")
        url = await self.url_of(str(meta["namespace"]), str(meta["name"])) if job_id else None
        if url is None:
            return None
        headers = {"Authorization": f"Bearer {self.token(target_of(obj))}"}
        try:
            async with self.session().get(f"{url}{API}/jobs/{job_id}/metrics", headers=headers) as response:
                if response.status != 200:
                    return None
                answer = await response.json(content_type=None)
            metrics = answer["metrics"]
            lag = metrics["source"]["lag_records"]
            return int(metrics["checkpoint"]["count"]), None if lag is None else int(lag)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError, TypeError):
            return None

    async def reconcile_job(self, body: Mapping[str, Any]) -> None:
        await self.ensure(body)
        meta = body.get("metadata") or {}
        await self.call(str(meta["namespace"]), str(meta["name"]), "reconcile", body)

    async def finalize_job(self, body: Mapping[str, Any]) -> None:
        """The StreamingJob is being deleted: its job manager stops (and purges) the job, then goes.

        The Savepoints the StreamingJob owns (periodic, upgrade, autoscaler) are deleted first, while
        the job manager still holds the job: their finalizers forward to it and it deletes their files
        (and purges the job once it holds no savepoint). Left to the garbage collector they would go
        after the job manager, and their files with the job's checkpoints would stay in storage."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta["namespace"]), str(meta["name"])
        pod = await self.client.get_or_none(kube.PODS, namespace, jmpods.name_of(name))
        if pod is not None and (pod.get("status") or {}).get("phase") == "Running":
            await self.call(namespace, name, "finalize", body)  # one never running has no job to stop
            await self._delete_owned_savepoints(namespace, str(meta.get("uid") or ""), meta)
        await self.client.delete(kube.PODS, namespace, jmpods.name_of(name), grace_period_s=0)

    async def _delete_owned_savepoints(self, namespace: str, uid: str, meta: Mapping[str, Any]) -> None:
        """Deletes the Savepoints owned by the StreamingJob ``uid``; a wait while any is still there
        (its finalizer runs in the job manager), for at most ``OWNED_SAVEPOINTS_WAIT_S`` after the
        deletion began (one a run of another job still restores is then left to the collector)."""
        owned = [
            s
            for s in await self.client.list(kube.SAVEPOINTS, namespace)
            if uid and uid in {o.get("uid") for o in s["metadata"].get("ownerReferences") or []}
        ]
        if not owned:
            return
        for item in owned:
            if not item["metadata"].get("deletionTimestamp"):
                await self.client.delete(kube.SAVEPOINTS, namespace, str(item["metadata"]["name"]))
        since = str(meta.get("deletionTimestamp") or "").replace("Z", "+00:00")
        try:
            waited = (datetime.now(UTC) - datetime.fromisoformat(since)).total_seconds()
        except ValueError:
            waited = 0.0
        if waited < OWNED_SAVEPOINTS_WAIT_S:
            raise events.waiting(f"{len(owned)} owned Savepoint(s) being deleted", UNREACHABLE_RETRY_S)
        logger.warning("%s: %d owned Savepoint(s) still there; the job manager goes", namespace, len(owned))

    async def take_savepoint(self, body: Mapping[str, Any], retry: int) -> None:
        meta, spec = body.get("metadata") or {}, body.get("spec") or {}
        job = str(spec.get("jobRef") or "")
        await self.call(str(meta["namespace"]), job, "savepoints", body, {"retry": str(retry)})

    async def delete_savepoint(self, body: Mapping[str, Any]) -> None:
        """The Savepoint's finalizer: kept while another StreamingJob restores it; else its job's job
        manager deletes its files, or, when that job is gone (a savepoint taken on cancel or delete
        outlives its StreamingJob, and a new StreamingJob of the same name is another job), this
        operator does."""
        meta, spec = body.get("metadata") or {}, body.get("spec") or {}
        observed = body.get("status") or {}
        namespace, job = str(meta["namespace"]), str(spec.get("jobRef") or "")
        jobs = await self.client.list(kube.STREAMINGJOBS, namespace)
        users = mapping.savepoint_restorers(body, jobs)
        if users:  # another job manager's job restores it: keep the finalizer, try again later
            error = SavepointInUseError(str(observed.get("jobId")), str(observed.get("savepointId")), users)
            raise await events.savepoint_in_use(self.client, body, error.message)
        owner = next((j for j in jobs if j["metadata"]["name"] == job), None)
        if owner is not None and (owner.get("status") or {}).get("jobId") == observed.get("jobId"):
            await self.call(namespace, job, "savepoints/delete", body)
            return
        await delete_orphan_savepoint_files(f"{namespace}/{meta.get('name')}", observed)


async def delete_orphan_savepoint_files(name: str, observed: Mapping[str, Any]) -> None:
    """Deletes the files of the Savepoint ``name`` whose job is gone, from its ``status``: only when the
    manifest at its location is of that very savepoint (job and savepoint id), so a status pointing
    elsewhere deletes nothing. Storage trouble is retried (``kopf.TemporaryError``)."""
    location, job_id, savepoint_id = (observed.get(k) for k in ("location", "jobId", "savepointId"))
    if not (location and job_id and savepoint_id):
        return  # it never completed: there are no files
    try:
        found = await locate_snapshot(str(location))
    except ValueError as e:
        logger.info("Savepoint %s: no files to delete (%s)", name, e)
        return
    if (found.job_id, found.savepoint_id) != (job_id, savepoint_id):
        logger.warning(
            "Savepoint %s: %s holds savepoint %s of job %s, not %s of %s; nothing deleted",
            name,
            location,
            found.savepoint_id,
            found.job_id,
            savepoint_id,
            job_id,
        )
        return
    try:
        await storage_from_uri(found.storage_uri).delete_prefix(found.directory)
    except Exception as e:  # storage unreachable or refusing: the finalizer stays, asked again
        raise kopf.TemporaryError(f"deleting the files at {location}: {e}", delay=STORAGE_RETRY_S) from None
    logger.info("Savepoint %s: its job is gone, its files at %s deleted", name, location)
